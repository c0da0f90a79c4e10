"""Comparing a result with a baseline in the metric's own direction: better, gain, gain in percent.

One definition serves every table (interpolation, soups, patching, analogies, the report), so that
"beats" and "gain" mean the same thing everywhere. Gains are POSITIVE when the value is BETTER
than the baseline, whatever the metric's direction (perplexity: lower is better; macro-F1,
ROUGE-L: higher is better). NaN is never better than anything, and anything real is better than
a missing (NaN) baseline — a missing number must not make a method look worse. Torch-free.
"""

from __future__ import annotations

import math

__all__ = ["METRIC_HIGHER_IS_BETTER", "better", "gain", "gain_pct", "higher_is_better"]

#: Metric directions by name, for tables that carry no ``higher_is_better`` column.
METRIC_HIGHER_IS_BETTER: dict[str, bool] = {
    "perplexity": False,
    "loss": False,
    "macro_f1": True,
    "accuracy": True,
    "rougeL": True,
    "rouge_l": True,
}


def higher_is_better(metric: str) -> bool:
    """Direction of a metric by name; an unknown metric is an error rather than a silent guess."""
    try:
        return METRIC_HIGHER_IS_BETTER[metric]
    except KeyError as exc:
        raise ValueError(f"unknown metric {metric!r}: known are {sorted(METRIC_HIGHER_IS_BETTER)}") from exc


def better(value: float, baseline: float, higher: bool) -> bool:
    """Whether ``value`` is strictly better than ``baseline`` (NaN is never better)."""
    value, baseline = float(value), float(baseline)
    if math.isnan(value):
        return False
    if math.isnan(baseline):
        return True
    return value > baseline if higher else value < baseline


def gain(value: float, baseline: float, higher: bool) -> float:
    """``value − baseline`` signed so that positive means ``value`` is better (NaN if either is)."""
    diff = float(value) - float(baseline)
    return (diff if higher else -diff) + 0.0  # + 0.0: no "-0.0" in tables when the two are equal


def gain_pct(value: float, baseline: float, higher: bool) -> float:
    """:func:`gain` in percent of ``|baseline|`` (NaN when the baseline is 0 or missing)."""
    base = float(baseline)
    if math.isnan(base) or base == 0.0:
        return math.nan
    return gain(value, base, higher) / abs(base) * 100.0
