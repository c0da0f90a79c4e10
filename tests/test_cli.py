"""The command line as a user types it: help, bad input, the tiny demo end to end, the store tools."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import timevec.demo as timevec_demo
from tests.reliability import run_cli
from timevec.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]


def timevec(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "timevec.cli", *args], cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _entries_without_help(help_text: str) -> list[str]:
    """Argument entries of an argparse help page (2-space indented) that carry no description."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^  (\S.*?)(\s{2,}\S.*)?$", line)
        if not m or m.group(2):
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if not re.match(r"^ {4,}\S", nxt):  # the description would be on the next, deeper-indented line
            missing.append(m.group(1))
    return missing


def test_help_describes_every_command_and_option():
    out = timevec("--help").stdout
    for command in ("demo", "run", *STAGES, "vectors", "store"):
        assert command in out
    demo = timevec("demo", "--help").stdout
    for option in ("--tiny", "--store", "--set"):
        assert option in demo
    commands = re.findall(r"^    ([a-z]+) ", out, flags=re.M)  # the COMMAND list of the top-level help
    assert {"demo", "run", "store", *STAGES} <= set(commands)
    for command in commands:  # every option of every command has a help text
        page = timevec(command, "--help").stdout
        assert "usage: timevec " + command in page
        assert not _entries_without_help(page), f"timevec {command}: no help for {_entries_without_help(page)}"


def test_bad_config_exits_2_naming_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text('corpus: {source: "demo:trump_tweets"}\nperiods: {start: "2014", end: "2015"}\ntraining: {lr: 0.1, lrr: 2}\n')
    result = timevec("finetune", str(config))
    assert result.returncode == 2
    assert "training.lrr: unknown key" in result.stderr and str(config) in result.stderr


