"""Cells to a target precision (timevec.evaluate.sequential) and comparisons on a common prefix
(timevec.evaluate.per_example): the stopping rule, the pairing, the storage, and the target off."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from tests.evaluation_inputs import EVAL, make_corpus, tiny_model_and_tokenizer
from timevec import results
from timevec.config import EvaluationConfig
from timevec.data.examples import prepare_split
from timevec.distributed.cells import example_rows, read_cell_examples
from timevec.evaluate import bootstrap
from timevec.evaluate.gains import gain
from timevec.evaluate.metrics import _generate, _score, classify, evaluate, macro_f1, rouge_l_scores
from timevec.evaluate.per_example import EXAMPLES, ExampleStats, on_common_prefix
from timevec.evaluate.sequential import example_order, halfwidth, to_precision
from timevec.store import VectorStore

B = 200  # resamples: enough for the rule, few enough to recompute by hand


def _stats(metric: str, **data) -> ExampleStats:
    return ExampleStats(metric, **data, samples=B, seed=3)


def _scorer(stats: ExampleStats) -> Callable[[np.ndarray], ExampleStats]:
    """A block scorer over precomputed statistics of the examples in their ORIGINAL order."""
    def score(indices: np.ndarray) -> ExampleStats:
        if stats.metric == "perplexity":
            return _stats("perplexity", loss=stats.loss[indices], tokens=stats.tokens[indices])
        return _stats("rougeL", score=stats.score[indices])
    return score


def _direct_stop(x: np.ndarray, order: np.ndarray, block: int, target: float) -> int:
    """The examples the rule should score, from bootstrap.mean_interval on each block prefix (ROUGE-L, points)."""
    for end in range(block, len(order) + block, block):
        prefix = x[order[:end]]
        interval = bootstrap.mean_interval(prefix, B, 0.95, 3)
        if (interval.high - interval.low) / 2 * 100 <= target:
            return min(end, len(order))
    return len(order)


# ----------------------------------------------------------------------------- the stopping rule


def test_the_order_is_a_fixed_permutation_per_split_and_the_same_for_every_vector():
    order = example_order(50, 0, "lm", "2015")
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    assert example_order(50, 0, "lm", "2015").tolist() == order.tolist()  # a function of the split alone
    assert example_order(50, 0, "lm", "2016").tolist() != order.tolist()
    assert example_order(50, 0, "classification", "2015").tolist() != order.tolist()
    assert example_order(50, 1, "lm", "2015").tolist() != order.tolist()
    assert example_order(50, 0, "lm", "2015", "validation").tolist() != order.tolist()


def test_halfwidth_is_relative_for_perplexity_and_in_points_for_bounded_scores():
    assert halfwidth("perplexity", 20.0, bootstrap.Interval(19.0, 21.0)) == pytest.approx(5.0)  # ±1 of 20: 5 %
    assert halfwidth("macro_f1", 0.6, bootstrap.Interval(0.55, 0.65)) == pytest.approx(5.0)  # ±0.05: 5 points
    assert halfwidth("rougeL", 0.9, bootstrap.Interval(0.85, 0.95)) == pytest.approx(5.0)
    assert math.isnan(halfwidth("rougeL", 0.5, bootstrap.NO_INTERVAL))
    assert math.isnan(halfwidth("perplexity", math.inf, bootstrap.Interval(1.0, 2.0)))


def test_the_rule_stops_on_the_halfwidth_alone():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 0.6, 120)
    order = example_order(120, 0, "summarization", "2015")
    low, high = _stats("rougeL", score=x), _stats("rougeL", score=x + 0.35)  # higher value, the same spread
    stop_low, _ = to_precision(order, 10, 4.0, _scorer(low), 0.95)
    stop_high, _ = to_precision(order, 10, 4.0, _scorer(high), 0.95)
    assert stop_high.value() > stop_low.value() + 0.3
    assert len(stop_low) == len(stop_high) == _direct_stop(x, order, 10, 4.0)
    assert 10 < len(stop_low) < 120  # neither the first block nor the whole split: the test can tell
    # perplexity: a higher loss per token (every resample's perplexity × e^c) leaves the relative spread as it was
    tokens = rng.integers(5, 40, 120)
    loss = tokens * rng.uniform(2.0, 4.0, 120)
    ppl, worse = _stats("perplexity", loss=loss, tokens=tokens), _stats("perplexity", loss=loss + 0.7 * tokens, tokens=tokens)
    a, interval_a = to_precision(order, 8, 15.0, _scorer(ppl), 0.95)
    b, interval_b = to_precision(order, 8, 15.0, _scorer(worse), 0.95)
    assert b.value() == pytest.approx(a.value() * math.exp(0.7)) and len(a) == len(b) == 64
    assert halfwidth("perplexity", b.value(), interval_b) == pytest.approx(halfwidth("perplexity", a.value(), interval_a))


def test_a_cell_with_a_small_spread_stops_early_and_one_with_a_large_spread_runs_to_max_examples():
    model, tokenizer = tiny_model_and_tokenizer("gpt2")
    cfg = EVAL.model_copy(update={"max_examples": 20, "block_examples": 4})
    corpus = make_corpus(40)
    lm = prepare_split("lm", corpus, "2015", tokenizer, False, cfg.model_copy(update={"max_length": 8}))
    assert lm.n_examples == 20  # max_examples caps the split the rule walks
    loose = evaluate(model, lm, cfg.model_copy(update={"target_halfwidth": 50.0}))
    assert loose["n_examples"] == 4 and 0 < loose["halfwidth"] <= 50.0  # the first block is precise enough
    order = example_order(20, cfg.bootstrap_seed, "lm", "2015")
    assert loose[EXAMPLES].tokens.tolist() == [sum(t != -100 for t in lm.examples[i].labels) - 1 for i in order[:4]]
    tight = evaluate(model, lm, cfg.model_copy(update={"target_halfwidth": 0.01}))
    assert tight["n_examples"] == 20 and tight["halfwidth"] > 0.01  # never precise enough: the whole capped split
    classification = prepare_split("classification", corpus, "2015", tokenizer, False, cfg)
    wide = evaluate(model, classification, cfg.model_copy(update={"target_halfwidth": 0.01}), tokenizer=tokenizer)
    assert wide["n_examples"] == 20
    assert list(wide[EXAMPLES].gold) == [classification.gold[i] for i in example_order(20, 0, "classification", "2015")]
    assert wide["n_tokens"] == 20 * 2 * 3  # two candidates of 2 bytes + EOS per text
    # resamples that all agree (every summary scores the same) show no spread: a width of 0 never stops a cell
    same = _stats("rougeL", score=np.full(30, 0.4))
    assert len(to_precision(np.arange(30), 5, 1.0, _scorer(same), 0.95)[0]) == 30


def test_the_target_needs_the_bootstrap():
    with pytest.raises(ValueError, match="target_halfwidth needs the bootstrap"):
        EvaluationConfig(target_halfwidth=2.0, bootstrap_samples=0)


# ----------------------------------------------------------------------------- comparisons on a common prefix


def _resampled(function: Callable[[np.ndarray], float], n: int) -> np.ndarray:
    """``function`` of each bootstrap resample's indices, drawn by hand from the shared index matrix."""
    return np.array([function(idx) for block in bootstrap.resample_indices(n, B, 3) for idx in block])


