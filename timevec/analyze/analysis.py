"""The analysis stage: every finding computed once from the tables, and the headline that states them.

:func:`analyze` runs the misalignment (:mod:`timevec.analyze.misalignment`), structure
(:mod:`timevec.analyze.similarity`) and adaptation summaries (:mod:`timevec.adapt.summaries`) on whatever tables
exist — a partial study still gets every number it can support — and :func:`headline` flattens
the key numbers; :mod:`timevec.analyze.findings` turns them into one verdict per finding, with intervals,
for the terminal and the report. Torch-free and Ray-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from timevec.adapt.selection import analogy_protocols, interpolation_protocols
from timevec.adapt.summaries import analogy_summary, interpolation_best
from timevec.analyze.findings import findings_table
from timevec.analyze.misalignment import NO_CYCLE, DecayFit, decay_fit, diagonal_summary, relative_change, stripe_test
from timevec.analyze.similarity import Key, grouped_similarity, similarity_table, similarity_vs_degradation
from timevec.periods import CYCLE

__all__ = ["Analysis", "analyze", "headline"]




def _num(x: Any) -> float | None:
    """A JSON/print-friendly number: NaN becomes None so callers never print a bare 'nan'."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else round(v, 4)


def headline(*, diagonal: pd.DataFrame | None = None,
             decay: DecayFit | pd.DataFrame | None = None,
             similarity: dict[str, Any] | None = None,
             similarity_centred: dict[str, Any] | None = None,
             stripes: pd.DataFrame | None = None, interpolation: pd.DataFrame | None = None,
             analogy: pd.DataFrame | None = None) -> dict[str, Any]:
    """The key findings as a flat ``{label: number or short text}`` dict, to print or tabulate.

    Flat on purpose: the CLI prints it line by line and the report renders it as a two-column
    table, and both stay readable without knowing the nesting. Missing inputs are simply left out;
    undefined numbers are ``None`` (with the reason alongside) rather than NaN.
    """
    out: dict[str, Any] = {}
    if diagonal is not None:
        for r in diagonal.itertuples(index=False):
            p = f"{r.task}/{r.granularity}"
            out[f"{p} own period best"] = f"{r.n_diagonal_best}/{r.n_test_periods} test periods"
            out[f"{p} diagonal share"] = _num(r.diagonal_share)
            out[f"{p} diagonal mean degradation %"] = _num(r.mean_diagonal_degradation_pct)
    if decay is not None:
        fit = decay.fit if isinstance(decay, DecayFit) else decay
        for r in fit.itertuples(index=False):
            p = f"{r.task}/{r.granularity}"
            out[f"{p} decay slope % per {r.granularity}"] = _num(r.slope)
            out[f"{p} decay R²"] = _num(r.r2)
            out[f"{p} decay p"] = _sig(r.p)
            out[f"{p} decay n"] = int(r.n)
            if r.reason:
                out[f"{p} decay note"] = r.reason
    for label, sim in (("cosine vs degradation", similarity),
                       ("centred cosine vs degradation", similarity_centred)):
        if sim is None:
            continue
        out[f"{label} Pearson r"] = _num(sim.get("pearson_r"))
        out[f"{label} Pearson p"] = _sig(sim.get("pearson_p"))
        out[f"{label} Spearman rho"] = _num(sim.get("spearman_rho"))
        out[f"{label} n"] = int(sim.get("n", 0))
        if sim.get("reason"):
            out[f"{label} note"] = sim["reason"]
        by_group = sim.get("by_group")
        if by_group is not None and len(by_group) > 1:
            for r in by_group.itertuples(index=False):
                out[f"{r.task}/{r.granularity} {label} Pearson r"] = _num(r.pearson_r)
                out[f"{r.task}/{r.granularity} {label} Pearson p"] = _sig(r.pearson_p)
    if stripes is not None and len(stripes):
        if (stripes["reason"] == NO_CYCLE).all():
            out["12-month stripes"] = f"n/a: {NO_CYCLE}"
        for r in stripes.itertuples(index=False):
            p = f"{r.task}/{r.granularity}"
            if r.reason == NO_CYCLE:
                continue  # a yearly-only task: said once above when no task has a granularity with a cycle
            label = f"{CYCLE[r.granularity]}-{r.granularity} stripe"  # "12-month stripe", "52-week stripe"
            if r.reason and math.isnan(float(r.difference)):
                out[f"{p} {label}s"] = f"n/a: {r.reason}"
                continue
            out[f"{p} {label} difference (degradation points)"] = _num(r.difference)
            out[f"{p} {label} p"] = _sig(r.p)
            if r.reason:
                out[f"{p} {label} note"] = r.reason
    if interpolation is not None and not interpolation.empty:
        for (task, gran, first, last), grp in interpolation.groupby(
                ["task", "granularity", "first", "last"], sort=False):
            p = f"{task}/{gran} {first}→{last}"
            out[f"{p} best α by period"] = ", ".join(
                f"{t}: {a:.1f}" for t, a in zip(grp["test_period"], grp["best_alpha"]))
            out[f"{p} beats both ends"] = (f"{int(grp['beats_both_ends'].sum())}/{len(grp)} "
                                          "periods")
            out[f"{p} mean gain vs latest %"] = _num(grp["gain_vs_last_pct"].mean())
            if grp["gain_vs_in_period_pct"].notna().any():
                out[f"{p} mean gain vs in-period %"] = _num(grp["gain_vs_in_period_pct"].mean())
    if analogy is not None and not analogy.empty:
        split = "test" if (analogy["split"] == "test").any() else analogy["split"].iloc[0]
        a = analogy.loc[analogy["split"] == split]
        for task, grp in a.groupby("task", sort=True):
            for b in ("task_j", "task_j_scaled", "latest"):
                col = f"gain_vs_{b}_pct"
                if col in grp and grp[col].notna().any():
                    out[f"{task} analogy gain vs {b} % ({split}, mean of {len(grp)})"] = _num(
                        grp[col].mean())
    return out


