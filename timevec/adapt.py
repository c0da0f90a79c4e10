"""Adapting without training: interpolation, time soups, missing-period patching, task analogies.

Every method here is weight arithmetic on stored time vectors followed by an evaluation; nothing
is trained. The module is the Ray-free half of the adaptation stages: it decides WHAT to evaluate
(grids, neighbour orders, the analogy's three terms), runs greedy procedures against any
evaluation callable, and builds the documented result tables. The Ray half
(:mod:`timevec.distributed.interpolate`, :mod:`timevec.distributed.analogy`) only schedules these
calls on actors and Tune trials.

Design choices, and why:

- **Evaluation is injected.** Functions take ``evaluate_weights(terms, splits) -> rows``, the
  signature of :meth:`timevec.distributed.cells.CellEvaluator.evaluate_weights`: θ_pre + Σ cᵢ·τᵢ is
  written into a live model IN PLACE (:class:`~timevec.vectors.WeightPatcher`), every split is
  evaluated, and θ_pre is restored. No combined vector and no model copy is ever materialised, so
  the same code serves a 189 K-parameter test model and T5-3b.
- **Combinations are coefficient lists**, not vectors: ``interpolation_terms`` at α = 0 is
  ``[(1.0, τ_first), (0.0, τ_last)]``, and the patcher skips zero coefficients, so the α = 0 and
  α = 1 points are bit-identical to the end vectors' own cells (the tests check this exactly).
- **Baselines are part of every table** (DESIGN §1): the base, the in-period vector (oracle), the
  LATEST vector, and for analogies the task vector scaled alone. arXiv 2509.23487 found that
  interpolation often fails to beat the latest model, so gains against it are reported as such.
- **Long tables with a ``method`` column** for soups, patching and analogy baselines: one schema
  whatever the number of baselines, easy to pivot in the report.

"latest" and "previous" mean: ``latest`` is the latest stored vector of the task and granularity
(what a practitioner deploys today); ``previous`` is the latest stored vector strictly before the
evaluated period (what was deployable when that period began).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from timevec.config import AnalogyConfig, ExperimentConfig
from timevec.evaluation import METRICS, EvalSplit
from timevec.periods import Period
from timevec.vectors import TimeVector

log = logging.getLogger(__name__)

Term = tuple[float, TimeVector]
#: ``evaluate_weights(terms, splits) -> rows``: θ_pre + Σ cᵢ·τᵢ on each split (rows in split order,
#: each with at least ``metric``, ``value``, ``higher_is_better``), θ_pre restored afterwards.
EvaluateWeights = Callable[[Sequence[Term], Sequence[EvalSplit]], list[dict[str, Any]]]
#: ``load_vector(period) -> τ`` for one task (callers bind the task and cache as they see fit).
LoadVector = Callable[[str], TimeVector]
#: (source: "base" or a train period, test period) -> the cell's value, or None when not computed
KnownValue = Callable[[str, str], "float | None"]

__all__ = [
    "ANALOGY_BEST_COLUMNS",
    "ANALOGY_COLUMNS",
    "ANALOGY_METHODS",
    "INTERPOLATION_BEST_COLUMNS",
    "INTERPOLATION_COLUMNS",
    "INTERPOLATION_KEY",
    "PATCHING_COLUMNS",
    "SOUP_COLUMNS",
    "AnalogyPoint",
    "AnalogyVectors",
    "InterpolationItem",
    "PatchResult",
    "SoupResult",
    "analogy_baselines",
    "analogy_best_frame",
    "analogy_best_rows",
    "analogy_grid_frame",
    "analogy_pairs",
    "analogy_terms",
    "better",
    "evaluate_period",
    "gain",
    "gain_pct",
    "greedy_soup",
    "latest_task_period",
    "interpolation_best",
    "interpolation_done",
    "interpolation_ends",
    "interpolation_frame",
    "interpolation_rows",
    "interpolation_terms",
    "neighbour_order",
    "patch_missing",
    "patching_frame",
    "patching_rows",
    "period_baselines",
    "plan_interpolation",
    "reference_grid",
    "run_interpolation_item",
    "select_best",
    "soup_frame",
    "soup_rows",
    "sort_periods",
]


# ----------------------------------------------------------------------------- helpers


def _order(period: str) -> tuple[int, int]:
    parsed = Period.parse(period)
    return (parsed.year, parsed.month or 0)


def sort_periods(periods: Iterable[str]) -> list[str]:
    """Unique period strings in time order."""
    return sorted({str(p) for p in periods}, key=_order)


def better(value: float, baseline: float, higher: bool) -> bool:
    """Whether ``value`` is strictly better than ``baseline`` (NaN is never better)."""
    if math.isnan(value):
        return False
    if math.isnan(baseline):
        return True
    return value > baseline if higher else value < baseline


def gain(value: float, baseline: float, higher: bool) -> float:
    """``value − baseline`` signed so that positive means ``value`` is better (NaN if either is)."""
    diff = float(value) - float(baseline)
    return (diff if higher else -diff) + 0.0  # + 0.0: no "-0.0" in tables when the two are equal


def gain_pct(value: float, baseline: float, higher: bool) -> float:
    """:func:`gain` in percent of ``|baseline|`` (NaN when the baseline is 0 or missing)."""
    base = float(baseline)
    if math.isnan(base) or base == 0.0:
        return math.nan
    return gain(value, base, higher) / abs(base) * 100.0


def _higher(task: str) -> bool:
    return METRICS[task][1]


def _metric(task: str) -> str:
    return METRICS[task][0]


def _value(rows: list[dict[str, Any]], i: int = 0) -> float:
    return float(rows[i]["value"])


def _latest_before(period: str, stored: Sequence[str]) -> str | None:
    earlier = [p for p in stored if _order(p) < _order(period)]
    return max(earlier, key=_order) if earlier else None


def _members(periods: Iterable[str]) -> str:
    return ",".join(sort_periods(periods))


# ----------------------------------------------------------------------------- interpolation

INTERPOLATION_COLUMNS = ["task", "granularity", "first", "last", "alpha", "test_period", "metric", "value", "higher_is_better"]
INTERPOLATION_KEY = ["task", "granularity", "first", "last", "alpha", "test_period"]


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


def interpolation_ends(stored: Sequence[str]) -> tuple[str, str]:
    """The earliest and latest stored period (the two vectors interpolated between)."""
    ordered = sort_periods(stored)
    if len(ordered) < 2:
        raise ValueError(f"interpolation needs two stored periods, got {ordered}")
    return ordered[0], ordered[-1]


def interpolation_terms(tau_first: TimeVector, tau_last: TimeVector, alpha: float) -> list[Term]:
    """``[(1−α, τ_first), (α, τ_last)]``: α is the weight of the LATER vector (DESIGN §1).

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

    ``done`` holds :data:`INTERPOLATION_KEY` tuples already in the table. Nothing is planned when
    fewer than two vectors are stored.
    """
    if len(set(stored)) < 2:
        return []
    first, last = interpolation_ends(stored)
    done = done or set()
    items = []
    for alpha in sorted(float(a) for a in alphas):
        missing = tuple(p for p in test_periods if (task, granularity, first, last, _alpha_key(alpha), p) not in done)
        if missing:
            items.append(InterpolationItem(task, granularity, first, last, alpha, missing))
    return items


def _alpha_key(alpha: float) -> float:
    """α as stored in keys: rounded so that 0.30000000000000004 and 0.3 are the same point."""
    return round(float(alpha), 10)


def interpolation_done(table: pd.DataFrame | None) -> set[tuple]:
    """The :data:`INTERPOLATION_KEY` tuples present in an interpolation table."""
    if table is None or table.empty:
        return set()
    keys = table[INTERPOLATION_KEY].copy()
    keys["alpha"] = keys["alpha"].map(_alpha_key)
    return set(map(tuple, keys.astype({"first": str, "last": str, "test_period": str}).itertuples(index=False, name=None)))


def interpolation_rows(item: InterpolationItem, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows of one evaluated point (``results`` in the order of the splits evaluated)."""
    return [
        {
            "task": item.task,
            "granularity": item.granularity,
            "first": item.first,
            "last": item.last,
            "alpha": _alpha_key(item.alpha),
            "test_period": str(r["test_period"]),
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
) -> list[dict[str, Any]]:
    """Evaluate one point on its test periods (those with a split); returns table rows."""
    wanted = [splits[p] for p in item.test_periods if p in splits]
    results = evaluate_weights(interpolation_terms(tau_first, tau_last, item.alpha), wanted)
    for split, row in zip(wanted, results, strict=True):
        row.setdefault("test_period", split.period)
    return interpolation_rows(item, results)


def interpolation_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a frame with exactly :data:`INTERPOLATION_COLUMNS` and fixed dtypes (appendable)."""
    frame = pd.DataFrame(list(rows), columns=INTERPOLATION_COLUMNS)
    return frame.astype({"alpha": "float64", "value": "float64", "higher_is_better": "bool"})


INTERPOLATION_BEST_COLUMNS = [
    "task", "granularity", "first", "last", "test_period", "metric", "higher_is_better",
    "best_alpha", "best_value", "value_alpha0", "value_alpha1",
    "gain_vs_first", "gain_vs_last", "gain_vs_first_pct", "gain_vs_last_pct", "beats_both_ends",
    "in_period_value", "gain_vs_in_period", "gain_vs_in_period_pct",
    "latest_period", "latest_value", "gain_vs_latest", "gain_vs_latest_pct", "beats_latest",
    "previous_period", "previous_value", "gain_vs_previous", "gain_vs_previous_pct",
    "base_value",
]


def _cells_value(cells: pd.DataFrame | None, task: str, granularity: str, vector: str, test: str) -> float:
    if cells is None or cells.empty:
        return math.nan
    sel = cells.loc[
        (cells["task"] == task) & (cells["granularity"] == granularity)
        & (cells["vector"].astype(str) == vector) & (cells["test_period"].astype(str) == test)
    ]
    return float(sel["value"].iloc[-1]) if len(sel) else math.nan


def interpolation_best(interp: pd.DataFrame, cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per MIDDLE test period (strictly between the ends): the best α and what it gains.

    Columns :data:`INTERPOLATION_BEST_COLUMNS`; every ``gain_*`` is positive when the best
    interpolation is better than that baseline. Ends: α = 0 (τ_first) and α = 1 (τ_last). The
    LATEST vector is τ_last (the latest stored period), reported again under its own name because
    that is the comparison that decides whether interpolating is worth it (arXiv 2509.23487).
    ``in_period`` (the oracle τ_test), ``previous`` (the latest vector before the test period) and
    ``base`` come from the cells table when given, NaN otherwise.
    """
    rows: list[dict[str, Any]] = []
    if interp is not None and not interp.empty:
        stored_by: dict[tuple[str, str], list[str]] = {}
        if cells is not None and not cells.empty:
            trained = cells.loc[cells["vector"].astype(str) != "base"]
            for (task, gran), grp in trained.groupby(["task", "granularity"]):
                stored_by[(task, gran)] = sort_periods(grp["train_period"].dropna().astype(str))
        keys = ["task", "granularity", "first", "last", "test_period", "metric"]
        for (task, gran, first, last, test, metric), grp in interp.groupby(keys, sort=False):
            first, last, test = str(first), str(last), str(test)
            if not _order(first) < _order(test) < _order(last):
                continue
            higher = bool(grp["higher_is_better"].iloc[0])
            grp = grp.sort_values("alpha")
            alphas = grp["alpha"].to_numpy(dtype=float)
            values = grp["value"].to_numpy(dtype=float)
            if np.isnan(values).all():
                continue
            i = int(np.nanargmax(values) if higher else np.nanargmin(values))
            best = float(values[i])

            def at(alpha: float) -> float:
                hit = np.isclose(alphas, alpha)
                return float(values[hit][0]) if hit.any() else math.nan

            v0, v1 = at(0.0), at(1.0)
            own = _cells_value(cells, task, gran, f"{task}/{test}", test)
            base = _cells_value(cells, task, gran, "base", test)
            previous = _latest_before(test, stored_by.get((task, gran), []))
            prev_value = _cells_value(cells, task, gran, f"{task}/{previous}", test) if previous else math.nan
            rows.append({
                "task": task, "granularity": gran, "first": first, "last": last, "test_period": test,
                "metric": metric, "higher_is_better": higher,
                "best_alpha": float(alphas[i]), "best_value": best, "value_alpha0": v0, "value_alpha1": v1,
                "gain_vs_first": gain(best, v0, higher), "gain_vs_last": gain(best, v1, higher),
                "gain_vs_first_pct": gain_pct(best, v0, higher), "gain_vs_last_pct": gain_pct(best, v1, higher),
                "beats_both_ends": better(best, v0, higher) and better(best, v1, higher),
                "in_period_value": own, "gain_vs_in_period": gain(best, own, higher),
                "gain_vs_in_period_pct": gain_pct(best, own, higher),
                "latest_period": last, "latest_value": v1, "gain_vs_latest": gain(best, v1, higher),
                "gain_vs_latest_pct": gain_pct(best, v1, higher), "beats_latest": better(best, v1, higher),
                "previous_period": previous, "previous_value": prev_value,
                "gain_vs_previous": gain(best, prev_value, higher),
                "gain_vs_previous_pct": gain_pct(best, prev_value, higher),
                "base_value": base,
            })
    out = pd.DataFrame(rows, columns=INTERPOLATION_BEST_COLUMNS)
    if not out.empty:
        out = out.sort_values(
            ["task", "granularity", "first", "last", "test_period"],
            key=lambda s: s.map(_order) if s.name in ("first", "last", "test_period") else s,
        ).reset_index(drop=True)
    return out


# ----------------------------------------------------------------------------- soups and patching

SOUP_COLUMNS = [
    "task", "granularity", "period", "method", "members", "n_members", "split", "metric", "value",
    "higher_is_better", "gain",
]
PATCHING_COLUMNS = [
    "task", "granularity", "period", "method", "members", "split", "metric", "value", "higher_is_better", "gain",
]


def neighbour_order(period: str, stored: Sequence[str]) -> list[str]:
    """Stored periods other than ``period`` by distance to it; on a tie the EARLIER one first.

    Earlier first because, of two equally near vectors, the earlier one is the one a practitioner
    could have had at the time.
    """
    target = Period.parse(period)
    others = [p for p in sort_periods(stored) if p != str(target)]
    return sorted(others, key=lambda p: (abs(target.distance(p)), _order(p)))


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
    the uniform average of the members plus it is strictly better on ``period``'s VALIDATION split.
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
    best = _value(evaluate_weights(_average(load_vector, members), [validation]))
    start = best
    trace: list[tuple[str, float, bool]] = []
    for candidate in candidates:
        tried = members + [candidate]
        value = _value(evaluate_weights(_average(load_vector, tried), [validation]))
        accepted = better(value, best, higher)
        trace.append((candidate, value, accepted))
        if accepted:
            members, best = tried, value
    test_value = _value(evaluate_weights(_average(load_vector, members), [test])) if test is not None else math.nan
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
    return PatchResult(str(parsed), (before, after), _value(evaluate_weights(terms, [test])))


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
    """base, in_period (τ_p, if stored), previous (latest before p), next (p+1) and latest on p's test.

    Each is a cell of the all-pairs matrix: ``known(source, period)`` (source ``"base"`` or a
    period) answers from the cells table when it holds it, and only the others are evaluated.
    """
    ordered = sort_periods(stored)
    wanted = {
        "base": "base",
        "in_period": period if period in ordered else None,
        "previous": _latest_before(period, ordered),
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
                value = _value(evaluate_weights(terms, [test]))
            seen[source] = value
        values[method] = ("" if source == "base" else source, seen[source])
    return PeriodBaselines(period, _metric(task), _higher(task), values)


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
    """Rows of :data:`SOUP_COLUMNS`: the soup (validation, test) and the baselines it is compared with.

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
        rows.append({**common, "method": method, "members": source, "n_members": 1 if source else 0, "split": "test",
                     "value": value, "gain": gain(soup.test_value, value, baselines.higher)})
    return rows


def patching_rows(task: str, granularity: str, patch: PatchResult, baselines: PeriodBaselines) -> list[dict[str, Any]]:
    """Rows of :data:`PATCHING_COLUMNS`: the patched vector and the baselines on the period's test split.

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


def soup_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=SOUP_COLUMNS)
    return frame.astype({"n_members": "int64", "value": "float64", "higher_is_better": "bool", "gain": "float64"})


def patching_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=PATCHING_COLUMNS)
    return frame.astype({"value": "float64", "higher_is_better": "bool", "gain": "float64"})


