"""Analysis functions against hand-computed values and NumPy/SciPy references."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from timevec.adapt import summaries
from timevec.analyze import analysis as an
from timevec.analyze import misalignment, similarity
from timevec.periods import Period, period_range

PERIODS = ["2014", "2015", "2016"]
# rows = train period, cols = test period
PPL = np.array([[10.0, 12.0, 14.0], [11.0, 10.0, 12.0], [13.0, 11.0, 10.0]])
F1 = np.array([[0.8, 0.6, 0.5], [0.7, 0.8, 0.6], [0.4, 0.85, 0.9]])


def _cells(task: str, metric: str, higher: bool, mat: np.ndarray, periods: list[str],
           granularity: str = "year", base: list[float] | None = None) -> pd.DataFrame:
    rows = []
    for i, a in enumerate(periods):
        for j, b in enumerate(periods):
            rows.append(dict(task=task, granularity=granularity, vector=f"{task}/{a}",
                             train_period=a, test_period=b, metric=metric, value=float(mat[i, j]),
                             higher_is_better=higher, n_examples=10, n_tokens=100, seconds=0.1))
    for j, b in enumerate(periods):
        rows.append(dict(task=task, granularity=granularity, vector="base", train_period=None,
                         test_period=b, metric=metric,
                         value=float(base[j]) if base else 99.0,
                         higher_is_better=higher, n_examples=10, n_tokens=100, seconds=0.1))
    return pd.DataFrame(rows)


@pytest.fixture
def cells() -> pd.DataFrame:
    return pd.concat([_cells("lm", "perplexity", False, PPL, PERIODS),
                      _cells("classification", "macro_f1", True, F1, PERIODS)],
                     ignore_index=True)


def _at(df: pd.DataFrame, task: str, a: str, b: str) -> pd.Series:
    sel = df[(df.task == task) & (df.train_period == a) & (df.test_period == b)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_relative_change_both_directions(cells: pd.DataFrame) -> None:
    rel = misalignment.relative_change(cells)
    assert len(rel) == 18 and (rel["vector"] != "base").all()
    # perplexity: column 2014 mean = 34/3; (10 - 34/3) / (34/3) = -4/34
    r = _at(rel, "lm", "2014", "2014")
    assert r.column_mean == pytest.approx(34 / 3)
    assert r["pct_change"] == pytest.approx(-4 / 34 * 100)
    assert r.degradation_pct == pytest.approx(-4 / 34 * 100)  # lower ppl = better = negative
    r = _at(rel, "lm", "2014", "2016")  # 14 vs mean 12
    assert r["pct_change"] == pytest.approx(2 / 12 * 100) and r.degradation_pct > 0
    assert r.gap == 2
    assert _at(rel, "lm", "2016", "2014").gap == -2
    # F1: column 2014 mean = 1.9/3; (0.8 - 1.9/3) / (1.9/3) = 0.5/1.9; degradation negated
    r = _at(rel, "classification", "2014", "2014")
    assert r["pct_change"] == pytest.approx(0.5 / 1.9 * 100)
    assert r.degradation_pct == pytest.approx(-0.5 / 1.9 * 100)
    r = _at(rel, "classification", "2016", "2014")  # 0.4 vs 1.9/3: worse -> positive degradation
    assert r.degradation_pct == pytest.approx(-(0.4 - 1.9 / 3) / (1.9 / 3) * 100)
    assert r.degradation_pct > 0
    # each column's % changes average to zero by construction
    sums = rel.groupby(["task", "test_period"])["pct_change"].sum()
    assert np.allclose(sums, 0.0, atol=1e-9)


def test_relative_change_month_gap() -> None:
    months = ["2014-11", "2015-02"]
    rel = misalignment.relative_change(_cells("lm", "perplexity", False, np.array([[1.0, 2.0], [3.0, 4.0]]),
                                    months, granularity="month"))
    assert _at(rel, "lm", "2014-11", "2015-02").gap == 3
    assert _at(rel, "lm", "2015-02", "2014-11").gap == -3


def test_diagonal_summary(cells: pd.DataFrame) -> None:
    diag = misalignment.diagonal_summary(misalignment.relative_change(cells)).set_index("task")
    assert diag.loc["lm", "n_diagonal_best"] == 3 and diag.loc["lm", "diagonal_share"] == 1.0
    # F1 column 2015: vector 2016 (0.85) beats the own 0.8
    assert diag.loc["classification", "n_diagonal_best"] == 2
    assert diag.loc["classification", "diagonal_share"] == pytest.approx(2 / 3)
    assert diag.loc["classification", "best_not_own"] == "2015"
    assert diag.loc["lm", "mean_diagonal_degradation_pct"] < 0


def _synthetic_rel(periods: list[str], granularity: str, deg_fn, seed: int = 0,
                   noise: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for a in periods:
        for b in periods:
            gap = Period.parse(a).distance(b)
            rows.append(dict(task="lm", granularity=granularity, metric="perplexity",
                             train_period=a, test_period=b, gap=float(gap),
                             degradation_pct=deg_fn(gap) + noise * rng.standard_normal(),
                             higher_is_better=False))
    return pd.DataFrame(rows)


YEARS = [str(y) for y in range(2010, 2020)]
MONTHS = [f"{y}-{m:02d}" for y in range(2014, 2017) for m in range(1, 13)]


def test_decay_fit_recovers_slope() -> None:
    exact = _synthetic_rel(YEARS, "year", lambda g: -5.0 + 2.5 * abs(g))
    dec = misalignment.decay_fit(exact)
    fit = dec.fit.iloc[0]
    assert fit.slope == pytest.approx(2.5) and fit.intercept == pytest.approx(-5.0)
    assert fit.r2 == pytest.approx(1.0) and fit.n == 100 and fit.n_gaps == 10
    by = dec.by_gap.set_index("abs_gap")
    assert by.loc[3, "mean_degradation_pct"] == pytest.approx(2.5) and by.loc[3, "n"] == 14

    noisy = _synthetic_rel(YEARS, "year", lambda g: 1.0 + 2.5 * abs(g), seed=1, noise=1.0)
    fit = misalignment.decay_fit(noisy).fit.iloc[0]
    assert fit.slope == pytest.approx(2.5, abs=0.15)
    assert fit.r2 > 0.9 and fit.p < 1e-10 and fit.reason == ""


def test_decay_fit_insufficient() -> None:
    one = _synthetic_rel(["2014"], "year", lambda g: 0.0)
    fit = misalignment.decay_fit(one).fit.iloc[0]
    assert math.isnan(fit.slope) and "at least 3" in fit.reason


def test_stripe_test_detects_stripes() -> None:
    striped = _synthetic_rel(MONTHS, "month",
                             lambda g: 0.5 * abs(g) - (5.0 if g != 0 and abs(g) % 12 == 0 else 0),
                             seed=2, noise=0.5)
    row = misalignment.stripe_test(striped).iloc[0]
    assert row.stripe_gaps == "12,24" and row.reason == ""
    assert row.difference < -3.0 and row.p < 1e-6
    assert row.n_stripe == 2 * (36 - 12) + 2 * (36 - 24)


def test_stripe_test_no_stripes() -> None:
    """No seasonal effect: the row is Welch's t-test (scipy) on the stripe cells and their neighbours,
    recomputed here from the gaps; and across 30 noise draws none reports stripes (a seed-independent
    property: a test at 5 % that fired on most draws would fail here)."""
    flat = _synthetic_rel(MONTHS, "month", lambda g: 0.5 * abs(g), seed=3, noise=0.5)
    row = misalignment.stripe_test(flat).iloc[0]
    gap = flat.gap.abs()
    stripe = flat.degradation_pct[gap.isin([12, 24])]
    near = flat.degradation_pct[(gap % 12 != 0) & (((gap - 12).abs() <= 3) | ((gap - 24).abs() <= 3))]
    ref = stats.ttest_ind(stripe, near, equal_var=False)
    assert row.stripe_gaps == "12,24" and (row.n_stripe, row.n_other) == (len(stripe), len(near))
    assert row.difference == pytest.approx(stripe.mean() - near.mean()) and row.p == pytest.approx(ref.pvalue)
    draws = [misalignment.stripe_test(_synthetic_rel(MONTHS, "month", lambda g: 0.5 * abs(g), seed=s, noise=0.5)).iloc[0]
             for s in range(30)]
    assert sum(r.difference < 0 and r.p < 0.05 for r in draws) <= 3  # ≤ 10 % false seasonal findings


def test_stripe_test_honest_when_insufficient() -> None:
    short = _synthetic_rel(MONTHS[:10], "month", lambda g: abs(g))
    row = misalignment.stripe_test(short).iloc[0]
    assert math.isnan(row.p) and "multiple of 12" in row.reason
    yearly = _synthetic_rel(YEARS, "year", lambda g: abs(g))
    row = misalignment.stripe_test(yearly).iloc[0]
    assert math.isnan(row.difference) and row.reason == "no monthly cells"


def _vectors(n: int, d: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d) * 3  # a shared component, like the "task" part of τ
    return common + rng.standard_normal((n, d))


def test_similarity_table_matches_numpy() -> None:
    x = _vectors(5)
    keys = [("lm", p) for p in ["2012", "2013", "2014", "2015", "2016"]]
    sim = similarity.similarity_table(x @ x.T, keys)
    assert len(sim) == 25
    norm = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = norm @ norm.T
    got = sim.pivot(index="period_a", columns="period_b", values="cosine").to_numpy()
    np.testing.assert_allclose(got, ref, atol=1e-12)
    xc = x - x.mean(axis=0)
    nc = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    got = similarity.similarity_table(x @ x.T, keys, centre=True).pivot(
        index="period_a", columns="period_b", values="cosine").to_numpy()
    np.testing.assert_allclose(got, nc @ nc.T, atol=1e-12)
    # the shared component inflates raw cosines; centring removes it
    assert ref[0, 1] > 0.5 > abs((nc @ nc.T)[0, 1])
    with pytest.raises(ValueError):
        similarity.similarity_table(x @ x.T, keys[:4])


def test_similarity_vs_degradation_matches_scipy() -> None:
    periods = ["2012", "2013", "2014", "2015"]
    x = _vectors(4, seed=5)
    keys = [("lm", p) for p in periods]
    sim = similarity.similarity_table(x @ x.T, keys)
    rng = np.random.default_rng(7)
    mat = 20 + rng.random((4, 5)) * 5
    cells = _cells("lm", "perplexity", False, np.pad(mat, ((0, 1), (0, 0)))[:5, :5],
                   periods + ["2016"])
    cells = cells[cells.train_period != "2016"]  # 2016 is a test-only period: no vector
    rel = misalignment.relative_change(cells)
    res = similarity.similarity_vs_degradation(sim, rel)
    norm = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = norm @ norm.T
    xs, ys = [], []
    for i, a in enumerate(periods):
        for j, b in enumerate(periods):
            if a != b:
                xs.append(cos[i, j])
                ys.append(float(_at(rel, "lm", a, b).degradation_pct))
    assert res["n"] == 12 == len(res["pairs"])
    ref = stats.pearsonr(xs, ys)
    assert res["pearson_r"] == pytest.approx(ref.statistic)
    assert res["pearson_p"] == pytest.approx(ref.pvalue)
    assert res["spearman_rho"] == pytest.approx(stats.spearmanr(xs, ys).statistic)
    assert set(res["pairs"].columns) >= {"cosine", "degradation_pct", "gap"}
    assert len(res["by_group"]) == 1


def test_umap_embedding_shapes() -> None:
    x = _vectors(8, seed=3)
    keys = [("lm", str(2010 + i)) for i in range(8)]
    emb = similarity.umap_embedding(x @ x.T, keys)
    assert len(emb) == 8 and set(emb["method"]) == {"umap"}
    assert np.isfinite(emb[["x", "y"]].to_numpy()).all()
    assert list(emb["period"]) == [k[1] for k in keys]
    small = similarity.umap_embedding((x @ x.T)[:3, :3], keys[:3])
    assert len(small) == 3 and set(small["method"]) == {"mds"}
    assert np.isfinite(small[["x", "y"]].to_numpy()).all()


def _interp(higher: bool, metric: str) -> pd.DataFrame:
    rows = []
    alphas = np.round(np.linspace(0, 1, 11), 1)
    for test, best in (("2013", 0.3), ("2014", 0.7)):
        for a in alphas:
            dist = (a - best) ** 2
            value = 0.5 - dist if higher else 10 + 10 * dist
            rows.append(dict(task="lm", granularity="year", first="2012", last="2015", alpha=a,
                             test_period=test, metric=metric, value=value,
                             higher_is_better=higher))
    for test in ("2012", "2015"):  # the ends are not "between"
        rows.append(dict(task="lm", granularity="year", first="2012", last="2015", alpha=0.0,
                         test_period=test, metric=metric, value=1.0, higher_is_better=higher))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("higher,metric", [(False, "perplexity"), (True, "macro_f1")])
def test_interpolation_summary(higher: bool, metric: str) -> None:
    periods = ["2012", "2013", "2014", "2015"]
    own = 9.0 if not higher else 0.6
    mat = np.full((4, 4), own)
    cells = _cells("lm", metric, higher, mat, periods)
    s = summaries.interpolation_best(_interp(higher, metric), cells)
    assert list(s["test_period"]) == ["2013", "2014"]
    assert list(s["best_alpha"]) == [0.3, 0.7]
    r = s.iloc[0]
    if higher:
        assert r.best_value == pytest.approx(0.5)
        assert r.gain_vs_first == pytest.approx(0.09) and r.gain_vs_last == pytest.approx(0.49)
        assert r.gain_vs_in_period == pytest.approx(-0.1)
    else:
        assert r.best_value == pytest.approx(10.0)
        assert r.gain_vs_first == pytest.approx(0.9) and r.gain_vs_last == pytest.approx(4.9)
        assert r.gain_vs_first_pct == pytest.approx(0.9 / 10.9 * 100)
        assert r.gain_vs_in_period == pytest.approx(-1.0)
    assert r.beats_both_ends and r.in_period_value == own and r.base_value == 99.0


def test_analogy_summary_and_headline(cells: pd.DataFrame) -> None:
    methods = {"base": 0.3, "task_j": 0.5, "task_j_scaled": 0.55, "latest": 0.52,
               "in_period": 0.7, "analogy": 0.6}
    ana = pd.DataFrame([dict(task="classification", source_period="2014", target_period="2016",
                             method=m, alpha1=1.2 if m == "analogy" else None,
                             alpha2=0.2, alpha3=0.1, split="test", metric="macro_f1", value=v)
                        for m, v in methods.items()])
    s = summaries.analogy_summary(ana).iloc[0]
    assert s.gain_vs_task_j == pytest.approx(0.1)
    assert s.gain_vs_task_j_scaled_pct == pytest.approx(0.05 / 0.55 * 100)
    assert s.gain_vs_in_period < 0 and s.alpha1 == 1.2
    ppl = ana.assign(metric="perplexity", value=[20, 15, 14, 14.5, 12, 13])
    assert summaries.analogy_summary(ppl).iloc[0].gain_vs_task_j == pytest.approx(2.0)

    x = _vectors(6, seed=1)
    keys = [("lm", p) for p in PERIODS] + [("classification", p) for p in PERIODS]
    res = an.analyze(cells, x @ x.T, keys, _interp(False, "perplexity"), ana)
    h = res.headline
    assert h["lm/year diagonal share"] == 1.0
    assert h["lm/year own period best"] == "3/3 test periods"
    assert "lm/year decay slope % per year" in h
    assert "cosine vs degradation Pearson r" in h
    assert h["lm/year 2012→2015 best α by period"] == "2013: 0.3, 2014: 0.7"
    assert any(k.startswith("classification analogy gain vs task_j_scaled") for k in h)
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in h.values())


# ---- the stripes at each granularity's own cycle (issue 39) -----------------------------------------------------

#: 2015-W01..2016-W52: 105 ISO weeks (2015 has 53), gaps up to 104, so one cycle of 52 with neighbours both sides
WEEKS = [str(p) for p in period_range("2015-W01", "2016-W52")]


def test_stripe_test_finds_a_planted_52_week_stripe() -> None:
    striped = _synthetic_rel(WEEKS, "week", lambda g: 0.05 * abs(g) - (4.0 if g != 0 and abs(g) % 52 == 0 else 0),
                             seed=4, noise=0.5)
    row = misalignment.stripe_test(striped).iloc[0]
    assert (row.granularity, row.stripe_gaps, row.window, row.reason) == ("week", "52", 3, "")
    assert row.n_stripe == 2 * (105 - 52) and row.difference < -3.0 and row.p < 1e-6
    gap = striped.gap.abs()
    near = striped.degradation_pct[(gap % 52 != 0) & ((gap - 52).abs() <= 3)]
    assert row.n_other == len(near) and row.mean_other == pytest.approx(near.mean())
    found = findings_table_rows(striped)
    assert (found.finding, found.panel, found.holds) == ("seasonal stripes", "lm/week", "yes")


def test_stripe_test_finds_no_52_week_stripe_where_there_is_none() -> None:
    draws = [misalignment.stripe_test(_synthetic_rel(WEEKS, "week", lambda g: 0.05 * abs(g), seed=s, noise=0.5)).iloc[0]
             for s in range(10)]
    assert all(r.stripe_gaps == "52" and r.reason == "" for r in draws)
    assert sum(r.difference < 0 and r.p < 0.05 for r in draws) <= 2
    assert findings_table_rows(_synthetic_rel(WEEKS, "week", lambda g: 0.05 * abs(g), seed=0, noise=0.5)).holds != "yes"


def test_stripes_of_quarters_and_weekdays_and_too_short_data() -> None:
    quarters = [str(p) for p in period_range("2010-Q1", "2015-Q4")]
    row = misalignment.stripe_test(_synthetic_rel(quarters, "quarter", lambda g: abs(g) - (3.0 if g and g % 4 == 0 else 0),
                                                  seed=5, noise=0.3)).iloc[0]
    assert (row.stripe_gaps, row.window) == ("4,8,12,16,20", 1) and row.difference < -2.0 and row.p < 1e-6
    days = [str(p) for p in period_range("2016-02-01", "2016-03-31")]  # the same weekday 7, 14, … days apart
    row = misalignment.stripe_test(_synthetic_rel(days, "day", lambda g: 0.1 * abs(g) - (2.0 if g and g % 7 == 0 else 0),
                                                  seed=6, noise=0.3)).iloc[0]
    assert row.granularity == "day" and row.stripe_gaps.startswith("7,14,21") and row.difference < -1.5 and row.p < 1e-6
    short = misalignment.stripe_test(_synthetic_rel(WEEKS[:50], "week", lambda g: abs(g))).iloc[0]  # less than one cycle
    assert math.isnan(short.p) and short.reason == "no |gap| that is a multiple of 52 with neighbours on both sides (max |gap| 49)"
    yearly = misalignment.stripe_test(_synthetic_rel(YEARS, "year", lambda g: abs(g))).iloc[0]  # a year has no cycle
    assert (yearly.granularity, yearly.reason) == ("month", "no monthly cells")


def findings_table_rows(rel: pd.DataFrame) -> Any:
    """The findings row the stripes of ``rel`` give (the verdict a reader sees)."""
    from timevec.analyze.findings import _stripe_rows

    (row,) = _stripe_rows(misalignment.stripe_test(rel))
    return pd.Series(row)
