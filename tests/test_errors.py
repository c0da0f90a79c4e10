"""One error hierarchy: every exception class timevec defines derives from TimevecError, and its exit status is
declared on the class (2 bad input, 1 failed work, None a bug with its traceback), not looked up by name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import timevec
from timevec.errors import ConfigError, StageFailed, TimevecError, run_with_exit_status

#: Every exception class of the package and the status the CLI exits with when one reaches it.
EXIT_STATUS = {
    "ConfigError": 2, "MissingExtra": 2, "NoCudaDevice": 2, "CorpusError": 2, "PeriodError": 2, "StoreError": 2,
    "LeaseHeld": 2, "LeaseLost": 2, "StageFailed": 1, "VectorError": None, "MergeError": None, "EvaluationError": None,
    "HeldOutError": None, "CgroupUnavailable": None, "ActorSetupError": None, "OutOfMemory": None, "ActorDied": None,
    "TimevecError": None, "S3ServerUnavailable": 2, "RayCliMissing": 2,
}  # fmt: skip


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(timevec.__path__, "timevec."):
        if info.name == "timevec.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__.startswith("timevec"):
                found[name] = value
    return found


def test_every_exception_class_is_a_timevec_error_with_its_declared_exit_status() -> None:
    classes = _exception_classes()
    assert set(classes) == set(EXIT_STATUS), set(classes) ^ set(EXIT_STATUS)
    for name, cls in classes.items():
        assert issubclass(cls, TimevecError), name
        assert cls.exit_status == EXIT_STATUS[name], name  # type: ignore[attr-defined]


@pytest.mark.parametrize(("error", "status"), [(ConfigError("bad key x"), 2), (StageFailed("2 items failed"), 1)])
def test_the_exit_status_is_the_errors_own(error: TimevecError, status: int, capsys: pytest.CaptureFixture) -> None:
    def fail() -> int:
        raise error

    assert run_with_exit_status(fail, "timevec run: ") == status
    assert capsys.readouterr().err == f"timevec run: error: {error}\n"


def test_an_error_without_an_exit_status_keeps_its_traceback() -> None:
    from timevec.weights.vectors import VectorError

    def bug() -> int:
        raise VectorError("shapes differ")

    with pytest.raises(VectorError, match="shapes differ"):
        run_with_exit_status(bug, "timevec run: ")
    with pytest.raises(KeyError):
        run_with_exit_status(lambda: {}["x"], "timevec run: ")
