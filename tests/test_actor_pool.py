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
