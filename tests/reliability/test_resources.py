"""Impossible resources fail fast: a config asking for more GPUs than the cluster has, per run
(fleet) or per evaluation actor (cells), must end with a clear error naming the setting, not wait
forever for resources that will never appear.

Both drivers run as real ``python -m timevec.cli`` subprocesses attached to the session's Ray
(no GPU here; on a GPU machine the request is ``cluster GPUs + 1``). They are started together
so that their waits overlap. A driver "hangs" when it is still running ``GRACE_S`` seconds after
it logged that it is handing its work to Ray (a fail-fast check would have stopped it by then).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import (
    copy_store,
    driver_env,
    random_vector,
    read_text,
    write_config,
)
from timevec.store import VectorStore

GRACE_S = 10.0
LIMIT_S = 240.0

#: stage → (config setting, the log line the driver writes just before it waits on Ray)
STAGES = {
    "finetune": ("ray.gpus_per_run", "fleet: experiment"),
    "evaluate": ("ray.gpus_per_eval_actor", "cells to compute"),
}


@pytest.fixture(scope="module")
def drivers(ray_session: str, base_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    import ray

    impossible = int(ray.cluster_resources().get("GPU", 0)) + 1
    tmp = tmp_path_factory.mktemp("resources")
    procs = {}
    try:
        for stage, (setting, _ready) in STAGES.items():
            root = copy_store(base_store, tmp / f"{stage}-store")
            if stage == "evaluate":
                store = VectorStore(str(root))
                store.put_vector("lm", "2014", random_vector(store, 1))
            config = write_config(tmp / f"{stage}.yaml", root, "periods.end='2014'", f"{setting}={impossible}")
            log = tmp / f"{stage}.log"
            with open(log, "wb") as out:
                procs[stage] = (
                    subprocess.Popen([sys.executable, "-m", "timevec.cli", stage, str(config)], cwd=tmp,
                                     env=driver_env(ray_session), stdout=out, stderr=subprocess.STDOUT),
                    log,
                )
        yield {"procs": procs, "gpus": impossible}
    finally:
        for proc, _log in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)


def _outcome(proc: subprocess.Popen, log: Path, ready: str) -> tuple[bool, int | None, str, float | None]:
    """(hung, exit code, output, seconds from the ready line to the exit)."""
    ready_at = None
    deadline = time.monotonic() + LIMIT_S
    while proc.poll() is None:
        if ready_at is None and ready in read_text(log):
            ready_at = time.monotonic()
        if ready_at is not None and time.monotonic() - ready_at > GRACE_S:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    hung = proc.poll() is None
    waited = None if ready_at is None else time.monotonic() - ready_at
    if hung:
        proc.kill()
        proc.wait(timeout=60)
    return hung, proc.returncode, read_text(log), waited


def test_fleet_with_impossible_gpus_fails_fast(drivers: dict) -> None:
    proc, log = drivers["procs"]["finetune"]
    hung, code, output, waited = _outcome(proc, log, STAGES["finetune"][1])
    assert not hung, f"`timevec finetune` with ray.gpus_per_run={drivers['gpus']} still waiting {waited:.0f} s after submitting"
    assert code == 2 and "gpus_per_run" in output and "Traceback" not in output, output[-2000:]


def test_evaluation_with_impossible_gpus_fails_fast(drivers: dict) -> None:
    proc, log = drivers["procs"]["evaluate"]
    hung, code, output, waited = _outcome(proc, log, STAGES["evaluate"][1])
    assert not hung, f"`timevec evaluate` with ray.gpus_per_eval_actor={drivers['gpus']} still waiting {waited:.0f} s"
    assert code == 2 and "gpus_per_eval_actor" in output and "Traceback" not in output, output[-2000:]
