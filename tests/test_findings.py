"""The verdict per finding: intervals from the tables, the three-valued 'holds', the plain-text table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from timevec.analyze import analysis
from timevec.analyze.findings import FINDINGS_COLUMNS, findings_table, format_findings, verdict

YEARS = [str(y) for y in range(2012, 2018)]


def _cells(slope: float, seed: int = 0) -> pd.DataFrame:
    """LM cells whose perplexity rises by ``slope`` per year of gap, plus noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for test in YEARS:
        rows.append(dict(task="lm", granularity="year", vector="base", train_period=None, test_period=test,
                         metric="perplexity", value=50.0, higher_is_better=False))
        for train in YEARS:
            gap = abs(int(test) - int(train))
            rows.append(dict(task="lm", granularity="year", vector=f"lm/{train}", train_period=train, test_period=test,
                             metric="perplexity", value=20 + slope * gap + rng.normal(0, 0.2), higher_is_better=False))
    return pd.DataFrame(rows)


def test_verdict_is_three_valued() -> None:
    assert verdict(0.1, 0.5, 0.0, "above") == "yes"
    assert verdict(-0.5, -0.1, 0.0, "above") == "no"
    assert verdict(-0.1, 0.5, 0.0, "above") == "unclear"
    assert verdict(-0.5, -0.1, 0.0, "below") == "yes"
    assert verdict(math.nan, 1.0, 0.0, "above") == "unclear"


def test_clear_decay_holds_and_its_interval_is_the_regressions() -> None:
    res = analysis.analyze(_cells(slope=2.0))
    f = res.findings
    assert list(f.columns) == FINDINGS_COLUMNS
    decay = f.loc[f["finding"] == "decay with the gap"].iloc[0]
    fit = res.decay.fit.iloc[0]
    half = stats.t.ppf(0.975, fit.n - 2) * fit.stderr
    assert decay.estimate == pytest.approx(fit.slope)
    assert (decay.low, decay.high) == pytest.approx((fit.slope - half, fit.slope + half))
    assert decay.holds == "yes" and decay.low > 0
    own = f.loc[f["finding"] == "own period best"].iloc[0]
    assert own.measured.startswith("6/6") and own.holds == "yes"
    ci = stats.binomtest(6, 6).proportion_ci(method="wilson")
    assert (own.low, own.high) == pytest.approx((ci.low, ci.high))


def test_no_decay_is_not_called_a_finding() -> None:
    f = analysis.analyze(_cells(slope=0.0, seed=3)).findings
    decay = f.loc[f["finding"] == "decay with the gap"].iloc[0]
    assert decay.holds != "yes" and decay.low < 0.1  # a flat matrix gives no decay verdict


def test_plain_text_table_has_no_escape_codes() -> None:
    text = format_findings(findings_table(analysis.analyze(_cells(slope=1.0))))
    assert "\x1b" not in text
    header = text.splitlines()[0].split()
    assert header == ["finding", "panel", "measured", "paper", "holds"]
    assert "decay with the gap" in text and "% per year" in text
