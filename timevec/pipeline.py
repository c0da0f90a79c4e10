"""The whole study as stages, run in the order of the stage registry (:mod:`timevec.stages`).

One job: the loop that runs a chosen subset of the stages in that order (a stage that does not apply
to the config is reported as skipped, with its reason), and the stages that need no Ray (analyze,
report). Each stage reads its inputs from the store (or the corpus) and writes its outputs to the
store, so a pipeline is only an ordering of independent, resumable steps and any one stage can be
re-run alone.

Layering: the core never imports :mod:`timevec.distributed`. Which function runs each stage is
given to :func:`run_stages`; :mod:`timevec.distributed.pipeline` binds every registered stage's
runner into that table and is what the CLI, ``timevec demo`` and ``python -m timevec run`` call.
Module-level imports stay light, so that ``timevec --help`` (which lists :data:`STAGES`) needs no torch.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from timevec.stages import REGISTRY, STAGES, StageFunction, StageResult
from timevec.train.progress import log as progress_log  # the stage times: shown without -v (light: no torch)

if TYPE_CHECKING:
    import pandas as pd

    from timevec.config import ExperimentConfig
    from timevec.store import VectorStore

log = logging.getLogger(__name__)

__all__ = ["STAGES", "StageFunction", "StageResult", "analyze", "check_stages", "report", "run_stages"]


def gram_of_store(store: VectorStore) -> tuple[Any, list[tuple[str, str]]]:
    """The streamed Gram matrix of every stored vector, and the keys in its order."""
    keys = store.list_vectors()
    return (store.gram(keys) if keys else None), keys


def complete(config: ExperimentConfig, store: VectorStore) -> StageResult:
    """The complete stage: every cell the evaluation design left out, estimated from the evaluated ones with an
    interval (:mod:`timevec.analyze.completion`), into the cells table as rows with ``estimated`` true; the
    estimates of an earlier run are replaced, an evaluated cell is never estimated."""
    import math

    import pandas as pd

    from timevec import results as r
    from timevec.analyze.completion import complete_cells

    cells = r.cells_frame(r.read_table(store, r.CELLS_TABLE))
    evaluated = cells[~cells["estimated"]].drop_duplicates(r.CELL_KEY, keep="last")
    wanted = evaluated["task"].isin(config.tasks) & evaluated["granularity"].isin(config.granularities)
    estimated = complete_cells(evaluated[wanted], level=config.evaluation.confidence, seed=config.seed)
    r.write_table(store, r.CELLS_TABLE, pd.concat([evaluated, estimated], ignore_index=True))
    vectors = evaluated[evaluated["vector"] != "base"]
    counts = pd.concat([vectors, estimated]).groupby(["task", "granularity", "metric"])
    summary = counts["estimated"].agg(evaluated=lambda e: int((~e).sum()), estimated="sum").reset_index()
    halfwidths = estimated["high"].sub(estimated["low"]).div(2)
    return {"tables": {"cells evaluated and estimated (evaluation.design)": summary},
            "headline": {"cells estimated": int(len(estimated)),
                         "median half-width of an estimate": float(halfwidths.median()) if len(halfwidths) else math.nan}}


def analyze(config: ExperimentConfig, store: VectorStore) -> StageResult:
    """The analyze stage: similarity, degradation, decay, stripes and the headline into the store."""
    from timevec import results as r
    from timevec.analyze import analysis
    from timevec.analyze.findings import mark_completed

    # in key order, not the order the actors finished in: the pooled statistics then sum in one order, and the
    # analysis of the same cells is the same bit for bit whichever run computed them
    # (a table written before a column of the cells existed reads with it; a cell both estimated and since evaluated
    # counts once, evaluated)
    cells = r.cells_frame(r.read_table(store, r.CELLS_TABLE)).sort_values(r.CELL_KEY, kind="stable")
    cells = cells[~(cells["estimated"] & cells.duplicated(r.CELL_KEY, keep=False))].reset_index(drop=True)
    gram, keys = gram_of_store(store)
    optional = {name: r.read_table(store, name) for name in REGISTRY["analyze"].reads  # what the stage declares it reads
                if name != r.CELLS_TABLE and store.has_table(name)}
    result = analysis.analyze(cells, gram, keys, optional.get(r.INTERPOLATION_TABLE), optional.get(r.ANALOGY_BEST_TABLE),
                              soups=optional.get(r.SOUPS_TABLE), analogy_grid=optional.get(r.ANALOGY_TABLE),
                              forecast=optional.get(r.FORECAST_TABLE), group_swaps=optional.get(r.GROUP_SWAPS_TABLE))
    r.write_table(store, r.RELATIVE_CHANGE_TABLE, result.rel)
    r.write_table(store, r.DIAGONAL_TABLE, result.diagonal)
    r.write_table(store, r.DECAY_BY_GAP_TABLE, result.decay.by_gap)
    r.write_table(store, r.DECAY_FIT_TABLE, result.decay.fit)
    r.write_table(store, r.STRIPES_TABLE, result.stripes)
    if result.similarity is not None:
        r.write_table(store, r.SIMILARITY_TABLE, result.similarity)
        r.write_table(store, r.SIMILARITY_CENTRED_TABLE, result.similarity_centred)
    findings = mark_completed(result.findings, cells)  # the findings read off estimated cells say so
    r.write_table(store, r.FINDINGS_TABLE, findings)
    r.write_table(store, r.INTERPOLATION_PROTOCOLS_TABLE, result.interpolation_protocols)
    r.write_table(store, r.ANALOGY_PROTOCOLS_TABLE, result.analogy_protocols)
    tables = {"diagonal (own period best?)": result.diagonal, "decay with the gap": result.decay.fit}
    if config.groups.analyze:
        tables.update(_analyze_groups(store, result.rel, result.headline))
    store.write_bytes(r.HEADLINE_FILE, json.dumps(result.headline, indent=2, default=str).encode())
    return {"tables": tables, "headline": result.headline, "findings": findings,
            "findings_file": write_findings_text(store, r.FINDINGS_TEXT_FILE, findings)}


def write_findings_text(store: VectorStore, name: str, findings: pd.DataFrame) -> str:
    """The verdict block and then every findings row, as plain text in the store; returns where it is.

    The terminal shows the block only (:func:`timevec.analyze.verdict.format_verdict`) and names this file.
    """
    from timevec.analyze.findings import format_findings
    from timevec.analyze.verdict import format_verdict

    text = f"{format_verdict(findings)}\n\nEvery finding, per panel\n{format_findings(findings)}\n"
    store.write_bytes(name, text.encode("utf-8"))
    return f"{store.url.rstrip('/')}/{name}"


def _analyze_groups(store: VectorStore, rel: pd.DataFrame, headline: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The per-group sub-step of analyze (:mod:`timevec.analyze.weight_groups`): three tables into the store,
    which group carries time into ``headline``."""
    from timevec import results as r
    from timevec.analyze.weight_groups import group_analysis, group_headline

    groups = group_analysis(store, rel)
    if groups is None:
        return {}
    r.write_table(store, r.GROUP_NORMS_TABLE, groups.norms)
    r.write_table(store, r.GROUP_SIMILARITY_TABLE, groups.similarity)
    r.write_table(store, r.GROUP_SIM_DEG_TABLE, groups.sim_vs_deg)
    swaps = r.read_table(store, r.GROUP_SWAPS_TABLE, default=None)
    headline.update(group_headline(groups.norms, groups.sim_vs_deg, swaps))
    shares = groups.norms[groups.norms["scope"] != "all"].groupby(["task", "scope", "part"], sort=False)
    return {"share of |τ|² per parameter group and layer (mean over periods)":
            shares[["norm_sq_share", "param_share"]].mean().reset_index()}


