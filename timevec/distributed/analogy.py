"""The task-analogy α search on Ray Tune.

θ = θ_pre + α₁·τ_task(j) + α₂·τ_lm(k) − α₃·τ_lm(j) moves a task model from period j to a later
period k using only unlabeled text of k (ARCHITECTURE §1). For each (j, k) one Tune experiment searches
the α's: ``tune.grid_search`` over the reference grid (``analogy.alpha1 × alpha2 × alpha3``, the
paper's 9 × 6 × 6 = 324 points) or, with ``analogy.searcher: optuna``, ``analogy.num_samples``
points proposed by Optuna's TPE over the same grid. Each trial evaluates the VALIDATION and TEST
splits of k; selection uses validation only, the best point is reported on test.

With ``analogy.scheduler: asha`` the points are searched by successive halving (Tune's
``ASHAScheduler``) with validation EXAMPLES as the resource: a trial scores k's validation split in
the seeded order every sequential evaluation uses (:func:`timevec.evaluate.sequential.example_order`,
one order per split, the same for every point), reporting the running value after each rung
(``analogy.grace_examples`` · ``analogy.reduction_factor``ʳ examples: :func:`asha_rungs`), and ASHA
stops the clearly worse; a trial that reaches the whole validation split then scores test. A stopped
point is recorded as stopped (``stopped``, ``validation_examples`` in the ``analogy`` table; NaN values)
and is never chosen: the best point comes from the points scored on the whole split, so every
reported number is a whole split's. When the past-only protocol (an α chosen on the previous target
k′ of the same j, :func:`timevec.adapt.selection.analogy_protocols`) names a point stopped (or never
proposed) on k, that point is scored in full on demand, in the same experiment.

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
- **Resumable, without unpickling anything.** Each (j, k) is one experiment under
  ``ray.storage_path`` (default ``<store>/ray``, beside the fleet's runs) whose name includes a signature of the grid, the
  searcher, the scheduler (when not ``full``), the evaluation settings and the three vectors' manifests. A repeated run reads the
  points its trials already reported from their ``result.json`` files (plain JSON) and starts a
  new Tuner in the same experiment for the missing points only (grid), or for the missing samples
  with the finished ones given to Optuna as ``points_to_evaluate``/``evaluated_rewards``. A point
  ASHA stopped counts as done: after each fit the driver writes the stopped trials' ids to a
  ``stopped-<ns>.json`` file in the experiment (a trial cut short by a killed driver is not in one,
  and is run again).
  ``Tuner.restore`` is not used: it unpickles ``tuner.pkl`` from the storage path, so whoever can
  write the bucket could run code in the driver (the fleet avoids it for the same reason). A
  changed grid or a re-trained vector gets a new experiment.
- **TensorBoard.** Tune's default callbacks include ``TBXLoggerCallback`` (tensorboardX ships with
  ``ray[tune]``): every trial directory gets an ``events.out.tfevents.*`` file with the
  ``ray/tune/validation`` and ``ray/tune/test`` scalars. ``tensorboard --logdir <storage>/<name>``.
- **Baselines** (base, τ_task(j), the best α₁·τ_task(j) alone, the latest task vector before k,
  and the in-period oracle τ_task(k)) run as one Ray task beside the search, with the same
  evaluator code and splits.

Tables: ``results/analogy.parquet`` (:data:`timevec.results.ANALOGY_COLUMNS`, the full grid on
both splits, with the validation examples each point was scored on and whether ASHA stopped it) and
``results/analogy_best.parquet`` (:data:`timevec.results.ANALOGY_BEST_COLUMNS`, with ``experiment``: one row per
method and split). Rows of a (task, j, k) are replaced on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs
import ray
import torch
from ray import tune

from timevec import results
from timevec.adapt import analogy as task_analogy
from timevec.adapt.selection import select_point
from timevec.config import ExperimentConfig
from timevec.data.examples import EvalSplit, prepare_eval_sets
from timevec.distributed.combinations import stage_store
from timevec.distributed.runtime import eval_actor_device
from timevec.distributed.storage import RayStorage, ray_storage
from timevec.distributed.tracking import tracker_callbacks
from timevec.evaluate.cells import CellEvaluator
from timevec.evaluate.metrics import METRICS, _example_stats
from timevec.evaluate.per_example import ExampleStats
from timevec.evaluate.sequential import example_order
from timevec.periods import Period
from timevec.results import ANALOGY_BEST_TABLE, ANALOGY_TABLE
from timevec.store import StoreError, VectorStore
from timevec.store.checksum import shard_digest
from timevec.train.progress import Progress
from timevec.weights.vectors import TimeVector

log = logging.getLogger(__name__)


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


def _block_stats(evaluator: CellEvaluator, split: EvalSplit, indices: np.ndarray) -> ExampleStats:
    """The per-example statistics of ``split``'s examples at ``indices`` under the model as it is now."""
    began, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        stats, _, _ = _example_stats(evaluator.model, split.subset(indices), evaluator.config.evaluation, evaluator.device,
                                     evaluator.tokenizer)
    evaluator.stats.forward_seconds += time.perf_counter() - began
    evaluator.stats.forward_cpu_seconds += time.process_time() - cpu
    return stats


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
    began = time.perf_counter()
    with evaluator.patcher.applied_combination(terms, evaluator.merge):
        stats.patch_seconds += time.perf_counter() - began
        block = _block_stats(evaluator, payload.validation, np.asarray(payload.order[done:end]))
        scored = block if scored is None else scored + block
        if end == payload.rungs[-1]:
            test_row = evaluator.evaluate_split(payload.test)
        began = time.perf_counter()  # the restore, on leaving the block
    stats.patch_seconds += time.perf_counter() - began
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


