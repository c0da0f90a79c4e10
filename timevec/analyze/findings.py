"""The verdict: one row per finding — what was measured, its 95 % interval, what the paper found, and
whether it holds here.

A researcher reading a study wants, in a minute, the answer to "did the paper's findings show up?",
not 80 numbers. Each row states an estimate with an interval and a three-valued verdict:

- ``yes``: the whole interval lies on the paper's side (e.g. the decay slope's interval is > 0);
- ``no``: the whole interval lies on the other side;
- ``unclear``: the interval straddles the line, or there is too little data (``n/a`` when the
  finding cannot be computed at all, with the reason in ``note``).

Intervals: Wilson score intervals for shares (own period best, interpolation beats both ends);
the regression's t interval for decay slopes; Fisher-z intervals for Pearson r (cells that share
vectors are not independent, so these are optimistic); Welch intervals for the stripe difference;
t intervals over middle periods / (j, k) pairs for adaptation gains and over held-out targets for
forecasts. Every adaptation finding is given per selection protocol (:mod:`timevec.adapt.selection`:
oracle, time-proportional, leave-one-out, past-only) and against the averaging controls (midpoint
α, uniform soup). They are intervals over test periods and cells of ONE run;
:mod:`timevec.train.replicates` draws intervals over seeds. Gains in macro-F1 / ROUGE-L are absolute
points (a percentage of a near-zero baseline means nothing); perplexity gains are percent.
Torch-free and Ray-free; built from :class:`timevec.analyze.analysis.Analysis` tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from timevec import results
from timevec.analyze.misalignment import NO_CYCLE

if TYPE_CHECKING:
    from timevec.analyze.analysis import Analysis

__all__ = ["COMPLETED", "FINDINGS_COLUMNS", "MATRIX_FINDINGS", "PAPER_CLAIMS", "PROTOCOL_WORDS", "findings_table",
           "format_findings", "mark_completed", "text_table", "verdict"]

#: ``line``/``side``: the verdict's threshold and the paper's side of it (``above``/``below``), kept so
#: that the same verdict can be drawn again over seeds (:mod:`timevec.train.replicates`).
#: The columns of the findings table (declared with its schema in :mod:`timevec.results`).
FINDINGS_COLUMNS = results.FINDINGS_COLUMNS

#: finding -> (the paper's result in a few words, for the table; the claim in full, for the report's legend)
PAPER_CLAIMS: dict[str, tuple[str, str]] = {
    "own period best": ("own best, ~all periods", "the own-period vector is best on (nearly) every test period"),
    "decay with the gap": ("slope > 0", "performance degrades roughly linearly with the gap between train and test period"),
    "cosine vs degradation": ("r < 0", "vectors that are more similar (cosine) degrade less on each other's period"),
    "12-month stripes": ("stripe < other", "monthly vectors 12, 24 … months apart degrade less than their neighbours"),
    "seasonal stripes": ("stripe < other (by analogy)",
                         "the monthly stripes at the granularity's own cycle: quarterly vectors 4, 8 … quarters apart, "
                         "weekly ones 52, 104 … ISO weeks apart, daily ones 7, 14 … days apart (the same weekday) degrade "
                         "less than their neighbours; the paper tested months only"),
    "interpolation beats both ends": ("most middle periods",
                                      "interpolating τ_first→τ_last beats both end vectors on the periods in between"),
    "interpolation vs latest vector": ("> 0; often ≤ 0 (Madaan 2025)",
                                       "Madaan, Chopra & Cho 2025 found it rarely beats the latest model once α is not an oracle"),
    "forecast vs latest vector": ("≤ 0 (Madaan 2025)",
                                  "a past-only forecast of a future period's weights is not expected to beat the latest "
                                  "vector (Madaan, Chopra & Cho 2025: without an oracle, combinations rarely beat the latest model)"),
    "analogy vs τ_task(j)": ("> 0", "the task analogy improves the task model of period j on period k"),
    "analogy vs τ_task(j) scaled": ("> 0", "the analogy adds something beyond scaling τ_task(j) alone"),
    "analogy vs latest vector": ("> 0", "the analogy beats simply using the latest task vector before k"),
    "group swap: gap share": ("not tested",
                              "the share of the gap between τ_j and the in-period τ_k on k that one parameter group "
                              "of τ_k closes when swapped into τ_j (1: all of it)"),
    "interpolation vs midpoint": ("not tested (> 0 = time)",
                                  "a time-aware α beats the fixed α = 0.5: the gain is time, not averaging"),
}


#: the side of the line the paper's result lies on, where it is not "above" (gains, slopes, shares)
_SIDES = {"cosine vs degradation": "below", "12-month stripes": "below", "seasonal stripes": "below",
          "forecast vs latest vector": "below"}


def verdict(low: float, high: float, line: float, paper_side: str) -> str:
    """``yes`` / ``no`` / ``unclear`` for an interval against ``line`` (paper_side ``above``/``below``)."""
    if math.isnan(low) or math.isnan(high):
        return "unclear"
    above, below = low > line, high < line
    if paper_side == "above":
        return "yes" if above else "no" if below else "unclear"
    return "yes" if below else "no" if above else "unclear"


def _wilson(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    x = np.asarray([v for v in values if not math.isnan(float(v))], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    if len(x) < 2 or np.ptp(x) == 0:
        return float(x.mean()), math.nan, math.nan
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    return float(x.mean()), float(ci.low), float(ci.high)


def _fmt(v: float, unit: str) -> str:
    if math.isnan(v):
        return "n/a"
    if unit == "share":
        return f"{v:.0%}"
    if unit == "%" or unit.startswith("% per "):
        return f"{v:+.2f}"
    return f"{v:+.3f}" if unit in ("r", "points") else f"{v:.3g}"


def _row(finding: str, panel: str, estimate: float, low: float, high: float, unit: str, holds: str,
         note: str = "", measured: str | None = None, line: float = 0.0, side: str | None = None) -> dict[str, Any]:
    if measured is None and math.isnan(estimate):
        measured = f"n/a: {note}" if note else "n/a"  # say why there is no number
    elif measured is None:
        interval = "" if math.isnan(low) else f" [{_fmt(low, unit)}, {_fmt(high, unit)}]"
        suffix = "" if unit in ("share", "r") else f" {unit}"
        measured = f"{_fmt(estimate, unit)}{interval}{suffix}"
    return {"finding": finding, "panel": panel, "estimate": estimate, "low": low, "high": high, "unit": unit,
            "measured": measured, "paper": PAPER_CLAIMS[finding][0], "holds": holds, "note": note,
            "line": float(line), "side": side or _SIDES.get(finding, "above")}


def _diagonal_rows(diagonal: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for r in diagonal.itertuples(index=False):
        k, n = int(r.n_diagonal_best), int(r.n_test_periods)
        if n == 0:
            continue
        low, high = _wilson(k, n)
        chance = 1.0 / n  # one of n vectors at random
        rows.append(_row("own period best", f"{r.task}/{r.granularity}", k / n, low, high, "share",
                         verdict(low, high, chance, "above"), f"chance {chance:.0%}",
                         measured=f"{k}/{n} [{low:.0%}, {high:.0%}]", line=chance))
    return rows


def _decay_rows(fit: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for r in fit.itertuples(index=False):
        unit = f"% per {r.granularity}"
        holds = "n/a" if math.isnan(float(r.slope)) else verdict(float(r.slope_low), float(r.slope_high), 0.0, "above")
        note = r.reason or f"R² {float(r.r2):.2f}, n {int(r.n)} cells"
        rows.append(_row("decay with the gap", f"{r.task}/{r.granularity}", float(r.slope), float(r.slope_low),
                         float(r.slope_high), unit, holds, note))
    return rows


def _similarity_rows(sim: dict[str, Any] | None) -> list[dict[str, Any]]:
    if sim is None:
        return []
    groups = [("all", sim)]
    by_group = sim.get("by_group")
    if by_group is not None and len(by_group) > 1:
        groups += [(f"{g['task']}/{g['granularity']}", g) for g in by_group.to_dict("records")]
    rows = []
    for panel, g in groups:
        r = float(g.get("pearson_r", math.nan))
        low, high = float(g.get("pearson_low", math.nan)), float(g.get("pearson_high", math.nan))
        holds = "n/a" if math.isnan(r) else verdict(low, high, 0.0, "below")
        rows.append(_row("cosine vs degradation", panel, r, low, high, "r", holds,
                         g.get("reason") or f"n {int(g.get('n', 0))} cells"))
    return rows


def _stripe_rows(stripes: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for r in stripes.itertuples(index=False):
        if r.reason == NO_CYCLE:
            continue
        d = float(r.difference)
        holds = "n/a" if math.isnan(d) else verdict(float(r.low), float(r.high), 0.0, "below")
        finding = "12-month stripes" if r.granularity == "month" else "seasonal stripes"
        rows.append(_row(finding, f"{r.task}/{r.granularity}", d, float(r.low), float(r.high), "points", holds,
                         r.reason or "degradation points, stripe − other"))
    return rows


#: protocol -> the words in a finding's panel
PROTOCOL_WORDS = {"oracle": "oracle α", "time_proportional": "time-proportional α", "leave_one_out": "leave-one-out α",
                   "midpoint": "midpoint α=0.5", "uniform_soup": "uniform soup", "past_only": "past-only α"}


def _gains(grp: pd.DataFrame, col: str, higher: bool) -> tuple[list[float], str]:
    """Absolute points for higher-is-better metrics, percent for perplexity (``col`` / ``col_pct``)."""
    column = col if higher else f"{col}_pct"
    return grp[column].astype(float).tolist(), "points" if higher else "%"


def _interpolation_rows(protocols: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Per (task, granularity, ends) and selection protocol: beats both ends, vs latest, vs averaging."""
    rows: list[dict[str, Any]] = []
    if protocols is None or protocols.empty:
        return rows
    for (task, gran, first, last), grp in protocols.groupby(["task", "granularity", "first", "last"], sort=False):
        higher = bool(grp["higher_is_better"].iloc[0])
        base_panel = f"{task}/{gran} {first}→{last}"
        for method in ("oracle", "time_proportional", "leave_one_out", "midpoint", "uniform_soup"):
            sel = grp.loc[(grp["method"] == method) & grp["value"].notna()]
            if sel.empty:
                continue
            panel = f"{base_panel} · {PROTOCOL_WORDS[method]}"
            n_periods = len(sel)
            if method != "uniform_soup":
                k = int(sel["beats_both_ends"].sum())
                low, high = _wilson(k, n_periods)
                alphas = ", ".join(f"{a:.1f}" for a in sel["alpha"])
                rows.append(_row("interpolation beats both ends", panel, k / n_periods, low, high, "share",
                                 verdict(low, high, 0.5, "above"), f"α {alphas}; {sel['selection'].iloc[0]}",
                                 measured=f"{k}/{n_periods} [{low:.0%}, {high:.0%}]", line=0.5, side="above"))
            gains, unit = _gains(sel, "gain_vs_latest", higher)
            mean, glow, ghigh = _mean_ci(gains)
            rows.append(_row("interpolation vs latest vector", panel, mean, glow, ghigh, unit,
                             verdict(glow, ghigh, 0.0, "above"), f"mean over {n_periods} middle periods"))
            if method in ("oracle", "time_proportional"):  # is a time-aware α more than averaging?
                gains, unit = _gains(sel, "gain_vs_midpoint", higher)
                mean, glow, ghigh = _mean_ci(gains)
                if not math.isnan(mean):
                    rows.append(_row("interpolation vs midpoint", panel, mean, glow, ghigh, unit,
                                     verdict(glow, ghigh, 0.0, "above"),
                                     "> 0: a time-aware α beats α = 0.5; ≤ 0: the gain is averaging"))
    return rows


