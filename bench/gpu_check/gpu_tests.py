"""(a) ``pytest -m gpu`` on the test files that carry the marker, in this process (on a CPU: "skipped")."""

from __future__ import annotations

import os
from typing import Any

from harness import REPO

from .context import INNER_ENV, GpuCheck


def gpu_tests(check: GpuCheck) -> dict[str, Any]:
    """``pytest -m gpu -q`` on the files that carry the marker, in this process (no second torch import)."""
    import pytest

    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if "mark.gpu" in p.read_text() and p.name != "test_gpu_bench.py")

    class Outcomes:
        def __init__(self) -> None:
            self.counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}

        def pytest_runtest_logreport(self, report) -> None:
            if report.when == "call" or report.outcome != "passed":
                kind = "error" if report.failed and report.when != "call" else report.outcome
                self.counts[kind] += 1

    outcomes = Outcomes()
    # Libraries that bind a log handler to sys.stderr when first imported must be imported before pytest
    # swaps sys.stderr for its capture (closed afterwards): transformers' own handler would then fail.
    import datasets  # noqa: F401
    import ray  # noqa: F401
    import transformers  # noqa: F401
    os.environ[INNER_ENV] = "1"
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning", *files]
        code = int(pytest.main(args, plugins=[outcomes]))  # the warning: plugins (anyio) imported above
    finally:
        os.chdir(cwd)
        os.environ.pop(INNER_ENV, None)
    counts = outcomes.counts
    ok = code in (0, 5) and counts["failed"] == 0 and counts["error"] == 0
    check.say(f"[a] gpu tests: {counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed, "
              f"{counts['error']} errors ({len(files)} files: {', '.join(files)}; the bench's own gpu test is left out) "
              f"— pytest exit {code}")
    if not ok:
        raise RuntimeError(f"pytest -m gpu: exit {code}, {counts['failed']} failed, {counts['error']} errors")
    return {"files": files, **counts, "pytest_exit": code}
