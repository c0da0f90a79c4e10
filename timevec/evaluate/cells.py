"""The evaluator of cells without Ray: θ_pre loaded once, any combination of vectors on prepared splits.

One job: everything a cell needs that is not scheduling — the work items of an all-pairs run and
their planning, the tokenised test splits, and :class:`CellEvaluator` (θ_pre on one device, a
:class:`~timevec.weights.vectors.WeightPatcher` that writes θ_pre + Σ cᵢ·τᵢ in place and restores θ_pre
exactly). The Ray stages (:mod:`timevec.distributed.cells`, ``.interpolate``, ``.analogy``) wrap
it in actors and trials; tests and benchmarks use it directly. The cells table itself (its name,
schema and frame builders) is :mod:`timevec.distributed.cells`'s. No Ray import here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from timevec.config import ExperimentConfig
from timevec.data.examples import EvalSplit
from timevec.data.models import base_from_store
from timevec.evaluate.design import design_cells
from timevec.evaluate.metrics import evaluate, example_stats
from timevec.evaluate.per_example import ExampleStats
from timevec.periods import Period
from timevec.store import StoreError, VectorStore
from timevec.train.devices import pick_device
from timevec.weights.merging import MergeMethod
from timevec.weights.vectors import TimeVector, WeightPatcher

log = logging.getLogger(__name__)

BASE = "base"

SplitKey = tuple[str, str]  # (task, granularity)
Splits = dict[SplitKey, dict[str, EvalSplit]]  # (task, granularity) -> test period -> split


def require_base(store: VectorStore) -> None:
    """The evaluation stages' precondition: the store holds θ_pre (the fine-tune stage writes it)."""
    if not store.exists():
        raise StoreError(f"store {store} holds no base yet: run the fine-tune stage first")