def _forecast_rows(forecast: pd.DataFrame | None) -> list[dict[str, Any]]:
    """One row per (task, forecast method) one period ahead: the mean gain over the held-out targets."""
    rows: list[dict[str, Any]] = []
    if forecast is None or forecast.empty:
        return rows
    ahead = forecast.loc[(forecast["horizon"] == 1) & (forecast["split"] == "test") & (forecast["selection"] == "past-only")
                         & ~forecast["method"].isin(["latest", "base"])]
    for (task, method), grp in ahead.groupby(["task", "method"], sort=True):
        higher = bool(grp["higher_is_better"].iloc[0])
        column = "gain_vs_latest" if higher else "gain_vs_latest_pct"
        gains = grp[column]
        mean, low, high = _mean_ci(gains.astype(float).tolist())
        n = int(gains.notna().sum())
        how = "" if n > 1 else ": no interval"
        if n == 1 and f"{column}_low" in grp and not math.isnan(float(grp[f"{column}_low"].iloc[0])):
            low, high = float(grp[f"{column}_low"].iloc[0]), float(grp[f"{column}_high"].iloc[0])
            how = ": paired bootstrap over its test examples"
        rows.append(_row("forecast vs latest vector", f"{task} {method}", mean, low, high, "points" if higher else "%",
                         "n/a" if math.isnan(mean) else verdict(low, high, 0.0, "below"),
                         f"past-only; δ = 1; {n} target(s){how}"))
    return rows


