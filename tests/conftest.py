"""Shared pytest set-up: the gpu marker, the real S3 server on loopback, one local Ray, and the fixtures
several test files share (``new_store``: empty stores on both backends; ``model_and_tokenizer``: the tiny
embedded GPT-2 and T5). Helpers that are not fixtures live in modules of their own (``tests/stores.py``,
``tests/evaluation_inputs.py``, ...): no test file imports another.

Every tier runs by default — `make test` and CI run the `slow` tests too; `make test-fast`
(`-m "not slow"`) leaves them out. Tests needing a real component outside Python (SeaweedFS, Chromium,
a writable cgroup, root for tmpfs, the real model) go through ``tests/components.py``: they skip
locally and fail under ``TIMEVEC_REQUIRE_COMPONENTS=1`` (set by ``.ci/run``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local heads start without token auth (ARCHITECTURE §5)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub

from tests.s3_server import s3_server  # noqa: E402,F401  (session fixture: SeaweedFS on 127.0.0.1)

if TYPE_CHECKING:
    from timevec.store import VectorStore


@pytest.fixture(scope="session", autouse=True)
def _s3_keys_before_any_ray(request: pytest.FixtureRequest) -> None:
    """Start the session's S3 server before any test runs, where it can start.

    Its keys go into the environment, and every Ray started afterwards — the session's, or one a
    stage starts in-process (``ensure_ray``) — passes them to its workers (the standard AWS chain).
    Without this, a test that starts Ray first leaves workers without the keys, and the S3 tests
    that need them would fail. A missing server is reported by the tests that need it, not here.
    """
    with contextlib.suppress(pytest.skip.Exception, pytest.fail.Exception, pytest.FixtureLookupError):
        request.getfixturevalue("s3_server")


@pytest.fixture(scope="session")
def ray_session(request: pytest.FixtureRequest) -> Iterator[str]:
    """One local Ray (2 CPUs, ARCHITECTURE §4) for the session; yields its GCS address for driver subprocesses.

    The S3 server starts first when it can: it puts its keys in the environment, and Ray's worker
    processes inherit the environment Ray was started with (the standard AWS chain). Shut down
    only if this fixture started it.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        with contextlib.suppress(pytest.skip.Exception, pytest.FixtureLookupError):
            request.getfixturevalue("s3_server")
        # address="local": always a cluster of our own, never one that `ray start` left in /tmp/ray/ray_current_cluster
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(params=["local", "s3"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., VectorStore]:
    """A factory of empty stores on the parametrised backend (a fresh prefix each call)."""
    from tests.stores import store_factory  # here, not at the top: torch loads only for the tests that use it

    return store_factory(request, tmp_path, request.param)


@pytest.fixture(params=["gpt2", "t5"])
def model_and_tokenizer(request: pytest.FixtureRequest):
    """The tiny embedded model of each architecture (random init, eval mode) and its tokenizer."""
    from tests.evaluation_inputs import tiny_model_and_tokenizer

    return tiny_model_and_tokenizer(request.param)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