# ----------------------------------------------------------------------------- planning


def _signature(config: ExperimentConfig, store: VectorStore, task: str, j: str, k: str) -> str:
    cfg = config.analogy
    manifests = [store.manifest(t, p) for t, p in ((task, j), ("lm", k), ("lm", j))]
    shards = [[shard_digest(shard) for shard in m.get("shards", [])] or [m.get("created")] for m in manifests]
    material = {
        "grid": [cfg.alpha1, cfg.alpha2, cfg.alpha3],
        "searcher": cfg.searcher,
        "num_samples": cfg.num_samples if cfg.searcher == "optuna" else None,
        "seed": config.seed,
        "evaluation": config.evaluation.model_dump(),
        "corpus": config.corpus.model_dump(),
        "base": store.base_fingerprint,
        "vectors": shards,
    }
    if config.merge.method != "task_arithmetic":  # another merge method is another experiment (default: names unchanged)
        material["merge"] = config.merge.model_dump()
    if cfg.scheduler != "full":  # likewise the scheduler and its rungs
        material["scheduler"] = {"scheduler": cfg.scheduler, "grace_examples": cfg.grace_examples,
                                 "reduction_factor": cfg.reduction_factor}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:10]


def experiment_name(config: ExperimentConfig, store: VectorStore, task: str, j: str, k: str) -> str:
    """``analogy-<task>-<j>-<k>-<searcher>[-<scheduler>]-<signature>``: one resumable experiment per pair (the
    scheduler named when it is not ``full``, so that the experiments of earlier runs keep their names)."""
    cfg = config.analogy
    scheduler = "" if cfg.scheduler == "full" else f"-{cfg.scheduler}"
    return f"analogy-{task}-{j}-{k}-{cfg.searcher}{scheduler}-{_signature(config, store, task, j, k)}"


def _point(result: dict[str, Any]) -> task_analogy.AnalogyPoint:
    """A trial's last result as a point: without ``test`` it was stopped (its validation value is partial)."""
    stopped = TEST not in result
    return task_analogy.AnalogyPoint(float(result["alpha1"]), float(result["alpha2"]), float(result["alpha3"]),
                                     float(result[VALIDATION]), math.nan if stopped else float(result[TEST]),
                                     validation_examples=float(result.get(EXAMPLES, math.nan)), stopped=stopped)


