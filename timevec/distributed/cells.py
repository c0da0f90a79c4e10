"""The all-pairs cell matrix on Ray: evaluation actors that hold the base once.

A cell is (weights, test split) → metric (ARCHITECTURE §1). For each task and granularity the matrix is
every stored vector of that granularity's periods × every test period, plus the base itself as a
row (``vector="base"``, ``train_period=None``).

Design, and why:

- **Actors, not tasks.** Loading a model is the expensive, repeated part of a naive loop (build the
  architecture, read θ_pre, move it to the device). Each evaluation actor loads θ_pre ONCE
  (:func:`timevec.data.models.base_from_store`) and keeps a :class:`~timevec.weights.vectors.WeightPatcher`
  (the Ray-free :class:`timevec.evaluate.cells.CellEvaluator`); per
  vector it reads τ from the store, writes θ_pre + τ into the live model in place, evaluates EVERY
  test split of that granularity, and restores θ_pre bit for bit. Model loads are one per actor,
  vector reads one per vector, instead of one of each per cell.
- **An actor pool (``ray.wait`` over fixed actors) rather than Ray Data ``map_batches``.** The unit of work is coarse (one
  vector × M splits, seconds to minutes) and there are only N of them; the actor state is a whole
  model; and the driver must see each finished vector's rows at once to stream them into the
  store and to resume. The pool gives exactly that — a fixed number of actors with explicit
  resources, Ray's scheduling, results as they complete — without Ray Data's block
  formatting, autoscaling actor pool and Arrow round trip of what are only a few rows per item.
- **Splits are tokenised once** on the driver (:func:`timevec.data.examples.prepare_split`) and put
  in Ray's object store once; each actor receives the reference in its constructor, so every actor
  deserialises them once, not per cell.
- **Streaming and resumption.** Rows are appended to ``results/cells.parquet`` in batches (by row
  count or elapsed time), so a crash loses at most one batch; a re-run reads the table and submits
  only the (vector, test period) cells that are missing, keyed by
  ``(task, granularity, vector, test_period)``. Delete rows (or the table) to recompute them.
- **Failures.** An actor that dies is restarted by Ray and its item retried
  (``max_restarts``/``max_task_retries``). An error inside an item (a corrupt shard, say) is
  returned, not raised, so the other vectors finish and are stored; the run then fails naming
  every failed vector and its missing cells. An item out of memory (under
  ``ray.eval_actor_memory_mb`` or the machine's) is retried on a fresh actor first. The pool, the streaming and the typed errors are
  :mod:`timevec.distributed.actor_pool`'s, shared with the interpolation stage.

Cells table schema (``results/cells.parquet``; other stages read it): ``task`` str,
``granularity`` str (year|quarter|month|week|day), ``vector`` str (``"lm/2014"`` or ``"base"``), ``train_period``
str|None, ``test_period`` str, ``metric`` str (perplexity|macro_f1|rougeL), ``value`` float,
``low``/``high`` float (the bootstrap interval of ``value`` over the test examples,
:mod:`timevec.evaluate.bootstrap`; NaN when off, and in rows of a table written before the bounds
existed), ``halfwidth`` float (the interval's half-width: percent of ``value`` for perplexity, points for
macro-F1 and ROUGE-L), ``higher_is_better`` bool, ``n_examples`` int (the examples scored), ``n_tokens``
int, ``seconds`` float (wall time of that cell's forward passes, metric and interval).

Under ``evaluation.target_halfwidth`` (:mod:`timevec.evaluate.sequential`) each cell scores a prefix of
its split's seeded order, as long as its own precision needs; the stage then also writes what each
cell's metric needs of every scored example to ``results/cell_examples.parquet`` (same key, one row per
cell: :class:`~timevec.evaluate.per_example.ExampleStats`), so that later comparisons of two cells can use
the examples both scored (:func:`read_cell_examples`). A table computed with the target off is not
recomputed when the target is set (the key has no precision): remove it to re-evaluate.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from timevec import results
from timevec.config import ExperimentConfig
from timevec.data.examples import prepare_eval_sets
from timevec.distributed.actor_pool import Attempt, Failure, PoolActor, drive, failure_error
from timevec.distributed.combinations import stage_store
from timevec.distributed.runtime import worker_device
from timevec.evaluate.cells import BASE, CellEvaluator, SplitKey, WorkItem, plan_cells
from timevec.evaluate.per_example import EXAMPLES, ExampleStats
from timevec.periods import Period
from timevec.results import CELL_EXAMPLES_TABLE, CELL_KEY, CELLS_TABLE, cells_frame
from timevec.store import StoreError, VectorStore

log = logging.getLogger(__name__)

__all__ = ["CellRunStats", "append_cells", "example_rows", "read_cell_examples", "read_cells", "run_cells"]

# ----------------------------------------------------------------------------- the actor


class _CellActor(PoolActor):
    """The Ray actor: a :class:`~timevec.evaluate.cells.CellEvaluator` on the actor's device with its own torch threads.

    The splits arrive as an object reference wrapped in a list (so Ray does not resolve it per
    call) and are fetched once per actor process (:class:`~timevec.distributed.actor_pool.PoolActor`):
    the actor can start loading θ_pre while the driver is still tokenising, and an actor that Ray
    restarts after a crash fetches them again instead of running without them.
    """

    def setup(self, config: ExperimentConfig, store: VectorStore) -> None:
        logging.basicConfig(level=logging.INFO)
        torch.set_num_threads(config.ray.torch_threads)
        device = worker_device(config.ray, config.ray.gpus_per_eval_actor, "ray.gpus_per_eval_actor")
        self.evaluator = CellEvaluator(config, store, device=device)
        self._ready_at = time.time()  # wall clock: the driver measures actor start-up with it

    def work(self, item: WorkItem, splits: Any) -> dict[str, list[dict[str, Any]]]:
        self.evaluator.splits = splits
        rows = self.evaluator.evaluate_item(item)
        return {CELLS_TABLE: rows, CELL_EXAMPLES_TABLE: example_rows(rows)}

    def stats(self) -> dict[str, float]:
        return {**self.evaluator.stats.as_dict(), "ready_at": self._ready_at}


# ----------------------------------------------------------------------------- the driver


@dataclass
class CellRunStats:
    """What a :func:`run_cells` call did.

    ``startup_seconds``: from creating the actors until the first could evaluate (process start,
    imports, θ_pre load); ``actor_seconds``: the actors' summed time from ready to the end, which
    ``forward_seconds`` is a share of.
    """

    cells_computed: int = 0
    cells_skipped: int = 0
    items: int = 0
    actors: int = 0
    model_loads: int = 0
    vector_reads: int = 0
    flushes: int = 0
    retries: int = 0  # items retried on a fresh actor after running out of memory
    attempts: list[Attempt] = field(default_factory=list)  # every item's runs that returned: actor, pid, host, error
    seconds: float = 0.0
    forward_seconds: float = 0.0
    prepare_seconds: float = 0.0
    startup_seconds: float = 0.0
    actor_seconds: float = 0.0
    actor_stats: list[dict[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_cells(store: VectorStore, table: str = CELLS_TABLE) -> pd.DataFrame:
    """The cells table (empty with the right columns when absent), one row per key (last wins);
    a table written before the ``low``/``high`` columns existed reads with NaN bounds."""
    if not store.has_table(table):
        return cells_frame([])
    frame = cells_frame(results.read_table(store, table))
    return frame.drop_duplicates(CELL_KEY, keep="last").reset_index(drop=True)


def example_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``cell_examples`` rows of cells rows that carry per-example statistics (none with the target off)."""
    return [{**{k: row[k] for k in CELL_KEY}, **row[EXAMPLES].as_row()} for row in rows if row.get(EXAMPLES) is not None]


