"""Summaries of the adaptation tables: the best interpolation α per period, the analogy vs its baselines.

ONE implementation each, used by the interpolation stage (``interpolation_best.parquet``, the
terminal), the analysis (headline) and the report, so that "beats both ends" has one rule:
:func:`timevec.evaluate.gains.better` — NaN-aware, strict. Torch-free and Ray-free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from timevec.adapt.selection import best_alpha
from timevec.evaluate.gains import better, gain, gain_pct, higher_is_better
from timevec.periods import Period, latest_before, sort_periods
from timevec.results import ANALOGY_METHODS, INTERPOLATION_BEST_COLUMNS, alpha_key, cell_values, with_split

__all__ = ["ANALOGY_BASELINES", "analogy_summary", "interpolation_best"]

#: What the analogy's best point is compared with (every method of ``analogy_best`` but itself).
ANALOGY_BASELINES = tuple(m for m in ANALOGY_METHODS if m != "analogy")


def _time_key(series: pd.Series) -> pd.Series:
    return series.map(Period.parse) if series.name in ("first", "last", "test_period") else series


def interpolation_best(interp: pd.DataFrame | None, cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per MIDDLE test period (strictly between the ends): the oracle α and what it gains.

    The α is chosen on the period's VALIDATION split (``selected_on``; the target's own labels: the
    ``oracle`` protocol of :mod:`timevec.adapt.selection`) and reported on its test split; a table from
    before validation rows existed is selected on test (``selected_on`` says so).

    Columns :data:`~timevec.results.INTERPOLATION_BEST_COLUMNS`; every ``gain_*`` is positive when
    the best interpolation is better than that baseline. Ends: α = 0 (τ_first) and α = 1 (τ_last).
    The LATEST vector is τ_last (the latest stored period), reported again under its own name
    because that is the comparison that decides whether interpolating is worth it
    (arXiv 2509.23487). ``in_period`` (the oracle τ_test), ``previous`` (the latest vector before
    the test period) and ``base`` come from the cells table when given, NaN otherwise. A period
    whose every α is NaN is left out.
    """
    rows: list[dict[str, Any]] = []
    known = cell_values(cells)
    if interp is not None and not interp.empty:
        stored_by: dict[tuple[str, str], list[str]] = {}
        if cells is not None and not cells.empty:
            trained = cells.loc[cells["vector"].astype(str) != "base"]
            for (task, gran), grp in trained.groupby(["task", "granularity"]):
                stored_by[(task, gran)] = sort_periods(grp["train_period"].dropna().astype(str))
        keys = ["task", "granularity", "first", "last", "test_period", "metric"]
        for (task, gran, first, last, test, metric), both in with_split(interp).groupby(keys, sort=False):
            first, last, test = str(first), str(last), str(test)
            if not Period.parse(first) < Period.parse(test) < Period.parse(last):
                continue
            higher = bool(both["higher_is_better"].iloc[0]) if "higher_is_better" in both else higher_is_better(metric)
            grp = both.loc[both["split"] == "test"].sort_values("alpha")
            alphas = grp["alpha"].to_numpy(dtype=float)
            values = grp["value"].to_numpy(dtype=float)
            if np.isnan(values).all():
                continue
            val = both.loc[both["split"] == "validation"]
            selected_on = "validation" if val["value"].notna().any() else "test"
            chooser = val if selected_on == "validation" else grp
            chosen = best_alpha({alpha_key(a): float(v) for a, v in zip(chooser["alpha"], chooser["value"])}, higher)
            hits = np.flatnonzero(np.isclose(alphas, chosen))
            if not len(hits):
                continue
            i = int(hits[0])
            best = float(values[i])

            def at(alpha: float, alphas: np.ndarray = alphas, values: np.ndarray = values) -> float:
                hit = np.isclose(alphas, alpha)
                return float(values[hit][0]) if hit.any() else math.nan

            v0, v1 = at(0.0), at(1.0)
            own = known.get((task, gran, test, test), math.nan)
            base = known.get((task, gran, "base", test), math.nan)
            previous = latest_before(test, stored_by.get((task, gran), []))
            prev_value = known.get((task, gran, previous, test), math.nan) if previous else math.nan
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
                "base_value": base, "selected_on": selected_on,
            })
    out = pd.DataFrame(rows, columns=INTERPOLATION_BEST_COLUMNS)
    if not out.empty:
        out = out.sort_values(["task", "granularity", "first", "last", "test_period"], key=_time_key).reset_index(drop=True)
    return out


def analogy_summary(analogy: pd.DataFrame | None) -> pd.DataFrame:
    """The analogy's best point against every baseline, per (task, j, k, split), from ``analogy_best``.

    The baselines that matter most are ``task_j_scaled`` (much of the published analogy gain comes
    from scaling the task vector alone) and ``latest``. Gains are positive when the analogy is
    better, in metric units and in percent of the baseline.
    """
    if analogy is None or analogy.empty:
        return pd.DataFrame(columns=["task", "source_period", "target_period", "split", "metric",
                                     "higher_is_better", "analogy", *ANALOGY_BASELINES])
    keys = ["task", "source_period", "target_period", "split", "metric"]
    wide = analogy.pivot_table(index=keys, columns="method", values="value", aggfunc="first").reset_index()
    wide.columns.name = None
    wide["higher_is_better"] = [higher_is_better(m) for m in wide["metric"]]
    for m in ("analogy", *ANALOGY_BASELINES):
        if m not in wide.columns:
            wide[m] = np.nan
    for b in ANALOGY_BASELINES:
        wide[f"gain_vs_{b}"] = [gain(a, v, h) for a, v, h in zip(wide["analogy"], wide[b], wide["higher_is_better"])]
        wide[f"gain_vs_{b}_pct"] = [gain_pct(a, v, h) for a, v, h in zip(wide["analogy"], wide[b], wide["higher_is_better"])]
    best = analogy.loc[analogy["method"] == "analogy", [*keys, "alpha1", "alpha2", "alpha3"]]
    if not best.empty:
        wide = wide.merge(best.drop_duplicates(subset=keys), on=keys, how="left")
    return wide.reset_index(drop=True)