# ----------------------------------------------------------------------------- task analogy

ANALOGY_COLUMNS = ["task", "source_period", "target_period", "alpha1", "alpha2", "alpha3", "split", "metric", "value"]
ANALOGY_BEST_COLUMNS = [
    "task", "source_period", "target_period", "method", "alpha1", "alpha2", "alpha3", "split", "metric", "value",
    "higher_is_better", "vector", "note",
]
ANALOGY_METHODS = ("base", "task_j", "task_j_scaled", "latest", "in_period", "analogy")


def analogy_terms(
    alpha1: float, task_j: TimeVector, alpha2: float, lm_k: TimeVector, alpha3: float, lm_j: TimeVector
) -> list[Term]:
    """θ − θ_pre = α₁·τ_task(j) + α₂·τ_lm(k) − α₃·τ_lm(j), as coefficient terms for the patcher."""
    return [(float(alpha1), task_j), (float(alpha2), lm_k), (-float(alpha3), lm_j)]


def reference_grid(cfg: AnalogyConfig) -> list[tuple[float, float, float]]:
    """Every (α₁, α₂, α₃) of the configured grid (the paper's: 9 × 6 × 6 = 324 points)."""
    return [(float(a), float(b), float(c)) for a, b, c in itertools.product(cfg.alpha1, cfg.alpha2, cfg.alpha3)]


