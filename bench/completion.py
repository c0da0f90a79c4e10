"""Bench: complete a full cells matrix from a designed fraction of its cells, against the full matrix.

    .venv/bin/python bench/completion.py --store PATH [--store PATH …] [--seeds 10]
                                         [--designs 0:0.1,0:0.2,1:0.1,1:0.2]

For every store (a folder holding a full ``cells`` table: ``timevec demo --tiny --store PATH``), every
(task, granularity, metric) matrix in it whose vectors × test periods are all evaluated, and every
design ``band:fraction`` (:func:`timevec.analyze.completion.design_cells`, one per seed), the cells of
the design are kept, the rest completed (:func:`timevec.analyze.completion.complete_cells`) and
compared with their evaluated values. Printed per matrix and design, as the mean over the seeds:

- ``evaluated``: cells of the design / all cells (and the share);
- ``rmse``: root mean squared error of the completed cells against their full values, in the
  metric's units (perplexity, macro-F1 …);
- ``half-width``: the median over the design's evaluated cells of their own bootstrap 95 % half-width
  ``(high − low) / 2``: how far an evaluated cell is from its own expectation;
- ``coverage``: the share of completed cells whose 95 % interval holds the full value;
- ``goal``: the issue's bar — rmse ≤ half-width and coverage ≥ 90 % at most 30 % of cells evaluated
  (flagged when the design evaluates more: the two-cells-per-row minimum makes small matrices dense).
"""

from __future__ import annotations

import math

import harness
import numpy as np
import pandas as pd

from timevec.analyze.completion import complete_cells
from timevec.evaluate.design import design_cells
from timevec.periods import Period
from timevec.store import VectorStore

DEFAULT_DESIGNS = "0:0.1,0:0.2,1:0.1,1:0.2"
GOAL_SHARE = 0.30


def full_groups(cells: pd.DataFrame) -> list[tuple[tuple[str, str, str], pd.DataFrame]]:
    """The (task, granularity, metric) groups of non-base rows whose matrix is complete."""
    groups = []
    frame = cells[cells["vector"] != "base"]
    for key, group in frame.groupby(["task", "granularity", "metric"], sort=True):
        group = group.drop_duplicates(["train_period", "test_period"], keep="last")
        if len(group) == group["train_period"].nunique() * group["test_period"].nunique():
            groups.append((tuple(map(str, key)), group))
    return groups


def one_design(group: pd.DataFrame, band: int, fraction: float, seed: int) -> dict[str, float]:
    """Keep one design's cells of a full matrix, complete the rest, measure against the full values."""
    train = [str(p) for p in sorted({Period.parse(p) for p in group["train_period"]})]
    test = [str(p) for p in sorted({Period.parse(p) for p in group["test_period"]})]
    chosen = design_cells(train, test, band, fraction, seed)
    keys = list(zip(group["train_period"].astype(str), group["test_period"].astype(str)))
    kept = group[[k in chosen for k in keys]]
    done = complete_cells(kept, seed=seed)
    compared = done.merge(group[["train_period", "test_period", "value"]], on=["train_period", "test_period"],
                          suffixes=("", "_full"))
    error = compared["value"] - compared["value_full"]
    inside = (compared["low"] <= compared["value_full"]) & (compared["value_full"] <= compared["high"])
    return {"evaluated": len(kept), "total": len(group), "rmse": float(np.sqrt(np.mean(error**2))) if len(error) else math.nan,
            "half_width": float(np.median((kept["high"] - kept["low"]) / 2)),
            "coverage": float(inside.mean()) if len(inside) else math.nan}


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--store", action="append", required=True, help="a store folder with a full cells table (repeatable)")
    parser.add_argument("--seeds", type=int, default=10, help="designs drawn per (band, fraction) (default %(default)s)")
    parser.add_argument("--designs", default=DEFAULT_DESIGNS, help="band:fraction,… (default %(default)s)")
    args = parser.parse_args()
    designs = [(int(b), float(f)) for b, f in (d.split(":") for d in args.designs.split(","))]
    harness.output_block()
    for path in args.store:
        cells = VectorStore(path).read_table("cells")
        groups = full_groups(cells)
        print(f"\n== {path}: {len(cells)} cells rows, {len(groups)} full matrices; {harness.load_note()}")
        for (task, granularity, metric), group in groups:
            shape = f"{group['train_period'].nunique()}×{group['test_period'].nunique()}"
            print(f"{task}/{granularity} {metric} ({shape}):")
            for band, fraction in designs:
                runs = pd.DataFrame([one_design(group, band, fraction, seed) for seed in range(args.seeds)])
                share = runs["evaluated"].mean() / runs["total"].iloc[0]
                rmse, half, coverage = runs["rmse"].mean(), runs["half_width"].mean(), runs["coverage"].mean()
                goal = "met" if rmse <= half and coverage >= 0.9 else "NOT met"
                if share > GOAL_SHARE:
                    goal += f" (but > {GOAL_SHARE:.0%} evaluated)"
                print(f"  band {band} fraction {fraction:.2f}: evaluated {runs['evaluated'].mean():5.1f}/{runs['total'].iloc[0]}"
                      f" ({share:4.0%})  rmse {rmse:8.4f}  half-width {half:8.4f}  coverage {coverage:5.1%}"
                      f"  goal {goal}")


if __name__ == "__main__":
    main()
