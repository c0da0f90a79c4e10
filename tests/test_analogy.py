"""The task analogy: the formula against a dense reference, and the Ray Tune search.

The search runs a 3 × 2 × 3 sub-grid of the paper's 9 × 6 × 6 reference grid (18 trials; the reference
grid itself is checked without running it) on tiny splits with ``reuse_actors``; the tests check the
grid visited, the tables, TensorBoard files and resumption. (The full 324-trial grid took 53 s of a
CI run on this 2-core machine.)
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import shutil

import pandas as pd
import pytest
import torch

from tests.stores import build_store, perturbation, tiny_config
from timevec import results
from timevec.adapt import analogy as task_analogy
from timevec.config import AnalogyConfig
from timevec.data.models import build_model, float_parameters, load_tokenizer
from timevec.distributed.analogy import (
    ANALOGY_BEST_TABLE,
    ANALOGY_TABLE,
    experiment_name,
    run_analogy,
)
from timevec.distributed.storage import ray_storage
from timevec.weights.vectors import TimeVector, WeightPatcher


def test_analogy_formula_matches_dense_reference(tmp_path):
    config = tiny_config(tmp_path, [])
    model = build_model(config.base, load_tokenizer(config.base))
    base = {n: p.detach().clone() for n, p in float_parameters(model).items()}
    task_j, lm_k, lm_j = (perturbation(base, seed) for seed in (1, 2, 3))
    a1, a2, a3 = 1.4, 0.3, 0.5
    dense = {n: base[n] + a1 * task_j[n] + a2 * lm_k[n] - a3 * lm_j[n] for n in base}
    patcher = WeightPatcher(model)
    patcher.apply_combination(task_analogy.analogy_terms(a1, task_j, a2, lm_k, a3, lm_j))
    params = float_parameters(model)
    for name, expected in dense.items():
        torch.testing.assert_close(params[name].detach(), expected, rtol=1e-6, atol=1e-7)
    # the sign of α₃: subtracting lm_j, not adding it
    assert task_analogy.analogy_terms(a1, task_j, a2, lm_k, a3, lm_j)[2][0] == -a3
    patcher.restore()
    assert all(torch.equal(p.detach(), base[n]) for n, p in float_parameters(model).items())


def test_reference_grid_is_the_papers():
    grid = task_analogy.reference_grid(AnalogyConfig())
    assert len(grid) == 9 * 6 * 6 == 324
    assert sorted({a for a, _, _ in grid}) == pytest.approx([0.6 + 0.2 * i for i in range(9)])
    assert sorted({b for _, b, _ in grid}) == pytest.approx([0.1 * i for i in range(1, 7)])


def test_select_best_uses_validation_only():
    points = [task_analogy.AnalogyPoint(1.0, 0.1, 0.1, 0.5, 0.9), task_analogy.AnalogyPoint(1.2, 0.1, 0.1, 0.6, 0.1)]
    assert task_analogy.select_best(points, higher=True).alpha1 == 1.2  # best validation, whatever test says
    assert task_analogy.select_best(points, higher=False).alpha1 == 1.0


GRID = 3 * 2 * 3  # the study's analogy grid below


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """classification and lm vectors for 2016 and 2017: one pair j=2016 → k=2017; tiny splits.

    Perturbations of 0.3 (not 0.05) so that the random tiny model's macro-F1 actually varies over
    the grid (with 0.05 every point predicts the same label and every value ties).
    """
    root = tmp_path_factory.mktemp("analogy-store")
    config = tiny_config(root, [
        "periods.start='2016'", "periods.end='2017'", "tasks=[lm, classification]", "granularities=[year]",
        "evaluation.max_examples=4", "analogy.max_concurrent_trials=2", "ray.eval_actors=2",
        # a sub-grid of the paper's reference grid (test_reference_grid_is_the_papers checks that one)
        "analogy.alpha1=[0.6, 1.0, 1.4]", "analogy.alpha2=[0.1, 0.4]", "analogy.alpha3=[0.1, 0.3, 0.6]",
    ])
    store, _ = build_store(config, {("classification", "2016"): 1, ("classification", "2017"): 2,
                                    ("lm", "2016"): 3, ("lm", "2017"): 4}, scale=0.3)
    return config, store


def _trial_dirs(config, store) -> list[str]:
    name = experiment_name(config, store, "classification", "2016", "2017")
    path = ray_storage(config, store).experiment_url(name)
    return sorted(d for d in glob.glob(os.path.join(path, "AnalogyTrial_*")) if os.path.isdir(d))


@pytest.mark.slow
def test_grid_search_visits_the_reference_grid(ray_session, study):
    config, store = study
    best = run_analogy(config, store)
    every = store.read_table(ANALOGY_TABLE)
    assert list(every.columns) == results.ANALOGY_COLUMNS
    scaled = every[every["method"] == "task_j_scaled"]  # α₁·τ_task(j) alone at every α₁ (past-only selection reads them)
    assert sorted(scaled.loc[scaled["split"] == "test", "alpha1"]) == sorted(config.analogy.alpha1)
    assert (scaled[["alpha2", "alpha3"]] == 0.0).all().all()
    grid = every[every["method"] == "analogy"]
    for split in ("validation", "test"):
        part = grid[grid["split"] == split]
        assert len(part) == GRID
        visited = {(round(a, 6), round(b, 6), round(c, 6)) for a, b, c in zip(part["alpha1"], part["alpha2"], part["alpha3"])}
        expected = {(round(a, 6), round(b, 6), round(c, 6)) for a, b, c in
                    itertools.product(config.analogy.alpha1, config.analogy.alpha2, config.analogy.alpha3)}
        assert visited == expected
    assert (grid["metric"] == "macro_f1").all()
    assert set(zip(grid["source_period"], grid["target_period"])) == {("2016", "2017")}

    stored = store.read_table(ANALOGY_BEST_TABLE)
    assert list(stored.columns) == results.ANALOGY_BEST_COLUMNS and stored.columns[-1] == "experiment"
    assert len(best) == len(stored) == 2 * len(results.ANALOGY_METHODS)
    assert set(zip(stored["method"], stored["split"])) == set(itertools.product(results.ANALOGY_METHODS, ["validation", "test"]))
    by = stored.set_index(["method", "split"])
    # the analogy row is the grid's best VALIDATION point, and its test value is that point's
    val = grid[grid["split"] == "validation"]
    assert val["value"].nunique() > 1  # a real landscape, not 18 ties
    assert by.loc[("analogy", "validation"), "value"] == val["value"].max()
    a = by.loc[("analogy", "test")]
    point = grid[(grid["split"] == "test") & (grid["alpha1"] == a.alpha1) & (grid["alpha2"] == a.alpha2)
                 & (grid["alpha3"] == a.alpha3)]
    assert point["value"].iloc[0] == a.value
    assert by.loc[("task_j", "test"), "alpha1"] == 1.0 and by.loc[("task_j", "test"), "alpha2"] == 0.0
    assert by.loc[("task_j_scaled", "test"), "alpha1"] in config.analogy.alpha1
    assert by.loc[("task_j_scaled", "validation"), "value"] >= by.loc[("task_j", "validation"), "value"] or \
        1.0 not in config.analogy.alpha1
    assert by.loc[("in_period", "test"), "vector"] == "classification/2017"
    assert by.loc[("latest", "test"), "vector"] == "classification/2016"  # the latest BEFORE k
    assert by.loc[("latest", "test"), "value"] == by.loc[("task_j", "test"), "value"]

    # every trial reported; actors were reused (a handful of processes, not one per trial)
    dirs = _trial_dirs(config, store)
    assert len(dirs) == GRID
    pids = set()
    for d in dirs:
        with open(os.path.join(d, "result.json")) as fh:
            pids.add(json.loads(fh.readline())["pid"])
    assert len(pids) <= 2 * config.analogy.max_concurrent_trials, len(pids)


def test_tensorboard_event_files_have_scalars(ray_session, study):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, store = study
    if not store.has_table(ANALOGY_TABLE):
        run_analogy(config, store)
    dirs = _trial_dirs(config, store)
    events = [f for d in dirs for f in glob.glob(os.path.join(d, "events.out.tfevents.*"))]
    assert len(events) >= len(dirs) == GRID
    acc = EventAccumulator(dirs[0])
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert "ray/tune/validation" in scalars and "ray/tune/test" in scalars
    assert len(acc.Scalars("ray/tune/validation")) == 1


def test_repeated_search_resumes(ray_session, study):
    config, store = study
    if not store.has_table(ANALOGY_TABLE):
        run_analogy(config, store)

    def lines() -> dict[str, int]:
        out = {}
        for d in _trial_dirs(config, store):
            with open(os.path.join(d, "result.json")) as fh:
                out[os.path.basename(d)] = sum(1 for _ in fh)
        return out

    before = lines()
    grid_before = store.read_table(ANALOGY_TABLE)
    run_analogy(config, store)
    assert lines() == before  # the same 18 trials, none run again (no new result lines, no new trials)
    assert store.read_table(ANALOGY_TABLE).equals(grid_before)


def test_an_interrupted_search_runs_only_the_missing_points(ray_session, study):
    config, store = study
    if not store.has_table(ANALOGY_TABLE):
        run_analogy(config, store)
    grid_before = store.read_table(ANALOGY_TABLE)
    dirs = _trial_dirs(config, store)
    lost = dirs[:5]
    for d in lost[:3]:  # trials that never ran
        shutil.rmtree(d)
    for d in lost[3:]:  # a trial killed while writing its result: a cut line
        with open(os.path.join(d, "result.json"), "r+") as fh:
            text = fh.read()
            fh.seek(0)
            fh.truncate()
            fh.write(text[: len(text) // 2])
    run_analogy(config, store)
    after = _trial_dirs(config, store)
    assert len(set(after) - set(dirs)) == 5  # exactly the 5 lost points ran again, in new trial directories
    grid = store.read_table(ANALOGY_TABLE)
    key = ["split", "alpha1", "alpha2", "alpha3"]
    pd.testing.assert_frame_equal(grid.sort_values(key).reset_index(drop=True),
                                  grid_before.sort_values(key).reset_index(drop=True))  # evaluation is deterministic


def test_optuna_searcher_proposes_grid_points(ray_session, study, tmp_path):
    config, store = study
    config = config.with_overrides(["analogy.searcher=optuna", "analogy.num_samples=10",
                                    "analogy.max_concurrent_trials=1",  # one actor to start: Optuna is sequential anyway
                                    f"ray.storage_path={tmp_path / 'tune'}"])
    best = run_analogy(config, store)
    grid = store.read_table(ANALOGY_TABLE)
    part = grid[(grid["split"] == "validation") & (grid["method"] == "analogy")]
    assert len(part) == 10  # the optuna run replaced this pair's rows
    assert set(grid.loc[grid["method"] == "task_j_scaled", "alpha2"]) == {0.0}  # the scaled-alone points, kept
    assert set(part["alpha1"]) <= set(config.analogy.alpha1) and set(part["alpha3"]) <= set(config.analogy.alpha3)
    analogy_val = best[(best["method"] == "analogy") & (best["split"] == "validation")]["value"].iloc[0]
    assert analogy_val == part["value"].max()


def test_missing_vectors_are_a_clear_error(ray_session, tmp_path):
    from timevec.store import StoreError

    config = tiny_config(tmp_path, ["periods.start='2016'", "periods.end='2017'", "tasks=[lm, classification]"])
    store, _ = build_store(config, {("lm", "2016"): 1, ("lm", "2017"): 2})
    with pytest.raises(StoreError, match="classification/2016"):
        run_analogy(config, store)


def test_dense_vector_shapes_match_store(study):
    config, store = study
    vec = store.get_vector("lm", "2016")
    assert isinstance(vec, TimeVector) and set(vec.names) == set(store.get_base())
