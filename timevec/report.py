"""Figures and one self-contained HTML report from the result tables.

Design choices, and why:

* Output goes through two callables (``write_bytes(path, data)`` and ``write_table(name, df)``)
  so the report knows nothing about where the store lives (local folder or ``s3://``).
* Every figure has the table it was drawn from written next to it (``fig_<name>``), so any number
  in a picture can be checked or re-plotted without re-running the study.
* ``reports/index.html`` embeds every PNG as a base64 data URI and loads nothing from the network:
  it can be mailed, attached to a CI run or opened from object storage as one file.
* Matplotlib is used through :class:`matplotlib.figure.Figure` with the Agg canvas, never pyplot,
  so building a report neither changes a global backend nor leaks figures in long-lived workers.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from timevec import analysis as an
from timevec import findings as findings_mod
from timevec import misalignment, periods, results, similarity, summaries
from timevec.periods import Period

log = logging.getLogger(__name__)

WriteBytes = Callable[[str, bytes], None]
WriteTable = Callable[[str, pd.DataFrame], None]

_MAX_TICK_LABELS = 24
_ANNOTATE_MAX = 12
_DPI = 100


@dataclass
class _Figure:
    name: str
    section: str
    caption: str
    png: bytes


# --------------------------------------------------------------------------------------------
# plotting helpers
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _tick_positions(labels: Sequence[str]) -> list[int]:
    """Indices of the labels to show, at most ~24, aligned to calendar steps for months.

    A monthly matrix over nine years has 108 labels; printing all of them makes an unreadable black
    bar, so months are thinned to every 1, 2, 3, 4, 6 or 12 months (starting at January) and other
    labels to an even stride.
    """
    n = len(labels)
    if n <= _MAX_TICK_LABELS:
        return list(range(n))
    need = math.ceil(n / _MAX_TICK_LABELS)
    try:
        parsed = [Period.parse(x) for x in labels]
    except ValueError:
        parsed = []
    if parsed and all(p.month is not None for p in parsed):
        step = next((s for s in (1, 2, 3, 4, 6, 12) if s >= need), 12 * math.ceil(need / 12))
        if step <= 12:
            return [i for i, p in enumerate(parsed) if (p.month_of_year - 1) % step == 0]
        return [i for i, p in enumerate(parsed)
                if p.month == 1 and (p.year - parsed[0].year) % (step // 12) == 0]
    return list(range(0, n, need))


def _set_ticks(ax: Any, xlabels: Sequence[str] | None, ylabels: Sequence[str] | None) -> None:
    if xlabels is not None:
        pos = _tick_positions(xlabels)
        ax.set_xticks(pos)
        ax.set_xticklabels([xlabels[i] for i in pos], rotation=90, fontsize=8)
    if ylabels is not None:
        pos = _tick_positions(ylabels)
        ax.set_yticks(pos)
        ax.set_yticklabels([ylabels[i] for i in pos], fontsize=8)


def _annotate(ax: Any, im: Any, mat: np.ndarray, fmt: str) -> None:
    """Write values into small heatmaps, in black or white by the cell colour's luminance."""
    if mat.shape[0] > _ANNOTATE_MAX or mat.shape[1] > _ANNOTATE_MAX:
        return
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if np.isfinite(mat[i, j]):
                r, g, b, _ = im.cmap(im.norm(mat[i, j]))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, format(mat[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")


def _time_value(period: str) -> float:
    """Fractional year, so years and months share one colour scale."""
    p = Period.parse(period)
    return p.year + ((p.month - 1) / 12.0 if p.month else 0.0)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def _fmt_p(p: Any) -> str:
    try:
        v = float(p)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{v:.2g}"


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def _matrix_figures(cells: pd.DataFrame, rel: pd.DataFrame, out: list[_Figure],
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
        has_base = bool(base.notna().any())
        mat = raw.to_numpy(dtype=float)
        allv = np.concatenate([mat[np.isfinite(mat)], base.to_numpy(dtype=float)[
            np.isfinite(base.to_numpy(dtype=float))]])
        vmin, vmax = (float(allv.min()), float(allv.max())) if allv.size else (0.0, 1.0)
        # the colour map runs light → dark toward BETTER, whichever the metric's direction
        cmap = "viridis" if higher else "viridis_r"
        w = min(16.0, 3.5 + 0.32 * len(cols))
        h = min(16.0, 2.8 + 0.3 * len(rows) + (0.6 if has_base else 0))
        fig = _new_figure(w, h)
        if has_base:
            gs = fig.add_gridspec(2, 1, height_ratios=[1, max(len(rows), 1)])
            ax_b = fig.add_subplot(gs[0])
            ax = fig.add_subplot(gs[1], sharex=ax_b)
            bm = base.to_numpy(dtype=float)[None, :]
            im_b = ax_b.imshow(bm, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                               interpolation="nearest")
            _annotate(ax_b, im_b, bm, ".3g")
            ax_b.set_yticks([0])
            ax_b.set_yticklabels(["base"], fontsize=8)
            ax_b.tick_params(labelbottom=False)
            ax_b.set_title(f"{task} ({gran}): {metric} "
                           f"({'higher' if higher else 'lower'} is better)")
        else:
            ax = fig.add_subplot(1, 1, 1)
            ax.set_title(f"{task} ({gran}): {metric} ({'higher' if higher else 'lower'} is better)")
        im = ax.imshow(mat, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        _annotate(ax, im, mat, ".3g")
        _set_ticks(ax, cols, rows)
        ax.set_xlabel("test period")
        ax.set_ylabel("train period (time vector)")
        fig.colorbar(im, ax=fig.axes, label=metric, shrink=0.9)
        name = f"matrix_{tag}"
        table = pd.concat([
            grp[["task", "granularity", "vector", "train_period", "test_period", "metric",
                 "value", "higher_is_better"]],
            base_sel[["task", "granularity", "vector", "train_period", "test_period", "metric",
                      "value", "higher_is_better"]],
        ], ignore_index=True)
        write_table(f"fig_{name}", table)
        out.append(_Figure(name, "Temporal misalignment", (
            f"Raw {metric} of every {task} time vector (rows, by training {gran}) on every "
            f"test {gran} (columns); the base model is the separate top row. Look for the best "
            "value in each column sitting on the diagonal, and for values worsening away from "
            "it."), _png(fig)))

        pct = grp.pivot_table(index="train_period", columns="test_period", values="pct_change",
                              aggfunc="first").reindex(index=rows, columns=cols)
        pm = pct.to_numpy(dtype=float)
        lim = float(np.nanmax(np.abs(pm))) if np.isfinite(pm).any() else 1.0
        lim = lim or 1.0
        fig = _new_figure(w, min(16.0, 2.8 + 0.3 * len(rows)))
        ax = fig.add_subplot(1, 1, 1)
        # red = worse for both directions: positive % change is bad for perplexity, good for F1
        im = ax.imshow(pm, aspect="auto", cmap="RdBu" if higher else "RdBu_r", vmin=-lim,
                       vmax=lim, interpolation="nearest")
        _annotate(ax, im, pm, ".1f")
        _set_ticks(ax, cols, rows)
        ax.set_xlabel("test period")
        ax.set_ylabel("train period (time vector)")
        ax.set_title(f"{task} ({gran}): % change of {metric} vs. test-period mean (red = worse)")
        fig.colorbar(im, ax=ax, label="% change")
        name = f"pct_change_{tag}"
        write_table(f"fig_{name}", grp[["task", "granularity", "train_period", "test_period",
                                        "metric", "value", "column_mean", "pct_change",
                                        "degradation_pct", "gap"]].reset_index(drop=True))
        out.append(_Figure(name, "Temporal misalignment", (
            f"{metric} of each {task} vector relative to the mean of its test {gran} column (the "
            "paper's % change). Red is worse than average, blue better, for either metric "
            "direction. Look for a blue diagonal and red far from it"
            + ("; in monthly matrices, bluer diagonals 12, 24, … months off the main one "
               "(seasonal similarity)." if gran == "month"
               else ".")), _png(fig)))


def _decay_figures(decay: misalignment.DecayFit, rel: pd.DataFrame, out: list[_Figure],
                   write_table: WriteTable) -> None:
    for fit in decay.fit.itertuples(index=False):
        tag = f"{fit.task}_{fit.granularity}"
        unit = "years" if fit.granularity == "year" else "months"
        bg = decay.by_gap.loc[(decay.by_gap["task"] == fit.task)
                              & (decay.by_gap["granularity"] == fit.granularity)
                              & (decay.by_gap["metric"] == fit.metric)].copy()
        cells = rel.loc[(rel["task"] == fit.task) & (rel["granularity"] == fit.granularity)
                        & (rel["metric"] == fit.metric)].dropna(subset=["degradation_pct", "gap"])
        fig = _new_figure(6.5, 4.2)
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
        out.append(_Figure(name, "Temporal misalignment", (
            f"How much worse a {fit.task} vector gets the further its training {fit.granularity} "
            f"is from the test {fit.granularity}. Grey: every cell; blue: mean per gap; red: "
            "least-squares line. The paper finds near-linear yearly decay: look at the slope and "
            "R²."), _png(fig)))


def _similarity_figures(gram: np.ndarray, keys: Sequence[similarity.Key], res: an.Analysis,
                        out: list[_Figure], write_table: WriteTable) -> None:
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
    fig = _new_figure(2 * size + 1.5, size)
    for k, (mat, ttl) in enumerate(((cos, "cosine of τ"),
                                    (cosc, "cosine after removing each task's mean τ"))):
        ax = fig.add_subplot(1, 2, k + 1)
        finite = mat[np.isfinite(mat)]
        im = ax.imshow(np.ma.masked_invalid(mat), cmap="magma",
                       vmin=float(finite.min()) if finite.size else 0.0, vmax=1.0,
                       interpolation="nearest")
        _annotate(ax, im, mat, ".2f")
        pos = _tick_positions(periods)
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
    out.append(_Figure("similarity", "Structure of the time vectors", (
        "Cosine similarity of every pair of time vectors, ordered by task, granularity and time "
        "(left: raw τ; right: after removing each task's mean τ, which exposes the time-specific "
        "part). Look for a bright band along the diagonal that fades with the distance in time: "
        "time is encoded in the weights."), _png(fig)))

    svd, svdc = res.sim_vs_deg, res.sim_vs_deg_centred
    if svd is None or svdc is None or svd["pairs"].empty:
        return
    pairs = svd["pairs"].merge(
        svdc["pairs"][["task", "train_period", "test_period", "cosine"]].rename(
            columns={"cosine": "cosine_centred"}), on=["task", "train_period", "test_period"],
        how="left")
    write_table("fig_similarity_vs_degradation", pairs)
    # one row of panels per (task, granularity): gaps in years and months do not share a scale
    pair_groups = list(pairs.groupby(["task", "granularity", "metric"], sort=True))
    fig = _new_figure(11.0, 4.3 * len(pair_groups))
    for row, ((task, gran, _metric), grp) in enumerate(pair_groups):
        unit = "years" if gran == "year" else "months"
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
            ax.set_title(f"{task} ({gran}), {lbl}\nPearson r = {_fmt(c['pearson_r'])} "
                         f"(p = {_fmt_p(c['pearson_p'])}), Spearman ρ = "
                         f"{_fmt(c['spearman_rho'])}, n = {c['n']}", fontsize=9)
        if sc is not None:
            fig.colorbar(sc, ax=axes, label=f"|gap| ({unit})", shrink=0.9)
    out.append(_Figure("similarity_vs_degradation", "Structure of the time vectors", (
        "Each point is one off-diagonal cell: the cosine between the vector used and the test "
        "period's own vector, against how much worse it does (positive = worse). A NEGATIVE r "
        "means more similar vectors transfer better, the paper's finding; colour is |gap|. "
        f"Pooled over all groups: r = {_fmt(svd['pearson_r'])} (p = {_fmt_p(svd['pearson_p'])}) "
        f"raw, r = {_fmt(svdc['pearson_r'])} (p = {_fmt_p(svdc['pearson_p'])}) centred."),
        _png(fig)))


def _umap_figure(gram: np.ndarray, keys: Sequence[similarity.Key], out: list[_Figure],
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
    emb["time"] = [_time_value(p) for p in emb["period"]]
    ncol = min(len(groups), 3)
    nrow = math.ceil(len(groups) / ncol)
    fig = _new_figure(4.6 * ncol + 1.0, 4.2 * nrow)
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
        show = _tick_positions(list(sel["period"]))
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
        cb.ax.yaxis.set_major_formatter(_year_formatter())
    write_table("fig_umap", emb)
    mds = sorted({f"{t} ({g})" for t, g, m in zip(emb["task"], emb["granularity"], emb["method"])
                  if m == "mds"})
    out.append(_Figure("umap", "Structure of the time vectors", (
        "2-D UMAP of each task's time vectors from their cosine distances, coloured by time "
        "(dark = early, yellow = late; the grey line joins consecutive periods). Look for the "
        "colours forming an ordered path: neighbouring periods land near each other."
        + (f" Too few vectors for UMAP in {', '.join(mds)}: classical MDS was used." if mds
           else "")), _png(fig)))


def _year_formatter() -> Any:
    from matplotlib.ticker import FuncFormatter

    def fmt(v: float, _pos: int) -> str:
        year = int(math.floor(v + 1e-9))
        month = int(round((v - year) * 12)) + 1
        return f"{year}" if month == 1 else f"{year}-{month:02d}"

    return FuncFormatter(fmt)


def _interpolation_figures(interp: pd.DataFrame, summary: pd.DataFrame, out: list[_Figure],
                           write_table: WriteTable) -> None:
    from matplotlib import colormaps

    keys = ["task", "granularity", "first", "last"]
    for (task, gran, first, last), grp in interp.groupby(keys, sort=True):
        first, last = str(first), str(last)
        metric = str(grp["metric"].iloc[0])
        higher = bool(grp["higher_is_better"].iloc[0])
        tests = periods.sort_periods(grp["test_period"])
        summ = summary.loc[(summary["task"] == task) & (summary["granularity"] == gran)
                           & (summary["first"] == first) & (summary["last"] == last)]
        cmap = colormaps["viridis"]
        fig = _new_figure(7.5, 4.8)
        ax = fig.add_subplot(1, 1, 1)
        for i, test in enumerate(tests):
            color = cmap(i / max(len(tests) - 1, 1))
            sel = grp.loc[grp["test_period"].astype(str) == test].sort_values("alpha")
            ax.plot(sel["alpha"], sel["value"], "-o", ms=3, color=color, label=test)
            srow = summ.loc[summ["test_period"] == test]
            if len(srow):
                s = srow.iloc[0]
                ax.plot([s["best_alpha"]], [s["best_value"]], "*", ms=12, color=color,
                        markeredgecolor="black")
                if np.isfinite(s["in_period_value"]) and len(tests) <= 12:
                    ax.axhline(s["in_period_value"], color=color, ls=":", lw=1)
        ax.set_xlabel(f"α (weight of τ_{last}; α=0 is τ_{first}, α=1 is τ_{last})")
        ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
        ax.set_title(f"{task} ({gran}): interpolating τ_{first} → τ_{last}")
        ax.legend(fontsize=7, ncol=2 if len(tests) > 8 else 1, title="test period",
                  title_fontsize=7)
        name = f"interpolation_{task}_{gran}_{first}_{last}"
        table = grp.merge(summ[["test_period", "best_alpha", "in_period_value"]],
                          on="test_period", how="left") if len(summ) else grp.copy()
        write_table(f"fig_{name}", table.reset_index(drop=True))
        out.append(_Figure(name, "Interpolation", (
            f"{metric} of θ_pre + (1−α)·τ_{first} + α·τ_{last} on each test period; stars mark "
            "the best α, dotted lines the in-period vector. Look for intermediate periods peaking "
            "at intermediate α that moves toward 1 for later periods, and whether the best point "
            f"beats α=1 (the latest vector, τ_{last})."), _png(fig)))

        if summ.empty:
            continue
        fig = _new_figure(7.5, 4.0)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(summ))
        width = 0.27
        suffix, unit = _gain_unit(higher, metric)
        for j, (col, lbl) in enumerate((("gain_vs_first", f"vs τ_{first} (α=0)"),
                                         ("gain_vs_last", f"vs τ_{last} (α=1, latest)"),
                                         ("gain_vs_in_period", "vs in-period vector"))):
            ax.bar(x + (j - 1) * width, summ[col + suffix].astype(float).fillna(0.0), width, label=lbl)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{t}\nα={a:.1f}" for t, a in
                            zip(summ["test_period"], summ["best_alpha"])], fontsize=7)
        ax.set_ylabel(f"gain of best α, {unit} (positive = better)")
        ax.set_title(f"{task} ({gran}): gain of the best interpolation per test period")
        ax.legend(fontsize=8)
        name = f"interpolation_gain_{task}_{gran}_{first}_{last}"
        write_table(f"fig_{name}", summ.reset_index(drop=True))
        out.append(_Figure(name, "Interpolation", (
            f"Gain ({unit}) of the best α over each end and over the in-period vector, per period in "
            "between (positive = interpolation is better). The bar against the latest vector is "
            "the honest test: interpolation is only useful where it is positive."), _png(fig)))


def _gain_unit(higher: bool, metric: str) -> tuple[str, str]:
    """Which gain column to plot and its unit: absolute points for macro-F1 / ROUGE-L (a percentage
    of a near-zero score means nothing), percent for perplexity (its scale is arbitrary)."""
    return ("", f"{metric} points") if higher else ("_pct", f"% of {metric}")


def _adaptation_figures(table: pd.DataFrame, kind: str, out: list[_Figure], write_table: WriteTable) -> None:
    """Soups or patching: on each period's test split, how much the method beats each baseline."""
    method = "soup" if kind == "soups" else "patched"
    test = table.loc[(table["split"] == "test") & (table["method"] != method) & table["gain"].notna()]
    for (task, gran), grp in test.groupby(["task", "granularity"], sort=True):
        metric = str(grp["metric"].iloc[0])
        pers = periods.sort_periods(grp["period"].astype(str))
        methods = [m for m in ("in_period", "previous", "next", "latest", "base") if (grp["method"] == m).any()]
        fig = _new_figure(max(6.0, 1.5 + 0.35 * len(pers) * len(methods) / 2), 4.0)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(pers))
        width = 0.8 / max(len(methods), 1)
        for j, m in enumerate(methods):
            sel = grp.loc[grp["method"] == m].set_index(grp.loc[grp["method"] == m, "period"].astype(str))["gain"]
            ax.bar(x + (j - (len(methods) - 1) / 2) * width, [float(sel.get(p, np.nan)) for p in pers], width,
                   label=f"vs {m}")
        ax.axhline(0, color="black", lw=0.6)
        _set_ticks(ax, pers, None)
        ax.set_ylabel(f"gain in {metric} (positive = {method} better)")
        what = "greedy time soup" if kind == "soups" else "patched vector ½τ(p−1) + ½τ(p+1)"
        ax.set_title(f"{task} ({gran}): the {what} against each baseline (test)", fontsize=9)
        ax.legend(fontsize=7)
        name = f"{kind}_{task}_{gran}"
        write_table(f"fig_{name}", grp.reset_index(drop=True))
        caption = ("A greedy soup of neighbouring vectors, chosen on each period's validation split, against the "
                   "period's own vector, the previous, next and latest vectors and the base."
                   if kind == "soups" else
                   "Each period's vector left out and rebuilt from its two neighbours: against the in-period vector "
                   "it shows what is lost without that period's data; against the latest, whether patching pays.")
        out.append(_Figure(name, "Time soups" if kind == "soups" else "Patching a missing period", caption, _png(fig)))


def _analogy_figures(summary: pd.DataFrame, out: list[_Figure], write_table: WriteTable) -> None:
    for task, grp in summary.groupby("task", sort=True):
        split = "test" if (grp["split"] == "test").any() else str(grp["split"].iloc[0])
        g = grp.loc[grp["split"] == split].reset_index(drop=True)
        # the base is left out: its gap is an order of magnitude larger and flattens the rest
        if g.empty:
            continue
        suffix, unit = _gain_unit(bool(g["higher_is_better"].iloc[0]), str(g["metric"].iloc[0]))
        baselines = [b for b in summaries.ANALOGY_BASELINES
                     if b != "base" and g[f"gain_vs_{b}{suffix}"].notna().any()]
        if g.empty or not baselines:
            continue
        fig = _new_figure(max(6.0, 1.2 + 0.9 * len(g) * max(len(baselines), 1) / 3), 4.2)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(g))
        width = 0.8 / len(baselines)
        for j, b in enumerate(baselines):
            ax.bar(x + (j - (len(baselines) - 1) / 2) * width,
                   g[f"gain_vs_{b}{suffix}"].astype(float).fillna(0.0), width, label=f"vs {b}")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{s}→{t}" for s, t in zip(g["source_period"], g["target_period"])],
                           fontsize=8, rotation=45 if len(g) > 8 else 0)
        ax.set_ylabel(f"analogy gain, {unit} (positive = better)")
        ax.set_title(f"{task}: task analogy θ_pre + α₁τ_task(j) + α₂τ_lm(k) − α₃τ_lm(j) ({split})",
                     fontsize=9)
        ax.legend(fontsize=8)
        name = f"analogy_{task}"
        write_table(f"fig_{name}", g)
        out.append(_Figure(name, "Task analogy", (
            f"Gain of the best analogy point for {task} moving from period j to k, against each "
            "baseline except the base (its numbers are in the table). Compare the bars against "
            "task_j_scaled (scaling the task vector alone) and latest: much of a published "
            "analogy gain can come from scaling alone."),
            _png(fig)))


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}
h1{margin-bottom:0.2em} .meta{color:#666;font-size:0.9em}
table.headline{border-collapse:collapse;margin:1em 0;font-size:0.9em}
table.headline td,table.headline th{border:1px solid #ccc;padding:3px 8px;text-align:left}
table.headline td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.holds-yes td:nth-child(5){color:#1a7f37;font-weight:600} tr.holds-no td:nth-child(5){color:#cf222e;font-weight:600}
details{margin:0.6em 0} summary{cursor:pointer}
figure{margin:2em 0;border-top:1px solid #eee;padding-top:1em}
figure img{max-width:100%;height:auto;display:block}
figcaption{color:#444;font-size:0.9em;margin-top:0.5em} code{font-size:0.9em}
"""


def _findings_html(findings: pd.DataFrame) -> list[str]:
    e = html.escape
    parts = ['<h2 id="findings">Findings</h2>',
             '<p class="meta">Each finding of Nylund et al. (2023) as measured here, with a 95 % interval. '
             "<b>holds</b>: yes = the whole interval is on the paper's side, no = on the other side, unclear = "
             "it straddles (or too little data). Intervals are over test periods and cells of this run.</p>",
             '<table class="headline" id="findings-table"><thead><tr><th>finding</th><th>panel</th>'
             "<th>measured [95 % interval]</th><th>the paper's</th><th>holds?</th><th>note</th></tr></thead><tbody>"]
    for r in findings.to_dict("records"):
        claim = findings_mod.PAPER_CLAIMS[r["finding"]][1]
        parts.append(f'<tr class="holds-{e(r["holds"])}"><td>{e(r["finding"])}</td><td>{e(r["panel"])}</td>'
                     f'<td class="num">{e(r["measured"])}</td><td title="{e(claim)}">{e(r["paper"])}</td>'
                     f'<td>{e(r["holds"])}</td><td>{e(str(r["note"]))}</td></tr>')
    parts.append("</tbody></table>")
    if findings.empty:
        parts.append("<p>No findings yet: the store holds no cells of trained vectors.</p>")
    return parts


def _folded_table(title: str, frame: pd.DataFrame) -> str:
    e = html.escape
    body = frame.to_html(index=False, border=0, classes="headline", na_rep="", float_format=lambda v: f"{v:.4g}")
    return f"<details><summary>{e(title)} ({len(frame)} rows)</summary>{body}</details>"


def _html(title: str, findings: pd.DataFrame, head: Mapping[str, Any], figures: Sequence[_Figure], generated: str,
          notes: Sequence[str], folded: Mapping[str, pd.DataFrame]) -> bytes:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{e(title)}</h1>",
             f'<p class="meta">Generated {e(generated)} by timevec. Every figure below has its '
             "data table in the store as <code>fig_&lt;name&gt;</code> (Parquet).</p>"]
    parts.extend(_findings_html(findings))
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    if figures:
        parts.append("<h2>Contents</h2><ul>")
        for sec in dict.fromkeys(f.section for f in figures):
            names = ", ".join(f'<a href="#fig-{e(f.name)}">{e(f.name)}</a>' for f in figures if f.section == sec)
            parts.append(f"<li><b>{e(sec)}</b>: {names}</li>")
        parts.append('<li><a href="#tables">All numbers and tables</a></li></ul>')
    section = None
    for f in figures:
        if f.section != section:
            section = f.section
            parts.append(f"<h2>{e(section)}</h2>")
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(f'<figure id="fig-{e(f.name)}"><img alt="{e(f.name)}" '
                     f'src="data:image/png;base64,{data}">'
                     f"<figcaption><b>{e(f.name)}</b> — {e(f.caption)} "
                     f"<span class=\"meta\">(table: <code>fig_{e(f.name)}</code>)</span>"
                     "</figcaption></figure>")
    parts.append('<h2 id="tables">All numbers and tables</h2>')
    parts.append('<details><summary>Headline numbers</summary><table class="headline" id="headline-table">'
                 "<thead><tr><th>finding</th><th>value</th></tr></thead><tbody>")
    for k, v in head.items():
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        cls = ' class="num"' if num else ""
        parts.append(f"<tr><td>{e(str(k))}</td><td{cls}>{e(_fmt(v))}</td></tr>")
    parts.append("</tbody></table></details>")
    parts.extend(_folded_table(name, frame) for name, frame in folded.items() if frame is not None and len(frame))
    parts.append("</body></html>")
    return "\n".join(parts).encode("utf-8")


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def build_report(tables: Mapping[str, pd.DataFrame | None], gram: np.ndarray | None,
                 keys: Sequence[similarity.Key] | None, write_bytes: WriteBytes,
                 write_table: WriteTable, title: str = "timevec report",
                 *, generated: dt.datetime | None = None) -> list[str]:
    """Draw every figure the available tables support and write one self-contained HTML report.

    ``tables``: by their :mod:`timevec.results` names, ``cells`` (required), optionally
    ``interpolation``, ``soups``, ``patching`` and ``analogy_best``; absent or empty optional tables just mean fewer
    figures. ``gram``/``keys``: the time vectors' Gram matrix (may be ``None``: no similarity
    figures). Figures go to ``reports/<name>.png``, their tables to ``fig_<name>``, the page to
    ``reports/index.html``. Returns the figure paths in page order.
    """
    cells = tables.get(results.CELLS_TABLE)
    if cells is None:
        raise ValueError(f"build_report needs tables[{results.CELLS_TABLE!r}] (results/{results.CELLS_TABLE}.parquet)")
    interp = tables.get(results.INTERPOLATION_TABLE)
    analogy = tables.get(results.ANALOGY_BEST_TABLE)
    key_list = [(str(t), str(p)) for t, p in keys] if keys is not None else []
    have_gram = gram is not None and len(key_list) > 0
    res = an.analyze(cells, gram if have_gram else None, key_list if have_gram else None,
                     interp, analogy)
    figures: list[_Figure] = []
    notes: list[str] = []
    if not res.rel.empty:
        _matrix_figures(cells, res.rel, figures, write_table)
        _decay_figures(res.decay, res.rel, figures, write_table)
    else:
        notes.append("No cells of trained vectors: no misalignment figures.")
    if have_gram:
        _similarity_figures(np.asarray(gram), key_list, res, figures, write_table)
        _umap_figure(np.asarray(gram), key_list, figures, write_table)
    else:
        notes.append("No Gram matrix given: no similarity or UMAP figures.")
    if interp is not None and not interp.empty:
        _interpolation_figures(interp, res.interpolation, figures, write_table)
    else:
        notes.append("No interpolation table: no interpolation figures.")
    for kind in (results.SOUPS_TABLE, results.PATCHING_TABLE):
        table = tables.get(kind)
        if table is not None and not table.empty:
            _adaptation_figures(table, kind, figures, write_table)
    if not res.analogy.empty:
        _analogy_figures(res.analogy, figures, write_table)
    else:
        notes.append("No analogy table: no analogy figures.")

    paths: list[str] = []
    for f in figures:
        path = f"reports/{f.name}.png"
        write_bytes(path, f.png)
        paths.append(path)
    when = (generated or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    folded = {"own period best (diagonal)": res.diagonal, "decay fit": res.decay.fit, "stripes": res.stripes,
              "interpolation: best α per middle period": res.interpolation, "task analogies vs baselines": res.analogy,
              "time soups": tables.get(results.SOUPS_TABLE), "patching": tables.get(results.PATCHING_TABLE)}
    write_bytes("reports/index.html", _html(title, res.findings, res.headline, figures, when, notes, folded))
    log.info("report: %d figures and reports/index.html written", len(figures))
    return paths