def test_bad_override_and_missing_store(tmp_path):
    result = timevec("demo", "--tiny", "--set", "training.steps=0", "--store", str(tmp_path / "s"))
    assert result.returncode == 2 and "training.steps" in result.stderr
    result = timevec("store", "ls", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "no store here" in result.stderr


def test_unknown_stage_exits_2_in_the_cli_and_the_job(tmp_path):
    config = ROOT / "timevec" / "demo" / "tiny.yaml"
    result = timevec("run", str(config), "--stages", "finetune,evaluat", "--set", f"store.url={tmp_path / 's'}")
    assert result.returncode == 2 and "unknown stage(s) ['evaluat']" in result.stderr
    # `python -m timevec` is what `ray job submit` runs: the same command line, the same exit statuses
    job = subprocess.run(
        [sys.executable, "-m", "timevec", "run", str(config), "--stages", "evaluat"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert job.returncode == 2 and "unknown stage(s) ['evaluat']" in job.stderr
    single = subprocess.run(
        [sys.executable, "-m", "timevec", "evaluate", str(config), "--stages", "finetune"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 2 and "unrecognized arguments: --stages" in single.stderr  # single-stage commands


def test_a_stage_that_does_not_apply_says_skipped_and_why(tmp_path):
    """Not "done in 0.0 s": forgetting under training.mode independent, group swaps off, a forecast horizon the
    periods cannot hold, an analogy without its tasks. Named stages that cannot run at all still exit 2."""
    config = ROOT / "timevec" / "demo" / "tiny.yaml"
    result = timevec("run", str(config), "--stages", "forgetting,groups,analogy", "--set", f"store.url={tmp_path / 's'}",
                     "--set", "groups.swaps=false", "--set", "tasks=[classification]")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split(" ", 1)[-1] for line in result.stderr.splitlines() if " stage " in line]
    assert lines == ["stage forgetting: skipped (training.mode is independent, not continual)",
                     "stage analogy: skipped (it needs the tasks 'lm' and 'classification' in config.tasks "
                     "(have ['classification']))",
                     "stage groups: skipped (groups.swaps is false)"], result.stderr
    named = timevec("run", str(config), "--stages", "forecast", "--set", f"store.url={tmp_path / 's'}",
                    "--set", "periods.end='2015'")
    assert named.returncode == 2 and "forecast.horizon = 2" in named.stderr, named.stderr


def test_quiet_by_default_every_info_line_with_v(tmp_path):
    """Without -v: progress lines, warnings and the command's own output; with -v every INFO line too."""
    import torch

    from timevec.store import VectorStore
    from timevec.weights.vectors import TimeVector

    store = VectorStore(str(tmp_path / "s"))
    store.init("b", {"w": torch.zeros(2, 2)})
    for period in ("2014", "2015"):
        store.put_vector("lm", period, TimeVector({"w": torch.ones(2, 2)}))
    quiet = timevec("store", "rm", store.url, "lm/2014")
    assert quiet.returncode == 0 and "removed lm/2014" in quiet.stdout and quiet.stderr == "", quiet.stderr
    loud = timevec("store", "rm", store.url, "lm/2015", "-v")  # -v after the command as well as before it
    assert loud.returncode == 0 and "INFO timevec.store: deleted vector lm/2015" in loud.stderr, loud.stderr
    lines = subprocess.run(  # the three kinds of line through the CLI's one logging set-up
        [sys.executable, "-c", "import logging; from timevec.cli import configure_logging; "
         "from timevec.train.progress import Progress; configure_logging(0); "
         "logging.getLogger('timevec.store').info('wrote table x'); Progress('step', 1).advance(); "
         "logging.getLogger('timevec.store').warning('careful')"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    ).stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(" step: 1/1 (100 %), 0s elapsed") and lines[1].endswith(" WARNING timevec.store: careful")


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three CLI runs (the study, its extension, continual mode): 876 s once at load ~12-47 on 2 cores
def test_tiny_demo_end_to_end_extended_by_a_year_then_store_tools(tmp_path, capsys):
    store = tmp_path / "store"
    # one analogy pair per target (2015 → k) on a 1 × 2 × 1 grid: the search's own tests cover the grid
    # and the pairs; this one covers the command. The study is 2014–2016 first (the forecast needs 4
    # years and is skipped), then extended to the tiny config's 2017.
    small = ("--set", "analogy.alpha1=[1.0]", "--set", "analogy.alpha3=[0.1]", "--set", "analogy.source_periods=['2015']")
    result = timevec("demo", "--tiny", "--store", str(store), *small, "--set", "periods.end='2016'")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    report = store / "reports" / "index.html"
    assert report.exists() and f"HTML report: {report}" in result.stdout
    results_file = str(store / "results" / "findings.txt")
    # the default output is quiet and ends with the verdict: no colour codes, no Ray/Tune chatter,
    # no deprecation warnings, no INFO line but the progress ones, at most 40 lines before the verdict block
    everything = result.stdout + result.stderr
    assert "\x1b[" not in everything
    for noise in ("Checkpoint successfully created", "FutureWarning", "Configuration for experiment",
                  "To visualize your results with TensorBoard", "experiment_state.py", " INFO ", "wrote table",
                  "Started a local Ray instance"):
        assert noise not in everything, noise
    before, verdict = result.stdout.split("\nVerdict (95 % intervals")
    assert len(before.splitlines()) + len(result.stderr.splitlines()) <= 40, everything
    assert "stage finetune: done in" in result.stderr and "stage report: done in" in result.stderr
    # a stage that does not apply says so and why, never "done"
    assert "stage forgetting: skipped (training.mode is independent, not continual)" in result.stderr
    assert re.search(r"stage forecast: skipped \(.*forecast\.horizon", result.stderr), result.stderr
    assert "stage forgetting: done" not in result.stderr and "stage forecast: done" not in result.stderr
    assert results_file in verdict.splitlines()[0]
    assert "the paper's finding" in verdict and "own period best" in verdict and "decay with the gap" in verdict
    assert "Adaptation vs the latest vector" in verdict
    assert "Every finding, per panel" in Path(results_file).read_text()  # the full table, in the file it names
    results = store / "results"
    cells = pd.read_parquet(results / "cells.parquet")
    years = ["2014", "2015", "2016"]
    lm = cells[cells["task"] == "lm"]
    assert set(lm["test_period"]) == set(years)
    assert len(lm) == len(years) * (len(years) + 1)  # every vector × test period, plus the base row
    for name in ("interpolation", "analogy_best", "similarity", "decay_fit"):
        assert (results / f"{name}.parquet").exists(), name
    # every table the stages wrote is a declared one, stored in its declared schema (names and types, nothing else:
    # no pandas index), with one row per key; a figure's table is the report's own
    import pyarrow.parquet as pq

    from timevec.results import TABLES, table

    written = sorted(results.glob("*.parquet"))
    assert {p.stem for p in written} >= {"cells", "interpolation", "analogy", "analogy_best", "findings",
                                         "stripes", "decay_fit", "relative_change", "fig_umap"}
    for path in written:
        declared, frame = table(path.stem), pd.read_parquet(path)
        if path.stem in TABLES:
            assert pq.read_schema(path).remove_metadata().equals(declared.schema), (path.stem, pq.read_schema(path))
        assert declared.key is None or not frame.duplicated(list(declared.key)).any(), path.stem

    # the store tools run in this process (the CLI's own main: no torch import per call); the exit
    # statuses of a real process are test_bad_input.py::test_cli_exit_code_is_2_in_a_real_process's
    code, out, _ = run_cli(capsys, "store", "ls", str(store))
    assert code == 0 and "lm" in out and "2016" in out
    assert run_cli(capsys, "store", "verify", str(store))[0] == 0

    # adding 2017 to the finished study (ARCHITECTURE §12): the same command on the config's own range
    # trains only the two new runs and evaluates only the new row and column of each matrix, plus the
    # base on 2017: 2N + 1 + 1 = 8 cells per task for N = 3, 16 for the two tasks
    vectors, best = _digests(store / "vectors"), pd.read_parquet(results / "analogy_best.parquet")
    again = timevec("demo", "--tiny", "--store", str(store), *small)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    n = len(years)
    assert "fine-tune runs 6 skipped, 2 done" in again.stdout, again.stdout[-2000:]
    assert f"{2 * (n + 1) * (n + 2)} cells ({2 * (2 * n + 2)} computed now)" in again.stdout, again.stdout[-2000:]
    now = _digests(store / "vectors")
    assert {k: now[k] for k in vectors} == vectors  # every old shard and manifest byte-identical
    assert {k.rsplit("/", 1)[0] for k in set(now) - set(vectors)} == {"lm/2017", "classification/2017"}
    extended = pd.read_parquet(results / "cells.parquet")
    key = ["task", "granularity", "vector", "test_period"]
    kept = extended.merge(cells[key], on=key)
    pd.testing.assert_frame_equal(kept.sort_values(key).reset_index(drop=True), cells.sort_values(key).reset_index(drop=True))
    added = set(map(tuple, extended[key].itertuples(index=False))) - set(map(tuple, cells[key].itertuples(index=False)))
    old = ["base"] + years
    assert added == {(t, "year", "base" if v == "base" else f"{t}/{v}", "2017") for t in ("lm", "classification") for v in old} | {
        (t, "year", f"{t}/2017", p) for t in ("lm", "classification") for p in [*years, "2017"]}
    # the results whose meaning depends on the range were kept apart and rebuilt for 2014–2017
    interpolation = pd.read_parquet(results / "interpolation.parquet")
    assert set(zip(interpolation["first"], interpolation["last"])) == {("2014", "2017")}
    previous = pd.read_parquet(store / "previous" / "year-2014-2016" / "results" / "interpolation.parquet")
    assert set(zip(previous["first"], previous["last"])) == {("2014", "2016")}
    assert (store / "previous" / "year-2014-2016" / "reports" / "index.html").exists() and report.exists()
    assert set(pd.read_parquet(results / "forecast.parquet")["target_period"]) == {"2016", "2017"}
    # the analogy pair 2015 → 2016 is reused as it was; 2015 → 2017 is new
    pairs = pd.read_parquet(results / "analogy_best.parquet")
    pd.testing.assert_frame_equal(pairs[pairs["target_period"] == "2016"].reset_index(drop=True), best.reset_index(drop=True))
    assert set(pairs["target_period"]) == {"2016", "2017"}

    # the same study in continual mode, once (lm only): the chain's own store beside the independent one,
    # sharing θ_pre; the forgetting stage compares the chain, the independent vectors and their running
    # means; the continual report carries the forgetting figure; the independent study is left as it was
    tiny = Path(timevec_demo.__file__).parent / "tiny.yaml"
    before = _digests(store / "vectors")
    chain = timevec("run", str(tiny), "--set", f"store.url={store}", "--set", "training.mode=continual", "--set", "tasks=[lm]",
                    "--stages", "finetune,evaluate,forgetting,report")
    assert chain.returncode == 0, chain.stdout[-3000:] + chain.stderr[-5000:]
    cont = store / "continual"
    assert sorted(p.name for p in (cont / "vectors" / "lm").iterdir()) == ["2014", "2015", "2016", "2017"]
    fingerprint = {json.loads((root / "store.json").read_text())["base_fingerprint"] for root in (store, cont)}
    assert len(fingerprint) == 1  # one θ_pre for both modes
    forgetting = pd.read_parquet(cont / "results" / "forgetting.parquet")
    assert set(forgetting["mode"]) == {"continual", "independent", "merged"} and set(forgetting["task"]) == {"lm"}
    merged = pd.read_parquet(cont / "results" / "merged_cells.parquet")
    assert set(merged["vector"]) == {f"lm/mean(2014..{t})" for t in ("2015", "2016", "2017")} and len(merged) == 3 * 4
    assert (cont / "reports" / "forgetting_lm_year.png").exists()
    assert "Continual updating and forgetting" in (cont / "reports" / "index.html").read_text()
    assert _digests(store / "vectors") == before

    # corrupt one shard: verify names it and exits 1
    shard = next((store / "vectors" / "lm" / "2015").glob("shard-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, out, _ = run_cli(capsys, "store", "verify", str(store))
    assert code == 1 and "lm/2015" in out and shard.name in out
    assert run_cli(capsys, "store", "rm", str(store), "lm/2015")[0] == 0
    assert "2015" not in run_cli(capsys, "store", "ls", str(store), "--task", "lm")[1]
