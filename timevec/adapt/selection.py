"""How an adaptation's mixing weights are chosen, and what each choice is allowed to see.

Every adaptation number depends on α, and an α chosen on the target period's own labels is an
ORACLE: a user moving a model to a new period has no labels there. Madaan, Chopra & Cho 2025
(arXiv 2509.23487) found that once hyper-parameters are chosen on past data only, no
interpolation or extrapolation method reliably beats the latest model. So timevec reports every
adaptation under several selection protocols side by side, with the baselines and the controls
that separate time from mere averaging:

interpolation τ(α) = (1−α)·τ_first + α·τ_last, for each MIDDLE period t (first < t < last):

- ``oracle``: α best on t's VALIDATION split (t's labels — an upper bound, not a method);
- ``time_proportional``: α = (t − t_first)/(t_last − t_first), the grid α nearest to it — no labels;
- ``leave_one_out``: α best on the OTHER middle periods' validation splits (t's labels never read);
  scores are each period's value relative to its own mean over the grid, so a period with a high
  perplexity does not outvote the others;
- ``midpoint``: α = 0.5 fixed (the averaging control);
- baselines ``base``, ``first`` (α = 0), ``latest`` (α = 1: τ_last, the latest vector),
  ``previous`` (the latest vector before t), ``in_period`` (τ_t: an oracle, it needs t's
  labelled data), ``uniform_soup`` (the mean of every OTHER stored vector; the other control).

On a corpus where the best α is 0.5 for every period and the midpoint beats both ends, "beats both
ends" is an averaging effect: ``gain_vs_midpoint`` and ``gain_vs_uniform_soup`` say whether a
time-aware choice adds anything to averaging.

task analogy θ_pre + α₁·τ_task(j) + α₂·τ_lm(k) − α₃·τ_lm(j), for each pair (j, k):

- ``oracle``: the grid point best on k's validation split (k's labels);
- ``past_only``: the point best on the latest EARLIER pair (j, k′), j < k′ < k, whose labels were
  known, applied to (j, k) (k's labels never read); none for the first k;
- the same two protocols for ``task_j_scaled`` (α₁·τ_task(j) alone), so that the analogy is
  credited only with what it adds beyond a scaling chosen the same way;
- baselines ``base``, ``task_j``, ``latest`` (the latest task vector before k), ``in_period``.

Values are always TEST values; selection reads validation values only, and only of the periods a
protocol may see (the choosers below take exactly those values as their arguments, and the tests
poison everything else). Torch-free and Ray-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from timevec.evaluate.gains import better, gain, gain_pct, higher_is_better
from timevec.periods import Period, latest_before, sort_periods
from timevec.results import (
    ANALOGY_PROTOCOL_COLUMNS,
    INTERPOLATION_PROTOCOL_COLUMNS,
    alpha_key,
    cell_values,
    with_split,
)

__all__ = [
    "ANALOGY_SELECTIONS",
    "INTERPOLATION_SELECTIONS",
    "analogy_protocols",
    "best_alpha",
    "interpolation_protocols",
    "leave_one_out_alpha",
    "midpoint_alpha",
    "time_proportional_alpha",
]

#: protocol or baseline -> how its α was chosen (the ``selection`` column)
INTERPOLATION_SELECTIONS: dict[str, str] = {
    "oracle": "oracle: α best on the target's validation labels",
    "time_proportional": "past-only: α from the dates alone, no labels",
    "leave_one_out": "past-only: α best on the other middle periods' validation labels",
    "midpoint": "fixed: α = 0.5 (averaging control)",
    "base": "baseline: θ_pre",
    "first": "baseline: τ_first (α = 0)",
    "latest": "baseline: the latest vector τ_last (α = 1)",
    "previous": "baseline: the latest vector before the target",
    "in_period": "oracle: the target's own vector (needs its labelled data)",
    "uniform_soup": "fixed: the mean of every other stored vector (averaging control)",
}
ANALOGY_SELECTIONS = ("oracle", "past_only")

Curve = Mapping[float, float]  # α -> value on one split of one period


# ----------------------------------------------------------------------------- the choosers


def best_alpha(curve: Curve, higher: bool) -> float:
    """The α whose value is best (ties: the smallest α); NaN when every value is NaN."""
    best, best_value = math.nan, math.nan
    for alpha in sorted(curve):
        if better(curve[alpha], best_value, higher):
            best, best_value = alpha, float(curve[alpha])
    return best


def time_proportional_alpha(target: str, first: str, last: str, grid: Sequence[float]) -> float:
    """The grid α nearest (t − t_first)/(t_last − t_first); ties: the smaller. Reads no values at all."""
    span = Period.parse(first).distance(last)
    wanted = Period.parse(first).distance(target) / span
    return min(sorted(grid), key=lambda a: (abs(a - wanted), a))


def leave_one_out_alpha(others: Mapping[str, Curve], higher: bool) -> float:
    """α best on average over the OTHER periods' validation curves, each relative to its own mean.

    ``others`` holds only periods the target may learn from; the target's own curve is never
    given. Relative values (value / the curve's mean over the grid) put perplexities of different
    periods on one scale. NaN when there are no other periods.
    """
    scores: dict[float, list[float]] = {}
    for curve in others.values():
        values = np.asarray([curve[a] for a in curve], dtype=float)
        mean = np.nanmean(values) if np.isfinite(values).any() else math.nan
        if not math.isfinite(mean) or mean == 0:
            continue
        for alpha, value in curve.items():
            scores.setdefault(alpha, []).append(float(value) / abs(mean))
    if not scores:
        return math.nan
    return best_alpha({a: float(np.nanmean(v)) for a, v in scores.items() if np.isfinite(v).any()}, higher)


def midpoint_alpha(grid: Sequence[float]) -> float:
    """0.5 when it is on the grid, else NaN (the control is not computed)."""
    return 0.5 if any(math.isclose(a, 0.5) for a in grid) else math.nan


# ----------------------------------------------------------------------------- interpolation


def _curves(grp: pd.DataFrame, split: str) -> dict[str, dict[float, float]]:
    sel = grp.loc[grp["split"] == split]
    out: dict[str, dict[float, float]] = {}
    for period, rows in sel.groupby(sel["test_period"].astype(str)):
        out[period] = {alpha_key(a): float(v) for a, v in zip(rows["alpha"], rows["value"])}
    return out


def _uniform_lookup(soups: pd.DataFrame | None) -> dict[tuple[str, str, str], float]:
    if soups is None or soups.empty:
        return {}
    sel = soups.loc[(soups["method"] == "uniform_soup") & (soups["split"] == "test")]
    return {(str(r.task), str(r.granularity), str(r.period)): float(r.value) for r in sel.itertuples(index=False)}


def interpolation_protocols(
    interp: pd.DataFrame | None, cells: pd.DataFrame | None = None, soups: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per middle test period: the test value under every protocol and baseline, with the gains.

    Columns :data:`~timevec.results.INTERPOLATION_PROTOCOL_COLUMNS`; gains are positive when the
    row's method is better than the named baseline (``gains.gain``), ``_pct`` in percent of it.
    ``in_period``, ``previous`` and ``base`` come from the cells table, ``uniform_soup`` from the
    soups table; a method that cannot be computed (no validation rows, α = 0.5 off the grid, a
    single middle period for leave-one-out) has NaN and a note.
    """
    rows: list[dict[str, Any]] = []
    interp = with_split(interp)
    if interp is None or interp.empty:
        return pd.DataFrame(columns=INTERPOLATION_PROTOCOL_COLUMNS)
    known = cell_values(cells)
    uniform = _uniform_lookup(soups)
    stored_by: dict[tuple[str, str], list[str]] = {}
    for task, gran, source, _ in known:
        if source != "base":
            stored_by.setdefault((task, gran), []).append(source)
    for (task, gran, first, last, metric), grp in interp.groupby(["task", "granularity", "first", "last", "metric"], sort=False):
        first, last = str(first), str(last)
        higher = bool(grp["higher_is_better"].iloc[0]) if "higher_is_better" in grp else higher_is_better(metric)
        tests, validations = _curves(grp, "test"), _curves(grp, "validation")
        grid = sorted({alpha_key(a) for a in grp["alpha"]})
        lo, hi = Period.parse(first), Period.parse(last)
        middle = [p for p in sort_periods(tests) if lo < Period.parse(p) < hi]
        for target in middle:
            test = tests[target]
            chosen = {
                "oracle": (best_alpha(validations[target], higher) if target in validations else math.nan,
                           "" if target in validations else "no validation rows"),
                "time_proportional": (time_proportional_alpha(target, first, last, grid), ""),
                "leave_one_out": (
                    leave_one_out_alpha({p: c for p, c in validations.items() if p != target and p in middle}, higher),
                    f"chosen on {', '.join(p for p in middle if p != target and p in validations) or 'no other period'}"),
                "midpoint": (midpoint_alpha(grid), "" if 0.5 in grid else "α = 0.5 is not on the grid"),
            }
            previous = latest_before(target, sort_periods(stored_by.get((task, gran), [])))
            baselines = {
                "base": (math.nan, known.get((task, gran, "base", target), math.nan), ""),
                "first": (0.0, test.get(0.0, math.nan), first),
                "latest": (1.0, test.get(1.0, math.nan), last),
                "previous": (math.nan, known.get((task, gran, previous, target), math.nan) if previous else math.nan,
                             previous or "none before"),
                "in_period": (math.nan, known.get((task, gran, target, target), math.nan), target),
                "uniform_soup": (math.nan, uniform.get((task, gran, target), math.nan), "every other stored vector"),
            }
            v_first, v_last = test.get(0.0, math.nan), test.get(1.0, math.nan)
            v_mid = test.get(0.5, math.nan)
            v_uniform = baselines["uniform_soup"][1]
            entries = [(m, a, test.get(a, math.nan) if not math.isnan(a) else math.nan, note)
                       for m, (a, note) in chosen.items()]
            entries += [(m, a, v, note) for m, (a, v, note) in baselines.items()]
            for method, alpha, value, note in entries:
                rows.append({
                    "task": task, "granularity": gran, "first": first, "last": last, "test_period": target,
                    "method": method, "selection": INTERPOLATION_SELECTIONS[method], "alpha": alpha, "metric": metric,
                    "higher_is_better": higher, "value": value,
                    "gain_vs_latest": gain(value, v_last, higher), "gain_vs_latest_pct": gain_pct(value, v_last, higher),
                    "gain_vs_first": gain(value, v_first, higher),
                    "beats_both_ends": better(value, v_first, higher) and better(value, v_last, higher),
                    "gain_vs_midpoint": gain(value, v_mid, higher), "gain_vs_midpoint_pct": gain_pct(value, v_mid, higher),
                    "gain_vs_uniform_soup": gain(value, v_uniform, higher),
                    "gain_vs_uniform_soup_pct": gain_pct(value, v_uniform, higher),
                    "note": note,
                })
    return pd.DataFrame(rows, columns=INTERPOLATION_PROTOCOL_COLUMNS).astype(
        {"alpha": "float64", "value": "float64", "higher_is_better": "bool", "beats_both_ends": "bool"})


# ----------------------------------------------------------------------------- task analogy


def _points(grid: pd.DataFrame, method: str) -> dict[tuple[float, float, float], dict[str, float]]:
    """(α₁, α₂, α₃) -> {split: value} of one pair and one method."""
    sel = grid.loc[grid["method"] == method]
    out: dict[tuple[float, float, float], dict[str, float]] = {}
    for r in sel.itertuples(index=False):
        key = (alpha_key(r.alpha1), alpha_key(r.alpha2), alpha_key(r.alpha3))
        out.setdefault(key, {})[str(r.split)] = float(r.value)
    return out


def select_point(validation: Mapping[tuple[float, float, float], float], higher: bool) -> tuple[float, float, float] | None:
    """The point with the best VALIDATION value (ties: the first in sorted order), None if none is finite."""
    best, best_value = None, math.nan
    for point in sorted(validation):
        value = float(validation[point])
        if not math.isnan(value) and better(value, best_value, higher):
            best, best_value = point, value
    return best


def analogy_protocols(grid: pd.DataFrame | None, best: pd.DataFrame | None) -> pd.DataFrame:
    """Per (task, j, k): the analogy and τ_task(j) scaled alone under each protocol, and the baselines.

    ``grid`` is the ``analogy`` table (every evaluated point, both splits, ``method`` analogy or
    task_j_scaled); ``best`` is ``analogy_best`` (for the fixed baselines base, task_j, latest,
    in_period). Columns :data:`~timevec.results.ANALOGY_PROTOCOL_COLUMNS`; ``chosen_on`` names the
    target period whose validation split chose the point. ``gain_vs_task_j_scaled`` compares with
    the scaled baseline chosen by the SAME protocol.
    """
    if grid is None or grid.empty:
        return pd.DataFrame(columns=ANALOGY_PROTOCOL_COLUMNS)
    grid = grid.copy()
    grid["method"] = grid["method"].fillna("analogy") if "method" in grid else "analogy"  # old tables
    fixed: dict[tuple[str, str, str, str], float] = {}
    if best is not None and not best.empty:
        test_best = best.loc[best["split"] == "test"]
        for r in test_best.itertuples(index=False):
            fixed[(str(r.task), str(r.source_period), str(r.target_period), str(r.method))] = float(r.value)
    rows: list[dict[str, Any]] = []
    for (task, j), pairs in grid.groupby(["task", "source_period"], sort=False):
        j = str(j)
        metric = str(pairs["metric"].iloc[0])
        higher = higher_is_better(metric)
        by_target = {str(k): grp for k, grp in pairs.groupby(pairs["target_period"].astype(str))}
        targets = sort_periods(by_target)
        for k in targets:
            earlier = [t for t in targets if Period.parse(t) < Period.parse(k)]
            source_of = {"oracle": k, "past_only": earlier[-1] if earlier else None}
            chosen: dict[tuple[str, str], tuple[tuple[float, float, float] | None, float, str]] = {}
            for method in ("analogy", "task_j_scaled"):
                here = _points(by_target[k], method)
                for selection, source in source_of.items():
                    if source is None:
                        chosen[(method, selection)] = (None, math.nan, f"no target before {k} to choose on")
                        continue
                    candidates = _points(by_target[source], method)
                    point = select_point({p: v["validation"] for p, v in candidates.items() if "validation" in v}, higher)
                    if point is None:
                        chosen[(method, selection)] = (None, math.nan, f"no {method} validation values on {source}")
                        continue
                    value = here.get(point, {}).get("test", math.nan)
                    chosen[(method, selection)] = (point, value, "" if not math.isnan(value) else
                                                   f"point chosen on {source} was not evaluated on {k}")
            task_j = fixed.get((task, j, k, "task_j"), math.nan)
            latest = fixed.get((task, j, k, "latest"), math.nan)
            common = {"task": task, "source_period": j, "target_period": k, "metric": metric, "higher_is_better": higher}
            for (method, selection), (point, value, note) in chosen.items():
                scaled = chosen[("task_j_scaled", selection)][1]
                a1, a2, a3 = point if point is not None else (math.nan, math.nan, math.nan)
                rows.append({**common, "method": method, "selection": selection,
                             "chosen_on": source_of[selection] or "", "alpha1": a1, "alpha2": a2, "alpha3": a3,
                             "value": value, "gain_vs_task_j": gain(value, task_j, higher),
                             "gain_vs_task_j_scaled": gain(value, scaled, higher) if method == "analogy" else math.nan,
                             "gain_vs_latest": gain(value, latest, higher), "note": note})
            for method in ("base", "task_j", "latest", "in_period"):
                value = fixed.get((task, j, k, method), math.nan)
                rows.append({**common, "method": method, "selection": "oracle" if method == "in_period" else "fixed",
                             "chosen_on": "", "alpha1": math.nan, "alpha2": math.nan, "alpha3": math.nan,
                             "value": value, "gain_vs_task_j": gain(value, task_j, higher),
                             "gain_vs_task_j_scaled": math.nan, "gain_vs_latest": gain(value, latest, higher),
                             "note": "" if not math.isnan(value) else "not in analogy_best"})
    return pd.DataFrame(rows, columns=ANALOGY_PROTOCOL_COLUMNS).astype(
        {"alpha1": "float64", "alpha2": "float64", "alpha3": "float64", "value": "float64", "higher_is_better": "bool"})
