"""Cells to a target precision: score a test split's examples in blocks until the value is known well enough.

Why: the all-pairs matrix spends the same number of examples on every cell, although cells differ
in how noisy they are (a perplexity over long blocks settles within a few dozen, a macro-F1 of
three labels needs hundreds). With ``evaluation.target_halfwidth`` set, a cell scores its split in
blocks of ``evaluation.block_examples`` and stops as soon as the bootstrap half-width of its value
(:mod:`timevec.evaluate.bootstrap`, at ``evaluation.confidence``) is at most the target, or when the
split (already capped at ``max_examples``) is used up.

Choices, and why:

- **One fixed, seeded order per test split** (:func:`example_order`): a permutation of the split's
  examples from ``evaluation.bootstrap_seed`` and the split's task, period and name alone — the
  same for every vector — so the examples two cells scored are prefixes of ONE order, and any two
  cells are compared on the shorter one's examples (:func:`timevec.evaluate.per_example.on_common_prefix`).
  A permutation rather than the split's own order: the split is sorted by date, and a prefix of it
  would be the period's first weeks.
- **Stopping on precision, never on the value**: the rule reads the half-width alone (relative for
  perplexity, whose spread grows with its level; absolute for macro-F1 and ROUGE-L, bounded
  scores), so a cell that looks good is not stopped early for looking good — stopping when a
  difference looks significant would bias every comparison the study makes.
- **Units** (:func:`halfwidth`, the cells' ``halfwidth`` column): percent of the value for
  perplexity, points (hundredths of the 0–1 score) for macro-F1 and ROUGE-L; ``target_halfwidth: 2``
  asks for ±2 % perplexity and ±2 points of F1 alike.
- **The first check comes after the first block**: ``block_examples`` is also the fewest examples a
  cell scores. A bootstrap over a handful of examples can understate the spread, down to nothing
  when every resample agrees (a block of one gold label, all predicted right): a half-width of 0 never
  stops a cell — it says the prefix shows no spread, not that the value is known — so such a cell
  goes on, and blocks should not be tiny.
- **Off is today's evaluation**: with the target unset the split is scored whole, in its own order,
  and nothing here runs (the tables stay bit for bit what they were).

Torch-free and Ray-free: :func:`timevec.evaluate.metrics.evaluate` supplies the block scorer.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np

from timevec.evaluate.bootstrap import Interval
from timevec.evaluate.per_example import ExampleStats

__all__ = ["NO_SPREAD", "example_order", "halfwidth", "to_precision"]

#: A half-width (percent or points) at most this is no spread at all, up to rounding: resamples that all agree.
NO_SPREAD = 1e-9


def example_order(n: int, seed: int, task: str, period: str, split: str = "test") -> np.ndarray:
    """The fixed order in which every cell of one split scores its ``n`` examples: a permutation of
    ``range(n)`` that depends on ``(seed, task, period, split)`` alone (the period names its granularity)."""
    name = int.from_bytes(hashlib.sha256(f"{task}/{period}/{split}".encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence((seed, name))).permutation(n)


def halfwidth(metric: str, value: float, interval: Interval) -> float:
    """Half the width of ``interval``: in percent of ``value`` for perplexity, in points (×100) for
    macro-F1 and ROUGE-L; NaN without an interval (or a perplexity of 0, inf or NaN)."""
    width = (float(interval.high) - float(interval.low)) / 2.0
    if math.isnan(width):
        return math.nan
    if metric == "perplexity":
        return width / value * 100.0 if math.isfinite(value) and value > 0 else math.nan
    return width * 100.0


def to_precision(
    order: np.ndarray, block: int, target: float, score: Callable[[np.ndarray], ExampleStats], confidence: float
) -> tuple[ExampleStats, Interval]:
    """Score ``order`` in blocks of ``block`` (``score(indices)`` → their statistics, in that order) until
    the half-width of the value is at most ``target`` (and more than :data:`NO_SPREAD`) or every example is scored; returns the statistics
    of the examples scored (a prefix of ``order``) and the interval of their value. ``order`` is not empty."""
    stats: ExampleStats | None = None
    for start in range(0, len(order), block):
        part = score(order[start : start + block])
        stats = part if stats is None else stats + part
        interval = stats.interval(confidence)
        if NO_SPREAD < halfwidth(stats.metric, stats.value(), interval) <= target:
            break
    if stats is None:
        raise ValueError("to_precision: no examples to score")
    return stats, interval
