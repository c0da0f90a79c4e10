"""The tiny study on a real three-node Ray cluster (tests/multinode.py), as a user submits it.

The cluster: a head with 0 CPUs (it holds the jobs' drivers, Tune's controller and the GCS, as a
production head does) and two 1-CPU worker nodes, every node its own ``ray start`` process group
on loopback, the store on SeaweedFS S3 (tests/s3_server.py). With 0 CPUs on the head, two
concurrent fine-tunes or evaluation actors can only run on two different nodes.

1. ``test_study_spreads_over_nodes_and_equals_one_node``: ``ray job submit`` of the tiny study
   (fine-tune + cells); Ray's state API shows fine-tune trials and evaluation actors on both
   worker nodes; every vector and every cell equals a run of the same config on ONE node (a local
   Ray of 2 CPUs, a folder store) bit for bit.
2. ``test_nodes_lost_mid_study``: a worker node is SIGKILLed (its whole process group) while the
   fleet trains; the driver is then stopped while the fleet goes on on the node left; a
   replacement node joins and the job is re-submitted: it resumes; a worker node is killed again
   while the cells are evaluated. The study completes within ``ray.max_failures``; nothing is lost
   or doubled: ``store verify`` clean, every vector directory exactly its manifest and shards, the
   cells table one row per cell.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.multinode import REPO, MultiNodeCluster, multinode_cluster, submit_job, wait_job

CONFIG = "timevec/demo/tiny.yaml"
STAGES = "finetune,evaluate"  # what spreads over nodes; analysis and report run on the driver only
JOB_TIMEOUT_S = 600
CELL_KEY = ["task", "granularity", "vector", "test_period"]


def _entrypoint(store_url: str, endpoint_url: str) -> list[str]:
    return ["python", "-m", "timevec", "run", CONFIG, "--stages", STAGES,
            "--set", f"store.url={store_url}", "--set", f"store.storage_options.endpoint_url={endpoint_url}"]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(s3_server) -> Iterator[MultiNodeCluster]:
    """A head (0 CPUs) and two 1-CPU worker nodes, shared by this module's tests (started after the S3 server)."""
    with multinode_cluster(head_cpus=0, worker_cpus=(1, 1)) as started:
        yield started


@pytest.fixture(scope="module")
def one_node_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same study on ONE node: a local Ray of 2 CPUs started by the driver, a folder store."""
    store = tmp_path_factory.mktemp("one-node") / "store"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO)
    # As Ray sets it for a job's driver (the JobSupervisor actor has 0 CPUs, so Ray forces OMP_NUM_THREADS=1
    # in it and the entrypoint inherits it): θ_pre is pretrained in the driver, with torch's default
    # thread count, and a matmul summed over 2 threads is not bitwise the one over 1.
    env["OMP_NUM_THREADS"] = "1"
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "timevec", "run", CONFIG, "--stages", STAGES, "--set", f"store.url={store}",
         "--set", "ray.num_cpus=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, f"the one-node run failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    print(f"\none-node run: {time.monotonic() - began:.0f} s")
    return store


def _store(url: str, s3_server=None):
    from timevec.store import VectorStore

    return VectorStore(url, s3_server.storage_options if s3_server is not None else None)


def _sorted_cells(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.drop(columns=["seconds"])
    return frame.sort_values(CELL_KEY).reset_index(drop=True)


def _assert_equal_to_one_node(store, one_node: Path) -> None:
    """Every vector (each tensor, bit for bit) and every cell (each column but the timing) as on one node."""
    sys.path.insert(0, str(REPO / "bench"))
    from compare_tables import first_difference

    reference = _store(str(one_node))
    keys = reference.list_vectors()
    assert store.list_vectors() == keys
    for task, period in keys:
        a, b = reference.get_vector(task, period).tensors, store.get_vector(task, period).tensors
        assert list(a) == list(b), (task, period)
        unequal = [name for name in a if not torch.equal(a[name], b[name])]
        assert not unequal, f"vector {task}/{period} differs from the one-node run in {unequal}"
    difference = first_difference(_sorted_cells(reference.read_table("cells")), _sorted_cells(store.read_table("cells")))
    assert difference is None, f"cells differ from the one-node run: {difference}"


def _job_id(cluster: MultiNodeCluster, submission_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    deadline = time.monotonic() + 300
    while (job_id := client.get_job_info(submission_id).job_id) is None:  # set once the driver connects
        if client.get_job_status(submission_id).is_terminal() or time.monotonic() > deadline:
            pytest.fail(f"job {submission_id} never connected a driver:\n{client.get_job_logs(submission_id)[-4000:]}")
        time.sleep(0.5)
    return job_id


def _tasks(cluster: MultiNodeCluster, job_id: str) -> list:
    from ray.util.state import list_tasks

    return list_tasks(address=cluster.dashboard_url, filters=[("job_id", "=", job_id)], limit=10_000, detail=True,
                      raise_on_missing_output=False)  # fmt: skip


def _actors(cluster: MultiNodeCluster, job_id: str) -> list:
    from ray.util.state import list_actors

    return list_actors(address=cluster.dashboard_url, filters=[("job_id", "=", job_id)], limit=10_000, detail=True,
                       raise_on_missing_output=False)  # fmt: skip


def _is_trial(name: str) -> bool:
    """A Tune trial's training call (a function trainable runs in ``ImplicitFunc.train``)."""
    return name.endswith(".train") and "CellActor" not in name


