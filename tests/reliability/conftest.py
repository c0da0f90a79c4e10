"""Fixtures of the reliability tests (helpers are in ``tests/reliability/__init__.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import tiny_config


@pytest.fixture(scope="session")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local store holding the tiny config's base (built once for the session, copied by tests)."""
    from timevec.data.corpus import load_corpus
    from timevec.store import VectorStore
    from timevec.train.loop import prepare_base

    root = tmp_path_factory.mktemp("reliability-base") / "store"
    config = tiny_config(root)
    prepare_base(config, load_corpus(config.corpus), VectorStore.from_config(config.store))
    return root
