"""The GPU check (bench/gpu.py, issue #17) runs end to end: on the CPU (--quick, slow) and on a GPU (gpu)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ["gpu_tests", "fleet", "cells", "analogy", "headline", "projection"]
LINES = ["[a] gpu tests:", "[b] fleet:", "[c] cells:", "[d] analogy trial:", "[e] headline:", "[f] projection:"]


def run_bench(device: str, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--device", device, "--quick", "--out", str(out), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "Logging error" not in proc.stderr  # a library's log handler bound to pytest's closed capture stream
    return proc, json.loads((out / "gpu-bench.json").read_text())


def positive(value) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def check(summary: dict, stdout: str, device: str) -> None:
    assert "Logging error" not in stdout
    for line in LINES:
        assert line in stdout, line
    sections = summary["sections"]
    assert list(sections) == SECTIONS
    assert all(s["status"] == "ok" for s in sections.values()), {n: s.get("error") for n, s in sections.items()}
    assert summary["device"]["type"] == device
    fleet, cells, analogy, projection = (sections[n] for n in ("fleet", "cells", "analogy", "projection"))
    assert fleet["runs"] == 4 and fleet["tokens"] > 0
    for value in (fleet["tokens_per_second_per_run"], fleet["tokens_per_second_fleet"], fleet["plain"]["tokens_per_second"],
                  fleet["ratio_per_run"], fleet["ratio_fleet"]):
        assert positive(value)
    assert cells["cells"] == 5 * 4  # base + 4 vectors, each on 4 test years
    for value in (cells["cells_per_second_stage"], cells["plain"]["cells_per_second"], cells["ratio_stage"],
                  cells["ratio_steady"]):
        assert positive(value)
    assert cells["base_perplexity_max_rel_diff"] < 1e-3  # the stage and the plain loop score the same base alike
    for value in (analogy["combine_ms"], analogy["evaluate_ms"], analogy["ratio"], analogy["ratio_on_device"]):
        assert positive(value)
    found = {row["finding"] for row in sections["headline"]["findings"]}
    assert {"own period best", "decay with the gap", "cosine vs degradation"} <= found
    # the projection recomputed from the measured sections: the paper's counts × the measured seconds × the size ratio
    paper, scale = projection["paper"], projection["paper"]["params"] / fleet["params"]
    train_h = paper["runs"] * fleet["makespan_s"] / fleet["runs"] * scale / 3600
    cells_h = paper["cells"] * cells["seconds_stage"] / cells["cells"] * scale / 3600
    assert projection["param_scale"] == pytest.approx(scale)
    assert projection["train_hours"] == pytest.approx(train_h) and projection["cells_hours"] == pytest.approx(cells_h)
    assert positive(projection["hours"]) and projection["hours"] == pytest.approx(train_h + cells_h)
    assert projection["goal_met"] is (projection["hours"] <= projection["goal_hours"])
    verdict = "met" if projection["goal_met"] else "NOT met"
    assert f"= {projection['hours']:.2f} h — goal ≤ {projection['goal_hours']:g} h: {verdict} " in stdout
    if device == "cpu":
        assert cells["plain_memory_peak_bytes"] is None and "device_memory_peak_bytes" not in cells  # NaN on a CPU
        assert sections["gpu_tests"]["passed"] == 0 and sections["gpu_tests"]["failed"] == 0
    else:
        assert positive(cells["device_memory_peak_stage_bytes"]) and positive(cells["plain_memory_peak_bytes"])
        assert sections["gpu_tests"]["failed"] == 0 and sections["gpu_tests"]["passed"] >= 1


def test_a_spent_budget_skips_every_section_and_says_so(tmp_path: Path) -> None:
    proc, summary = run_bench("cpu", tmp_path, "--budget-s", "0")
    assert [s["status"] for s in summary["sections"].values()] == ["skipped"] * 6
    assert proc.stdout.count("skipped — the budget of 0 s is spent") == 6
    assert "0 sections ok, 6 skipped" in proc.stdout


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path: Path) -> None:
    proc, summary = run_bench("cpu", tmp_path)
    check(summary, proc.stdout, "cpu")
    assert (tmp_path / "gpu-bench.md").read_text().count("[f] projection:") == 1
    assert not list(tmp_path.glob("**/*.safetensors"))  # the store is not under --out (it comes back from the device)


@pytest.mark.gpu
@pytest.mark.skipif(os.environ.get("TIMEVEC_GPU_BENCH_INNER") == "1", reason="run by bench/gpu.py itself")
def test_gpu_check_runs_on_cuda(tmp_path: Path) -> None:
    proc, summary = run_bench("cuda", tmp_path)
    check(summary, proc.stdout, "cuda")
