"""Forgetting: how a period's score moves as later periods are learned, for three ways of updating.

The paper's §A.4/A.5 question, asked of the all-pairs cells. For each test period s and each later
(or equal) train period t, the score on s of the model the updating method holds after learning
t, against the score it had on s right after learning s (lag t − s, in periods):

- ``continual``: θ_pre + τ^c_t, the continual chain's vector (:mod:`timevec.train.continual`); its
  cells are the continual store's ordinary ``cells`` table;
- ``independent``: θ_pre + τ_t, each period fine-tuned from θ_pre alone — "updating" by
  replacing the model with the newest one; its cells are the independent study's ``cells``;
- ``equal_steps``: the continual chain's control, θ_pre + τ^e_t with τ^e_t trained from θ_pre on t
  alone for as many steps as the chain has by t (``training.mode: equal_steps``); its cells are the
  equal-steps store's ``cells``. Continual forgetting less than ``equal_steps`` at the same (s, t) is
  retention; forgetting as much is "the chain merely trained longer";
- ``merged``: θ_pre + mean(τ_1 … τ_t), the running uniform average of the independent vectors
  (the config's ``merge:`` method combines them, task arithmetic by default); its cells are
  evaluated by the forgetting stage into ``merged_cells`` (the first period's mean is τ_1 itself,
  taken from the independent cells).

``forgetting`` is positive when the score on s is WORSE at t than at s (:func:`timevec.evaluate.gains.gain`,
the metric's own direction); ``gap_to_in_period_pct`` compares every row with the independent
in-period model of s (the oracle every other table uses), so the three methods share one yardstick.
This module is Ray- and torch-free: planning the merged states, and the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from timevec import results
from timevec.evaluate.gains import gain, gain_pct, higher_is_better

__all__ = ["MODES", "MergedItem", "by_lag", "forgetting_rows", "merged_vector_name", "plan_merged"]

MODES = ("continual", "equal_steps", "independent", "merged")


@dataclass(frozen=True)
class MergedItem:
    """One merged state θ_pre + mean(τ of ``members``), to evaluate on ``test_periods``."""

    task: str
    granularity: str
    members: tuple[str, ...]
    test_periods: tuple[str, ...]

    @property
    def vector(self) -> str:
        return merged_vector_name(self.task, self.members)


def merged_vector_name(task: str, members: Sequence[str]) -> str:
    """``task/mean(first..last)``: how a merged state is named in ``merged_cells``."""
    return f"{task}/mean({members[0]}..{members[-1]})"


def plan_merged(
    task: str, granularity: str, periods: Sequence[str], stored: Iterable[str], done: set[tuple[str, str, str, str]]
) -> list[MergedItem]:
    """The running means of the independent vectors still to evaluate: one item per t ≥ the second period.

    ``periods``: the study's periods in order; the running mean needs every vector up to t, so it
    stops at the first period without a stored vector. ``done``: (task, granularity, vector, test
    period) already in ``merged_cells``.
    """
    have = set(stored)
    prefix: list[str] = []
    for period in periods:
        if period not in have:
            break
        prefix.append(period)
    items = []
    for i in range(1, len(prefix)):
        members = tuple(prefix[: i + 1])
        name = merged_vector_name(task, members)
        missing = tuple(s for s in periods if (task, granularity, name, s) not in done)
        if missing:
            items.append(MergedItem(task, granularity, members, missing))
    return items


def _values(cells: pd.DataFrame | None) -> dict[tuple[str, str, str, str], tuple[float, str]]:
    """(task, granularity, train period, test period) -> (value, metric), vector rows only."""
    if cells is None or cells.empty:
        return {}
    rows = cells[cells["train_period"].notna()]
    keys = zip(rows["task"].astype(str), rows["granularity"].astype(str), rows["train_period"].astype(str),
               rows["test_period"].astype(str))
    return dict(zip(keys, zip(rows["value"].astype(float), rows["metric"].astype(str))))


def forgetting_rows(
    periods_of: dict[tuple[str, str], Sequence[str]],
    continual: pd.DataFrame | None,
    independent: pd.DataFrame | None,
    merged: pd.DataFrame | None,
    equal_steps: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The ``forgetting`` table (:data:`timevec.results.FORGETTING_COLUMNS`).

    ``periods_of``: (task, granularity) → the study's periods in order (lags count positions in
    it). ``merged`` are the ``merged_cells`` rows (train_period = the last member); the first
    period's merged state is the independent vector itself. A (mode, s, t) without a cell is left out.
    """
    ind = _values(independent)
    cells = {"continual": _values(continual), "equal_steps": _values(equal_steps), "independent": ind,
             "merged": {**_values(merged)}}
    for (task, granularity), periods in periods_of.items():  # mean(τ_1) = τ_1
        for s in periods:
            key = (task, granularity, periods[0], s)
            if key in ind and key not in cells["merged"]:
                cells["merged"][key] = ind[key]
    out = []
    for (task, granularity), periods in periods_of.items():
        for mode in MODES:
            values = cells[mode]
            for i, s in enumerate(periods):
                learned = values.get((task, granularity, s, s))
                if learned is None:
                    continue
                own = ind.get((task, granularity, s, s), (math.nan, learned[1]))[0]
                for j in range(i, len(periods)):
                    t = periods[j]
                    got = values.get((task, granularity, t, s))
                    if got is None:
                        continue
                    value, metric = got
                    higher = higher_is_better(metric)
                    out.append({
                        "task": task, "granularity": granularity, "mode": mode, "test_period": s, "train_period": t,
                        "lag": j - i, "metric": metric, "higher_is_better": higher, "value": value,
                        "value_at_learning": learned[0],
                        "forgetting": -gain(value, learned[0], higher) + 0.0,
                        "forgetting_pct": -gain_pct(value, learned[0], higher) + 0.0,
                        "in_period_value": own,
                        "gap_to_in_period_pct": -gain_pct(value, own, higher) + 0.0,
                    })
    return results.forgetting_frame(out)


