"""One driver for the evaluation stages' actor pools: schedule items, stream rows, report failures.

One job: the cells stage and the interpolation stage both run a list of coarse work items on a
fixed number of evaluation actors, each holding θ_pre once, and stream the rows to the store as
items finish. :func:`drive` is that loop, written once:

- actors are created first (process start, imports, θ_pre load) and the shared inputs (tokenised
  splits) are built on the driver meanwhile, then put in the object store ONCE and passed to every
  call inside a list, so Ray hands the actor the reference and the actor fetches it once;
- scheduling: each idle actor gets the next item, results are taken in completion order with
  ``ray.wait`` (what ``ray.util.ActorPool`` does, but knowing which actor ran which item, which
  the failures below need), a progress bar per item;
- rows are buffered per output table and appended in batches (by row count or elapsed time), and
  whatever finished before an error is still appended; an actor is ended as soon as no item is left
  to hand it (a node lost: the actors Ray restarts on the nodes left need the CPUs/GPUs the idle
  ones hold), the rest at the end.

Errors cross the actor boundary as exceptions, never as text to match:

- an exception in one item is caught in the actor and RETURNED with the item (the exception object
  itself, pickled by Ray), so the other items go on and the stage can then decide by type
  (:func:`failure_error`: ``StoreError``/``VectorError`` → ``StoreError``, exit status 2);
- an exception in an actor's setup (θ_pre cannot be loaded) is kept and raised by its first call
  as :class:`ActorSetupError`: Ray re-raises a ``RayTaskError`` that is also an instance of the
  raised class (``RayTaskError.as_instanceof_cause``), so the driver catches it by type and hands
  the original exception to the stage (an actor whose constructor raises would die with an
  ``ActorDiedError`` that carries only the text).

Memory (ARCHITECTURE §4, "Out of memory"): with ``ray.eval_actor_memory_mb`` each actor caps its
own private memory once set up (:mod:`timevec.train.memory_limit`). An item that runs out of memory under
the cap is returned as :class:`OutOfMemory` naming the actor (id, pid, host), the cap and the
peak RSS; the driver then replaces that actor by a fresh one (a new process: fragmentation and
caches gone) and retries the item there, up to ``ray.max_failures`` times per slot, before
reporting it. (Not ``ray.kill(no_restart=False)``: the kill is asynchronous, so the retried call
could reach the old process as it died and spend Ray's own task retry, or fail as a dead actor.)
Every attempt that returns is recorded (:class:`Attempt`: its actor id, pid and host), so a retry
is seen to run in another process; ``ray.fault_first_attempt_headroom_mb`` is the fault injection
that tests it: the first attempt of every item holds ballast that leaves only that much of the cap.
An actor that DIES (the kernel's OOM killer, Ray's memory monitor, a crash) after Ray's own
restarts and task retries (``max_restarts``/``max_task_retries``) fails its item as
:class:`ActorDied` with Ray's reason, and its slot gets a fresh actor for the items left. With
``ray.eval_actor_memory_kind: cgroup`` the cap is a memory cgroup (:mod:`timevec.train.memory_cgroup`) and
running out of memory IS that death: the kernel kills the actor at the limit. Either way the rows
of the items that finished are already streamed to the store, and the stage's error
(:func:`failure_error`: :class:`~timevec.errors.StageFailed`, exit status 1) names every failed item.
"""

from __future__ import annotations

import gc
import logging
import mmap
import os
import pickle
import socket
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from timevec.config import ConfigError, RayConfig
from timevec.distributed.runtime import base_bytes, check_fits, check_gpus, ensure_ray, eval_memory
from timevec.errors import StageFailed, TimevecError
from timevec.store import StoreError, VectorStore
from timevec.train.memory_cgroup import join_memory_cgroup
from timevec.train.memory_limit import cap_data_memory, data_memory_bytes, is_out_of_memory, peak_rss_mb
from timevec.train.progress import Progress
from timevec.weights.vectors import VectorError

log = logging.getLogger(__name__)

__all__ = [
    "ActorDied", "ActorSetupError", "Attempt", "Failure", "OutOfMemory", "PoolActor", "PoolOutcome", "drive",
    "failure_error",
]

