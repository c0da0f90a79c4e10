"""The interpolation stage on Ray: interpolation grids, greedy time soups and missing-period patching.

For each configured task and granularity with at least two stored vectors:

- **interpolation**: τ(α) = (1−α)·τ_first + α·τ_last for every α of ``interpolation.alphas``
  (first/last: the earliest and latest stored period of that granularity), evaluated on the test
  split of EVERY configured period and on the validation split of the middle ones (where
  :mod:`timevec.adapt.selection` chooses α without the test labels) → ``results/interpolation.parquet``
  (:data:`timevec.results.INTERPOLATION_COLUMNS`), summarised per middle period in
  ``results/interpolation_best.parquet`` (:data:`timevec.results.INTERPOLATION_BEST_COLUMNS`, with
  the in-period and previous-vector baselines from ``cells.parquet`` when present);
- **soups and patching**, per configured period: a greedy soup of neighbouring vectors selected on
  the period's validation split, the uniform soup of every OTHER stored vector (the averaging control),
  and the period's vector rebuilt from its two neighbours, each
  against base / in-period / previous / next / latest on the period's test split →
  ``results/soups.parquet`` and ``results/patching.parquet``.

Execution is the combination stages' frame (:mod:`timevec.distributed.combinations`): actors each
hold θ_pre once in a :class:`~timevec.evaluate.cells.CellEvaluator` (combinations written in place by
the WeightPatcher, θ_pre restored exactly), a bounded cache of vectors read from the store, and the
tokenised splits (put in the object store once). Work items are one α point (all its test periods)
or one period's soup + patching; this module supplies them and :func:`score`. Rows are
appended to the store as items finish, so the stage is resumable: a re-run skips every
(task, granularity, first, last, α, test period) already in the interpolation table and every
(task, granularity, period) already in the soups table.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pandas as pd

from timevec import results
from timevec.adapt import interpolation as adapt
from timevec.adapt import summaries
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
from timevec.periods import Period, sort_periods
from timevec.results import CELLS_TABLE, INTERPOLATION_BEST_TABLE, INTERPOLATION_TABLE, PATCHING_TABLE, SOUPS_TABLE
from timevec.store import VectorStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeriodItem:
    """One period's soup and patching (they share the baseline evaluations)."""

    task: str
    granularity: str
    period: str
    stored: tuple[str, ...]


Item = adapt.InterpolationItem | PeriodItem


def _label(item: Item) -> str:
    if isinstance(item, PeriodItem):
        return f"soup/patch {item.task}/{item.period}"
    return f"interpolation {item.task}/{item.granularity} α={item.alpha:g}"


def score(on: Scoring, item: Item, splits: SplitSets, known: KnownCells) -> Rows:
    """One item's rows per table (interpolation, soups, patching); ``known``: cells already in the
    all-pairs table, so a soup's baselines are not evaluated twice."""
    tests = splits["test"].get((item.task, item.granularity), {})
    validations = splits["validation"].get((item.task, item.granularity), {})
    if isinstance(item, PeriodItem):
        if item.period not in tests:
            log.warning("%s/%s: no test split, no soup or patching", item.task, item.period)
            return {}
        soups, patches = adapt.evaluate_period(
            on.evaluator.evaluate_weights, on.vectors(item.task), item.task, item.granularity, item.period,
            list(item.stored), validations.get(item.period), tests[item.period],
            on.config.interpolation.soup_max_distance, known=known_of(known, item.task, item.granularity),
        )
        return {SOUPS_TABLE: soups, PATCHING_TABLE: patches}
    vector = on.vectors(item.task)
    rows = adapt.run_interpolation_item(
        on.evaluator.evaluate_weights, vector(item.first), vector(item.last), item, tests, validations
    )
    return {INTERPOLATION_TABLE: rows}


STAGE = Combinations(
    desc="interpolation", unit="item", score=score,
    tables={INTERPOLATION_TABLE: results.interpolation_frame, SOUPS_TABLE: results.soup_frame,
            PATCHING_TABLE: results.patching_frame},
    flush_rows=512, label=_label, failed="interpolation item(s)", log=log,
)


