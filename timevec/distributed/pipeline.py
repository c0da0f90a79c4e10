"""The whole study as stages: finetune → evaluate → interpolate → analogy → analyze → report.

Each stage reads its inputs from the store (or the corpus) and writes its outputs to the store,
so ``run_pipeline`` is only an ordering of independent, resumable steps: the CLI, ``timevec demo``
and ``jobs/pipeline.py`` all call it, and any one stage can be re-run alone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from timevec import results
from timevec.config import ConfigError, ExperimentConfig
from timevec.distributed import STAGES
from timevec.errors import StageFailed
from timevec.store import VectorStore
from timevec.training import check_store_base

log = logging.getLogger(__name__)

StageResult = dict[str, Any]



def _finetune(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.fleet import run_fleet

    runs = run_fleet(config, store)
    failed = runs[runs["status"] == "failed"] if len(runs) else runs
    if len(failed):
        names = ", ".join(f"{r.task}/{r.period}" for r in failed.itertuples())
        raise StageFailed(f"{len(failed)} fine-tune run(s) failed after their retries: {names}; re-run to resume them")
    counts = runs["status"].value_counts().to_dict() if len(runs) else {}
    return {"tables": {"fine-tune runs": runs}, "headline": {"runs": counts}}


def _evaluate(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.cells import run_cells

    cells, stats = run_cells(config, store)
    return {"headline": {"cells": len(cells), "cells computed": stats.cells_computed}}


def gram_of_store(store: VectorStore) -> tuple[Any, list[tuple[str, str]]]:
    """The streamed Gram matrix of every stored vector, and the keys in its order."""
    keys = store.list_vectors()
    return (store.gram(keys) if keys else None), keys


def _analyze(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec import analysis

    cells = store.read_table("cells")
    gram, keys = gram_of_store(store)
    optional = {name: store.read_table(name) for name in ("interpolation", "analogy_best") if store.has_table(name)}
    result = analysis.analyze(cells, gram, keys, optional.get("interpolation"), optional.get("analogy_best"))
    store.write_table("relative_change", result.rel)
    store.write_table("diagonal", result.diagonal)
    store.write_table("decay_by_gap", result.decay.by_gap)
    store.write_table("decay_fit", result.decay.fit)
    store.write_table("stripes", result.stripes)
    if result.similarity is not None:
        store.write_table("similarity", result.similarity)
        store.write_table("similarity_centred", result.similarity_centred)
    store.write_table(results.FINDINGS_TABLE, result.findings)
    store.write_bytes("results/headline.json", json.dumps(result.headline, indent=2, default=str).encode())
    tables = {"diagonal (own period best?)": result.diagonal, "decay with the gap": result.decay.fit}
    return {"tables": tables, "headline": result.headline, "findings": result.findings}


def _interpolate(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.interpolate import run_interpolation

    run_interpolation(config, store)
    return {"tables": {"interpolation: best α per period": store.read_table("interpolation_best")}}


def _analogy(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.distributed.analogy import run_analogy

    if config.analogy.task not in config.tasks or "lm" not in config.tasks:
        log.warning("analogy skipped: it needs the tasks 'lm' and %r in config.tasks (have %s)", config.analogy.task, config.tasks)
        return {"headline": {"analogy": "skipped: config.tasks lacks lm or the analogy task"}}

    run_analogy(config, store)
    return {"tables": {"task analogies (test split)": store.read_table("analogy_best")}}


def _report(config: ExperimentConfig, store: VectorStore) -> StageResult:
    from timevec.report import build_report

    tables = {name: store.read_table(name) for name in results.REPORT_TABLES if store.has_table(name)}
    gram, keys = gram_of_store(store)
    build_report(tables, gram, keys, store.write_bytes, store.write_table, title=f"timevec — {config.name}")
    return {"report": report_location(store)}


def report_location(store: VectorStore) -> str:
    """Where a person opens the report: a local file path, or the object URL on S3."""
    return f"{store.url.rstrip('/')}/reports/index.html"  # a local store's url is its absolute path


STAGE_FUNCTIONS: dict[str, Callable[[ExperimentConfig, VectorStore], StageResult]] = {
    "finetune": _finetune,
    "evaluate": _evaluate,
    "interpolate": _interpolate,
    "analogy": _analogy,
    "analyze": _analyze,
    "report": _report,
}
assert tuple(STAGE_FUNCTIONS) == STAGES, "STAGES names the pipeline's stages in order"


def run_pipeline(config: ExperimentConfig, stages: list[str]) -> StageResult:
    """Run ``stages`` in the pipeline's order; returns the tables and findings to print.

    The analysis comes after the adaptation stages (which need only vectors and cells) so that
    its headline includes the interpolation and analogy results.
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    store = VectorStore.from_config(config.store)
    if store.exists():
        check_store_base(config, store)
    summary: StageResult = {"tables": {}, "headline": {}}
    ordered = [s for s in STAGES if s in stages]
    for name in ordered:
        began = time.perf_counter()
        log.info("stage %s: starting", name)
        result = STAGE_FUNCTIONS[name](config, store)
        summary["tables"].update(result.get("tables", {}))
        summary["headline"].update(result.get("headline", {}))
        for key in ("report", "findings"):
            if key in result:
                summary[key] = result[key]
        seconds = time.perf_counter() - began
        summary["headline"][f"seconds_{name}"] = round(seconds, 1)
        log.info("stage %s: done in %.1f s", name, seconds)
    summary["results"] = f"{store.url.rstrip('/')}/results/*.parquet"
    ray_storage = config.ray.storage_path or store.ray_storage_path()
    if "://" not in ray_storage and {"finetune", "analogy"} & set(ordered):
        summary["tensorboard"] = f"tensorboard --logdir {ray_storage}"  # every fleet run and α-search trial
    return summary


def summary_frame(summary: StageResult) -> pd.DataFrame:
    """The headline as a two-column table (for logs of ``ray job`` runs)."""
    return pd.DataFrame({"finding": list(summary["headline"]), "value": [str(v) for v in summary["headline"].values()]})
