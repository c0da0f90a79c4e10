"""Interpolation, time soups and missing-period patching: the library and the Ray stage.

The store holds the tiny demo model's (random-init) base and vectors made as seeded
perturbations of it: the stage's arithmetic and bookkeeping are what is tested, not whether a
tiny model learns; no fleet is run.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.stores import TINY, build_store, tiny_config
from timevec import periods, results
from timevec.adapt import interpolation as adapt
from timevec.adapt import summaries
from timevec.config import ExperimentConfig
from timevec.data.corpus import load_corpus
from timevec.data.examples import EvalSplit, prepare_split
from timevec.data.models import base_is_encoder_decoder, load_tokenizer
from timevec.distributed.interpolate import plan, run_interpolation
from timevec.evaluate.cells import CellEvaluator
from timevec.periods import Period
from timevec.results import INTERPOLATION_BEST_TABLE, INTERPOLATION_TABLE, PATCHING_TABLE, SOUPS_TABLE
from timevec.store import VectorStore
from timevec.weights.vectors import TimeVector

REPO = Path(__file__).resolve().parents[1]
YEARS = ["2014", "2015", "2016", "2017"]
MONTHS = [f"2017-{m:02d}" for m in range(1, 13)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """lm vectors for 2014–2017 (years) and the 12 months of 2017, on the tiny config."""
    root = tmp_path_factory.mktemp("adapt-store")
    config = tiny_config(root, [
        "periods.start='2014'", "periods.end='2017'", "granularities=[year, month]",
        "month_periods={start: '2017', end: '2017'}", "tasks=[lm]", "evaluation.max_examples=4",
        "interpolation.alphas=[0.0, 0.5, 1.0]",
    ])
    vectors = {("lm", p): 10 + i for i, p in enumerate(YEARS + MONTHS)}
    store, base = build_store(config, vectors)
    return config, store, base


# ----------------------------------------------------------------------------- library, no Ray


def test_interpolation_terms_are_exact_at_the_ends():
    a = TimeVector({"w": torch.tensor([1.0, 2.0])})
    b = TimeVector({"w": torch.tensor([3.0, 5.0])})
    assert adapt.interpolation_terms(a, b, 0.0) == [(1.0, a), (0.0, b)]
    assert adapt.interpolation_terms(a, b, 1.0) == [(0.0, a), (1.0, b)]
    (c1, _), (c2, _) = adapt.interpolation_terms(a, b, 0.3)
    assert c1 == pytest.approx(0.7) and c2 == pytest.approx(0.3)


def test_plan_interpolation_skips_done_points():
    items = adapt.plan_interpolation("lm", "year", ["2016", "2014", "2015"], ["2014", "2015", "2016"], [0.0, 0.5, 1.0])
    assert [(i.first, i.last, i.alpha) for i in items] == [("2014", "2016", 0.0), ("2014", "2016", 0.5), ("2014", "2016", 1.0)]
    assert all(i.validation_periods == ("2015",) for i in items)  # validation: the middle period only
    done = {("lm", "year", "2014", "2016", 0.5, p, "test") for p in ["2014", "2015"]}
    done |= {("lm", "year", "2014", "2016", 0.5, "2015", "validation")}
    done |= {("lm", "year", "2014", "2016", 0.0, p, "test") for p in ["2014", "2015", "2016"]}
    items = adapt.plan_interpolation("lm", "year", ["2014", "2015", "2016"], ["2014", "2015", "2016"], [0.0, 0.5, 1.0], done)
    assert [(i.alpha, i.test_periods, i.validation_periods) for i in items] == [
        (0.0, (), ("2015",)), (0.5, ("2016",), ()), (1.0, ("2014", "2015", "2016"), ("2015",))]
    assert adapt.plan_interpolation("lm", "year", ["2014"], ["2014"], [0.5]) == []


def test_neighbour_order_and_patchability():
    assert adapt.neighbour_order("2016", ["2014", "2015", "2016", "2017", "2018"]) == ["2015", "2017", "2014", "2018"]
    assert adapt.neighbour_order("2017-01", ["2016-11", "2016-12", "2017-02"]) == ["2016-12", "2017-02", "2016-11"]


def _fake_split(period: str) -> EvalSplit:
    return EvalSplit(task="lm", period=period, encoder_decoder=False, pad_id=0, eos_id=1, examples=())


class FakeEvaluator:
    """value = squared distance of the combination's single weight to a target (lower is better)."""

    def __init__(self, target: float) -> None:
        self.target = target
        self.calls: list[tuple[float, str]] = []

    def __call__(self, terms, splits):
        weight = sum(c * float(v["w"][0]) for c, v in terms)
        rows = []
        for split in splits:
            self.calls.append((weight, split.period))
            rows.append({"task": "lm", "test_period": split.period, "metric": "perplexity",
                         "value": (weight - self.target) ** 2, "higher_is_better": False})
        return rows