def report(config: ExperimentConfig, store: VectorStore) -> StageResult:
    """The report stage: figures and ``reports/index.html`` in the store."""
    from timevec import results as r
    from timevec.report import build_report

    tables = {name: r.read_table(store, name) for name in REGISTRY["report"].reads if store.has_table(name)}
    gram, keys = gram_of_store(store)
    build_report(tables, gram, keys, store.write_bytes, functools.partial(r.write_table, store),
                 title=f"timevec — {config.name}")
    return {"report": report_location(store)}


def report_location(store: VectorStore) -> str:
    """Where a person opens the report: a local file path, or the object URL on S3."""
    return f"{store.url.rstrip('/')}/reports/index.html"  # a local store's url is its absolute path


def check_stages(stages: list[str]) -> None:
    """Refuse unknown stage names (ConfigError, exit 2) — callable before anything heavy is imported."""
    from timevec.config import ConfigError

    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")


def run_stages(config: ExperimentConfig, stages: list[str], functions: Mapping[str, StageFunction]) -> StageResult:
    """Run ``stages`` in the pipeline's order with ``functions[name]``; returns the tables and findings to print.

    The analysis comes after the adaptation stages (which need only vectors and cells) so that
    its headline includes the interpolation, forecast and analogy results. With ``training.seeds``,
    every replicate runs the stages in turn (:mod:`timevec.train.replicates`) and the findings returned
    are the ones over seeds.
    """
    from timevec.train.replicates import replicate_configs

    assert tuple(functions) == STAGES, "the stage table names the pipeline's stages in order"
    check_stages(stages)
    replicates = replicate_configs(config)
    if len(replicates) == 1:
        return _run_one(replicates[0][1], stages, functions)
    return _run_replicates(config, replicates, stages, functions)


