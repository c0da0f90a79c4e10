"""Stores the tests build: empty ones on either backend, and the tiny demo model's base with seeded perturbations.

- :func:`store_factory`: a factory of empty stores, a fresh one per call, in a local folder or on the
  session's S3 server (the ``s3_server`` fixture); the ``new_store`` fixture of ``tests/conftest.py``
  is it, parametrised over both backends.
- :func:`tiny_config`: ``timevec/demo/tiny.yaml`` with the store under a given root.
- :func:`perturbation` and :func:`build_store`: the tiny (random-init) base and one seeded random
  vector per (task, period) — for the stages' arithmetic and bookkeeping, not for whether a tiny model
  learns (no fleet runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from timevec.config import ExperimentConfig, load_config
from timevec.data.models import base_id, build_model, float_parameters, load_tokenizer
from timevec.store import VectorStore
from timevec.store.local_s3 import S3Server
from timevec.weights.vectors import TimeVector

TINY = Path(__file__).resolve().parents[1] / "timevec" / "demo" / "tiny.yaml"


def store_factory(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> Callable[..., VectorStore]:
    """Empty stores on ``backend`` (``local``: a folder under ``tmp_path``; ``s3``: a prefix on the ``s3_server`` fixture's bucket)."""
    if backend == "s3":
        server: S3Server = request.getfixturevalue("s3_server")

        def make(**kwargs: Any) -> VectorStore:
            return VectorStore(server.url(f"t-{uuid.uuid4().hex[:10]}"), server.storage_options, **kwargs)

    else:

        def make(**kwargs: Any) -> VectorStore:
            return VectorStore(str(tmp_path / f"store-{uuid.uuid4().hex[:6]}"), **kwargs)

    return make


def tiny_config(root: Path, overrides: list[str]) -> ExperimentConfig:
    """tiny.yaml with the store under ``root``; 2 evaluation actors, no retries (fail fast)."""
    return load_config(TINY, [f"store.url={root}", "ray.eval_actors=2", "ray.max_failures=0", *overrides])


def perturbation(base: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> TimeVector:
    """A vector of ``base``'s shapes: seeded standard normal entries × ``scale``."""
    g = torch.Generator().manual_seed(seed)
    return TimeVector({n: scale * torch.randn(t.shape, generator=g) for n, t in base.items()})


def build_store(
    config: ExperimentConfig, vectors: dict[tuple[str, str], int], scale: float = 0.05
) -> tuple[VectorStore, dict[str, torch.Tensor]]:
    """A store with the tiny base and one seeded perturbation (× ``scale``) per (task, period) → seed."""
    tokenizer = load_tokenizer(config.base)
    base = {n: p.detach().clone() for n, p in float_parameters(build_model(config.base, tokenizer)).items()}
    store = VectorStore.from_config(config.store)
    store.init(base_id(config.base), base)
    for (task, period), seed in vectors.items():
        store.put_vector(task, period, perturbation(base, seed, scale))
    return store, base