def by_lag(table: pd.DataFrame) -> pd.DataFrame:
    """Mean forgetting (% of the score at learning) and gap to the in-period model per (task,
    granularity, mode, lag): the figure's numbers. ``n``: the (s, t) pairs averaged."""
    if table is None or table.empty:
        return pd.DataFrame(columns=["task", "granularity", "mode", "lag", "n", "forgetting_pct", "gap_to_in_period_pct"])
    grouped = table.groupby(["task", "granularity", "mode", "lag"], sort=True)
    out = grouped.agg(n=("value", "size"), forgetting_pct=("forgetting_pct", "mean"),
                      gap_to_in_period_pct=("gap_to_in_period_pct", "mean")).reset_index()
    order = {m: k for k, m in enumerate(MODES)}
    return out.sort_values(["task", "granularity", "mode", "lag"], key=lambda c: c.map(order) if c.name == "mode" else c,
                           ignore_index=True)


def headline(table: pd.DataFrame) -> dict[str, str]:
    """One line per (task, granularity, mode): mean forgetting at lag 1 and at the largest lag, and the
    final model's mean gap to the in-period models (what deploying it after the last period costs)."""
    out: dict[str, str] = {}
    lags = by_lag(table)
    for (task, gran, mode), grp in lags.groupby(["task", "granularity", "mode"], sort=False):
        grp = grp.set_index("lag")
        last = int(grp.index.max())
        rows = table[(table["task"] == task) & (table["granularity"] == gran) & (table["mode"] == mode)]
        final = rows[rows["train_period"] == rows["train_period"].max()]
        parts = [f"lag 1 {grp.loc[1, 'forgetting_pct']:+.2f} %" if 1 in grp.index else "",
                 f"lag {last} {grp.loc[last, 'forgetting_pct']:+.2f} %",
                 f"final model vs in-period {final['gap_to_in_period_pct'].mean():+.2f} %"]
        out[f"forgetting {task}/{gran} {mode}"] = ", ".join(p for p in parts if p)
    return out
