"""Bench: the study evaluated in full vs on a budget (issue 38), side by side in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/eval_budget.py [--config timevec/demo/tiny.yaml] [--set KEY=VALUE …]
        [--budget "KEY=VALUE KEY=VALUE …" …] [--trained-store DIR] [--tmp DIR] [--keep]

The vectors are trained ONCE (``timevec run CONFIG --stages finetune`` into a scratch store ``full``;
``--trained-store DIR``: copied from a store that holds them instead); then the store's base and vectors
(``store.json``, ``base/``, ``vectors/`` — no ``results/``, ``ray/`` or ``leases/``) are copied to one
scratch store per budget, so every run evaluates the SAME vectors and the fine-tune's cost is out of
the comparison. Then, each as its own ``python -m timevec run`` subprocess (each with its own local
Ray: ``RAY_ADDRESS`` is dropped from their environment), with the config's ``--set`` overrides:

- full: the evaluating stages and the analysis as configured;
- budgeted, once per ``--budget`` (repeatable; KEY=VALUE pairs separated by spaces, added to the
  full run's overrides): the same stages with the budget's overrides. Default: ``evaluation.design=band
  evaluation.design_band=1 evaluation.design_fraction=0.2 evaluation.target_halfwidth=5``.

Printed per budget, full vs budgeted and budgeted / full:

- per evaluating stage (evaluate, complete, forgetting, interpolate, forecast, analogy, groups; the
  pipeline's ``stage X: done in N s`` lines): the wall time, and the examples evaluated — the cells
  table's ``n_examples`` summed over its evaluated rows (``estimated`` rows, the complete stage's,
  count 0). The other stages' tables record no examples: "not counted" (their row counts are shown
  instead, as evaluations). Interpolation's α grid is evaluated at every point; the analogy grid too,
  unless a budget sets ``analogy.scheduler=asha`` (successive halving over validation examples);
  ``evaluation.*`` applies to each of their evaluations as to a cell's;
- every finding of the two verdicts (``results/findings.parquet``, one row per finding × panel, and
  the verdict's one row per finding): holds full vs budgeted, the point value full [low, high] vs
  budgeted, and whether the budgeted point lies inside the full run's interval;
- a summary line: examples ratio, findings with the same verdict (k of n), points inside (k of n with
  an interval in the full run; a point without one — no spread, one target — is checked for equality).

The goal (issue 38): ≤ 1/3 of the examples evaluated, the same verdict on every finding, every budgeted
point inside the full run's interval.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import pandas as pd

from timevec.analyze.verdict import paper_findings
from timevec.config import load_config

DEFAULT_BUDGET = ("evaluation.design=band evaluation.design_band=1 evaluation.design_fraction=0.2 "
                  "evaluation.target_halfwidth=5")
#: the stages that evaluate models (those of the registry that score test or validation examples)
EVALUATING = ("evaluate", "complete", "forgetting", "interpolate", "forecast", "analogy", "groups")
#: what a compared run runs: the evaluating stages and the analysis (the verdict); no fine-tune, no report
RUN_STAGES = (*EVALUATING, "analyze")
#: each evaluating stage's tables other than cells (their rows: evaluations, not examples)
STAGE_TABLES = {
    "forgetting": ("merged_cells", "forgetting"),
    "interpolate": ("interpolation", "soups", "patching"),
    "forecast": ("forecast",),
    "analogy": ("analogy",),
    "groups": ("group_swaps",),
}
GOAL_RATIO = 1 / 3
_DONE = re.compile(r"stage (\w+): done in ([0-9.]+) s")
_SKIPPED = re.compile(r"stage (\w+): skipped \((.*)\)\s*$")


# ----------------------------------------------------------------------------- the runs


def run_timevec(config: str, store: Path, overrides: list[str], stages: tuple[str, ...], log: Path) -> dict:
    """``python -m timevec run`` into ``store``; its stage times, wall time and the load before and after."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "timevec", "run", config, "--set", f"store.url={store}",
               *[a for o in overrides for a in ("--set", o)], "--stages", ",".join(stages)]
    load_before = harness.load_average()
    began = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=store.parent)
    wall = time.perf_counter() - began
    text = log.read_text()
    if done.returncode != 0:
        print(text[-6000:], file=sys.stderr)
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}); log: {log}")
    seconds = {m.group(1): float(m.group(2)) for m in map(_DONE.search, text.splitlines()) if m}
    skipped = {m.group(1): m.group(2) for m in map(_SKIPPED.search, text.splitlines()) if m}
    return {"seconds": seconds, "skipped": skipped, "wall": wall, "load": (load_before, harness.load_average())}