#: Errors of stored data (a corrupt or missing vector, a wrong shape): the user fixes the store.
BAD_STORED_DATA: tuple[type[Exception], ...] = (StoreError, VectorError)

Rows = dict[str, list[dict[str, Any]]]  # output name -> rows


class ActorSetupError(TimevecError):
    """An actor's setup failed; ``error`` is the original exception (raised by the actor's calls)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class OutOfMemory(TimevecError):
    """An item ran out of memory in an actor (under ``ray.eval_actor_memory_mb``, or the machine's)."""


class ActorDied(TimevecError):
    """An actor died while working on an item, after Ray's restarts and retries (Ray's reason in the text)."""


#: Failures of the machine rather than of the data: the stage reports them with StageFailed (exit 1).
RESOURCE_FAILURES: tuple[type[Exception], ...] = (OutOfMemory, ActorDied)


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

    def __init__(
        self,
        *args: Any,
        memory_cap_mb: float | None = None,
        memory_cap_kind: str = "data",
        first_attempt_headroom_mb: float | None = None,
    ) -> None:
        self._setup_error: BaseException | None = None
        self._shared_id: str | None = None
        self._shared: list[Any] = []
        self._memory_cap_mb = memory_cap_mb
        self._memory_cap_kind = memory_cap_kind
        self._headroom_mb = first_attempt_headroom_mb  # fault injection (ray.fault_first_attempt_headroom_mb)
        self._cap_bytes: int | None = None  # the RLIMIT_DATA set, once capped
        self._capped = False
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

    def run(
        self, item: Any, refs: list, attempt: int = 1
    ) -> tuple[Any, Rows, BaseException | None, str | None, tuple[str, int, str]]:
        """(item, rows per output, error, error text, (actor id, pid, host)): an item's error is
        returned, not raised; ``attempt`` counts from 1 (the driver's retries)."""
        self.ready()
        where = self._where()
        try:
            if self._shared_id != refs[0].hex():
                self._shared = ray.get(refs)
                self._shared_id = refs[0].hex()
            if self._memory_cap_mb is not None and not self._capped:
                # After θ_pre and the shared inputs (whose first ray.get maps Ray's object store
                # into this process): the cap is the actor's working memory per item.
                if self._memory_cap_kind == "cgroup":
                    join_memory_cgroup(self._memory_cap_mb)  # over it, the kernel kills this process
                else:
                    self._cap_bytes = cap_data_memory(self._memory_cap_mb)
                self._capped = True
            ballast = self._ballast() if attempt == 1 else None
            try:
                return item, self.work(item, *self._shared), None, None, where
            finally:
                if ballast is not None:
                    ballast.close()
        except Exception as exc:  # noqa: BLE001 - reported by the driver, naming the item
            if is_out_of_memory(exc):
                gc.collect()
                error = OutOfMemory(self._out_of_memory(exc))
                return item, {}, error, str(error), where
            return item, {}, _portable(exc), _text(exc), where

    def _ballast(self) -> mmap.mmap | None:
        """Fault injection (``ray.fault_first_attempt_headroom_mb``): private writable memory that leaves
        only that headroom under the RLIMIT_DATA cap, held while the item works. Mapped, never
        touched: the cap counts it, yet it is not resident. None when the knob is off, no cap was set,
        or less than the headroom is free already."""
        if self._headroom_mb is None or self._cap_bytes is None or (now := data_memory_bytes()) is None:
            return None
        size = self._cap_bytes - now - int(self._headroom_mb * 2**20)
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE) if size > 0 else None

    @staticmethod
    def _where() -> tuple[str, int, str]:
        """This actor's (id, pid, host)."""
        return ray.get_runtime_context().get_actor_id() or "?", os.getpid(), socket.gethostname()

    def _out_of_memory(self, exc: BaseException) -> str:
        actor, pid, host = self._where()
        cap = (
            f"its cap ray.eval_actor_memory_mb={self._memory_cap_mb:g} (beyond θ_pre)"
            if self._memory_cap_mb is not None
            else "no cap (ray.eval_actor_memory_mb unset): the machine's memory"
        )
        first = _text(exc).splitlines()[0][:300]
        return (
            f"out of memory in evaluation actor {actor} (pid {pid} on {host}, "
            f"peak RSS {peak_rss_mb():.0f} MiB) under {cap}: {first}"
        )