def test_paired_gains_on_a_common_prefix_equal_a_direct_computation():
    rng = np.random.default_rng(1)
    gold = [str(g) for g in rng.choice(["a", "b", "c"], 40)]
    pred_a = [g if rng.random() < 0.7 else "b" for g in gold]
    pred_b = [g if rng.random() < 0.5 else "c" for g in gold]
    a = _stats("macro_f1", gold=gold, pred=pred_a)
    b = _stats("macro_f1", gold=gold[:25], pred=pred_b[:25])  # scored only the first 25 of the same order
    row_a, row_b = on_common_prefix([{"value": a.value(), "replicates": a.replicates(), EXAMPLES: a},
                                     {"value": b.value(), "replicates": b.replicates(), EXAMPLES: b}])
    assert row_a["n_examples"] == 25 and "n_examples" not in row_b  # only the longer one is cut
    assert gain(row_a["value"], row_b["value"], True) == pytest.approx(
        macro_f1(gold[:25], pred_a[:25]) - macro_f1(gold[:25], pred_b[:25]), abs=1e-12)
    by_hand = _resampled(lambda i: macro_f1([gold[k] for k in i], [pred_a[k] for k in i])
                         - macro_f1([gold[k] for k in i], [pred_b[k] for k in i]), 25)
    np.testing.assert_allclose(row_a["replicates"] - row_b["replicates"], by_hand, atol=1e-12)
    # perplexity: the prefix's exp(Σ loss / Σ tokens), its resamples paired with the shorter cell's
    tokens = rng.integers(5, 30, 40)
    loss_a, loss_b = tokens * rng.uniform(2, 4, 40), tokens * rng.uniform(2, 4, 40)
    long, short = _stats("perplexity", loss=loss_a, tokens=tokens), _stats("perplexity", loss=loss_b[:12], tokens=tokens[:12])
    row_l, row_s = on_common_prefix([{"value": long.value(), "replicates": long.replicates(), EXAMPLES: long},
                                     {"value": short.value(), "replicates": short.replicates(), EXAMPLES: short}])
    direct = math.exp(loss_b[:12].sum() / tokens[:12].sum()) - math.exp(loss_a[:12].sum() / tokens[:12].sum())
    assert gain(row_l["value"], row_s["value"], False) == pytest.approx(direct, rel=1e-12)
    by_hand = _resampled(lambda i: math.exp(loss_b[i].sum() / tokens[i].sum()) - math.exp(loss_a[i].sum() / tokens[i].sum()), 12)
    np.testing.assert_allclose(row_s["replicates"] - row_l["replicates"], by_hand, rtol=1e-10)
    # without per-example statistics (the target off: every cell scored the whole split) nothing changes
    plain = [{"value": 1.0, "n_examples": 40}, {"value": 2.0, "n_examples": 40}]
    assert on_common_prefix(plain) == plain