def _merged(points: list[task_analogy.AnalogyPoint]) -> list[task_analogy.AnalogyPoint]:
    """One point per α, in grid order: a complete evaluation over a stopped one (a point scored on demand after ASHA
    stopped it), else the one that scored the most examples."""
    best: dict[tuple[float, float, float], task_analogy.AnalogyPoint] = {}
    for p in points:
        key = (_key(p.alpha1), _key(p.alpha2), _key(p.alpha3))
        have = best.get(key)
        if have is None or (have.stopped and (not p.stopped or p.validation_examples > have.validation_examples)):
            best[key] = p
    return sorted(best.values(), key=lambda p: (p.alpha1, p.alpha2, p.alpha3))


def _stopped_ids(storage: RayStorage, name: str) -> set[str]:
    """The ids of the trials ASHA stopped in experiment ``name`` (the driver's ``stopped-*.json`` files)."""
    fs, root = storage.fs_root()
    ids: set[str] = set()
    for info in fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{name}", allow_not_found=True)):
        if info.type != pyarrow.fs.FileType.File or not info.base_name.startswith(STOPPED_PREFIX):
            continue
        with fs.open_input_stream(info.path) as stream:
            ids.update(json.loads(stream.read().decode("utf-8")))
    return ids


def _record_stopped(storage: RayStorage, name: str, trial_ids: list[str]) -> None:
    fs, root = storage.fs_root()
    with fs.open_output_stream(f"{root}/{name}/{STOPPED_PREFIX}{time.time_ns()}.json") as stream:
        stream.write(json.dumps(sorted(trial_ids)).encode("utf-8"))


def finished_trials(storage: RayStorage, name: str) -> list[dict[str, Any]]:
    """The last results of experiment ``name``'s finished trials: scored on both splits, or stopped by ASHA."""
    stopped = _stopped_ids(storage, name)
    return [r for r in storage.last_results(name, required=(VALIDATION,)) if TEST in r or r.get("trial_id") in stopped]


def _on_demand(result: dict[str, Any]) -> bool:
    """Whether a trial scored a point on demand (past-only), outside the search's samples."""
    return bool((result.get("config") or {}).get("on_demand"))


def _key(alpha: float) -> float:
    """An α as a lookup key: the value read back from JSON equals the configured one up to rounding."""
    return results.alpha_key(alpha)