@dataclass
class Failure:
    """An item whose work raised: the exception (as raised in the actor) and its one-line text."""

    item: Any
    error: BaseException
    text: str


@dataclass
class Attempt:
    """One run of an item that returned: which try (from 1), in which actor process, and its error
    text (None: it succeeded). An actor that died returns nothing, so its attempt is not here."""

    item: Any
    number: int
    actor_id: str
    pid: int
    host: str
    error: str | None


@dataclass
class PoolOutcome:
    """What :func:`drive` did: rows per output, failures, flushes, the actors' final answers."""

    actors: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    flushes: int = 0
    retries: int = 0  # items run again on a fresh actor after running out of memory
    attempts: list[Attempt] = field(default_factory=list)
    created: float = 0.0  # wall clock when the actors were created
    finished: float = 0.0  # wall clock when the last item was done
    collected: list[Any] = field(default_factory=list)


def failure_error(message: str, failures: Sequence[Failure]) -> Exception:
    """The stage's error for failed items: ``StoreError`` when any was bad stored data,
    :class:`~timevec.errors.StageFailed` when they ran out of memory or their actor died, else RuntimeError."""
    if any(isinstance(f.error, BAD_STORED_DATA) for f in failures):
        return StoreError(message)
    if failures and all(isinstance(f.error, RESOURCE_FAILURES) for f in failures):
        return StageFailed(
            f"{message}\nThe cells of every other item are stored; raise ray.eval_actor_memory_mb (or lower "
            "evaluation.batch_size, ray.eval_actors) and re-run: only the missing items are computed."
        )
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
    check_gpus(ray_config, ray_config.gpus_per_eval_actor, "ray.gpus_per_eval_actor")
    store = next((a for a in actor_args if isinstance(a, VectorStore)), None)
    memory = eval_memory(ray_config, base_bytes(store) if store is not None else 0)
    check_fits(ray_config, {"CPU": ray_config.cpus_per_eval_actor, "memory": memory},
               f"an evaluation actor ({memory / 2**20:.0f} MiB: θ_pre and ray.eval_actor_memory_mb or the estimate)")
    actor_cls = ray.remote(actor_class).options(
        num_cpus=ray_config.cpus_per_eval_actor,
        num_gpus=ray_config.gpus_per_eval_actor,
        memory=memory,
        max_restarts=ray_config.max_failures,
        max_task_retries=ray_config.max_failures,
    )
    outcome = PoolOutcome(rows={name: 0 for name in sinks})
    outcome.created = time.time()
    cap, kind = ray_config.eval_actor_memory_mb, ray_config.eval_actor_memory_kind

    def new_actor() -> Any:
        return actor_cls.remote(
            *actor_args, memory_cap_mb=cap, memory_cap_kind=kind,
            first_attempt_headroom_mb=ray_config.fault_first_attempt_headroom_mb,
        )  # fmt: skip

    actors = [new_actor() for _ in range(min(ray_config.eval_actors, len(items)))]
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

    def fail(progress: Progress, failure: Failure) -> None:
        outcome.failures.append(failure)
        progress.advance(1, extra=f"{len(outcome.failures)} failed")
        if on_failure is not None:
            on_failure(failure)

    alive = set(range(len(actors)))
    restarts_left = [ray_config.max_failures] * len(actors)  # out-of-memory replacements left per slot
    try:
        refs = [ray.put(value) for value in shared()]
        idle = deque(range(len(actors)))
        pending = deque((item, 1) for item in items)  # (item, attempt)
        running: dict[ray.ObjectRef, tuple[Any, int, int]] = {}  # ref -> (item, actor index, attempt)

        def submit() -> None:
            while pending and idle:
                item, attempt = pending.popleft()
                index = idle.popleft()
                running[actors[index].run.remote(item, refs, attempt)] = (item, index, attempt)
            # Nothing left to hand out: end the idle actors now rather than at the end. After a node
            # is lost, Ray restarts its actors elsewhere and retries their items; on the nodes left
            # such an actor may need the very CPU (or GPU) an idle actor holds, and ray.wait would
            # wait for it forever. The same holds for actors that never fit (more ray.eval_actors
            # than the cluster holds at once). An OOM retry goes back to its own (running) actor.
            while idle and not pending:
                index = idle.popleft()
                if collect is not None:
                    try:
                        outcome.collected.append(ray.get(getattr(actors[index], collect).remote()))
                    except ray.exceptions.RayActorError:  # it died meanwhile (its node, say): no stats
                        pass
                ray.kill(actors[index])
                alive.discard(index)

        submit()
        progress = Progress(desc, len(items), unit=unit)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            item, index, attempt = running.pop(ref)
            try:
                _, rows, error, text, (actor_id, pid, host) = ray.get(ref)  # the item: the driver's own
            except ActorSetupError as exc:  # Ray's RayTaskError, also an ActorSetupError
                if isinstance(exc.error, ConfigError):  # e.g. a GPU actor whose torch sees no CUDA device
                    raise exc.error from None
                if on_setup_error is not None:
                    on_setup_error(exc.error)
                raise
            except ray.exceptions.RayActorError as exc:  # died for good, after Ray's restarts and retries
                reason = " ".join(_text(exc).splitlines())
                under = (
                    f" It ran in a memory cgroup of ray.eval_actor_memory_mb={cap:g} MiB beyond θ_pre, where the "
                    "kernel's OOM killer kills the process at the limit."
                    if cap is not None and kind == "cgroup" else ""
                )  # fmt: skip
                error = ActorDied(
                    f"evaluation actor {getattr(exc, 'actor_id', None) or index} died while working on it "
                    f"(after {ray_config.max_failures} restart(s), ray.max_failures).{under} Ray: {reason[:500]}"
                )
                fail(progress, Failure(item, error, str(error)))
                # Its slot gets a fresh actor for the items left: each death fails one item, so at
                # most len(items) replacements; a machine that cannot hold any item fails them all, named.
                if pending:
                    actors[index] = new_actor()
                    restarts_left[index] = ray_config.max_failures
                    idle.append(index)
                else:
                    alive.discard(index)
                submit()
                continue
            outcome.attempts.append(Attempt(item, attempt, actor_id, pid, host, None if error is None else text))
            if isinstance(error, OutOfMemory) and attempt <= ray_config.max_failures and restarts_left[index] > 0:
                log.warning("%s; retrying on a fresh actor (attempt %d of %d)", text, attempt + 1,
                            ray_config.max_failures + 1)  # fmt: skip
                restarts_left[index] -= 1
                ray.kill(actors[index])
                actors[index] = new_actor()  # a fresh process for the retry (module docstring)
                outcome.retries += 1
                pending.appendleft((item, attempt + 1))
                idle.append(index)
                submit()
                continue
            idle.append(index)
            submit()
            if error is not None:
                pids = ", ".join(str(a.pid) for a in outcome.attempts if a.item is item)
                tries = f" (tried {attempt} times, each on a fresh actor: pids {pids})" if attempt > 1 else ""
                fail(progress, Failure(item, error, (text or _text(error)) + tries))
                continue
            if attempt > 1:
                log.info("%s: an item that ran out of memory succeeded on attempt %d, in evaluation actor %s "
                         "(pid %d on %s)", desc, attempt, actor_id, pid, host)  # fmt: skip
            progress.advance(1, extra=f"{len(outcome.failures)} failed" if outcome.failures else "")
            for name, part in rows.items():
                buffers[name].extend(part)
                outcome.rows[name] += len(part)
            if sum(map(len, buffers.values())) >= flush_rows or time.perf_counter() - last_flush >= flush_seconds:
                flush()
        flush()
        outcome.finished = time.time()
        if collect is not None:  # the actors still alive (the idle ones answered when they were ended)
            outcome.collected += ray.get([getattr(actors[i], collect).remote() for i in sorted(alive)])
    finally:
        flush()  # whatever finished before an error is kept
        for actor in actors:
            ray.kill(actor)
    return outcome
