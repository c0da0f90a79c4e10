"""One trial of the task-analogy α search: what a Ray Tune trial of :mod:`timevec.distributed.analogy` does.

A trial scores one α point θ = θ_pre + α₁·τ_task(j) + α₂·τ_lm(k) − α₃·τ_lm(j) on k's validation and
test splits (``analogy.scheduler: full``: one step), or, under ``asha``, k's validation split rung by
rung in the split's seeded example order (:func:`asha_rungs`, :func:`score_rung`) and test once the
whole validation split is scored. The driver side — the Tuner, resumption, the choice of a point,
the protocols and the tables — is :mod:`timevec.distributed.analogy`.

Design, and why:

- **Trials re-combine weights, nothing else.** A trial is a class :class:`AnalogyTrial` run with
  ``TuneConfig(reuse_actors=True)``: Tune keeps the actor and calls :meth:`reset_config` for the
  next point, so θ_pre (in a :class:`~timevec.evaluate.cells.CellEvaluator`), the three vectors
  and the tokenised splits are loaded once per actor. The splits arrive once through
  ``tune.with_parameters`` (the object store); the weights are read from the vector store by the
  actor itself (workers need nothing but the store), and are additionally kept in the worker's
  :class:`WorkerCache` by (store, base, task, j, k) so that a re-created trainable in the same worker process does not
  reload them. A trial writes θ_pre + Σ cᵢ·τᵢ IN PLACE (tensor by tensor) and restores θ_pre after.
- **A class trainable, with ``checkpoint_at_end=False``.** Ray 2.60 schedules a SAVE after a class
  trial's last result unless told otherwise; without a ``save_checkpoint`` the trial errors and its
  actor is never cached — every trial then pays a fresh actor (measured here: seconds per trial
  instead of tens of milliseconds). A trial has nothing worth checkpointing (it is one
  evaluation), so checkpoints are off.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from ray import tune

from timevec.adapt import analogy as task_analogy
from timevec.config import ExperimentConfig
from timevec.data.examples import EvalSplit
from timevec.distributed.runtime import eval_actor_device
from timevec.evaluate.cells import CellEvaluator
from timevec.evaluate.per_example import ExampleStats
from timevec.store import VectorStore
from timevec.weights.vectors import TimeVector

log = logging.getLogger(__name__)

__all__ = ["EXAMPLES", "STOPPED_PREFIX", "TEST", "VALIDATION", "WORKER_CACHE", "AnalogyPayload", "AnalogyTrial",
           "LoadedPair", "WorkerCache", "alphas_of", "asha_rungs", "evaluate_point", "score_rung"]


VALIDATION = "validation"
TEST = "test"
#: Tune's time attribute under ``analogy.scheduler: asha``: the validation examples a trial has scored.
EXAMPLES = "validation_examples"
#: The files in which the driver records the trials ASHA stopped (``stopped-<ns>.json`` in the experiment).
STOPPED_PREFIX = "stopped-"


def asha_rungs(n: int, grace: int, factor: float) -> tuple[int, ...]:
    """The cumulative validation examples after which an ASHA trial reports: ASHA's rung milestones
    ``grace``·``factor``ʳ below ``n`` (rounded up: a report is at or past its milestone), then ``n`` itself."""
    if n < 1:
        raise ValueError(f"asha_rungs: a validation split of {n} examples")
    first = min(grace, n)
    ends: list[int] = []
    r = 0
    while (end := math.ceil(first * factor**r - 1e-9)) < n:
        if not ends or end > ends[-1]:
            ends.append(end)
        r += 1
    return (*ends, n)


@dataclass(frozen=True)
class AnalogyPayload:
    """Everything a trial needs besides its α's: put in the object store once per experiment."""

    config: ExperimentConfig
    store: VectorStore
    task: str
    j: str
    k: str
    validation: EvalSplit
    test: EvalSplit
    alpha1: tuple[float, ...]
    alpha2: tuple[float, ...]
    alpha3: tuple[float, ...]
    order: tuple[int, ...] = ()  # asha: the validation split's seeded example order
    rungs: tuple[int, ...] = ()  # asha: the cumulative examples after which a trial reports (asha_rungs); () = full

    @property
    def mode(self) -> str:
        """``asha`` (successive halving over validation examples) or ``full``."""
        return "asha" if self.rungs else "full"

    @property
    def key(self) -> str:
        """What the loaded weights depend on (the module-level cache key)."""
        return f"{self.store.url}|{self.store.base_fingerprint}|{self.task}|{self.j}|{self.k}"


