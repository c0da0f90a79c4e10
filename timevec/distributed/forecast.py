"""The forecast stage on Ray: predict the held-out last periods' weights from past vectors only.

For each configured task and granularity, the last ``forecast.horizon`` periods are held out and
every method of :mod:`timevec.adapt.forecast` (and the baselines base, latest and the in_period oracle)
is evaluated on each held-out period's test split → ``results/forecast.parquet``
(:data:`timevec.results.FORECAST_COLUMNS`).

Execution is the combination stages' frame (:mod:`timevec.distributed.combinations`): actors each hold
one :class:`~timevec.evaluate.cells.CellEvaluator` and a vector cache, one item per (task, granularity,
method) scored by :func:`score`, and rows are appended as items finish, so a re-run skips every row
already in the table. The actors are
handed only the held-out periods' TEST splits and the last past period's VALIDATION split (what λ
is chosen on); the held-out vectors are read only for the in_period oracle row, and only when the
cells table lacks that cell.
"""

from __future__ import annotations

import logging
import time
from functools import partial

import numpy as np
import pandas as pd

from timevec import results
from timevec.adapt import forecast
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
from timevec.periods import sort_periods
from timevec.results import FORECAST_TABLE
from timevec.store import VectorStore

log = logging.getLogger(__name__)

#: (task, granularity) -> (held-out periods to test on, the last past period: λ's validation split)
Needed = dict[tuple[str, str], tuple[set[str], str]]


def _label(item: forecast.ForecastItem) -> str:
    return f"forecast {item.task}/{item.granularity} {item.method}"


def score(on: Scoring, item: forecast.ForecastItem, splits: SplitSets, known: KnownCells) -> Rows:
    """One item's forecast rows."""
    key = (item.task, item.granularity)
    return {FORECAST_TABLE: forecast.evaluate_item(
        on.evaluator.evaluate_weights, on.vectors(item.task), item,
        splits["test"].get(key, {}), splits["validation"].get(key, {}),
        known=known_of(known, item.task, item.granularity), load_oracle=on.vectors(item.task),
    )}


STAGE = Combinations(
    desc="forecast", unit="item", score=score, tables={FORECAST_TABLE: results.forecast_frame}, flush_rows=256,
    label=_label, failed="forecast item(s)", log=log,
)


def plan(config: ExperimentConfig, store: VectorStore) -> tuple[list[forecast.ForecastItem], Needed, list[str]]:
    """(work items, splits needed per (task, granularity), notes on what was left out)."""
    forecast.check_horizon(config)
    existing = results.read_table(store, FORECAST_TABLE, default=None)
    done = forecast.forecast_done(existing)
    params = forecast.ForecastParams.from_config(config.forecast)
    items: list[forecast.ForecastItem] = []
    needed: Needed = {}
    notes: list[str] = []
    for task in config.tasks:
        stored = sort_periods(p for _, p in store.list_vectors(task))
        for granularity in config.granularities:
            planned, note = forecast.plan_forecast(
                task, granularity, config.period_list(granularity), stored, config.forecast.horizon, params,
                config.forecast.methods, done, gram_of=partial(past_gram, store, task))
            if note:
                notes.append(note)
            items.extend(planned)
            for item in planned:
                targets, _ = needed.setdefault((task, granularity), (set(), item.past[-1]))
                targets.update(item.targets)
    return items, needed, notes


def past_gram(store: VectorStore, task: str, past: tuple[str, ...]) -> np.ndarray:
    """The Gram matrix of ``task``'s past vectors (streamed, checksum-verified; exact from LoRA factors)."""
    log.info("forecast %s: Gram matrix of the %d past vectors %s", task, len(past), ",".join(past))
    return store.gram([(task, p) for p in past])


def _splits(config: ExperimentConfig, store: VectorStore, needed: Needed) -> SplitSets:
    """The held-out periods' test splits and the last past period's validation split, nothing else."""
    prepared = prepare_eval_sets(config, {key: targets | {last} for key, (targets, last) in needed.items()}, ("test", "validation"),
                                 store=store)
    out: SplitSets = {"test": {}, "validation": {}}
    for key, (targets, last) in needed.items():
        out["test"][key] = {p: s for p, s in prepared["test"].get(key, {}).items() if p in targets}
        out["validation"][key] = {p: s for p, s in prepared["validation"].get(key, {}).items() if p == last}
    return out


def run_forecast(config: ExperimentConfig, store: VectorStore | None = None) -> pd.DataFrame:
    """Every forecast of every configured task and granularity; returns their rows (old and new)."""
    began = time.perf_counter()
    store = stage_store(config, store)
    items, needed, notes = plan(config, store)
    for note in notes:
        log.warning("forecast: %s", note)
    log.info("forecast: %d item(s) to evaluate", len(items))
    if items:
        # The longest first (each registered method's cost): scaled_latest chooses λ (one evaluation per λ),
        # taylor/trend evaluate each target alone.
        ordered = sorted(items, key=lambda i: forecast.method_cost(i.method))
        run_combinations(config, store, ordered, STAGE, lambda: [_splits(config, store, needed), known_cells(store)])
    table = results.read_table(store, FORECAST_TABLE, default=results.forecast_frame([]))
    table = table[table["task"].isin(config.tasks) & table["granularity"].isin(config.granularities)]
    log.info("forecast stage done in %.1f s", time.perf_counter() - began)
    return table.reset_index(drop=True)

