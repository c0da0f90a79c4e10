"""(f) The paper's monthly study (58 runs + 3,364 cells) projected for a model of T5-small's size from the
measured seconds per run and per cell, scaled by the parameter count: ≤ 1 hour on this one device?"""

from __future__ import annotations

from typing import Any

from .context import GpuCheck

#: the paper's monthly study (Nylund et al. 2023): 58 monthly runs, 58 × 58 cells, T5-small
PAPER = {"runs": 58, "cells": 3364, "params": 60e6, "model": "T5-small"}
GOAL_HOURS = 1.0


def projection(check: GpuCheck) -> dict[str, Any]:
    """The paper's monthly study on this device, from (b)'s seconds per run and (c)'s per cell."""
    fleet, cells = check.summary["sections"]["fleet"], check.summary["sections"]["cells"]
    run_s = fleet["makespan_s"] / fleet["runs"]  # per run on this device, with the fleet's concurrency
    cell_s = cells["seconds_stage"] / cells["cells"]  # per cell, with the stage's actors, start-up included
    scale = PAPER["params"] / fleet["params"]
    train_h = PAPER["runs"] * run_s * scale / 3600
    cells_h = PAPER["cells"] * cell_s * scale / 3600
    hours = train_h + cells_h
    verdict = "met" if hours <= GOAL_HOURS else "NOT met"
    tokens_per_run = fleet["tokens"] / fleet["runs"]
    check.say(f"[f] projection: the paper's monthly study ({PAPER['runs']} runs + {PAPER['cells']:,} cells) for a "
              f"{PAPER['params'] / 1e6:.0f} M-parameter model ({PAPER['model']}'s size; times scaled by the parameter "
              f"count {PAPER['params'] / 1e6:.0f} M / {fleet['params'] / 1e6:.2f} M = {scale:.3g}) on this one "
              f"{check.summary['device']['name']}: {PAPER['runs']} × {run_s * scale:.1f} s + {PAPER['cells']:,} × "
              f"{cell_s * scale:.3f} s = {train_h:.2f} h + {cells_h:.2f} h = {hours:.2f} h — goal ≤ {GOAL_HOURS:g} h: {verdict} "
              f"(runs of this bench's size, {tokens_per_run:,.0f} tokens each: {1e6 * run_s * scale / tokens_per_run:,.1f} s "
              f"per M training tokens; cells of its split size, {cells['tokens_per_cell']:,.0f} tokens each: "
              f"{1e3 * cell_s * scale / cells['tokens_per_cell']:,.2f} s per k tokens scored)")
    return {
        "paper": PAPER, "goal_hours": GOAL_HOURS, "seconds_per_run_measured": run_s, "seconds_per_cell_measured": cell_s,
        "param_scale": scale, "seconds_per_run_projected": run_s * scale, "seconds_per_cell_projected": cell_s * scale,
        "tokens_per_run": tokens_per_run, "tokens_per_cell": cells["tokens_per_cell"],
        "seconds_per_million_train_tokens_projected": 1e6 * run_s * scale / tokens_per_run,
        "seconds_per_thousand_eval_tokens_projected": 1e3 * cell_s * scale / cells["tokens_per_cell"],
        "train_hours": train_h, "cells_hours": cells_h, "hours": hours,
        "goal_met": hours <= GOAL_HOURS,
        "assumptions": [
            "per run: the fleet's makespan / runs on this device at its concurrency (start-up included), for runs of "
            "this bench's size (steps × batch × length); the paper's months may hold more or fewer tokens",
            "per cell: the evaluate stage's wall time / cells with its actors (start-up included), at this bench's split size",
            "time ∝ parameter count (compute-bound); a model this small is partly launch/overhead-bound on a GPU, so the "
            "scaling is optimistic for T5-small; T5 is encoder-decoder (both halves run per token)",
            "the --quick cut scales a 0.1 M-parameter model by ~600×: its projection checks the arithmetic, not the goal",
        ],
    }