def test_greedy_soup_keeps_only_improving_neighbours():
    # τ_p = p's position; the best average for 2016 is 2.0: members 2016 (2.0) → + 2015 (1.5, worse)
    # → + 2017 (2.5, worse) → ... only improvements are kept.
    vectors = {p: TimeVector({"w": torch.tensor([float(x)])}) for p, x in
               {"2014": 1.0, "2015": 1.0, "2016": 2.5, "2017": 3.5, "2018": 1.5}.items()}
    fake = FakeEvaluator(target=2.0)
    soup = adapt.greedy_soup(fake, vectors.__getitem__, "2016", list(vectors), _fake_split("2016-v"),
                             _fake_split("2016"), higher=False)
    # start 2.5 (0.25); +2015 → 1.75 (0.0625) kept; +2017 → 7/3 (0.111) no; +2014 → 1.5 (0.25) no;
    # +2018 → (2.5+1+1.5)/3 = 1.667 (0.111) no
    assert soup.members == ["2015", "2016"]
    assert [c for c, _, ok in soup.trace if ok] == ["2015"]
    assert [c for c, _, _ in soup.trace] == ["2015", "2017", "2014", "2018"]
    assert soup.validation_value == pytest.approx(0.0625) and soup.start_validation_value == pytest.approx(0.25)
    assert soup.test_value == pytest.approx(0.0625)
    # selection saw validation only; the single test evaluation is of the final soup
    assert [p for _, p in fake.calls].count("2016") == 1


def test_soup_max_distance_limits_the_candidates():
    vectors = {p: TimeVector({"w": torch.tensor([float(i)])}) for i, p in enumerate(["2012", "2013", "2014", "2015", "2016"])}
    soup = adapt.greedy_soup(FakeEvaluator(target=2.0), vectors.__getitem__, "2014", list(vectors), _fake_split("2014-v"),
                             _fake_split("2014"), higher=False, max_distance=1)
    assert [c for c, _, _ in soup.trace] == ["2013", "2015"]


def test_period_baselines_take_known_cells_and_evaluate_only_the_rest():
    vectors = {p: TimeVector({"w": torch.tensor([x])}) for p, x in {"2014": 1.0, "2015": 2.0, "2016": 3.0, "2017": 5.0}.items()}
    evaluated = FakeEvaluator(target=0.0)
    full = adapt.period_baselines(evaluated, vectors.__getitem__, "lm", "2015", list(vectors), _fake_split("2015"))
    assert full.values == {"base": ("", 0.0), "in_period": ("2015", 4.0), "previous": ("2014", 1.0),
                           "next": ("2016", 9.0), "latest": ("2017", 25.0),
                           "uniform_soup": ("2014,2016,2017", 9.0)}  # the averaging control: every OTHER vector
    assert full.metric == "perplexity" and full.higher is False
    cells = {("base", "2015"): 0.0, ("2015", "2015"): 4.0, ("2017", "2015"): 25.0}  # as the cells table holds them
    fake = FakeEvaluator(target=0.0)
    known = adapt.period_baselines(fake, vectors.__getitem__, "lm", "2015", list(vectors), _fake_split("2015"),
                                   known=lambda source, test: cells.get((source, test)))
    assert known.values == full.values
    # only previous (2014), next (2016) and the uniform soup of 2014, 2016, 2017 (mean w 3) were evaluated
    assert sorted(w for w, _ in fake.calls) == [1.0, 3.0, 3.0]


def test_patch_missing_averages_the_two_neighbours():
    vectors = {p: TimeVector({"w": torch.tensor([x])}) for p, x in {"2014": 1.0, "2016": 3.0, "2017": 9.0}.items()}
    fake = FakeEvaluator(target=0.0)
    patch = adapt.patch_missing(fake, vectors.__getitem__, "2015", list(vectors), _fake_split("2015"))
    assert patch is not None and patch.neighbours == ("2014", "2016") and patch.value == pytest.approx(4.0)
    assert adapt.patch_missing(fake, vectors.__getitem__, "2017", list(vectors), _fake_split("2017")) is None


