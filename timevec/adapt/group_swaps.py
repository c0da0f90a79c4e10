"""Group swaps: θ_pre + τ_j with one parameter group replaced by τ_k's, evaluated on period k.

The similarity tables (:mod:`timevec.analyze.weight_groups`) say which group's *direction* follows time;
a swap asks which group *carries the performance*: start from the vector of period j, give it the
attention (or MLP, embeddings, …) of period k's vector, and test on k. Against the two ends — τ_j
on k (nothing swapped) and the in-period τ_k on k (everything swapped) — the share of the gap the
group closes is ``gain(swap, τ_j) / gain(τ_k, τ_j)`` (:func:`timevec.evaluate.gains.gain`, so positive is
better for every metric): 1 means the group alone carries all of k's advantage, 0 nothing, and the
shares of the groups need not add up to 1 (groups interact). The embedding-swap tool of the
paper's public code is the ``embedding`` row.

A swap is ONE vector term (τ_j's tensors outside the group, τ_k's inside; no tensor is copied)
written by :meth:`timevec.weights.vectors.WeightPatcher.apply_combination` through the evaluator's
``evaluate_weights`` like every other combination. Being a single term it is never merged
(``merge:`` applies to combinations of two or more vectors): a swap is exact. The two ends come
from ``cells.parquet`` when the evaluate stage has run, and are evaluated otherwise.
Ray-free; the stage is :mod:`timevec.distributed.group_swaps`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from timevec.adapt.interpolation import EvaluateWeights, KnownValue, LoadVector, Term, takes_replicates
from timevec.config import ConfigError
from timevec.data.examples import EvalSplit
from timevec.evaluate.bootstrap import interval_of
from timevec.evaluate.gains import gain
from timevec.evaluate.per_example import on_common_prefix
from timevec.param_groups import GROUPS, param_group
from timevec.periods import Period, PeriodError, sort_periods
from timevec.weights.vectors import TimeVector

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SwapItem", "evaluate_swaps", "plan_swaps", "swap_pairs", "swap_terms", "swap_vector", "swaps_done"]


@dataclass(frozen=True)
class SwapItem:
    """Every group swap of one (task, granularity, j, k): one test split, the two ends shared."""

    task: str
    granularity: str
    source: str  # j: the vector the swap starts from
    target: str  # k: the period whose vector lends the group, and whose test split is used
    groups: tuple[str, ...]


def swap_vector(tau_source: TimeVector, tau_target: TimeVector, group: str,
                group_of: Callable[[str], str] = param_group) -> TimeVector:
    """τ_source with every tensor of ``group`` taken from τ_target (no tensor copied)."""
    if set(tau_source.names) != set(tau_target.names):
        raise ValueError("swap: the two vectors have different tensor names")
    return TimeVector({name: (tau_target[name] if group_of(name) == group else tensor)
                       for name, tensor in tau_source.items()})


def swap_terms(tau_source: TimeVector, tau_target: TimeVector, group: str) -> list[Term]:
    """The swap as a combination for ``evaluate_weights``: one term, coefficient 1 (never merged)."""
    return [(1.0, swap_vector(tau_source, tau_target, group))]


def swap_pairs(pairs: Sequence[Sequence[str]] | None, stored: Sequence[str], granularity: str) -> list[tuple[str, str]]:
    """The (j, k) pairs of one granularity: the configured ones of that granularity (a period that
    does not parse is a :class:`ConfigError` naming ``groups.pairs``), or by default the first and
    the last stored period both ways."""
    if pairs is None:
        ordered = sort_periods(stored)
        return [(ordered[0], ordered[-1]), (ordered[-1], ordered[0])] if len(ordered) >= 2 else []
    out = []
    for pair in pairs:
        try:
            j, k = (Period.parse(str(p)) for p in pair)
        except PeriodError as exc:
            raise ConfigError(f"groups.pairs: {list(pair)}: {exc}") from None
        if j.granularity == k.granularity == granularity and j != k:
            out.append((str(j), str(k)))
    return out


def swaps_done(table: pd.DataFrame | None) -> set[tuple[str, str, str, str, str]]:
    """Keys (task, granularity, j, k, group) already in the ``group_swaps`` table."""
    if table is None or len(table) == 0:
        return set()
    return set(zip(table["task"], table["granularity"], table["source_period"].astype(str),
                   table["target_period"].astype(str), table["group"]))


def plan_swaps(task: str, granularity: str, stored: Sequence[str], pairs: Sequence[Sequence[str]] | None,
               groups: Sequence[str], done: set[tuple[str, str, str, str, str]]) -> tuple[list[SwapItem], list[str]]:
    """(items, notes): one item per (j, k) pair whose vectors are both stored, with the groups still to do."""
    items, notes = [], []
    for j, k in swap_pairs(pairs, stored, granularity):
        missing = [p for p in (j, k) if p not in stored]
        if missing:
            notes.append(f"{task}/{granularity} swap {j}→{k}: no stored vector for {', '.join(missing)}; skipped")
            continue
        todo = tuple(g for g in groups if (task, granularity, j, k, g) not in done)
        if todo:
            items.append(SwapItem(task, granularity, j, k, todo))
    return items, notes


def evaluate_swaps(evaluate_weights: EvaluateWeights, load_vector: LoadVector, item: SwapItem, split: EvalSplit,
                   n_tensors: dict[str, int], known: KnownValue | None = None,
                   confidence: float = 0.95) -> list[dict[str, Any]]:
    """Rows of :data:`timevec.results.GROUP_SWAPS_COLUMNS` for every group of ``item`` on k's test ``split``.

    ``gap_share_low``/``gap_share_high``: the percentile interval of the gap share from the cells'
    bootstrap resamples, PAIRED: the swap and both ends are evaluated on k's split with the same
    example draws (:func:`timevec.evaluate.bootstrap.replicates`), the share recomputed per draw
    (draws where the gap is 0 are left out). The ends are therefore evaluated, not read from
    ``known`` (cells carry no replicates; the values are the same, bit for bit); an evaluator without
    ``keep_replicates`` gives NaN bounds, and its ends come from ``known`` where it has them. Under
    ``evaluation.target_halfwidth`` the three may have scored different prefixes of k's seeded example order:
    ``gain_vs_source``, the share and its interval use the shortest
    (:func:`timevec.evaluate.per_example.on_common_prefix`); ``value``, ``value_source`` and ``value_target``
    are each evaluation's own.
    """
    tau_j, tau_k = load_vector(item.source), load_vector(item.target)

    paired = takes_replicates(evaluate_weights)

    def evaluate(terms: list[Term]) -> dict[str, Any]:
        if paired:
            return evaluate_weights(terms, [split], keep_replicates=True)[0]  # type: ignore[call-arg]
        return evaluate_weights(terms, [split])[0]

    ends = {item.source: evaluate([(1.0, tau_j)]), item.target: evaluate([(1.0, tau_k)])}
    for period, row in ends.items():  # no replicates from this evaluator: the cells' values, as before
        value = known(period, item.target) if known is not None and "replicates" not in row else None
        if value is not None:
            row["value"] = value
    v_source, v_target = float(ends[item.source]["value"]), float(ends[item.target]["value"])
    rows = []
    for group in item.groups:
        row = evaluate(swap_terms(tau_j, tau_k, group))
        higher = bool(row["higher_is_better"])
        swap, source, target = on_common_prefix([row, ends[item.source], ends[item.target]])  # target_halfwidth
        closed = gain(swap["value"], source["value"], higher)
        gap = gain(target["value"], source["value"], higher)
        low, high = _share_interval(swap, source, target, higher, confidence)
        rows.append({
            "task": item.task, "granularity": item.granularity, "source_period": item.source,
            "target_period": item.target, "group": group, "n_tensors": int(n_tensors.get(group, 0)),
            "metric": row["metric"], "value": float(row["value"]), "low": float(row.get("low", math.nan)),
            "high": float(row.get("high", math.nan)), "higher_is_better": higher, "value_source": v_source,
            "value_target": v_target, "gain_vs_source": closed,
            "gap_share": closed / gap if gap != 0 and not math.isnan(gap) else math.nan,
            "gap_share_low": low, "gap_share_high": high,
        })
    return rows


def _share_interval(swap: dict[str, Any], source: dict[str, Any], target: dict[str, Any], higher: bool,
                    confidence: float) -> tuple[float, float]:
    """The paired percentile interval of gain(swap, τ_j)/gain(τ_k, τ_j) over the shared resamples."""
    reps = [np.asarray(r.get("replicates", ()), dtype=np.float64) for r in (swap, source, target)]
    if any(r.size == 0 for r in reps) or len({r.size for r in reps}) != 1:
        return math.nan, math.nan
    s, j, k = reps
    sign = 1.0 if higher else -1.0  # gain(a, b) = sign·(a − b), as timevec.evaluate.gains.gain
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(k != j, (sign * (s - j)) / (sign * (k - j)), np.nan)
    interval = interval_of(share, confidence)
    return float(interval.low), float(interval.high)


def swap_groups(configured: Sequence[str] | None, tensor_names: Sequence[str]) -> list[str]:
    """The groups to swap: the configured ones, or every group the base has a tensor in (``other`` included)."""
    present = {param_group(n) for n in tensor_names}
    return [g for g in (configured or GROUPS) if g in present]
