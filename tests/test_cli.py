"""The command line as a user types it: help, bad input, the tiny demo end to end, the store tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from timevec.cli import build_parser
from timevec.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]


def timevec(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "timevec.cli", *args], cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_help_describes_every_command_and_option():
    out = timevec("--help").stdout
    for command in ("demo", "run", *STAGES, "vectors", "store"):
        assert command in out
    demo = timevec("demo", "--help").stdout
    for option in ("--tiny", "--store", "--set"):
        assert option in demo
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():  # every option has a help text
        for opt in action._actions:
            assert opt.help, f"{action.prog} {opt.dest} has no help"


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
    job = subprocess.run(
        [sys.executable, "jobs/pipeline.py", "--config", str(config), "--stages", "evaluat"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert job.returncode == 2 and "unknown stage(s) ['evaluat']" in job.stderr
    single = subprocess.run(
        [sys.executable, "jobs/evaluate.py", "--config", str(config), "--stages", "finetune"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 2 and "unrecognized arguments: --stages" in single.stderr  # fixed-stage jobs


def test_tiny_demo_end_to_end_then_store_tools(tmp_path):
    store = tmp_path / "store"
    result = timevec("demo", "--tiny", "--store", str(store))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "Headline findings" in result.stdout
    report = store / "reports" / "index.html"
    assert report.exists() and f"HTML report: {report}" in result.stdout
    cells = pd.read_parquet(store / "results" / "cells.parquet")
    years = ["2014", "2015", "2016", "2017"]
    lm = cells[cells["task"] == "lm"]
    assert set(lm["test_period"]) == set(years)
    assert len(lm) == len(years) * (len(years) + 1)  # every vector × test period, plus the base row
    for name in ("interpolation", "analogy_best", "similarity", "decay_fit"):
        assert (store / "results" / f"{name}.parquet").exists(), name

    listing = timevec("store", "ls", str(store))
    assert listing.returncode == 0 and "lm" in listing.stdout and "2017" in listing.stdout
    assert timevec("store", "verify", str(store)).returncode == 0

    # a second run finds everything done and trains nothing
    again = timevec("demo", "--tiny", "--store", str(store))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in again.stdout

    # corrupt one shard: verify names it and exits 1
    shard = next((store / "vectors" / "lm" / "2015").glob("shard-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    verify = timevec("store", "verify", str(store))
    assert verify.returncode == 1 and "lm/2015" in verify.stdout and shard.name in verify.stdout
    assert timevec("store", "rm", str(store), "lm/2015").returncode == 0
    assert "2015" not in timevec("store", "ls", str(store), "--task", "lm").stdout
