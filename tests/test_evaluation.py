"""Metrics and evaluation of one weight state on one test split (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.evaluation_inputs import EVAL, TINY_MODEL, make_corpus
from timevec.config import BaseConfig
from timevec.data.corpus import Corpus
from timevec.data.examples import EvalSplit, prepare_split, spread
from timevec.data.models import IGNORE, build_model, is_encoder_decoder, load_tokenizer
from timevec.evaluate.metrics import _score, candidate_logliks, classify, evaluate, macro_f1, rouge_l

# ----------------------------------------------------------------------------- pure metrics


def test_macro_f1_matches_hand_computed_values():
    # a: TP1 FP0 FN1 → 2/3; b: TP1 FP2 FN0 → 1/2; c: TP0 FP0 FN1 → 0  ⇒ (2/3 + 1/2 + 0) / 3 = 7/18
    assert macro_f1(["a", "a", "b", "c"], ["a", "b", "b", "b"]) == pytest.approx(7 / 18)
    # a label only ever predicted counts with F1 = 0 (sklearn's union of labels)
    assert macro_f1(["a", "a"], ["a", "d"]) == pytest.approx((2 / 3 + 0) / 2)
    assert macro_f1(["a", "b"], ["a", "b"]) == 1.0
    assert macro_f1(["a", "b"], ["b", "a"]) == 0.0
    with pytest.raises(ValueError):
        macro_f1(["a"], [])


def test_rouge_l_matches_hand_computed_values():
    # LCS("the cat sat on the mat", "the cat on mat") = 4: P = 4/4, R = 4/6, F = 0.8
    assert rouge_l(["the cat sat on the mat"], ["the cat on mat"]) == pytest.approx(0.8)
    # LCS = 1 of 2 words each way: P = R = F = 1/2; the mean over pairs
    assert rouge_l(["the cat sat on the mat", "hello world"], ["the cat on mat", "world hello"]) == pytest.approx(0.65)
    assert rouge_l(["anything"], [""]) == 0.0


def test_spread_caps_deterministically_over_the_whole_range():
    assert spread(5, None) == [0, 1, 2, 3, 4]
    assert spread(3, 10) == [0, 1, 2]
    assert spread(10, 4) == [0, 2, 5, 7]


# ----------------------------------------------------------------------------- evaluation


def hand_perplexity(model, split: EvalSplit) -> float:
    """One example at a time, no padding, loss summed by hand."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for example in split.examples:
            ids = torch.tensor([example.input_ids])
            labels = torch.tensor([example.labels])
            if is_encoder_decoder(model):
                logits = model(input_ids=ids, labels=labels).logits[0]
                targets = labels[0]
            else:
                logits = model(input_ids=ids).logits[0, :-1]
                targets = labels[0, 1:]
            logp = torch.log_softmax(logits.double(), dim=-1)
            for position, target in enumerate(targets.tolist()):
                if target != IGNORE:
                    total -= float(logp[position, target])
                    tokens += 1
    return math.exp(total / tokens)