def test_interpolation_best_gains_and_baselines():
    rows = []
    for alpha, (v14, v15, v16) in {0.0: (10, 14, 16), 0.5: (12, 11, 13), 1.0: (15, 13, 11)}.items():
        for test, value in zip(["2014", "2015", "2016"], (v14, v15, v16)):
            rows.append(dict(task="lm", granularity="year", first="2014", last="2016", alpha=alpha,
                             test_period=test, metric="perplexity", value=float(value), higher_is_better=False))
    cells = pd.DataFrame([
        dict(task="lm", granularity="year", vector="lm/2015", train_period="2015", test_period="2015", value=10.5),
        dict(task="lm", granularity="year", vector="lm/2014", train_period="2014", test_period="2015", value=14.0),
        dict(task="lm", granularity="year", vector="base", train_period=None, test_period="2015", value=30.0),
    ])
    best = summaries.interpolation_best(results.interpolation_frame(rows), cells)
    assert list(best.columns) == results.INTERPOLATION_BEST_COLUMNS
    assert len(best) == 1  # only the middle period
    r = best.iloc[0]
    assert r.test_period == "2015" and r.best_alpha == 0.5 and r.best_value == 11.0
    assert r.gain_vs_first == 3.0 and r.gain_vs_last == 2.0 and r.beats_both_ends
    assert r.latest_period == "2016" and r.latest_value == 13.0 and r.gain_vs_latest == 2.0 and r.beats_latest
    assert r.in_period_value == 10.5 and r.gain_vs_in_period == -0.5
    assert r.previous_period == "2014" and r.previous_value == 14.0 and r.gain_vs_previous == 3.0
    assert r.base_value == 30.0
    assert r.gain_vs_latest_pct == pytest.approx(2.0 / 13.0 * 100)
    # without cells the oracle columns are NaN, the rest is unchanged
    bare = summaries.interpolation_best(results.interpolation_frame(rows)).iloc[0]
    assert math.isnan(bare.in_period_value) and bare.best_alpha == 0.5


# ----------------------------------------------------------------------------- the Ray stage


def _local_values(config: ExperimentConfig, store: VectorStore, granularity: str, period: str) -> dict[str, float]:
    """base + τ_period on every test split of ``granularity``, evaluated here, one thread (as the actors)."""
    corpus = load_corpus(config.corpus)
    tokenizer = load_tokenizer(config.base)
    encoder_decoder = base_is_encoder_decoder(config.base)
    periods = config.period_list(granularity)
    splits = [prepare_split("lm", corpus, p, tokenizer, encoder_decoder, config.evaluation) for p in periods]
    threads = torch.get_num_threads()
    torch.set_num_threads(config.ray.torch_threads)
    try:
        evaluator = CellEvaluator(config, store, device="cpu")
        rows = evaluator.evaluate_weights([(1.0, store.get_vector("lm", period))], splits)
    finally:
        torch.set_num_threads(threads)
    return {r["test_period"]: r["value"] for r in rows}


