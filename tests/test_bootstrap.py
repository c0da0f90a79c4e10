"""Bootstrap intervals of the cell metrics: definitions, determinism, evaluate(), old cells tables."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from tests.evaluation_inputs import EVAL, make_corpus
from timevec import results
from timevec.analyze import misalignment
from timevec.config import EvaluationConfig
from timevec.data.examples import prepare_split
from timevec.data.models import is_encoder_decoder
from timevec.distributed.cells import append_cells, read_cells
from timevec.evaluate import bootstrap
from timevec.evaluate.metrics import evaluate, macro_f1, rouge_l, rouge_l_scores
from timevec.store import StoreError, VectorStore

RNG = np.random.default_rng(1234)


def _lm(n: int, rng: np.random.Generator = RNG) -> tuple[np.ndarray, np.ndarray]:
    tokens = rng.integers(20, 60, n)
    return tokens * rng.gamma(4.0, 0.8, n), tokens  # per-block loss sums, token counts


def _labels(n: int, rng: np.random.Generator = RNG) -> tuple[list[str], list[str]]:
    gold = rng.choice(["a", "b", "c", "d"], n, p=[0.5, 0.3, 0.15, 0.05])
    pred = np.where(rng.random(n) < 0.6, gold, rng.choice(["a", "b", "c", "e"], n))
    return gold.tolist(), pred.tolist()


def _width(interval: bootstrap.Interval) -> float:
    return interval.high - interval.low


# ----------------------------------------------------------------------------- the statistics


def test_full_sample_statistic_is_the_metric():
    identity = np.ones((1, 300))  # every example once
    loss, tokens = _lm(300)
    # evaluate(): exp(total loss / total tokens), the sums in torch; equal up to summation order
    expected = math.exp(float(torch.tensor(loss).sum()) / int(tokens.sum()))
    assert bootstrap.perplexity_of(loss, tokens, identity)[0] == pytest.approx(expected, rel=1e-12)
    gold, pred = _labels(300)
    g, p, labels = bootstrap.encode_labels(gold, pred)
    assert labels == ["a", "b", "c", "d", "e"]  # the union over the full sample, sorted
    assert bootstrap.macro_f1_of(g, p, len(labels), identity)[0] == macro_f1(gold, pred)  # exactly
    refs = ["the cat sat on the mat", "hello world", "a b c d", "time vectors"]
    hyps = ["the cat on mat", "world hello", "a c", ""]
    scores = np.asarray(rouge_l_scores(refs, hyps))
    assert rouge_l(refs, hyps) == sum(scores) / len(scores)
    assert bootstrap.mean_of(scores, np.ones((1, 4)))[0] == pytest.approx(rouge_l(refs, hyps), rel=1e-12)


def test_vectorised_macro_f1_equals_a_loop_over_resamples():
    gold, pred = _labels(40)
    gold[7], pred[7] = "rare", "a"  # one example: resamples without it lack the label entirely
    g, p, labels = bootstrap.encode_labels(gold, pred)
    idx = np.concatenate(list(bootstrap.resample_indices(40, 300, seed=3)))
    vectorised = bootstrap.macro_f1_of(g, p, len(labels), bootstrap.counts_of(idx, 40))
    assert any(7 not in row for row in idx) and any(7 in row for row in idx)
    for row, value in zip(idx[:60], vectorised[:60]):
        # the same number as macro_f1 on the resampled lists (a label absent from a resample does not count)
        assert value == macro_f1([gold[i] for i in row], [pred[i] for i in row])


def test_resample_counts_are_the_index_matrix_counted(monkeypatch: pytest.MonkeyPatch):
    idx = np.concatenate(list(bootstrap.resample_indices(30, 600, seed=5)))
    counts = np.concatenate(bootstrap.resample_counts(30, 600, seed=5))
    assert counts.shape == (600, 30) and (counts.sum(axis=1) == 30).all()
    assert np.array_equal(counts[17], np.bincount(idx[17], minlength=30))
    assert bootstrap.resample_counts(30, 600, seed=5) is bootstrap.resample_counts(30, 600, seed=5)  # reused
    loss, tokens = _lm(30)
    for row in idx[:5]:  # the matrix-product statistic is the metric of the resampled examples
        value = bootstrap.perplexity_of(loss, tokens, bootstrap.counts_of(row[None], 30))[0]
        assert value == pytest.approx(math.exp(loss[row].sum() / tokens[row].sum()), rel=1e-12)
    cached = bootstrap.perplexity_interval(loss, tokens, samples=600, seed=5)
    monkeypatch.setattr(bootstrap, "CACHE_BYTES", 0)  # too large to keep: rebuilt, the same numbers
    bootstrap._cache.clear()
    assert bootstrap.perplexity_interval(loss, tokens, samples=600, seed=5) == cached
    assert not bootstrap._cache


def test_interval_contains_the_estimate_and_lies_in_range():
    loss, tokens = _lm(200)
    ppl = bootstrap.perplexity_interval(loss, tokens)
    assert ppl.low < math.exp(loss.sum() / tokens.sum()) < ppl.high
    gold, pred = _labels(200)
    f1 = bootstrap.macro_f1_interval(gold, pred)
    assert 0.0 <= f1.low < macro_f1(gold, pred) < f1.high <= 1.0
    scores = RNG.beta(2, 5, 200)
    mean = bootstrap.mean_interval(scores)
    assert mean.low < scores.mean() < mean.high
    narrow = bootstrap.mean_interval(scores, confidence=0.5)
    assert mean.low < narrow.low < narrow.high < mean.high


@pytest.mark.parametrize("metric", ["perplexity", "macro_f1", "mean"])
def test_width_shrinks_as_one_over_root_n(metric: str):
    def interval(n: int, seed: int) -> bootstrap.Interval:
        rng = np.random.default_rng(seed)
        if metric == "perplexity":
            return bootstrap.perplexity_interval(*_lm(n, rng))
        if metric == "macro_f1":
            return bootstrap.macro_f1_interval(*_labels(n, rng))
        return bootstrap.mean_interval(rng.beta(2, 5, n))

    # mean over a few independent samples, so one unlucky draw does not decide
    ratio = np.mean([_width(interval(100, s)) for s in range(4)]) / np.mean([_width(interval(400, s)) for s in range(4)])
    assert 1.5 < ratio < 2.7  # √4 = 2


def test_resamples_are_deterministic_and_shared_by_every_cell_of_a_split():
    loss, tokens = _lm(50)
    first = bootstrap.perplexity_interval(loss, tokens, seed=7)
    assert bootstrap.perplexity_interval(loss.copy(), tokens.copy(), seed=7) == first  # bit for bit
    assert bootstrap.perplexity_interval(loss, tokens, seed=8) != first
    # the indices depend on (n, B, seed) only, not on the data: two cells of a split are paired
    a = np.concatenate(list(bootstrap.resample_indices(50, 1000, seed=7)))
    assert a.shape == (1000, 50) and a.min() >= 0 and a.max() < 50
    assert np.array_equal(a, np.concatenate(list(bootstrap.resample_indices(50, 1000, seed=7))))
    assert not np.array_equal(a, np.concatenate(list(bootstrap.resample_indices(50, 1000, seed=8))))
    # the first b resamples are the same for every B ≥ b (blocks of BLOCK rows)
    assert np.array_equal(a[:300], np.concatenate(list(bootstrap.resample_indices(50, 300, seed=7))))
    other = loss * 1.1  # "another vector" on the same examples: the same draws, so its bounds move by exactly ×1.1
    first = bootstrap.perplexity_interval(loss, tokens, samples=1001, seed=7)  # 2.5 % of 1000 gaps: an order statistic
    scaled = bootstrap.perplexity_interval(other, tokens, samples=1001, seed=7)
    assert math.log(scaled.low) == pytest.approx(1.1 * math.log(first.low), rel=1e-9)
    assert math.log(scaled.high) == pytest.approx(1.1 * math.log(first.high), rel=1e-9)


@pytest.mark.parametrize("b", [2, 3, 999, 1000, 1001])
def test_quantiles_are_numpys_linear_quantiles(b: int):
    values = RNG.gamma(2.0, size=b)
    for qs in ((0.025, 0.975), (0.25, 0.75), (0.0, 1.0)):
        assert bootstrap._quantiles(values, qs) == pytest.approx(np.quantile(values, qs).tolist(), rel=1e-14)
    assert bootstrap._quantiles(np.array([1.0, 2.0, np.inf, np.inf]), (0.025, 0.975)) == [1.075, math.inf]


def test_off_or_too_few_examples_gives_nan_bounds():
    loss, tokens = _lm(30)
    assert all(math.isnan(b) for b in bootstrap.perplexity_interval(loss, tokens, samples=0))
    assert all(math.isnan(b) for b in bootstrap.macro_f1_interval(["a"], ["a"]))
    assert all(math.isnan(b) for b in bootstrap.mean_interval([]))
    with pytest.raises(ValueError):
        bootstrap.mean_interval([0.1, 0.2], confidence=1.0)
    with pytest.raises(ValueError):
        EvaluationConfig(bootstrap_samples=-1)
    with pytest.raises(ValueError):
        EvaluationConfig(confidence=1.0)


# ----------------------------------------------------------------------------- evaluate()


def test_evaluate_returns_an_interval_around_the_value(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    corpus = make_corpus(12)
    off = EVAL.model_copy(update={"bootstrap_samples": 0})
    for task in ("lm", "classification", "summarization"):
        split = prepare_split(task, corpus, "2015", tokenizer, is_encoder_decoder(model), EVAL)
        result = evaluate(model, split, EVAL, tokenizer=tokenizer)
        assert result["low"] <= result["value"] <= result["high"], (task, result)
        assert evaluate(model, split, EVAL, tokenizer=tokenizer) == result  # deterministic, bounds included
        none = evaluate(model, split, off, tokenizer=tokenizer)
        assert math.isnan(none["low"]) and math.isnan(none["high"]) and none["value"] == result["value"]
    assert list(result) == ["metric", "value", "low", "high", "halfwidth", "higher_is_better", "n_examples", "n_tokens"]


# ----------------------------------------------------------------------------- tables


def _row(vector: str, test: str, value: float, low: float = math.nan, high: float = math.nan) -> dict:
    return dict(task="lm", granularity="year", vector=vector, train_period=None if vector == "base" else vector[3:],
                test_period=test, metric="perplexity", value=value, low=low, high=high, higher_is_better=False,
                n_examples=10, n_tokens=100, seconds=0.5)


def test_old_cells_table_is_read_and_appended_to(new_store: Callable[..., VectorStore]):
    store = new_store()
    old_schema = pa.schema([f for f in results.CELLS_SCHEMA if f.name not in results.CELLS_ADDED_COLUMNS])
    old_rows = results.cells_frame([_row("base", "2014", 30.0), _row("lm/2014", "2014", 20.0)])
    store.write_table(results.CELLS_TABLE, pa.Table.from_pandas(old_rows[old_schema.names], schema=old_schema,
                                                                preserve_index=False))
    read = read_cells(store)
    assert list(read.columns) == results.CELLS_COLUMNS and read[["low", "high", "halfwidth"]].isna().all().all()
    # the appender the cells stage uses: the old rows get NaN bounds, the table the new schema
    append_cells(store, [_row("lm/2015", "2014", 25.0, 24.0, 26.5)])
    stored = store.read_table(results.CELLS_TABLE)
    assert list(stored.columns) == results.CELLS_COLUMNS and len(stored) == 3
    assert stored["low"].isna().tolist() == [True, True, False] and stored["high"].iloc[2] == 26.5
    assert results.TABLES[results.CELLS_TABLE].arrow(stored).schema.equals(results.CELLS_SCHEMA)
    append_cells(store, [_row("lm/2016", "2014", 27.0, 26.0, 28.0)])  # now an ordinary append
    assert read_cells(store)["high"].tolist()[2:] == [26.5, 28.0]
    # other columns still must match, and only the declared new columns may be added
    with pytest.raises(StoreError, match="'extra'"):
        store.append_table(results.CELLS_TABLE, stored.assign(extra=1.0), new_columns=results.CELLS_ADDED_COLUMNS)
    store.write_table("old", pd.DataFrame({"value": [1.0]}))
    with pytest.raises(StoreError, match="'low'"):
        store.append_table("old", pd.DataFrame({"value": [2.0], "low": [1.5]}))


def test_bounds_do_not_leak_into_tables_with_fixed_columns():
    row = {**_row("lm/2014", "2015", 20.0, 19.0, 21.0), "alpha": 0.5, "first": "2014", "last": "2016",
           "period": "2015", "method": "soup", "members": "2014", "n_members": 1, "split": "test", "gain": 0.0,
           "source_period": "2014", "target_period": "2015", "alpha1": 1.0, "alpha2": 0.1, "alpha3": 0.1, "note": ""}
    for build, columns in ((results.interpolation_frame, results.INTERPOLATION_COLUMNS),
                           (results.soup_frame, results.SOUP_COLUMNS),
                           (results.patching_frame, results.PATCHING_COLUMNS),
                           (results.analogy_frame, results.ANALOGY_COLUMNS),
                           (results.analogy_best_frame, results.ANALOGY_BEST_COLUMNS)):
        assert list(build([row]).columns) == columns
    cells = results.cells_frame([{**row, "foo": 1}])
    assert list(cells.columns) == results.CELLS_COLUMNS and cells["low"].iloc[0] == 19.0


def test_diagonal_counts_periods_whose_own_interval_clears_the_runner_up():
    rows = [
        # 2014: own best, clear of the runner-up; 2015: own best, intervals overlap; 2016: another vector best
        _row("lm/2014", "2014", 10.0, 9.0, 11.0), _row("lm/2015", "2014", 14.0, 12.0, 16.0),
        _row("lm/2016", "2014", 20.0, 18.0, 22.0),
        _row("lm/2014", "2015", 14.0, 12.0, 16.0), _row("lm/2015", "2015", 13.0, 11.0, 15.0),
        _row("lm/2016", "2015", 20.0, 18.0, 22.0),
        _row("lm/2014", "2016", 20.0, 18.0, 22.0), _row("lm/2015", "2016", 10.0, 9.0, 11.0),
        _row("lm/2016", "2016", 14.0, 12.0, 16.0),
    ]
    diag = misalignment.diagonal_summary(misalignment.relative_change(results.cells_frame(rows))).iloc[0]
    assert (diag["n_diagonal_best"], diag["best_not_own"]) == (2, "2016")
    assert (diag["n_separated"], diag["separated"]) == (1, "2014")
    # without bounds (a table from before them) nothing is separated
    old = results.cells_frame(rows).drop(columns=["low", "high"])
    diag = misalignment.diagonal_summary(misalignment.relative_change(old)).iloc[0]
    assert (diag["n_diagonal_best"], diag["n_separated"], diag["separated"]) == (2, 0, "")


def test_report_matrix_table_carries_the_intervals():
    from timevec.report.structure import matrix_figures

    rows = [_row("base", "2014", 30.0, 28.0, 32.0), _row("lm/2014", "2014", 10.0, 9.0, 11.0),
            _row("lm/2015", "2014", 14.0, 12.0, 16.0)]
    for cells in (results.cells_frame(rows), results.cells_frame(rows).drop(columns=["low", "high"])):
        written: dict[str, pd.DataFrame] = {}
        matrix_figures(cells, misalignment.relative_change(cells), [], written.__setitem__)
        table = written["fig_matrix_lm_year"].set_index("vector")
        assert {"value", "low", "high"} <= set(table.columns)
        if "low" in cells:
            assert (table.loc["lm/2014", "low"], table.loc["base", "high"]) == (9.0, 32.0)
        else:  # a cells table from before the bounds: NaN
            assert table[["low", "high"]].isna().all().all()
