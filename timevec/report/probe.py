"""Figures of the linear time probes (:mod:`timevec.analyze.probe`): where in depth a text's date is linearly
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

_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


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
    tasks = [t for t in dict.fromkeys(own["task"]) if isinstance(t, str)]
    poolings, fig, axes = _panels(table)
    for ax, pooling in zip(axes, poolings):
        mine = own[own["pooling"] == pooling]
        base = mine[mine["model"] == "base"].sort_values("layer")
        ax.plot(base["layer"], base["r2"], "o-", color="black", lw=2, label="θ_pre")
        for colour, task in zip(_COLOURS, tasks):
            of_task = mine[mine["task"] == task]
            tuned = of_task.groupby("layer")["r2"].agg(["mean", "min", "max"])
            on_tuned = fixed[(fixed["pooling"] == pooling) & (fixed["task"] == task)].groupby("layer")["r2"].mean()
            ax.plot(tuned.index, tuned["mean"], "s-", color=colour, label=f"τ_{task}, own probe (mean, range)")
            ax.fill_between(tuned.index, tuned["min"], tuned["max"], color=colour, alpha=0.2)
            ax.plot(on_tuned.index, on_tuned.values.clip(min=-1.0), "^--", color=colour, alpha=0.6,
                    label=f"τ_{task}, θ_pre's probe (clipped at −1)")
            for layer in tuned.index:
                by_layer.append({"pooling": pooling, "layer": int(layer), "model": f"{task} (tuned)",
                                 "r2_own_mean": float(tuned.loc[layer, "mean"]), "r2_own_min": float(tuned.loc[layer, "min"]),
                                 "r2_own_max": float(tuned.loc[layer, "max"]),
                                 "r2_base_probe": float(on_tuned.get(layer, np.nan))})
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("held-out R² (date)")
        ax.set_title(f"{pooling}-token pooling" if pooling == "last" else f"{pooling} pooling", fontsize=9)
        ax.set_xticks(sorted(mine["layer"].unique()))
        for layer, r2 in zip(base["layer"], base["r2"]):
            by_layer.append({"pooling": pooling, "layer": int(layer), "model": "base", "r2_own_mean": float(r2),
                             "r2_own_min": float(r2), "r2_own_max": float(r2), "r2_base_probe": float(r2)})
    axes[0].legend(fontsize=7)
    write_table("fig_probe_r2", pd.DataFrame(by_layer))
    out.append(Figure("probe_r2", "Time probes", (
        "Ridge probes (RidgeCV, standardised features) from each layer's pooled hidden state to the text's date as a "
        "fractional year, scored by R² on held-out texts of every period. Black: θ_pre. Solid colours: the tuned models θ_pre + τ_t "
        "of each task, each probe refitted on its own features (mean and range over t): is time still linearly readable after "
        "fine-tuning? Dashed: θ_pre's probe applied unchanged to the tuned features (clipped at −1 in the plot; the table has "
        "the values)."), to_png(fig)))
    if fixed.empty:
        return
    shifts = fixed.groupby(["task", "pooling", "layer"])[["shift_toward", "shift_toward_other", "mean_shift"]].mean().reset_index()
    poolings, fig, axes = _panels(fixed)
    width = 0.8 / (2 * len(tasks))
    for ax, pooling in zip(axes, poolings):
        layers = sorted(shifts.loc[shifts["pooling"] == pooling, "layer"].unique())
        x = np.arange(len(layers))
        for k, (colour, task) in enumerate(zip(_COLOURS, tasks)):
            sel = shifts[(shifts["pooling"] == pooling) & (shifts["task"] == task)].set_index("layer").reindex(layers)
            ax.bar(x + (2 * k - len(tasks) + 0.5) * width, sel["shift_toward"], width, color=colour,
                   label=f"τ_{task}: toward its own period t")
            ax.bar(x + (2 * k - len(tasks) + 1.5) * width, sel["shift_toward_other"], width, color=colour, alpha=0.35,
                   hatch="//", label=f"τ_{task}: toward the other periods (control)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels([str(v) for v in layers])
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
