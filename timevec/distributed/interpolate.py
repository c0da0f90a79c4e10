"""The interpolation stage on Ray: interpolation grids, greedy time soups and missing-period patching.

For each configured task and granularity with at least two stored vectors:

- **interpolation**: τ(α) = (1−α)·τ_first + α·τ_last for every α of ``interpolation.alphas``
  (first/last: the earliest and latest stored period of that granularity), evaluated on the test
  split of EVERY configured period → ``results/interpolation.parquet``
  (:data:`timevec.results.INTERPOLATION_COLUMNS`), summarised per middle period in
  ``results/interpolation_best.parquet`` (:data:`timevec.results.INTERPOLATION_BEST_COLUMNS`, with
  the in-period and previous-vector baselines from ``cells.parquet`` when present);
- **soups and patching**, per configured period: a greedy soup of neighbouring vectors selected on
  the period's validation split, and the period's vector rebuilt from its two neighbours, each
  against base / in-period / previous / next / latest on the period's test split →
  ``results/soups.parquet`` and ``results/patching.parquet``.

Execution reuses the cell machinery: actors each hold one
:class:`~timevec.distributed.cells.CellEvaluator` (θ_pre loaded once, combinations written in
place by the WeightPatcher, θ_pre restored exactly), a bounded cache of vectors read from the
store, and the tokenised splits (put in the object store once). Work items are one α point (all its
test periods) or one period's soup + patching; ``ray.util.ActorPool`` schedules them. Rows are
appended to the store as items finish, so the stage is resumable: a re-run skips every
(task, granularity, first, last, α, test period) already in the interpolation table and every
(task, granularity, period) already in the soups table.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Union

import pandas as pd
import torch

from timevec import adapt, results, summaries
from timevec.config import ExperimentConfig
from timevec.evaluation import EvalSplit, prepare_split
from timevec.periods import Period, sort_periods
from timevec.results import INTERPOLATION_BEST_TABLE, INTERPOLATION_TABLE, PATCHING_TABLE, SOUPS_TABLE
from timevec.store import StoreError, VectorStore
from timevec.vectors import TimeVector

log = logging.getLogger(__name__)


#: (task, granularity) -> period -> split, for "test" and "validation"
SplitSets = dict[str, dict[tuple[str, str], dict[str, EvalSplit]]]
#: (task, granularity, "base" or train period, test period) -> value, from the cells table
KnownCells = dict[tuple[str, str, str, str], float]


@dataclass(frozen=True)
class PeriodItem:
    """One period's soup and patching (they share the baseline evaluations)."""

    task: str
    granularity: str
    period: str
    stored: tuple[str, ...]


Item = Union[adapt.InterpolationItem, PeriodItem]


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
        size = vector.n_params * 4
        while self._items and self._bytes + size > self._max:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.n_params * 4
        self._items[key] = vector
        self._bytes += size
        return vector


class _AdaptActor:
    """A :class:`CellEvaluator` plus a vector cache: runs interpolation points and period items."""

    def __init__(self, config: ExperimentConfig, store: VectorStore) -> None:
        from timevec.distributed.cells import CellEvaluator

        logging.basicConfig(level=logging.INFO)
        if config.ray.gpus_per_eval_actor > 0 and torch.cuda.is_available():
            device = "cuda"
        else:
            device = "cpu"
            torch.set_num_threads(config.ray.torch_threads)
        self.evaluator = CellEvaluator(config, store, device=device)
        self.cache = VectorCache(self.evaluator.read_vector)
        self._splits: SplitSets | None = None
        self._known: KnownCells = {}
        self._splits_id: str | None = None
        self.max_distance = config.interpolation.soup_max_distance

    def ready(self) -> bool:
        return True

    def run(self, item: Item, refs: list) -> tuple[Item, list[dict], list[dict], list[dict], str | None]:
        """(item, interpolation rows, soup rows, patching rows, error text): errors are returned.

        ``refs``: the object refs of the :data:`SplitSets` and of the :data:`KnownCells`, in a
        list so that Ray passes them as refs (fetched once per actor, not once per item).
        """
        try:
            if self._splits_id != refs[0].hex():
                import ray

                self._splits, self._known = ray.get(refs)
                self._splits_id = refs[0].hex()
            assert self._splits is not None
            interp, soups, patches = run_item(self.evaluator.evaluate_weights, self.cache.get, item, self._splits,
                                              self._known, self.max_distance)
            return item, interp, soups, patches, None
        except Exception as exc:  # noqa: BLE001 — reported by the driver, naming the item
            return item, [], [], [], "".join(traceback.format_exception_only(type(exc), exc)).strip()


