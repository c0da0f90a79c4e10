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

Execution reuses the cell machinery: actors each hold one
:class:`~timevec.evaluate.cells.CellEvaluator` (θ_pre loaded once, combinations written in
place by the WeightPatcher, θ_pre restored exactly), a bounded cache of vectors read from the
store, and the tokenised splits (put in the object store once). Work items are one α point (all its
test periods) or one period's soup + patching; the pool driver shared with the cells stage
(:mod:`timevec.distributed.actor_pool`, over ``ray.wait``) schedules them. Rows are
appended to the store as items finish, so the stage is resumable: a re-run skips every
(task, granularity, first, last, α, test period) already in the interpolation table and every
(task, granularity, period) already in the soups table.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from timevec import results
from timevec.adapt import interpolation as adapt
from timevec.adapt import summaries
from timevec.config import ExperimentConfig
from timevec.data.examples import EvalSets, prepare_eval_sets
from timevec.data.periods import Period, sort_periods
from timevec.distributed.actor_pool import Failure, PoolActor, drive, failure_error
from timevec.distributed.runtime import eval_actor_device
from timevec.evaluate.cells import CellEvaluator, require_base
from timevec.results import CELLS_TABLE, INTERPOLATION_BEST_TABLE, INTERPOLATION_TABLE, PATCHING_TABLE, SOUPS_TABLE
from timevec.store import VectorStore
from timevec.weights.vectors import TimeVector

log = logging.getLogger(__name__)


#: (task, granularity) -> period -> split, for "test" and "validation"
SplitSets = EvalSets
#: (task, granularity, "base" or train period, test period) -> value, from the cells table
KnownCells = dict[tuple[str, str, str, str], float]


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


class VectorCache:
    """Vectors read from the store, least recently used dropped beyond ``max_bytes``.

    Interpolation reuses τ_first/τ_last for every α and a soup re-reads its members at every step;
    a cache makes each a single read while keeping memory bounded for multi-GB vectors.
    """

    def __init__(self, read: Any, max_bytes: int = 2 << 30) -> None:
        self._read = read
        self._max = max_bytes
        self._items: OrderedDict[tuple[str, str], TimeVector] = OrderedDict()
        self._bytes = 0

    def get(self, task: str, period: str) -> TimeVector:
        key = (task, period)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        vector = self._read(task, period)
        size = getattr(vector, "stored_params", vector.n_params) * 4  # a low-rank vector holds its factors only
        while self._items and self._bytes + size > self._max:
            _, old = self._items.popitem(last=False)
            self._bytes -= getattr(old, "stored_params", old.n_params) * 4
        self._items[key] = vector
        self._bytes += size
        return vector


class CombinationActor(PoolActor):
    """A :class:`CellEvaluator` (θ_pre loaded once, on the actor's device) plus a :class:`VectorCache`:
    the state every actor that evaluates combinations of stored vectors needs (interpolation, soups,
    patching, forecasts). Subclasses define ``work``."""

    def setup(self, config: ExperimentConfig, store: VectorStore) -> None:
        logging.basicConfig(level=logging.INFO)
        self.evaluator = CellEvaluator(config, store, device=eval_actor_device(config.ray))
        self.cache = VectorCache(self.evaluator.read_vector)


class _AdaptActor(CombinationActor):
    """Runs interpolation points and period items.

    ``work`` gets the :data:`SplitSets` and the :data:`KnownCells` through the object store, fetched
    once per actor (:class:`~timevec.distributed.actor_pool.PoolActor`); an item's error is returned.
    """

    def setup(self, config: ExperimentConfig, store: VectorStore) -> None:
        super().setup(config, store)
        self.max_distance = config.interpolation.soup_max_distance

    def work(self, item: Item, splits: SplitSets, known: KnownCells) -> dict[str, list[dict]]:
        """Rows of one item per table: interpolation, soups, patching."""
        interp, soups, patches = run_item(self.evaluator.evaluate_weights, self.cache.get, item, splits, known,
                                          self.max_distance)
        return {INTERPOLATION_TABLE: interp, SOUPS_TABLE: soups, PATCHING_TABLE: patches}


