"""Forecasting held-out future periods: each method against a dense reference, no held-out data
read (vectors, validation labels), the config's checks, the findings row, the report figure, and
the Ray stage on the tiny config (its values equal to a local evaluation, bit for bit; resumable).

The evaluation in the library tests is injected (a fake that records what it was given): what is
under test is which weights and which splits a forecast asks for, not a model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from timevec import results
from timevec.adapt import forecast
from timevec.adapt.forecast import ForecastItem, ForecastParams, HeldOutError
from timevec.adapt.forecast_methods import get_method
from timevec.config import ConfigError, load_config
from timevec.data.examples import EvalSplit
from timevec.weights.vectors import TimeVector

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "timevec" / "demo" / "tiny.yaml"
PAST = ["2012", "2013", "2014", "2015"]
#: The methods whose coefficients need no Gram matrix (the subspace ones: tests/test_forecast_subspace.py).
PLAIN = [m for m in forecast.FORECASTS if not get_method(m).needs_gram]
HELD_OUT = ["2016", "2017"]


def _random_vectors(periods: list[str], seed: int = 0) -> dict[str, TimeVector]:
    g = torch.Generator().manual_seed(seed)
    return {p: TimeVector({"a.weight": torch.randn(3, 4, generator=g),
                           "b.bias": torch.randn(5, generator=g)}) for p in periods}


def _dense(terms) -> np.ndarray:
    """Σ cᵢ·τᵢ as one flat numpy array (the reference side never sees a coefficient list)."""
    return sum(c * _flat(v) for c, v in terms)


def _flat(v: TimeVector) -> np.ndarray:
    return np.concatenate([v[n].double().numpy().ravel() for n in sorted(v.names)])  # τ is fp32: sums in fp64


def _year(p: str) -> float:
    return float(int(p))


def _reference(method: str, vectors: dict[str, TimeVector], past: list[str], target: str, params: ForecastParams) -> np.ndarray:
    x = {p: _flat(vectors[p]) for p in past}
    n, prev = past[-1], past[-2]
    h = _year(target) - _year(n)
    if method == "latest":
        return x[n]
    if method == "taylor":
        d = _year(n) - _year(prev)
        return x[n] + (h / d) * (x[n] - x[prev])
    if method == "trend":
        window = past[-params.trend_window:]
        slope, intercept = np.polyfit([_year(p) for p in window], np.stack([x[p] for p in window]), 1)
        return slope * _year(target) + intercept
    if method == "ema":
        w = np.array([params.ema_decay ** (_year(n) - _year(p)) for p in past])
        return (w[:, None] * np.stack([x[p] for p in past])).sum(0) / w.sum()
    if method == "scaled_latest":
        return params.scale * x[n]
    if method == "uniform_soup":
        return np.stack([x[p] for p in past]).mean(0)
    raise AssertionError(method)


@pytest.mark.parametrize("method", PLAIN)
@pytest.mark.parametrize("target", HELD_OUT)
@pytest.mark.parametrize("past", [PAST, ["2011", "2013", "2014"], ["2010", "2013"]], ids=["contiguous", "gap", "two"])
def test_each_method_equals_its_dense_reference(method: str, target: str, past: list[str]) -> None:
    vectors = _random_vectors(sorted({*past, *HELD_OUT}))
    params = ForecastParams(trend_window=3, ema_decay=0.6, scale=1.3)
    terms = forecast.forecast_terms(method, past, target, forecast.past_only(vectors.__getitem__, past), params)
    np.testing.assert_allclose(_dense(terms), _reference(method, vectors, past, target, params), rtol=1e-10, atol=1e-12)


def test_coefficient_lists_are_the_documented_ones() -> None:
    p = ForecastParams(trend_window=3, ema_decay=0.5)
    assert forecast.forecast_coefficients("latest", PAST, "2017", p) == [(1.0, "2015")]
    assert forecast.forecast_coefficients("taylor", PAST, "2017", p) == [(-2.0, "2014"), (3.0, "2015")]
    trend = forecast.forecast_coefficients("trend", PAST, "2016", p)
    assert [q for _, q in trend] == ["2013", "2014", "2015"] and sum(c for c, _ in trend) == pytest.approx(1.0)
    # a two-point trend is the Taylor step
    two = forecast.forecast_coefficients("trend", PAST, "2017", ForecastParams(trend_window=2))
    assert two == forecast.forecast_coefficients("taylor", PAST, "2017", p) == [(-2.0, "2014"), (3.0, "2015")]
    ema = forecast.forecast_coefficients("ema", PAST, "2016", p)
    assert [c for c, _ in ema] == pytest.approx([1 / 15, 2 / 15, 4 / 15, 8 / 15])
    assert forecast.forecast_coefficients("uniform_soup", PAST, "2016", p) == [(0.25, q) for q in PAST]
    with pytest.raises(ValueError, match="not been chosen"):
        forecast.forecast_coefficients("scaled_latest", PAST, "2016", p)
    with pytest.raises(ValueError, match="not after"):
        forecast.forecast_coefficients("latest", PAST, "2015", p)
    with pytest.raises(ValueError, match="unknown forecast method"):
        forecast.forecast_coefficients("oracle", PAST, "2016", p)


# ----------------------------------------------------------------------------- what a forecast may read


def _split(period: str, split: str = "test") -> EvalSplit:
    return EvalSplit(task="lm", period=period, encoder_decoder=False, pad_id=0, eos_id=1, examples=(None,), split=split,
                     n_rows=1)  # one (never read) example: a split with rows


class RecordingEvaluator:
    """value = (weight − goal of the split)² with one scalar weight (lower is better: perplexity-like)."""

    def __init__(self, goals: dict[tuple[str, str], float]) -> None:
        self.goals = goals
        self.calls: list[tuple[float, str, str]] = []  # (weight, period, split)

    def __call__(self, terms, splits):
        weight = sum(c * float(v["w"][0]) for c, v in terms)
        rows = []
        for s in splits:
            self.calls.append((weight, s.period, s.split))
            rows.append({"task": "lm", "test_period": s.period, "metric": "perplexity",
                         "value": (weight - self.goals[(s.period, s.split)]) ** 2, "higher_is_better": False})
        return rows


SCALARS = {"2012": 1.0, "2013": 1.5, "2014": 2.0, "2015": 2.25, "2016": 3.0, "2017": 3.25}  # exact in fp32
VECTORS = {p: TimeVector({"w": torch.tensor([x], dtype=torch.float64)}) for p, x in SCALARS.items()}
GOALS = {**{(p, "test"): x for p, x in SCALARS.items()}, **{(p, "validation"): x + 0.25 for p, x in SCALARS.items()}}
TESTS = {p: _split(p) for p in SCALARS}
VALIDATION = {p: _split(p, "validation") for p in SCALARS}  # held-out periods' too: they must not be used


def _refusing_loader(reads: list[str]):
    def load(period: str) -> TimeVector:
        if period in HELD_OUT:
            raise AssertionError(f"held-out vector {period} read")
        reads.append(period)
        return VECTORS[period]

    return load


def _items(methods=("base", "latest", "in_period", *PLAIN[1:])) -> list[ForecastItem]:
    params = ForecastParams(trend_window=3, ema_decay=0.5, lambdas=(0.5, 1.0, 1.25, 1.5))
    return [ForecastItem("lm", "year", m, tuple(PAST), tuple(HELD_OUT), params) for m in methods]


def test_no_held_out_vector_or_label_is_read_except_by_the_oracle_row() -> None:
    fake = RecordingEvaluator(GOALS)
    reads: list[str] = []
    oracle_reads: list[str] = []

    def oracle(period: str) -> TimeVector:
        oracle_reads.append(period)
        return VECTORS[period]

    rows = {}
    for item in _items():
        before = len(oracle_reads)
        rows[item.method] = forecast.evaluate_item(fake, _refusing_loader(reads), item, TESTS, VALIDATION, load_oracle=oracle)
        if item.method != "in_period":
            assert len(oracle_reads) == before, item.method
    assert oracle_reads == HELD_OUT  # the in_period row, once per held-out period, and nothing else
    assert set(reads) <= set(PAST)
    # test splits of held-out periods only; validation of the last past period only
    assert {(p, s) for _, p, s in fake.calls} == {("2016", "test"), ("2017", "test"), ("2015", "validation")}
    for method, got in rows.items():
        assert [r["target_period"] for r in got] == HELD_OUT, method
        assert {r["selection"] for r in got} == {"oracle" if method == "in_period" else "past-only"}
        assert [r["horizon"] for r in got] == [1, 2]
    # the guard itself: a forecast that asked for a held-out vector would fail loudly
    guarded = forecast.past_only(VECTORS.__getitem__, PAST, "forecast lm/year")
    with pytest.raises(HeldOutError, match="2016"):
        guarded("2016")


def test_scaled_latest_chooses_lambda_on_the_last_past_validation_split() -> None:
    fake = RecordingEvaluator(GOALS)
    item = _items(["scaled_latest"])[0]
    rows = forecast.evaluate_item(fake, _refusing_loader([]), item, TESTS, VALIDATION)
    # λ·τ_2014 (2.0) closest to 2015's validation goal 2.5 on the grid {0.5, 1, 1.25, 1.5}: λ = 1.25
    selection = [(w, p, s) for w, p, s in fake.calls if s == "validation"]
    assert [w for w, _, _ in selection] == pytest.approx([1.0, 2.0, 2.5, 3.0])
    assert {p for _, p, _ in selection} == {"2015"}
    assert [r["param"] for r in rows] == [1.25, 1.25]
    assert [r["history"] for r in rows] == ["2014,2015", "2014,2015"]
    # the forecast 1.25·τ_2015 = 2.8125 on each target (goals 3.0, 3.25); the reference is τ_2015 = 2.25
    values = {r["target_period"]: r["value"] for r in rows}
    assert values == {"2016": 0.1875 ** 2, "2017": 0.4375 ** 2}
    gains = {r["target_period"]: r["gain_vs_latest"] for r in rows}
    assert gains == {"2016": 0.75 ** 2 - 0.1875 ** 2, "2017": 1.0 - 0.4375 ** 2}  # lower is better: positive
    # one shared evaluation of the forecast on both targets (the same weights)
    assert sum(1 for _, _, s in fake.calls if s == "test") == 2 + 2  # reference + forecast, each on 2 splits
    # the validation split must be the last past period's
    with pytest.raises(ValueError, match="2015's validation"):
        forecast.choose_scale(fake, VECTORS.__getitem__, PAST, VALIDATION["2016"], [1.0], higher=False)
    # no validation split of 2015: no row, and nothing else is used in its place
    assert forecast.evaluate_item(fake, _refusing_loader([]), item, TESTS, {"2016": VALIDATION["2016"]}) == []


def test_rows_gains_and_known_cells() -> None:
    cells = {("2015", "2016"): 0.5625, ("2015", "2017"): 1.0, ("base", "2016"): 9.0, ("base", "2017"): 10.5625,
             ("2016", "2016"): 0.0, ("2017", "2017"): 0.0}
    fake = RecordingEvaluator(GOALS)
    reads: list[str] = []
    by_method = {item.method: forecast.evaluate_item(fake, _refusing_loader(reads), item, TESTS, VALIDATION,
                                                     known=lambda s, t: cells.get((s, t)))
                 for item in _items(["base", "latest", "in_period"])}
    assert fake.calls == [] and reads == []  # every baseline is a cell of the all-pairs table
    assert [r["value"] for r in by_method["in_period"]] == [0.0, 0.0]
    assert [r["gain_vs_latest"] for r in by_method["latest"]] == [0.0, 0.0]
    assert [r["gain_vs_latest"] for r in by_method["base"]] == [0.5625 - 9.0, 1.0 - 10.5625]
    assert by_method["base"][0]["gain_vs_latest_pct"] == pytest.approx((0.5625 - 9.0) / 0.5625 * 100)
    taylor = forecast.evaluate_item(fake, _refusing_loader(reads), _items(["taylor"])[0], TESTS, VALIDATION,
                                    known=lambda s, t: cells.get((s, t)))
    # τ_2015 + δ·(τ_2015 − τ_2014): 2.5 and 2.75, each on its own target; the reference came from the cells
    assert [w for w, _, _ in fake.calls] == [2.5, 2.75]
    assert [r["value"] for r in taylor] == [0.25, 0.25]
    assert [r["gain_vs_latest"] for r in taylor] == [0.5625 - 0.25, 0.75]
    assert [r["history"] for r in taylor] == ["2014,2015", "2014,2015"]
    frame = results.forecast_frame([r for rows in by_method.values() for r in rows] + taylor)
    assert list(frame.columns) == results.FORECAST_COLUMNS and len(frame) == 8
    assert frame["param"].isna().all()


def test_plan_skips_done_rows_and_needs_two_past_vectors() -> None:
    params = ForecastParams()
    periods = PAST + HELD_OUT
    methods = ["trend", "taylor", "ema"]
    items, note = forecast.plan_forecast("lm", "year", periods, periods, 2, params, methods)
    assert note is None
    assert [(i.method, i.targets, i.past) for i in items] == [
        (m, ("2016", "2017"), tuple(PAST)) for m in ("base", "latest", "in_period", *methods)]
    fake = RecordingEvaluator(GOALS)
    rows = [r for i in items for r in forecast.evaluate_item(fake, VECTORS.__getitem__, i, TESTS, VALIDATION,
                                                              load_oracle=VECTORS.__getitem__)]
    done = forecast.forecast_done(results.forecast_frame(rows[:-1]))  # the last row (ema, 2017) lost
    again, _ = forecast.plan_forecast("lm", "year", periods, periods, 2, params, methods, done)
    assert [(i.method, i.targets) for i in again] == [("ema", ("2017",))]
    # a longer trend window is a different history (2012–2015, not 2013–2015): recomputed; a longer horizon too
    longer, _ = forecast.plan_forecast("lm", "year", periods, periods, 2, ForecastParams(trend_window=4), methods, done)
    assert [(i.method, i.targets) for i in longer] == [("trend", ("2016", "2017")), ("ema", ("2017",))]
    further, _ = forecast.plan_forecast("lm", "year", periods, periods, 3, params, ["ema"], done)
    assert {i.targets for i in further} == {("2015", "2016", "2017")}
    # a held-out period without its own vector has no oracle row; one stored past vector: nothing
    partial, _ = forecast.plan_forecast("lm", "year", periods, PAST + ["2016"], 2, params, ["ema"])
    assert [i.targets for i in partial if i.method == "in_period"] == [("2016",)]
    none, note = forecast.plan_forecast("lm", "year", periods, ["2015", "2016", "2017"], 2, params, ["ema"])
    assert none == [] and "1 stored past vector(s) before 2016" in note


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("override, culprit", [
    ("forecast.horizon=0", "forecast.horizon"),
    ("forecast.trend_window=1", "forecast.trend_window"),
    ("forecast.ema_decay=1.0", "forecast.ema_decay"),
    ("forecast.ema_decay=0", "forecast.ema_decay"),
    ("forecast.lambdas=[]", "forecast.lambdas"),
    ("forecast.lambdas=[-1.0, 1.0]", "forecast.lambdas"),
    ("forecast.lambdas=[.nan]", "forecast.lambdas"),
    ("forecast.methods=[]", "forecast.methods"),
    ("forecast.methods=[latest]", "forecast.methods"),
    ("forecast.horizn=2", "forecast.horizn: unknown key"),
])
def test_bad_forecast_config_is_refused_naming_the_key(override: str, culprit: str) -> None:
    with pytest.raises(ConfigError, match=culprit.replace(".", r"\.")):
        load_config(TINY, [override])


def test_a_horizon_must_leave_two_past_periods() -> None:
    config = load_config(TINY, ["forecast.horizon=3"])  # a short study still loads for its other stages
    with pytest.raises(ConfigError) as err:
        forecast.check_horizon(config)
    assert "forecast.horizon = 3" in str(err.value) and "4 year period(s) (2014–2017)" in str(err.value)
    assert "leaves 1 past period" in str(err.value)
    assert forecast.split_history(["2015", "2014", "2016", "2017"], 2) == (["2014", "2015"], ["2016", "2017"])


def test_the_cli_and_the_job_refuse_a_horizon_before_any_work(tmp_path, capsys) -> None:
    from timevec.cli import main

    store = tmp_path / "store"
    assert main(["forecast", str(TINY), "--set", "forecast.horizon=3", "--set", f"store.url={store}"]) == 2
    assert "forecast.horizon = 3" in capsys.readouterr().err
    assert not store.exists()  # refused before a store, Ray or a model was touched
    assert main(["forecast", str(TINY), "--set", "forecast.ema_decay=2"]) == 2
    assert "forecast.ema_decay" in capsys.readouterr().err


# ----------------------------------------------------------------------------- findings and report


def _forecast_table() -> pd.DataFrame:
    rows = []
    for task, metric, higher, base in (("lm", "perplexity", False, 20.0), ("classification", "macro_f1", True, 0.5)):
        for gran, targets, factor in (("year", HELD_OUT, 1.0), ("month", ["2017-11", "2017-12"], 1.5)):
            for delta, target in enumerate(targets, start=1):
                for method, shift in (("base", -5.0), ("latest", 0.0), ("in_period", 1.0), ("taylor", -0.5), ("ema", 0.2)):
                    value = base - factor * shift if not higher else base + factor * shift * 0.01
                    latest = base
                    rows.append(dict(task=task, granularity=gran, method=method,
                                     selection="oracle" if method == "in_period" else "past-only", target_period=target,
                                     horizon=delta, history="", param=math.nan, split="test", metric=metric, value=value,
                                     higher_is_better=higher,
                                     gain_vs_latest=(value - latest) if higher else (latest - value),
                                     gain_vs_latest_pct=((value - latest) if higher else (latest - value)) / latest * 100))
    return results.forecast_frame(rows)


def _cells() -> pd.DataFrame:
    rows = [dict(task="lm", granularity="year", vector=f"lm/{a}", train_period=a, test_period=b, metric="perplexity",
                 value=20.0 + abs(int(a) - int(b)), higher_is_better=False, n_examples=1, n_tokens=1, seconds=0.0)
            for a in PAST for b in PAST]
    return results.cells_frame(rows)


def test_findings_state_forecast_vs_latest_one_period_ahead() -> None:
    from timevec.analyze import analysis
    from timevec.analyze.findings import PAPER_CLAIMS

    found = analysis.analyze(_cells(), forecast=_forecast_table()).findings
    rows = found[found["finding"] == "forecast vs latest vector"].set_index("panel")
    assert sorted(rows.index) == ["classification ema", "classification taylor", "lm ema", "lm taylor"]
    assert (rows["paper"] == PAPER_CLAIMS["forecast vs latest vector"][0]).all()
    assert rows.loc["lm taylor", "unit"] == "%" and rows.loc["classification taylor", "unit"] == "points"
    # δ = 1 of year and month: two targets, −2.5 % and −3.75 %; a t interval over two straddles 0
    taylor = rows.loc["lm taylor"]
    assert taylor["estimate"] == pytest.approx(-3.125) and taylor["low"] < -3.125 < taylor["high"]
    low, high = stats.ttest_1samp([-2.5, -3.75], 0.0).confidence_interval(0.95)
    assert (taylor["low"], taylor["high"]) == pytest.approx((low, high))
    assert taylor["holds"] == "unclear" and taylor["note"] == "past-only; δ = 1; 2 target(s)"
    assert rows.loc["classification ema", "estimate"] == pytest.approx(0.0025)
    one = analysis.analyze(_cells(), forecast=_forecast_table().query("granularity == 'year'")).findings
    lone = one[one["finding"] == "forecast vs latest vector"].set_index("panel").loc["lm taylor"]
    assert lone["estimate"] == pytest.approx(-2.5) and lone["holds"] == "unclear" and "no interval" in lone["note"]


def test_report_draws_the_forecast_figure(tmp_path) -> None:
    from timevec.report import build_report

    written: dict[str, object] = {}
    tables = {"cells": _cells(), "forecast": _forecast_table()}
    paths = build_report(tables, None, None, written.__setitem__, written.__setitem__, "forecast study")
    assert {"reports/forecast_year.png", "reports/forecast_month.png"} <= set(paths)
    assert len(written["fig_forecast_year"]) == 20 and bytes(written["reports/forecast_year.png"])[:4] == b"\x89PNG"
    html = bytes(written["reports/index.html"]).decode()
    assert "Forecasting future periods" in html and "forecast vs latest vector" in html
    assert results.FORECAST_TABLE in results.REPORT_TABLES


# ----------------------------------------------------------------------------- the Ray stage


@pytest.mark.slow
def test_forecast_stage_on_the_tiny_config(ray_session, tmp_path) -> None:
    from tests.stores import build_store, tiny_config
    from timevec.data.corpus import load_corpus
    from timevec.data.examples import prepare_split
    from timevec.data.models import base_is_encoder_decoder, load_tokenizer
    from timevec.distributed.forecast import plan, run_forecast
    from timevec.evaluate.cells import CellEvaluator

    config = tiny_config(tmp_path / "store", ["tasks=[lm]", "evaluation.max_examples=4"])
    store, _ = build_store(config, {("lm", p): 10 + i for i, p in enumerate(["2014", "2015", "2016", "2017"])})
    began = time.perf_counter()
    table = run_forecast(config, store)
    seconds = time.perf_counter() - began
    print(f"\nforecast stage on the tiny config (lm, 4 years, no cells table): {seconds:.1f} s, {len(table)} rows")
    assert list(table.columns) == results.FORECAST_COLUMNS
    methods = ["base", "latest", "in_period", *config.forecast.methods]
    assert sorted(zip(table["method"], table["target_period"])) == sorted((m, t) for m in methods for t in HELD_OUT)
    assert set(table.loc[table["method"] == "in_period", "selection"]) == {"oracle"}
    assert (table.loc[table["method"] == "latest", "gain_vs_latest"] == 0.0).all()
    assert set(table["history"][table["method"] == "uniform_soup"]) == {"2014,2015"}

    # the actors' values are the local evaluation of the same weights, bit for bit
    corpus, tokenizer = load_corpus(config.corpus), load_tokenizer(config.base)
    tests = [prepare_split("lm", corpus, p, tokenizer, base_is_encoder_decoder(config.base), config.evaluation) for p in HELD_OUT]
    threads = torch.get_num_threads()
    torch.set_num_threads(config.ray.torch_threads)
    try:
        evaluator = CellEvaluator(config, store, device="cpu")
        tau = {p: store.get_vector("lm", p) for p in ("2014", "2015")}
        local = {
            ("latest", "2016"): evaluator.evaluate_weights([(1.0, tau["2015"])], tests[:1])[0]["value"],
            ("taylor", "2017"): evaluator.evaluate_weights([(-2.0, tau["2014"]), (3.0, tau["2015"])], tests[1:])[0]["value"],
            ("base", "2017"): evaluator.evaluate_weights([], tests[1:])[0]["value"],
        }
    finally:
        torch.set_num_threads(threads)
    got = table.set_index(["method", "target_period"])["value"]
    for key, value in local.items():
        assert got[key] == value, key

    # resumable: nothing left to do, and a re-run adds no row
    assert plan(config, store)[0] == []
    assert len(run_forecast(config, store)) == len(table)
    assert len(store.read_table(results.FORECAST_TABLE)) == len(table)
