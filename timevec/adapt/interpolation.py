"""Adapting without training: interpolation, time soups and missing-period patching.

Every method here is weight arithmetic on stored time vectors followed by an evaluation; nothing
is trained. The module is the Ray-free half of the adaptation stages: it decides WHAT to evaluate
(grids, neighbour orders, the analogy's three terms), runs greedy procedures against any
evaluation callable, and builds the documented result tables. The Ray half
(:mod:`timevec.distributed.interpolate`, :mod:`timevec.distributed.analogy`) only schedules these
calls on actors and Tune trials. Task analogies, built on the same injected evaluation, are
:mod:`timevec.adapt.analogy`; the tables' schemas and builders are :mod:`timevec.results`, and the
best-α summary is :func:`timevec.adapt.summaries.interpolation_best`.

Design choices, and why:

- **Evaluation is injected.** Functions take ``evaluate_weights(terms, splits) -> rows``, the
  signature of :meth:`timevec.evaluate.cells.CellEvaluator.evaluate_weights`: θ_pre + Σ cᵢ·τᵢ is
  written into a live model IN PLACE (:class:`~timevec.weights.vectors.WeightPatcher`), every split is
  evaluated, and θ_pre is restored. No combined vector and no model copy is ever materialised, so
  the same code serves a 189 K-parameter test model and T5-3b.
- **Combinations are coefficient lists**, not vectors: ``interpolation_terms`` at α = 0 is
  ``[(1.0, τ_first), (0.0, τ_last)]``, and the patcher skips zero coefficients, so the α = 0 and
  α = 1 points are bit-identical to the end vectors' own cells (the tests check this exactly).
- **Baselines are part of every table** (ARCHITECTURE §1): the base, the in-period vector (oracle), the
  LATEST vector, and for analogies the task vector scaled alone. arXiv 2509.23487 found that
  interpolation often fails to beat the latest model, so gains against it are reported as such.
- **Long tables with a ``method`` column** for soups, patching and analogy baselines: one schema
  whatever the number of baselines, easy to pivot in the report.

"latest" and "previous" mean: ``latest`` is the latest stored vector of the task and granularity
(what a practitioner deploys today); ``previous`` is the latest stored vector strictly before the
evaluated period (what was deployable when that period began).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from timevec.data.examples import EvalSplit
from timevec.evaluate.gains import better, gain
from timevec.evaluate.metrics import METRICS
from timevec.evaluate.per_example import on_common_prefix
from timevec.periods import Period, latest_before, sort_periods
from timevec.results import INTERPOLATION_KEY, alpha_key, with_split
from timevec.weights.vectors import TimeVector

log = logging.getLogger(__name__)

Term = tuple[float, TimeVector]
#: ``evaluate_weights(terms, splits) -> rows``: θ_pre + Σ cᵢ·τᵢ on each split (rows in split order,
#: each with at least ``metric``, ``value``, ``higher_is_better``), θ_pre restored afterwards.
EvaluateWeights = Callable[[Sequence[Term], Sequence[EvalSplit]], list[dict[str, Any]]]
#: ``load_vector(period) -> τ`` for one task (callers bind the task and cache as they see fit).
LoadVector = Callable[[str], TimeVector]
#: τ of (task, period) as the store holds it (a worker's vector reader)
GetVector = Callable[[str, str], TimeVector]
#: (source: "base" or a train period, test period) -> the cell's value, or None when not computed
KnownValue = Callable[[str, str], "float | None"]

__all__ = [
    "EvaluateWeights",
    "InterpolationItem",
    "KnownValue",
    "LoadVector",
    "PatchResult",
    "PeriodBaselines",
    "SoupResult",
    "Term",
    "evaluate_period",
    "greedy_soup",
    "interpolation_done",
    "interpolation_ends",
    "interpolation_rows",
    "interpolation_terms",
    "neighbour_order",
    "patch_missing",
    "patching_rows",
    "period_baselines",
    "plan_interpolation",
    "run_interpolation_item",
    "soup_rows",
    "task_higher",
    "task_metric",
    "value_of",
]


# ----------------------------------------------------------------------------- helpers


def task_higher(task: str) -> bool:
    """Whether the task's metric is better when higher (macro-F1, ROUGE-L) or lower (perplexity)."""
    return METRICS[task][1]


