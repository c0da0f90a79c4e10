"""Continual updating (``training.mode: continual``): each period's run starts where the last one ended.

The paper's §A.4/A.5 setting: the run for period t starts from period t−1's fine-tuned weights
θ_pre + τ_{t−1} (read from the store, so a resumed chain starts from exactly the stored vector),
optionally replaying a fraction of the earlier periods' training text; τ_t is still stored
against θ_pre, so every stage that reads vectors (the all-pairs evaluate stage first) runs on
continual vectors unchanged. One chain per (task, granularity), in period order.

Where continual vectors live: a store per mode, ``<store.url>/continual`` (``continual-replay-<r>``
with replay), beside the independent study in ``<store.url>`` and sharing its θ_pre (copied once,
as seed replicates do). A separate store rather than a suffix on task names because every stage
keys vectors by (task, period): a suffixed task would need a task-name parser in the corpus
lookups, the analogy's task names and every table, and the analysis (the streamed Gram matrix,
decay fits) would mix both modes; a store per mode keeps each an ordinary study — cells,
similarity, decay and the report of the continual vectors — and the forgetting stage reads both.

This module is the Ray-free half: the store of a mode, each run's predecessor, the order in which
chains advance (:func:`next_wave`, what the fleet submits), and replay mixing. Torch-free.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from timevec.store.checksum import shard_digest

if TYPE_CHECKING:
    from timevec.config import ExperimentConfig
    from timevec.store import VectorStore
    from timevec.train.plan import RunSpec

__all__ = ["EQUAL_STEPS_DIR", "MODE_DIR", "chain_position", "chains", "for_mode", "independent_url", "mix_replay",
           "mode_url", "next_wave", "predecessor", "run_steps"]

MODE_DIR = "continual"
#: The equal-steps control's store: ``<study>/continual-equal-steps`` (a continual-family store: same θ_pre).
EQUAL_STEPS_DIR = f"{MODE_DIR}-equal-steps"
T = TypeVar("T")


def mode_url(url: str, replay: float = 0.0, mode: str = "continual") -> str:
    """Where the continual vectors of the study in ``url`` live (one store per replay fraction), or
    with ``mode="equal_steps"`` its equal-steps control's."""
    if mode == "equal_steps":
        return f"{url.rstrip('/')}/{EQUAL_STEPS_DIR}"
    leaf = MODE_DIR if replay == 0 else f"{MODE_DIR}-replay-{replay:g}"
    return f"{url.rstrip('/')}/{leaf}"


def chain_position(config: ExperimentConfig, run: RunSpec) -> int:
    """1 for a chain's first period, 2 for the second, …: how many periods the chain has learned by ``run``."""
    periods = config.period_list(run.granularity)
    if run.period not in periods:
        raise ValueError(f"run {run.key}: period {run.period} is not one of the study's {run.granularity} periods")
    return periods.index(run.period) + 1


def run_steps(config: ExperimentConfig, run: RunSpec, steps: int | None) -> int | None:
    """The run's ``training.steps``: in ``equal_steps`` mode (the continual chain's control) the
    chain's total by this period, ``chain_position × steps``; otherwise ``steps`` unchanged."""
    if config.training.mode != "equal_steps" or steps is None:
        return steps
    return chain_position(config, run) * steps


def independent_url(url: str) -> str:
    """The independent study's store, from a continual store's url (its parent)."""
    parent, _, leaf = url.rstrip("/").rpartition("/")
    if not leaf.startswith(MODE_DIR) or not parent:
        raise ValueError(f"store {url} is not a continual store (<study>/{MODE_DIR}…)")
    return parent


def for_mode(config: ExperimentConfig) -> ExperimentConfig:
    """The config a stage runs with: in continual mode its store (and Ray storage) moved to the mode's
    store, which gets the independent study's θ_pre when that exists (one base for both modes)."""
    mode = config.training.mode
    if mode not in ("continual", "equal_steps"):
        return config
    from timevec.store import VectorStore
    from timevec.train.replicates import share_base

    replay = config.training.replay
    overrides = [f"store.url={mode_url(config.store.url, replay, mode)}"]
    if config.ray.storage_path:
        overrides.append(f"ray.storage_path={mode_url(config.ray.storage_path, replay, mode)}")
    moved = config.with_overrides(overrides)
    share_base(VectorStore.from_config(config.store), VectorStore.from_config(moved.store), config.store.target_shard_bytes)
    return moved