@dataclass
class LoadedPair:
    """θ_pre (in its evaluator) and the three vectors of one (task, j, k), on this worker's device."""

    evaluator: CellEvaluator
    task_j: TimeVector  # or a LowRankVector, which serves as one (CellEvaluator.read_vector)
    lm_k: TimeVector
    lm_j: TimeVector
    load_seconds: float


class WorkerCache:
    """What one Ray worker process keeps between analogy trials, and the rule for keeping it.

    At most ONE loaded pair (a t5-3b base plus three vectors is ~48 GB, so an actor keeps only the
    pair it is working on; loading another pair drops it and its points), and the points evaluated
    on it by (α₁, α₂, α₃): evaluation is deterministic, so a point proposed again (Optuna's TPE
    re-proposes points on a finite grid) is answered from memory. It is per process on purpose: a
    re-created trainable in the same worker does not reload the weights.
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.loaded: LoadedPair | None = None
        self.points: dict[tuple[str, float, float, float], dict[str, float]] = {}  # (mode, α₁, α₂, α₃)

    def pair(self, payload: AnalogyPayload) -> LoadedPair:
        """θ_pre and τ_task(j), τ_lm(k), τ_lm(j) of ``payload``, loaded once per process."""
        if self.loaded is not None and self.key == payload.key:
            return self.loaded
        self.drop()
        began = time.perf_counter()
        evaluator = CellEvaluator(payload.config, payload.store, device=eval_actor_device(payload.config.ray))
        self.loaded = LoadedPair(
            evaluator=evaluator,
            task_j=evaluator.read_vector(payload.task, payload.j),
            lm_k=evaluator.read_vector("lm", payload.k),
            lm_j=evaluator.read_vector("lm", payload.j),
            load_seconds=time.perf_counter() - began,
        )
        self.key = payload.key
        log.info("analogy %s→%s: base and vectors loaded in %.1f s (pid %d)", payload.j, payload.k,
                 self.loaded.load_seconds, os.getpid())
        return self.loaded

    def point(self, payload: AnalogyPayload, a1: float, a2: float, a3: float) -> tuple[dict[str, float], bool]:
        """The point's scores (computed now, or remembered) and whether it was remembered."""
        cached = self.remembered(payload, a1, a2, a3)
        if cached is not None:
            return cached, True
        point = evaluate_point(self.pair(payload), payload, a1, a2, a3)
        self.remember(payload, point)
        return point, False

    def remembered(self, payload: AnalogyPayload, a1: float, a2: float, a3: float) -> dict[str, float] | None:
        """A point this process scored in full before under the same pair and mode (no work counted), or None."""
        cached = self.points.get((payload.mode, a1, a2, a3)) if self.key == payload.key else None
        return None if cached is None else {**cached, "patch_seconds": 0.0, "eval_seconds": 0.0}

    def remember(self, payload: AnalogyPayload, point: dict[str, float]) -> None:
        """Keep a point scored in full (validation and test) for a re-proposal."""
        if self.key == payload.key:
            self.points[(payload.mode, point["alpha1"], point["alpha2"], point["alpha3"])] = point

    def drop(self) -> None:
        """Forget the loaded pair and its points (a pooled task worker must not keep a base)."""
        self.key, self.loaded, self.points = None, None, {}


#: This worker process's cache (each Ray worker is its own process: nothing is shared across them).
WORKER_CACHE = WorkerCache()


def alphas_of(trial_config: dict[str, Any], payload: AnalogyPayload) -> tuple[float, float, float]:
    """(α₁, α₂, α₃) of a trial: given as a grid point (grid) or as grid indices (Optuna)."""
    if "point" in trial_config:
        point = trial_config["point"]
        return float(point["alpha1"]), float(point["alpha2"]), float(point["alpha3"])
    grids = (payload.alpha1, payload.alpha2, payload.alpha3)
    a1, a2, a3 = (float(grid[int(trial_config[f"alpha{i + 1}_index"])]) for i, grid in enumerate(grids))
    return a1, a2, a3