def copy_trained(source: Path, target: Path) -> None:
    """A store's base and vectors (and store.json) into a new folder: no results, Ray folders or leases."""
    shutil.copytree(source, target, ignore=lambda folder, names: [n for n in names if Path(folder) == source
                                                                   and n in ("results", "ray", "leases", "reports")])


def table(store: Path, name: str) -> pd.DataFrame | None:
    path = store / "results" / f"{name}.parquet"
    return pd.read_parquet(path) if path.exists() else None


def cells_counts(store: Path) -> dict:
    """The cells table's evaluated rows and their examples (in all and per task), and its estimated rows."""
    cells = table(store, "cells")
    if cells is None:
        return {"rows": 0, "estimated": 0, "examples": 0, "by_task": {}}
    estimated = cells["estimated"].astype(object).fillna(False).astype(bool) if "estimated" in cells else False
    evaluated = cells[~estimated]
    by_task = {str(t): (len(g), int(g["n_examples"].sum())) for t, g in evaluated.groupby("task", sort=False)}
    return {"rows": len(evaluated), "estimated": int(len(cells) - len(evaluated)),
            "examples": int(evaluated["n_examples"].sum()), "by_task": by_task}


def stage_rows(store: Path, stage: str) -> str:
    """The rows the stage's tables hold (evaluations; their examples are not recorded)."""
    parts = [f"{name} {len(t)}" for name in STAGE_TABLES.get(stage, ()) if (t := table(store, name)) is not None]
    return ", ".join(parts) if parts else "-"


# ----------------------------------------------------------------------------- the printout


def ratio(budget: float, full: float) -> str:
    return f"{budget / full:.2f}" if full else "-"


def print_stages(full: dict, budget: dict, full_store: Path, budget_store: Path) -> tuple[float, float]:
    """The per-stage table; returns the examples (full, budgeted) of the cells table."""
    fc, bc = cells_counts(full_store), cells_counts(budget_store)
    print(f"{'stage':<12} {'full s':>8} {'budget s':>9} {'ratio':>6}   examples full → budgeted (ratio)")
    total_f = total_b = 0.0
    for stage in EVALUATING:
        f, b = full["seconds"].get(stage), budget["seconds"].get(stage)
        if f is None and b is None:
            why = budget["skipped"].get(stage) or full["skipped"].get(stage) or "not run"
            print(f"{stage:<12} {'skipped':>8} {'skipped':>9} {'':>6}   ({why})")
            continue
        total_f += f or 0.0
        total_b += b or 0.0
        times = (f"{stage:<12} {'skipped' if f is None else f'{f:.1f}':>8} {'skipped' if b is None else f'{b:.1f}':>9} "
                 f"{ratio(b or 0.0, f) if f else '-':>6}   ")
        if stage == "evaluate":
            tasks = "; ".join(f"{t} {fc['by_task'][t][1]} → {bc['by_task'].get(t, (0, 0))[1]} in "
                              f"{fc['by_task'][t][0]} → {bc['by_task'].get(t, (0, 0))[0]} cells" for t in fc["by_task"])
            print(times + f"{fc['examples']} → {bc['examples']} ({ratio(bc['examples'], fc['examples'])}): {tasks}")
        elif stage == "complete":
            print(times + f"0 → 0 (estimates: {fc['estimated']} → {bc['estimated']} cells estimated, no examples)")
        else:
            print(times + f"not counted (rows written: {stage_rows(full_store, stage)} → {stage_rows(budget_store, stage)})")
    print(f"{'all of them':<12} {total_f:>8.1f} {total_b:>9.1f} {ratio(total_b, total_f):>6}   "
          f"counted: {fc['examples']} → {bc['examples']} ({ratio(bc['examples'], fc['examples'])})")
    print("(the α searches' examples are not counted: interpolation's α grid is evaluated at every point; the analogy "
          "grid too, unless the budget sets analogy.scheduler=asha; each evaluation under the run's evaluation.* like a cell)")
    return fc["examples"], bc["examples"]


