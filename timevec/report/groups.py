"""Figures of "where in the weights time lives": per parameter group and layer, how much of τ it
holds, whether its cosine predicts degradation, and how much of the in-period vector's advantage
it carries when swapped in (:mod:`timevec.analyze.weight_groups`, :mod:`timevec.adapt.group_swaps`).

Each figure reads one stored table (``group_norms``, ``group_similarity_degradation``,
``group_swaps``) and writes the rows it drew as its ``fig_<name>`` table.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from timevec import results
from timevec.report.plotting import Figure, WriteTable, new_figure, to_png

__all__ = ["group_figures"]

SECTION = "Where in the weights time lives"


def _bars(ax, labels: list[str], series: dict[str, np.ndarray], errors: dict[str, np.ndarray] | None = None) -> None:
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for j, (name, values) in enumerate(series.items()):
        err = None if errors is None else errors.get(name)
        ax.bar(x + (j - (len(series) - 1) / 2) * width, np.nan_to_num(values), width, label=name,
               yerr=err, capsize=2 if err is not None else 0)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.axhline(0, color="black", lw=0.6)


def _norm_figure(norms: pd.DataFrame, out: list[Figure], write_table: WriteTable) -> None:
    data = norms[norms["scope"] != "all"]
    mean = data.groupby(["task", "scope", "part"], sort=False)[["norm_sq_share", "param_share"]].mean().reset_index()
    scopes = [s for s in ("group", "layer") if (mean["scope"] == s).any()]
    if not scopes:
        return
    fig = new_figure(4.0 + 3.0 * len(scopes), 3.8)
    for i, scope in enumerate(scopes, 1):
        ax = fig.add_subplot(1, len(scopes), i)
        sel = mean[mean["scope"] == scope]
        parts = list(dict.fromkeys(sel["part"]))
        series = {}
        for task in dict.fromkeys(sel["task"]):
            s = sel[sel["task"] == task].set_index("part")
            series[f"{task}: share of |τ|²"] = s["norm_sq_share"].reindex(parts).to_numpy(dtype=float)
        series["share of the parameters"] = sel.drop_duplicates("part").set_index("part")["param_share"].reindex(
            parts).to_numpy(dtype=float)
        _bars(ax, parts, series)
        ax.set_title(f"per {scope}", fontsize=9)
        ax.set_ylim(0, 1)
        if i == 1:
            ax.legend(fontsize=7)
    write_table("fig_groups_norm_share", mean)
    out.append(Figure("groups_norm_share", SECTION, (
        "Share of |τ|² (mean over the periods' vectors) held by each parameter group and each layer, beside the "
        "share of the parameters it has: a group above its parameter share is where fine-tuning on one period "
        "moved the weights most. A tied LM head is counted in the embeddings."), to_png(fig)))


def _r_figure(sim_deg: pd.DataFrame, out: list[Figure], write_table: WriteTable) -> None:
    data = sim_deg[(sim_deg["task"] != "all") & sim_deg["scope"].isin(["all", "group"])].copy()
    if data.empty:
        return
    data["label"] = np.where(data["scope"] == "all", "whole τ", data["part"])
    fig = new_figure(9.0, 3.8)
    for i, centred in enumerate((False, True), 1):
        ax = fig.add_subplot(1, 2, i)
        sel = data[data["centred"] == centred]
        labels = list(dict.fromkeys(sel["label"]))
        series, errors = {}, {}
        for (task, gran, _metric), grp in sel.groupby(["task", "granularity", "metric"], sort=True):
            s = grp.set_index("label").reindex(labels)
            r = s["pearson_r"].to_numpy(dtype=float)
            low, high = s["pearson_low"].to_numpy(dtype=float), s["pearson_high"].to_numpy(dtype=float)
            key = f"{task}/{gran}"
            series[key] = r
            errors[key] = np.nan_to_num(np.vstack([r - low, high - r]))
        _bars(ax, labels, series, errors)
        ax.set_ylim(-1, 1)
        ax.set_ylabel("Pearson r (cosine, degradation %)")
        ax.set_title("centred on each task's mean τ" if centred else "raw cosine", fontsize=9)
        if i == 1:
            ax.legend(fontsize=7)
    write_table("fig_groups_similarity_degradation", data.drop(columns=["label"]).reset_index(drop=True))
    out.append(Figure("groups_similarity_degradation", SECTION, (
        "Correlation between the cosine of two periods' vectors WITHIN one parameter group and the degradation "
        "of one period's vector on the other's test split (95 % interval, Fisher z; cells share vectors, so "
        "read it as a lower bound on the uncertainty). More negative: that group's similarity predicts "
        "transfer better. The first bars are the whole-vector r of the structure section."), to_png(fig)))


def _swap_figure(swaps: pd.DataFrame, out: list[Figure], write_table: WriteTable) -> None:
    if swaps.empty:
        return
    data = swaps.copy()
    data["pair"] = data["task"] + " " + data["source_period"] + "→" + data["target_period"]
    groups = list(dict.fromkeys(data["group"]))
    series = {pair: grp.set_index("group")["gap_share"].reindex(groups).to_numpy(dtype=float)
              for pair, grp in data.groupby("pair", sort=True)}
    fig = new_figure(max(6.0, 1.2 * len(groups) + 0.4 * len(series)), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    _bars(ax, groups, series)
    ax.axhline(1, color="grey", lw=0.6, ls="--")
    ax.set_ylabel("share of the gap τ_j → τ_k closed")
    ax.legend(fontsize=7)
    write_table("fig_groups_swaps", data.drop(columns=["pair"]).reset_index(drop=True))
    out.append(Figure("groups_swaps", SECTION, (
        "Group swaps: θ_pre + τ_j with one parameter group taken from τ_k, tested on k. The bar is the share of "
        "the gap between τ_j and the in-period τ_k on k that the group alone closes (1, dashed: all of it; 0: "
        "none; shares need not add up to 1). Test split values; no interval over seeds."), to_png(fig)))


def group_figures(tables: Mapping[str, pd.DataFrame | None], out: list[Figure], write_table: WriteTable) -> None:
    """Every figure the group tables present in ``tables`` support (absent tables: no figure)."""
    norms = tables.get(results.GROUP_NORMS_TABLE)
    if norms is not None and not norms.empty:
        _norm_figure(norms, out, write_table)
    sim_deg = tables.get(results.GROUP_SIM_DEG_TABLE)
    if sim_deg is not None and not sim_deg.empty:
        _r_figure(sim_deg, out, write_table)
    swaps = tables.get(results.GROUP_SWAPS_TABLE)
    if swaps is not None and not swaps.empty:
        _swap_figure(swaps, out, write_table)
