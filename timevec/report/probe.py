"""Figures of the linear time probes (:mod:`timevec.probe`): where in depth a text's date is linearly
readable, for θ_pre against the tuned models, and whether fine-tuning on t moves θ_pre's read-out toward t.

Two figures, one panel per pooling: held-out R² by layer (θ_pre, the tuned models' refitted probes
as mean and range, and θ_pre's probe applied unchanged to the tuned features), and the fixed
probe's date shift toward each model's own period beside the same shift toward the other periods
(the control for a uniform drift).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from timevec.report.plotting import Figure, WriteTable, new_figure, to_png

__all__ = ["probe_figures"]


def _panels(table: pd.DataFrame) -> tuple[list[str], object, list]:
    poolings = sorted(table["pooling"].astype(str).unique())
    fig = new_figure(max(4.5, 3.6 * len(poolings)), 3.6)
    axes = [fig.add_subplot(1, len(poolings), i + 1) for i in range(len(poolings))]
    return poolings, fig, axes


def probe_figures(table: pd.DataFrame, out: list[Figure], write_table: WriteTable) -> None:
    """Append the probe figures (R² by layer; shift toward the own period) and write their tables."""
    own = table[table["probe"] == "own"]
    fixed = table[table["probe"] == "base"]
    by_layer = []
    poolings, fig, axes = _panels(table)
    for ax, pooling in zip(axes, poolings):
        mine = own[own["pooling"] == pooling]
        base = mine[mine["model"] == "base"].sort_values("layer")
        tuned = mine[mine["model"] != "base"].groupby("layer")["r2"].agg(["mean", "min", "max"])
        on_tuned = fixed[fixed["pooling"] == pooling].groupby("layer")["r2"].mean()
        ax.plot(base["layer"], base["r2"], "o-", color="black", lw=2, label="θ_pre")
        if not tuned.empty:
            ax.plot(tuned.index, tuned["mean"], "s-", color="tab:blue", label="tuned, own probe (mean)")
            ax.fill_between(tuned.index, tuned["min"], tuned["max"], color="tab:blue", alpha=0.2, label="tuned, range")
            ax.plot(on_tuned.index, on_tuned.values, "^--", color="tab:orange", label="θ_pre's probe on tuned")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("held-out R² (date)")
        ax.set_title(f"{pooling}-token pooling" if pooling == "last" else f"{pooling} pooling", fontsize=9)
        ax.set_xticks(sorted(mine["layer"].unique()))
        for layer, r2 in zip(base["layer"], base["r2"]):
            by_layer.append({"pooling": pooling, "layer": int(layer), "r2_base": float(r2),
                             "r2_tuned_mean": float(tuned["mean"].get(layer, np.nan)),
                             "r2_tuned_min": float(tuned["min"].get(layer, np.nan)),
                             "r2_tuned_max": float(tuned["max"].get(layer, np.nan)),
                             "r2_base_probe_on_tuned": float(on_tuned.get(layer, np.nan))})
    axes[0].legend(fontsize=7)
    write_table("fig_probe_r2", pd.DataFrame(by_layer))
    out.append(Figure("probe_r2", "Time probes", (
        "Ridge probes (RidgeCV, standardised features) from each layer's pooled hidden state to the text's date as a "
        "fractional year, scored by R² on held-out texts of every period. Black: θ_pre. Blue: each tuned model θ_pre + τ_t "
        "with its probe refitted on its own features (mean and range over models): is time still linearly readable after "
        "fine-tuning? Orange: θ_pre's probe applied unchanged to the tuned features."), to_png(fig)))
    if fixed.empty:
        return
    shifts = fixed.groupby(["pooling", "layer"])[["shift_toward", "shift_toward_other", "mean_shift"]].mean().reset_index()
    poolings, fig, axes = _panels(fixed)
    for ax, pooling in zip(axes, poolings):
        sel = shifts[shifts["pooling"] == pooling].sort_values("layer")
        x = np.arange(len(sel))
        ax.bar(x - 0.2, sel["shift_toward"], 0.4, label="toward the model's own period t")
        ax.bar(x + 0.2, sel["shift_toward_other"], 0.4, label="toward the other periods (control)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in sel["layer"]])
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("predicted-date shift, years")
        ax.set_title(f"{pooling} pooling", fontsize=9)
    axes[0].legend(fontsize=7)
    write_table("fig_probe_shift", shifts)
    out.append(Figure("probe_shift", "Time probes", (
        "Does fine-tuning on period t pull θ_pre's probe toward t? The fixed probe's prediction on the tuned model minus on "
        "θ_pre, signed toward the middle of t (texts of t itself left out), averaged over held-out texts and tuned models; "
        "beside the same shift toward every other period. Only a bar above its control is a pull specific to t."),
        to_png(fig)))