def _tuner(config: ExperimentConfig, payload: AnalogyPayload, storage: RayStorage, name: str, memory: int,
           done: list[dict[str, Any]], only: list[tuple[float, float, float]] | None = None) -> tune.Tuner | None:
    """A Tuner for what ``done`` (the experiment's finished trials) lacks; None when nothing is left.

    ``only``: score just these points in full (no searcher, no scheduler), unless ``done`` completed them.
    """
    cfg = config.analogy
    higher = METRICS[payload.task][1]
    mode = "max" if higher else "min"
    search_alg = None
    scheduler = None
    if only is not None:
        complete = {(_key(r["alpha1"]), _key(r["alpha2"]), _key(r["alpha3"])) for r in done if TEST in r}
        todo = [{"alpha1": a1, "alpha2": a2, "alpha3": a3} for a1, a2, a3 in only if (_key(a1), _key(a2), _key(a3)) not in complete]
        if not todo:
            return None
        param_space: dict[str, Any] = {"point": tune.grid_search(todo), "on_demand": True}
        num_samples = 1
    elif cfg.searcher == "grid":
        seen = {(_key(r["alpha1"]), _key(r["alpha2"]), _key(r["alpha3"])) for r in done}
        todo = [{"alpha1": a1, "alpha2": a2, "alpha3": a3} for a1, a2, a3 in task_analogy.reference_grid(cfg)
                if (_key(a1), _key(a2), _key(a3)) not in seen]
        if not todo:
            return None
        # one grid_search over the points (not three): a resumed run asks for the missing ones only
        param_space = {"point": tune.grid_search(todo)}
        num_samples = 1
    else:
        from timevec.errors import require_extra

        require_extra("optuna", "optuna", "analogy.searcher: optuna")
        from ray.tune.search.optuna import OptunaSearch

        done = [r for r in done if not _on_demand(r)]  # the search's own samples (a stopped one's value is partial)
        num_samples = cfg.num_samples - len(done)
        if num_samples <= 0:
            return None
        # Optuna searches grid INDICES as ordered integers: its proposals are exactly grid points
        # (comparable with the grid, and replayable against it in the benchmark) and TPE still
        # models the order of the α's, which a categorical choice would throw away.
        grids = (cfg.alpha1, cfg.alpha2, cfg.alpha3)
        param_space = {f"alpha{i + 1}_index": tune.randint(0, len(g)) for i, g in enumerate(grids)}
        index = [{_key(a): n for n, a in enumerate(g)} for g in grids]
        known = [{f"alpha{i + 1}_index": index[i][_key(r[f"alpha{i + 1}"])] for i in range(3)} for r in done]
        search_alg = OptunaSearch(metric=VALIDATION, mode=mode, seed=config.seed,
                                  points_to_evaluate=known or None,
                                  evaluated_rewards=[float(r[VALIDATION]) for r in done] or None)
    if payload.rungs and only is None:
        from ray.tune.schedulers import ASHAScheduler

        # rungs at grace·factor^r validation examples (asha_rungs: the trial reports at each); the first trial to reach
        # a rung always passes it (asynchronous halving compares with the points recorded there so far)
        scheduler = ASHAScheduler(time_attr=EXAMPLES, max_t=payload.rungs[-1], grace_period=payload.rungs[0],
                                  reduction_factor=cfg.reduction_factor)
    trainable = tune.with_resources(
        tune.with_parameters(AnalogyTrial, payload=payload),
        {"cpu": config.ray.cpus_per_eval_actor, "gpu": config.ray.gpus_per_eval_actor, "memory": memory},
    )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=VALIDATION,
            mode=mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=num_samples,
            reuse_actors=True,
            max_concurrent_trials=cfg.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=name,
            **storage.run_config(),
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            failure_config=tune.FailureConfig(max_failures=config.ray.max_failures),
            callbacks=tracker_callbacks(config, name),  # ray.loggers: [mlflow]
        ),
    )


def search_pair(
    config: ExperimentConfig, payload: AnalogyPayload, storage: RayStorage, name: str, memory: int,
    only: list[tuple[float, float, float]] | None = None,
) -> tuple[list[task_analogy.AnalogyPoint], dict[str, Any]]:
    """Run one pair's Tune experiment, or only what an earlier run left; returns its points (one per α: complete, or
    stopped by ASHA) and run facts. ``only``: score these points in full, in the same experiment (:func:`_tuner`)."""
    began = time.perf_counter()
    done = finished_trials(storage, name) if payload.rungs else storage.last_results(name, required=(VALIDATION, TEST))
    results_ = list(done)
    tuner = _tuner(config, payload, storage, name, memory, done, only)
    errors: list[str] = []
    stopped: list[str] = []
    if tuner is not None:
        if done and only is None:
            log.info("analogy %s→%s: %d trial(s) already in %s, running the rest", payload.j, payload.k, len(done), name)
        for result in tuner.fit():  # type: ignore[attr-defined]  # ResultGrid is iterable (__getitem__/__len__)
            metrics = result.metrics or {}
            if result.error is not None:
                errors.append(f"{result.path}: {result.error}")
            elif VALIDATION not in metrics:
                errors.append(f"{result.path}: no result reported")
            elif TEST not in metrics and not payload.rungs:
                errors.append(f"{result.path}: no test value reported")
            else:
                results_.append(metrics)
                if TEST not in metrics:  # ended without its test split: ASHA stopped it
                    stopped.append(str(metrics["trial_id"]))
    if stopped:
        _record_stopped(storage, name, stopped)
    if errors:
        raise RuntimeError(f"analogy {payload.j}→{payload.k}: {len(errors)} trial(s) failed:\n  " + "\n  ".join(errors[:10]))
    points = [_point(r) for r in results_]
    # full: one point per trial, as ever (Optuna's re-proposals included); asha: one per α (a stopped point and its
    # on-demand evaluation are one point)
    points = _merged(points) if payload.rungs else sorted(points, key=lambda p: (p.alpha1, p.alpha2, p.alpha3))
    facts = {"trials": len(results_), "resumed": len(done), "seconds": time.perf_counter() - began,
             "experiment": storage.experiment_url(name), "stopped": sum(p.stopped for p in points),
             # the examples the trials scored (a resumed trial's counted too): validation, and test for the complete
             "validation_examples": sum(float(r.get(EXAMPLES, payload.validation.n_examples)) for r in results_),
             "test_examples": payload.test.n_examples * sum(TEST in r for r in results_)}
    return points, facts


