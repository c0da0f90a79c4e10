"""The all-pairs cell matrix on Ray: evaluation actors that hold the base once.

A cell is (weights, test split) → metric (DESIGN §1). For each task and granularity the matrix is
every stored vector of that granularity's periods × every test period, plus the base itself as a
row (``vector="base"``, ``train_period=None``).

Design, and why:

- **Actors, not tasks.** Loading a model is the expensive, repeated part of a naive loop (build the
  architecture, read θ_pre, move it to the device). Each evaluation actor loads θ_pre ONCE
  (:func:`timevec.models.base_from_store`) and keeps a :class:`~timevec.vectors.WeightPatcher`; per
  vector it reads τ from the store, writes θ_pre + τ into the live model in place, evaluates EVERY
  test split of that granularity, and restores θ_pre bit for bit. Model loads are one per actor,
  vector reads one per vector, instead of one of each per cell.
- **``ray.util.ActorPool`` rather than Ray Data ``map_batches``.** The unit of work is coarse (one
  vector × M splits, seconds to minutes) and there are only N of them; the actor state is a whole
  model; and the driver must see each finished vector's rows at once to stream them into the
  store and to resume. ActorPool gives exactly that — a fixed number of actors with explicit
  resources, Ray's scheduling, results as they complete — without Ray Data's block
  formatting, autoscaling actor pool and Arrow round trip of what are only a few rows per item.
- **Splits are tokenised once** on the driver (:func:`timevec.evaluation.prepare_split`) and put
  in Ray's object store once; each actor receives the reference in its constructor, so every actor
  deserialises them once, not per cell.
- **Streaming and resumption.** Rows are appended to ``results/cells.parquet`` in batches (by row
  count or elapsed time), so a crash loses at most one batch; a re-run reads the table and submits
  only the (vector, test period) cells that are missing, keyed by
  ``(task, granularity, vector, test_period)``. Delete rows (or the table) to recompute them.
- **Failures.** An actor that dies is restarted by Ray and its item retried
  (``max_restarts``/``max_task_retries``). An error inside an item (a corrupt shard, say) is
  returned, not raised, so the other vectors finish and are stored; the run then fails naming
  every failed vector.

Cells table schema (``results/cells.parquet``; other stages read it): ``task`` str,
``granularity`` str (year|month), ``vector`` str (``"lm/2014"`` or ``"base"``), ``train_period``
str|None, ``test_period`` str, ``metric`` str (perplexity|macro_f1|rougeL), ``value`` float,
``higher_is_better`` bool, ``n_examples`` int, ``n_tokens`` int, ``seconds`` float (wall time of
that cell's forward passes and metric).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pandas as pd
import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase

from timevec.config import BaseConfig, ExperimentConfig
from timevec.corpus import Corpus, load_corpus
from timevec.evaluation import EvalSplit, evaluate, prepare_split
from timevec.models import base_from_store, load_tokenizer
from timevec.periods import Period
from timevec.store import StoreError, VectorStore
from timevec.vectors import TimeVector, WeightPatcher

log = logging.getLogger(__name__)

CELLS_TABLE = "cells"
CELL_KEY = ["task", "granularity", "vector", "test_period"]
CELLS_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("granularity", pa.string()),
        ("vector", pa.string()),
        ("train_period", pa.string()),
        ("test_period", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("higher_is_better", pa.bool_()),
        ("n_examples", pa.int64()),
        ("n_tokens", pa.int64()),
        ("seconds", pa.float64()),
    ]
)
COLUMNS = CELLS_SCHEMA.names
BASE = "base"

SplitKey = tuple[str, str]  # (task, granularity)
Splits = dict[SplitKey, dict[str, EvalSplit]]  # (task, granularity) -> test period -> split


def vector_name(task: str, period: str | None) -> str:
    """The ``vector`` column: ``"task/period"``, or ``"base"`` for θ_pre itself."""
    return BASE if period is None else f"{task}/{period}"


def cells_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with exactly the cells columns, in order and with their dtypes."""
    frame = pd.DataFrame(list(rows), columns=COLUMNS)
    return frame.astype(
        {"value": "float64", "higher_is_better": "bool", "n_examples": "int64", "n_tokens": "int64", "seconds": "float64"}
    )


