"""timevec: time vectors at cluster scale.

What a Python user imports, from the package itself (``from timevec import load_config, VectorStore``);
each name is loaded on first use, so ``import timevec`` stays light (no torch, no Ray):

- the study: :func:`load_config` / :class:`ExperimentConfig`, :func:`run_pipeline` (every stage on Ray),
  :data:`STAGES`;
- the store and its vectors: :class:`VectorStore`, :class:`TimeVector`, :class:`LowRankVector`,
  :class:`Period`;
- evaluating and combining weights without Ray: :func:`prepare_eval_sets`, :class:`CellEvaluator`,
  :class:`WeightPatcher`.

The packages, in the order of the study: ``data`` → ``train`` → ``weights`` / ``store`` → ``evaluate`` →
``adapt`` → ``analyze`` → ``report``; ``distributed`` runs them on Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ExperimentConfig": "timevec.config",
    "load_config": "timevec.config",
    "STAGES": "timevec.stages",
    "run_pipeline": "timevec.distributed.pipeline",
    "VectorStore": "timevec.store",
    "TimeVector": "timevec.weights.vectors",
    "LowRankVector": "timevec.weights.lowrank",
    "WeightPatcher": "timevec.weights.vectors",
    "Period": "timevec.periods",
    "prepare_eval_sets": "timevec.data.examples",
    "CellEvaluator": "timevec.evaluate.cells",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'timevec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
