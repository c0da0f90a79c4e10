"""The α-selection protocols: each chooses from exactly the labels it may see (poisoning the rest
changes nothing), and the tables carry every baseline and control."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from timevec import results
from timevec.adapt import selection

YEARS = ["2012", "2013", "2014", "2015", "2016"]
GRID = [0.0, 0.25, 0.5, 0.75, 1.0]
# the α each middle year's VALIDATION prefers, and (differently) its TEST split
VAL_BEST = {"2012": 0.0, "2013": 0.25, "2014": 0.75, "2015": 0.75, "2016": 1.0}
TEST_BEST = {"2012": 0.0, "2013": 0.5, "2014": 0.5, "2015": 1.0, "2016": 1.0}


def _interp(test_noise: float = 0.0, val_override: dict[str, float] | None = None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for year in YEARS:
        level = 20.0 + 5 * YEARS.index(year)  # perplexity levels differ by period
        for alpha in GRID:
            test = level + 8 * (alpha - TEST_BEST[year]) ** 2 + test_noise * rng.standard_normal()
            rows.append(dict(task="lm", granularity="year", first="2012", last="2016", alpha=alpha, test_period=year,
                             split="test", metric="perplexity", value=test, higher_is_better=False))
            if "2012" < year < "2016":
                val = level + 8 * (alpha - VAL_BEST[year]) ** 2
                if val_override and year in val_override:
                    val = val_override[year] * (1 + alpha)  # garbage that prefers α = 0
                rows.append(dict(task="lm", granularity="year", first="2012", last="2016", alpha=alpha,
                                 test_period=year, split="validation", metric="perplexity", value=val,
                                 higher_is_better=False))
    return results.interpolation_frame(rows)


def _cells() -> pd.DataFrame:
    rows = []
    for test in YEARS:
        rows.append(dict(task="lm", granularity="year", vector="base", train_period=None, test_period=test, value=99.0))
        for train in YEARS:
            rows.append(dict(task="lm", granularity="year", vector=f"lm/{train}", train_period=train, test_period=test,
                             value=15.0 + abs(int(train) - int(test))))
    return pd.DataFrame(rows)


def _soups() -> pd.DataFrame:
    return results.soup_frame(
        dict(task="lm", granularity="year", period=y, method="uniform_soup", members=",".join(YEARS), n_members=5,
             split="test", metric="perplexity", value=30.0, higher_is_better=False, gain=math.nan) for y in YEARS)


def _chosen(table: pd.DataFrame) -> dict[tuple[str, str], float]:
    protocols = table[table["method"].isin(["oracle", "time_proportional", "leave_one_out", "midpoint"])]
    return {(r.test_period, r.method): r.alpha for r in protocols.itertuples()}


def test_each_protocol_chooses_alpha_by_its_rule():
    table = selection.interpolation_protocols(_interp(), _cells(), _soups())
    assert list(table.columns) == results.INTERPOLATION_PROTOCOL_COLUMNS
    assert sorted(table["test_period"].unique()) == ["2013", "2014", "2015"]  # middle periods only
    chosen = _chosen(table)
    for year in ("2013", "2014", "2015"):
        assert chosen[(year, "oracle")] == VAL_BEST[year]  # the target's validation labels
        assert chosen[(year, "midpoint")] == 0.5
    assert [chosen[(y, "time_proportional")] for y in ("2013", "2014", "2015")] == [0.25, 0.5, 0.75]
    # leave-one-out for 2013 sees 2014 and 2015, both of which prefer 0.75 on validation
    assert chosen[("2013", "leave_one_out")] == 0.75
    # values are TEST values at the chosen α
    row = table[(table["test_period"] == "2014") & (table["method"] == "oracle")].iloc[0]
    assert row["value"] == pytest.approx(30.0 + 8 * (0.75 - 0.5) ** 2)
    # baselines from the cells and soups tables; gains against the latest vector (α = 1)
    base = table[table["test_period"] == "2014"].set_index("method")
    assert base.loc["in_period", "value"] == 15.0 and base.loc["previous", "value"] == 16.0
    assert base.loc["base", "value"] == 99.0 and base.loc["uniform_soup", "value"] == 30.0
    assert base.loc["latest", "alpha"] == 1.0 and base.loc["latest", "gain_vs_latest"] == 0.0
    assert base.loc["oracle", "gain_vs_latest"] == pytest.approx(base.loc["latest", "value"] - base.loc["oracle", "value"])
    assert base.loc["midpoint", "gain_vs_midpoint"] == 0.0


def test_no_protocol_reads_a_test_label():
    clean = _chosen(selection.interpolation_protocols(_interp(), _cells(), _soups()))
    poisoned = _chosen(selection.interpolation_protocols(_interp(test_noise=50.0, seed=3), _cells(), _soups()))
    assert poisoned == clean  # test values only ever REPORT a choice


def test_past_only_protocols_never_read_the_targets_validation_labels():
    clean = _chosen(selection.interpolation_protocols(_interp(), _cells(), _soups()))
    poisoned = _chosen(selection.interpolation_protocols(_interp(val_override={"2014": 1e6}), _cells(), _soups()))
    assert poisoned[("2014", "oracle")] == 0.0 != clean[("2014", "oracle")]  # the oracle reads them (by design)
    for method in ("time_proportional", "leave_one_out", "midpoint"):
        assert poisoned[("2014", method)] == clean[("2014", method)], method
    # ... but leave-one-out of the OTHER periods does learn from 2014's validation split
    assert poisoned[("2013", "leave_one_out")] != clean[("2013", "leave_one_out")]


def test_choosers():
    assert selection.best_alpha({0.0: 2.0, 0.5: 1.0, 1.0: 1.0}, higher=False) == 0.5  # ties: the smaller α
    assert selection.best_alpha({0.0: 2.0, 0.5: math.nan}, higher=True) == 0.0
    assert math.isnan(selection.best_alpha({0.0: math.nan}, higher=True))
    assert selection.time_proportional_alpha("2014", "2012", "2017", GRID) == 0.5  # 0.4 → nearest 0.5
    assert selection.time_proportional_alpha("2016-07", "2016-01", "2016-12", [0.0, 0.5, 1.0]) == 0.5
    assert math.isnan(selection.leave_one_out_alpha({}, higher=False))
    # relative scoring: a high-perplexity period does not outvote a low one
    others = {"a": {0.0: 10.0, 1.0: 11.0}, "b": {0.0: 1010.0, 1.0: 1000.0}}  # raw means would pick α = 1
    assert selection.leave_one_out_alpha(others, higher=False) == 0.0
    assert math.isnan(selection.midpoint_alpha([0.0, 0.3, 1.0]))


def _grid(k_validation_poison: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """j = 2013; on validation k = 2014 prefers α₁ 1.0 (analogy: α₂ 0.4), later k prefer α₁ 2.0."""
    rows, best = [], []
    for k in ("2014", "2015", "2016"):
        prefer = 1.0 if k == "2014" else 2.0
        for method, points in (("analogy", [(1.0, 0.4, 0.1), (2.0, 0.1, 0.1)]), ("task_j_scaled", [(1.0, 0, 0), (2.0, 0, 0)])):
            for a1, a2, a3 in points:
                val = 0.5 - 0.1 * abs(a1 - prefer)
                if k == k_validation_poison:
                    val = -val  # the opposite preference
                test = 0.4 + 0.05 * a1 + (0.02 if method == "analogy" else 0.0) + 0.01 * int(k[-1])
                for split, value in (("validation", val), ("test", test)):
                    rows.append(dict(task="classification", source_period="2013", target_period=k, method=method,
                                     alpha1=a1, alpha2=float(a2), alpha3=float(a3), split=split, metric="macro_f1",
                                     value=value))
        for method, value in (("base", 0.1), ("task_j", 0.45), ("latest", 0.47), ("in_period", 0.6)):
            best.append(dict(task="classification", source_period="2013", target_period=k, method=method, split="test",
                             metric="macro_f1", value=value))
    return results.analogy_frame(rows), pd.DataFrame(best)


def test_analogy_past_only_applies_the_previous_pairs_choice():
    grid, best = _grid()
    table = selection.analogy_protocols(grid, best)
    assert list(table.columns) == results.ANALOGY_PROTOCOL_COLUMNS
    rows = table.set_index(["target_period", "method", "selection"])
    # oracle: k's own validation; past-only: the previous k's validation, applied to k's test
    assert rows.loc[("2015", "analogy", "oracle"), "alpha1"] == 2.0
    assert rows.loc[("2015", "analogy", "past_only"), "alpha1"] == 1.0
    assert rows.loc[("2015", "analogy", "past_only"), "chosen_on"] == "2014"
    assert rows.loc[("2015", "analogy", "past_only"), "alpha2"] == 0.4
    assert rows.loc[("2016", "analogy", "past_only"), "alpha1"] == 2.0  # chosen on 2015
    assert rows.loc[("2015", "analogy", "past_only"), "value"] == pytest.approx(0.4 + 0.05 + 0.02 + 0.05)
    first = rows.loc[("2014", "analogy", "past_only")]
    assert math.isnan(first["value"]) and "no target before 2014" in first["note"]
    # the scaled baseline is chosen by the same protocol, and the gains use it
    scaled = rows.loc[("2015", "task_j_scaled", "past_only"), "value"]
    assert rows.loc[("2015", "analogy", "past_only"), "gain_vs_task_j_scaled"] == pytest.approx(
        rows.loc[("2015", "analogy", "past_only"), "value"] - scaled)
    assert rows.loc[("2015", "analogy", "oracle"), "gain_vs_task_j"] == pytest.approx(
        rows.loc[("2015", "analogy", "oracle"), "value"] - 0.45)
    assert rows.loc[("2015", "latest", "fixed"), "value"] == 0.47
    assert rows.loc[("2015", "in_period", "oracle"), "value"] == 0.6


def test_analogy_past_only_never_reads_ks_validation_labels():
    clean = selection.analogy_protocols(*_grid()).set_index(["target_period", "method", "selection"])
    poisoned = selection.analogy_protocols(*_grid(k_validation_poison="2016")).set_index(
        ["target_period", "method", "selection"])
    for method in ("analogy", "task_j_scaled"):
        assert poisoned.loc[("2016", method, "past_only"), "alpha1"] == clean.loc[("2016", method, "past_only"), "alpha1"]
        assert poisoned.loc[("2016", method, "past_only"), "value"] == clean.loc[("2016", method, "past_only"), "value"]
        assert poisoned.loc[("2016", method, "oracle"), "alpha1"] != clean.loc[("2016", method, "oracle"), "alpha1"]


def test_old_tables_without_split_or_method_columns():
    old = _interp().query("split == 'test'").drop(columns="split")
    table = selection.interpolation_protocols(old, _cells(), None)
    oracle = table[table["method"] == "oracle"]
    assert oracle["value"].isna().all() and (oracle["note"] == "no validation rows").all()
    assert table.loc[table["method"] == "time_proportional", "value"].notna().all()
    grid, best = _grid()
    table = selection.analogy_protocols(grid.drop(columns="method").query("alpha2 != 0"), best)
    assert set(table.loc[table["method"] == "task_j_scaled", "note"].str[:2]) == {"no"}
