"""The groups stage on Ray: group swaps (τ_j with one parameter group from τ_k, on k's test split).

What a swap is and how its share of the gap is read: :mod:`timevec.adapt.group_swaps`. Execution is the
interpolation stage's: actors of :class:`~timevec.distributed.interpolate.CombinationActor` (θ_pre
loaded once, combinations written in place by the WeightPatcher, a bounded vector cache), the pool
driver of :mod:`timevec.distributed.actor_pool`, one item per (task, granularity, j, k) with all its
groups, rows appended to ``results/group_swaps.parquet`` as items finish, so a re-run skips every
(task, granularity, j, k, group) already there. The ends (τ_j and τ_k on k) come from
``cells.parquet`` when present.
"""

from __future__ import annotations

import logging
import time

import pandas as pd

from timevec import results
from timevec.adapt import group_swaps
from timevec.adapt.interpolation import EvaluateWeights, GetVector
from timevec.config import ExperimentConfig
from timevec.data.examples import prepare_eval_sets
from timevec.data.periods import sort_periods
from timevec.distributed.actor_pool import Failure, drive, failure_error
from timevec.distributed.interpolate import CombinationActor, KnownCells, SplitSets, known_cells
from timevec.evaluate.cells import require_base
from timevec.results import GROUP_SWAPS_TABLE
from timevec.store import VectorStore
from timevec.weights.param_groups import group_counts

log = logging.getLogger(__name__)


def _label(item: group_swaps.SwapItem) -> str:
    return f"group swaps {item.task}/{item.granularity} {item.source}→{item.target}"


class _SwapActor(CombinationActor):
    """Runs swap items; ``work`` gets the splits and known cells once per actor."""

    def work(self, item: group_swaps.SwapItem, splits: SplitSets, known: KnownCells) -> dict[str, list[dict]]:
        return {GROUP_SWAPS_TABLE: run_item(self.evaluator.evaluate_weights, self.cache.get, item, splits, known,
                                            group_counts(self.evaluator.store.shapes))}


def run_item(evaluate_weights: EvaluateWeights, get_vector: GetVector, item: group_swaps.SwapItem, splits: SplitSets,
             known: KnownCells | None, n_tensors: dict[str, int]) -> list[dict]:
    """One item's rows (no Ray). ``get_vector(task, period)``."""
    split = splits["test"].get((item.task, item.granularity), {}).get(item.target)
    if split is None:
        log.warning("%s: no test split of %s, no swaps", _label(item), item.target)
        return []
    return group_swaps.evaluate_swaps(
        evaluate_weights, lambda p: get_vector(item.task, p), item, split, n_tensors,
        known=lambda source, test: (known or {}).get((item.task, item.granularity, source, test)),
    )


def plan(config: ExperimentConfig, store: VectorStore) -> tuple[list[group_swaps.SwapItem], list[str]]:
    """(work items, notes on what was left out)."""
    existing = store.read_table(GROUP_SWAPS_TABLE) if store.has_table(GROUP_SWAPS_TABLE) else None
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
    store = store or VectorStore.from_config(config.store)
    require_base(store)
    items, notes = plan(config, store)
    for note in notes:
        log.warning("groups: %s", note)
    log.info("groups: %d swap item(s), %d swap(s) to evaluate", len(items), sum(len(i.groups) for i in items))
    if items:
        needed: dict[tuple[str, str], set[str]] = {}
        for item in items:
            needed.setdefault((item.task, item.granularity), set()).add(item.target)

        def failed(failure: Failure) -> None:
            log.error("%s failed: %s", _label(failure.item), failure.text)

        outcome = drive(
            _SwapActor, (config, store), config.ray, items,
            lambda: [prepare_eval_sets(config, needed, ("test", "validation"), store=store), known_cells(store)],
            {GROUP_SWAPS_TABLE: lambda rows: store.append_table(GROUP_SWAPS_TABLE, results.group_swaps_frame(rows))},
            desc="group swaps", unit="pair", flush_rows=256, flush_seconds=30.0, on_failure=failed,
        )
        if outcome.failures:
            failures = [f"{_label(f.item)}: {f.text}" for f in outcome.failures]
            raise failure_error(f"{len(failures)} swap item(s) failed:\n  " + "\n  ".join(failures), outcome.failures)
    table = store.read_table(GROUP_SWAPS_TABLE) if store.has_table(GROUP_SWAPS_TABLE) else results.group_swaps_frame([])
    log.info("groups stage done in %.1f s", time.perf_counter() - began)
    return table.reset_index(drop=True)
