"""One driver for the evaluation stages' actor pools: schedule items, stream rows, report failures.

One job: the cells stage and the interpolation stage both run a list of coarse work items on a
fixed number of evaluation actors, each holding θ_pre once, and stream the rows to the store as
items finish. :func:`drive` is that loop, written once:

- actors are created first (process start, imports, θ_pre load) and the shared inputs (tokenised
  splits) are built on the driver meanwhile, then put in the object store ONCE and passed to every
  call inside a list, so Ray hands the actor the reference and the actor fetches it once;
- scheduling is Ray's: a ``ray.util.ActorPool`` (``submit`` / ``get_next_unordered``), results in
  completion order, a progress bar per item;
- rows are buffered per output table and appended in batches (by row count or elapsed time), and
  whatever finished before an error is still appended; every actor is killed at the end.

Errors cross the actor boundary as exceptions, never as text to match:

- an exception in one item is caught in the actor and RETURNED with the item (the exception object
  itself, pickled by Ray), so the other items go on and the stage can then decide by type
  (:func:`failure_error`: ``StoreError``/``VectorError`` → ``StoreError``, exit status 2);
- an exception in an actor's setup (θ_pre cannot be loaded) is kept and raised by its first call
  as :class:`ActorSetupError`: Ray re-raises a ``RayTaskError`` that is also an instance of the
  raised class (``RayTaskError.as_instanceof_cause``), so the driver catches it by type and hands
  the original exception to the stage (an actor whose constructor raises would die with an
  ``ActorDiedError`` that carries only the text).
"""

from __future__ import annotations

import logging
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util import ActorPool

from timevec.config import RayConfig
from timevec.distributed.runtime import ensure_ray
from timevec.progress import Progress
from timevec.store import StoreError
from timevec.vectors import VectorError

log = logging.getLogger(__name__)

__all__ = ["ActorSetupError", "Failure", "PoolActor", "PoolOutcome", "drive", "failure_error"]

#: Errors of stored data (a corrupt or missing vector, a wrong shape): the user fixes the store.
BAD_STORED_DATA: tuple[type[Exception], ...] = (StoreError, VectorError)

Rows = dict[str, list[dict[str, Any]]]  # output name -> rows


class ActorSetupError(Exception):
    """An actor's setup failed; ``error`` is the original exception (raised by the actor's calls)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if Ray can ship it to the driver, else a RuntimeError with its text.

    An exception is pickled as its class and ``args`` and rebuilt as ``type(exc)(*exc.args)``;
    both are tried here (without unpickling anything: the project never does).
    """
    try:
        pickle.dumps(exc)
        type(exc)(*exc.args)
        return exc
    except Exception:  # noqa: BLE001 - an exception type that cannot be rebuilt on the driver
        return RuntimeError(_text(exc))


def _text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class PoolActor:
    """Base of a pool's actor classes: ``setup(*args)`` once, ``work(item, *shared)`` per item.

    ``shared`` are the values of the object references that :func:`drive` passes to every call,
    fetched once per actor process (again after Ray restarts a crashed actor).
    """

    def __init__(self, *args: Any) -> None:
        self._setup_error: BaseException | None = None
        self._shared_id: str | None = None
        self._shared: list[Any] = []
        try:
            self.setup(*args)
        except Exception as exc:  # noqa: BLE001 - raised, typed, by every call (see the module docstring)
            self._setup_error = _portable(exc)

    def setup(self, *args: Any) -> None:
        raise NotImplementedError

    def work(self, item: Any, *shared: Any) -> Rows:
        raise NotImplementedError

    def ready(self) -> bool:
        if self._setup_error is not None:
            raise ActorSetupError(self._setup_error)
        return True

    def run(self, item: Any, refs: list) -> tuple[Any, Rows, BaseException | None, str | None]:
        """(item, rows per output, error, error text): an item's error is returned, not raised."""
        self.ready()
        try:
            if self._shared_id != refs[0].hex():
                self._shared = ray.get(refs)
                self._shared_id = refs[0].hex()
            return item, self.work(item, *self._shared), None, None
        except Exception as exc:  # noqa: BLE001 - reported by the driver, naming the item
            return item, {}, _portable(exc), _text(exc)


