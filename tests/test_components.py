"""The rule of ``tests/components.py``: a missing component skips locally, FAILS under
``TIMEVEC_REQUIRE_COMPONENTS=1`` unless named in ``TIMEVEC_ALLOW_MISSING``; ``TIMEVEC_REQUIRE_REAL_MODEL=1``
makes only ``real-model`` required; an unknown name is a ``ValueError``. Checked with ``require`` run for
real: in-process against pytest's outcome exceptions, and in a pytest subprocess whose report says skipped,
failed or a collection error. A last check keeps every other skip in tests/ off the components' path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.components import COMPONENTS, require, require_that, required

REPO = Path(__file__).resolve().parents[1]
FLAGS = ("TIMEVEC_REQUIRE_COMPONENTS", "TIMEVEC_ALLOW_MISSING", "TIMEVEC_REQUIRE_REAL_MODEL")
ON = {"TIMEVEC_REQUIRE_COMPONENTS": "1"}


def _env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in FLAGS:  # CI runs this file with the flag set: start from none
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _outcome(component: str) -> str:
    """What ``require(component, ...)`` does here: ``skip`` or ``fail`` (with its exact message checked)."""
    described = f"component {component!r} missing ({COMPONENTS[component]}): the reason"
    try:
        require(component, "the reason")
    except pytest.fail.Exception as failed:
        assert failed.msg == f"TIMEVEC_REQUIRE_COMPONENTS=1: {described}"
        assert failed.pytrace is False
        return "fail"
    except pytest.skip.Exception as skipped:
        assert skipped.msg == described
        return "skip"
    raise AssertionError("require returned")


@pytest.mark.parametrize(
    ("env", "component", "expected"),
    [
        ({}, "s3", "skip"),
        ({"TIMEVEC_REQUIRE_COMPONENTS": "0"}, "s3", "skip"),
        ({"TIMEVEC_REQUIRE_COMPONENTS": "true"}, "s3", "skip"),  # only "1" turns it on
        (ON, "s3", "fail"),
        ({**ON, "TIMEVEC_ALLOW_MISSING": "s3"}, "s3", "skip"),
        ({**ON, "TIMEVEC_ALLOW_MISSING": " cgroup , tmpfs "}, "tmpfs", "skip"),
        ({**ON, "TIMEVEC_ALLOW_MISSING": " cgroup , tmpfs "}, "s3", "fail"),
        ({**ON, "TIMEVEC_ALLOW_MISSING": ""}, "cgroup", "fail"),
        ({"TIMEVEC_ALLOW_MISSING": "s3"}, "s3", "skip"),
        ({"TIMEVEC_REQUIRE_REAL_MODEL": "1"}, "real-model", "fail"),
        ({"TIMEVEC_REQUIRE_REAL_MODEL": "1"}, "s3", "skip"),  # the old flag requires only the real model
        ({"TIMEVEC_REQUIRE_REAL_MODEL": "1", "TIMEVEC_ALLOW_MISSING": "real-model"}, "real-model", "skip"),
        ({**ON, "TIMEVEC_REQUIRE_REAL_MODEL": "1", "TIMEVEC_ALLOW_MISSING": "real-model"}, "real-model", "skip"),
    ],
)
def test_require_skips_or_fails_by_the_flags(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], component: str, expected: str) -> None:
    _env(monkeypatch, env)
    assert required(component) is (expected == "fail")
    assert _outcome(component) == expected


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_component_skips_without_the_flag_and_fails_with_it(monkeypatch: pytest.MonkeyPatch, component: str) -> None:
    _env(monkeypatch, {})
    assert _outcome(component) == "skip"
    _env(monkeypatch, ON)
    assert _outcome(component) == "fail"
    _env(monkeypatch, {**ON, "TIMEVEC_ALLOW_MISSING": component})
    assert _outcome(component) == "skip"


@pytest.mark.parametrize("env", [{}, ON, {**ON, "TIMEVEC_ALLOW_MISSING": "s3"}])
def test_an_unknown_component_is_a_value_error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    _env(monkeypatch, env)
    for call in (
        lambda: required("cgroups"),
        lambda: require("cgroups", "the reason"),
        lambda: require_that(False, "cgroups", "the reason"),
        lambda: require_that(True, "cgroups", "the reason"),  # even where nothing is missing
    ):
        with pytest.raises(ValueError, match=r"unknown component 'cgroups'; known: \['cgroup', "):
            call()


@pytest.mark.parametrize("flag", [{}, ON])
def test_an_unknown_name_in_allow_missing_is_a_value_error(monkeypatch: pytest.MonkeyPatch, flag: dict[str, str]) -> None:
    _env(monkeypatch, {**flag, "TIMEVEC_ALLOW_MISSING": "s3,cgroups"})
    with pytest.raises(ValueError, match=r"TIMEVEC_ALLOW_MISSING names unknown components \['cgroups'\]"):
        required("s3")
    with pytest.raises(ValueError, match=r"TIMEVEC_ALLOW_MISSING names unknown components \['cgroups'\]"):
        require("s3", "the reason")


def test_require_that_returns_when_ok_and_requires_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, ON)
    require_that(True, "setsid", "present")  # returns: nothing is missing
    with pytest.raises(pytest.fail.Exception, match=r"component 'setsid' missing \(.*\): absent$"):
        require_that(False, "setsid", "absent")
    _env(monkeypatch, {})
    with pytest.raises(pytest.skip.Exception, match=r"component 'setsid' missing \(.*\): absent$"):
        require_that(False, "setsid", "absent")


# ---------------------------------------------------------------- what pytest itself reports

_FUNCTIONS = """
from tests.components import require, require_that

