"""The combination stages' frame on Ray: interpolation, forecast, forgetting and group swaps, written once.

Each of these stages scores items — combinations of stored vectors written in place into θ_pre — on
tokenised splits and appends the rows to its tables as items finish. Each stage module supplies only
its items, the inputs every item needs and how to score one item (a :class:`Combinations`); the rest
is here: :func:`stage_store` (the store, refused without θ_pre); :class:`CombinationActor`, the one
actor class, whose setup builds a :class:`Scoring` (θ_pre loaded once in a
:class:`~timevec.evaluate.cells.CellEvaluator` on the actor's device, a bounded :class:`VectorCache`)
and which hands each item to the stage's module-level ``score`` (Ray ships it to the actors by
reference, as it does the class); and :func:`run_combinations`, the pool
(:func:`~timevec.distributed.actor_pool.drive`, the engine the cells stage uses too) with one flush
policy, each failed item logged under the stage's label, and the stage's error
(:func:`~timevec.distributed.actor_pool.failure_error`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from timevec import results
from timevec.config import ExperimentConfig
from timevec.data.examples import EvalSets
from timevec.distributed.actor_pool import Failure, PoolActor, Rows, drive, failure_error
from timevec.distributed.runtime import eval_actor_device
from timevec.evaluate.cells import CellEvaluator, require_base
from timevec.results import CELLS_TABLE
from timevec.store import VectorStore
from timevec.weights.vectors import TimeVector

__all__ = [
    "FLUSH_SECONDS", "CombinationActor", "Combinations", "KnownCells", "Rows", "Scoring", "SplitSets", "VectorCache",
    "known_cells", "known_of", "run_combinations", "stage_store",
]

#: (task, granularity) -> period -> split, for "test" and "validation"
SplitSets = EvalSets
#: (task, granularity, "base" or train period, test period) -> value, from the cells table
KnownCells = dict[tuple[str, str, str, str], float]

#: Rows are appended at the stage's row count or after this many seconds, whichever comes first.
FLUSH_SECONDS = 30.0


def stage_store(config: ExperimentConfig, store: VectorStore | None) -> VectorStore:
    """The stage's store (``store``, else the configured one), refused when θ_pre is not in it."""
    store = store or VectorStore.from_config(config.store)
    require_base(store)
    return store


def known_cells(store: VectorStore) -> KnownCells:
    """The cells table as :data:`KnownCells` (empty before the evaluate stage has run)."""
    return results.cell_values(results.read_table(store, CELLS_TABLE, default=None))


def known_of(known: KnownCells, task: str, granularity: str) -> Callable[[str, str], float | None]:
    """The value of ``task``/``granularity``'s (source, test period) cell already in the cells table, or None."""
    return lambda source, test: known.get((task, granularity, source, test))


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


@dataclass
class Scoring:
    """What scoring one item may use (no Ray in it): θ_pre's evaluator, the vector cache, the config."""

    config: ExperimentConfig
    evaluator: CellEvaluator
    cache: VectorCache

    def vectors(self, task: str) -> Callable[[str], TimeVector]:
        """``task``'s vector of a period, through the cache."""
        return lambda period: self.cache.get(task, period)


#: How a stage scores one item: ``score(scoring, item, *shared) -> rows per table`` (a module-level function).
Score = Callable[..., Rows]


class CombinationActor(PoolActor):
    """The combination stages' actor: setup builds a :class:`Scoring` once; ``work`` hands each item
    (and the shared inputs, fetched once per actor by :class:`~timevec.distributed.actor_pool.PoolActor`)
    to the stage's ``score``; an item's error is returned by the pool, not raised."""

    def setup(self, config: ExperimentConfig, store: VectorStore, score: Score) -> None:
        logging.basicConfig(level=logging.INFO)
        evaluator = CellEvaluator(config, store, device=eval_actor_device(config.ray))
        self.scoring = Scoring(config, evaluator, VectorCache(evaluator.read_vector))
        self.score = score

    def work(self, item: Any, *shared: Any) -> Rows:
        return self.score(self.scoring, item, *shared)


@dataclass(frozen=True)
class Combinations:
    """What one combination stage supplies to :func:`run_combinations` besides its items and inputs."""

    desc: str  # the progress bar's name
    unit: str  # what an item is, in the progress bar
    score: Score  # module-level: the actors get it by reference
    tables: dict[str, Callable[[list[dict[str, Any]]], pd.DataFrame]]  # output table -> the frame its rows append as
    flush_rows: int  # rows buffered before an append (or FLUSH_SECONDS)
    label: Callable[[Any], str]  # an item, in the log and the failure report
    failed: str  # what failed, counted: "interpolation item(s)"
    log: logging.Logger  # the stage module's: failed items are logged under its name
    name: Callable[[Any], str] | None = None  # given: the failure message names the items on one line, no errors

    def message(self, failures: Sequence[Failure]) -> str:
        """The stage's error text: each failed item's label and error, one per line (or only its name)."""
        if self.name is not None:
            return f"{len(failures)} {self.failed} failed: " + ", ".join(self.name(f.item) for f in failures)
        lines = [f"{self.label(f.item)}: {f.text}" for f in failures]
        return f"{len(lines)} {self.failed} failed:\n  " + "\n  ".join(lines)


def run_combinations(
    config: ExperimentConfig,
    store: VectorStore,
    items: Sequence[Any],
    stage: Combinations,
    shared: Callable[[], list[Any]],
    *,
    source: tuple[ExperimentConfig, VectorStore] | None = None,
) -> None:
    """Score ``items`` (in this order) on ``config.ray``'s evaluation actors, appending their rows to
    ``store``'s tables as they finish; raises the stage's error naming every failed item.

    ``shared()`` builds the inputs every item needs (while the actors load θ_pre); ``source`` is the
    (config, store) the actors load θ_pre and read vectors from, when not (``config``, ``store``).
    """
    actor_config, actor_store = source or (config, store)

    def sink(name: str) -> Callable[[list[dict[str, Any]]], None]:
        return lambda rows: results.append_table(store, name, stage.tables[name](rows))

    def failed(failure: Failure) -> None:
        stage.log.error("%s failed: %s", stage.label(failure.item), failure.text)

    outcome = drive(
        CombinationActor, (actor_config, actor_store, stage.score), config.ray, items, shared,
        {name: sink(name) for name in stage.tables},
        desc=stage.desc, unit=stage.unit, flush_rows=stage.flush_rows, flush_seconds=FLUSH_SECONDS, on_failure=failed,
    )
    if outcome.failures:
        raise failure_error(stage.message(outcome.failures), outcome.failures)
