"""GPUs Ray hands out, on a machine without one: the refusal to fall back to the CPU silently, and
how fractional GPU requests are packed (ARCHITECTURE §4, issue #28 item 3).

The cluster is Ray's own multi-node test harness (``ray.cluster_utils.Cluster``) with FAKE GPU
resources (``num_gpus=2`` on a CPU-only machine, with this venv's ``+cpu`` torch): Ray schedules
and sets ``CUDA_VISIBLE_DEVICES`` exactly as on a GPU node, and torch sees no CUDA device. The study
runs as a user runs it (``python -m timevec finetune`` with RAY_ADDRESS); where and with what
each run and Ray Train worker ran is read back from Ray's state API.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.fake_cluster import TINY, actors, demand, start_cluster, stop_cluster, timevec_cli
from timevec.train.devices import NoCudaDevice, gpu_device

needs_cpu_only_torch = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine whose torch sees no GPU")


@needs_cpu_only_torch
def test_gpu_work_without_cuda_is_refused_unless_allowed(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with pytest.raises(NoCudaDevice) as refused:
        gpu_device(0.5, "ray.gpus_per_run", node="gpu-node-7")
    text = str(refused.value)
    assert "ray.gpus_per_run=0.5" in text and "gpu-node-7" in text and "CUDA_VISIBLE_DEVICES=3" in text
    assert torch.__version__ in text and "ray.allow_cpu_fallback: true" in text
    assert gpu_device(0.5, "ray.gpus_per_run", allow_cpu_fallback=True).type == "cpu"
    assert gpu_device(0.0, "ray.gpus_per_run").type == "cpu"  # no GPU asked for: nothing to refuse


@pytest.fixture(scope="module")
def fake_gpu_cluster() -> Iterator[str]:
    """One node with 2 CPUs and 2 fake GPUs; yields its address."""
    cluster = start_cluster([{"num_cpus": 2, "num_gpus": 2}])
    try:
        yield cluster.address
    finally:
        stop_cluster(cluster)


@pytest.mark.slow
@needs_cpu_only_torch
def test_gpu_runs_without_cuda_stop_the_study_with_exit_2(fake_gpu_cluster: str, tmp_path: Path) -> None:
    done = timevec_cli(fake_gpu_cluster, "finetune", str(TINY), "--set", f"store.url={tmp_path / 'store'}",
                       "--set", "tasks=[lm]", "--set", "periods.end='2015'", "--set", "ray.gpus_per_run=0.5")
    assert done.returncode == 2, done.stderr[-3000:]
    message = done.stderr.strip().splitlines()[-1]
    print(message)
    assert message.startswith("timevec finetune: error: ray.gpus_per_run=0.5: Ray gave this process a GPU on node ")
    assert "CUDA_VISIBLE_DEVICES=0" in message and f"torch {torch.__version__}" in message and "ray.allow_cpu_fallback" in message
    assert not (tmp_path / "store" / "vectors").exists(), "refused before any run trained"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two fleets through Ray Train: minutes on 2 idle cores, far longer on a busy machine
@needs_cpu_only_torch
def test_fractional_gpus_share_one_gpu_and_a_two_gpu_trainer_gets_two(fake_gpu_cluster: str, tmp_path: Path) -> None:
    from timevec.store import VectorStore

    common = ["--set", "tasks=[lm]", "--set", "ray.allow_cpu_fallback=true", "--set", "training.steps=2"]
    half = timevec_cli(fake_gpu_cluster, "finetune", str(TINY), "--set", f"store.url={tmp_path / 'half'}", *common,
                       "--set", "periods.end='2015'", "--set", "ray.gpus_per_run=0.5")
    assert half.returncode == 0, half.stderr[-3000:]
    two = timevec_cli(fake_gpu_cluster, "finetune", str(TINY), "--set", f"store.url={tmp_path / 'two'}", *common,
                      "--set", "periods.end='2014'", "--set", "ray.gpus_per_run=2", "--set", "ray.workers_per_run=2")
    assert two.returncode == 0, two.stderr[-3000:]

    seen = actors(fake_gpu_cluster)
    trials = [a for a in seen if demand(a["res"], "GPU") == 0.5]
    workers = [a for a in seen if a["cls"] == "RayTrainWorker"]
    print("0.5-GPU trial actors:", [(a["cls"], a["node"][:8], a["pid"], demand(a["res"], "GPU")) for a in trials])
    print("Ray Train workers:", [(a["node"][:8], a["pid"], demand(a["res"], "GPU")) for a in workers])
    half_store = VectorStore(str(tmp_path / "half"))
    placed = {p: half_store.manifest("lm", p)["run"]["ray"] for p in ("2014", "2015")}
    print("runs' GPU ids:", {p: r["gpu_ids"] for p, r in placed.items()})
    # two 0.5-GPU runs, each in its own trial process, were given the same GPU
    assert len({a["pid"] for a in trials}) == 2 and len({a["node"] for a in trials}) == 1
    assert placed["2014"]["gpu_ids"] == placed["2015"]["gpu_ids"] and len(placed["2014"]["gpu_ids"]) == 1
    # the 2-GPU run: two Train workers of one GPU each on the 2-GPU node, i.e. both GPUs
    assert len(workers) == 2 and all(demand(a["res"], "GPU") == 1.0 for a in workers)
    assert all(demand(a["res"], "memory") > 0 for a in trials + workers), "runs declare memory= to Ray"
    run = VectorStore(str(tmp_path / "two")).manifest("lm", "2014")["run"]
    assert run["workers"] == 2 and len(run["ray"]["gpu_ids"]) == 1