def task_metric(task: str) -> str:
    return METRICS[task][0]


def takes_replicates(evaluate_weights: EvaluateWeights) -> bool:
    """Whether an evaluator can return the bootstrap replicates of each row (``keep_replicates=True``,
    :meth:`timevec.evaluate.cells.CellEvaluator.evaluate_weights`): what paired intervals of a gain need."""
    try:
        return "keep_replicates" in inspect.signature(evaluate_weights).parameters
    except (TypeError, ValueError):
        return False


def value_of(rows: list[dict[str, Any]], i: int = 0) -> float:
    """The metric value of the ``i``-th row an :data:`EvaluateWeights` call returned."""
    return float(rows[i]["value"])


def _members(periods: Iterable[str]) -> str:
    return ",".join(sort_periods(periods))


# ----------------------------------------------------------------------------- interpolation


@dataclass(frozen=True)
class InterpolationItem:
    """One point τ(α) = (1−α)·τ_first + α·τ_last of one (task, granularity), and the test periods
    still to evaluate it on."""

    task: str
    granularity: str
    first: str
    last: str
    alpha: float
    test_periods: tuple[str, ...]
    #: middle periods whose VALIDATION split is still to evaluate (where α-selection protocols choose α)
    validation_periods: tuple[str, ...] = ()


def interpolation_ends(stored: Sequence[str]) -> tuple[str, str]:
    """The earliest and latest stored period (the two vectors interpolated between)."""
    ordered = sort_periods(stored)
    if len(ordered) < 2:
        raise ValueError(f"interpolation needs two stored periods, got {ordered}")
    return ordered[0], ordered[-1]


def interpolation_terms(tau_first: TimeVector, tau_last: TimeVector, alpha: float) -> list[Term]:
    """``[(1−α, τ_first), (α, τ_last)]``: α is the weight of the LATER vector (ARCHITECTURE §1).

    At α = 0 and α = 1 one coefficient is exactly 0.0 and the other exactly 1.0, so the patched
    weights are bit-identical to base + τ_first and base + τ_last.
    """
    alpha = float(alpha)
    return [(1.0 - alpha, tau_first), (alpha, tau_last)]


def plan_interpolation(
    task: str,
    granularity: str,
    stored: Sequence[str],
    test_periods: Sequence[str],
    alphas: Sequence[float],
    done: set[tuple] | None = None,
) -> list[InterpolationItem]:
    """The points still to evaluate (resumable: keys in ``done`` are skipped).

    Every α is evaluated on the TEST split of every period and on the VALIDATION split of the
    middle periods (strictly between the ends: where the selection protocols of
    :mod:`timevec.adapt.selection` choose α from labels they are allowed to see). ``done`` holds
    :data:`~timevec.results.INTERPOLATION_KEY` tuples already in the table. Nothing is planned when
    fewer than two vectors are stored.
    """
    if len(set(stored)) < 2:
        return []
    first, last = interpolation_ends(stored)
    lo, hi = Period.parse(first), Period.parse(last)
    middle = [p for p in test_periods if lo < Period.parse(p) < hi]
    done = done or set()
    items = []
    for alpha in sorted(float(a) for a in alphas):
        key = (task, granularity, first, last, alpha_key(alpha))
        tests = tuple(p for p in test_periods if (*key, p, "test") not in done)
        validations = tuple(p for p in middle if (*key, p, "validation") not in done)
        if tests or validations:
            items.append(InterpolationItem(task, granularity, first, last, alpha, tests, validations))
    return items



