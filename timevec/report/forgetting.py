"""The forgetting figure: how much worse each updating method does on a period as later ones are learned.

One panel pair per (task, granularity): left, the mean forgetting by lag t − s (the score on s after
learning t, in % worse than right after learning s); right, the same rows against one common
yardstick, the independent in-period model of s. Continual, independent and merged updating are
the three lines (:mod:`timevec.analyze.forgetting`). The numbers are ``fig_forgetting_<task>_<granularity>``.
"""

from __future__ import annotations

import pandas as pd

from timevec.analyze.forgetting import MODES, by_lag
from timevec.report.plotting import Figure, WriteTable, new_figure, to_png

__all__ = ["forgetting_figures"]

_LABELS = {"continual": "continual (chain: t starts from t−1)", "independent": "independent (θ_pre + τ_t)",
           "equal_steps": "equal steps (θ_pre + τ_t trained as long as the chain)",
           "merged": "merged (θ_pre + mean τ_1..τ_t)"}


def forgetting_figures(table: pd.DataFrame, out: list[Figure], write_table: WriteTable) -> None:
    """Append one figure per (task, granularity) of the ``forgetting`` table."""
    lags = by_lag(table)
    for (task, gran), grp in lags.groupby(["task", "granularity"], sort=True):
        fig = new_figure(9.0, 3.8)
        left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for mode in MODES:
            rows = grp[grp["mode"] == mode]
            if rows.empty:
                continue
            left.plot(rows["lag"], rows["forgetting_pct"], marker="o", label=_LABELS[mode])
            right.plot(rows["lag"], rows["gap_to_in_period_pct"], marker="o", label=_LABELS[mode])
        for ax, what in ((left, "worse than right after learning s, %"), (right, "worse than the in-period τ_s, %")):
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(sorted(int(x) for x in grp["lag"].unique()))
            ax.set_xlabel("lag t − s (periods learned since s)")
            ax.set_ylabel(what, fontsize=8)
        metric = str(table.loc[table["task"] == task, "metric"].iloc[0])
        left.set_title(f"{task} ({gran}), {metric}: forgetting", fontsize=9)
        right.set_title("against one yardstick", fontsize=9)
        left.legend(fontsize=7)
        name = f"forgetting_{task}_{gran}"
        write_table(f"fig_{name}", grp.reset_index(drop=True))
        out.append(Figure(name, "Continual updating and forgetting", (
            "For each test period s and later train period t: the score on s of the model each updating method "
            "holds after learning t, as % worse (positive) than its score on s right after learning s (left), "
            "and than the independent in-period model τ_s (right), averaged over s at each lag t − s. Continual: "
            "each run starts from the previous period's weights; independent: each period from θ_pre; merged: the "
            "running uniform average of the independent vectors."), to_png(fig)))
