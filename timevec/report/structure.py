"""Figures of the misalignment and structure findings: the all-pairs matrices, decay with the gap,
cosine similarity and its link to degradation, and the UMAP of the vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from timevec import periods
from timevec.analyze import analysis as an
from timevec.analyze import misalignment, similarity
from timevec.periods import CYCLE, UNITS
from timevec.report.plotting import (
    Figure,
    WriteTable,
    annotate,
    fmt,
    fmt_p,
    new_figure,
    set_ticks,
    tick_positions,
    time_value,
    to_png,
    year_formatter,
)

#: a granularity's adjective, for captions ("in monthly matrices")
_ADJECTIVE = {"year": "yearly", "quarter": "quarterly", "month": "monthly", "week": "weekly", "day": "daily"}


def matrix_figure(mat: np.ndarray, base: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str,
                  metric: str, higher: bool) -> Any:
    """The raw all-pairs heatmap (train periods × test periods) with the base model as a separate top row.

    Its size grows with the periods up to 16 × 16 inches, and the axes label at most ~24 periods each
    (:func:`~timevec.report.plotting.tick_positions`), so a weekly study's 200 periods stay readable.
    """
    has_base = bool(np.isfinite(base).any())
    allv = np.concatenate([mat[np.isfinite(mat)], base[np.isfinite(base)]])
    vmin, vmax = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
    # the colour map runs light → dark toward BETTER, whichever the metric's direction
    cmap = "viridis" if higher else "viridis_r"
    w = min(16.0, 3.5 + 0.32 * len(cols))
    h = min(16.0, 2.8 + 0.3 * len(rows) + (0.6 if has_base else 0))
    fig = new_figure(w, h)
    if has_base:
        gs = fig.add_gridspec(2, 1, height_ratios=[1, max(len(rows), 1)])
        ax_b = fig.add_subplot(gs[0])
        ax = fig.add_subplot(gs[1], sharex=ax_b)
        bm = base[None, :]
        im_b = ax_b.imshow(bm, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                           interpolation="nearest")
        annotate(ax_b, im_b, bm, ".3g")
        ax_b.set_yticks([0])
        ax_b.set_yticklabels(["base"], fontsize=8)
        ax_b.tick_params(labelbottom=False)
        ax_b.set_title(title)
    else:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_title(title)
    im = ax.imshow(mat, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    annotate(ax, im, mat, ".3g")
    set_ticks(ax, cols, rows)
    ax.set_xlabel("test period")
    ax.set_ylabel("train period (time vector)")
    fig.colorbar(im, ax=fig.axes, label=metric, shrink=0.9)
    return fig


def matrix_figures(cells: pd.DataFrame, rel: pd.DataFrame, out: list[Figure],
                    write_table: WriteTable) -> None:
    """Raw all-pairs matrix (with the base row) and % change, per (task, granularity)."""
    for (task, gran, metric), grp in rel.groupby(["task", "granularity", "metric"], sort=True):
        tag = f"{task}_{gran}"
        higher = bool(grp["higher_is_better"].iloc[0])
        rows = periods.sort_periods(grp["train_period"])
        cols = periods.sort_periods(grp["test_period"])
        raw = grp.pivot_table(index="train_period", columns="test_period", values="value",
                              aggfunc="first").reindex(index=rows, columns=cols)
        base_sel = cells.loc[(cells["task"] == task) & (cells["granularity"] == gran)
                             & (cells["metric"] == metric) & cells["train_period"].isna()]
        base = base_sel.groupby(base_sel["test_period"].astype(str))["value"].first()
        base = base.reindex(cols)
        title = f"{task} ({gran}): {metric} ({'higher' if higher else 'lower'} is better)"
        fig = matrix_figure(raw.to_numpy(dtype=float), base.to_numpy(dtype=float), rows, cols, title, metric, higher)
        name = f"matrix_{tag}"
        # with each cell's bootstrap interval (NaN for a cells table from before the bounds)
        columns = ["task", "granularity", "vector", "train_period", "test_period", "metric", "value", "low", "high",
                   "higher_is_better"]
        table = pd.concat([grp.reindex(columns=columns), base_sel.reindex(columns=columns)], ignore_index=True)
        write_table(f"fig_{name}", table)
        out.append(Figure(name, "Temporal misalignment", (
            f"Raw {metric} of every {task} time vector (rows, by training {gran}) on every "
            f"test {gran} (columns); the base model is the separate top row. Look for the best "
            "value in each column sitting on the diagonal, and for values worsening away from "
            "it."), to_png(fig)))

        pct = grp.pivot_table(index="train_period", columns="test_period", values="pct_change",
                              aggfunc="first").reindex(index=rows, columns=cols)
        pm = pct.to_numpy(dtype=float)
        lim = float(np.nanmax(np.abs(pm))) if np.isfinite(pm).any() else 1.0
        lim = lim or 1.0
        fig = new_figure(min(16.0, 3.5 + 0.32 * len(cols)), min(16.0, 2.8 + 0.3 * len(rows)))
        ax = fig.add_subplot(1, 1, 1)
        # red = worse for both directions: positive % change is bad for perplexity, good for F1
        im = ax.imshow(pm, aspect="auto", cmap="RdBu" if higher else "RdBu_r", vmin=-lim,
                       vmax=lim, interpolation="nearest")
        annotate(ax, im, pm, ".1f")
        set_ticks(ax, cols, rows)
        ax.set_xlabel("test period")
        ax.set_ylabel("train period (time vector)")
        ax.set_title(f"{task} ({gran}): % change of {metric} vs. test-period mean (red = worse)")
        fig.colorbar(im, ax=ax, label="% change")
        name = f"pct_change_{tag}"
        write_table(f"fig_{name}", grp[["task", "granularity", "train_period", "test_period",
                                        "metric", "value", "column_mean", "pct_change",
                                        "degradation_pct", "gap"]].reset_index(drop=True))
        out.append(Figure(name, "Temporal misalignment", (
            f"{metric} of each {task} vector relative to the mean of its test {gran} column (the "
            "paper's % change). Red is worse than average, blue better, for either metric "
            "direction. Look for a blue diagonal and red far from it"
            + (f"; in {_ADJECTIVE[gran]} matrices, bluer diagonals {cycle}, {2 * cycle}, … {UNITS[gran]} off "
               "the main one (seasonal similarity)." if (cycle := CYCLE.get(gran)) else ".")), to_png(fig)))


def decay_figures(decay: misalignment.DecayFit, rel: pd.DataFrame, out: list[Figure],
                   write_table: WriteTable) -> None:
    for fit in decay.fit.itertuples(index=False):
        tag = f"{fit.task}_{fit.granularity}"
        unit = UNITS[fit.granularity]
        bg = decay.by_gap.loc[(decay.by_gap["task"] == fit.task)
                              & (decay.by_gap["granularity"] == fit.granularity)
                              & (decay.by_gap["metric"] == fit.metric)].copy()
        cells = rel.loc[(rel["task"] == fit.task) & (rel["granularity"] == fit.granularity)
                        & (rel["metric"] == fit.metric)].dropna(subset=["degradation_pct", "gap"])
        fig = new_figure(6.5, 4.2)
        ax = fig.add_subplot(1, 1, 1)
        ax.scatter(cells["gap"].abs(), cells["degradation_pct"], s=10, alpha=0.35,
                   color="tab:gray", label="cells")
        ax.errorbar(bg["abs_gap"], bg["mean_degradation_pct"], yerr=bg["std_degradation_pct"],
                    fmt="o-", color="tab:blue", capsize=3, label="mean ± sd per gap")
        bg["fit_degradation_pct"] = fit.intercept + fit.slope * bg["abs_gap"]
        if np.isfinite(fit.slope):
            xs = np.array([0.0, float(bg["abs_gap"].max())])
            ax.plot(xs, fit.intercept + fit.slope * xs, "--", color="tab:red",
                    label=f"fit: {fit.slope:+.2f} %/{unit[:-1]}, R²={fit.r2:.2f}")
            title = (f"{fit.task} ({fit.granularity}): degradation vs. gap — slope "
                     f"{fit.slope:+.2f} %/{unit[:-1]}, R² {fit.r2:.2f}, n={fit.n}")
        else:
            title = f"{fit.task} ({fit.granularity}): degradation vs. gap (no fit: {fit.reason})"
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel(f"|test − train| ({unit})")
        ax.set_ylabel("degradation % (positive = worse)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        name = f"decay_{tag}"
        bg["slope"], bg["intercept"], bg["r2"], bg["p"] = fit.slope, fit.intercept, fit.r2, fit.p
        write_table(f"fig_{name}", bg.reset_index(drop=True))
        out.append(Figure(name, "Temporal misalignment", (
            f"How much worse a {fit.task} vector gets the further its training {fit.granularity} "
            f"is from the test {fit.granularity}. Grey: every cell; blue: mean per gap; red: "
            "least-squares line. The paper finds near-linear yearly decay: look at the slope and "
            "R²."), to_png(fig)))


def similarity_figures(gram: np.ndarray, keys: Sequence[similarity.Key], res: an.Analysis,
                        out: list[Figure], write_table: WriteTable) -> None:
    groups = similarity.key_groups(keys)
    order = [i for idx in groups.values() for i in idx]
    okeys = [(str(keys[i][0]), str(keys[i][1])) for i in order]
    g = np.asarray(gram, dtype=float)[np.ix_(order, order)]
    n = len(okeys)
    cos = similarity.cosine_from_gram(g)
    # centred per (task, granularity): block-diagonal, NaN (blank) between groups
    cosc = np.full((n, n), np.nan)
    start = 0
    for idx in groups.values():
        sl = slice(start, start + len(idx))
        cosc[sl, sl] = similarity.cosine_from_gram(similarity.centre_gram(g[sl, sl]))
        start += len(idx)
    multi_task = len({t for t, _ in okeys}) > 1
    labels = [f"{t}/{p}" if multi_task else p for t, p in okeys]
    periods = [p for _, p in okeys]
    size = min(9.0, 3.0 + 0.2 * n)
    fig = new_figure(2 * size + 1.5, size)
    for k, (mat, ttl) in enumerate(((cos, "cosine of τ"),
                                    (cosc, "cosine after removing each task's mean τ"))):
        ax = fig.add_subplot(1, 2, k + 1)
        finite = mat[np.isfinite(mat)]
        im = ax.imshow(np.ma.masked_invalid(mat), cmap="magma",
                       vmin=float(finite.min()) if finite.size else 0.0, vmax=1.0,
                       interpolation="nearest")
        annotate(ax, im, mat, ".2f")
        pos = tick_positions(periods)
        ax.set_xticks(pos)
        ax.set_xticklabels([labels[i] for i in pos], rotation=90, fontsize=7)
        ax.set_yticks(pos)
        ax.set_yticklabels([labels[i] for i in pos], fontsize=7)
        start = 0
        for idx in list(groups.values())[:-1]:  # separate groups so blocks read as blocks
            start += len(idx)
            ax.axhline(start - 0.5, color="white", lw=1.5)
            ax.axvline(start - 0.5, color="white", lw=1.5)
        ax.set_title(ttl)
        fig.colorbar(im, ax=ax, shrink=0.8)
    table = similarity.similarity_table(g, okeys).merge(
        similarity.grouped_similarity(g, okeys).rename(columns={"cosine": "cosine_centred"}),
        on=["task_a", "period_a", "task_b", "period_b"], how="left")
    write_table("fig_similarity", table)
    out.append(Figure("similarity", "Structure of the time vectors", (
        "Cosine similarity of every pair of time vectors, ordered by task, granularity and time "
        "(left: raw τ; right: after removing each task's mean τ, which exposes the time-specific "
        "part). Look for a bright band along the diagonal that fades with the distance in time: "
        "time is encoded in the weights."), to_png(fig)))

    svd, svdc = res.sim_vs_deg, res.sim_vs_deg_centred
    if svd is None or svdc is None or svd["pairs"].empty:
        return
    pairs = svd["pairs"].merge(
        svdc["pairs"][["task", "train_period", "test_period", "cosine"]].rename(
            columns={"cosine": "cosine_centred"}), on=["task", "train_period", "test_period"],
        how="left")
    write_table("fig_similarity_vs_degradation", pairs)
    # one row of panels per (task, granularity): gaps in years, months or weeks do not share a scale
    pair_groups = list(pairs.groupby(["task", "granularity", "metric"], sort=True))
    fig = new_figure(11.0, 4.3 * len(pair_groups))
    for row, ((task, gran, _metric), grp) in enumerate(pair_groups):
        unit = UNITS[gran]
        sc = None
        axes = []
        for k, (col, lbl) in enumerate((("cosine", "cosine of τ"),
                                        ("cosine_centred", "cosine after removing mean τ"))):
            ax = fig.add_subplot(len(pair_groups), 2, 2 * row + k + 1)
            axes.append(ax)
            sub = grp.dropna(subset=[col])
            x = sub[col].to_numpy(dtype=float)
            y = sub["degradation_pct"].to_numpy(dtype=float)
            c = similarity.correlate(x, y)
            if len(sub):
                sc = ax.scatter(x, y, c=sub["gap"].abs(), cmap="viridis", s=14, alpha=0.8)
            if np.isfinite(c["pearson_r"]):
                slope, icpt = np.polyfit(x, y, 1)
                xs = np.linspace(float(x.min()), float(x.max()), 2)
                ax.plot(xs, icpt + slope * xs, "--", color="tab:red", lw=1)
            ax.set_xlabel(lbl)
            ax.set_ylabel("degradation % (positive = worse)")
            ax.set_title(f"{task} ({gran}), {lbl}\nPearson r = {fmt(c['pearson_r'])} "
                         f"(p = {fmt_p(c['pearson_p'])}), Spearman ρ = "
                         f"{fmt(c['spearman_rho'])}, n = {c['n']}", fontsize=9)
        if sc is not None:
            fig.colorbar(sc, ax=axes, label=f"|gap| ({unit})", shrink=0.9)
    out.append(Figure("similarity_vs_degradation", "Structure of the time vectors", (
        "Each point is one off-diagonal cell: the cosine between the vector used and the test "
        "period's own vector, against how much worse it does (positive = worse). A NEGATIVE r "
        "means more similar vectors transfer better, the paper's finding; colour is |gap|. "
        f"Pooled over all groups: r = {fmt(svd['pearson_r'])} (p = {fmt_p(svd['pearson_p'])}) "
        f"raw, r = {fmt(svdc['pearson_r'])} (p = {fmt_p(svdc['pearson_p'])}) centred."),
        to_png(fig)))


def umap_figure(gram: np.ndarray, keys: Sequence[similarity.Key], out: list[Figure],
                 write_table: WriteTable) -> None:
    """One UMAP panel per (task, granularity): across tasks the task identity would dominate."""
    g = np.asarray(gram, dtype=float)
    okeys = [(str(t), str(p)) for t, p in keys]
    groups = similarity.key_groups(okeys)
    embs = []
    for (_task, gran), idx in groups.items():
        emb = similarity.umap_embedding(g[np.ix_(idx, idx)], [okeys[i] for i in idx])
        emb.insert(1, "granularity", gran)
        embs.append(emb)
    emb = pd.concat(embs, ignore_index=True)
    emb["time"] = [time_value(p) for p in emb["period"]]
    ncol = min(len(groups), 3)
    nrow = math.ceil(len(groups) / ncol)
    fig = new_figure(4.6 * ncol + 1.0, 4.2 * nrow)
    vmin, vmax = float(emb["time"].min()), float(emb["time"].max())
    if vmax == vmin:
        vmax = vmin + 1.0
    sc = None
    axes = []
    for k, (task, gran) in enumerate(groups):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        axes.append(ax)
        sel = emb.loc[(emb["task"] == task) & (emb["granularity"] == gran)].sort_values("time")
        ax.plot(sel["x"], sel["y"], "-", color="0.8", lw=0.8, zorder=1)  # the path through time
        sc = ax.scatter(sel["x"], sel["y"], c=sel["time"], cmap="viridis", vmin=vmin, vmax=vmax,
                        s=40, edgecolors="black", linewidths=0.3, zorder=2)
        show = tick_positions(list(sel["period"]))
        for i in show:
            r = sel.iloc[i]
            ax.annotate(r["period"], (r["x"], r["y"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        method = str(sel["method"].iloc[0]).upper()
        ax.set_title(f"{task} ({gran}): {method}, {len(sel)} vectors", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if sc is not None:
        cb = fig.colorbar(sc, ax=axes, label="time (period order)", shrink=0.9)
        cb.ax.yaxis.set_major_formatter(year_formatter())
    write_table("fig_umap", emb)
    mds = sorted({f"{t} ({g})" for t, g, m in zip(emb["task"], emb["granularity"], emb["method"])
                  if m == "mds"})
    out.append(Figure("umap", "Structure of the time vectors", (
        "2-D UMAP of each task's time vectors from their cosine distances, coloured by time "
        "(dark = early, yellow = late; the grey line joins consecutive periods). Look for the "
        "colours forming an ordered path: neighbouring periods land near each other."
        + (f" Too few vectors for UMAP in {', '.join(mds)}: classical MDS was used." if mds
           else "")), to_png(fig)))