def analogy_pairs(config: ExperimentConfig, stored: set[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[str]]:
    """The (j, k) pairs to search and the reasons other pairs were left out.

    j: ``analogy.source_periods`` or the first configured YEAR; k: every later configured year.
    A pair needs τ_task(j), τ_lm(j) and τ_lm(k) stored.
    """
    task = config.analogy.task
    years = config.period_list("year")
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
            if _order(k) <= _order(j):
                continue
            if ("lm", k) not in stored:
                skipped.append(f"{j}→{k}: vector lm/{k} not stored")
                continue
            pairs.append((j, k))
    return pairs, skipped


@dataclass(frozen=True)
class AnalogyPoint:
    """One evaluated grid point: validation and test values of θ_pre + the analogy's terms."""

    alpha1: float
    alpha2: float
    alpha3: float
    validation: float
    test: float


def select_best(points: Sequence[AnalogyPoint], higher: bool) -> AnalogyPoint:
    """The point with the best VALIDATION value (ties: the first in grid order); test never selects."""
    if not points:
        raise ValueError("no analogy points to select from")
    best = points[0]
    for point in points[1:]:
        if better(point.validation, best.validation, higher):
            best = point
    return best


def analogy_grid_frame(task: str, j: str, k: str, metric: str, points: Sequence[AnalogyPoint]) -> pd.DataFrame:
    """Rows of :data:`ANALOGY_COLUMNS`: every grid point on both splits."""
    rows = []
    for p in points:
        for split, value in (("validation", p.validation), ("test", p.test)):
            rows.append({"task": task, "source_period": j, "target_period": k, "alpha1": p.alpha1, "alpha2": p.alpha2,
                         "alpha3": p.alpha3, "split": split, "metric": metric, "value": float(value)})
    return pd.DataFrame(rows, columns=ANALOGY_COLUMNS).astype(
        {"alpha1": "float64", "alpha2": "float64", "alpha3": "float64", "value": "float64"})


@dataclass
class AnalogyVectors:
    """What one (j, k) analogy evaluates: the three terms and the task vectors of the baselines."""

    task_j: TimeVector
    lm_k: TimeVector
    lm_j: TimeVector
    latest: tuple[str, TimeVector] | None = None  # the latest stored task vector before k
    in_period: TimeVector | None = None  # τ_task(k), the oracle


def _both(evaluate_weights: EvaluateWeights, terms: Sequence[Term], validation: EvalSplit, test: EvalSplit) -> tuple[float, float, str]:
    rows = evaluate_weights(list(terms), [validation, test])
    return _value(rows, 0), _value(rows, 1), rows[0]["metric"]


def analogy_baselines(
    evaluate_weights: EvaluateWeights,
    task: str,
    j: str,
    k: str,
    vectors: AnalogyVectors,
    validation: EvalSplit,
    test: EvalSplit,
    alpha1_grid: Sequence[float],
) -> list[dict[str, Any]]:
    """Rows of :data:`ANALOGY_BEST_COLUMNS` for every method but ``analogy`` (both splits each).

    ``task_j_scaled`` evaluates α₁·τ_task(j) for every α₁ of the grid and keeps the best on
    validation: much of the published analogy gain comes from that scaling alone, so the analogy is
    only credited with what it adds beyond it.
    """
    higher = _higher(task)
    rows: list[dict[str, Any]] = []

    def add(method: str, a1: float, v: float, t: float, metric: str, vector: str, note: str = "") -> None:
        for split, value in (("validation", v), ("test", t)):
            rows.append({"task": task, "source_period": j, "target_period": k, "method": method, "alpha1": a1,
                         "alpha2": 0.0, "alpha3": 0.0, "split": split, "metric": metric, "value": float(value),
                         "higher_is_better": higher, "vector": vector, "note": note})

    v, t, metric = _both(evaluate_weights, [], validation, test)
    add("base", 0.0, v, t, metric, "base")
    v, t, _ = _both(evaluate_weights, [(1.0, vectors.task_j)], validation, test)
    add("task_j", 1.0, v, t, metric, f"{task}/{j}")
    scaled = [AnalogyPoint(float(a), 0.0, 0.0, *_both(evaluate_weights, [(float(a), vectors.task_j)], validation, test)[:2])
              for a in alpha1_grid]
    best = select_best(scaled, higher)
    add("task_j_scaled", best.alpha1, best.validation, best.test, metric, f"{task}/{j}")
    if vectors.latest is not None:
        period, vec = vectors.latest
        v, t, _ = _both(evaluate_weights, [(1.0, vec)], validation, test)
        add("latest", 1.0, v, t, metric, f"{task}/{period}", "" if period != j else "latest task vector before k is τ_task(j)")
    else:
        add("latest", math.nan, math.nan, math.nan, metric, "", "no task vector stored before k")
    if vectors.in_period is not None:
        v, t, _ = _both(evaluate_weights, [(1.0, vectors.in_period)], validation, test)
        add("in_period", 1.0, v, t, metric, f"{task}/{k}", "oracle: needs labelled data of k")
    else:
        add("in_period", math.nan, math.nan, math.nan, metric, "", f"{task}/{k} not stored")
    return rows


def analogy_best_rows(task: str, j: str, k: str, metric: str, points: Sequence[AnalogyPoint]) -> list[dict[str, Any]]:
    """The ``analogy`` rows of :data:`ANALOGY_BEST_COLUMNS`: the best grid point by validation, both splits."""
    best = select_best(points, _higher(task))
    return [
        {"task": task, "source_period": j, "target_period": k, "method": "analogy", "alpha1": best.alpha1,
         "alpha2": best.alpha2, "alpha3": best.alpha3, "split": split, "metric": metric, "value": float(value),
         "higher_is_better": _higher(task), "vector": f"{task}/{j} + lm/{k} - lm/{j}",
         "note": f"best of {len(points)} points on validation"}
        for split, value in (("validation", best.validation), ("test", best.test))
    ]


def analogy_best_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=ANALOGY_BEST_COLUMNS)
    return frame.astype({"alpha1": "float64", "alpha2": "float64", "alpha3": "float64", "value": "float64",
                         "higher_is_better": "bool"})


def latest_task_period(task: str, k: str, stored: set[tuple[str, str]]) -> str | None:
    """The latest period strictly before ``k`` with a stored ``task`` vector (same granularity as k).

    Strictly before: the analogy's premise is that k has no labels, so τ_task(k) is the separate
    ``in_period`` oracle, not the "latest available" baseline.
    """
    granularity = Period.parse(k).granularity
    candidates = [p for t, p in stored if t == task and Period.parse(p).granularity == granularity and _order(p) < _order(k)]
    return max(candidates, key=_order) if candidates else None