def predecessor(config: ExperimentConfig, run: RunSpec) -> str | None:
    """The period whose vector run ``run`` starts from (None: the chain's first run, or independent mode)."""
    if config.training.mode != "continual":
        return None
    periods = config.period_list(run.granularity)
    if run.period not in periods:
        raise ValueError(f"run {run.key}: period {run.period} is not one of the study's {run.granularity} periods")
    i = periods.index(run.period)
    return periods[i - 1] if i else None


def chains(runs: Iterable[RunSpec]) -> dict[tuple[str, str], list[RunSpec]]:
    """The runs by chain (task, granularity), each in period order."""
    from timevec.periods import Period

    out: dict[tuple[str, str], list[RunSpec]] = {}
    for run in runs:
        out.setdefault((run.task, run.granularity), []).append(run)
    return {key: sorted(chain, key=lambda r: Period.parse(r.period)) for key, chain in out.items()}


def next_wave(
    config: ExperimentConfig, runs: Sequence[RunSpec], stored: Callable[[RunSpec], bool], stopped: set[str]
) -> tuple[list[RunSpec], dict[str, str]]:
    """(runs to submit now, run key → why it cannot run at all) for continual chains.

    A chain's next run is its first run without a stored vector; it may start once its predecessor's
    vector is stored. A chain whose next run is in ``stopped`` (it failed in this submission) or
    whose predecessor is neither stored nor planned is blocked: every run left in it gets a reason.
    Different chains advance in the same wave (they run in parallel).
    """
    wave: list[RunSpec] = []
    blocked: dict[str, str] = {}
    for chain in chains(runs).values():
        left = [r for r in chain if not stored(r)]
        if not left:
            continue
        head = left[0]
        reason = None
        if head.key in stopped:
            reason = f"its chain stopped at {head.task}/{head.period}, which failed"
        else:
            before = predecessor(config, head)
            planned = {r.period for r in chain}
            if before is not None and before not in planned and not stored(_same_chain(head, before)):
                reason = f"its predecessor {head.task}/{before} is not in the store (train it first)"
        if reason is None:
            wave.append(head)  # the runs after it wait for a later wave
        else:
            blocked.update({r.key: reason for r in left})
    return wave, blocked


def _same_chain(run: RunSpec, period: str) -> RunSpec:
    from timevec.train.plan import RunSpec

    return RunSpec(run.task, period, run.granularity)


def mix_replay(current: Sequence[T], earlier: Sequence[T], fraction: float, seed: int) -> tuple[list[T], int]:
    """Period t's examples plus ``round(fraction·len(current))`` drawn without replacement from
    ``earlier`` (the chain's earlier periods' training examples, pooled; capped at its size).

    Returns (the run's examples, how many were replayed). The draw is a pure function of the
    inputs and ``seed``, so a resumed run replays the same examples (its fingerprint matches).
    """
    k = min(round(fraction * len(current)), len(earlier))
    if k <= 0:
        return list(current), 0
    chosen = sorted(random.Random(seed).sample(range(len(earlier)), k))
    return [*current, *(earlier[i] for i in chosen)], k


def start_manifest(config: ExperimentConfig, run: RunSpec, store: VectorStore, replayed: int) -> dict[str, Any]:
    """What a run's manifest records about its start: mode, predecessor (and its shards' digests), replay."""
    before = predecessor(config, run)
    out: dict[str, Any] = {"mode": config.training.mode}
    if config.training.mode == "equal_steps":
        out["equal_steps"] = {"chain_position": chain_position(config, run),
                              "steps": run_steps(config, run, config.training.steps)}
    if config.training.mode == "continual":
        shas = [shard_digest(s) for s in store.manifest(run.task, before)["shards"]] if before else []
        out["continual"] = {
            "predecessor": before,
            "predecessor_shards": shas,
            "replay": config.training.replay,
            "replayed_examples": replayed,
        }
    return out