def _placement(cluster: MultiNodeCluster, job_id: str) -> dict[str, set[str]]:
    """Node names that ran the job's fine-tune trials and its evaluation actors' items (Ray's state API)."""
    names = {n.node_id: n.name for n in cluster.nodes}
    tasks = _tasks(cluster, job_id)
    return {
        "finetune": {names.get(t.node_id, t.node_id) for t in tasks if _is_trial(t.name) and t.node_id},
        "cells": {names.get(t.node_id, t.node_id) for t in tasks if t.name.endswith("CellActor.run") and t.node_id},
        "cell_actors": {names.get(a.node_id, a.node_id) for a in _actors(cluster, job_id)
                        if a.class_name.endswith("CellActor") and a.node_id},
    }  # fmt: skip


def _wait_until(what: str, check: Callable[[], bool], timeout: float, job: tuple[MultiNodeCluster, str]) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    client = JobSubmissionClient(job[0].dashboard_url)
    while not check():
        status = client.get_job_status(job[1])
        if status.is_terminal() or time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen (job {status.value}); log tail:\n{client.get_job_logs(job[1])[-4000:]}")
        time.sleep(0.5)


def _assert_whole(store, n_runs: int, n_cells: int) -> None:
    """Nothing lost or doubled: verify clean, each vector dir exactly manifest + its shards, one row per cell."""
    problems = store.verify()
    assert not problems, problems
    keys = store.list_vectors()
    assert len(keys) == n_runs, keys
    for task, period in keys:
        shards = [entry["file"] for entry in store.manifest(task, period)["shards"]]
        files = sorted(p.rsplit("/", 1)[1] for p in store.list_paths(f"vectors/{task}/{period}"))
        assert files == sorted(["manifest.json", *shards]), f"vector {task}/{period}: files {files}, shards {shards}"
    cells = store.read_table("cells")  # the raw table: a doubled cell would be a second row
    assert len(cells) == n_cells and not cells.duplicated(CELL_KEY).any(), cells[cells.duplicated(CELL_KEY, keep=False)]


def _study_size() -> tuple[int, int]:
    from timevec.config import load_config

    config = load_config(REPO / CONFIG)
    periods = config.period_list("year")
    runs = len(config.tasks) * len(periods)
    return runs, len(config.tasks) * (len(periods) + 1) * len(periods)  # every vector and the base × every test period


@pytest.mark.slow
@pytest.mark.timeout(2 * JOB_TIMEOUT_S)
def test_study_spreads_over_nodes_and_equals_one_node(one_node_store: Path, s3_server, cluster: MultiNodeCluster) -> None:
    url = s3_server.url(f"mn-{uuid.uuid4().hex[:8]}")
    submission = f"timevec-mn-{uuid.uuid4().hex[:8]}"
    began = time.monotonic()
    submit_job(cluster, submission, _entrypoint(url, s3_server.endpoint_url))
    status = wait_job(cluster, submission, JOB_TIMEOUT_S)
    from ray.job_submission import JobSubmissionClient

    logs = JobSubmissionClient(cluster.dashboard_url).get_job_logs(submission)
    assert status == "SUCCEEDED", f"job ended {status}; log tail:\n{logs[-6000:]}"
    seconds = time.monotonic() - began

    placement = _placement(cluster, _job_id(cluster, submission))
    print(f"\nthree nodes: job {seconds:.0f} s; " + "; ".join(f"{k} on {sorted(v)}" for k, v in placement.items()))
    workers = {n.name for n in cluster.workers}
    assert placement["finetune"] == workers, placement
    assert placement["cells"] == workers and placement["cell_actors"] == workers, placement

    store = _store(url, s3_server)
    n_runs, n_cells = _study_size()
    _assert_whole(store, n_runs, n_cells)
    cells = store.read_table("cells")
    assert cells["value"].notna().all() and (cells["n_examples"] > 0).all()


