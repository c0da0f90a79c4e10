"""One table comparing the merge methods with plain task arithmetic on a store's vectors.

For each configured (task, granularity) with at least two stored vectors of configured periods, two
combinations are evaluated under every merge method (:mod:`timevec.weights.merging`) on the test split of
every configured period:

- ``uniform_soup``: Σ (1/n)·τ_p over every stored vector of the task and granularity;
- ``midpoint``: ½·τ_first + ½·τ_last (the interpolation point α = ½, first/last as in
  :func:`timevec.adapt.interpolation.interpolation_ends`).

Each row's ``gain_vs_task_arithmetic`` is :func:`timevec.evaluate.gains.gain` against task arithmetic on the
same combination and period (positive: the method is better), on the examples both scored
(:func:`timevec.evaluate.per_example.on_common_prefix`: under ``evaluation.target_halfwidth``). Table name and columns:
:data:`timevec.results.MERGE_METHODS_TABLE`, :data:`~timevec.results.MERGE_METHODS_COLUMNS`. One
:class:`~timevec.evaluate.cells.CellEvaluator` holds θ_pre throughout (its ``merge`` is switched per method
and put back); each vector is read once. Ray-free; ``bench/merge_methods.py`` prints and writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from timevec.adapt.interpolation import Term, interpolation_ends
from timevec.config import ExperimentConfig
from timevec.data.examples import prepare_eval_sets
from timevec.evaluate.cells import CellEvaluator, Splits
from timevec.evaluate.gains import gain
from timevec.evaluate.per_example import on_common_prefix
from timevec.periods import Period, sort_periods
from timevec.results import merge_methods_frame
from timevec.store import VectorStore
from timevec.weights.merging import METHODS, MergeMethod
from timevec.weights.vectors import TimeVector

log = logging.getLogger(__name__)

__all__ = ["COMBINATIONS", "compared_methods", "comparison_terms", "merge_comparison", "merge_methods_table"]

COMBINATIONS = ("uniform_soup", "midpoint")


def compared_methods(config: ExperimentConfig) -> list[MergeMethod]:
    """Task arithmetic, then every other method with the config's density, sign election and seed."""
    configured = MergeMethod.from_config(config)
    return [MergeMethod(name, configured.density, configured.majority_sign_method, configured.seed) for name in METHODS]


def comparison_terms(vectors: dict[str, TimeVector]) -> dict[str, list[Term]]:
    """The two combinations of the table over ``period -> τ`` (at least two periods)."""
    periods = sort_periods(vectors)
    first, last = interpolation_ends(periods)
    coef = 1.0 / len(periods)
    return {
        "uniform_soup": [(coef, vectors[p]) for p in periods],
        "midpoint": [(0.5, vectors[first]), (0.5, vectors[last])],
    }


def merge_comparison(
    evaluator: CellEvaluator,
    config: ExperimentConfig,
    tests: Splits,
    stored: Sequence[tuple[str, str]],
    methods: Sequence[MergeMethod] | None = None,
) -> pd.DataFrame:
    """The comparison table over prepared test splits ``(task, granularity) -> period -> split``.

    ``methods`` default to :func:`compared_methods`; task arithmetic is added when absent (it is
    every row's baseline). A (task, granularity) with fewer than two stored vectors is skipped with
    a warning.
    """
    methods = list(methods) if methods is not None else compared_methods(config)
    if not any(m.is_task_arithmetic for m in methods):
        methods.insert(0, MergeMethod())
    rows: list[dict[str, Any]] = []
    saved = evaluator.merge
    try:
        for (task, granularity), by_period in tests.items():
            wanted = set(config.period_list(granularity))  # type: ignore[arg-type]
            periods = [p for t, p in stored if t == task and p in wanted and Period.parse(p).granularity == granularity]
            if len(periods) < 2:
                log.warning("merge comparison: %s/%s has %d stored vector(s), needs 2", task, granularity, len(periods))
                continue
            vectors = {p: evaluator.read_vector(task, p) for p in periods}
            splits = list(by_period.values())
            for combination, terms in comparison_terms(vectors).items():
                for method in methods:
                    evaluator.merge = method
                    for result in evaluator.evaluate_weights(terms, splits):
                        rows.append({
                            "task": task, "granularity": granularity, "combination": combination, "method": method.label,
                            "period": str(result["test_period"]), "metric": result["metric"], "value": float(result["value"]),
                            "higher": bool(result["higher_is_better"]), "baseline": method.is_task_arithmetic,
                            "evaluated": result,
                        })
                log.info("merge comparison: %s/%s %s over %s done", task, granularity, combination, ",".join(sort_periods(periods)))
            del vectors
    finally:
        evaluator.merge = saved
    reference = {(r["task"], r["granularity"], r["combination"], r["period"]): r["evaluated"] for r in rows if r["baseline"]}
    for r in rows:
        # on the examples both scored (evaluation.target_halfwidth; with it off, on every example)
        mine, theirs = on_common_prefix([r["evaluated"], reference[(r["task"], r["granularity"], r["combination"], r["period"])]])
        r["gain_vs_task_arithmetic"] = gain(mine["value"], theirs["value"], r["higher"])
    return merge_methods_frame(rows)


def merge_methods_table(
    config: ExperimentConfig,
    store: VectorStore | None = None,
    methods: Sequence[MergeMethod] | None = None,
    device: str | None = None,
) -> pd.DataFrame:
    """Load θ_pre from the store, tokenise every configured test split, build the table (not written)."""
    store = store or VectorStore.from_config(config.store)
    evaluator = CellEvaluator(config, store, device=device)
    tests = prepare_eval_sets(config, store=store, tokenizer=evaluator.tokenizer)["test"]
    return merge_comparison(evaluator, config, tests, store.list_vectors(), methods)