def _baselines_task(
    payload: AnalogyPayload, latest: str | None, in_period: bool
) -> tuple[list[dict[str, Any]], list[task_analogy.AnalogyPoint]]:
    """The baseline rows of one pair (runs as a Ray task next to the search)."""
    loaded = WORKER_CACHE.pair(payload)
    read = loaded.evaluator.read_vector
    vectors = task_analogy.AnalogyVectors(
        task_j=loaded.task_j, lm_k=loaded.lm_k, lm_j=loaded.lm_j,
        latest=(latest, loaded.task_j if latest == payload.j else read(payload.task, latest)) if latest else None,
        in_period=read(payload.task, payload.k) if in_period else None,
    )
    try:
        return task_analogy.analogy_baselines(loaded.evaluator.evaluate_weights, payload.task, payload.j, payload.k, vectors,
                                       payload.validation, payload.test, payload.alpha1)
    finally:
        # A task worker is pooled and outlives the task: do not leave a base and vectors in it.
        WORKER_CACHE.drop()


# ----------------------------------------------------------------------------- the driver


def _scaled_points(grid: pd.DataFrame | None, keys: dict[str, str]) -> list[task_analogy.AnalogyPoint]:
    """The τ_task(j)-scaled points of one pair already in the ``analogy`` table (none in old tables)."""
    if grid is None or "method" not in grid:
        return []
    sel = grid.loc[grid["method"] == "task_j_scaled"]
    for col, value in keys.items():
        sel = sel.loc[sel[col].astype(str) == value]
    wide = sel.pivot_table(index="alpha1", columns="split", values="value", aggfunc="last")
    if not {"validation", "test"} <= set(wide.columns):
        return []
    examples: dict[float, float] = {}
    if "validation_examples" in sel:
        examples = {float(a): float(n) for a, n in sel.groupby("alpha1")["validation_examples"].last().items()}
    return [task_analogy.AnalogyPoint(float(a), 0.0, 0.0, float(r["validation"]), float(r["test"]),
                                      validation_examples=examples.get(float(a), math.nan))
            for a, r in wide.iterrows()]


def _replace_rows(store: VectorStore, table: str, frame: pd.DataFrame, keys: dict[str, str]) -> None:
    """Replace the rows of one (task, j, k) in a table (others kept)."""
    if store.has_table(table):
        old = results.read_table(store, table)
        mask = pd.Series(True, index=old.index)
        for col, value in keys.items():
            mask &= old[col].astype(str) == value
        if (~mask).any():  # the table's rows of other pairs, in its declared columns (an older table lacks some)
            frame = pd.concat([results.table(table).frame(old.loc[~mask]), frame], ignore_index=True)
    results.write_table(store, table, frame.reset_index(drop=True))


def _prepared_splits(config: ExperimentConfig, store: VectorStore, task: str, periods: list[str]
                     ) -> dict[str, tuple[EvalSplit, EvalSplit]]:
    """(validation, test) of every target period k, empty ones included (a pair without them is skipped)."""
    wanted: dict[tuple[str, str], list[str]] = {}
    for k in periods:
        wanted.setdefault((task, Period.parse(k).granularity), []).append(k)
    sets = prepare_eval_sets(config, wanted, ("validation", "test"), store=store, keep_empty=True)
    return {k: (sets[VALIDATION][(task, g)][k], sets[TEST][(task, g)][k]) for (_, g), ks in wanted.items() for k in ks}