def _swap_rows(swaps: pd.DataFrame | None) -> list[dict[str, Any]]:
    """One row per (task, group): the gap share, mean over the (j, k) pairs, with the cells' paired
    bootstrap interval (one pair: its interval; several: the mean of their bounds, which is at
    least as wide as the interval of the mean when the pairs' test splits are independent)."""
    rows: list[dict[str, Any]] = []
    if swaps is None or swaps.empty or "gap_share_low" not in swaps:
        return rows
    for (task, group), grp in swaps.dropna(subset=["gap_share"]).groupby(["task", "group"], sort=True):
        n = len(grp)
        low, high = float(grp["gap_share_low"].mean()), float(grp["gap_share_high"].mean())
        rows.append(_row("group swap: gap share", f"{task} {group}", float(grp["gap_share"].mean()), low, high, "share",
                         "n/a" if math.isnan(low) else verdict(low, high, 0.0, "above"),
                         f"{n} (j, k) pair(s); paired bootstrap over k's test examples"
                         + ("" if n == 1 else ", bounds averaged over pairs")))
    return rows


def _analogy_rows(protocols: pd.DataFrame | None) -> list[dict[str, Any]]:
    """Per task and selection (oracle, past-only): the analogy vs τ_task(j), τ_task(j) scaled, the latest."""
    rows: list[dict[str, Any]] = []
    if protocols is None or protocols.empty:
        return rows
    analogy = protocols.loc[protocols["method"] == "analogy"]
    for (task, selection), grp in analogy.groupby(["task", "selection"], sort=True):
        panel = f"{task} · {PROTOCOL_WORDS[selection]}"
        how = ("α chosen on k's validation labels (oracle)" if selection == "oracle"
               else "α chosen on the previous pair (j, k′ < k): k's labels unused")
        for col, finding in (("gain_vs_task_j", "analogy vs τ_task(j)"),
                             ("gain_vs_task_j_scaled", "analogy vs τ_task(j) scaled"),
                             ("gain_vs_latest", "analogy vs latest vector")):
            values = grp[col].astype(float)
            n = int(values.notna().sum())
            if n == 0:
                continue
            mean, low, high = _mean_ci(values.tolist())
            rows.append(_row(finding, panel, mean, low, high, "points",
                             "n/a" if math.isnan(mean) else verdict(low, high, 0.0, "above"), f"{how}; {n} (j, k) pairs"))
    return rows


