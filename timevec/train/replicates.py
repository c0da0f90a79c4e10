"""Seed replicates: the study once per fine-tuning seed, and every finding's interval over the seeds.

One run of the study gives intervals over test periods and examples, but not over the randomness
of fine-tuning itself; a verdict that flips with the seed (the README once reported "analogy beats
τ_task(j) on 1 of 4 years", a later state of the code 4 of 4) needs an interval over seeds.
``training.seeds: [s₁, s₂, …]`` trains every (task, period) once per seed:

- replicate ``s`` is the whole study with ``training.seed = s`` in its own store under
  ``<store.url>/seeds/<s>/`` (vectors, cells, tables, Ray storage), so every stage, resume and
  check works on it unchanged and each replicate can be inspected or re-run alone;
- all replicates share ONE θ_pre: the first replicate's base is copied into the others before they
  start (an embedded base is pretrained once, not once per seed; the fingerprint is the same);
- :func:`findings_over_seeds` gathers each replicate's findings table and states each finding as
  the mean of its per-seed estimates with a t interval over seeds, and the same verdict rule
  (:func:`timevec.analyze.findings.verdict`) applied to that interval → ``<store.url>/results/findings_seeds``.

A single seed (``seeds`` unset or one value) is the ordinary study in ``store.url``. Torch-free and
Ray-free: the stages are run by the caller (:func:`timevec.pipeline.run_stages`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from timevec.analyze.findings import FINDINGS_COLUMNS, PAPER_CLAIMS, verdict

if TYPE_CHECKING:
    from timevec.config import ExperimentConfig
    from timevec.store import VectorStore

__all__ = ["FINDINGS_SEEDS_TABLE", "findings_over_seeds", "replicate_configs", "replicate_url", "share_base"]

FINDINGS_SEEDS_TABLE = "findings_seeds"


def replicate_url(url: str, seed: int) -> str:
    """Where replicate ``seed`` of the study in ``url`` lives."""
    return f"{url.rstrip('/')}/seeds/{int(seed)}"


def replicate_configs(config: ExperimentConfig) -> list[tuple[int, ExperimentConfig]]:
    """``(seed, config)`` of every replicate: one per ``training.seeds`` entry, or the study itself.

    Replicates get their own store (and Ray storage, when one is configured) so that no run,
    checkpoint or table of one seed can be taken for another's.
    """
    seeds = config.training.seeds
    if not seeds:
        return [(config.training.seed, config)]
    if len(seeds) == 1:
        return [(seeds[0], config.with_overrides([f"training.seed={seeds[0]}", "training.seeds=null"]))]
    out = []
    for seed in seeds:
        overrides = [f"training.seed={seed}", "training.seeds=null", f"store.url={replicate_url(config.store.url, seed)}"]
        if config.ray.storage_path:
            overrides.append(f"ray.storage_path={replicate_url(config.ray.storage_path, seed)}")
        out.append((seed, config.with_overrides(overrides)))
    return out


def share_base(source: VectorStore, target: VectorStore, target_shard_bytes: int | None = None) -> bool:
    """Give ``target`` the base of ``source`` (same fingerprint) unless it has one; True if copied."""
    if target.exists() or not source.exists():
        return False
    target.init(source.base_id, source.get_base(), dtype=source.dtype, target_shard_bytes=target_shard_bytes)
    return True


#: the range an estimate of this unit cannot leave (its interval is clipped to it)
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
