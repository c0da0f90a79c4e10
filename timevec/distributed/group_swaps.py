"""The groups stage on Ray: group swaps (τ_j with one parameter group from τ_k, on k's test split).

What a swap is and how its share of the gap is read: :mod:`timevec.adapt.group_swaps`. Execution is the
combination stages' frame (:mod:`timevec.distributed.combinations`): actors of
:class:`~timevec.distributed.combinations.CombinationActor` (θ_pre loaded once, combinations written in
place by the WeightPatcher, a bounded vector cache), one item per (task, granularity, j, k) with all its
groups scored by :func:`score`, rows appended to ``results/group_swaps.parquet`` as items finish, so a re-run skips every
(task, granularity, j, k, group) already there. The ends (τ_j and τ_k on k) come from
``cells.parquet`` when present.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from timevec import results
from timevec.adapt import group_swaps
from timevec.config import ExperimentConfig
from timevec.data.examples import prepare_eval_sets
from timevec.distributed.combinations import (
    Combinations,
    KnownCells,
    Rows,
    Scoring,
    SplitSets,
    known_cells,
    known_of,
    run_combinations,
    stage_store,
)
from timevec.param_groups import group_counts
from timevec.periods import sort_periods
from timevec.results import GROUP_SWAPS_TABLE
from timevec.store import VectorStore

log = logging.getLogger(__name__)


def _label(item: group_swaps.SwapItem) -> str:
    return f"group swaps {item.task}/{item.granularity} {item.source}→{item.target}"


def score(on: Scoring, item: group_swaps.SwapItem, splits: SplitSets, known: KnownCells) -> Rows:
    """One item's swap rows."""
    split = splits["test"].get((item.task, item.granularity), {}).get(item.target)
    if split is None:
        log.warning("%s: no test split of %s, no swaps", _label(item), item.target)
        return {}
    return {GROUP_SWAPS_TABLE: group_swaps.evaluate_swaps(
        on.evaluator.evaluate_weights, on.vectors(item.task), item, split, group_counts(on.evaluator.store.shapes),
        known=known_of(known, item.task, item.granularity),
    )}


STAGE = Combinations(
    desc="group swaps", unit="pair", score=score, tables={GROUP_SWAPS_TABLE: results.group_swaps_frame},
    flush_rows=256, label=_label, failed="swap item(s)", log=log,
)


def plan(config: ExperimentConfig, store: VectorStore) -> tuple[list[group_swaps.SwapItem], list[str]]:
    """(work items, notes on what was left out)."""
    existing = results.read_table(store, GROUP_SWAPS_TABLE, default=None)
    done = group_swaps.swaps_done(existing)
    groups = group_swaps.swap_groups(config.groups.groups, list(store.shapes))
    items: list[group_swaps.SwapItem] = []
    notes: list[str] = []
    for task in config.groups.tasks or config.tasks:
        stored_all = {p for _, p in store.list_vectors(task)}
        for granularity in config.granularities:
            stored = sort_periods(p for p in config.period_list(granularity) if p in stored_all)
            planned, more = group_swaps.plan_swaps(task, granularity, stored, config.groups.pairs, groups, done)
            items.extend(planned)
            notes.extend(more)
    return items, notes


def run_group_swaps(config: ExperimentConfig, store: VectorStore | None = None) -> pd.DataFrame:
    """Every configured swap; returns the ``group_swaps`` table (old and new rows)."""
    began = time.perf_counter()
    store = stage_store(config, store)
    items, notes = plan(config, store)
    for note in notes:
        log.warning("groups: %s", note)
    log.info("groups: %d swap item(s), %d swap(s) to evaluate", len(items), sum(len(i.groups) for i in items))
    if items:
        needed: dict[tuple[str, str], set[str]] = {}
        for item in items:
            needed.setdefault((item.task, item.granularity), set()).add(item.target)
        run_combinations(config, store, items, STAGE, lambda: [
            prepare_eval_sets(config, needed, ("test", "validation"), store=store), known_cells(store)])
    table = results.read_table(store, GROUP_SWAPS_TABLE, default=results.group_swaps_frame([]))
    log.info("groups stage done in %.1f s", time.perf_counter() - began)
    return table.reset_index(drop=True)