def test_needs_s3():
    require("s3", "no server")

def test_needs_cgroup():
    require("cgroup", "no cgroup")

def test_has_setsid():
    require_that(True, "setsid", "present")
"""

_MODULE_LEVEL = """
from tests.components import require

require("mlflow", "not importable", allow_module_level=True)

def test_never_runs():
    raise AssertionError("the module should have stopped at its require")
"""


def _pytest_run(tmp_path: Path, files: dict[str, str], env: dict[str, str]) -> tuple[int, dict[str, str]]:
    """Run pytest on ``files`` (written to ``tmp_path``, outside the repo: no conftest of ours) with ``env``;
    return its exit code and each test case's outcome from its JUnit XML."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    clean = {k: v for k, v in os.environ.items() if k not in FLAGS}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(tmp_path / "r.xml"), *files],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    outcomes = {}
    for case in ET.parse(tmp_path / "r.xml").getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("skipped", "failure", "error")]
        outcomes[case.get("name", "")] = kinds[0] if kinds else "passed"
    return proc.returncode, outcomes | {"output": proc.stdout[-3000:]}


def test_pytest_reports_skips_without_the_flag(tmp_path: Path) -> None:
    code, outcomes = _pytest_run(tmp_path, {"test_fn.py": _FUNCTIONS, "test_mod.py": _MODULE_LEVEL}, {})
    out = outcomes.pop("output")
    assert code == 0, out
    assert outcomes == {"test_needs_s3": "skipped", "test_needs_cgroup": "skipped", "test_has_setsid": "passed",
                        "test_mod": "skipped"}, out  # fmt: skip


def test_pytest_reports_failures_under_the_flag_except_what_is_allowed(tmp_path: Path) -> None:
    code, outcomes = _pytest_run(tmp_path, {"test_fn.py": _FUNCTIONS}, {**ON, "TIMEVEC_ALLOW_MISSING": "s3"})
    out = outcomes.pop("output")
    assert code == 1, out
    assert outcomes == {"test_needs_s3": "skipped", "test_needs_cgroup": "failure", "test_has_setsid": "passed"}, out
    assert "TIMEVEC_REQUIRE_COMPONENTS=1: component 'cgroup' missing" in out


def test_pytest_reports_a_module_level_require_under_the_flag_as_a_collection_error(tmp_path: Path) -> None:
    code, outcomes = _pytest_run(tmp_path, {"test_mod.py": _MODULE_LEVEL}, ON)
    out = outcomes.pop("output")
    assert code == 2, out  # pytest's "interrupted: errors during collection"
    assert outcomes == {"test_mod": "error"}, out
    assert "TIMEVEC_REQUIRE_COMPONENTS=1: component 'mlflow' missing" in out


# ---------------------------------------------------------------- no skip around the rule

#: Every direct skip left in tests/, each reviewed: none is a missing component.
NOT_COMPONENTS = {
    ("conftest.py", 'skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")'),  # `gpu` marker
    ("test_vectors.py", '@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")'),  # `gpu`
    ("test_gpu_scheduling.py",  # the opposite of a missing component: a GPU is present
     'needs_cpu_only_torch = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine whose torch sees no GPU")'),
    ("test_gpu_bench.py",  # the test that runs bench/gpu.py, inside bench/gpu.py's own run
     '@pytest.mark.skipif(os.environ.get("TIMEVEC_GPU_BENCH_INNER") == "1", reason="run by bench/gpu.py itself")'),
}  # fmt: skip

_SKIP = re.compile(r"pytest\.skip\(|importorskip\(|mark\.skip(if)?\b|\.xfail\(|mark\.xfail\b")


def test_no_test_skips_around_the_component_rule() -> None:
    found = {
        (path.relative_to(REPO / "tests").as_posix(), line.strip())
        for path in sorted((REPO / "tests").rglob("*.py"))
        if path.name not in ("components.py", "test_components.py")
        for line in path.read_text().splitlines()
        if _SKIP.search(line)
    }
    assert found == NOT_COMPONENTS, (
        "a skip outside tests/components.py: a missing component must go through require()/require_that() "
        f"(add it to COMPONENTS); a reviewed non-component skip goes into NOT_COMPONENTS. New: "
        f"{sorted(found - NOT_COMPONENTS)}; gone: {sorted(NOT_COMPONENTS - found)}"
    )