def analogy_payload(config: ExperimentConfig, store: VectorStore, task: str, j: str, k: str, validation: EvalSplit,
                    test: EvalSplit) -> AnalogyPayload:
    """The payload of one pair; under ``analogy.scheduler: asha`` with the validation split's seeded example order
    (:func:`timevec.evaluate.sequential.example_order`, the order every sequential evaluation of the split uses)
    and its rungs (:func:`asha_rungs`)."""
    cfg = config.analogy
    order: tuple[int, ...] = ()
    rungs: tuple[int, ...] = ()
    if cfg.scheduler == "asha":
        n = validation.n_examples
        order = tuple(int(i) for i in example_order(n, config.evaluation.bootstrap_seed, task, validation.period,
                                                     validation.split))
        rungs = asha_rungs(n, cfg.grace_examples, cfg.reduction_factor)
    return AnalogyPayload(config, store, task, j, k, validation, test, tuple(cfg.alpha1), tuple(cfg.alpha2),
                          tuple(cfg.alpha3), order, rungs)


def past_only_point(task: str, j: str, k: str, searched: dict[str, list[task_analogy.AnalogyPoint]],
                    grid: pd.DataFrame | None) -> tuple[float, float, float] | None:
    """The analogy point the past-only protocol applies to (j, k): the best on validation, among points scored on the
    whole split, of the latest earlier target k′ of j — this run's (``searched``: k′ → points) or the ``analogy``
    table's — as :func:`timevec.adapt.selection.analogy_protocols` chooses it; None without an earlier target."""
    higher = METRICS[task][1]
    candidates: dict[str, dict[tuple[float, float, float], float]] = {}
    if grid is not None and not grid.empty:
        sel = grid.loc[(grid["task"].astype(str) == task) & (grid["source_period"].astype(str) == j)
                       & (grid["split"] == VALIDATION)]
        if "method" in sel:
            sel = sel.loc[sel["method"].fillna("analogy") == "analogy"]
        for r in sel.itertuples(index=False):
            candidates.setdefault(str(r.target_period), {})[(_key(r.alpha1), _key(r.alpha2), _key(r.alpha3))] = float(r.value)
    for target, points in searched.items():  # this run's values replace the table's
        candidates[target] = {(_key(p.alpha1), _key(p.alpha2), _key(p.alpha3)): p.validation for p in points if not p.stopped}
    earlier = sorted((t for t in candidates if Period.parse(t) < Period.parse(k)), key=Period.parse)
    return select_point(candidates[earlier[-1]], higher) if earlier else None