def read_cell_examples(store: VectorStore, samples: int, seed: int) -> dict[tuple[str, str, str, str], ExampleStats]:
    """Every cell's per-example statistics by ``(task, granularity, vector, test_period)`` (last row wins), resampled
    with ``samples``/``seed`` (``evaluation.bootstrap_samples``/``bootstrap_seed``); empty when the stage wrote none."""
    frame = results.read_table(store, CELL_EXAMPLES_TABLE, default=None)
    if frame is None:
        return {}
    return {tuple(str(row[k]) for k in CELL_KEY): ExampleStats.from_row(row, samples, seed)  # type: ignore[misc]
            for row in frame.to_dict("records")}


def append_cells(store: VectorStore, rows: list[dict[str, Any]], table: str = CELLS_TABLE) -> None:
    """Append cells rows in the fixed schema; a table written before ``low``/``high`` existed gets
    them, NaN in its older rows."""
    results.append_table(store, table, cells_frame(rows))


def run_cells(
    config: ExperimentConfig,
    store: VectorStore | None = None,
    include_base: bool = True,
    *,
    table: str = CELLS_TABLE,
    flush_rows: int = 256,
    flush_seconds: float = 30.0,
) -> tuple[pd.DataFrame, CellRunStats]:
    """Evaluate the all-pairs matrix of every configured task and granularity.

    See the module docstring for the design. Returns the table's rows for the configured tasks,
    granularities and test periods (old and new), sorted, and what this call did.
    """
    began = time.perf_counter()
    store = stage_store(config, store)
    from timevec.train.loop import check_store_base

    check_store_base(config, store)  # names both bases when the architecture/vocabulary or weights differ
    stats = CellRunStats()
    existing = read_cells(store, table)
    evaluated = existing[~existing["estimated"]]  # an estimated cell is not done: a full design evaluates it
    done = set(map(tuple, evaluated[CELL_KEY].itertuples(index=False, name=None)))
    stored = [key for task in config.tasks for key in store.list_vectors(task)]
    items, stats.cells_skipped = plan_cells(config, stored, done, include_base)
    stats.items = len(items)
    n_cells = sum(len(i.test_periods) for i in items)
    log.info(
        "cells: %d vectors stored for %s; %d cells to compute in %d items, %d already in %s",
        len(stored), config.tasks, n_cells, len(items), stats.cells_skipped, table,
    )
    failures: list[Failure] = []
    if items:
        failures = _compute(config, store, items, stats, table, flush_rows, flush_seconds)
        store.compact_tables()
    result = _select(read_cells(store, table), config)
    stats.seconds = time.perf_counter() - began
    log.info(
        "cells: %d computed, %d skipped in %.1f s (%d model loads, %d vector reads)",
        stats.cells_computed, stats.cells_skipped, stats.seconds, stats.model_loads, stats.vector_reads,
    )
    if stats.failures:
        message = f"{len(stats.failures)} vector(s) failed; their cells are missing:\n  " + "\n  ".join(stats.failures)
        raise failure_error(message, failures)
    return result, stats


