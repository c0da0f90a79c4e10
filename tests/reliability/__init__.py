"""Reliability and bad input: faults survived, bad inputs refused, nothing lost.

Shared helpers of ``tests/reliability/test_*.py`` (the fixtures are in its conftest.py). Every test uses the tiny demo config
(``timevec/demo/tiny.yaml``) with its store under ``tmp_path``, ``tasks=[lm]``, an un-pretrained
base (``base.pretrain.steps=0``: nothing here depends on the base being a good model) and at most
8 training steps, so the whole suite stays within a few minutes on 2 cores.

A training worker killed mid-run is covered by
``tests/test_fleet.py::test_a_killed_trial_resumes_from_its_checkpoint`` (and on S3 by
``test_fleet_on_s3_resumes_from_s3_checkpoints``); a writer process killed between shards by
``tests/test_store.py::test_killed_writer_leaves_no_visible_vector``. They are not repeated here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "timevec" / "demo" / "tiny.yaml"

#: overrides every reliability config starts from (smallest useful setting)
BASE_OVERRIDES = [
    "tasks=[lm]",
    "base.pretrain.steps=0",
    "training.steps=8",
    "training.checkpoint_every=4",
    "evaluation.max_examples=8",
    "ray.num_cpus=2",
    "ray.max_failures=0",
    "ray.max_concurrent_runs=1",
    "ray.eval_actors=1",
]


def tiny_config(store_url: str | os.PathLike, *overrides: str):
    """The tiny demo config with the reliability overrides, its store at ``store_url``."""
    from timevec.config import load_config

    return load_config(TINY, [f"store.url={store_url}", *BASE_OVERRIDES, *overrides])


def write_config(path: Path, store_url: str | os.PathLike, *overrides: str) -> Path:
    """:func:`tiny_config` written as a YAML file for the CLI; returns the path."""
    from timevec.config import dump_config

    path.write_text(dump_config(tiny_config(store_url, *overrides)))
    return path


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``timevec ARGS`` in this process (the CLI's own ``main``): (exit code, stdout, stderr)."""
    from timevec.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def cli_subprocess(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m timevec.cli ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "timevec.cli", *map(str, args)],
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def random_vector(store, seed: int, scale: float = 0.02):
    """A vector with the store's names and shapes (no training needed)."""
    from timevec.weights.vectors import TimeVector

    g = torch.Generator().manual_seed(seed)
    return TimeVector({n: scale * torch.randn(tuple(s), generator=g) for n, s in store.shapes.items()})


def snapshot(root: Path) -> dict[str, str]:
    """relative path → sha256 of every file under a local store (ignoring Ray's scratch space and
    the writers' lease records, which a driver that took and released the lease leaves behind)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith(("ray/", "leases/")):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------------- processes

def copy_store(base_store: Path, dest: Path) -> Path:
    shutil.copytree(base_store, dest)
    return dest


def populated_store(base_store: Path, dest: Path, periods: list[str], first_seed: int = 0):
    """A copy of ``base_store`` at ``dest`` holding a random ``lm`` vector per period (seeds from ``first_seed``)."""
    from timevec.store import VectorStore

    store = VectorStore(str(copy_store(base_store, dest)))
    for i, period in enumerate(periods):
        store.put_vector("lm", period, random_vector(store, first_seed + i))
    return store


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300, log_path: Path | None = None) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail naming ``what`` if it exits or times out first."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            tail = read_text(log_path)[-3000:] if log_path else ""
            assert proc.poll() is None, f"process exited ({proc.returncode}) before {what}: {tail}"
            assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def driver_env(gcs_address: str) -> dict[str, str]:
    """Environment of a driver subprocess that attaches to the session's Ray."""
    return {**os.environ, "RAY_ADDRESS": gcs_address, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def grep_bytes(data: bytes, needles: list[str]) -> list[str]:
    """Which of ``needles`` occur in ``data`` (raw, and URL-/JSON-escaped forms)."""
    found = []
    for needle in needles:
        forms = {needle.encode(), needle.replace("/", "\\/").encode()}
        with contextlib.suppress(Exception):
            from urllib.parse import quote

            forms.add(quote(needle, safe="").encode())
        if any(f in data for f in forms):
            found.append(needle)
    return found


__all__ = [
    "REPO",
    "TINY",
    "BASE_OVERRIDES",
    "tiny_config",
    "write_config",
    "run_cli",
    "cli_subprocess",
    "random_vector",
    "snapshot",
    "copy_store",
    "populated_store",
    "kill_when",
    "driver_env",
    "read_text",
    "grep_bytes",
]
