"""What the evaluation tests score: a tiny embedded model of either architecture, an evaluation config,
a hand-made corpus of one year. The ``model_and_tokenizer`` fixture of ``tests/conftest.py`` is
:func:`tiny_model_and_tokenizer` for GPT-2 and for T5."""

from __future__ import annotations

import pandas as pd

from timevec.config import BaseConfig, EvaluationConfig, TinyModel
from timevec.data.corpus import Corpus
from timevec.data.models import build_model, load_tokenizer

TINY_MODEL = TinyModel(d_model=32, num_layers=1, num_heads=2, d_ff=64, max_positions=128)
EVAL = EvaluationConfig(batch_size=4, max_length=48, max_examples=None, summary_max_new_tokens=6)


def make_corpus(n: int = 10) -> Corpus:
    """A hand-made corpus of one year: every row in the test split, labels and summaries set."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    rows = []
    for i in range(n):
        text = " ".join(words[(i + k) % len(words)] for k in range(3 + i % 4))
        rows.append(
            dict(key=f"k{i}", date=pd.Timestamp(2015, 1 + i % 12, 1), text=text, label=["xx", "yy"][i % 2],
                 summary_source=text, summary_target=" ".join(text.split()[:2]), year="2015",
                 month=f"2015-{1 + i % 12:02d}", split="test")
        )
    return Corpus(source="hand", records=pd.DataFrame(rows))


def tiny_model_and_tokenizer(arch: str):
    """The embedded ``arch`` (``gpt2`` or ``t5``) of :data:`TINY_MODEL`, random init, in eval mode, and its tokenizer."""
    base = BaseConfig(source="embedded", arch=arch, tiny=TINY_MODEL)
    tokenizer = load_tokenizer(base)
    model = build_model(base, tokenizer)
    model.eval()
    return model, tokenizer
