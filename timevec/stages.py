"""The stage registry: each stage of the study declared once, in pipeline order.

Why: a stage used to be written in many places (the pipeline's order, the CLI's subcommands and help,
``run --stages``, the "skipped" rule inside each adapter, the docs' command table). Here one
:class:`Stage` says everything about it — its name and help, the config section it reads, the result
tables it reads and writes, when it does not apply to a config (and why), and which function runs it —
and the pipeline, the CLI and the docs (:func:`command_rows`, checked against docs/GUIDE.md by a test)
are derived from :data:`REGISTRY`. Adding a stage is one :func:`register` call and its runner.

A runner is named as ``"module:function"`` and imported only when the stage runs: the Ray stages live in
:mod:`timevec.distributed` (which the core never imports), and this module stays light (no torch, no Ray,
no pandas), so ``timevec --help`` and a mistyped stage name answer at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timevec.config import ExperimentConfig
    from timevec.store import VectorStore

__all__ = ["REGISTRY", "STAGES", "Stage", "StageFunction", "StageResult", "command_rows", "register"]

StageResult = dict[str, Any]
"""What a stage's runner returns: ``tables`` and ``headline`` to print, ``report``/``findings``/``findings_file``."""

StageFunction = Callable[["ExperimentConfig", "VectorStore"], StageResult]


@dataclass(frozen=True)
class Stage:
    """One stage of the study, declared once.

    ``skip(config)`` gives the reason the stage does not apply to ``config`` (None: it applies); the
    pipeline then prints ``stage <name>: skipped (<reason>)`` instead of running it. With ``strict``, a
    stage named on its own (``--stages`` a subset, or its subcommand) that does not apply is bad input
    instead (exit 2, before any stage runs): it would otherwise fail only after the fine-tunes.
    ``leased``: the stage rewrites result tables, so it runs under the store's writer lease of its name
    (the fine-tune stage takes its own, per run, inside the fleet).
    """

    name: str
    help: str
    section: str | None
    runner: str
    writes: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    skip: Callable[[ExperimentConfig], str | None] | None = None
    strict: bool = False
    leased: bool = True

    def function(self) -> StageFunction:
        """The runner, imported now."""
        module, name = self.runner.split(":")
        return getattr(importlib.import_module(module), name)

    def skip_reason(self, config: ExperimentConfig) -> str | None:
        return self.skip(config) if self.skip is not None else None


REGISTRY: dict[str, Stage] = {}
"""Every stage by name, in pipeline order (the order of :func:`register` calls)."""


def register(stage: Stage) -> Stage:
    if stage.name in REGISTRY:
        raise ValueError(f"stage {stage.name!r} is declared twice")
    REGISTRY[stage.name] = stage
    return stage


def _continual_only(config: ExperimentConfig) -> str | None:
    mode = config.training.mode
    return None if mode == "continual" else f"training.mode is {mode}, not continual"


def _full_design(config: ExperimentConfig) -> str | None:
    design = config.evaluation.design
    return "evaluation.design is full: every cell is evaluated" if design == "full" else None


def _forecast_horizon(config: ExperimentConfig) -> str | None:
    from timevec.adapt.forecast import check_horizon
    from timevec.errors import ConfigError

    try:
        check_horizon(config)
    except ConfigError as exc:
        return str(exc)
    return None


def _analogy_tasks(config: ExperimentConfig) -> str | None:
    if config.analogy.task in config.tasks and "lm" in config.tasks:
        return None
    return f"it needs the tasks 'lm' and {config.analogy.task!r} in config.tasks (have {config.tasks})"


def _group_swaps(config: ExperimentConfig) -> str | None:
    return None if config.groups.swaps else "groups.swaps is false"


_RAY = "timevec.distributed.pipeline"
_CORE = "timevec.pipeline"

register(Stage(
    "finetune", "fine-tune one model per (task, period) on Ray and store each time vector (skips finished runs)",
    "training", f"{_RAY}:finetune_stage", leased=False,
))  # fmt: skip
register(Stage(
    "evaluate", "evaluate the all-pairs (train vector × test period) matrix into results/cells.parquet (resumable)",
    "evaluation", f"{_RAY}:evaluate_stage", writes=("cells", "cell_examples"),
))  # fmt: skip
register(Stage(
    "complete", "estimate the cells evaluation.design left out, each with an interval, into results/cells.parquet "
    "(estimated: true)", "evaluation", f"{_CORE}:complete", reads=("cells",), skip=_full_design,
))  # fmt: skip  (its rows go into the evaluate stage's table: the table's writer, and its schema's column `estimated`)
register(Stage(
    "forgetting", "training.mode continual: forgetting of continual vs independent vs merged updating into "
    "results/forgetting.parquet", "training", f"{_RAY}:forgetting_stage", writes=("merged_cells", "forgetting"),
    reads=("cells",), skip=_continual_only,
))  # fmt: skip
register(Stage(
    "interpolate", "evaluate (1−α)·τ_first + α·τ_last on the periods in between; time soups and patching",
    "interpolation", f"{_RAY}:interpolate_stage", writes=("interpolation", "interpolation_best", "soups", "patching"),
    reads=("cells",),
))  # fmt: skip
register(Stage(
    "forecast", "hold out the last forecast.horizon periods and predict their weights from earlier vectors only "
    "(the methods of forecast.methods), against the latest vector",
    "forecast", f"{_RAY}:forecast_stage", writes=("forecast",), skip=_forecast_horizon, strict=True,
))  # fmt: skip
register(Stage(
    "analogy", "search α1·τ_task(j) + α2·τ_lm(k) − α3·τ_lm(j) with Ray Tune (the grid, or Optuna)", "analogy", f"{_RAY}:analogy_stage",
    writes=("analogy", "analogy_best"), skip=_analogy_tasks,
))  # fmt: skip
register(Stage(
    "groups", "group swaps: τ_j with one parameter group from τ_k, on k (needs groups.swaps: true)", "groups",
    f"{_RAY}:groups_stage", writes=("group_swaps",), skip=_group_swaps,
))  # fmt: skip
register(Stage(
    "analyze", "similarity (streamed Gram), degradation, decay fits, stripes and the findings into results/*.parquet", "groups",
    f"{_CORE}:analyze",
    writes=("relative_change", "diagonal", "decay_by_gap", "decay_fit", "stripes", "similarity", "similarity_centred",
            "findings", "interpolation_protocols", "analogy_protocols", "group_norms", "group_similarity",
            "group_similarity_degradation"),
    reads=("cells", "interpolation", "analogy_best", "soups", "analogy", "forecast", "group_swaps"),
))  # fmt: skip
register(Stage(
    "report", "figures and a self-contained reports/index.html in the store", None, f"{_CORE}:report",
    reads=("cells", "interpolation", "soups", "patching", "analogy_best", "analogy", "forecast", "group_norms",
           "group_similarity_degradation", "group_swaps", "probe", "forgetting"),  # results.REPORT_TABLES
))  # fmt: skip

STAGES: tuple[str, ...] = tuple(REGISTRY)
"""The stage names in pipeline order."""


def command_rows() -> list[str]:
    """The stages' rows of docs/GUIDE.md's command table (a test keeps the page equal to them)."""
    return [f"| `timevec {stage.name} CONFIG` | {stage.help} |" for stage in REGISTRY.values()]
