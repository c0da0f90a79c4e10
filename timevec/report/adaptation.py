"""Figures of adaptation without training: interpolation curves and gains, time soups, patching a
missing period, forecasts of held-out future periods, and task analogies against their baselines."""

from __future__ import annotations

import numpy as np
import pandas as pd

from timevec import periods
from timevec.adapt import summaries
from timevec.report.plotting import MAX_WIDTH, Figure, WriteTable, new_figure, set_ticks, to_png


def interpolation_figures(interp: pd.DataFrame, summary: pd.DataFrame, out: list[Figure],
                           write_table: WriteTable) -> None:
    from matplotlib import colormaps

    keys = ["task", "granularity", "first", "last"]
    if "split" in interp:
        interp = interp.loc[interp["split"].fillna("test") == "test"]  # the curves are test values
    for (task, gran, first, last), grp in interp.groupby(keys, sort=True):
        first, last = str(first), str(last)
        metric = str(grp["metric"].iloc[0])
        higher = bool(grp["higher_is_better"].iloc[0])
        tests = periods.sort_periods(grp["test_period"])
        summ = summary.loc[(summary["task"] == task) & (summary["granularity"] == gran)
                           & (summary["first"] == first) & (summary["last"] == last)]
        cmap = colormaps["viridis"]
        fig = new_figure(7.5, 4.8)
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
        out.append(Figure(name, "Interpolation", (
            f"{metric} of θ_pre + (1−α)·τ_{first} + α·τ_{last} on each test period; stars mark "
            "the oracle α (chosen on the period's validation split), dotted lines the in-period vector. "
            "Look for intermediate periods peaking "
            "at intermediate α that moves toward 1 for later periods, and whether the best point "
            f"beats α=1 (the latest vector, τ_{last})."), to_png(fig)))

        if summ.empty:
            continue
        fig = new_figure(7.5, 4.0)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(summ))
        width = 0.27
        suffix, unit = gain_unit(higher, metric)
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
        out.append(Figure(name, "Interpolation", (
            f"Gain ({unit}) of the best α over each end and over the in-period vector, per period in "
            "between (positive = interpolation is better). The bar against the latest vector is "
            "the honest test: interpolation is only useful where it is positive."), to_png(fig)))


def gain_unit(higher: bool, metric: str) -> tuple[str, str]:
    """Which gain column to plot and its unit: absolute points for macro-F1 / ROUGE-L (a percentage
    of a near-zero score means nothing), percent for perplexity (its scale is arbitrary)."""
    return ("", f"{metric} points") if higher else ("_pct", f"% of {metric}")


def adaptation_figures(table: pd.DataFrame, kind: str, out: list[Figure], write_table: WriteTable) -> None:
    """Soups or patching: on each period's test split, how much the method beats each baseline."""
    method = "soup" if kind == "soups" else "patched"
    test = table.loc[(table["split"] == "test") & (table["method"] != method) & table["gain"].notna()]
    for (task, gran), grp in test.groupby(["task", "granularity"], sort=True):
        metric = str(grp["metric"].iloc[0])
        pers = periods.sort_periods(grp["period"].astype(str))
        methods = [m for m in ("in_period", "previous", "next", "latest", "base") if (grp["method"] == m).any()]
        fig = new_figure(min(MAX_WIDTH, max(6.0, 1.5 + 0.35 * len(pers) * len(methods) / 2)), 4.0)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(pers))
        width = 0.8 / max(len(methods), 1)
        for j, m in enumerate(methods):
            sel = grp.loc[grp["method"] == m].set_index(grp.loc[grp["method"] == m, "period"].astype(str))["gain"]
            ax.bar(x + (j - (len(methods) - 1) / 2) * width, [float(sel.get(p, np.nan)) for p in pers], width,
                   label=f"vs {m}")
        ax.axhline(0, color="black", lw=0.6)
        set_ticks(ax, pers, None)
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
        out.append(Figure(name, "Time soups" if kind == "soups" else "Patching a missing period", caption, to_png(fig)))


def analogy_figures(summary: pd.DataFrame, out: list[Figure], write_table: WriteTable) -> None:
    for task, grp in summary.groupby("task", sort=True):
        split = "test" if (grp["split"] == "test").any() else str(grp["split"].iloc[0])
        g = grp.loc[grp["split"] == split].reset_index(drop=True)
        # the base is left out: its gap is an order of magnitude larger and flattens the rest
        if g.empty:
            continue
        suffix, unit = gain_unit(bool(g["higher_is_better"].iloc[0]), str(g["metric"].iloc[0]))
        baselines = [b for b in summaries.ANALOGY_BASELINES
                     if b != "base" and g[f"gain_vs_{b}{suffix}"].notna().any()]
        if g.empty or not baselines:
            continue
        fig = new_figure(min(MAX_WIDTH, max(6.0, 1.2 + 0.9 * len(g) * max(len(baselines), 1) / 3)), 4.2)
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
        out.append(Figure(name, "Task analogy", (
            f"Gain of the best analogy point for {task} moving from period j to k, against each "
            "baseline except the base (its numbers are in the table). Compare the bars against "
            "task_j_scaled (scaling the task vector alone) and latest: much of a published "
            "analogy gain can come from scaling alone."),
            to_png(fig)))




def forecast_figures(table: pd.DataFrame, out: list[Figure], write_table: WriteTable) -> None:
    """Per granularity, one panel per task: each forecast's gain over the latest vector by horizon δ.

    The base is left out of the plot (its gap flattens the rest; its rows are in the table); the
    in-period vector is drawn dashed and named an oracle.
    """
    test = table.loc[table["split"] == "test"]
    for gran, grp in test.groupby("granularity", sort=True):
        tasks = sorted(grp["task"].unique())
        fig = new_figure(max(5.0, 4.2 * len(tasks)), 3.8)
        for i, task in enumerate(tasks):
            ax = fig.add_subplot(1, len(tasks), i + 1)
            g = grp.loc[grp["task"] == task]
            suffix, unit = gain_unit(bool(g["higher_is_better"].iloc[0]), str(g["metric"].iloc[0]))
            for method, m in g.loc[~g["method"].isin(["base", "latest"])].groupby("method", sort=True):
                by = m.groupby("horizon")[f"gain_vs_latest{suffix}"].mean().sort_index()
                oracle = method == "in_period"
                ax.plot(by.index, by.to_numpy(dtype=float), "--" if oracle else "-o", ms=4,
                        label=f"{method} (oracle)" if oracle else method)
            ax.axhline(0, color="black", lw=0.8, label="latest")
            ax.set_xticks(sorted(int(h) for h in g["horizon"].unique()))
            ax.set_xlabel("δ: periods ahead of the latest past vector")
            ax.set_ylabel(f"gain vs latest, {unit} (positive = better)")
            ax.set_title(f"{task} ({gran})", fontsize=9)
            ax.legend(fontsize=7)
        name = f"forecast_{gran}"
        write_table(f"fig_{name}", grp.reset_index(drop=True))
        out.append(Figure(name, "Forecasting future periods", (
            "The last periods held out and their weights predicted from earlier vectors only (Taylor step, "
            "least-squares trend, EMA, λ·τ_latest with λ chosen on the past, uniform soup), as the gain over "
            "deploying the latest vector on each held-out period's test split, by how many periods ahead it is. "
            "The in-period vector is an oracle (it was trained on the held-out period); the base is in the table."),
            to_png(fig)))