def vector_name(task: str, period: str | None) -> str:
    """The ``vector`` column: ``"task/period"``, or ``"base"`` for θ_pre itself."""
    return BASE if period is None else f"{task}/{period}"


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
    may hold more than one study's vectors); test periods are every configured period, or under
    ``evaluation.design: band`` those of the design (:mod:`timevec.evaluate.design`; the base: every one).
    """
    items: list[WorkItem] = []
    skipped = 0
    cfg = config.evaluation
    for task in config.tasks:
        for granularity in config.granularities:
            periods = config.period_list(granularity)
            wanted = set(periods)
            designed = (None if cfg.design == "full" else
                        design_cells(periods, periods, cfg.design_band, cfg.design_fraction, config.seed))
            sources: list[str | None] = [None] if include_base else []
            sources += [p for t, p in stored if t == task and p in wanted]
            for period in sources:
                name = vector_name(task, period)
                tests = periods if designed is None or period is None else [p for p in periods if (period, p) in designed]
                missing = tuple(p for p in tests if (task, granularity, name, p) not in done)
                skipped += len(tests) - len(missing)
                if missing:
                    items.append(WorkItem(task, granularity, period, missing))
    return items, skipped


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
    forward_cpu_seconds: float = 0.0  # CPU of this process during the forward passes: independent of other load

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


class CellEvaluator:
    """θ_pre loaded once on one device; evaluates any combination of vectors on prepared splits.

    Usable without Ray (tests, and the interpolation/analogy stages' trials); the Ray actor of
    :func:`timevec.distributed.cells.run_cells` is a thin wrapper. ``splits`` maps (task, granularity) to test period to
    :class:`EvalSplit`; only :meth:`evaluate_vector`/:meth:`evaluate_base` need it.

    ``merge`` (from the config's ``merge:`` section; may be reassigned) is how every
    :meth:`evaluate_weights` call merges a combination of ≥ 2 vectors, so soups, interpolation,
    analogies and forecasts all use it; single vectors and the base are exact (:mod:`timevec.weights.merging`).
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
        self.device = torch.device(device) if device else pick_device()
        self.stats = EvaluatorStats()
        began = time.perf_counter()
        model, self.tokenizer = base_from_store(config.base, store)
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]  # transformers types .to() as a decorator
        self.patcher = WeightPatcher(self.model)
        self.merge = MergeMethod.from_config(config)
        self.stats.model_loads += 1
        self.stats.load_seconds += time.perf_counter() - began
        log.info("evaluator loaded base %s on %s in %.1f s", store.base_id, self.device, self.stats.load_seconds)
        if not self.merge.is_task_arithmetic:
            log.info("combinations of 2+ vectors are merged with %s", self.merge.label)

    # -------------------------------------------------------------- building blocks

    def evaluate_split(self, split: EvalSplit, keep_replicates: bool = False) -> dict[str, Any]:
        """The model as it is now on one split: the metric dict plus ``seconds`` (and the bootstrap
        ``replicates`` when asked: :func:`timevec.evaluate.metrics.evaluate`)."""
        began, cpu = time.perf_counter(), time.process_time()
        result = evaluate(self.model, split, self.config.evaluation, self.device, tokenizer=self.tokenizer,
                          keep_replicates=keep_replicates)
        seconds = time.perf_counter() - began
        self.stats.forward_seconds += seconds
        self.stats.forward_cpu_seconds += time.process_time() - cpu
        self.stats.cells += 1
        return {**result, "seconds": seconds}

    def evaluate_weights(
        self, combination: Sequence[tuple[float, TimeVector]], splits: Iterable[EvalSplit], keep_replicates: bool = False
    ) -> list[dict[str, Any]]:
        """θ_pre + Σ cᵢ·τᵢ (or :attr:`merge` of ≥ 2 terms) on every split, then θ_pre restored exactly (even on error).

        Rows carry ``task``, ``test_period`` and the metric columns; the caller adds what names the
        weights (vector, α, …). An empty combination evaluates θ_pre itself.
        """
        rows: list[dict[str, Any]] = []
        with self.patched(combination):
            for split in splits:
                rows.append({"task": split.task, "test_period": split.period, **self.evaluate_split(split, keep_replicates)})
        return rows

    @contextmanager
    def patched(self, combination: Sequence[tuple[float, TimeVector]]) -> Iterator[None]:
        """θ_pre + Σ cᵢ·τᵢ (or :attr:`merge` of ≥ 2 terms) in the model inside the block, θ_pre restored exactly on
        leaving it (even on error); patching and restoring count as ``patch_seconds``. An empty combination is θ_pre."""
        patched = self.patcher.applied_combination(list(combination), self.merge) if combination else nullcontext()
        began = time.perf_counter()
        with patched:
            self.stats.patch_seconds += time.perf_counter() - began
            yield
            began = time.perf_counter()  # the restore, on leaving the block
        self.stats.patch_seconds += time.perf_counter() - began

    def score_examples(self, split: EvalSplit, indices: Sequence[int]) -> ExampleStats:
        """The per-example statistics of ``split``'s examples at ``indices`` (in that order) under the model as it is
        now: one block of an evaluation in blocks (the analogy search's successive halving); forward time as for a split."""
        began, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            stats, _, _ = example_stats(self.model, split.subset(indices), self.config.evaluation, self.device, self.tokenizer)
        self.stats.forward_seconds += time.perf_counter() - began
        self.stats.forward_cpu_seconds += time.process_time() - cpu
        return stats

    def read_vector(self, task: str, period: str) -> TimeVector:
        """τ from the store (verified against its manifest and the base fingerprint), in its own
        kind: a low-rank vector keeps its factors, which the patcher adds module by module."""
        began = time.perf_counter()
        vector = self.store.get_native(task, period)
        self.stats.vector_reads += 1
        self.stats.read_seconds += time.perf_counter() - began
        return vector  # type: ignore[return-value]  # a LowRankVector serves as a TimeVector (WeightPatcher adds its factors)

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