def _run_replicates(config: ExperimentConfig, replicates: list[tuple[int, ExperimentConfig]], stages: list[str],
                    functions: Mapping[str, StageFunction]) -> StageResult:
    from timevec import results as r
    from timevec.analyze.seeds import findings_over_seeds
    from timevec.store import VectorStore
    from timevec.train.replicates import share_base

    root = VectorStore.from_config(config.store)
    first = VectorStore.from_config(replicates[0][1].store)
    by_seed: dict[int, Any] = {}
    summary: StageResult = {"tables": {}, "headline": {}}
    reports: list[str] = []  # one per replicate
    for n, (seed, replica) in enumerate(replicates, 1):
        log.info("replicate %d/%d: training.seed %d in %s", n, len(replicates), seed, replica.store.url)
        store = VectorStore.from_config(replica.store)
        if n > 1 and share_base(first, store, replica.store.target_shard_bytes):
            log.info("replicate seed %d: base copied from %s (one θ_pre for every seed)", seed, first.url)
        result = _run_one(replica, stages, functions)
        for key, value in result.get("headline", {}).items():
            summary["headline"][f"seed {seed}: {key}"] = value
        if store.has_table(r.FINDINGS_TABLE):
            by_seed[seed] = r.read_table(store, r.FINDINGS_TABLE)
        if result.get("report"):
            reports.append(result["report"])
    summary["results"] = f"{root.url.rstrip('/')}/seeds/*/results/*.parquet"
    if reports:
        summary["report"] = " ".join(reports)
    if by_seed:
        over = findings_over_seeds(by_seed)
        r.write_table(root, r.FINDINGS_SEEDS_TABLE, over)
        summary["findings"] = over
        summary["findings_file"] = write_findings_text(root, f"results/{r.FINDINGS_SEEDS_TABLE}.txt", over)
        summary["results"] += f"; over seeds: {root.url.rstrip('/')}/results/{r.FINDINGS_SEEDS_TABLE}.parquet"
    return summary


def _run_one(config: ExperimentConfig, stages: list[str], functions: Mapping[str, StageFunction]) -> StageResult:
    from timevec.data.min_examples import apply_min_examples
    from timevec.store import VectorStore
    from timevec.train.continual import for_mode
    from timevec.train.loop import check_store_base

    config = for_mode(config)  # training.mode continual: the mode's own store (timevec.train.continual)
    config = apply_min_examples(config)  # corpus.min_examples: periods too small for a task leave every stage, named
    store = VectorStore.from_config(config.store)
    if store.exists():
        check_store_base(config, store)
        from timevec.train.extension import prepare_extension

        prepare_extension(config, store)  # new periods: keep the old range's results apart first (ARCHITECTURE §15)
    summary: StageResult = {"tables": {}, "headline": {}}
    ordered = [s for s in STAGES if s in stages]
    for name in ordered:
        began = time.perf_counter()
        why = REGISTRY[name].skip_reason(config)
        if why is not None:  # the stage does not apply to this config: say so and why, not "done"
            progress_log.info("stage %s: skipped (%s)", name, why)
            summary["headline"][name] = f"skipped: {why}"
            continue
        log.info("stage %s: starting", name)  # (-v) the stage's progress lines and its time are on the progress channel
        result = functions[name](config, store)
        summary["tables"].update(result.get("tables", {}))
        summary["headline"].update(result.get("headline", {}))
        for key in ("report", "findings", "findings_file"):
            if key in result:
                summary[key] = result[key]
        seconds = time.perf_counter() - began
        summary["headline"][f"seconds_{name}"] = round(seconds, 1)
        progress_log.info("stage %s: done in %.1f s", name, seconds)
    summary["results"] = f"{store.url.rstrip('/')}/results/*.parquet"
    ray_storage = config.ray.storage_path or store.ray_storage_path()
    if "://" not in ray_storage and {"finetune", "analogy"} & set(ordered):
        summary["tensorboard"] = f"tensorboard --logdir {ray_storage}"  # every fleet run and α-search trial
    return summary


def summary_frame(summary: StageResult) -> pd.DataFrame:
    """The headline as a two-column table (for logs of ``ray job`` runs)."""
    import pandas as pd

    return pd.DataFrame({"finding": list(summary["headline"]), "value": [str(v) for v in summary["headline"].values()]})
