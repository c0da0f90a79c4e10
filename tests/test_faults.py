"""Faults that scale brings (issue #13, deliverable 6), each on real components.

- Two drivers on one store: the writer lease (``timevec/store/lease.py``) on a local folder and on
  the S3 server on loopback — one winner among concurrent contenders, a killed holder's lease taken
  over once it expires — and two real ``timevec finetune CONFIG`` processes on one config: one
  trains, the other exits 2 naming the first, and the store holds each vector once, complete.
- An evaluation actor out of memory under a real limit (``ray.eval_actor_memory_mb``, an
  ``RLIMIT_DATA`` the actor sets on itself): the cells stage reports which vector, which cells, which
  actor and why, keeps the cells already computed, and a re-run computes only the missing ones; an
  item whose first attempt runs out of memory (fault injection: ``ray.fault_first_attempt_headroom_mb``)
  gets, from its retry in another process, the cells of an uncapped run.
- The same cap as a memory cgroup (``ray.eval_actor_memory_kind: cgroup``): the kernel's OOM killer
  SIGKILLs the actor mid-item; once Ray's restarts (ray.max_failures) are spent the item fails as ActorDied, a
  fresh actor takes the rest, and a re-run computes only the missing cells.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import timevec.demo
from tests.components import require, require_that
from timevec.config import dump_config, load_config
from timevec.store import StoreError, VectorStore
from timevec.store.lease import LeaseHeld

TINY = Path(timevec.demo.__file__).parent / "tiny.yaml"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3"])
def lease_store(request: pytest.FixtureRequest, tmp_path: Path) -> VectorStore:
    if request.param == "local":
        return VectorStore(str(tmp_path / "store"))
    server = request.getfixturevalue("s3_server")
    return VectorStore(server.url(f"lease-{tmp_path.name}"), server.storage_options)


def test_one_of_many_concurrent_drivers_gets_the_lease(lease_store: VectorStore) -> None:
    leases = [lease_store.lease("finetune", 60, "the finetune stage") for _ in range(6)]
    results: list[object] = [None] * len(leases)
    start = threading.Barrier(len(leases))

    def contend(i: int) -> None:
        start.wait()
        try:
            results[i] = leases[i].acquire()
        except LeaseHeld as exc:
            results[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(leases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if not isinstance(r, LeaseHeld)]
    assert len(winners) == 1, results
    loser = next(r for r in results if isinstance(r, LeaseHeld))
    assert isinstance(loser, StoreError)  # exit status 2 in the CLI
    assert f"pid {os.getpid()}" in str(loser) and "already running from another driver" in str(loser)
    held = winners[0]
    assert held.renew() and held.lost is None
    held.release()
    again = lease_store.lease("finetune", 60, "the finetune stage").acquire()  # released: free at once
    assert again.took_over is None
    again.release()


def test_a_live_lease_is_renewed_a_dead_one_expires_and_is_taken_over(lease_store: VectorStore) -> None:
    ttl = 1.0
    with lease_store.lease("finetune", ttl, "the finetune stage") as live:
        time.sleep(2.5 * ttl)  # renewed every ttl/3 by its thread: still held after its ttl
        with pytest.raises(LeaseHeld, match="already running from another driver"):
            lease_store.lease("finetune", ttl, "the finetune stage").acquire()
    assert live.lost is None
    # A killed driver leaves exactly this: a lease that is never renewed again.
    dead = lease_store.lease("finetune", ttl, "the finetune stage").acquire()
    time.sleep(1.5 * ttl)
    taker = lease_store.lease("finetune", ttl, "the finetune stage").acquire()
    assert taker.took_over is not None and taker.took_over["holder"] == dead.holder
    # The old holder, if it was only stalled, learns it lost the lease at its next renewal.
    assert not dead.renew() and "was taken over by" in (dead.lost or "")
    assert taker.renew()
    taker.release()
    # A holder on this host whose process is gone is stale at once (a driver killed and re-run here).
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = lease_store.lease("finetune", 60, "the finetune stage")
    record = {**held._new_record(), "pid": int(gone.stdout)}
    assert held.stale(record) and not held.stale(held._new_record())


def test_a_stalled_holder_is_fenced_off_after_a_takeover(lease_store: VectorStore) -> None:
    """The stalled holder's late writes are refused (its fenced store re-reads the lease), in
    this process and in a pickled copy such as a Ray trial gets; the new holder's vector stays intact."""
    import pickle

    import pandas as pd
    import torch

    from timevec.store.lease import LeaseLost
    from timevec.weights.vectors import TimeVector

    base = {"w": torch.zeros(64, 8), "b": torch.zeros(8)}
    lease_store.init("fence-base", base, target_shard_bytes=1024)
    vec = lambda x: TimeVector({"w": torch.full((64, 8), x), "b": torch.full((8,), x)})  # noqa: E731
    ttl = 1.0
    stalled = lease_store.lease("finetune", ttl, "the finetune stage").acquire()  # no renewals: a stall
    mine, shipped = lease_store.fenced(stalled), pickle.loads(pickle.dumps(lease_store.fenced(stalled)))
    mine.put_vector("lm", "2014", vec(1.0))  # while the lease holds, a fenced store writes as any other
    time.sleep(1.5 * ttl)
    with pytest.raises(LeaseLost, match=r"refused to write vectors/lm/2015/.*leases/finetune\.json.*it expired"):
        mine.put_vector("lm", "2015", vec(2.0))  # expired, not yet taken: already refused
    taker = lease_store.lease("finetune", 60, "the finetune stage").acquire()
    theirs = lease_store.fenced(taker)
    theirs.put_vector("lm", "2015", vec(3.0))
    for store in (mine, shipped):  # the stalled driver wakes, and so does its trial
        with pytest.raises(LeaseLost, match=rf"taken over by host .* pid {os.getpid()}"):
            store.put_vector("lm", "2015", vec(2.0))
        with pytest.raises(LeaseLost):
            store.delete_vector("lm", "2014")
        with pytest.raises(LeaseLost):
            store.write_table("cells", pd.DataFrame({"x": [1]}))
    assert isinstance(LeaseLost("x"), StoreError)  # exit status 2 in the CLI
    assert torch.equal(lease_store.get_vector("lm", "2015")["w"], vec(3.0)["w"])
    assert lease_store.has_vector("lm", "2014") and lease_store.verify() == []
    assert not lease_store.has_table("cells")
    taker.release()
    with pytest.raises(LeaseLost, match="it was released"):
        theirs.put_vector("lm", "2016", vec(4.0))


