"""The fleet's Reporter coalesces metric-only reports by time and never loses the last one."""

from __future__ import annotations

import time
from types import SimpleNamespace

from timevec.distributed.reporter import Reporter


def _job() -> SimpleNamespace:
    return SimpleNamespace(fingerprint="f", run=SimpleNamespace(as_dict=lambda: {}))


def _steps(reporter: Reporter, n: int) -> None:
    for step in range(1, n + 1):
        reporter({"step": step, "loss": 1.0 / step}, None)


def test_every_step_is_reported_without_an_interval() -> None:
    sent: list[dict] = []
    reporter = Reporter(sent.append, object, _job(), 0, None)
    _steps(reporter, 50)
    reporter.close()
    assert [m["step"] for m in sent] == list(range(1, 51))


def test_an_interval_sends_the_first_and_the_newest_report_in_order() -> None:
    sent: list[dict] = []
    reporter = Reporter(sent.append, object, _job(), 0, None, min_interval_s=60.0)
    _steps(reporter, 50)
    reporter.close()
    assert [m["step"] for m in sent] == [1, 50]  # the held-back last step goes out on close
    assert sent[-1]["loss"] == 1.0 / 50 and sent[-1]["run_status"] == "training"


def test_reports_resume_once_the_interval_has_passed() -> None:
    sent: list[dict] = []
    reporter = Reporter(sent.append, object, _job(), 0, None, min_interval_s=0.05)
    reporter({"step": 1, "loss": 1.0}, None)
    reporter({"step": 2, "loss": 1.0}, None)  # held
    time.sleep(0.06)
    reporter({"step": 3, "loss": 1.0}, None)  # sent, and the held step 2 is superseded
    reporter.close()
    assert [m["step"] for m in sent] == [1, 3]
