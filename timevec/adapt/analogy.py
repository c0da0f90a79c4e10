"""Task analogies: move a task model from period j to a later period k with unlabeled text of k only.

θ = θ_pre + α₁·τ_task(j) + α₂·τ_lm(k) − α₃·τ_lm(j) (Nylund et al. 2023, §5). This module is the
Ray-free half of the analogy stage: the three terms, the reference grid, which (j, k) pairs can be
searched, selecting a point on VALIDATION only, and the baselines every result is compared with
(base, τ_task(j), τ_task(j) scaled alone, the latest task vector before k, the in-period oracle).
Evaluation is injected (:data:`timevec.adapt.interpolation.EvaluateWeights`); the Ray Tune search lives in
:mod:`timevec.distributed.analogy`. Tables: :mod:`timevec.results` (``analogy``, ``analogy_best``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from timevec.adapt.interpolation import EvaluateWeights, Term, task_higher, value_of
from timevec.config import AnalogyConfig, ExperimentConfig
from timevec.data.examples import EvalSplit
from timevec.evaluate.gains import better
from timevec.periods import GRANULARITIES, Granularity, Period, latest_before
from timevec.results import analogy_frame
from timevec.weights.vectors import TimeVector

__all__ = [
    "AnalogyPoint",
    "AnalogyVectors",
    "analogy_baselines",
    "analogy_best_rows",
    "analogy_grid_frame",
    "analogy_pairs",
    "analogy_terms",
    "latest_task_period",
    "reference_grid",
    "select_best",
]


def analogy_terms(
    alpha1: float, task_j: TimeVector, alpha2: float, lm_k: TimeVector, alpha3: float, lm_j: TimeVector
) -> list[Term]:
    """θ − θ_pre = α₁·τ_task(j) + α₂·τ_lm(k) − α₃·τ_lm(j), as coefficient terms for the patcher."""
    return [(float(alpha1), task_j), (float(alpha2), lm_k), (-float(alpha3), lm_j)]


def reference_grid(cfg: AnalogyConfig) -> list[tuple[float, float, float]]:
    """Every (α₁, α₂, α₃) of the configured grid (the paper's: 9 × 6 × 6 = 324 points)."""
    return [(float(a), float(b), float(c)) for a, b, c in itertools.product(cfg.alpha1, cfg.alpha2, cfg.alpha3)]


def _analogy_granularity(config: ExperimentConfig) -> Granularity:
    """``year``, or for a study without years and months its coarsest granularity (quarter, week or day)."""
    if {"year", "month"} & set(config.granularities):
        return "year"
    return min(config.granularities, key=GRANULARITIES.index)


def analogy_pairs(config: ExperimentConfig, stored: set[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """The (j, k) pairs to search and the reasons other pairs were left out.

    j: ``analogy.source_periods`` or the first configured YEAR; k: every later configured year.
    A pair needs τ_task(j), τ_lm(j) and τ_lm(k) stored. A study of quarters, weeks or days alone (no
    years, no months) has no yearly vectors: its own periods, those of its coarsest granularity, stand in.
    """
    task = config.analogy.task
    years = config.period_list(_analogy_granularity(config))
    sources = config.analogy.source_periods or years[:1]
    pairs: list[tuple[str, str]] = []
    skipped: list[str] = []
    for j in sources:
        j = str(Period.parse(j))
        missing = [f"{t}/{j}" for t in (task, "lm") if (t, j) not in stored]
        if missing:
            skipped.append(f"source {j}: vector(s) {', '.join(missing)} not stored")
            continue
        for k in years:
            if Period.parse(k) <= Period.parse(j):
                continue
            if ("lm", k) not in stored:
                skipped.append(f"{j}→{k}: vector lm/{k} not stored")
                continue
            pairs.append((j, k))
    return pairs, skipped


@dataclass(frozen=True)
class AnalogyPoint:
    """One evaluated grid point: validation and test values of θ_pre + the analogy's terms.

    ``validation_examples``: the validation examples it was scored on (NaN: not recorded); ``stopped``:
    successive halving (``analogy.scheduler: asha``) stopped it before the whole validation split, so
    ``validation`` is a partial value that no choice may read, and ``test`` is NaN (never scored).
    """

    alpha1: float
    alpha2: float
    alpha3: float
    validation: float
    test: float
    validation_examples: float = math.nan
    stopped: bool = False


def select_best(points: Sequence[AnalogyPoint], higher: bool) -> AnalogyPoint:
    """The point with the best VALIDATION value (ties: the first in grid order) among the points scored on
    the whole validation split (a stopped point is never chosen); test never selects."""
    complete = [p for p in points if not p.stopped]
    if not complete:
        raise ValueError(f"no analogy points to select from ({len(points)} point(s), all stopped early)" if points
                         else "no analogy points to select from")
    best = complete[0]
    for point in complete[1:]:
        if better(point.validation, best.validation, higher):
            best = point
    return best


def analogy_grid_frame(
    task: str, j: str, k: str, metric: str, points: Sequence[AnalogyPoint], method: str = "analogy"
) -> pd.DataFrame:
    """The ``analogy`` table of one (j, k) pair: every point on both splits.

    ``method`` ``analogy`` (the searched grid) or ``task_j_scaled`` (the α₁·τ_task(j) points the
    baseline evaluates): both are kept so that a point chosen on one pair can be read on another.
    A stopped point (successive halving) has NaN on both splits: its partial validation value is no
    result, and every reader's choice skips NaN.
    """
    return analogy_frame(
        {"task": task, "source_period": j, "target_period": k, "method": method, "alpha1": p.alpha1,
         "alpha2": p.alpha2, "alpha3": p.alpha3, "split": split, "metric": metric,
         "value": math.nan if p.stopped else float(value), "validation_examples": float(p.validation_examples),
         "stopped": bool(p.stopped)}
        for p in points for split, value in (("validation", p.validation), ("test", p.test))
    )


@dataclass
class AnalogyVectors:
    """What one (j, k) analogy evaluates: the three terms and the task vectors of the baselines."""

    task_j: TimeVector
    lm_k: TimeVector
    lm_j: TimeVector
    latest: tuple[str, TimeVector] | None = None  # the latest stored task vector before k
    in_period: TimeVector | None = None  # τ_task(k), the oracle


def _both(evaluate_weights: EvaluateWeights, terms: Sequence[Term], validation: EvalSplit, test: EvalSplit
          ) -> tuple[float, float, str, float]:
    """Validation and test values, the metric, and the validation examples scored."""
    rows = evaluate_weights(list(terms), [validation, test])
    return value_of(rows, 0), value_of(rows, 1), rows[0]["metric"], float(rows[0].get("n_examples", math.nan))


def analogy_baselines(
    evaluate_weights: EvaluateWeights,
    task: str,
    j: str,
    k: str,
    vectors: AnalogyVectors,
    validation: EvalSplit,
    test: EvalSplit,
    alpha1_grid: Sequence[float],
) -> tuple[list[dict[str, Any]], list[AnalogyPoint]]:
    """Rows of :data:`~timevec.results.ANALOGY_BEST_COLUMNS` for every method but ``analogy`` (both
    splits each), and the scaled points.

    ``task_j_scaled`` evaluates α₁·τ_task(j) for every α₁ of the grid and keeps the best on
    validation: much of the published analogy gain comes from that scaling alone, so the analogy is
    only credited with what it adds beyond it. Every scaled point is returned too (the ``analogy``
    table keeps them) so that past-only selection can apply an α₁ chosen on another pair.
    """
    higher = task_higher(task)
    rows: list[dict[str, Any]] = []

    def add(method: str, a1: float, v: float, t: float, metric: str, vector: str, note: str = "") -> None:
        for split, value in (("validation", v), ("test", t)):
            rows.append({"task": task, "source_period": j, "target_period": k, "method": method, "alpha1": a1,
                         "alpha2": 0.0, "alpha3": 0.0, "split": split, "metric": metric, "value": float(value),
                         "higher_is_better": higher, "vector": vector, "note": note})

    v, t, metric, _ = _both(evaluate_weights, [], validation, test)
    add("base", 0.0, v, t, metric, "base")
    v, t, _, _ = _both(evaluate_weights, [(1.0, vectors.task_j)], validation, test)
    add("task_j", 1.0, v, t, metric, f"{task}/{j}")
    scaled = []
    for a in alpha1_grid:
        v, t, _, n = _both(evaluate_weights, [(float(a), vectors.task_j)], validation, test)
        scaled.append(AnalogyPoint(float(a), 0.0, 0.0, v, t, validation_examples=n))
    best = select_best(scaled, higher)
    add("task_j_scaled", best.alpha1, best.validation, best.test, metric, f"{task}/{j}")
    if vectors.latest is not None:
        period, vec = vectors.latest
        v, t, _, _ = _both(evaluate_weights, [(1.0, vec)], validation, test)
        add("latest", 1.0, v, t, metric, f"{task}/{period}", "" if period != j else "latest task vector before k is τ_task(j)")
    else:
        add("latest", math.nan, math.nan, math.nan, metric, "", "no task vector stored before k")
    if vectors.in_period is not None:
        v, t, _, _ = _both(evaluate_weights, [(1.0, vectors.in_period)], validation, test)
        add("in_period", 1.0, v, t, metric, f"{task}/{k}", "oracle: needs labelled data of k")
    else:
        add("in_period", math.nan, math.nan, math.nan, metric, "", f"{task}/{k} not stored")
    return rows, scaled


def analogy_best_rows(task: str, j: str, k: str, metric: str, points: Sequence[AnalogyPoint]) -> list[dict[str, Any]]:
    """The ``analogy`` rows of :data:`~timevec.results.ANALOGY_BEST_COLUMNS`: the best grid point by validation, both
    splits, among the points scored on the whole validation split (successive halving's stopped points are not)."""
    best = select_best(points, task_higher(task))
    stopped = sum(p.stopped for p in points)
    note = (f"best of {len(points)} points on validation" if not stopped else
            f"best of {len(points) - stopped} points scored on the whole validation split ({stopped} stopped early)")
    return [
        {"task": task, "source_period": j, "target_period": k, "method": "analogy", "alpha1": best.alpha1,
         "alpha2": best.alpha2, "alpha3": best.alpha3, "split": split, "metric": metric, "value": float(value),
         "higher_is_better": task_higher(task), "vector": f"{task}/{j} + lm/{k} - lm/{j}",
         "note": note}
        for split, value in (("validation", best.validation), ("test", best.test))
    ]


def latest_task_period(task: str, k: str, stored: set[tuple[str, str]]) -> str | None:
    """The latest period strictly before ``k`` with a stored ``task`` vector (same granularity as k).

    Strictly before: the analogy's premise is that k has no labels, so τ_task(k) is the separate
    ``in_period`` oracle, not the "latest available" baseline.
    """
    granularity = Period.parse(k).granularity
    candidates = [p for t, p in stored if t == task and Period.parse(p).granularity == granularity]
    return latest_before(k, candidates)
