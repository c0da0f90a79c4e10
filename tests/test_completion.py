"""Completion of the cells matrix: the design's guarantees, recovery of synthetic matrices, interval coverage.

The synthetic matrices have the structure the model assumes — test-period effects, vector effects,
a decay in |gap|, a rank-2 rest — plus Gaussian noise of known σ, so that the error of completed
cells has a floor (σ) and a reference (the naive row + column mean); coverage is counted over many
seeded matrices against the values the missing cells would have had if evaluated (noise included).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from timevec import results
from timevec.analyze.completion import complete_cells, complete_matrix
from timevec.evaluate.design import design_cells
from timevec.periods import Period, period_range

YEARS = [str(p) for p in period_range("1950", "2009")]


def synthetic(rng: np.random.Generator, n: int, sigma: float, rest: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(signal, signal + noise): a_j + b_i − 0.15·|gap| + 0.03·gap + a rank-2 rest of entries ~ N(0, rest)."""
    gap = np.arange(n)[None, :] - np.arange(n)[:, None]
    signal = rng.normal(0, 1, n)[None, :] + rng.normal(0, 0.5, n)[:, None] - 0.15 * np.abs(gap) + 0.03 * gap
    signal = signal + rng.normal(0, rest, (n, 2)) @ rng.normal(0, rest, (n, 2)).T
    return signal, signal + rng.normal(0, sigma, (n, n))


def observe(full: np.ndarray, periods: list[str], cells: set[tuple[str, str]]) -> np.ndarray:
    mask = np.array([[(a, b) in cells for b in periods] for a in periods])
    return np.where(mask, full, np.nan)


def naive(observed: np.ndarray) -> np.ndarray:
    """The baseline: row mean + column mean − overall mean of the evaluated cells."""
    return np.nanmean(observed, 1, keepdims=True) + np.nanmean(observed, 0, keepdims=True) - np.nanmean(observed)


# ----------------------------------------------------------------------------- the design


def test_design_holds_the_band_the_fraction_and_two_cells_per_row_and_column() -> None:
    design = design_cells(YEARS, YEARS, band=1, fraction=0.2, seed=7)
    gaps = {(a, b): Period.parse(a).distance(b) for a in YEARS for b in YEARS}
    assert {c for c, g in gaps.items() if abs(g) <= 1} <= design
    off = [c for c, g in gaps.items() if abs(g) > 1]
    share = sum(c in design for c in off) / len(off)
    # band 1 gives every row and column two cells already: the off-band cells are the hashed draw alone
    assert share == pytest.approx(0.2, abs=3 * np.sqrt(0.2 * 0.8 / len(off)))
    assert design == design_cells(YEARS, YEARS, band=1, fraction=0.2, seed=7)
    assert design != design_cells(YEARS, YEARS, band=1, fraction=0.2, seed=8)
    sparse = design_cells(YEARS[:10], YEARS[:10], band=0, fraction=0.02, seed=1)  # mostly top-ups
    assert all(sum(c[0] == p for c in sparse) >= 2 and sum(c[1] == p for c in sparse) >= 2 for p in YEARS[:10])


def test_design_of_three_years_without_draws_is_the_tridiagonal() -> None:
    p = ["2014", "2015", "2016"]
    assert design_cells(p, p, band=0, fraction=0.0, seed=0) == {
        ("2014", "2014"), ("2014", "2015"), ("2015", "2014"), ("2015", "2015"), ("2015", "2016"), ("2016", "2015"),
        ("2016", "2016")}


@pytest.mark.parametrize("periods", [YEARS[:25], [str(p) for p in period_range("2015-01", "2016-12")]])
@pytest.mark.parametrize(("band", "fraction"), [(0, 0.05), (0, 0.3), (1, 0.1)])
def test_adding_a_later_period_keeps_the_earlier_design(periods: list[str], band: int, fraction: float) -> None:
    for seed in range(3):
        designs = [design_cells(periods[:n], periods[:n], band, fraction, seed) for n in range(2, len(periods) + 1)]
        for smaller, larger, n in zip(designs, designs[1:], range(2, len(periods))):
            assert smaller <= larger
            new = periods[n]  # the cells added are all in the new period's row or column
            assert all(new in cell for cell in larger - smaller)


# ----------------------------------------------------------------------------- completion


def test_completion_recovers_a_synthetic_matrix_from_30_percent_of_its_cells() -> None:
    sigma, periods = 0.1, YEARS[:20]
    rmse, baseline, share = [], [], []
    for seed in range(4):
        signal, full = synthetic(np.random.default_rng(seed), 20, sigma)
        observed = observe(full, periods, design_cells(periods, periods, band=0, fraction=0.25, seed=seed))
        done = complete_matrix(observed, periods, periods, seed=seed)
        missing = ~done.evaluated
        share.append(done.evaluated.mean())
        rmse.append(np.sqrt(np.mean((done.estimate - full)[missing] ** 2)))
        baseline.append(np.sqrt(np.mean((naive(observed) - full)[missing] ** 2)))
        assert np.array_equal(done.estimate[~missing], full[~missing])
        assert np.all(np.isnan(done.low[~missing])) and np.all(done.low[missing] < done.estimate[missing])
    assert 0.27 < np.mean(share) < 0.33  # measured 0.30
    # against the values with their noise (σ of it), as a bench compares: measured 1.35–1.44 σ, mean 1.40 σ
    # (against the noiseless signal ≈ 1.0 σ); the naive baseline ≈ 8.5 σ (it knows no gap)
    assert np.mean(rmse) < 1.5 * sigma and max(rmse) < 1.6 * sigma
    assert np.mean(baseline) > 5 * np.mean(rmse)


