"""The evaluation stages' pool driver on a real local Ray: streaming, failures by type, setup errors."""

from __future__ import annotations

import pytest

from timevec.config import RayConfig
from timevec.distributed.actor_pool import (
    ActorSetupError,
    PoolActor,
    drive,
    failure_error,
)
from timevec.store import StoreError

#: The out-of-memory test's cap beyond what an actor holds when it caps itself, its item's own
#: allocation and the headroom the first attempt's fault-injection ballast leaves, MiB: 64 fits under 100, not in 32.
CAP_MB, ITEM_MB, HEADROOM_MB = 100, 64, 32


class _Echo(PoolActor):
    """Doubles an item; item 3 is bad stored data, item 5 a bug; ``broken`` fails its setup."""

    def setup(self, factor: int, broken: bool = False) -> None:
        if broken:
            raise StoreError("base: shard-00000.safetensors is truncated")
        self.factor = factor

    def work(self, item: int, offset: int) -> dict[str, list[dict]]:
        if item == 3:
            raise StoreError(f"vector lm/{item}: corrupt")
        if item == 5:
            raise KeyError(item)
        return {"rows": [{"item": item, "value": item * self.factor + offset}]}


class _Allocates(PoolActor):
    """Allocates (and touches) ITEM_MB MiB per item, then doubles it."""

    def setup(self) -> None:
        pass

    def work(self, item: int, offset: int) -> dict[str, list[dict]]:
        block = bytearray(ITEM_MB * 2**20)
        return {"rows": [{"item": item, "value": 2 * item + offset + block[-1]}]}


def _ray_config() -> RayConfig:
    return RayConfig(num_cpus=2, eval_actors=2, cpus_per_eval_actor=0.5)


def test_rows_stream_and_failures_keep_their_type(ray_session: str) -> None:
    appended: list[list[dict]] = []
    seen: list[str] = []
    outcome = drive(
        _Echo, (10,), _ray_config(), list(range(7)), lambda: [1], {"rows": lambda rows: appended.append(list(rows))},
        desc="test", unit="item", flush_rows=2, flush_seconds=60.0, on_failure=lambda f: seen.append(f.text),
    )
    rows = sorted((r["item"], r["value"]) for batch in appended for r in batch)
    assert rows == [(i, 10 * i + 1) for i in (0, 1, 2, 4, 6)]
    assert outcome.rows == {"rows": 5} and outcome.flushes == len(appended) >= 2
    errors = {f.item: f.error for f in outcome.failures}
    assert isinstance(errors[3], StoreError) and isinstance(errors[5], KeyError)
    assert sorted(seen) == ["KeyError: 5", "timevec.store.StoreError: vector lm/3: corrupt"]
    assert isinstance(failure_error("m", outcome.failures), StoreError)
    assert type(failure_error("m", [f for f in outcome.failures if f.item == 5])) is RuntimeError


def test_a_failed_setup_reaches_the_stage_as_its_own_exception(ray_session: str) -> None:
    got: list[BaseException] = []
    with pytest.raises(ActorSetupError):
        drive(_Echo, (10, True), _ray_config(), [0, 1], lambda: [0], {"rows": lambda rows: None},
              desc="test", unit="item", flush_rows=1, flush_seconds=60.0, on_setup_error=got.append)
    assert len(got) == 1 and isinstance(got[0], StoreError) and "truncated" in str(got[0])

    def stage_error(error: BaseException) -> None:
        raise StoreError(f"an evaluation actor could not load the base: {error}") from None

    with pytest.raises(StoreError, match="could not load the base: base: shard-00000.safetensors is truncated"):
        drive(_Echo, (10, True), _ray_config(), [0], lambda: [0], {"rows": lambda rows: None},
              desc="test", unit="item", flush_rows=1, flush_seconds=60.0, on_setup_error=stage_error)


def test_an_item_out_of_memory_on_its_first_attempt_is_retried_in_another_process_and_kept(ray_session: str) -> None:
    """A real cap (RLIMIT_DATA, ``ray.eval_actor_memory_mb``): each item's first attempt holds the
    ballast (all of the cap but HEADROOM_MB) and its own allocation is refused; its retry, in a fresh
    actor, has no ballast and fits."""
    import os

    config = RayConfig(num_cpus=2, eval_actors=1, cpus_per_eval_actor=0.5, max_failures=2,
                       eval_actor_memory_mb=CAP_MB, fault_first_attempt_headroom_mb=HEADROOM_MB)  # fmt: skip
    appended: list[dict] = []
    outcome = drive(_Allocates, (), config, [0, 1], lambda: [1], {"rows": appended.extend},
                    desc="test", unit="item", flush_rows=1, flush_seconds=60.0)  # fmt: skip
    assert sorted((r["item"], r["value"]) for r in appended) == [(0, 1), (1, 3)]
    assert outcome.failures == [] and outcome.retries == 2
    for item in (0, 1):
        first, retry = (a for a in outcome.attempts if a.item == item)
        assert (first.number, retry.number) == (1, 2) and retry.error is None
        assert first.error is not None and first.error.startswith(f"out of memory in evaluation actor {first.actor_id} "
                                                                  f"(pid {first.pid} on ")  # fmt: skip
        assert "MemoryError" in first.error and f"ray.eval_actor_memory_mb={CAP_MB}" in first.error
        assert first.pid != retry.pid and first.actor_id != retry.actor_id
    # item 1's first attempt ran in the actor of item 0's retry: three actor processes, none the driver
    pids = [a.pid for a in outcome.attempts]
    assert len(set(pids)) == 3 and os.getpid() not in pids


def test_a_thread_start_refused_under_the_data_cap_counts_as_out_of_memory() -> None:
    """Under RLIMIT_DATA a thread's 8 MiB stack is a private mapping it counts: with 2 MiB left, starting a thread
    fails with Python's "can't start new thread", which is then out of memory (retried); without a cap it is not."""
    import subprocess
    import sys

    code = """
import threading, time
from timevec.train.memory_limit import cap_data_memory, is_out_of_memory
refused = RuntimeError("can't start new thread")
print("uncapped", is_out_of_memory(refused))
cap_data_memory(2)
try:
    threading.Thread(target=time.sleep, args=(0.01,)).start()
    print("started")
except RuntimeError as exc:
    print("capped", exc, is_out_of_memory(exc))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["uncapped False", "capped can't start new thread True"], (done.stdout, done.stderr)
