"""Every finding over seed replicates: the mean of its per-seed estimates with a t interval over
the seeds, and the verdict rule of :func:`timevec.analyze.findings.verdict` applied to that interval
(``<store.url>/results/findings_seeds``). The replicates themselves: :mod:`timevec.train.replicates`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from timevec.analyze.findings import FINDINGS_COLUMNS, PAPER_CLAIMS, verdict
from timevec.results import FINDINGS_SEEDS_TABLE

__all__ = ["FINDINGS_SEEDS_TABLE", "findings_over_seeds"]



_BOUNDS = {"share": (0.0, 1.0), "r": (-1.0, 1.0)}


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "share":
        return f"{value:.0%}"
    return f"{value:+.3f}" if unit in ("r", "points") else f"{value:+.2f}"


def findings_over_seeds(by_seed: Mapping[int, pd.DataFrame], confidence: float = 0.95) -> pd.DataFrame:
    """Every (finding, panel) of the replicates' findings tables, over seeds.

    ``estimate`` is the mean of the per-seed estimates, ``low``/``high`` its t interval over seeds
    (NaN with fewer than two seeds or no spread), ``holds`` the verdict of that interval against
    the finding's line. ``note`` lists the per-seed estimates. Columns
    :data:`~timevec.analyze.findings.FINDINGS_COLUMNS` plus ``n_seeds``.
    """
    frames = [f.assign(seed=int(s)) for s, f in by_seed.items() if f is not None and not f.empty]
    if not frames:
        return pd.DataFrame(columns=[*FINDINGS_COLUMNS, "n_seeds"])
    every = pd.concat(frames, ignore_index=True)
    rows = []
    for (finding, panel), grp in every.groupby(["finding", "panel"], sort=False):
        values = grp["estimate"].astype(float)
        finite = values[np.isfinite(values)]
        unit = str(grp["unit"].iloc[0])
        line = float(grp["line"].iloc[0]) if "line" in grp else 0.0
        side = str(grp["side"].iloc[0]) if "side" in grp else "above"
        mean = float(finite.mean()) if len(finite) else math.nan
        low = high = math.nan
        if len(finite) >= 2 and float(finite.std(ddof=1)) > 0:
            half = stats.t.ppf(0.5 + confidence / 2, len(finite) - 1) * float(finite.std(ddof=1)) / math.sqrt(len(finite))
            low, high = mean - half, mean + half
        elif len(finite) >= 2:
            low = high = mean  # every seed agrees exactly
        bounds = _BOUNDS.get(unit)
        if bounds is not None and not math.isnan(low):  # a share stays in [0, 1], a correlation in [−1, 1]
            low, high = max(low, bounds[0]), min(high, bounds[1])
        holds = "n/a" if math.isnan(mean) else verdict(low, high, line, side)
        interval = "" if math.isnan(low) else f" [{_fmt(low, unit)}, {_fmt(high, unit)}]"
        suffix = "" if unit in ("share", "r") else f" {unit}"
        per_seed = ", ".join(f"{s}: {_fmt(float(v), unit)}" for s, v in zip(grp["seed"], values))
        rows.append({"finding": finding, "panel": panel, "estimate": mean, "low": low, "high": high, "unit": unit,
                     "measured": f"{_fmt(mean, unit)}{interval}{suffix} ({len(finite)} seeds)",
                     "paper": PAPER_CLAIMS.get(finding, ("",))[0], "holds": holds, "note": f"per seed {per_seed}",
                     "line": line, "side": side, "n_seeds": len(finite)})
    return pd.DataFrame(rows, columns=[*FINDINGS_COLUMNS, "n_seeds"])