@pytest.mark.slow
@pytest.mark.timeout(3 * JOB_TIMEOUT_S)
def test_nodes_lost_mid_study(s3_server, cluster: MultiNodeCluster) -> None:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    url = s3_server.url(f"mn-loss-{uuid.uuid4().hex[:8]}")
    store = _store(url, s3_server)
    n_runs, n_cells = _study_size()
    # A larger study than the tiny config's (the vectors' values are not compared here, only that nothing is lost
    # or doubled): on a quiet machine the fleet must still be running when the driver is stopped after the node
    # loss, and the cells stage must still be running when its node is killed. With a 4x wider base, 4x the steps
    # and up to 160 test examples a period, on 2 cores (2026-12-06): the fleet 18 s for 16 steps a run, the cells
    # 20 s (they took 5 s before, and once were over before the test saw an evaluation actor on the node).
    entry = [*_entrypoint(url, s3_server.endpoint_url), "--set", "training.steps=32", "--set", "base.tiny.d_model=128",
             "--set", "base.tiny.d_ff=512", "--set", "base.tiny.num_layers=2", "--set", "corpus.caps.test=160",
             "--set", "evaluation.max_examples=160"]  # fmt: skip

    def stored() -> int:
        return len(store.list_vectors()) if store.exists() else 0

    # Fault 1: a worker node dies while the fleet trains (a trial running on it, vectors still missing).
    first = f"timevec-mn-loss1-{uuid.uuid4().hex[:8]}"
    submit_job(cluster, first, entry)
    job1 = _job_id(cluster, first)
    victim = cluster.workers[-1]

    def training_on_victim() -> bool:
        running = [t for t in _tasks(cluster, job1) if _is_trial(t.name) and t.state == "RUNNING"]
        return stored() >= 1 and any(t.node_id == victim.node_id for t in running)

    _wait_until("a fine-tune trial running on the victim node", training_on_victim, JOB_TIMEOUT_S, (cluster, first))
    at_kill = stored()
    assert at_kill < n_runs
    cluster.kill_node(victim)
    noticed = cluster.wait_dead(victim)
    print(f"\nfault 1: node {victim.name} killed during the fleet with {at_kill}/{n_runs} vectors stored; "
          f"Ray marked it dead after {noticed:.1f} s")  # fmt: skip

    # Fault 2: the driver is killed after the node loss while the fleet goes on on the node left.
    _wait_until("a vector stored after the node loss", lambda: stored() > at_kill, JOB_TIMEOUT_S, (cluster, first))
    at_stop = stored()
    assert at_stop < n_runs, "the fleet finished before the driver could be stopped"
    client.stop_job(first)
    assert wait_job(cluster, first, 120) == "STOPPED"
    print(f"fault 2: driver stopped with {at_stop}/{n_runs} vectors stored (job {client.get_job_status(first).value})")

    # A replacement node joins (as an autoscaler would add one), the study is re-submitted and resumes.
    replacement = cluster.add_worker(1)
    second = f"timevec-mn-loss2-{uuid.uuid4().hex[:8]}"
    submit_job(cluster, second, entry)
    job2 = _job_id(cluster, second)

    # Fault 3: a worker node dies while the cells are evaluated (an item running on it).
    def evaluating_on_replacement() -> bool:
        # Its evaluation actor is up (θ_pre loaded) and has an item: the driver hands every actor one at once.
        return any(a.class_name.endswith("CellActor") and a.state == "ALIVE" and a.node_id == replacement.node_id
                   for a in _actors(cluster, job2))  # fmt: skip

    _wait_until("an evaluation actor up on the replacement node", evaluating_on_replacement, JOB_TIMEOUT_S,
                (cluster, second))  # fmt: skip
    assert stored() == n_runs
    cells_at_kill = len(store.read_table("cells")) if store.has_table("cells") else 0
    cluster.kill_node(replacement)
    noticed = cluster.wait_dead(replacement)
    print(f"fault 3: node {replacement.name} killed during the cells with {cells_at_kill}/{n_cells} cells stored; "
          f"Ray marked it dead after {noticed:.1f} s")  # fmt: skip
    status = wait_job(cluster, second, JOB_TIMEOUT_S)
    logs = client.get_job_logs(second)
    assert status == "SUCCEEDED", f"re-submitted job ended {status}; log tail:\n{logs[-6000:]}"
    placement = _placement(cluster, job2)
    print("re-submission: " + "; ".join(f"{k} on {sorted(v)}" for k, v in placement.items()))
    assert "skipped" in logs or "already in the store" in logs, "the re-submission did not resume from the store"

    _assert_whole(store, n_runs, n_cells)
    cells = store.read_table("cells")
    assert cells["value"].notna().all() and (cells["n_examples"] > 0).all()