def run_item(
    evaluate_weights: adapt.EvaluateWeights,
    get_vector: Any,
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
    rows = adapt.run_interpolation_item(
        evaluate_weights, get_vector(item.task, item.first), get_vector(item.task, item.last), item, tests
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
    if not store.has_table("cells"):
        return {}
    cells = store.read_table("cells")
    sources = cells["train_period"].where(cells["train_period"].notna(), "base").astype(str)
    keys = zip(cells["task"].astype(str), cells["granularity"].astype(str), sources, cells["test_period"].astype(str))
    return dict(zip(keys, cells["value"].astype(float)))


def _patchable(period: str, stored: tuple[str, ...]) -> bool:
    parsed = Period.parse(period)
    return str(parsed.shift(-1)) in stored and str(parsed.shift(1)) in stored


def prepare_split_sets(config: ExperimentConfig, needed: dict[tuple[str, str], set[str]]) -> SplitSets:
    """Tokenised test AND validation splits of every needed (task, granularity, period), once."""
    from timevec.corpus import load_corpus
    from timevec.distributed.cells import encoder_decoder_of
    from timevec.models import load_tokenizer

    corpus = load_corpus(config.corpus)
    tokenizer = load_tokenizer(config.base)
    encoder_decoder = encoder_decoder_of(config.base)
    out: SplitSets = {"test": {}, "validation": {}}
    for (task, granularity), periods in needed.items():
        for name in ("test", "validation"):
            splits: dict[str, EvalSplit] = {}
            for period in sort_periods(periods):
                split = prepare_split(task, corpus, period, tokenizer, encoder_decoder, config.evaluation, split=name)
                if split.n_examples == 0:
                    log.warning("no %s %s examples in %s", task, name, period)
                    continue
                splits[period] = split
            out[name][(task, granularity)] = splits
    return out


# ----------------------------------------------------------------------------- the driver


def run_interpolation(config: ExperimentConfig, store: VectorStore | None = None) -> pd.DataFrame:
    """Interpolation, soups and patching for every configured task and granularity.

    Returns the interpolation table's rows for the configured tasks and granularities (old and
    new). Writes ``interpolation``, ``interpolation_best``, ``soups`` and ``patching`` tables.
    """
    began = time.perf_counter()
    store = store or VectorStore.from_config(config.store)
    if not store.exists():
        raise StoreError(f"store {store} holds no base yet: run the fine-tune stage first")
    items, needed, notes = plan(config, store)
    for note in notes:
        log.warning("interpolation: %s", note)
    n_points = sum(1 for i in items if isinstance(i, adapt.InterpolationItem))
    log.info("interpolation: %d α points and %d soup/patch periods to evaluate", n_points, len(items) - n_points)
    if items:
        _compute(config, store, items, needed)
    table = store.read_table(INTERPOLATION_TABLE) if store.has_table(INTERPOLATION_TABLE) else results.interpolation_frame([])
    cells = store.read_table("cells") if store.has_table("cells") else None
    store.write_table(INTERPOLATION_BEST_TABLE, summaries.interpolation_best(table, cells))
    table = table[table["task"].isin(config.tasks) & table["granularity"].isin(config.granularities)]
    log.info("interpolation stage done in %.1f s", time.perf_counter() - began)
    return table.reset_index(drop=True)


def _compute(
    config: ExperimentConfig, store: VectorStore, items: list[Item], needed: dict[tuple[str, str], set[str]]
) -> None:
    import ray
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    from timevec.distributed.runtime import ensure_ray

    ensure_ray(config.ray)
    actor_cls = ray.remote(_AdaptActor).options(
        num_cpus=config.ray.cpus_per_eval_actor,
        num_gpus=config.ray.gpus_per_eval_actor,
        max_restarts=config.ray.max_failures,
        max_task_retries=config.ray.max_failures,
    )
    # Actors load θ_pre while the driver tokenises.
    actors = [actor_cls.remote(config, store) for _ in range(min(config.ray.eval_actors, len(items)))]
    buffers: dict[str, list[dict]] = {INTERPOLATION_TABLE: [], SOUPS_TABLE: [], PATCHING_TABLE: []}
    frames = {INTERPOLATION_TABLE: results.interpolation_frame, SOUPS_TABLE: results.soup_frame,
              PATCHING_TABLE: results.patching_frame}
    failures: list[str] = []
    last_flush = time.perf_counter()

    def flush() -> None:
        nonlocal last_flush
        for name, rows in buffers.items():
            if rows:
                store.append_table(name, frames[name](rows))
                rows.clear()
        last_flush = time.perf_counter()

    try:
        refs = [ray.put(prepare_split_sets(config, needed)), ray.put(known_cells(store))]
        pool = ActorPool(actors)
        # Period items are the long ones (a soup is many evaluations): start them first.
        for item in sorted(items, key=lambda i: not isinstance(i, PeriodItem)):
            pool.submit(lambda actor, value: actor.run.remote(value, refs), item)
        with tqdm(total=len(items), desc="interpolation", unit="item", disable=None) as progress:
            while pool.has_next():
                item, interp, soups, patches, error = pool.get_next_unordered()
                progress.update(1)
                if error is not None:
                    log.error("%s failed: %s", _label(item), error)
                    failures.append(f"{_label(item)}: {error}")
                    continue
                buffers[INTERPOLATION_TABLE].extend(interp)
                buffers[SOUPS_TABLE].extend(soups)
                buffers[PATCHING_TABLE].extend(patches)
                if time.perf_counter() - last_flush >= 30.0 or sum(map(len, buffers.values())) >= 512:
                    flush()
        flush()
    finally:
        flush()  # whatever finished before an error is kept
        for actor in actors:
            ray.kill(actor)
    if failures:
        message = f"{len(failures)} interpolation item(s) failed:\n  " + "\n  ".join(failures)
        if any("StoreError" in f or "VectorError" in f for f in failures):
            raise StoreError(message)
        raise RuntimeError(message)