def _num(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.4g}"


def _interval(row: pd.Series | None) -> str:
    if row is None:
        return "—"
    if math.isnan(row["low"]) or math.isnan(row["high"]):
        return f"{_num(row['estimate'])} (no interval)"
    return f"{_num(row['estimate'])} [{_num(row['low'])}, {_num(row['high'])}]"


def inside(full: pd.Series | None, budget: pd.Series | None) -> str:
    """``yes``/``NO``: the budgeted point in the full run's [low, high]; without a full interval ``equal``/``differs``."""
    if full is None or budget is None:
        return "missing"
    f, b = float(full["estimate"]), float(budget["estimate"])
    if math.isnan(f) and math.isnan(b):
        return "both n/a"
    if math.isnan(float(full["low"])) or math.isnan(float(full["high"])):
        return "equal" if (not math.isnan(b) and abs(b - f) <= 1e-9 * max(1.0, abs(f))) else "differs"
    return "yes" if full["low"] <= b <= full["high"] else "NO"


def print_findings(full_store: Path, budget_store: Path) -> dict:
    """Every finding × panel and the verdict per finding, full vs budgeted; the counts of the summary."""
    full, budget = table(full_store, "findings"), table(budget_store, "findings")
    if full is None or budget is None:
        print("findings: missing in " + ("the full run" if full is None else "the budgeted run"))
        return {}
    key = ["finding", "panel"]
    f_rows = {tuple(r[key]): r for _, r in full.iterrows()}
    b_rows = {tuple(r[key]): r for _, r in budget.iterrows()}
    keys = list(f_rows) + [k for k in b_rows if k not in f_rows]
    print("\nthe verdict, one row per finding: holds full → budgeted")
    fv, bv = paper_findings(full).set_index("finding"), paper_findings(budget).set_index("finding")
    verdict_same = 0
    names = list(fv.index) + [n for n in bv.index if n not in fv.index]
    for name in names:
        a = fv["holds"].get(name, "—")
        b = bv["holds"].get(name, "—")
        verdict_same += a == b
        print(f"  {name:<32} {a:>8} → {b:<8} {'same' if a == b else 'DIFFERENT'}   (panels: {fv['panels'].get(name, '—')}"
              f" → {bv['panels'].get(name, '—')})")
    print("\nevery finding × panel: holds full → budgeted; point full [low, high] → budgeted; budgeted point inside full's interval")
    same = counted_inside = with_interval = equal = without = 0
    for k in keys:
        f, b = f_rows.get(k), b_rows.get(k)
        hf = "—" if f is None else str(f["holds"])
        hb = "—" if b is None else str(b["holds"])
        same += hf == hb
        where = inside(f, b)
        if where in ("yes", "NO"):
            with_interval += 1
            counted_inside += where == "yes"
        elif where in ("equal", "differs"):
            without += 1
            equal += where == "equal"
        print(f"  {k[0]} | {k[1]}\n      holds {hf:>7} → {hb:<7} {'' if hf == hb else 'DIFFERENT'}"
              f"  point {_interval(f)} → {_interval(b)}  inside: {where}")
    return {"rows": len(keys), "same": same, "verdicts": len(names), "verdict_same": verdict_same,
            "with_interval": with_interval, "inside": counted_inside, "without": without, "equal": equal}