def test_intervals_cover_the_missing_cells_at_their_level() -> None:
    periods, inside = YEARS[:12], []
    for seed in range(200):
        _, full = synthetic(np.random.default_rng(1000 + seed), 12, sigma=0.1)
        observed = observe(full, periods, design_cells(periods, periods, band=0, fraction=0.2, seed=seed))
        done = complete_matrix(observed, periods, periods, seed=seed)
        missing = ~done.evaluated
        inside.append(((done.low <= full) & (full <= done.high))[missing])
    coverage = np.concatenate(inside).mean()
    assert 0.90 <= coverage <= 0.99  # measured 0.96 with 10 folds


def test_complete_matrix_refuses_what_it_cannot_fit() -> None:
    periods = YEARS[:4]
    values = np.full((4, 4), np.nan)
    values[0, :3] = 1.0
    with pytest.raises(ValueError, match="too few"):
        complete_matrix(values, periods, periods)
    values[1:, 0] = -1.0
    with pytest.raises(ValueError, match="positive"):
        complete_matrix(values, periods, periods, log_scale=True)


# ----------------------------------------------------------------------------- the cells frame


def _cells(task: str, metric: str, higher: bool, matrix: np.ndarray, periods: list[str],
           cells: set[tuple[str, str]]) -> pd.DataFrame:
    rows = [dict(task=task, granularity="year", vector=f"{task}/{a}", train_period=a, test_period=b, metric=metric,
                 value=float(matrix[i, j]), low=float(matrix[i, j]) * 0.99, high=float(matrix[i, j]) * 1.01,
                 higher_is_better=higher, n_examples=32, n_tokens=2000, seconds=0.1)
            for i, a in enumerate(periods) for j, b in enumerate(periods) if (a, b) in cells]
    rows += [dict(task=task, granularity="year", vector="base", train_period=None, test_period=b, metric=metric,
                  value=1.0, low=np.nan, high=np.nan, higher_is_better=higher, n_examples=32, n_tokens=2000, seconds=0.1)
             for b in periods]
    return pd.DataFrame(rows)


def test_complete_cells_fills_each_group_and_completes_perplexity_on_the_log_scale() -> None:
    periods = YEARS[:10]
    rng = np.random.default_rng(3)
    gap = np.arange(10)[None, :] - np.arange(10)[:, None]
    # a purely multiplicative perplexity: test difficulty × vector quality × 5 % per year of gap
    ppl = 80.0 * np.exp(rng.normal(0, 0.3, 10)[None, :] + rng.normal(0, 0.1, 10)[:, None] + 0.05 * np.abs(gap))
    f1 = 0.7 + rng.normal(0, 0.05, 10)[None, :] - 0.02 * np.abs(gap)
    design = design_cells(periods, periods, band=0, fraction=0.25, seed=5)
    frame = pd.concat([_cells("lm", "perplexity", False, ppl, periods, design),
                       _cells("classification", "macro_f1", True, f1, periods, design)], ignore_index=True)
    out = complete_cells(frame)
    n_missing = 100 - len(design)
    assert list(out.columns) == results.CELLS_COLUMNS  # the cells table's own columns, estimated last
    assert {c: str(out[c].dtype) for c in ("value", "low", "high", "higher_is_better", "n_examples", "n_tokens",
                                           "seconds", "estimated")} == {
        "value": "float64", "low": "float64", "high": "float64", "higher_is_better": "bool", "n_examples": "int64",
        "n_tokens": "int64", "seconds": "float64", "estimated": "bool"}
    assert all(isinstance(v, str) for c in ("task", "granularity", "vector", "train_period", "test_period", "metric")
               for v in out[c])
    assert len(out) == 2 * n_missing and out["estimated"].all()
    assert (out["n_examples"] == 0).all() and (out["n_tokens"] == 0).all() and (out["seconds"] == 0.0).all()
    assert (out["vector"] == out["task"] + "/" + out["train_period"]).all()
    assert not {(a, b) for a, b in zip(out["train_period"], out["test_period"])} & design
    assert ((out["low"] <= out["value"]) & (out["value"] <= out["high"])).all()
    lm = out[out["task"] == "lm"]
    assert not lm["higher_is_better"].any() and out[out["task"] == "classification"]["higher_is_better"].all()
    truth = ppl[[periods.index(p) for p in lm["train_period"]], [periods.index(p) for p in lm["test_period"]]]
    assert np.max(np.abs(lm["value"].to_numpy() / truth - 1)) < 0.01  # exact on the log scale, up to the ridge
    linear = complete_cells(frame, log_metrics=())
    linear_lm = linear[linear["task"] == "lm"]["value"].to_numpy()
    assert np.max(np.abs(linear_lm / truth - 1)) > 0.03  # the raw scale is not additive: worse

    whole = complete_cells(frame, include_evaluated=True)
    assert len(whole) == 200 and whole["estimated"].sum() == 2 * n_missing
    given = whole[~whole["estimated"]].merge(frame, on=["task", "train_period", "test_period"], suffixes=("", "_in"))
    assert len(given) == 2 * len(design) and np.array_equal(given["value"], given["value_in"])


def test_complete_cells_of_a_full_matrix_adds_nothing() -> None:
    periods = YEARS[:3]
    full = {(a, b) for a in periods for b in periods}
    frame = _cells("lm", "perplexity", False, np.full((3, 3), 50.0), periods, full)
    out = complete_cells(frame)
    assert out.empty and "estimated" in out.columns
    assert len(complete_cells(frame, include_evaluated=True)) == 9
