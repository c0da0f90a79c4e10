"""Temporal misalignment: the all-pairs cells as relative change, the diagonal, decay with the gap, stripes.

The paper's first finding (Nylund et al. 2023, §3): a model does best on its own period and
degrades roughly linearly with the gap; monthly models show 12-month stripes (and quarters, ISO weeks and
days the stripes of their own cycle: :func:`stripe_test`). Pure functions of
the cells table, so that the same numbers come out of a laptop and a cluster, each testable on a
hand-computed case. Torch-free and Ray-free.

Sign conventions (used by every function and figure):

* ``pct_change`` is the paper's relative change of a cell against the mean of its test period
  (the column mean over all trained vectors), in percent, in the metric's own direction.
* ``degradation_pct`` is ``pct_change`` signed so that POSITIVE means WORSE whatever the metric:
  perplexity keeps its sign, macro-F1 and ROUGE-L are negated. Comparisons across tasks, decay fits
  and correlations use it so that a single reading ("up is bad") holds everywhere.
* ``gap`` is ``test_period - train_period`` in the granularity's steps (years, quarters, months, weeks, days); a positive
  gap means the model is evaluated on a later period than it was trained on.
* ``gain*`` columns are improvements: POSITIVE means BETTER than the baseline they name.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from timevec.periods import CYCLE, Period, sort_periods

log = logging.getLogger(__name__)

GROUP = ["task", "granularity", "metric"]  # one all-pairs matrix

__all__ = ["GROUP", "NO_CYCLE", "DecayFit", "decay_fit", "diagonal_summary", "relative_change", "stripe_test"]


def _period_gap(train: str, test: str) -> float:
    """Signed gap test − train; NaN when the two cannot be compared (two granularities: a year vs a month)."""
    try:
        return float(Period.parse(train).distance(test))
    except ValueError:
        return math.nan


def _trained(cells: pd.DataFrame) -> pd.DataFrame:
    """Rows of trained single vectors (the base row and any row without a train period dropped)."""
    mask = cells["train_period"].notna()
    if "vector" in cells.columns:
        mask &= cells["vector"].astype(str) != "base"
    return cells.loc[mask].copy()




def relative_change(cells: pd.DataFrame) -> pd.DataFrame:
    """The all-pairs cells of trained vectors with the paper's relative change added.

    The column mean (over every trained vector evaluated on one test period) is the reference
    because test periods differ in difficulty: a raw perplexity of 30 is good on one year and bad on
    another, while "x% worse than the average model on this year" is comparable across years.

    Adds ``column_mean``, ``pct_change`` (metric direction), ``degradation_pct`` (positive = worse)
    and ``gap`` (test − train in the granularity's steps). The base row is excluded: it is not one of the
    vectors whose misalignment is being measured.
    """
    rel = _trained(cells)
    if rel.empty:
        out = rel.copy()
        for col in ("column_mean", "pct_change", "degradation_pct", "gap"):
            out[col] = pd.Series(dtype=float)
        return out
    rel["train_period"] = rel["train_period"].astype(str)
    rel["test_period"] = rel["test_period"].astype(str)
    rel["value"] = rel["value"].astype(float)
    keys = ["task", "granularity", "metric", "test_period"]
    rel["column_mean"] = rel.groupby(keys, dropna=False)["value"].transform("mean")
    mean = rel["column_mean"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = (rel["value"].to_numpy(dtype=float) - mean) / mean * 100.0
    pct = np.where(mean != 0, pct, np.nan)
    rel["pct_change"] = pct
    higher = rel["higher_is_better"].astype(bool).to_numpy()
    rel["degradation_pct"] = np.where(higher, -pct, pct)
    rel["gap"] = [_period_gap(a, b) for a, b in zip(rel["train_period"], rel["test_period"])]
    n_bad = int(np.isnan(rel["gap"]).sum())
    if n_bad:
        log.warning("%d cells mix two granularities (e.g. a year and a month) in train/test period; their gap is NaN", n_bad)
    return rel.reset_index(drop=True)


def diagonal_summary(rel: pd.DataFrame) -> pd.DataFrame:
    """Per (task, granularity, metric): how often a test period's best vector is its own period.

    This is the paper's first finding (the diagonal of the all-pairs matrix is best). Only test
    periods that HAVE an own-period vector count, so a test-only period cannot dilute the share.
    Columns: ``n_test_periods``, ``n_diagonal_best``, ``diagonal_share``,
    ``mean_diagonal_degradation_pct``, ``mean_offdiagonal_degradation_pct``, ``best_not_own``
    (comma-separated test periods whose best vector is another period's), ``n_separated`` and
    ``separated``: the test periods (count, comma-separated) whose own-period vector is best AND
    its bootstrap interval (the cells' ``low``/``high``) does not overlap the runner-up's — the
    win is larger than the test split's sampling error. Cells without bounds (none computed, or a
    table from before they existed) are never separated.
    """
    rows: list[dict[str, Any]] = []
    if rel.empty:
        return pd.DataFrame(columns=[*GROUP, "n_test_periods", "n_diagonal_best", "diagonal_share",
                                     "mean_diagonal_degradation_pct",
                                     "mean_offdiagonal_degradation_pct", "best_not_own", "n_separated", "separated"])
    for (task, gran, metric), grp in rel.groupby(GROUP, sort=True):
        n_test = 0
        n_best = 0
        not_own: list[str] = []
        separated: list[str] = []
        for test, col in grp.groupby("test_period"):
            col = col.dropna(subset=["degradation_pct"])
            if col.empty or not (col["train_period"] == test).any():
                continue
            n_test += 1
            own = float(col.loc[col["train_period"] == test, "degradation_pct"].min())
            # a tie counts for the diagonal: the own vector is (one of) the best
            if own <= float(col["degradation_pct"].min()):
                n_best += 1
                if _separated(col.sort_values("degradation_pct", kind="stable")):
                    separated.append(str(test))
            else:
                not_own.append(str(test))
        diag = grp.loc[grp["gap"] == 0, "degradation_pct"]
        off = grp.loc[grp["gap"] != 0, "degradation_pct"]
        rows.append({
            "task": task, "granularity": gran, "metric": metric,
            "n_test_periods": n_test, "n_diagonal_best": n_best,
            "diagonal_share": n_best / n_test if n_test else math.nan,
            "mean_diagonal_degradation_pct": float(diag.mean()) if len(diag) else math.nan,
            "mean_offdiagonal_degradation_pct": float(off.mean()) if len(off) else math.nan,
            "best_not_own": ",".join(sort_periods(not_own)) if not_own else "",
            "n_separated": len(separated), "separated": ",".join(sort_periods(separated)),
        })
    return pd.DataFrame(rows)


def _separated(ranked: pd.DataFrame) -> bool:
    """Whether the best cell's interval (first row) is disjoint from the runner-up's (second row)."""
    if len(ranked) < 2 or "low" not in ranked or "high" not in ranked:
        return False
    (low1, high1), (low2, high2) = ranked[["low", "high"]].to_numpy(dtype=float)[:2]
    if np.isnan([low1, high1, low2, high2]).any():
        return False
    return bool(high1 < low2 or high2 < low1)


class DecayFit(NamedTuple):
    """The two tables of :func:`decay_fit` (a NamedTuple so it unpacks as ``by_gap, fit``)."""

    by_gap: pd.DataFrame
    fit: pd.DataFrame


def decay_fit(rel: pd.DataFrame) -> DecayFit:
    """Degradation against the absolute gap, per (task, granularity, metric), with a linear fit.

    The paper reports that yearly performance decays near-linearly with the gap; the slope
    (percent degradation per step of the granularity: per year, month, week, …), intercept and R²
    quantify that claim on our data.
    The fit runs on every off- and on-diagonal cell (not on the per-gap means) so that ``n`` and
    ``p`` reflect the real number of observations. A group with fewer than 3 cells or a single
    distinct gap cannot be
    fitted: its numbers are NaN and ``reason`` says why.

    Returns ``DecayFit(by_gap, fit)``: ``by_gap`` has (task, granularity, metric, abs_gap,
    mean_degradation_pct, std_degradation_pct, n); ``fit`` has (task, granularity, metric, slope,
    intercept, r2, r, p, stderr, n, n_gaps, max_gap, reason).
    """
    by_gap_rows: list[pd.DataFrame] = []
    fit_rows: list[dict[str, Any]] = []
    data = rel.dropna(subset=["degradation_pct", "gap"]) if not rel.empty else rel
    for (task, gran, metric), grp in (data.groupby(GROUP, sort=True) if not data.empty else []):
        g = grp.assign(abs_gap=grp["gap"].abs().astype(int))
        agg = g.groupby("abs_gap")["degradation_pct"].agg(["mean", "std", "count"]).reset_index()
        agg.columns = ["abs_gap", "mean_degradation_pct", "std_degradation_pct", "n"]
        agg.insert(0, "metric", metric)
        agg.insert(0, "granularity", gran)
        agg.insert(0, "task", task)
        by_gap_rows.append(agg)
        x = g["abs_gap"].to_numpy(dtype=float)
        y = g["degradation_pct"].to_numpy(dtype=float)
        row: dict[str, Any] = {"task": task, "granularity": gran, "metric": metric,
                               "slope": math.nan, "slope_low": math.nan, "slope_high": math.nan,
                               "intercept": math.nan, "r2": math.nan,
                               "r": math.nan, "p": math.nan, "stderr": math.nan,
                               "n": int(len(x)), "n_gaps": int(len(np.unique(x))),
                               "max_gap": int(x.max()) if len(x) else 0, "reason": ""}
        if len(x) < 3:
            row["reason"] = f"only {len(x)} cells; a fit needs at least 3"
        elif len(np.unique(x)) < 2:
            row["reason"] = "a single distinct gap; no slope to fit"
        else:
            res = stats.linregress(x, y)
            row.update(slope=float(res.slope), intercept=float(res.intercept),
                       r=float(res.rvalue), r2=float(res.rvalue ** 2), p=float(res.pvalue),
                       stderr=float(res.stderr))
            if len(x) > 2:  # the slope's 95 % interval (t with n − 2 degrees of freedom)
                half = float(stats.t.ppf(0.975, len(x) - 2)) * float(res.stderr)
                row.update(slope_low=row["slope"] - half, slope_high=row["slope"] + half)
        fit_rows.append(row)
    by_gap = (pd.concat(by_gap_rows, ignore_index=True) if by_gap_rows else pd.DataFrame(
        columns=[*GROUP, "abs_gap", "mean_degradation_pct", "std_degradation_pct", "n"]))
    fit = pd.DataFrame(fit_rows, columns=[*GROUP, "slope", "slope_low", "slope_high", "intercept", "r2", "r", "p",
                                          "stderr", "n", "n_gaps", "max_gap", "reason"])
    return DecayFit(by_gap, fit)


#: the reason of a task's row when none of its cells has a granularity with a cycle (only years)
NO_CYCLE = "no monthly cells"


def stripe_test(rel: pd.DataFrame, window: int = 3, period: int | None = None) -> pd.DataFrame:
    """Are models better on test periods a whole cycle away? (the paper's monthly stripes, per granularity)

    Each granularity has its own cycle (:data:`timevec.periods.CYCLE`): 12 months, 4 quarters, 52 ISO
    weeks, 7 days (the weekdays); ``period`` overrides it. A year has none: a task with only yearly
    cells gets one row whose reason says so (``no monthly cells``). Weeks: an ISO year has 52 or 53
    weeks, so the same week number one year on is 52 or 53 weeks away; the stripes are the gaps that
    are multiples of 52 (a 53-week year shifts the next stripe by one week, which the neighbours'
    window absorbs only as noise — a fixed cycle keeps the test the same test in every year).

    For each (task, granularity with a cycle, metric) group, cells whose |gap| is a positive multiple
    of the cycle are compared with cells at neighbouring gaps (within ``window`` steps of such a
    multiple, the multiples themselves excluded; the window stays under half the cycle, so 1 for
    quarters). Restricting the comparison to neighbours matters because degradation grows with the
    gap: comparing with ALL other gaps would mix the seasonal effect with the overall decay. A
    multiple is used only when the data has gaps on both sides of it, so the neighbourhood is
    symmetric and the decay trend cancels; data spanning less than one cycle and a bit is not tested
    (the row's reason says so).

    ``difference`` = mean_stripe − mean_other in degradation points (NEGATIVE = the stripe periods
    are better, i.e. seasonal similarity); ``p`` is Welch's t-test (unequal variances). Groups with
    too little data get NaN and a ``reason``; yearly-only tasks get a row saying so.
    """
    cols = ["task", "granularity", "metric", "stripe_gaps", "n_stripe", "n_other", "mean_stripe",
            "mean_other", "difference", "low", "high", "t", "p", "window", "reason"]
    rows: list[dict[str, Any]] = []
    if rel.empty:
        return pd.DataFrame(columns=cols)
    data = rel.dropna(subset=["degradation_pct", "gap"])
    cyclic = data.loc[data["granularity"].map(lambda g: CYCLE.get(g) is not None)]
    for task in sorted(set(rel["task"]) - set(cyclic["task"])):
        rows.append({"task": task, "granularity": "month", "metric": "", "stripe_gaps": "",
                     "n_stripe": 0, "n_other": 0, "mean_stripe": math.nan, "mean_other": math.nan,
                     "difference": math.nan, "low": math.nan, "high": math.nan, "t": math.nan, "p": math.nan, "window": window,
                     "reason": NO_CYCLE})
    for (task, granularity, metric), grp in (cyclic.groupby(["task", "granularity", "metric"], sort=True)
                                             if not cyclic.empty else []):
        rows.append(_stripe_row(grp, task, granularity, metric, window, period or CYCLE[granularity] or 0))
    return pd.DataFrame(rows, columns=cols)


def _stripe_row(grp: pd.DataFrame, task: str, granularity: str, metric: str, window: int, period: int) -> dict[str, Any]:
    """The stripe test of one (task, granularity, metric) group at cycle ``period``."""
    window = max(1, min(window, (period - 1) // 2))  # under half a cycle: each neighbour is nearest its own multiple
    abs_gap = grp["gap"].abs().astype(int).to_numpy()
    deg = grp["degradation_pct"].to_numpy(dtype=float)
    present = set(abs_gap.tolist())
    max_gap = max(present) if present else 0
    multiples = [m for m in range(period, max_gap + 1, period)
                 if m in present
                 and any(m - d in present for d in range(1, window + 1))
                 and any(m + d in present for d in range(1, window + 1))]
    row: dict[str, Any] = {"task": task, "granularity": granularity, "metric": metric,
                           "stripe_gaps": ",".join(map(str, multiples)), "n_stripe": 0,
                           "n_other": 0, "mean_stripe": math.nan, "mean_other": math.nan,
                           "difference": math.nan, "low": math.nan, "high": math.nan, "t": math.nan,
                           "p": math.nan, "window": window, "reason": ""}
    if not multiples:
        row["reason"] = (f"no |gap| that is a multiple of {period} with neighbours on both "
                         f"sides (max |gap| {max_gap})")
        return row
    stripe_mask = np.isin(abs_gap, multiples)
    near = np.zeros_like(stripe_mask)
    for m in multiples:
        near |= (np.abs(abs_gap - m) <= window) & (abs_gap % period != 0)
    s, o = deg[stripe_mask], deg[near]
    row.update(n_stripe=int(len(s)), n_other=int(len(o)),
               mean_stripe=float(s.mean()) if len(s) else math.nan,
               mean_other=float(o.mean()) if len(o) else math.nan)
    row["difference"] = row["mean_stripe"] - row["mean_other"]
    if len(s) < 2 or len(o) < 2:
        row["reason"] = f"too few cells for a t-test ({len(s)} stripe, {len(o)} other)"
    elif np.var(s) == 0 and np.var(o) == 0:
        row["reason"] = "no variance in either group; t-test undefined"
    else:
        res = stats.ttest_ind(s, o, equal_var=False)
        ci = res.confidence_interval(0.95)  # of mean_stripe − mean_other (Welch)
        row.update(t=float(res.statistic), p=float(res.pvalue), low=float(ci.low), high=float(ci.high))
    return row