#: The findings read off the train × test matrix of cells: on a completed matrix (``evaluation.design: band``) they
#: say so (:func:`mark_completed`).
MATRIX_FINDINGS = ("own period best", "decay with the gap", "cosine vs degradation", "12-month stripes",
                   "seasonal stripes")
COMPLETED = "completed matrix"


def mark_completed(findings: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The findings, each one read off the matrix noting ``completed matrix: k of n cells estimated`` when the
    complete stage estimated k of its n cells (:mod:`timevec.analyze.completion`); unchanged when every cell was
    evaluated."""
    vectors = cells[cells["vector"] != "base"]
    estimated = int(vectors["estimated"].sum()) if "estimated" in vectors else 0
    if not estimated:
        return findings
    text = f"{COMPLETED}: {estimated} of {len(vectors)} cells estimated (evaluation.design)"
    rows = findings["finding"].isin(MATRIX_FINDINGS)
    notes = findings.loc[rows, "note"].fillna("").astype(str)
    marked = findings.copy()
    marked.loc[rows, "note"] = [f"{n}; {text}" if n else text for n in notes]
    return marked


def findings_table(analysis: Analysis) -> pd.DataFrame:
    """Every finding the available tables support, as rows of :data:`FINDINGS_COLUMNS`."""
    rows = [
        *_diagonal_rows(analysis.diagonal),
        *_decay_rows(analysis.decay.fit),
        *_similarity_rows(analysis.sim_vs_deg),
        *_stripe_rows(analysis.stripes),
        *_interpolation_rows(analysis.interpolation_protocols),
        *_analogy_rows(analysis.analogy_protocols),
        *_forecast_rows(getattr(analysis, "forecast", None)),
        *_swap_rows(getattr(analysis, "group_swaps", None)),
    ]
    return pd.DataFrame(rows, columns=FINDINGS_COLUMNS)


def format_findings(findings: pd.DataFrame) -> str:
    """The findings as a compact plain-text table (no colour codes): finding | panel | measured | paper | holds."""
    if findings.empty:
        return "no findings: the store holds no cells yet"
    cols = ["finding", "panel", "measured", "paper", "holds"]
    return "\n".join(text_table(cols, [[str(r[c]) for c in cols] for r in findings.to_dict("records")]))


def text_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Plain-text columns, two spaces apart, a dashed rule under the header (the terminal's tables)."""
    cells = [list(header), *map(list, body)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
