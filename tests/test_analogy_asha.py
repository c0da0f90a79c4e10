"""The analogy α search by successive halving (``analogy.scheduler: asha``), on a local Ray with real trials.

A synthetic problem with a clear winner, built from the tiny base and two large seeded perturbations
(task ``lm``: τ_task(j) is τ_lm(j) = A, τ_lm(k) = B): θ = θ_pre + (α₁ − α₃)·A + α₂·B, so the
perplexity grows with |α₁ − α₃| and α₂, and on the grid below exactly one point, (1.0, 0.1, 0.6), has
the smallest of both. The same store is searched in full and under ASHA (rungs at 4, 8, 16 of the 32
validation examples); the scheduler, the seeded example order, the trials and the choice are the stage's own.
"""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from tests.stores import build_store, tiny_config
from timevec import results
from timevec.adapt.selection import analogy_protocols
from timevec.config import ConfigError, load_config
from timevec.distributed.analogy import (
    ANALOGY_BEST_TABLE,
    ANALOGY_TABLE,
    asha_rungs,
    experiment_name,
    run_analogy,
)
from timevec.distributed.storage import ray_storage

WINNER = (1.0, 0.1, 0.6)
GRID = ["analogy.alpha1=[1.0, 1.4]", "analogy.alpha2=[0.1, 0.6]", "analogy.alpha3=[0.2, 0.6]"]
ASHA = ["analogy.scheduler=asha", "analogy.grace_examples=4", "analogy.reduction_factor=2"]


def _config(root, periods=("2016", "2017"), more=()):
    return tiny_config(root, [
        f"periods.start='{periods[0]}'", f"periods.end='{periods[1]}'", "tasks=[lm]", "granularities=[year]",
        "analogy.task=lm", "analogy.max_concurrent_trials=1",  # one trial at a time: ASHA's rung order is the grid's
        *GRID, *more,
    ])


@pytest.fixture(scope="module")
def clear_winner(tmp_path_factory):
    root = tmp_path_factory.mktemp("analogy-asha")
    config = _config(root)
    store, _ = build_store(config, {("lm", "2016"): 1, ("lm", "2017"): 2}, scale=1.0)
    return config, store


def _grid(store, k="2017"):
    grid = store.read_table(ANALOGY_TABLE)
    return grid[(grid["method"] == "analogy") & (grid["target_period"] == k)]


def _by_point(part):
    return {(r.alpha1, r.alpha2, r.alpha3): r for r in part.itertuples(index=False)}


def _best(store):
    best = store.read_table(ANALOGY_BEST_TABLE)
    return best[best["method"] == "analogy"].set_index("split")


def _trial_dirs(config, store, j="2016", k="2017"):
    path = ray_storage(config, store).experiment_url(experiment_name(config, store, "lm", j, k))
    return sorted(d for d in glob.glob(os.path.join(path, "AnalogyTrial_*")) if os.path.isdir(d))


def test_rungs_are_ashas_milestones():
    assert asha_rungs(32, 4, 2) == (4, 8, 16, 32)
    assert asha_rungs(24, 16, 3) == (16, 24)
    assert asha_rungs(10, 16, 3) == (10,)  # fewer examples than the grace period: the whole split at once
    assert asha_rungs(30, 4, 2.5) == (4, 10, 25, 30)  # 2.5·4 = 10, 6.25·4 = 25: rounded up, never before a milestone


def test_asha_settings_are_validated_naming_the_field(tmp_path):
    from tests.stores import TINY

    with pytest.raises(ConfigError, match="reduction_factor"):
        load_config(TINY, [f"store.url={tmp_path}", "analogy.reduction_factor=1"])
    with pytest.raises(ConfigError, match="scheduler"):
        load_config(TINY, [f"store.url={tmp_path}", "analogy.scheduler=hyperband"])


@pytest.mark.slow
def test_full_scheduler_scores_every_point_on_the_whole_split(ray_session, clear_winner):
    config, store = clear_winner
    run_analogy(config, store)
    grid = _grid(store)
    assert list(store.read_table(ANALOGY_TABLE).columns) == results.ANALOGY_COLUMNS
    assert len(grid) == 2 * 8 and not grid["stopped"].any() and grid["value"].notna().all()
    assert (grid["validation_examples"] == 32).all()
    val = grid[grid["split"] == "validation"].sort_values("value")
    # the premise: one clear winner, far ahead of the runner-up (perplexity: lower is better)
    assert tuple(val.iloc[0][["alpha1", "alpha2", "alpha3"]]) == WINNER
    assert val["value"].iloc[1] > 1.5 * val["value"].iloc[0], val[["alpha1", "alpha2", "alpha3", "value"]]
    best = _best(store)
    assert (best.loc["validation", "alpha1"], best.loc["validation", "alpha2"], best.loc["validation", "alpha3"]) == WINNER
    assert best.loc["test", "note"] == "best of 8 points on validation"  # the full search's note, unchanged
    assert not glob.glob(os.path.join(ray_storage(config, store).experiment_url(
        experiment_name(config, store, "lm", "2016", "2017")), "stopped-*.json"))