def _sig(p: Any) -> float | None:
    """p-values keep 3 significant digits (rounding 1e-7 to 0 would overstate certainty)."""
    try:
        v = float(p)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else float(f"{v:.3g}")


class Analysis(NamedTuple):
    """Every analysis table, computed once and shared by the CLI and the report."""

    rel: pd.DataFrame
    diagonal: pd.DataFrame
    decay: DecayFit
    stripes: pd.DataFrame
    similarity: pd.DataFrame | None
    similarity_centred: pd.DataFrame | None  # within (task, granularity), mean τ of each removed
    sim_vs_deg: dict[str, Any] | None
    sim_vs_deg_centred: dict[str, Any] | None
    interpolation: pd.DataFrame
    analogy: pd.DataFrame
    headline: dict[str, Any]
    findings: pd.DataFrame  # the verdict per finding (timevec.analyze.findings)
    interpolation_protocols: pd.DataFrame | None = None  # timevec.adapt.selection, one row per protocol/baseline
    analogy_protocols: pd.DataFrame | None = None
    forecast: pd.DataFrame | None = None  # results/forecast.parquet as given (timevec.adapt.forecast)
    group_swaps: pd.DataFrame | None = None  # results/group_swaps.parquet as given (timevec.adapt.group_swaps)


def analyze(cells: pd.DataFrame, gram: np.ndarray | None = None,
            keys: Sequence[Key] | None = None, interpolation: pd.DataFrame | None = None,
            analogy: pd.DataFrame | None = None, soups: pd.DataFrame | None = None,
            analogy_grid: pd.DataFrame | None = None, forecast: pd.DataFrame | None = None,
            group_swaps: pd.DataFrame | None = None) -> Analysis:
    """Run every analysis on the available tables (the Gram matrix and the optional tables may be
    absent: a partial study still gets every number it can support).

    ``interpolation``/``soups``/``analogy_grid`` (the raw stage tables) feed the selection
    protocols (:mod:`timevec.adapt.selection`); ``analogy`` is ``analogy_best``.
    """
    rel = relative_change(cells)
    diag = diagonal_summary(rel)
    decay = decay_fit(rel)
    stripes = stripe_test(rel)
    sim = simc = svd = svdc = None
    if gram is not None and keys is not None and len(keys):
        sim = similarity_table(gram, keys)
        simc = grouped_similarity(gram, keys, centre=True)
        svd = similarity_vs_degradation(sim, rel)
        svdc = similarity_vs_degradation(simc, rel)
    interp = interpolation_best(interpolation, cells)
    ana = analogy_summary(analogy)
    head = headline(diagonal=diag, decay=decay, similarity=svd, similarity_centred=svdc,
                    stripes=stripes, interpolation=interp, analogy=ana)
    protocols = interpolation_protocols(interpolation, cells, soups)
    analogy_protos = analogy_protocols(analogy_grid, analogy)
    partial = Analysis(rel, diag, decay, stripes, sim, simc, svd, svdc, interp, ana, head, pd.DataFrame(),
                       protocols, analogy_protos, forecast, group_swaps)
    return partial._replace(findings=findings_table(partial))