def test_two_finetune_drivers_on_one_config(ray_session: str, tmp_path: Path) -> None:
    """Two real ``timevec finetune`` processes at once on one store: one trains, one is refused.

    On a local folder (the lease's CAS on S3 is tested above, with the same code above it).
    """
    config = load_config(TINY, [
        f"store.url={tmp_path / 'store'}", "tasks=[lm]", "periods.end='2015'", "training.steps=4",
        "training.checkpoint_every=4", "base.pretrain.steps=2",
    ])  # fmt: skip
    path = tmp_path / "two.yaml"
    path.write_text(dump_config(config))
    env = {**os.environ, "RAY_ADDRESS": ray_session, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    began = time.perf_counter()
    drivers = [
        subprocess.Popen([sys.executable, "-m", "timevec.cli", "finetune", str(path)], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outs = [d.communicate(timeout=300) for d in drivers]
    print(f"two drivers: {time.perf_counter() - began:.1f} s")
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 2], [(d.returncode, err[-2000:]) for d, (_, err) in zip(drivers, outs)]
    loser = next(i for i, d in enumerate(drivers) if d.returncode == 2)
    winner = drivers[1 - loser]
    message = outs[loser][1]
    assert "the finetune stage is already running from another driver" in message
    assert f"pid {winner.pid}" in message and "leases/finetune.json" in message
    store = VectorStore.from_config(config.store)
    assert store.list_vectors() == [("lm", "2014"), ("lm", "2015")]
    assert store.verify() == []  # every shard of the base and of each vector matches its manifest
    for task, period in store.list_vectors():
        names = sorted(p.rsplit("/", 1)[-1] for p in store.list_paths(f"vectors/{task}/{period}"))
        assert names == ["manifest.json"] + [f"shard-{k:05d}.safetensors" for k in range(store.num_shards)]
    lease = store.lease("finetune", 60, "the finetune stage").acquire()  # the winner released it
    assert lease.took_over is None
    lease.release()


#: The memory-cap tests' cap beyond θ_pre, MiB. Measured here (2026-12-06) on the base below, with
#: ``ray.max_failures=0``: θ_pre's own cells fail at 45 and pass at 55 (RLIMIT_DATA), pass at 60 as a
#: cgroup; a vector of this base is 150 MiB, so every vector's cells fail. The cap used to be 45 on a
#: 2-layer base whose θ_pre cells failed at 40: θ_pre's item itself then ran out of memory now and then.
CAP_MB = 90


def _capped_study(tmp_path: Path, max_failures: int) -> list[str]:
    """Overrides of the memory-cap tests: a 150 MiB untrained base (d_model 1024, 6 layers), one evaluation actor."""
    return [
        f"store.url={tmp_path / 'store'}", "tasks=[lm]", "periods.end='2015'", "base.pretrain.steps=0",
        "base.tiny.d_model=1024", "base.tiny.d_ff=1024", "base.tiny.num_layers=6", "evaluation.batch_size=4",
        "evaluation.bootstrap_samples=0", "ray.eval_actors=1", f"ray.max_failures={max_failures}",
    ]  # fmt: skip


def _store_with_two_vectors(config):
    """θ_pre of ``config`` (untrained) and two random vectors of its size, lm/2014 and lm/2015."""
    import torch

    from timevec.data.corpus import load_corpus
    from timevec.train.loop import prepare_base
    from timevec.weights.vectors import TimeVector

    store = VectorStore.from_config(config.store)
    prepare_base(config, load_corpus(config.corpus), store)
    base = store.get_base()
    generator = torch.Generator().manual_seed(0)
    for period in ("2014", "2015"):
        vector = {n: 1e-3 * torch.randn(t.shape, generator=generator) for n, t in base.items()}
        store.put_vector("lm", period, TimeVector(vector))
    return store


def test_an_actor_out_of_memory_is_retried_reported_and_only_its_cells_recomputed(ray_session: str, tmp_path: Path) -> None:
    """A real cap (RLIMIT_DATA, ``ray.eval_actor_memory_mb``) that θ_pre's own cells fit under but a
    vector's do not: a vector of this base is 150 MiB, the cap is 90 MiB beyond θ_pre (θ_pre's cells need 45–55)."""

    from timevec.distributed.cells import read_cells, run_cells
    from timevec.errors import StageFailed

    overrides = _capped_study(tmp_path, max_failures=1)
    config = load_config(TINY, [*overrides, f"ray.eval_actor_memory_mb={CAP_MB}"])
    store = _store_with_two_vectors(config)
    assert sum(t.numel() for t in store.get_base().values()) * 4 > 1.5 * CAP_MB * 2**20

    with pytest.raises(StageFailed) as failed:
        run_cells(config, store)
    message = str(failed.value)
    for vector in ("lm/2014", "lm/2015"):
        assert f"{vector} (year; 2 cell(s) missing, test periods 2014, 2015): out of memory" in message
    # one restart is allowed (ray.max_failures=1): the first vector is retried on a fresh actor, another process
    # and its line names the pid of that retry's out-of-memory: (last, first, retry)
    ((last, first, retry),) = re.findall(
        r"\(pid (\d+) on [^)]*\)[^\n]*\(tried 2 times, each on a fresh actor: pids (\d+), (\d+)\)", message
    )
    assert first != retry == last
    assert message.count("out of memory in evaluation actor") == 2 and "pid " in message
    assert f"ray.eval_actor_memory_mb={CAP_MB}" in message and ("MemoryError" in message or "can't allocate memory" in message)
    kept = read_cells(store)
    assert sorted(kept["vector"]) == ["base", "base"]  # θ_pre's cells were computed and stored

    config = load_config(TINY, [*overrides, "ray.eval_actor_memory_mb=1000"])
    frame, stats = run_cells(config, store)
    assert (stats.cells_computed, stats.cells_skipped) == (4, 2)  # only the missing cells
    assert len(frame) == 6 and not frame.duplicated(["vector", "test_period"]).any()


#: The retry test's cap beyond θ_pre and the headroom its first attempts' ballast leaves, MiB: a vector's
#: cells fit under 1000 (the re-run above) but not in 30, where the store's two reading threads start
#: (8 MiB stacks) and the first shard's buffer (~50 MiB) is refused. With 50 left, one run of two had a
#: thread start refused instead: Python's "can't start new thread" (then not counted as out of memory, so that
#: item failed unretried, seen here 2026-12-07; is_out_of_memory now counts it under a cap).
RETRY_CAP_MB, HEADROOM_MB = 1000, 30

#: The cells columns computed from the weights and the test split (not ``seconds``, a wall time).
COMPUTED = ["task", "granularity", "vector", "train_period", "test_period", "metric", "value", "low", "high",
            "n_examples", "n_tokens"]  # fmt: skip


@pytest.mark.slow
def test_an_item_out_of_memory_on_its_first_attempt_gets_the_uncapped_cells_from_its_retry_in_another_process(
    ray_session: str, tmp_path: Path
) -> None:
    """Under a real cap (RLIMIT_DATA, ``ray.eval_actor_memory_mb``) each vector's first attempt also holds
    the fault-injection ballast (all of the cap but HEADROOM_MB) and runs out of memory; its retry, in a
    fresh actor, has none and fits. Its cells equal, value for value, those of an uncapped run over the
    same store."""
    import pandas as pd

    from timevec.distributed.cells import run_cells

    overrides = _capped_study(tmp_path, max_failures=2)  # one actor, two items: each may be retried once
    config = load_config(TINY, [*overrides, f"ray.eval_actor_memory_mb={RETRY_CAP_MB}",
                                f"ray.fault_first_attempt_headroom_mb={HEADROOM_MB}"])  # fmt: skip
    store = _store_with_two_vectors(config)
    frame, stats = run_cells(config, store, include_base=False)
    assert stats.failures == [] and stats.retries == 2 and stats.cells_computed == 4
    for vector in ("lm/2014", "lm/2015"):
        first, retry = (a for a in stats.attempts if a.item.vector == vector)
        assert (first.number, retry.number) == (1, 2) and retry.error is None
        assert first.error is not None and first.error.startswith(
            f"out of memory in evaluation actor {first.actor_id} (pid {first.pid} on "
        ) and f"ray.eval_actor_memory_mb={RETRY_CAP_MB:g}" in first.error
        assert first.pid != retry.pid and first.actor_id != retry.actor_id
    pids = [a.pid for a in stats.attempts]  # lm/2015's first attempt ran in the actor of lm/2014's retry
    assert len(set(pids)) == 3 and os.getpid() not in pids

    # the reference: the same vectors in a copy of the store, evaluated uncapped
    copy = tmp_path / "uncapped"
    shutil.copytree(store.root, copy, ignore=shutil.ignore_patterns("results", "leases"))
    uncapped, reference = run_cells(load_config(TINY, [*overrides, f"store.url={copy}"]), include_base=False)
    assert reference.retries == 0 and reference.cells_computed == 4
    assert sorted(frame["vector"]) == ["lm/2014"] * 2 + ["lm/2015"] * 2
    pd.testing.assert_frame_equal(frame[COMPUTED], uncapped[COMPUTED], check_exact=True)


def test_every_later_stage_refuses_a_second_driver_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The stages after the fine-tunes rewrite result tables: each runs under its own lease, so a second
    driver of the same stage exits 2 naming the first — here the lease held by this process — and writes
    nothing; a lease released by its holder is free again at once."""
    from tests.reliability import run_cli
    from timevec.data.corpus import load_corpus
    from timevec.train.loop import prepare_base

    config = load_config(TINY, [f"store.url={tmp_path / 'store'}", "tasks=[lm]", "periods.end='2015'",
                                "base.pretrain.steps=0"])  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    store = VectorStore.from_config(config.store)
    prepare_base(config, load_corpus(config.corpus), store)
    for stage in ("evaluate", "interpolate", "analyze", "report"):
        with store.lease(stage, 60, f"the {stage} stage") as held:
            code, _, err = run_cli(capsys, "run", str(path), "--stages", stage)
            assert code == 2, err[-2000:]
            assert f"the {stage} stage is already running from another driver" in err and f"pid {os.getpid()}" in err
            assert f"leases/{stage}.json" in err and held.renew()
        assert not store.list_paths("results") and not store.list_paths("reports")  # nothing written
        store.lease(stage, 60, f"the {stage} stage").acquire().release()  # released: free at once


def _cgroup_or_skip() -> None:
    from timevec.train.memory_cgroup import CgroupUnavailable, memory_cgroup_dir

    try:
        directory, _ = memory_cgroup_dir()
    except CgroupUnavailable as exc:
        require("cgroup", f"no memory cgroup here: {exc}")
    require_that(os.access(directory, os.W_OK), "cgroup", f"the memory cgroup {directory} is not writable here")


def test_a_memory_cgroup_gets_its_process_killed_by_the_kernel_and_is_swept() -> None:
    """The real thing the cgroup cap relies on: over its limit, the kernel's OOM killer SIGKILLs the process."""
    _cgroup_or_skip()
    from timevec.train.memory_cgroup import PREFIX, memory_cgroup_dir

    child = (
        "import os, sys, torch; from timevec.train.memory_cgroup import join_memory_cgroup; "
        "group = join_memory_cgroup(64); print(group, flush=True); "
        "ok = torch.ones(4 * 2**20); print('fits', flush=True); "  # 16 MiB under the limit: fine
        "big = torch.ones(64 * 2**20); print('survived', flush=True)"  # 256 MiB: killed
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    lines = done.stdout.split()
    assert done.returncode == -9, (done.returncode, done.stdout, done.stderr[-2000:])  # SIGKILL
    assert lines[1:] == ["fits"], done.stdout
    group = Path(lines[0])
    assert group.name.startswith(PREFIX) and group.name.removeprefix(PREFIX).isdigit() and group.exists()
    parent, _ = memory_cgroup_dir()
    assert group.parent == parent
    from timevec.train.memory_cgroup import sweep_dead_groups

    assert sweep_dead_groups(parent) >= 1 and not group.exists()  # the dead process's group is removed


def test_an_actor_killed_by_the_kernel_for_memory_is_replaced_reported_and_only_its_cells_recomputed(
    ray_session: str, tmp_path: Path
) -> None:
    """``ray.eval_actor_memory_kind: cgroup``: the same cap (CAP_MB) as a memory cgroup, so the kernel's OOM
    killer SIGKILLs the actor mid-item (no exception anywhere): the item fails as ActorDied (with
    ray.max_failures=0 Ray neither restarts the actor nor retries the call: each restart costs a worker
    start and a θ_pre load), a fresh actor takes the next item, and a re-run computes only the missing cells."""
    _cgroup_or_skip()

    from timevec.distributed.cells import read_cells, run_cells
    from timevec.errors import StageFailed

    overrides = _capped_study(tmp_path, max_failures=0)
    config = load_config(TINY, [*overrides, f"ray.eval_actor_memory_mb={CAP_MB}", "ray.eval_actor_memory_kind=cgroup"])
    store = _store_with_two_vectors(config)

    with pytest.raises(StageFailed) as failed:
        run_cells(config, store)
    message = str(failed.value)
    for vector in ("lm/2014", "lm/2015"):
        assert f"{vector} (year; 2 cell(s) missing, test periods 2014, 2015): evaluation actor" in message
    assert message.count("died while working on it (after 0 restart(s), ray.max_failures)") == 2
    assert message.count(f"memory cgroup of ray.eval_actor_memory_mb={CAP_MB} MiB") == 2
    assert sorted(read_cells(store)["vector"]) == ["base", "base"]  # θ_pre's cells were computed and stored

    config = load_config(TINY, overrides)  # no cap
    frame, stats = run_cells(config, store)
    assert (stats.cells_computed, stats.cells_skipped) == (4, 2)  # only the missing cells
    assert len(frame) == 6 and not frame.duplicated(["vector", "test_period"]).any()


def test_the_fault_knobs_are_validated() -> None:
    from timevec.config import ConfigError

    for field in ("ray.eval_actor_memory_mb", "store.lease_seconds", "ray.fault_first_attempt_headroom_mb"):
        with pytest.raises(ConfigError, match=field.split(".")[1]):
            load_config(TINY, [f"{field}=0"])
    for cap in ([], ["ray.eval_actor_memory_mb=100"], ["ray.eval_actor_memory_mb=200", "ray.eval_actor_memory_kind=cgroup"]):
        with pytest.raises(ConfigError, match="fault_first_attempt_headroom_mb=100 needs eval_actor_memory_mb above it"):
            load_config(TINY, [*cap, "ray.fault_first_attempt_headroom_mb=100"])
    with pytest.raises(ConfigError, match="eval_actor_memory_kind"):
        load_config(TINY, ["ray.eval_actor_memory_kind=rss"])