def test_paired_gains_of_two_models_on_a_common_prefix_equal_evaluating_those_examples():
    model, tokenizer = tiny_model_and_tokenizer("gpt2")
    other = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in other.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    split = prepare_split("lm", make_corpus(60), "2015", tokenizer, False, EVAL)
    assert split.n_examples > 8
    early = evaluate(model, split, EVAL.model_copy(update={"target_halfwidth": 99.0, "block_examples": 4}),
                     keep_replicates=True)
    full = evaluate(other, split, EVAL.model_copy(update={"target_halfwidth": 1e-6, "block_examples": 4}),
                    keep_replicates=True)
    assert early["n_examples"] == 4 and full["n_examples"] == split.n_examples
    row_early, row_full = on_common_prefix([early, full])
    prefix = split.subset(example_order(split.n_examples, EVAL.bootstrap_seed, "lm", "2015")[:4])
    direct_early = evaluate(model, prefix, EVAL, keep_replicates=True)  # the target off: those 4 examples alone
    direct_full = evaluate(other, prefix, EVAL, keep_replicates=True)
    assert gain(row_full["value"], row_early["value"], False) == pytest.approx(
        gain(direct_full["value"], direct_early["value"], False), rel=1e-6)
    np.testing.assert_allclose(row_full["replicates"] - row_early["replicates"],
                               direct_full["replicates"] - direct_early["replicates"], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- storage and the target off


@pytest.mark.parametrize("new_store", ["local"], indirect=True)
def test_cell_examples_round_trip_through_the_store(new_store: Callable[..., VectorStore]):
    store = new_store()
    key = {"task": "classification", "granularity": "year", "vector": "classification/2014", "test_period": "2015"}
    f1 = _stats("macro_f1", gold=["a", "b", "a"], pred=["a", "a", "a"])
    ppl = _stats("perplexity", loss=[3.0, 5.5], tokens=[2, 3])
    rows = [{**key, "value": f1.value(), EXAMPLES: f1}, {**key, "task": "lm", "vector": "lm/2014", EXAMPLES: ppl},
            {**key, "vector": "base"}]  # a row without statistics (the target off) has no cell_examples row
    results.append_table(store, results.CELL_EXAMPLES_TABLE, results.cell_examples_frame(example_rows(rows)))
    store.compact_tables()
    back = read_cell_examples(store, B, 3)
    assert sorted(back) == [("classification", "year", "classification/2014", "2015"), ("lm", "year", "lm/2014", "2015")]
    f1_back, ppl_back = back[("classification", "year", "classification/2014", "2015")], back[("lm", "year", "lm/2014", "2015")]
    assert f1_back.gold == ("a", "b", "a") and f1_back.pred == ("a", "a", "a") and f1_back.value() == f1.value()
    assert ppl_back.value() == ppl.value() == pytest.approx(math.exp(8.5 / 5))
    np.testing.assert_array_equal(ppl_back.replicates(), ppl.replicates())
    stored = results.read_table(store, results.CELL_EXAMPLES_TABLE)
    assert stored.loc[stored["task"] == "lm", "gold"].isna().all()  # the lists a metric does not use are null


def _legacy_row(model, tokenizer, split) -> dict:
    """One cell as evaluate() computed it before the target existed, from the same building blocks."""
    resamples = dict(samples=EVAL.bootstrap_samples, confidence=EVAL.confidence, seed=EVAL.bootstrap_seed)
    with torch.inference_mode():
        if split.task == "lm":
            sums, counts = _score(model, split.examples, split, EVAL.batch_size, torch.device("cpu"))
            value, n_tokens = math.exp(float(sums.sum()) / int(counts.sum())), int(counts.sum())
            interval = bootstrap.perplexity_interval(sums.numpy(), counts.numpy(), **resamples)
        elif split.task == "classification":
            pred, n_tokens = classify(model, split, EVAL.batch_size)
            value, interval = macro_f1(list(split.gold), pred), bootstrap.macro_f1_interval(list(split.gold), pred, **resamples)
        else:
            hypotheses, n_tokens = _generate(model, split, tokenizer, EVAL, torch.device("cpu"))
            scores = rouge_l_scores(list(split.references), hypotheses)
            value, interval = sum(scores) / len(scores), bootstrap.mean_interval(scores, **resamples)
    return {"task": split.task, "value": value, "low": interval.low, "high": interval.high, "n_examples": split.n_examples,
            "n_tokens": n_tokens}


def test_with_the_target_off_cells_are_what_they_were():
    model, tokenizer = tiny_model_and_tokenizer("gpt2")
    splits = [prepare_split(task, make_corpus(12), "2015", tokenizer, False, EVAL)
              for task in ("lm", "classification", "summarization")]
    assert EVAL.target_halfwidth is None
    rows = [evaluate(model, split, EVAL, tokenizer=tokenizer) for split in splits]
    assert not any(EXAMPLES in row for row in rows)  # nothing for a common prefix: every cell scored every example
    columns = ["task", "value", "low", "high", "n_examples", "n_tokens"]
    got = pd.DataFrame([{"task": s.task, **r} for s, r in zip(splits, rows)])[columns]
    pd.testing.assert_frame_equal(got, pd.DataFrame([_legacy_row(model, tokenizer, s) for s in splits])[columns])
    lm, f1, rouge = rows
    assert lm["halfwidth"] == pytest.approx((lm["high"] - lm["low"]) / 2 / lm["value"] * 100)  # percent
    assert f1["halfwidth"] == pytest.approx((f1["high"] - f1["low"]) / 2 * 100)  # points
    assert rouge["halfwidth"] == pytest.approx((rouge["high"] - rouge["low"]) / 2 * 100)