def evaluate_point(loaded: LoadedPair, payload: AnalogyPayload, a1: float, a2: float, a3: float) -> dict[str, float]:
    """One analogy point on validation and test: the trial's whole work."""
    stats = loaded.evaluator.stats
    patch0, forward0 = stats.patch_seconds, stats.forward_seconds
    terms = task_analogy.analogy_terms(a1, loaded.task_j, a2, loaded.lm_k, a3, loaded.lm_j)
    rows = loaded.evaluator.evaluate_weights(terms, [payload.validation, payload.test])
    return {
        "alpha1": a1,
        "alpha2": a2,
        "alpha3": a3,
        VALIDATION: float(rows[0]["value"]),
        TEST: float(rows[1]["value"]),
        EXAMPLES: int(rows[0]["n_examples"]),
        "patch_seconds": stats.patch_seconds - patch0,
        "eval_seconds": stats.forward_seconds - forward0,
    }


def score_rung(loaded: LoadedPair, payload: AnalogyPayload, a1: float, a2: float, a3: float,
               scored: ExampleStats | None) -> tuple[dict[str, float], ExampleStats]:
    """One ASHA step of a point: its validation examples up to the next rung (``payload.rungs``) in the seeded
    order, after the ``scored`` ones; at the whole split also the test split. Returns the report (the running
    validation value over every example scored, :data:`EXAMPLES`, and ``test`` once complete) and the statistics."""
    done = 0 if scored is None else len(scored)
    end = next(e for e in payload.rungs if e > done)
    evaluator = loaded.evaluator
    stats = evaluator.stats
    patch0, forward0 = stats.patch_seconds, stats.forward_seconds
    terms = task_analogy.analogy_terms(a1, loaded.task_j, a2, loaded.lm_k, a3, loaded.lm_j)
    test_row: dict[str, Any] | None = None
    with evaluator.patched(terms):
        block = evaluator.score_examples(payload.validation, payload.order[done:end])
        scored = block if scored is None else scored + block
        if end == payload.rungs[-1]:
            test_row = evaluator.evaluate_split(payload.test)
    out: dict[str, float] = {"alpha1": a1, "alpha2": a2, "alpha3": a3, VALIDATION: scored.value(), EXAMPLES: len(scored),
                             "patch_seconds": stats.patch_seconds - patch0, "eval_seconds": stats.forward_seconds - forward0}
    if test_row is not None:
        out[TEST] = float(test_row["value"])
    return out, scored


class AnalogyTrial(tune.Trainable):
    """One α point per trial; the actor (and its loaded weights) is reused across trials.

    ``full``: one step scores both splits. ``asha``: one step per rung (:func:`score_rung`), the
    statistics of the examples scored so far kept between steps; done once test is scored.
    """

    def setup(self, config: dict[str, Any], payload: AnalogyPayload | None = None) -> None:
        if payload is None:
            raise ValueError("AnalogyTrial needs its payload: wrap it with tune.with_parameters(..., payload=...)")
        self.payload = payload
        self.scored: ExampleStats | None = None
        WORKER_CACHE.pair(payload)

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        # The payload is per experiment, so a reused actor keeps everything; only α's change (and no example is scored).
        self.scored = None
        return True

    def step(self) -> dict[str, Any]:
        a1, a2, a3 = alphas_of(self.config, self.payload)
        facts = {"pid": os.getpid(), "finished_at": time.time()}
        if self.payload.mode == "full" or (self.scored is None and WORKER_CACHE.remembered(self.payload, a1, a2, a3)):
            point, cached = WORKER_CACHE.point(self.payload, a1, a2, a3)  # Optuna re-proposes ~1/3 of its points
            return {**point, "cached": int(cached), **facts, "done": True}
        point, self.scored = score_rung(WORKER_CACHE.pair(self.payload), self.payload, a1, a2, a3, self.scored)
        complete = TEST in point
        if complete:
            WORKER_CACHE.remember(self.payload, point)
        return {**point, "cached": 0, **facts, "done": complete}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        return None  # nothing to save: a trial is one evaluation (checkpoints are off anyway)

    def load_checkpoint(self, checkpoint: Any) -> None:
        return None