def cells_table(frame: pd.DataFrame) -> pa.Table:
    """The fixed Arrow schema, so a first batch of base rows (train_period all None) is not
    written as a null-typed column that later appends could not extend."""
    return pa.Table.from_pandas(frame[COLUMNS], schema=CELLS_SCHEMA, preserve_index=False)


# ----------------------------------------------------------------------------- work items


@dataclass(frozen=True)
class WorkItem:
    """One vector (or the base) of one (task, granularity) and the test periods still to do."""

    task: str
    granularity: str
    period: str | None  # None: the base
    test_periods: tuple[str, ...]

    @property
    def vector(self) -> str:
        return vector_name(self.task, self.period)


def plan_cells(
    config: ExperimentConfig, stored: Sequence[tuple[str, str]], done: set[tuple[str, str, str, str]], include_base: bool
) -> tuple[list[WorkItem], int]:
    """The work of a run: one item per (vector, missing test periods); returns (items, cells skipped).

    Vectors are the stored ones whose period is a configured period of that granularity (a store
    may hold more than one study's vectors); test periods are every configured period.
    """
    items: list[WorkItem] = []
    skipped = 0
    for task in config.tasks:
        for granularity in config.granularities:
            periods = config.period_list(granularity)
            wanted = set(periods)
            sources: list[str | None] = [None] if include_base else []
            sources += [p for t, p in stored if t == task and p in wanted]
            for period in sources:
                name = vector_name(task, period)
                missing = tuple(p for p in periods if (task, granularity, name, p) not in done)
                skipped += len(periods) - len(missing)
                if missing:
                    items.append(WorkItem(task, granularity, period, missing))
    return items, skipped


def encoder_decoder_of(base: BaseConfig) -> bool:
    """Whether the base is encoder-decoder, without building it (a hub t5-3b would cost GBs)."""
    from timevec.models import base_is_encoder_decoder

    return base_is_encoder_decoder(base)


def prepare_splits(
    config: ExperimentConfig,
    wanted: dict[SplitKey, set[str]] | None = None,
    corpus: Corpus | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Splits:
    """Tokenise the test split of every (task, granularity, period) needed, once.

    ``wanted`` limits it to the periods a run still has to evaluate (default: all configured).
    Empty splits are left out with a warning: they have no metric.
    """
    corpus = corpus if corpus is not None else load_corpus(config.corpus)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.base)
    encoder_decoder = encoder_decoder_of(config.base)
    if wanted is None:
        wanted = {(t, g): set(config.period_list(g)) for t in config.tasks for g in config.granularities}
    splits: Splits = {}
    for (task, granularity), periods in wanted.items():
        out: dict[str, EvalSplit] = {}
        for period in sorted(periods, key=Period.parse):
            split = prepare_split(task, corpus, period, tokenizer, encoder_decoder, config.evaluation)
            if split.n_examples == 0:
                log.warning("no %s test examples in %s: its cells are left out", task, period)
                continue
            out[period] = split
        splits[(task, granularity)] = out
    return splits


# ----------------------------------------------------------------------------- the evaluator


