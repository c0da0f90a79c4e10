"""The verdict at a glance (timevec.analyze.verdict) from a small hand-made findings table: one row per
finding, the adaptation-vs-latest table, the "why" in words, and the report's block before the full table."""

from __future__ import annotations

import math

import pandas as pd

from timevec.analyze.findings import FINDINGS_COLUMNS, PAPER_CLAIMS
from timevec.analyze.verdict import adaptation_cells, adaptation_vs_latest, cell_text, format_verdict, paper_findings
from timevec.report.page import page

NAN = math.nan


def _row(finding, panel, estimate, low, high, unit, measured, holds, note, line=0.0, side="above"):
    return dict(finding=finding, panel=panel, estimate=estimate, low=low, high=high, unit=unit, measured=measured,
                paper=PAPER_CLAIMS[finding][0], holds=holds, note=note, line=line, side=side)


def _findings() -> pd.DataFrame:
    rows = [
        _row("own period best", "lm/year", 1.0, 0.61, 1.0, "share", "4/4 [61%, 100%]", "yes", "chance 25%", 0.25),
        _row("own period best", "classification/year", 0.5, 0.15, 0.85, "share", "2/4 [15%, 85%]", "unclear", "chance 33%",
             1 / 3),
        _row("decay with the gap", "lm/year", 0.3, 0.1, 0.5, "% per year", "+0.30 [+0.10, +0.50] % per year", "yes",
             "R² 0.80, n 16 cells"),
        _row("decay with the gap", "classification/year", 0.0, NAN, NAN, "% per year", "+0.00 % per year", "unclear",
             "R² nan, n 12 cells"),
        _row("cosine vs degradation", "all", -0.5, -0.8, -0.2, "r", "-0.500 [-0.800, -0.200]", "yes", "n 21 cells",
             side="below"),
        _row("12-month stripes", "lm/month", NAN, NAN, NAN, "points", "n/a: too few cells for a t-test (1 stripe, 3 other)",
             "n/a", "too few cells for a t-test (1 stripe, 3 other)", side="below"),
        _row("interpolation beats both ends", "lm/year 2014→2017 · oracle α", 1.0, 0.56, 1.0, "share", "3/3 [56%, 100%]",
             "yes", "α 0.5, 0.5, 0.5; oracle", 0.5),
        _row("interpolation beats both ends", "classification/year 2014→2017 · oracle α", 0.0, 0.0, 0.44, "share",
             "0/3 [0%, 44%]", "no", "α 0.0, 0.0, 0.0; oracle", 0.5),
        _row("interpolation vs latest vector", "lm/year 2014→2017 · oracle α", 1.2, 0.2, 2.2, "%", "+1.20 [+0.20, +2.20] %",
             "yes", "mean over 3 middle periods"),
        _row("interpolation vs latest vector", "lm/year 2014→2017 · leave-one-out α", -0.5, NAN, NAN, "%", "-0.50 %",
             "unclear", "mean over 1 middle periods"),
        _row("interpolation vs latest vector", "lm/year 2014→2017 · midpoint α=0.5", 0.4, -1.0, 1.8, "%",
             "+0.40 [-1.00, +1.80] %", "unclear", "mean over 3 middle periods"),
        _row("analogy vs latest vector", "classification · past-only α", -0.02, -0.05, -0.01, "points",
             "-0.020 [-0.050, -0.010] points", "no", "α chosen on the previous pair; 4 (j, k) pairs"),
        _row("forecast vs latest vector", "lm ema", -0.65, NAN, NAN, "%", "-0.65 %", "unclear",
             "past-only; δ = 1; 1 target(s): no interval", side="below"),
    ]
    return pd.DataFrame(rows, columns=FINDINGS_COLUMNS)


def test_one_row_per_finding_with_the_reason_in_words() -> None:
    block = paper_findings(_findings()).set_index("finding")
    # the paper's order; the adaptation-vs-latest findings are left to their own table
    assert list(block.index) == ["own period best", "decay with the gap", "cosine vs degradation", "12-month stripes",
                                 "interpolation beats both ends"]
    assert block.loc["cosine vs degradation", "holds"] == "yes" and block.loc["cosine vs degradation", "why"] == ""
    own = block.loc["own period best"]
    assert (own.holds, own.panels) == ("unclear", "1 yes, 1 unclear")
    assert own.why == "interval includes chance 33% (classification/year)"
    decay = block.loc["decay with the gap"]
    assert decay.holds == "unclear" and decay.why == "no spread: every value the same (classification/year)"
    stripes = block.loc["12-month stripes"]  # no estimate at all: the reason the findings table gives
    assert stripes.holds == "unclear" and stripes.why == "too few cells for a t-test (1 stripe, 3 other) (lm/month)"
    ends = block.loc["interpolation beats both ends"]
    assert ends.holds == "unclear" and ends.why == "panels disagree (1 yes, 1 no)"


def test_adaptation_table_rows_are_methods_by_selection_and_columns_tasks() -> None:
    table = adaptation_vs_latest(_findings())
    rows, tasks, cells = adaptation_cells(table)
    assert rows == [("interpolation year 2014→2017", "oracle"), ("interpolation year 2014→2017", "past-only (leave-one-out)"),
                    ("analogy", "past-only"), ("forecast: ema", "past-only")]  # the midpoint control is not a selection
    assert tasks == ["lm", "classification"]
    oracle = cells[("interpolation year 2014→2017", "oracle", "lm")]
    assert (oracle["estimate"], oracle["low"], oracle["high"], oracle["side"]) == (1.2, 0.2, 2.2, "better")
    assert cell_text(oracle) == "+1.20 [+0.20, +2.20] %"
    assert cell_text(cells[("interpolation year 2014→2017", "past-only (leave-one-out)", "lm")]) == "-0.50 % (one middle period)"
    assert cell_text(cells[("forecast: ema", "past-only", "lm")]) == "-0.65 % (one target period)"
    assert cells[("analogy", "past-only", "classification")]["side"] == "worse"
    assert cell_text(cells.get(("analogy", "past-only", "lm"))) == "-"

    text = format_verdict(_findings(), "/s/results/findings.txt")
    assert text.splitlines()[0].endswith("all 13 rows: /s/results/findings.txt)")
    assert "▲ +1.20 [+0.20, +2.20] %" in text and "▼ -0.020 [-0.050, -0.010] points" in text
    assert text.index("the paper's finding") < text.index("Adaptation vs the latest vector")
    assert "midpoint" not in text  # the controls stay in the full table


def test_report_opens_with_the_verdict_then_folds_every_row() -> None:
    html = page("t", _findings(), {}, [], "now", [], {}).decode()
    verdict, adaptation, full = (html.index(f'id="{i}"') for i in ("verdict-findings", "adaptation-table", "findings-table"))
    assert verdict < adaptation < full
    assert '<details id="findings">' in html[adaptation:full]
    assert 'class="num better">+1.20 [+0.20, +2.20] %<' in html and 'class="num worse">-0.020' in html
    assert "-0.65 % (one target period)" in html
    assert "midpoint α=0.5" in html[full:]  # every row is still there, folded


def test_over_seeds_the_reason_counts_the_seeds() -> None:
    table = adaptation_vs_latest(_findings().assign(n_seeds=1))  # timevec.train.replicates' table has n_seeds
    assert set(table.loc[table["low"].isna(), "why"]) == {"one seed"}
    assert set(adaptation_vs_latest(_findings().assign(n_seeds=3)).query("low != low")["why"]) == {"no spread over 3 seeds"}
