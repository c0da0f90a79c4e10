"""The encoder-decoder path with a real subword tokenizer, offline: the way google-t5/t5-small goes.

A Unigram tokenizer trained on a small commit log the test writes (``tests/corpora.py``; ``tokenizers``) and a T5 built from a
``T5Config`` are written with ``save_pretrained`` to a directory; ``base: {source: hub, hub_id:
DIR}`` loads them through the Auto classes. Next-block LM, component classification (labels of
several subword tokens) and body → subject summarisation (ROUGE-L) run on it, one evaluation
each, then the whole pipeline end to end.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.corpora import write_commits
from timevec.config import BaseConfig, CorpusConfig, EvaluationConfig, TrainingConfig
from timevec.data.corpus import load_corpus
from timevec.data.examples import prepare_split, task_examples
from timevec.data.models import base_id, build_model, is_encoder_decoder, lm_examples, load_tokenizer
from timevec.data.subword import build_t5_unigram
from timevec.evaluate.metrics import evaluate
from timevec.train.loop import train

ROOT = Path(__file__).resolve().parents[1]

CORPUS = dict(label_column="component", summary_source_column="body", summary_target_column="subject",
              caps={"train": 120, "validation": 8, "test": 8})


@pytest.fixture(scope="module")
def commits_path(tmp_path_factory) -> Path:
    return write_commits(tmp_path_factory.mktemp("corpus") / "commits.jsonl.gz", start=2016, end=2017)


@pytest.fixture(scope="module")
def rails(commits_path):
    return load_corpus(CorpusConfig(source=str(commits_path), **CORPUS))


@pytest.fixture(scope="module")
def t5_dir(rails, tmp_path_factory) -> Path:
    texts = [t for p in ("2016", "2017") for t in rails.texts(p, "train")]
    return build_t5_unigram(texts, tmp_path_factory.mktemp("t5") / "t5-unigram", vocab_size=800)


def test_local_t5_directory_loads_through_the_hub_path_and_runs_every_task(t5_dir, rails):
    base = BaseConfig(source="hub", hub_id=str(t5_dir))
    assert base_id(base) == "t5-unigram"  # the folder's name, not its path
    tokenizer = load_tokenizer(base)
    model = build_model(base, tokenizer)
    assert type(model).__name__ == "T5ForConditionalGeneration" and is_encoder_decoder(model)
    assert len(tokenizer) == model.config.vocab_size <= 800 and tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
    assert tokenizer.tokenize("Fix activerecord migration")[0].startswith("▁")  # subwords, not bytes
    assert lm_examples(rails.texts("2016", "train")[:20], tokenizer, True, 32, objective="span_corruption")  # sentinels exist
    eval_cfg = EvaluationConfig(batch_size=8, max_length=48, max_examples=6, summary_max_new_tokens=8)
    cfg = TrainingConfig(lr=3e-3, steps=6, batch_size=8, max_length=48, schedule="constant")
    for task, metric in (("lm", "perplexity"), ("classification", "macro_f1"), ("summarization", "rougeL")):
        examples = task_examples(task, rails, "2016", "train", tokenizer, True, cfg.max_length)
        tuned, result = train(build_model(base, tokenizer), examples, cfg, tokenizer.pad_token_id)
        assert result.final_loss < result.first_loss, task
        split = prepare_split(task, rails, "2017", tokenizer, True, eval_cfg)
        if task == "classification":
            assert max(len(e.labels) for e in split.examples) >= 3  # e.g. ▁active record </s>
        out = evaluate(tuned, split, eval_cfg, tokenizer=tokenizer)
        assert out["metric"] == metric and out["n_examples"] > 0 and math.isfinite(out["value"]), task
        if task == "lm":  # the commit log is one generator's text: training on 2016 lowers perplexity on 2017
            before = evaluate(build_model(base, tokenizer), split, eval_cfg, tokenizer=tokenizer)["value"]
            assert out["value"] < before, (out["value"], before)


@pytest.mark.slow
def test_pipeline_end_to_end_on_the_local_t5_directory(t5_dir, commits_path, tmp_path, ray_session):
    config = {
        "name": "t5-unigram-rails",
        "base": {"source": "hub", "hub_id": str(t5_dir)},
        "corpus": {"source": str(commits_path), **CORPUS},
        "granularities": ["year"],
        "periods": {"start": "2016", "end": "2017"},
        "tasks": ["lm", "classification", "summarization"],
        "training": {"lr": 0.003, "steps": 4, "batch_size": 8, "max_length": 48, "schedule": "constant",
                     "lora": {"r": 8, "alpha": 32, "dropout": 0.1}},
        "store": {"url": str(tmp_path / "store"), "dtype": "bfloat16"},
        "ray": {"num_cpus": 2, "max_concurrent_runs": 2, "eval_actors": 1},
        "evaluation": {"batch_size": 8, "max_length": 48, "max_examples": 6, "summary_max_new_tokens": 8},
        "interpolation": {"alphas": [0.0, 0.5, 1.0], "soup_max_distance": 1},
        "analogy": {"task": "classification", "alpha1": [1.0], "alpha2": [0.2], "alpha3": [0.1]},
    }
    path = tmp_path / "t5.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        # the model-specific stages: fine-tunes (LM, classification, summarization) and cells on T5, and the
        # analysis; combination stages are architecture-blind weight arithmetic, tested on their own
        [sys.executable, "-m", "timevec.cli", "run", str(path), "--stages", "finetune,evaluate,analyze"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray_session},  # on the session's Ray
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    store = tmp_path / "store"
    cells = pd.read_parquet(store / "results" / "cells.parquet")
    assert set(cells["task"]) == {"lm", "classification", "summarization"}
    assert set(cells[cells["task"] == "summarization"]["metric"]) == {"rougeL"}
    assert (store / "results" / "similarity.parquet").exists()
    assert yaml.safe_load((store / "store.json").read_text())["base_id"] == "t5-unigram"
