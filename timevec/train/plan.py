"""The run plan of a study: which fine-tunes exist, and the name of the fleet that trains them.

One job: turn a config into the list of (task, granularity, period) runs, each with a stable key
that names its directories and trials. Pure Python, no Ray or torch, so planning is cheap and any
stage (the fleet, the benchmark) can ask what a study consists of.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from timevec.config import ExperimentConfig
from timevec.periods import Granularity

__all__ = ["RunSpec", "experiment_name", "plan_runs"]


@dataclass(frozen=True)
class RunSpec:
    """One fine-tune: a fresh copy of the base trained on one (task, period) train split."""

    task: str
    period: str
    granularity: Granularity

    @property
    def key(self) -> str:
        """``<task>_<period>``: unique per run (tasks have no '-', periods no '_'), safe in paths."""
        return f"{self.task}_{self.period}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def plan_runs(config: ExperimentConfig) -> list[RunSpec]:
    """Every run of the study: each task × granularity × period (``config.period_list``), in time order."""
    runs: list[RunSpec] = []
    for task in config.tasks:
        for granularity in config.granularities:
            for period in config.period_list(granularity):
                runs.append(RunSpec(task, period, granularity))
    return runs


def experiment_name(config: ExperimentConfig) -> str:
    """The Tune experiment of a study's fleet: stable, so a re-submission finds earlier checkpoints."""
    return f"{config.name}-finetune"