@pytest.mark.slow
def test_asha_picks_the_grids_best_and_never_reports_a_stopped_point(ray_session, clear_winner):
    config, store = clear_winner
    if not store.has_table(ANALOGY_TABLE):
        run_analogy(config, store)
    full = _by_point(_grid(store).query("split == 'validation'"))
    full_best = _best(store)
    asha = config.with_overrides(ASHA)
    assert experiment_name(asha, store, "lm", "2016", "2017") != experiment_name(config, store, "lm", "2016", "2017")
    assert "-asha-" in experiment_name(asha, store, "lm", "2016", "2017")
    run_analogy(asha, store)
    grid = _grid(store)
    best = _best(store)
    chosen = (best.loc["test", "alpha1"], best.loc["test", "alpha2"], best.loc["test", "alpha3"])
    assert chosen == WINNER  # the grid's best α
    # ... reported from whole splits: the same values as the full search (the same examples, scored in blocks)
    for split in ("validation", "test"):
        assert math.isclose(best.loc[split, "value"], full_best.loc[split, "value"], rel_tol=1e-6)
    stopped = grid[grid["stopped"]]
    assert len(stopped) > 0, "ASHA stopped nothing on a problem with a clear winner"
    assert stopped["value"].isna().all()  # no test value, and the partial validation value is no result
    assert (stopped["validation_examples"] < 32).all()
    assert chosen not in set(zip(stopped["alpha1"], stopped["alpha2"], stopped["alpha3"]))
    complete = grid[~grid["stopped"]]
    assert (complete["validation_examples"] == 32).all() and complete["value"].notna().all()
    for point, row in _by_point(complete[complete["split"] == "validation"]).items():
        assert math.isclose(row.value, full[point].value, rel_tol=1e-6)  # a completed point = its whole split
    assert f"({len(stopped) // 2} stopped early)" in best.loc["test", "note"]
    # Tune's results: each stopped trial reported at rungs (4, 8, …) and never a test value
    dirs = _trial_dirs(asha, store)
    assert len(dirs) == 8
    reported = {}
    for d in dirs:
        with open(os.path.join(d, "result.json")) as fh:
            lines = [json.loads(line) for line in fh]
        reported[(lines[-1]["alpha1"], lines[-1]["alpha2"], lines[-1]["alpha3"])] = lines
        assert [r["validation_examples"] for r in lines] == [4, 8, 16, 32][: len(lines)]
    for point, lines in reported.items():
        assert ("test" in lines[-1]) == (point in _by_point(complete))
    # the experiment keeps the stopped trials' ids, so a repeated run re-runs nothing
    before = {d: os.path.getsize(os.path.join(d, "result.json")) for d in dirs}
    table_before = store.read_table(ANALOGY_TABLE)
    run_analogy(asha, store)
    assert {d: os.path.getsize(os.path.join(d, "result.json")) for d in _trial_dirs(asha, store)} == before
    pd.testing.assert_frame_equal(store.read_table(ANALOGY_TABLE), table_before)