@dataclass
class EvaluatorStats:
    """What one evaluator did: the bench reads ``model_loads`` (goal: 1 per actor)."""

    model_loads: int = 0
    vector_reads: int = 0
    cells: int = 0
    load_seconds: float = 0.0
    read_seconds: float = 0.0
    patch_seconds: float = 0.0
    forward_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class CellEvaluator:
    """θ_pre loaded once on one device; evaluates any combination of vectors on prepared splits.

    Usable without Ray (tests, and the interpolation/analogy stages' trials); the Ray actor of
    :func:`run_cells` is a thin wrapper. ``splits`` maps (task, granularity) to test period to
    :class:`EvalSplit`; only :meth:`evaluate_vector`/:meth:`evaluate_base` need it.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        store: VectorStore,
        splits: Splits | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.splits: Splits = splits or {}
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.stats = EvaluatorStats()
        began = time.perf_counter()
        model, self.tokenizer = base_from_store(config.base, store)
        self.model = model.to(self.device).eval()
        self.patcher = WeightPatcher(self.model)
        self.stats.model_loads += 1
        self.stats.load_seconds += time.perf_counter() - began
        log.info("evaluator loaded base %s on %s in %.1f s", store.base_id, self.device, self.stats.load_seconds)

    # -------------------------------------------------------------- building blocks

    def evaluate_split(self, split: EvalSplit) -> dict[str, Any]:
        """The model as it is now on one split: the metric dict plus ``seconds``."""
        began = time.perf_counter()
        result = evaluate(self.model, split, self.config.evaluation, self.device, tokenizer=self.tokenizer)
        seconds = time.perf_counter() - began
        self.stats.forward_seconds += seconds
        self.stats.cells += 1
        return {**result, "seconds": seconds}

    def evaluate_weights(
        self, combination: Sequence[tuple[float, TimeVector]], splits: Iterable[EvalSplit]
    ) -> list[dict[str, Any]]:
        """θ_pre + Σ cᵢ·τᵢ on every split, then θ_pre restored exactly (even on error).

        Rows carry ``task``, ``test_period`` and the metric columns; the caller adds what names the
        weights (vector, α, …). An empty combination evaluates θ_pre itself.
        """
        splits = list(splits)
        rows: list[dict[str, Any]] = []
        try:
            began = time.perf_counter()
            if combination:
                self.patcher.apply_combination(list(combination))
            self.stats.patch_seconds += time.perf_counter() - began
            for split in splits:
                rows.append({"task": split.task, "test_period": split.period, **self.evaluate_split(split)})
        finally:
            began = time.perf_counter()
            if combination:
                self.patcher.restore()
            self.stats.patch_seconds += time.perf_counter() - began
        return rows

    def read_vector(self, task: str, period: str) -> TimeVector:
        """τ from the store (verified against its manifest and the base fingerprint)."""
        began = time.perf_counter()
        vector = self.store.get_vector(task, period)
        self.stats.vector_reads += 1
        self.stats.read_seconds += time.perf_counter() - began
        return vector

    def _splits_for(self, task: str, granularity: str, test_periods: Sequence[str] | None) -> list[EvalSplit]:
        try:
            available = self.splits[(task, granularity)]
        except KeyError:
            raise KeyError(f"no test splits prepared for task {task!r}, granularity {granularity!r}") from None
        periods = list(available) if test_periods is None else list(test_periods)
        return [available[p] for p in periods if p in available]

    @staticmethod
    def _cell_rows(rows: list[dict[str, Any]], task: str, granularity: str, period: str | None) -> list[dict[str, Any]]:
        return [
            {**row, "task": task, "granularity": granularity, "vector": vector_name(task, period), "train_period": period}
            for row in rows
        ]

    # -------------------------------------------------------------- the matrix

    def evaluate_vector(self, key: tuple[str, str] | str, test_periods: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Cells rows of one stored vector on every test split of its granularity (or those given).

        ``key`` is ``(task, period)`` or ``"task/period"``. The vector is read once, applied once,
        and every split evaluated before θ_pre is restored.
        """
        task, period = key.split("/", 1) if isinstance(key, str) else key
        granularity = Period.parse(period).granularity
        splits = self._splits_for(task, granularity, test_periods)
        vector = self.read_vector(task, period)
        return self._cell_rows(self.evaluate_weights([(1.0, vector)], splits), task, granularity, period)

    def evaluate_base(self, task: str, granularity: str, test_periods: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Cells rows of θ_pre itself (``vector="base"``) on the test splits of one granularity."""
        splits = self._splits_for(task, granularity, test_periods)
        return self._cell_rows(self.evaluate_weights([], splits), task, granularity, None)

    def evaluate_item(self, item: WorkItem) -> list[dict[str, Any]]:
        if item.period is None:
            return self.evaluate_base(item.task, item.granularity, item.test_periods)
        if Period.parse(item.period).granularity != item.granularity:
            raise ValueError(f"vector {item.vector} is not of granularity {item.granularity}")
        return self.evaluate_vector((item.task, item.period), item.test_periods)


class _CellActor:
    """The Ray actor: a :class:`CellEvaluator` on the actor's device with its own torch threads.

    The splits arrive as an object reference wrapped in a list (so Ray does not resolve it per
    call) and are fetched once per actor process: the actor can start loading θ_pre while the
    driver is still tokenising, and an actor that Ray restarts after a crash fetches them again
    instead of running without them.
    """

    def __init__(self, config: ExperimentConfig, store: VectorStore) -> None:
        logging.basicConfig(level=logging.INFO)
        torch.set_num_threads(config.ray.torch_threads)
        device = "cuda" if config.ray.gpus_per_eval_actor > 0 and torch.cuda.is_available() else "cpu"
        self.evaluator = CellEvaluator(config, store, device=device)
        self._splits_id: str | None = None
        self._ready_at = time.time()  # wall clock: the driver measures actor start-up with it

    def ready(self) -> bool:
        return True

    def run(self, item: WorkItem, splits_ref: list) -> tuple[WorkItem, list[dict[str, Any]], str | None, str | None]:
        """(item, rows, error type, error text): errors are returned so other vectors go on."""
        try:
            ref = splits_ref[0]
            if self._splits_id != ref.hex():
                import ray

                self.evaluator.splits = ray.get(ref)
                self._splits_id = ref.hex()
            return item, self.evaluator.evaluate_item(item), None, None
        except Exception as exc:  # noqa: BLE001 — reported by the driver, naming the vector
            return item, [], type(exc).__name__, "".join(traceback.format_exception_only(type(exc), exc)).strip()

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
    """The cells table (empty with the right columns when absent), one row per key (last wins)."""
    if not store.has_table(table):
        return cells_frame([])
    frame = store.read_table(table)
    return frame.drop_duplicates(CELL_KEY, keep="last").reset_index(drop=True)


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
    store = store or VectorStore.from_config(config.store)
    if not store.exists():
        raise StoreError(f"store {store} holds no base yet: run the fine-tune stage first")
    from timevec.training import check_store_base

    check_store_base(config, store)  # names both bases when the architecture/vocabulary or weights differ
    stats = CellRunStats()
    existing = read_cells(store, table)
    done = set(map(tuple, existing[CELL_KEY].itertuples(index=False, name=None)))
    stored = [key for task in config.tasks for key in store.list_vectors(task)]
    items, stats.cells_skipped = plan_cells(config, stored, done, include_base)
    stats.items = len(items)
    n_cells = sum(len(i.test_periods) for i in items)
    log.info(
        "cells: %d vectors stored for %s; %d cells to compute in %d items, %d already in %s",
        len(stored), config.tasks, n_cells, len(items), stats.cells_skipped, table,
    )
    if items:
        _compute(config, store, items, stats, table, flush_rows, flush_seconds)
    result = _select(read_cells(store, table), config)
    stats.seconds = time.perf_counter() - began
    log.info(
        "cells: %d computed, %d skipped in %.1f s (%d model loads, %d vector reads)",
        stats.cells_computed, stats.cells_skipped, stats.seconds, stats.model_loads, stats.vector_reads,
    )
    if stats.failures:
        message = f"{len(stats.failures)} vector(s) failed; their cells are missing:\n  " + "\n  ".join(stats.failures)
        if any("StoreError" in f or "VectorError" in f for f in stats.failures):
            raise StoreError(message)
        raise RuntimeError(message)
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
) -> None:
    import ray
    from ray.util import ActorPool

    from timevec.distributed.runtime import check_fits, ensure_ray

    ensure_ray(config.ray)
    check_fits(
        config.ray,
        {"CPU": config.ray.cpus_per_eval_actor, "GPU": config.ray.gpus_per_eval_actor},
        "an evaluation actor (ray.cpus_per_eval_actor, ray.gpus_per_eval_actor)",
    )
    n_actors = min(config.ray.eval_actors, len(items))
    actor_cls = ray.remote(_CellActor).options(
        num_cpus=config.ray.cpus_per_eval_actor,
        num_gpus=config.ray.gpus_per_eval_actor,
        max_restarts=config.ray.max_failures,
        max_task_retries=config.ray.max_failures,
    )
    # Actors start (process, imports, θ_pre) while the driver tokenises the test splits.
    created = time.time()
    actors = [actor_cls.remote(config, store) for _ in range(n_actors)]
    stats.actors = n_actors
    buffer: list[dict[str, Any]] = []
    last_flush = time.perf_counter()

    def flush() -> None:
        nonlocal last_flush
        if buffer:
            store.append_table(table, cells_table(cells_frame(buffer)))
            stats.flushes += 1
            log.info("cells: %d rows appended to %s", len(buffer), table)
            buffer.clear()
        last_flush = time.perf_counter()

    try:
        started = time.perf_counter()
        wanted: dict[SplitKey, set[str]] = {}
        for item in items:
            wanted.setdefault((item.task, item.granularity), set()).update(item.test_periods)
        splits = prepare_splits(config, wanted)
        stats.prepare_seconds = time.perf_counter() - started
        log.info("prepared %d test splits in %.1f s", sum(len(s) for s in splits.values()), stats.prepare_seconds)
        splits_ref = [ray.put(splits)]
        pool = ActorPool(actors)
        for item in items:
            pool.submit(lambda actor, value: actor.run.remote(value, splits_ref), item)

        from tqdm.auto import tqdm

        with tqdm(total=len(items), desc="cells", unit="vector", disable=None) as progress:
            while pool.has_next():
                try:
                    item, rows, _, error = pool.get_next_unordered()
                except ray.exceptions.RayActorError as exc:
                    # An actor that cannot even load θ_pre (a corrupt base shard, a wrong store)
                    # fails in its constructor; say so plainly instead of with a Ray traceback.
                    cause = [line for line in str(exc).splitlines() if "StoreError:" in line]
                    if cause:
                        reason = cause[-1].split("StoreError:", 1)[1].strip()
                        raise StoreError(f"an evaluation actor could not load the base from {store}: {reason}") from None
                    raise
                progress.update(1)
                if error is not None:
                    log.error("vector %s (%s) failed: %s", item.vector, item.granularity, error)
                    stats.failures.append(f"{item.vector} ({item.granularity}): {error}")
                    continue
                buffer.extend(rows)
                stats.cells_computed += len(rows)
                if len(buffer) >= flush_rows or time.perf_counter() - last_flush >= flush_seconds:
                    flush()
        flush()
        finished = time.time()
        stats.actor_stats = ray.get([a.stats.remote() for a in actors])
    finally:
        flush()  # whatever finished before an error is kept
        for actor in actors:
            ray.kill(actor)
    for actor_stats in stats.actor_stats:
        stats.model_loads += int(actor_stats["model_loads"])
        stats.vector_reads += int(actor_stats["vector_reads"])
        stats.forward_seconds += float(actor_stats["forward_seconds"])
    if stats.actor_stats:
        # until the first actor could evaluate; actor_seconds: Σ over actors of their ready time
        stats.startup_seconds = min(float(a["ready_at"]) for a in stats.actor_stats) - created
        stats.actor_seconds = sum(finished - float(a["ready_at"]) for a in stats.actor_stats)
