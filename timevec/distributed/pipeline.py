"""The pipeline's stage table: each registered stage bound to the function that runs it, Ray stages included.

One job: the composition root of the study. The declarations (:mod:`timevec.stages`), the order, the
loop and the Ray-free stages (analyze, report) are the core's (:mod:`timevec.pipeline`); the Ray
stages' runners are adapters here (``finetune_stage`` … ``groups_stage``, named by the registry) that
call their drivers (fleet, cells, forgetting, interpolation, forecast, analogy, group swaps) and turn
the outcome into a stage result.
``run_pipeline`` is what the CLI, ``timevec demo`` and ``python -m timevec run`` call. Each driver is
imported when its stage runs, so a run of ``analyze`` alone never imports Ray.
"""

from __future__ import annotations

import logging

from timevec import results
from timevec.config import ExperimentConfig
from timevec.errors import ConfigError, StageFailed
from timevec.pipeline import check_stages, run_stages
from timevec.stages import REGISTRY, STAGES, Stage, StageFunction, StageResult
from timevec.store import VectorStore

log = logging.getLogger(__name__)


def finetune_stage(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.fleet import run_fleet

    runs = run_fleet(config, store)
    failed = runs[runs["status"] == "failed"] if len(runs) else runs
    if len(failed):
        names = ", ".join(f"{r.task}/{r.period}" for r in failed.itertuples())
        raise StageFailed(f"{len(failed)} fine-tune run(s) failed after their retries: {names}; re-run to resume them")
    counts = runs["status"].value_counts().to_dict() if len(runs) else {}
    return {"tables": {"fine-tune runs": runs}, "headline": {"runs": counts}}


def evaluate_stage(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.cells import run_cells

    cells, stats = run_cells(config, store)
    return {"headline": {"cells": len(cells), "cells computed": stats.cells_computed}}


def forgetting_stage(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.analyze.forgetting import by_lag, headline
    from timevec.distributed.forgetting import run_forgetting

    table = run_forgetting(config, store)
    assert table is not None, "the registry skips the forgetting stage outside training.mode continual"
    return {"tables": {"forgetting by lag (% worse than when learned; gap to the in-period model)": by_lag(table)},
            "headline": headline(table)}


def interpolate_stage(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.interpolate import run_interpolation

    run_interpolation(config, store)
    return {"tables": {"interpolation: best α per period": results.read_table(store, results.INTERPOLATION_BEST_TABLE)}}


def forecast_stage(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.forecast import run_forecast

    table = run_forecast(config, store)
    return {"tables": {"forecast (past-only) vs the latest vector, test": table}}


def analogy_stage(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.analogy import run_analogy

    run_analogy(config, store)
    return {"tables": {"task analogies (test split)": results.read_table(store, results.ANALOGY_BEST_TABLE)}}


def groups_stage(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.group_swaps import run_group_swaps

    return {"tables": {"group swaps: share of the gap to the in-period vector": run_group_swaps(config, store)}}


def _leased(name: str, function: StageFunction) -> StageFunction:
    """``function`` under the store's writer lease ``leases/<name>.json``: one driver per stage and store.

    The stages after the fine-tunes append to and rewrite result tables; two drivers running the same
    stage on one store could each read a table, add their rows and write it back, losing the other's
    batch. A second driver gets :class:`~timevec.store.lease.LeaseHeld` (exit status 2) naming the
    first, before it writes anything. (The fine-tune stage takes its own lease inside ``run_fleet``.)
    A store that does not exist yet takes no lease: the stage refuses it with its own message.
    """

    def run(config: ExperimentConfig, store: VectorStore) -> StageResult:
        if not store.exists():
            return function(config, store)
        lease = store.lease(name, config.store.lease_seconds, f"the {name} stage")
        with lease:
            fenced = store.fenced(lease)
            out = function(config, fenced)
            fenced.compact_tables()  # the appended parts folded in: results/<name>.parquet whole between stages
        if lease.lost:
            raise StageFailed(f"{lease.lost}: re-run the {name} stage; only its missing work is redone")
        return out

    return run


def _bound(stage: Stage) -> StageFunction:
    """The registered stage's runner, under its writer lease where it declares one."""
    return _leased(stage.name, stage.function()) if stage.leased else stage.function()


STAGE_FUNCTIONS: dict[str, StageFunction] = {name: _bound(stage) for name, stage in REGISTRY.items()}


def run_pipeline(config: ExperimentConfig, stages: list[str]) -> StageResult:
    """Run ``stages`` in the pipeline's order; returns the tables and findings to print."""
    check_stages(stages)
    if set(stages) != set(STAGES):
        # asked for by name: a strict stage that cannot apply (a forecast horizon the periods cannot hold) fails now,
        # not after the fine-tunes; in the whole study it is skipped, saying why, and every other stage still runs
        for name in stages:
            if REGISTRY[name].strict and (why := REGISTRY[name].skip_reason(config)) is not None:
                raise ConfigError(why)
    if set(stages) - {"analyze", "report"}:
        _check_cluster(config)
    return run_stages(config, stages, STAGE_FUNCTIONS)


def _check_cluster(config: ExperimentConfig) -> None:
    """On an existing Ray cluster (``ray.address``, RAY_ADDRESS, or one this process already joined),
    refuse a store that not every node reaches before any stage starts. A local cluster that a
    stage starts itself is one node: nothing to check, and nothing started here."""
    import os

    import ray

    if not (ray.is_initialized() or config.ray.address or os.environ.get("RAY_ADDRESS")):
        return
    from timevec.distributed.runtime import check_store_reach, ensure_ray

    ensure_ray(config.ray)
    check_store_reach(config.store, config.ray)
