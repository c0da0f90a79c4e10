"""The evaluation design and the complete stage (issue 38, deliverable 3): the evaluate stage evaluates the design's
cells, the complete stage estimates the rest with intervals, and every reader keeps estimates apart."""

from __future__ import annotations

import math

import pytest

from tests.stores import build_store, tiny_config
from timevec import results
from timevec.analyze.verdict import format_verdict
from timevec.distributed.cells import run_cells
from timevec.evaluate.design import design_cells
from timevec.pipeline import analyze, complete
from timevec.stages import REGISTRY

YEARS = [str(y) for y in range(2012, 2018)]
SMALL = ["periods.start='2012'", "periods.end='2017'", "tasks=[lm]", "evaluation.max_examples=8",
         "evaluation.bootstrap_samples=200"]
DESIGN = ["evaluation.design=band", "evaluation.design_band=0", "evaluation.design_fraction=0.25"]


@pytest.fixture
def designed(tmp_path, ray_session):
    config = tiny_config(tmp_path / "store", [*SMALL, *DESIGN])
    store, _ = build_store(config, {("lm", y): int(y) for y in YEARS})
    return config, store


def _keys(cells) -> set[tuple[str, str]]:
    vectors = cells[cells["vector"] != "base"]
    return set(zip(vectors["train_period"], vectors["test_period"]))


def test_the_evaluate_stage_evaluates_the_design_and_the_complete_stage_estimates_the_rest(designed, tmp_path):
    config, store = designed
    design = design_cells(YEARS, YEARS, band=0, fraction=0.25, seed=config.seed)
    assert len(design) < len(YEARS) ** 2
    cells, stats = run_cells(config, store)
    assert _keys(cells) == design and stats.cells_computed == len(design) + len(YEARS)  # + the base on every period
    assert not cells["estimated"].any()

    summary = complete(config, store)
    table = results.cells_frame(results.read_table(store, "cells"))
    assert not table.duplicated(results.CELL_KEY).any() and len(table) == len(YEARS) ** 2 + len(YEARS)
    estimated = table[table["estimated"]]
    assert _keys(estimated) == {(i, j) for i in YEARS for j in YEARS} - design
    assert summary["headline"]["cells estimated"] == len(estimated)
    assert (estimated["low"] < estimated["value"]).all() and (estimated["value"] < estimated["high"]).all()
    assert estimated[["value", "low", "high"]].map(math.isfinite).all().all()
    # an estimate is never taken for a cell's value (a stage that needs the cell evaluates it)
    known = results.cell_values(table)
    assert {(p, t) for (_, _, p, t) in known if p != "base"} == design

    # the findings read off the matrix say that it was completed, and the verdict says so first
    findings = analyze(config, store)["findings"]
    marked = findings[findings["note"].fillna("").str.contains("completed matrix")]
    assert set(marked["finding"]) >= {"own period best", "decay with the gap"}
    n_estimated = len(YEARS) ** 2 - len(design)
    assert f"completed matrix: {n_estimated} of {len(YEARS) ** 2} cells estimated" in marked["note"].iloc[0]
    assert format_verdict(findings).splitlines()[1].startswith(f"On a completed matrix: {n_estimated} of")

    # a full design later evaluates exactly the estimated cells; the analysis then counts each cell once, evaluated
    full = tiny_config(tmp_path / "store", SMALL)
    _, again = run_cells(full, store)
    assert again.cells_computed == n_estimated
    findings = analyze(full, store)["findings"]
    assert not findings["note"].fillna("").str.contains("completed matrix").any()


def test_the_complete_stage_applies_only_to_a_design(tmp_path):
    full = tiny_config(tmp_path / "s", SMALL)
    assert REGISTRY["complete"].skip_reason(full) == "evaluation.design is full: every cell is evaluated"
    assert REGISTRY["complete"].skip_reason(tiny_config(tmp_path / "s", [*SMALL, *DESIGN])) is None


def test_a_period_added_to_a_designed_study_evaluates_only_the_designs_new_cells(tmp_path, ray_session):
    """Issue 38: 'Adding a period evaluates only the design's new cells' (the hashed choice of a cell never depends
    on the other periods, and the top-ups count only earlier periods)."""
    earlier = tiny_config(tmp_path / "store", [*SMALL, *DESIGN, "periods.end='2016'"])
    store, _ = build_store(earlier, {("lm", y): int(y) for y in YEARS})
    first, _ = run_cells(earlier, store)
    later = tiny_config(tmp_path / "store", [*SMALL, *DESIGN])
    cells, stats = run_cells(later, store)
    before = design_cells(YEARS[:-1], YEARS[:-1], band=0, fraction=0.25, seed=later.seed)
    after = design_cells(YEARS, YEARS, band=0, fraction=0.25, seed=later.seed)
    assert before <= after and _keys(first) == before
    assert stats.cells_computed == len(after - before) + 1  # the new row's and column's designed cells, the base's one
    assert stats.cells_skipped == len(before) + len(YEARS) - 1  # every earlier cell reused, the base's included
    assert _keys(cells) == after
