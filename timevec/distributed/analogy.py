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

- **Trials** (one α point each, actors reused, weights loaded once per worker, no checkpoints) are
  :mod:`timevec.distributed.analogy_trial`.
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
import time
from typing import Any

import pandas as pd
import pyarrow.fs
import ray
from ray import tune

from timevec import results
from timevec.adapt import analogy as task_analogy
from timevec.adapt.selection import select_point
from timevec.config import ExperimentConfig
from timevec.data.examples import EvalSplit, prepare_eval_sets
from timevec.distributed.analogy_trial import (
    EXAMPLES,
    STOPPED_PREFIX,
    TEST,
    VALIDATION,
    WORKER_CACHE,
    AnalogyPayload,
    AnalogyTrial,
    asha_rungs,
)
from timevec.distributed.combinations import stage_store
from timevec.distributed.storage import RayStorage, ray_storage
from timevec.distributed.tracking import tracker_callbacks
from timevec.evaluate.metrics import METRICS
from timevec.evaluate.sequential import example_order
from timevec.periods import Period
from timevec.results import ANALOGY_BEST_TABLE, ANALOGY_TABLE
from timevec.store import StoreError, VectorStore
from timevec.store.checksum import shard_digest
from timevec.train.progress import Progress

log = logging.getLogger(__name__)


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
