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
- :func:`timevec.analyze.seeds.findings_over_seeds` gathers each replicate's findings table and states each finding as
  the mean of its per-seed estimates with a t interval over seeds, and the same verdict rule
  (:func:`timevec.analyze.findings.verdict`) applied to that interval → ``<store.url>/results/findings_seeds``.

A single seed (``seeds`` unset or one value) is the ordinary study in ``store.url``. Torch-free and
Ray-free: the stages are run by the caller (:func:`timevec.pipeline.run_stages`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from timevec.config import ExperimentConfig
    from timevec.store import VectorStore

__all__ = ["replicate_configs", "replicate_url", "share_base"]



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