# ----------------------------------------------------------------------------- planning


def _done_periods(store: VectorStore, table: str) -> set[tuple[str, str, str]]:
    if not store.has_table(table):
        return set()
    frame = results.read_table(store, table)
    return set(zip(frame["task"], frame["granularity"], frame["period"].astype(str)))


def plan(config: ExperimentConfig, store: VectorStore) -> tuple[list[Item], dict[tuple[str, str], set[str]], list[str]]:
    """(work items, test periods needed per (task, granularity), notes on what was left out)."""
    existing = results.read_table(store, INTERPOLATION_TABLE, default=None)
    if existing is not None and "split" not in existing:  # written before validation rows existed
        existing = results.with_split(existing)
        results.write_table(store, INTERPOLATION_TABLE, results.interpolation_frame(existing.to_dict("records")))
    done = adapt.interpolation_done(existing)
    soups_done = _done_periods(store, SOUPS_TABLE)
    patches_done = _done_periods(store, PATCHING_TABLE)
    items: list[Item] = []
    needed: dict[tuple[str, str], set[str]] = {}
    notes: list[str] = []
    for task in config.tasks:
        stored_all = {p for _, p in store.list_vectors(task)}
        for granularity in config.granularities:
            periods = config.period_list(granularity)
            stored = tuple(sort_periods(p for p in periods if p in stored_all))
            if len(stored) < 2:
                notes.append(f"{task}/{granularity}: {len(stored)} stored vector(s), nothing to interpolate")
            points = adapt.plan_interpolation(task, granularity, stored, periods, config.interpolation.alphas, done)
            items.extend(points)
            for point in points:
                needed.setdefault((task, granularity), set()).update(point.test_periods)
            if not stored:
                continue
            for period in periods:
                key = (task, granularity, period)
                # A period that can be neither souped nor patched still gets its soup row set once.
                if key in soups_done and (key in patches_done or not _patchable(period, stored)):
                    continue
                items.append(PeriodItem(task, granularity, period, stored))
                needed.setdefault((task, granularity), set()).add(period)
    return items, needed, notes


def _patchable(period: str, stored: tuple[str, ...]) -> bool:
    parsed = Period.parse(period)
    return str(parsed.shift(-1)) in stored and str(parsed.shift(1)) in stored


# ----------------------------------------------------------------------------- the driver


def run_interpolation(config: ExperimentConfig, store: VectorStore | None = None) -> pd.DataFrame:
    """Interpolation, soups and patching for every configured task and granularity.

    Returns the interpolation table's rows for the configured tasks and granularities (old and
    new). Writes ``interpolation``, ``interpolation_best``, ``soups`` and ``patching`` tables.
    """
    began = time.perf_counter()
    store = stage_store(config, store)
    items, needed, notes = plan(config, store)
    for note in notes:
        log.warning("interpolation: %s", note)
    n_points = sum(1 for i in items if isinstance(i, adapt.InterpolationItem))
    log.info("interpolation: %d α points and %d soup/patch periods to evaluate", n_points, len(items) - n_points)
    if items:
        # Period items are the long ones (a soup is many evaluations): start them first.
        ordered = sorted(items, key=lambda i: not isinstance(i, PeriodItem))
        # Actors load θ_pre while the driver tokenises.
        run_combinations(config, store, ordered, STAGE, lambda: [
            prepare_eval_sets(config, needed, ("test", "validation"), store=store), known_cells(store)])
    table = results.read_table(store, INTERPOLATION_TABLE, default=results.interpolation_frame([]))
    cells = results.read_table(store, CELLS_TABLE, default=None)
    results.write_table(store, INTERPOLATION_BEST_TABLE, summaries.interpolation_best(table, cells))
    table = table[table["task"].isin(config.tasks) & table["granularity"].isin(config.granularities)]
    log.info("interpolation stage done in %.1f s", time.perf_counter() - began)
    return table.reset_index(drop=True)