def test_perplexity_is_exp_of_a_hand_loop(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    split = prepare_split("lm", make_corpus(), "2015", tokenizer, is_encoder_decoder(model), EVAL)
    assert split.n_examples >= 3
    result = evaluate(model, split, EVAL)
    assert result["metric"] == "perplexity" and result["higher_is_better"] is False
    assert result["n_examples"] == len(split.examples)
    assert result["n_tokens"] == sum(sum(1 for t in e.labels if t != IGNORE) for e in split.examples) - (
        0 if is_encoder_decoder(model) else len(split.examples)  # decoder-only: the first token is not predicted
    )
    assert result["value"] == pytest.approx(hand_perplexity(model, split), rel=1e-5)


def test_classification_picks_the_most_likely_label():
    base = BaseConfig(source="embedded", arch="gpt2", tiny=TINY_MODEL)
    tokenizer = load_tokenizer(base)
    model = build_model(base, tokenizer).eval()
    x = tokenizer("x", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():  # every position's hidden state becomes c·e_x: the model always says "x"
        model.transformer.ln_f.weight.zero_()
        model.transformer.wte.weight[x] = 0.0
        model.transformer.wte.weight[x, 0] = 1.0
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 50.0
    split = prepare_split("classification", make_corpus(8), "2015", tokenizer, False, EVAL)
    assert split.candidates == ("xx", "yy")
    pred, n_tokens = classify(model, split, batch_size=3)
    assert pred == ["xx"] * 8
    assert n_tokens == 8 * 2 * 3  # two candidates of 2 bytes + EOS each
    result = evaluate(model, split, EVAL)
    # gold alternates xx, yy: xx has TP 4, FP 4 → 2/3; yy has F1 0
    assert result["value"] == pytest.approx((2 / 3 + 0) / 2)
    assert result["n_examples"] == 8


def test_classification_ties_go_to_the_first_sorted_label(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with torch.no_grad():  # zero output norm: uniform next-token distribution, equal-length labels tie
        norm = model.transformer.ln_f if hasattr(model, "transformer") else model.decoder.final_layer_norm
        norm.weight.zero_()
        if getattr(norm, "bias", None) is not None:
            norm.bias.zero_()
    split = prepare_split("classification", make_corpus(6), "2015", tokenizer, is_encoder_decoder(model), EVAL,
                          labels=["yy", "xx"])
    pred, _ = classify(model, split, batch_size=5)
    assert pred == ["xx"] * 6


def test_classification_scores_equal_per_candidate_likelihoods(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    encoder_decoder = is_encoder_decoder(model)
    split = prepare_split("classification", make_corpus(6), "2015", tokenizer, encoder_decoder, EVAL,
                          labels=["xx", "yy", "zzz"])
    pred, _ = classify(model, split, batch_size=4)
    expected = []
    for row in range(len(split.gold)):
        scores = []
        for c in range(len(split.candidates)):
            one = EvalSplit(**{**split.__dict__, "task": "lm", "examples": (split.examples[row * 3 + c],),
                               "candidates": (), "gold": ()})
            scores.append(-math.log(hand_perplexity(model, one)) * sum(
                1 for t in one.examples[0].labels[(0 if encoder_decoder else 1):] if t != IGNORE))
        expected.append(split.candidates[max(range(3), key=lambda k: (scores[k], -k))])
    assert pred == expected


def test_shared_prompt_scores_equal_scoring_each_candidate_sequence_alone(model_and_tokenizer):
    # random weights (no tie), labels of different lengths, texts longer than max_length (truncated)
    model, tokenizer = model_and_tokenizer
    encoder_decoder = is_encoder_decoder(model)
    corpus = make_corpus(9)
    corpus.records["text"] = [t * (1 + 4 * (i % 3)) for i, t in enumerate(corpus.records["text"])]
    split = prepare_split("classification", corpus, "2015", tokenizer, encoder_decoder, EVAL, labels=["a", "bbbbbbb", "xx"])
    assert max(len(e.input_ids) for e in split.examples) == EVAL.max_length  # some prompts were cut
    with torch.inference_mode():
        shared, n_tokens = candidate_logliks(model, split, batch_size=5, device=torch.device("cpu"))
        alone, counts = _score(model, split.examples, split, 1, torch.device("cpu"))
    assert torch.allclose(shared.flatten(), -alone, rtol=1e-5, atol=1e-4)
    assert n_tokens == int(counts.sum())


def test_evaluation_is_deterministic_and_batch_independent(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    encoder_decoder = is_encoder_decoder(model)
    corpus = make_corpus(7)
    for task in ("lm", "classification", "summarization"):
        split = prepare_split(task, corpus, "2015", tokenizer, encoder_decoder, EVAL)
        again = prepare_split(task, corpus, "2015", tokenizer, encoder_decoder, EVAL)
        assert split == again
        first = evaluate(model, split, EVAL, tokenizer=tokenizer)
        second = evaluate(model, split, EVAL, tokenizer=tokenizer)
        assert first == second, task
        one_by_one = evaluate(model, split, EVAL.model_copy(update={"batch_size": 1}), tokenizer=tokenizer)
        assert one_by_one["n_tokens"] == first["n_tokens"]
        assert one_by_one["value"] == pytest.approx(first["value"], rel=1e-5), task
    assert not model.training


def test_max_examples_caps_each_split():
    base = BaseConfig(source="embedded", arch="gpt2", tiny=TINY_MODEL)
    tokenizer = load_tokenizer(base)
    capped = EVAL.model_copy(update={"max_examples": 3})
    corpus = make_corpus(10)
    for task in ("classification", "summarization"):
        split = prepare_split(task, corpus, "2015", tokenizer, False, capped)
        assert split.n_examples == 3
    cls = prepare_split("classification", corpus, "2015", tokenizer, False, capped)
    assert cls.gold == ("xx", "yy", "xx")  # rows 0, 3, 6 of 10 (evenly spread)


def test_summaries_are_generated_and_scored(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    split = prepare_split("summarization", make_corpus(4), "2015", tokenizer, is_encoder_decoder(model), EVAL)
    result = evaluate(model, split, EVAL, tokenizer=tokenizer)
    assert result["metric"] == "rougeL" and result["higher_is_better"] is True
    assert 0.0 <= result["value"] <= 1.0
    assert result["n_examples"] == 4
    assert result["n_tokens"] <= 4 * EVAL.summary_max_new_tokens
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate(model, split, EVAL)


def test_validation_rows_are_prepared_the_same_way():
    base = BaseConfig(source="embedded", arch="gpt2", tiny=TINY_MODEL)
    tokenizer = load_tokenizer(base)
    corpus = make_corpus(6)
    records = corpus.records.copy()
    records.loc[records.index % 2 == 1, "split"] = "validation"
    corpus = Corpus(source="hand", records=records)
    test = prepare_split("classification", corpus, "2015", tokenizer, False, EVAL)
    validation = prepare_split("classification", corpus, "2015", tokenizer, False, EVAL, split="validation")
    assert (test.split, validation.split) == ("test", "validation")
    assert test.gold == ("xx",) * 3 and validation.gold == ("yy",) * 3
    assert test.candidates == validation.candidates == ("xx", "yy")