def run_item(
    evaluate_weights: adapt.EvaluateWeights,
    get_vector: adapt.GetVector,
    item: Item,
    splits: SplitSets,
    known: KnownCells | None = None,
    max_distance: int | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Evaluate one work item (no Ray): (interpolation rows, soup rows, patching rows).

    ``known``: cells already in the all-pairs table, so a soup's baselines are not evaluated twice.
    """
    tests = splits["test"].get((item.task, item.granularity), {})
    if isinstance(item, PeriodItem):
        if item.period not in tests:
            log.warning("%s/%s: no test split, no soup or patching", item.task, item.period)
            return [], [], []
        validation = splits["validation"].get((item.task, item.granularity), {}).get(item.period)
        soups, patches = adapt.evaluate_period(
            evaluate_weights, lambda p: get_vector(item.task, p), item.task, item.granularity, item.period,
            list(item.stored), validation, tests[item.period], max_distance,
            known=lambda source, test: (known or {}).get((item.task, item.granularity, source, test)),
        )
        return [], soups, patches
    validations = splits["validation"].get((item.task, item.granularity), {})
    rows = adapt.run_interpolation_item(
        evaluate_weights, get_vector(item.task, item.first), get_vector(item.task, item.last), item, tests, validations
    )
    return rows, [], []


# ----------------------------------------------------------------------------- planning


def _done_periods(store: VectorStore, table: str) -> set[tuple[str, str, str]]:
    if not store.has_table(table):
        return set()
    frame = store.read_table(table)
    return set(zip(frame["task"], frame["granularity"], frame["period"].astype(str)))


def plan(config: ExperimentConfig, store: VectorStore) -> tuple[list[Item], dict[tuple[str, str], set[str]], list[str]]:
    """(work items, test periods needed per (task, granularity), notes on what was left out)."""
    existing = store.read_table(INTERPOLATION_TABLE) if store.has_table(INTERPOLATION_TABLE) else None
    if existing is not None and "split" not in existing:  # written before validation rows existed
        existing = results.with_split(existing)
        store.write_table(INTERPOLATION_TABLE, results.interpolation_frame(existing.to_dict("records")))
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


def known_cells(store: VectorStore) -> KnownCells:
    """The cells table as :data:`KnownCells` (empty before the evaluate stage has run)."""
    return results.cell_values(store.read_table(CELLS_TABLE)) if store.has_table(CELLS_TABLE) else {}


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
    store = store or VectorStore.from_config(config.store)
    require_base(store)
    items, needed, notes = plan(config, store)
    for note in notes:
        log.warning("interpolation: %s", note)
    n_points = sum(1 for i in items if isinstance(i, adapt.InterpolationItem))
    log.info("interpolation: %d α points and %d soup/patch periods to evaluate", n_points, len(items) - n_points)
    if items:
        _compute(config, store, items, needed)
    table = store.read_table(INTERPOLATION_TABLE) if store.has_table(INTERPOLATION_TABLE) else results.interpolation_frame([])
    cells = store.read_table(CELLS_TABLE) if store.has_table(CELLS_TABLE) else None
    store.write_table(INTERPOLATION_BEST_TABLE, summaries.interpolation_best(table, cells))
    table = table[table["task"].isin(config.tasks) & table["granularity"].isin(config.granularities)]
    log.info("interpolation stage done in %.1f s", time.perf_counter() - began)
    return table.reset_index(drop=True)


def _compute(
    config: ExperimentConfig, store: VectorStore, items: list[Item], needed: dict[tuple[str, str], set[str]]
) -> None:
    frames = {INTERPOLATION_TABLE: results.interpolation_frame, SOUPS_TABLE: results.soup_frame,
              PATCHING_TABLE: results.patching_frame}

    def sink(name: str):
        return lambda rows: store.append_table(name, frames[name](rows))

    def failed(failure: Failure) -> None:
        log.error("%s failed: %s", _label(failure.item), failure.text)

    # Period items are the long ones (a soup is many evaluations): start them first.
    ordered = sorted(items, key=lambda i: not isinstance(i, PeriodItem))
    # Actors load θ_pre while the driver tokenises.
    outcome = drive(
        _AdaptActor, (config, store), config.ray, ordered,
        lambda: [prepare_eval_sets(config, needed, ("test", "validation"), store=store), known_cells(store)],
        {name: sink(name) for name in frames},
        desc="interpolation", unit="item", flush_rows=512, flush_seconds=30.0, on_failure=failed,
    )
    if outcome.failures:
        failures = [f"{_label(f.item)}: {f.text}" for f in outcome.failures]
        message = f"{len(failures)} interpolation item(s) failed:\n  " + "\n  ".join(failures)
        raise failure_error(message, outcome.failures)
