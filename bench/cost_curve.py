"""Cost curve: measured wall time of the study for N = 6, 12, 24 periods, fitted and extrapolated.

    .venv/bin/python bench/cost_curve.py [--stages finetune,evaluate,interpolate,analyze] [--set k=v]

Why: the study's cost grows with the number of periods N — one fine-tune per (task, period), so
runs grow O(N); every vector on every test period, so cells grow O(N²). Three sizes measured on
one machine in one go give the constant, the per-run and the per-cell cost of each stage; the
fit is then extrapolated to the paper's 58 monthly periods, here and (by a stated FLOP model) for a
3 B-parameter model on a GPU cluster.

The sizes: N = 6 is the years 2012–2017 (period bounds are whole years, so 6 months cannot be
configured), N = 12 the months of 2014, N = 24 the months of 2014–2015. With the tiny config's caps
(``corpus.caps``) every period gets the same number of train/validation/test rows whatever its
granularity, so a period costs the same; with the demo's, a year's test split is ≈ 10× a month's
(the runs still cost the same: a fixed number of steps), so its cell term is read from N = 12 → 24.
Each N is a fresh store on one pretrained base (copied)
and one local Ray cluster (``ray.init`` once, not counted). Stage times are the pipeline's own
(``seconds_<stage>`` in its headline).

Fit per stage: wall = a + b·N (finetune, O(N) runs), a + c·N² (evaluate, O(N²) cells), and
a + b·N + c·N² for the other stages (exact through 3 points); the extrapolation is printed with
the fit, never mixed with the measured rows.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import ray
from ray_start import start_ray

from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.distributed.pipeline import run_pipeline
from timevec.store import VectorStore
from timevec.train.loop import prepare_base
from timevec.train.plan import plan_runs

#: N → the config's period overrides (see the module docstring)
SIZES: dict[int, list[str]] = {
    6: ["granularities=[year]", "periods.start='2012'", "periods.end='2017'"],
    12: ["granularities=[month]", "periods.start='2014'", "periods.end='2014'"],
    24: ["granularities=[month]", "periods.start='2014'", "periods.end='2015'"],
}
PAPER_N = 58  # the paper's monthly study (WMT news, 2012-2016 by month)

#: which power of N a stage's work grows with
GROWTH = {"finetune": (0, 1), "evaluate": (0, 2)}


def fit(ns: list[int], seconds: list[float], powers: tuple[int, ...]) -> np.ndarray:
    """Least-squares coefficients of seconds = Σ coef_k · N^power_k."""
    design = np.array([[n**p for p in powers] for n in ns], dtype=float)
    coef, *_ = np.linalg.lstsq(design, np.array(seconds, dtype=float), rcond=None)
    return coef


def formula(coef: np.ndarray, powers: tuple[int, ...]) -> str:
    names = {0: "", 1: "·N", 2: "·N²"}
    return " + ".join(f"{c:.3g}{names[p]}" for c, p in zip(coef, powers))


def main() -> int:
    parser = harness.parser(__doc__, harness.config_options(harness.REPO / "timevec/demo/tiny.yaml"))
    parser.add_argument("--stages", default="finetune,evaluate,interpolate,analyze")
    parser.add_argument("--sizes", default="6,12,24")
    parser.add_argument("--workdir", help="where the stores go (default: a temporary directory, removed)")
    args = parser.parse_args()
    harness.output_block()
    logging.basicConfig(level=logging.WARNING)
    stages = args.stages.split(",")
    sizes = [int(n) for n in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="timevec-bench-cost-"))
    common = ["ray.num_cpus=2", *args.overrides]

    base_config = load_config(args.config, [*common, f"store.url={work / 'base'}"])
    prepare_base(base_config, load_corpus(base_config.corpus), VectorStore.from_config(base_config.store))
    init_s = start_ray(base_config.ray.num_cpus)
    print(f"cost curve: {args.config} {' '.join(common)}; stages {', '.join(stages)}; "
          f"ray.init {init_s:.1f} s (not counted); {harness.load_note()} at the start")

    measured: dict[int, dict[str, float]] = {}
    for n in sizes:
        root = work / f"n{n}"
        shutil.copytree(work / "base", root)
        config = load_config(args.config, [*common, *SIZES[n], f"store.url={root}"])
        periods = [p for g in config.granularities for p in config.period_list(g)]
        assert len(periods) == n, (n, periods)
        runs = len(plan_runs(config))
        began = time.perf_counter()
        summary = run_pipeline(config, stages)
        wall = time.perf_counter() - began
        headline = summary["headline"]
        row = {s: float(headline.get(f"seconds_{s}", float("nan"))) for s in stages}
        row["total"] = wall
        measured[n] = row
        store = VectorStore.from_config(config.store)
        cells = len(store.read_table("cells")) if store.has_table("cells") else 0
        print(f"N={n:3d}: {runs} runs, {cells} cells; " + ", ".join(f"{s} {row[s]:.1f} s" for s in stages)
              + f"; study {wall:.1f} s; {harness.load_note()}", flush=True)
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    ray.shutdown()

    print("\nfit (seconds, N = periods) and extrapolation to the paper's N = 58, at this model and split size:")
    total58 = 0.0
    for stage in [*stages]:
        powers = GROWTH.get(stage, (0, 1, 2))
        coef = fit(sizes, [measured[n][stage] for n in sizes], powers)
        at = float(sum(c * PAPER_N**p for c, p in zip(coef, powers)))
        total58 += at
        print(f"  {stage:12s} {formula(coef, powers):32s} → N=58: {at:8.1f} s")
    print(f"  {'study':12s} {'sum of the stages':32s} → N=58: {total58:8.1f} s ({total58 / 60:.1f} min)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
