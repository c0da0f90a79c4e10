"""Figures of the selection protocols: each adaptation's gain over the latest vector when its α is an
oracle, chosen from the dates alone, or chosen on other periods — beside the averaging controls.

The question each figure answers is the one a user moving a model to a new period has: without the
new period's labels, does the method beat simply deploying the latest vector, and is what it gains
more than averaging (midpoint α, uniform soup)? See :mod:`timevec.adapt.selection`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from timevec import periods
from timevec.report.adaptation import gain_unit
from timevec.report.plotting import MAX_WIDTH, Figure, WriteTable, new_figure, set_ticks, to_png

#: interpolation methods drawn, in order (the latest vector is the zero line)
_INTERPOLATION_METHODS = ("oracle", "time_proportional", "leave_one_out", "midpoint", "uniform_soup", "in_period")


def _bars(ax, labels: list[str], series: dict[str, list[float]]) -> None:
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for j, (name, values) in enumerate(series.items()):
        ax.bar(x + (j - (len(series) - 1) / 2) * width, np.nan_to_num(np.asarray(values, dtype=float)), width,
               label=name)
    ax.axhline(0, color="black", lw=0.6)


def interpolation_protocol_figures(protocols: pd.DataFrame, out: list[Figure], write_table: WriteTable) -> None:
    """Per (task, granularity, ends): gain over the latest vector of every protocol and control, per middle period."""
    for (task, gran, first, last), grp in protocols.groupby(["task", "granularity", "first", "last"], sort=True):
        higher = bool(grp["higher_is_better"].iloc[0])
        metric = str(grp["metric"].iloc[0])
        suffix, unit = gain_unit(higher, metric)
        targets = periods.sort_periods(grp["test_period"].astype(str).unique())
        methods = [m for m in _INTERPOLATION_METHODS if grp.loc[grp["method"] == m, "value"].notna().any()]
        if not methods or not targets:
            continue
        series = {}
        for m in methods:
            sel = grp.loc[grp["method"] == m].set_index(grp.loc[grp["method"] == m, "test_period"].astype(str))
            series[m] = [float(sel[f"gain_vs_latest{suffix}"].get(t, np.nan)) for t in targets]
        fig = new_figure(min(MAX_WIDTH, max(6.5, 1.5 + 0.3 * len(targets) * len(methods))), 4.2)
        ax = fig.add_subplot(1, 1, 1)
        _bars(ax, targets, series)
        set_ticks(ax, targets, None)
        ax.set_ylabel(f"gain over the latest vector τ_{last}, {unit}")
        ax.set_title(f"{task} ({gran}) τ_{first}→τ_{last}: α chosen by each protocol (test)", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        name = f"protocols_{task}_{gran}_{first}_{last}"
        write_table(f"fig_{name}", grp.reset_index(drop=True))
        out.append(Figure(name, "Selection protocols", (
            "Gain over the latest vector (zero line) of the interpolation when α is an oracle (the target's "
            "validation labels), proportional to the date (no labels), or chosen on the other middle periods; "
            "beside the fixed midpoint α = 0.5 and the uniform soup of every other vector (averaging controls) and the "
            "in-period oracle vector. A protocol whose bars do not clear the midpoint's found averaging, not "
            "time."), to_png(fig)))


def analogy_protocol_figures(protocols: pd.DataFrame, out: list[Figure], write_table: WriteTable) -> None:
    """Per task: the analogy and τ_task(j) scaled under oracle and past-only selection, vs τ_task(j)."""
    for task, grp in protocols.groupby("task", sort=True):
        higher = bool(grp["higher_is_better"].iloc[0])
        metric = str(grp["metric"].iloc[0])
        _, unit = gain_unit(higher, metric)
        pairs = [(str(j), str(k)) for j, k in grp[["source_period", "target_period"]].drop_duplicates().itertuples(
            index=False, name=None)]
        labels = [f"{j}→{k}" for j, k in pairs]
        series = {}
        for method, selection in (("analogy", "oracle"), ("analogy", "past_only"), ("task_j_scaled", "oracle"),
                                  ("task_j_scaled", "past_only"), ("latest", "fixed"), ("in_period", "oracle")):
            sel = grp.loc[(grp["method"] == method) & (grp["selection"] == selection)]
            if not sel["value"].notna().any():
                continue
            index = {(str(r.source_period), str(r.target_period)): float(r.gain_vs_task_j) for r in sel.itertuples()}
            series[f"{method} ({selection.replace('_', '-')})"] = [index.get(p, np.nan) for p in pairs]
        if not series:
            continue
        fig = new_figure(min(MAX_WIDTH, max(6.5, 1.5 + 0.3 * len(pairs) * len(series))), 4.2)
        ax = fig.add_subplot(1, 1, 1)
        _bars(ax, labels, series)
        ax.set_xticks(np.arange(len(labels)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel(f"gain over τ_task(j), {unit}")
        ax.set_title(f"{task}: task analogy, oracle vs past-only α (test)", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
        name = f"analogy_protocols_{task}"
        write_table(f"fig_{name}", grp.reset_index(drop=True))
        out.append(Figure(name, "Selection protocols", (
            "Gain over τ_task(j) of the analogy and of τ_task(j) scaled alone when (α₁, α₂, α₃) are chosen on k's "
            "validation labels (oracle) or on the previous pair (j, k′ < k) and applied to k (past-only; none for "
            "the first k), beside the latest task vector and the in-period oracle."), to_png(fig)))