def _order(period: str | None) -> tuple[int, int]:
    if not isinstance(period, str) or not period:
        return (0, 0)
    parsed = Period.parse(period)
    return (parsed.year, parsed.month or 0)


def _select(frame: pd.DataFrame, config: ExperimentConfig) -> pd.DataFrame:
    keep = pd.Series(False, index=frame.index)
    for granularity in config.granularities:
        keep |= (frame["granularity"] == granularity) & frame["test_period"].isin(config.period_list(granularity))
    frame = frame[keep & frame["task"].isin(config.tasks)].copy()
    frame["_base"] = frame["vector"] != BASE
    frame["_train"] = [_order(p) for p in frame["train_period"]]
    frame["_test"] = [_order(p) for p in frame["test_period"]]
    frame = frame.sort_values(["task", "granularity", "_base", "_train", "_test"])
    return frame.drop(columns=["_base", "_train", "_test"]).reset_index(drop=True)


def _compute(
    config: ExperimentConfig,
    store: VectorStore,
    items: list[WorkItem],
    stats: CellRunStats,
    table: str,
    flush_rows: int,
    flush_seconds: float,
) -> list[Failure]:
    from timevec.distributed.runtime import check_fits, check_gpus, ensure_ray

    ensure_ray(config.ray)
    check_fits(
        config.ray,
        {"CPU": config.ray.cpus_per_eval_actor, "GPU": config.ray.gpus_per_eval_actor},
        "an evaluation actor (ray.cpus_per_eval_actor, ray.gpus_per_eval_actor)",
    )
    check_gpus(config.ray, config.ray.gpus_per_eval_actor, "ray.gpus_per_eval_actor")

    def splits() -> list[Any]:
        # Runs while the actors start (process, imports, θ_pre).
        started = time.perf_counter()
        wanted: dict[SplitKey, set[str]] = {}
        for item in items:
            wanted.setdefault((item.task, item.granularity), set()).update(item.test_periods)
        prepared = prepare_eval_sets(config, wanted, store=store)["test"]
        stats.prepare_seconds = time.perf_counter() - started
        log.info("prepared %d test splits in %.1f s", sum(len(s) for s in prepared.values()), stats.prepare_seconds)
        return [prepared]

    def append(rows: list[dict[str, Any]]) -> None:
        append_cells(store, rows, table)
        log.info("cells: %d rows appended to %s", len(rows), table)

    def append_examples(rows: list[dict[str, Any]]) -> None:
        results.append_table(store, CELL_EXAMPLES_TABLE, results.cell_examples_frame(rows))

    def failed(failure: Failure) -> None:
        item = failure.item
        log.error("vector %s (%s) failed: %s", item.vector, item.granularity, failure.text)
        cells = f"{len(item.test_periods)} cell(s) missing, test periods {', '.join(item.test_periods)}"
        stats.failures.append(f"{item.vector} ({item.granularity}; {cells}): {failure.text}")

    def setup_failed(error: BaseException) -> None:
        # An actor that cannot even load θ_pre (a corrupt base shard, a wrong store): say so
        # plainly instead of with a Ray traceback.
        if isinstance(error, StoreError):
            raise StoreError(f"an evaluation actor could not load the base from {store}: {error}") from None

    outcome = drive(
        _CellActor, (config, store), config.ray, items, splits, {CELLS_TABLE: append, CELL_EXAMPLES_TABLE: append_examples},
        desc="cells", unit="vector", flush_rows=flush_rows, flush_seconds=flush_seconds,
        on_failure=failed, on_setup_error=setup_failed, collect="stats",
    )
    stats.actors = outcome.actors
    stats.flushes = outcome.flushes
    stats.retries = outcome.retries
    stats.attempts = outcome.attempts
    stats.cells_computed = outcome.rows[CELLS_TABLE]
    stats.actor_stats = outcome.collected
    for actor_stats in stats.actor_stats:
        stats.model_loads += int(actor_stats["model_loads"])
        stats.vector_reads += int(actor_stats["vector_reads"])
        stats.forward_seconds += float(actor_stats["forward_seconds"])
    if stats.actor_stats:
        # until the first actor could evaluate; actor_seconds: Σ over actors of their ready time
        stats.startup_seconds = min(float(a["ready_at"]) for a in stats.actor_stats) - outcome.created
        stats.actor_seconds = sum(outcome.finished - float(a["ready_at"]) for a in stats.actor_stats)
    return outcome.failures