@pytest.mark.slow
def test_a_past_only_point_stopped_here_is_scored_in_full(ray_session, tmp_path):
    """The previous target k′ = 2016 chose the point that is clearly WORST on 2017 (a recorded 2016 grid, as an
    earlier run would have left it): ASHA stops it on 2017, so the stage scores it in full on demand."""
    config = _config(tmp_path, periods=("2015", "2017"), more=ASHA)
    store, _ = build_store(config, {("lm", "2015"): 1, ("lm", "2017"): 2}, scale=1.0)  # no lm/2016: one pair, 2015 → 2017
    worst = (1.4, 0.6, 0.2)
    rows = [{"task": "lm", "source_period": "2015", "target_period": "2016", "method": "analogy", "alpha1": a1,
             "alpha2": a2, "alpha3": a3, "split": split, "metric": "perplexity",
             "value": 1.0 if (a1, a2, a3) == worst else 50.0, "validation_examples": 32.0, "stopped": False}
            for a1 in (1.0, 1.4) for a2 in (0.1, 0.6) for a3 in (0.2, 0.6) for split in ("validation", "test")]
    results.write_table(store, ANALOGY_TABLE, results.analogy_frame(rows))
    run_analogy(config, store)
    grid = store.read_table(ANALOGY_TABLE)
    assert len(grid[grid["target_period"] == "2016"]) == len(rows)  # another pair's rows are kept
    here = _by_point(_grid(store).query("split == 'validation'"))
    assert not here[worst].stopped and here[worst].validation_examples == 32 and np.isfinite(here[worst].value)
    # it was stopped by ASHA first, then scored in full in the same experiment (a trial marked on_demand)
    dirs = _trial_dirs(config, store, j="2015")
    configs = []
    for d in dirs:
        with open(os.path.join(d, "result.json")) as fh:
            lines = [json.loads(line) for line in fh]
        configs.append((lines[-1]["config"].get("on_demand", False), "test" in lines[-1],
                        (lines[-1]["alpha1"], lines[-1]["alpha2"], lines[-1]["alpha3"])))
    assert (True, True, worst) in configs and (False, False, worst) in configs
    # the past-only protocol reports its whole-split test value; the oracle still picks the winner
    protocols = analogy_protocols(grid, store.read_table(ANALOGY_BEST_TABLE))
    mine = protocols[(protocols["target_period"] == "2017") & (protocols["method"] == "analogy")].set_index("selection")
    assert (mine.loc["past_only", "alpha1"], mine.loc["past_only", "alpha2"], mine.loc["past_only", "alpha3"]) == worst
    assert np.isfinite(mine.loc["past_only", "value"])
    test_rows = _grid(store)
    assert mine.loc["past_only", "value"] == test_rows[(test_rows["split"] == "test") & (test_rows["alpha1"] == worst[0])
                                                       & (test_rows["alpha2"] == worst[1])
                                                       & (test_rows["alpha3"] == worst[2])]["value"].iloc[0]
    assert (mine.loc["oracle", "alpha1"], mine.loc["oracle", "alpha2"], mine.loc["oracle", "alpha3"]) == WINNER
    # resumed: the on-demand point is done too
    n_dirs = len(dirs)
    run_analogy(config, store)
    assert len(_trial_dirs(config, store, j="2015")) == n_dirs


@pytest.mark.slow
def test_optuna_under_asha_chooses_a_completed_point_and_resumes(ray_session, clear_winner, tmp_path):
    config, store = clear_winner
    asha = config.with_overrides([*ASHA, "analogy.searcher=optuna", "analogy.num_samples=6",
                                  f"ray.storage_path={tmp_path / 'tune'}"])
    run_analogy(asha, store)
    grid = _grid(store)
    best = _best(store)
    chosen = (best.loc["test", "alpha1"], best.loc["test", "alpha2"], best.loc["test", "alpha3"])
    complete = _by_point(grid[(grid["split"] == "validation") & ~grid["stopped"]])
    assert chosen in complete and np.isfinite(best.loc["test", "value"])
    assert best.loc["validation", "value"] == min(r.value for r in complete.values())  # perplexity: lower is better
    assert grid.loc[grid["stopped"], "value"].isna().all()
    dirs = _trial_dirs(asha, store)
    assert len(dirs) == 6
    run_analogy(asha, store)
    assert len(_trial_dirs(asha, store)) == 6  # stopped samples count as done: no sample is drawn again


def test_an_older_analogy_table_reads_and_is_extended(tmp_path):
    """A table written before ``validation_examples``/``stopped``: its rows of other pairs are kept, as not stopped."""
    import pyarrow as pa

    from timevec.adapt.analogy import AnalogyPoint, analogy_grid_frame
    from timevec.distributed.analogy import _replace_rows
    from timevec.store import VectorStore

    store = VectorStore(str(tmp_path / "store"))
    old = analogy_grid_frame("lm", "2015", "2016", "perplexity", [AnalogyPoint(1.0, 0.1, 0.2, 30.0, 31.0)])
    store.write_table(ANALOGY_TABLE, pa.Table.from_pandas(old.drop(columns=["validation_examples", "stopped"]),
                                                          preserve_index=False))
    new = analogy_grid_frame("lm", "2015", "2017", "perplexity", [
        AnalogyPoint(1.0, 0.1, 0.2, 20.0, 21.0, validation_examples=32), AnalogyPoint(1.4, 0.1, 0.2, 90.0, math.nan, 4, True)])
    _replace_rows(store, ANALOGY_TABLE, new, {"task": "lm", "source_period": "2015", "target_period": "2017"})
    table = store.read_table(ANALOGY_TABLE)
    assert list(table.columns) == results.ANALOGY_COLUMNS
    older = table[table["target_period"] == "2016"]
    assert list(older["value"]) == [30.0, 31.0] and not older["stopped"].any() and older["validation_examples"].isna().all()
    stopped = table[table["stopped"]]
    assert len(stopped) == 2 and stopped["value"].isna().all() and (stopped["validation_examples"] == 4).all()