def summary(examples: tuple[float, float], counts: dict, full: dict, budget: dict) -> None:
    f_ex, b_ex = examples
    share = b_ex / f_ex if f_ex else math.nan
    seconds = [sum(run["seconds"].get(s, 0.0) for s in EVALUATING) for run in (full, budget)]
    goals = [share <= GOAL_RATIO, counts.get("same") == counts.get("rows"),
             counts.get("inside") == counts.get("with_interval") and counts.get("equal") == counts.get("without")]
    print(f"\nsummary: examples {b_ex:.0f} / {f_ex:.0f} = {share:.2f} (goal ≤ {GOAL_RATIO:.2f}: "
          f"{'met' if goals[0] else 'NOT met'}); evaluating stages {seconds[1]:.0f} s / {seconds[0]:.0f} s = "
          f"{ratio(seconds[1], seconds[0])}; same verdict {counts.get('same')} of {counts.get('rows')} finding × panel rows "
          f"({counts.get('verdict_same')} of {counts.get('verdicts')} findings) ({'met' if goals[1] else 'NOT met'}); "
          f"points inside the full interval {counts.get('inside')} of {counts.get('with_interval')}, "
          f"equal where the full run has none {counts.get('equal')} of {counts.get('without')} "
          f"({'met' if goals[2] else 'NOT met'}) — goal {'MET' if all(goals) else 'NOT met'}; "
          f"{harness.load_note()} (full run {full['load'][0]:.1f}→{full['load'][1]:.1f}, "
          f"budgeted {budget['load'][0]:.1f}→{budget['load'][1]:.1f})")


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = harness.parser(__doc__, harness.config_options(harness.REPO / "timevec/demo/tiny.yaml"), harness.tmp_option())
    parser.add_argument("--budget", action="append", default=[], metavar='"KEY=VALUE …"',
                        help=f"a budgeted run's overrides, space-separated (repeatable; default: {DEFAULT_BUDGET!r})")
    parser.add_argument("--trained-store", help="copy the base and vectors from this store instead of training (left untouched)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch stores (their paths are printed)")
    args = parser.parse_args()
    budgets = [b.split() for b in (args.budget or [DEFAULT_BUDGET])]
    config = str(Path(args.config).resolve())
    for budget in budgets:  # refuse a bad key before anything runs
        load_config(config, [*args.overrides, *budget])
    harness.output_block()
    root = Path(tempfile.mkdtemp(prefix="eval_budget-", dir=args.tmp))
    try:
        full_store = root / "full"
        print(f"\n== {args.config}; overrides {args.overrides or 'none'}; scratch {root}")
        if args.trained_store:
            copy_trained(Path(args.trained_store).resolve(), full_store)
            print(f"vectors: copied from {args.trained_store}")
        else:
            trained = run_timevec(config, full_store, args.overrides, ("finetune",), root / "finetune.log")
            print(f"fine-tune (once, out of the comparison): {trained['seconds'].get('finetune', math.nan):.1f} s; "
                  f"load average {trained['load'][0]:.1f}→{trained['load'][1]:.1f}")
        stores = [root / f"budget{i}" for i in range(len(budgets))]
        for store in stores:
            copy_trained(full_store, store)  # before the full run writes its results: the same vectors, nothing else
        full = run_timevec(config, full_store, args.overrides, RUN_STAGES, root / "full.log")
        print(f"full run: {full['wall']:.0f} s wall (with start-up); load average {full['load'][0]:.1f}→{full['load'][1]:.1f}",
              flush=True)
        for i, (budget, store) in enumerate(zip(budgets, stores)):
            run = run_timevec(config, store, [*args.overrides, *budget], RUN_STAGES, root / f"budget{i}.log")
            print(f"\n-- budget {i + 1}: {' '.join(budget)}")
            print(f"budgeted run: {run['wall']:.0f} s wall (with start-up); load average {run['load'][0]:.1f}→{run['load'][1]:.1f}")
            examples = print_stages(full, run, full_store, store)
            counts = print_findings(full_store, store)
            summary(examples, counts, full, run)
    finally:
        if args.keep:
            print(f"\nscratch kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