def run_analogy(config: ExperimentConfig, store: VectorStore | None = None) -> pd.DataFrame:
    """Search every (j, k) pair of ``config.analogy``; returns the analogy_best rows of those pairs."""
    from timevec.distributed.runtime import base_bytes, check_gpus, ensure_ray, eval_memory

    began = time.perf_counter()
    store = stage_store(config, store)
    task = config.analogy.task
    stored = set(store.list_vectors())
    pairs, skipped = task_analogy.analogy_pairs(config, stored)
    for reason in skipped:
        log.warning("analogy: skipping %s", reason)
    if not pairs:
        raise StoreError(f"analogy for task {task!r}: no (j, k) pair has its vectors in {store}: " + "; ".join(skipped))
    ensure_ray(config.ray)
    check_gpus(config.ray, config.ray.gpus_per_eval_actor, "ray.gpus_per_eval_actor")
    storage = ray_storage(config, store)
    memory = eval_memory(config.ray, base_bytes(store), vectors=3)  # θ_pre and the three vectors of a pair
    splits = _prepared_splits(config, store, task, sorted({k for _, k in pairs}, key=Period.parse))
    best_old = results.read_table(store, ANALOGY_BEST_TABLE, default=None)
    grid_old = results.read_table(store, ANALOGY_TABLE, default=None)
    baselines_remote = ray.remote(_baselines_task).options(
        num_cpus=config.ray.cpus_per_eval_actor, num_gpus=config.ray.gpus_per_eval_actor, memory=memory,
        max_retries=config.ray.max_failures,
    )
    out: list[pd.DataFrame] = []
    searched: dict[str, dict[str, list[task_analogy.AnalogyPoint]]] = {}  # j → k → points of this run (asha)
    progress = Progress("analogy", len(pairs), unit="(j, k) pairs", every_s=0.0)
    for j, k in pairs:
        validation, test = splits[k]
        if validation.n_examples == 0 or test.n_examples == 0:
            log.warning("analogy %s→%s: empty validation or test split of %s, skipped", j, k, k)
            progress.advance(1, extra=f"{j}→{k} skipped")
            continue
        name = experiment_name(config, store, task, j, k)
        payload = analogy_payload(config, store, task, j, k, validation, test)
        keys = {"task": task, "source_period": j, "target_period": k}
        have = None
        if best_old is not None and "experiment" in best_old:
            sel = best_old
            for col, value in keys.items():
                sel = sel.loc[sel[col].astype(str) == value]
            sel = sel.loc[(sel["experiment"] == name) & (sel["method"] != "analogy")]
            scaled = _scaled_points(grid_old, keys)
            if set(sel["method"]) >= set(results.ANALOGY_METHODS) - {"analogy"} and scaled:
                have = (sel.drop(columns="experiment"), scaled)
        latest = task_analogy.latest_task_period(task, k, stored)
        pending = None if have is not None else baselines_remote.remote(payload, latest, (task, k) in stored)
        points, facts = search_pair(config, payload, storage, name, memory)
        if payload.rungs:
            # the past-only protocol applies the point chosen on the previous target k′ of j: never report it partial
            chosen = past_only_point(task, j, k, searched.get(j, {}), grid_old)
            if chosen is not None and not any(
                    (_key(p.alpha1), _key(p.alpha2), _key(p.alpha3)) == chosen and not p.stopped for p in points):
                log.info("analogy %s→%s: scoring the past-only point %s in full (ASHA stopped or never proposed it)", j, k, chosen)
                points, more = search_pair(config, payload, storage, name, memory, only=[chosen])
                facts = {**facts, **{key: facts[key] + more[key] for key in ("validation_examples", "test_examples", "seconds")},
                         "trials": facts["trials"] + more["trials"] - more["resumed"]}
            searched.setdefault(j, {})[k] = points
        metric = METRICS[task][0]
        baseline_rows, scaled = (have[0].to_dict("records"), have[1]) if have is not None else ray.get(pending)  # type: ignore[arg-type]  # pending is set whenever have is None
        grid = pd.concat([task_analogy.analogy_grid_frame(task, j, k, metric, points),
                          task_analogy.analogy_grid_frame(task, j, k, metric, scaled, method="task_j_scaled")],
                         ignore_index=True)
        _replace_rows(store, ANALOGY_TABLE, grid, keys)
        best = results.analogy_best_frame(baseline_rows + task_analogy.analogy_best_rows(task, j, k, metric, points))
        best["experiment"] = name
        _replace_rows(store, ANALOGY_BEST_TABLE, best, keys)
        out.append(best)
        _log_pair(task, j, k, best, facts)
        progress.advance(1, extra=f"{j}→{k} searched")
    log.info("analogy stage done in %.1f s", time.perf_counter() - began)
    return pd.concat(out, ignore_index=True) if out else results.analogy_best_frame([])


def _log_pair(task: str, j: str, k: str, best: pd.DataFrame, facts: dict[str, Any]) -> None:
    test = best.loc[best["split"] == TEST].set_index("method")["value"]
    parts = ", ".join(f"{m} {test[m]:.4g}" for m in results.ANALOGY_METHODS if m in test and not math.isnan(test[m]))
    log.info("analogy %s %s→%s: %d trials in %.1f s; test: %s (%s)", task, j, k, facts["trials"], facts["seconds"],
             parts, facts["experiment"])