def interpolation_done(table: pd.DataFrame | None) -> set[tuple]:
    """The :data:`~timevec.results.INTERPOLATION_KEY` tuples present in an interpolation table."""
    if table is None or table.empty:
        return set()
    keys = with_split(table)[INTERPOLATION_KEY].copy()
    keys["alpha"] = keys["alpha"].map(alpha_key)
    return set(map(tuple, keys.astype({"first": str, "last": str, "test_period": str}).itertuples(index=False, name=None)))


def interpolation_rows(item: InterpolationItem, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows of one evaluated point (``results`` in the order of the splits evaluated)."""
    return [
        {
            "task": item.task,
            "granularity": item.granularity,
            "first": item.first,
            "last": item.last,
            "alpha": alpha_key(item.alpha),
            "test_period": str(r["test_period"]),
            "split": str(r.get("split", "test")),
            "metric": r["metric"],
            "value": float(r["value"]),
            "higher_is_better": bool(r["higher_is_better"]),
        }
        for r in results
    ]


def run_interpolation_item(
    evaluate_weights: EvaluateWeights,
    tau_first: TimeVector,
    tau_last: TimeVector,
    item: InterpolationItem,
    splits: Mapping[str, EvalSplit],
    validation_splits: Mapping[str, EvalSplit] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate one point on its test periods and its validation periods (those with a split); returns table rows."""
    validation_splits = validation_splits or {}
    wanted = [splits[p] for p in item.test_periods if p in splits]
    wanted += [validation_splits[p] for p in item.validation_periods if p in validation_splits]
    results = evaluate_weights(interpolation_terms(tau_first, tau_last, item.alpha), wanted)
    for split, row in zip(wanted, results, strict=True):
        row.setdefault("test_period", split.period)
        row["split"] = split.split
    return interpolation_rows(item, results)



# ----------------------------------------------------------------------------- soups and patching

def neighbour_order(period: str, stored: Sequence[str]) -> list[str]:
    """Stored periods other than ``period`` by distance to it; on a tie the EARLIER one first.

    Earlier first because, of two equally near vectors, the earlier one is the one a practitioner
    could have had at the time.
    """
    target = Period.parse(period)
    others = [p for p in sort_periods(stored) if p != str(target)]
    return sorted(others, key=lambda p: (abs(target.distance(p)), Period.parse(p)))


@dataclass
class SoupResult:
    """A greedy time soup for one period: its members (uniform average) and how it scored.

    ``trace`` lists every candidate tried: ``(candidate, validation value of the tried soup,
    accepted)``.
    """

    period: str
    members: list[str]
    validation_value: float
    test_value: float
    start_validation_value: float
    trace: list[tuple[str, float, bool]] = field(default_factory=list)


def _average(load_vector: LoadVector, members: Sequence[str]) -> list[Term]:
    coef = 1.0 / len(members)
    return [(coef, load_vector(p)) for p in members]


def greedy_soup(
    evaluate_weights: EvaluateWeights,
    load_vector: LoadVector,
    period: str,
    stored: Sequence[str],
    validation: EvalSplit,
    test: EvalSplit | None,
    higher: bool,
    max_distance: int | None = None,
) -> SoupResult:
    """Greedy soup of neighbouring vectors for ``period`` (the public code's time soups).

    Start from the period's own vector (the nearest neighbour when it is not stored); try the
    other stored vectors in order of distance (:func:`neighbour_order`) and keep a candidate only if
    the uniform average of the members plus it is strictly better on ``period``'s VALIDATION split (on the
    examples both scored: :func:`timevec.evaluate.per_example.on_common_prefix`).
    The final soup is then evaluated once on the test split. Selection never sees test data.
    """
    candidates = neighbour_order(period, stored)
    if max_distance is not None:
        candidates = [p for p in candidates if abs(Period.parse(period).distance(p)) <= max_distance]
    if period in stored:
        members = [period]
    elif candidates:
        members = [candidates.pop(0)]
    else:
        raise ValueError(f"no stored vector near {period} to start a soup from")
    best_row = evaluate_weights(_average(load_vector, members), [validation])[0]
    best = start = value_of([best_row])
    trace: list[tuple[str, float, bool]] = []
    for candidate in candidates:
        tried = members + [candidate]
        row = evaluate_weights(_average(load_vector, tried), [validation])[0]
        value = value_of([row])
        mine, theirs = on_common_prefix([row, best_row])  # on the examples both scored (target_halfwidth)
        accepted = better(mine["value"], theirs["value"], higher)
        trace.append((candidate, value, accepted))
        if accepted:
            members, best, best_row = tried, value, row
    test_value = value_of(evaluate_weights(_average(load_vector, members), [test])) if test is not None else math.nan
    log.info("soup %s: members %s (validation %.4g from %.4g)", period, _members(members), best, start)
    return SoupResult(period, sort_periods(members), best, test_value, start, trace)


@dataclass
class PatchResult:
    """A missing period's vector rebuilt from its neighbours, evaluated on that period's test split."""

    period: str
    neighbours: tuple[str, str]
    value: float


def patch_missing(
    evaluate_weights: EvaluateWeights,
    load_vector: LoadVector,
    period: str,
    stored: Sequence[str],
    test: EvalSplit,
) -> PatchResult | None:
    """Leave ``period``'s vector out and rebuild it as ½·τ(p−1) + ½·τ(p+1).

    Returns None when either neighbour is not stored (a period at an end cannot be patched this
    way). ``period``'s own vector is never read, so this also fills a truly missing period.
    """
    parsed = Period.parse(period)
    before, after = str(parsed.shift(-1)), str(parsed.shift(1))
    if before not in stored or after not in stored:
        return None
    terms = [(0.5, load_vector(before)), (0.5, load_vector(after))]
    return PatchResult(str(parsed), (before, after), value_of(evaluate_weights(terms, [test])))


@dataclass
class PeriodBaselines:
    """The test-split values every soup/patching row is compared with, for one period."""

    period: str
    metric: str
    higher: bool
    values: dict[str, tuple[str, float]]  # method -> (members, value); methods absent when not stored


def period_baselines(
    evaluate_weights: EvaluateWeights,
    load_vector: LoadVector,
    task: str,
    period: str,
    stored: Sequence[str],
    test: EvalSplit,
    known: KnownValue | None = None,
) -> PeriodBaselines:
    """base, in_period (τ_p, if stored), previous (latest before p), next (p+1), latest and the
    uniform soup of every OTHER stored vector on p's test split.

    Each but the uniform soup is a cell of the all-pairs matrix: ``known(source, period)`` (source
    ``"base"`` or a period) answers from the cells table when it holds it, and only the others are
    evaluated. The uniform soup (with two or more other vectors stored) is the control that
    separates time from mere averaging: a method that does not beat it has found no time.
    """
    ordered = sort_periods(stored)
    wanted = {
        "base": "base",
        "in_period": period if period in ordered else None,
        "previous": latest_before(period, ordered),
        "next": str(Period.parse(period).shift(1)) if str(Period.parse(period).shift(1)) in ordered else None,
        "latest": ordered[-1] if ordered else None,
    }
    values: dict[str, tuple[str, float]] = {}
    seen: dict[str, float] = {}
    for method, source in wanted.items():
        if source is None:
            continue
        if source not in seen:
            value = known(source, period) if known is not None else None
            if value is None:
                terms = [] if source == "base" else [(1.0, load_vector(source))]
                value = value_of(evaluate_weights(terms, [test]))
            seen[source] = value
        values[method] = ("" if source == "base" else source, seen[source])
    others = [p for p in ordered if p != period]
    if len(others) > 1:
        # The averaging control: does a method beat the plain mean of every OTHER vector? (p's own
        # vector is what interpolation, patching and forecasts are meant to do without.)
        values["uniform_soup"] = (_members(others), value_of(evaluate_weights(_average(load_vector, others), [test])))
    return PeriodBaselines(period, task_metric(task), task_higher(task), values)


def evaluate_period(
    evaluate_weights: EvaluateWeights,
    load_vector: LoadVector,
    task: str,
    granularity: str,
    period: str,
    stored: Sequence[str],
    validation: EvalSplit | None,
    test: EvalSplit,
    max_distance: int | None = None,
    known: KnownValue | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Soup and patching rows of one period (one work item of the interpolation stage).

    The baselines are evaluated once and shared by both tables. The soup needs a validation split
    (skipped with a warning without one); patching needs both neighbours stored.
    """
    stored = sort_periods(stored)
    baselines = period_baselines(evaluate_weights, load_vector, task, period, stored, test, known)
    soup: SoupResult | None = None
    if validation is None or validation.n_examples == 0:
        log.warning("%s/%s: no validation rows, no soup", task, period)
    elif stored:
        soup = greedy_soup(evaluate_weights, load_vector, period, stored, validation, test, baselines.higher, max_distance)
    patch = patch_missing(evaluate_weights, load_vector, period, stored, test)
    in_period_validation = math.nan
    if soup is not None and period in stored:
        in_period_validation = soup.start_validation_value
    soups = soup_rows(task, granularity, soup, baselines, in_period_validation) if soup is not None else []
    patches = patching_rows(task, granularity, patch, baselines) if patch is not None else []
    return soups, patches


def soup_rows(
    task: str, granularity: str, soup: SoupResult, baselines: PeriodBaselines, in_period_validation: float = math.nan
) -> list[dict[str, Any]]:
    """Rows of :data:`~timevec.results.SOUP_COLUMNS`: the soup (validation, test) and the baselines it is compared with.

    ``gain`` on a baseline row is how much the soup beats it on the same split (positive = soup
    better); NaN on the soup's own rows.
    """
    common = {"task": task, "granularity": granularity, "period": soup.period, "metric": baselines.metric,
              "higher_is_better": baselines.higher}
    members = _members(soup.members)
    rows = [
        {**common, "method": "soup", "members": members, "n_members": len(soup.members), "split": "validation",
         "value": soup.validation_value, "gain": math.nan},
        {**common, "method": "soup", "members": members, "n_members": len(soup.members), "split": "test",
         "value": soup.test_value, "gain": math.nan},
    ]
    if not math.isnan(in_period_validation):
        rows.append({**common, "method": "in_period", "members": soup.period, "n_members": 1, "split": "validation",
                     "value": in_period_validation, "gain": gain(soup.validation_value, in_period_validation, baselines.higher)})
    for method, (source, value) in baselines.values.items():
        rows.append({**common, "method": method, "members": source, "n_members": len(source.split(",")) if source else 0,
                     "split": "test",
                     "value": value, "gain": gain(soup.test_value, value, baselines.higher)})
    return rows


def patching_rows(task: str, granularity: str, patch: PatchResult, baselines: PeriodBaselines) -> list[dict[str, Any]]:
    """Rows of :data:`~timevec.results.PATCHING_COLUMNS`: the patched vector and the baselines on the period's test split.

    ``gain`` on a baseline row is how much the patch beats it (positive = patch better): against
    ``in_period`` it measures what is lost by not having the period's data, against ``latest``
    whether patching is worth it at all.
    """
    common = {"task": task, "granularity": granularity, "period": patch.period, "split": "test",
              "metric": baselines.metric, "higher_is_better": baselines.higher}
    rows = [{**common, "method": "patched", "members": _members(patch.neighbours), "value": patch.value, "gain": math.nan}]
    for method, (source, value) in baselines.values.items():
        rows.append({**common, "method": method, "members": source, "value": value,
                     "gain": gain(patch.value, value, baselines.higher)})
    return rows