def test_interpolation_stage_ends_equal_end_vectors_exactly(ray_session, study):
    config, store, _ = study
    both = run_interpolation(config, store)
    assert list(both.columns) == results.INTERPOLATION_COLUMNS
    validation = both[both["split"] == "validation"]
    # validation rows: every α on the MIDDLE periods only (where α-selection protocols choose)
    assert len(validation[validation["granularity"] == "year"]) == 3 * 2
    assert len(validation[validation["granularity"] == "month"]) == 3 * 10
    table = both[both["split"] == "test"]
    years = table[table["granularity"] == "year"]
    months = table[table["granularity"] == "month"]
    assert len(years) == 3 * 4 and len(months) == 3 * 12  # every α on EVERY test period
    assert set(zip(years["first"], years["last"])) == {("2014", "2017")}
    assert set(zip(months["first"], months["last"])) == {("2017-01", "2017-12")}
    assert (table["metric"] == "perplexity").all() and not table["higher_is_better"].any()
    for granularity, first, last in [("year", "2014", "2017"), ("month", "2017-01", "2017-12")]:
        part = table[table["granularity"] == granularity]
        for alpha, period in [(0.0, first), (1.0, last)]:
            expected = _local_values(config, store, granularity, period)
            got = part[part["alpha"] == alpha].set_index("test_period")["value"].to_dict()
            assert got == expected, (granularity, alpha)  # bit-identical, not approximately equal
        # the middle of the line is a different model
        mid = part[part["alpha"] == 0.5].set_index("test_period")["value"]
        assert (mid != part[part["alpha"] == 0.0].set_index("test_period")["value"]).all()

    best = store.read_table(INTERPOLATION_BEST_TABLE)
    assert list(best.columns) == results.INTERPOLATION_BEST_COLUMNS
    assert sorted(best.loc[best["granularity"] == "year", "test_period"]) == ["2015", "2016"]
    assert len(best[best["granularity"] == "month"]) == 10
    assert (best["latest_value"] == best["value_alpha1"]).all()
    assert (best["selected_on"] == "validation").all()
    for r in best.itertuples():
        assert r.best_alpha in (0.0, 0.5, 1.0)
        # the oracle α is the best on the period's VALIDATION split, and reported on its test split
        val = validation[(validation["granularity"] == r.granularity) & (validation["test_period"] == r.test_period)]
        assert r.best_alpha == val.loc[val["value"].idxmin(), "alpha"]
        test_rows = table[(table["granularity"] == r.granularity) & (table["test_period"] == r.test_period)]
        assert r.best_value == test_rows.loc[test_rows["alpha"] == r.best_alpha, "value"].iloc[0]

    soups = store.read_table(SOUPS_TABLE)
    assert list(soups.columns) == results.SOUP_COLUMNS
    soup_periods = set(zip(soups["granularity"], soups["period"]))
    assert {("year", p) for p in YEARS} <= soup_periods
    for (gran, period), grp in soups.groupby(["granularity", "period"]):
        test = grp[grp["split"] == "test"].set_index("method")
        assert {"soup", "base", "in_period", "latest"} <= set(test.index), (gran, period)
        assert str(period) in test.loc["soup", "members"].split(",")  # starts from its own vector
        # gain is the soup's improvement over that row, on the same split (perplexity: lower is better)
        for method in ("base", "in_period", "latest"):
            assert test.loc[method, "gain"] == pytest.approx(test.loc[method, "value"] - test.loc["soup", "value"])
        val = grp[grp["split"] == "validation"].set_index("method")
        assert val.loc["soup", "value"] <= val.loc["in_period", "value"]  # greedy never gets worse on validation

    patching = store.read_table(PATCHING_TABLE)
    assert list(patching.columns) == results.PATCHING_COLUMNS
    patched = patching[patching["method"] == "patched"]
    assert sorted(patched.loc[patched["granularity"] == "year", "period"]) == ["2015", "2016"]
    assert len(patched[patched["granularity"] == "month"]) == 10
    row = patched[(patched["granularity"] == "year") & (patched["period"] == "2015")].iloc[0]
    assert row["members"] == "2014,2016"
    p15 = patching[(patching["granularity"] == "year") & (patching["period"] == "2015")].set_index("method")
    assert set(p15.index) == {"patched", "base", "in_period", "previous", "next", "latest", "uniform_soup"}
    assert p15.loc["uniform_soup", "members"] == "2014,2016,2017"  # the averaging control: every OTHER year
    assert p15.loc["in_period", "value"] == _local_values(config, store, "year", "2015")["2015"]
    assert p15.loc["latest", "members"] == "2017" and p15.loc["previous", "members"] == "2014"


def test_interpolation_stage_resumes(ray_session, study):
    config, store, _ = study
    if not store.has_table(INTERPOLATION_TABLE):
        run_interpolation(config, store)
    items, _, _ = plan(config, store)
    assert items == []  # nothing left to evaluate
    before = {name: len(store.read_table(name)) for name in (INTERPOLATION_TABLE, SOUPS_TABLE, PATCHING_TABLE)}
    table = run_interpolation(config, store)
    assert len(table) == before[INTERPOLATION_TABLE]
    assert {name: len(store.read_table(name)) for name in before} == before
    # a lost row is recomputed, and only it
    store.write_table(INTERPOLATION_TABLE, store.read_table(INTERPOLATION_TABLE).iloc[1:])
    items, _, _ = plan(config, store)
    assert len(items) == 1 and len(items[0].test_periods) == 1
    assert len(run_interpolation(config, store)) == before[INTERPOLATION_TABLE]


def test_job_rejects_bad_input(tmp_path, capsys):
    # the real entrypoint, as `ray job submit` runs it: a missing config is a clear error, exit != 0
    missing = subprocess.run([sys.executable, "-m", "timevec", "interpolate", str(tmp_path / "nope.yaml")],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "nope.yaml" in missing.stderr and "Traceback" not in missing.stderr
    # a bad override names the key (in-process: the same code path, without another interpreter start)
    from timevec.cli import main

    assert main(["interpolate", str(TINY), "--set", "interpolation.alphas=[2.0]"]) != 0
    assert "interpolation.alphas" in capsys.readouterr().err


def test_period_shift_helpers_agree_with_store_periods():
    # patching pairs p−1 and p+1 across a year boundary for months
    assert str(Period.parse("2017-01").shift(-1)) == "2016-12"
    assert periods.sort_periods(["2017-02", "2016-12", "2017-01"]) == ["2016-12", "2017-01", "2017-02"]