@dataclass
class Failure:
    """An item whose work raised: the exception (as raised in the actor) and its one-line text."""

    item: Any
    error: BaseException
    text: str


@dataclass
class PoolOutcome:
    """What :func:`drive` did: rows per output, failures, flushes, the actors' final answers."""

    actors: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    flushes: int = 0
    created: float = 0.0  # wall clock when the actors were created
    finished: float = 0.0  # wall clock when the last item was done
    collected: list[Any] = field(default_factory=list)


def failure_error(message: str, failures: Sequence[Failure]) -> Exception:
    """The stage's error for failed items: ``StoreError`` when any was bad stored data, else RuntimeError."""
    if any(isinstance(f.error, BAD_STORED_DATA) for f in failures):
        return StoreError(message)
    return RuntimeError(message)


def drive(
    actor_class: type[PoolActor],
    actor_args: tuple,
    ray_config: RayConfig,
    items: Sequence[Any],
    shared: Callable[[], list[Any]],
    sinks: dict[str, Callable[[list[dict[str, Any]]], None]],
    *,
    desc: str,
    unit: str,
    flush_rows: int,
    flush_seconds: float,
    on_failure: Callable[[Failure], None] | None = None,
    on_setup_error: Callable[[BaseException], None] | None = None,
    collect: str | None = None,
) -> PoolOutcome:
    """Run ``items`` (in this order) on ``min(ray.eval_actors, len(items))`` actors of ``actor_class``.

    ``shared()`` builds the values every call needs (while the actors start); ``sinks`` append a
    batch of rows of one output to the store. ``on_failure`` sees each failed item as it comes;
    ``on_setup_error`` sees the original exception of an actor whose setup failed (it may raise
    the stage's own error; otherwise Ray's is re-raised). ``collect`` names an actor method whose
    answers (from every actor, after the last item) land in ``PoolOutcome.collected``.
    """
    ensure_ray(ray_config)
    actor_cls = ray.remote(actor_class).options(
        num_cpus=ray_config.cpus_per_eval_actor,
        num_gpus=ray_config.gpus_per_eval_actor,
        max_restarts=ray_config.max_failures,
        max_task_retries=ray_config.max_failures,
    )
    outcome = PoolOutcome(rows={name: 0 for name in sinks})
    outcome.created = time.time()
    actors = [actor_cls.remote(*actor_args) for _ in range(min(ray_config.eval_actors, len(items)))]
    outcome.actors = len(actors)
    buffers: dict[str, list[dict[str, Any]]] = {name: [] for name in sinks}
    last_flush = time.perf_counter()

    def flush() -> None:
        nonlocal last_flush
        if any(buffers.values()):
            outcome.flushes += 1
        for name, rows in buffers.items():
            if rows:
                sinks[name](rows)
                rows.clear()
        last_flush = time.perf_counter()

    try:
        refs = [ray.put(value) for value in shared()]
        pool = ActorPool(actors)
        for item in items:
            pool.submit(lambda actor, value: actor.run.remote(value, refs), item)
        progress = Progress(desc, len(items), unit=unit)
        while pool.has_next():
            try:
                item, rows, error, text = pool.get_next_unordered()
            except ActorSetupError as exc:  # Ray's RayTaskError, also an ActorSetupError
                if on_setup_error is not None:
                    on_setup_error(exc.error)
                raise
            if error is not None:
                failure = Failure(item, error, text or _text(error))
                outcome.failures.append(failure)
                progress.advance(1, extra=f"{len(outcome.failures)} failed")
                if on_failure is not None:
                    on_failure(failure)
                continue
            progress.advance(1, extra=f"{len(outcome.failures)} failed" if outcome.failures else "")
            for name, part in rows.items():
                buffers[name].extend(part)
                outcome.rows[name] += len(part)
            if sum(map(len, buffers.values())) >= flush_rows or time.perf_counter() - last_flush >= flush_seconds:
                flush()
        flush()
        outcome.finished = time.time()
        if collect is not None:
            outcome.collected = ray.get([getattr(a, collect).remote() for a in actors])
    finally:
        flush()  # whatever finished before an error is kept
        for actor in actors:
            ray.kill(actor)
    return outcome
