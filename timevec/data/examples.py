"""The study's example sets: every (task, period, split) as token ids, built one way for every stage.

Training and evaluation format a period's rows the same way (:func:`task_examples`, over
:func:`~timevec.data.models.lm_examples` and :func:`~timevec.data.models.prompt_examples`), so a
fine-tuned model is scored on exactly the kind of sequence it was trained on.

Evaluation sets (:class:`EvalSplit`) are tokenised, capped at ``evaluation.max_examples`` and spread
evenly over the period (:func:`spread`) by :func:`prepare_split`; every stage that evaluates — cells,
interpolation and soups, forecasts, analogies, group swaps, forgetting, merge comparison — takes them
from :func:`prepare_eval_sets`, which builds each one ONCE per study: the first stage to need a set
tokenises it and keeps it in the store as an Arrow file (``<store>/examples/<key>.arrow``), and every
later stage, on any node, reads it back instead of loading the corpus and tokenising again. The key
hashes everything the set depends on — the corpus section, the base, the evaluation settings, the
task, the period and the split — so a changed setting builds a new set. (A corpus file rewritten in
place at the same URL is not detected, as it is not for the vectors trained on it.)

Ray-free and torch-free; imports only :mod:`timevec.config` and the rest of :mod:`timevec.data`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from timevec.config import TASKS, EvaluationConfig, ExperimentConfig
from timevec.data.corpus import Corpus, Split
from timevec.data.models import Example, lm_examples, prompt_examples
from timevec.errors import TimevecError
from timevec.periods import Period

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from timevec.store import VectorStore

log = logging.getLogger(__name__)

__all__ = ["EvalSets", "EvalSplit", "EvaluationError", "eval_set_key", "prepare_eval_sets", "prepare_split", "spread",
           "task_examples"]


class EvaluationError(TimevecError, ValueError):
    """A split that cannot be prepared or evaluated (empty, wrong architecture, missing tokenizer)."""


def task_examples(
    task: str,
    corpus: Corpus,
    period: str,
    split: Split,
    tokenizer: PreTrainedTokenizerBase,
    encoder_decoder: bool,
    max_length: int,
    seed: int = 0,
) -> list[Example]:
    """The examples of one task on one split of one period.

    lm: the period's texts as next-block (encoder-decoder) or next-token (decoder-only) blocks;
    classification: text → label; summarization: summary_source → summary_target (rows where
    both are non-empty).
    """
    rows = corpus.rows(period, split)
    if task == "lm":
        return lm_examples(rows["text"].tolist(), tokenizer, encoder_decoder, max_length, seed=seed)
    if task == "classification":
        return prompt_examples(rows["text"].tolist(), rows["label"].tolist(), tokenizer, encoder_decoder, max_length, "classify")
    if task == "summarization":
        rows = rows[(rows["summary_source"].fillna("").str.strip() != "") & (rows["summary_target"].fillna("").str.strip() != "")]
        return prompt_examples(
            rows["summary_source"].tolist(), rows["summary_target"].tolist(), tokenizer, encoder_decoder, max_length, "summarize"
        )
    raise ValueError(f"unknown task {task!r}")



@dataclass(frozen=True)
class EvalSplit:
    """One period's tokenised test split for one task, ready for :func:`evaluate`.

    ``examples`` are what the model scores: LM blocks (lm); every (text, candidate label) pair in
    row-major order, ``len(gold) × len(candidates)`` of them (classification); for summarisation
    the (prompt, reference) pairs, whose ``input_ids`` are also the generation prompts for an
    encoder-decoder model. ``prompts`` are the decoder-only generation prompts (the text up to the
    ``=>`` separator, truncated to leave room for ``summary_max_new_tokens``).
    """

    task: str
    period: str
    encoder_decoder: bool
    pad_id: int
    eos_id: int
    examples: tuple[Example, ...]
    split: str = "test"  # or "validation" (selection in the α searches and soups)
    candidates: tuple[str, ...] = ()
    gold: tuple[str, ...] = ()
    prompts: tuple[tuple[int, ...], ...] = ()
    references: tuple[str, ...] = ()
    n_rows: int = 0

    @property
    def n_examples(self) -> int:
        """Evaluated units: LM blocks, classified texts, or summarised documents."""
        if self.task == "classification":
            return len(self.gold)
        if self.task == "summarization":
            return len(self.references)
        return len(self.examples)

    def subset(self, indices: Iterable[int]) -> EvalSplit:
        """The split of the evaluated units at ``indices``, in that order (a classified text keeps all its
        candidates): what one block of a sequential evaluation scores (:mod:`timevec.evaluate.sequential`)."""
        idx = [int(i) for i in indices]
        if self.task == "classification":
            k = len(self.candidates)
            return replace(self, examples=tuple(e for i in idx for e in self.examples[i * k : (i + 1) * k]),
                           gold=tuple(self.gold[i] for i in idx))
        if self.task == "summarization":
            return replace(self, examples=tuple(self.examples[i] for i in idx),
                           prompts=tuple(self.prompts[i] for i in idx) if self.prompts else (),
                           references=tuple(self.references[i] for i in idx))
        return replace(self, examples=tuple(self.examples[i] for i in idx))


def spread(n: int, cap: int | None) -> list[int]:
    """``cap`` indices out of ``range(n)``, evenly spaced (all of them when ``cap`` is None or ≥ n).

    The cap keeps a spread over the whole period instead of its first weeks, so a monthly or
    seasonal signal is not cut away; it depends on nothing but ``n`` and ``cap`` (deterministic).
    """
    if cap is None or n <= cap:
        return list(range(n))
    return [(i * n) // cap for i in range(cap)]


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prepare_split(
    task: str,
    corpus: Corpus,
    period: str,
    tokenizer: PreTrainedTokenizerBase,
    encoder_decoder: bool,
    eval_cfg: EvaluationConfig,
    labels: Sequence[str] | None = None,
    split: Split = "test",
) -> EvalSplit:
    """Tokenise the test split of one period for ``task``, capped at ``eval_cfg.max_examples``.

    ``split="validation"`` prepares the validation rows the same way: the α searches and soups
    select on validation and report on test, and must not see a difference in formatting.

    Formatting is the training formatting (:func:`timevec.data.examples.task_examples` and
    :func:`timevec.data.models.prompt_examples`), so a fine-tuned model is evaluated on exactly the
    kind of sequence it was trained on. Classification candidates default to every label of the
    corpus (sorted), the same for every period, so a label that is rare in one year can still be
    predicted there.
    """
    if task not in TASKS:
        raise EvaluationError(f"unknown task {task!r} (expected one of {sorted(TASKS)})")
    max_length = eval_cfg.max_length
    common = dict(task=task, period=period, split=split, encoder_decoder=encoder_decoder, pad_id=tokenizer.pad_token_id,
                  eos_id=tokenizer.eos_token_id)
    if task == "lm":
        blocks = task_examples("lm", corpus, period, split, tokenizer, encoder_decoder, max_length)
        keep = spread(len(blocks), eval_cfg.max_examples)
        prepared = EvalSplit(examples=tuple(blocks[i] for i in keep), n_rows=len(corpus.rows(period, split)), **common)
    elif task == "classification":
        rows = corpus.rows(period, split)
        rows = rows[rows["label"].notna()]
        rows = rows.iloc[spread(len(rows), eval_cfg.max_examples)]
        if labels is None:
            labels = corpus.records["label"].dropna().astype(str).unique().tolist()
        candidates = tuple(sorted(set(map(str, labels))))
        if not candidates:
            raise EvaluationError(f"classification on {period}: the corpus has no labels")
        texts = rows["text"].tolist()
        sources = [t for t in texts for _ in candidates]
        targets = [c for _ in texts for c in candidates]
        longest = max(len(_ids(tokenizer, c)) for c in candidates) + 1  # + EOS
        examples = prompt_examples(sources, targets, tokenizer, encoder_decoder, max_length, "classify", longest)
        prepared = EvalSplit(examples=tuple(examples), candidates=candidates, gold=tuple(rows["label"].astype(str)),
                          n_rows=len(rows), **common)
    else:
        rows = corpus.rows(period, split)
        rows = rows[(rows["summary_source"].fillna("").str.strip() != "") & (rows["summary_target"].fillna("").str.strip() != "")]
        rows = rows.iloc[spread(len(rows), eval_cfg.max_examples)]
        sources, references = rows["summary_source"].tolist(), rows["summary_target"].tolist()
        examples = prompt_examples(sources, references, tokenizer, encoder_decoder, max_length, "summarize")
        prompts: list[tuple[int, ...]] = []
        if not encoder_decoder:
            room = max(max_length - eval_cfg.summary_max_new_tokens, 1)
            prompts = [tuple(_ids(tokenizer, f"summarize: {s} => ")[:room]) for s in sources]
        prepared = EvalSplit(examples=tuple(examples), prompts=tuple(prompts), references=tuple(references),
                          n_rows=len(rows), **common)
    if prepared.n_examples == 0:
        log.warning("%s %s split of %s is empty", task, split, period)
    return prepared



# ----------------------------------------------------------------------------- one set per study

#: {split: {(task, granularity): {period: EvalSplit}}}
EvalSets = dict[str, dict[tuple[str, str], dict[str, EvalSplit]]]

EXAMPLES_DIR = "examples"


def eval_set_key(config: ExperimentConfig, task: str, period: str, split: str, encoder_decoder: bool) -> str:
    """The cache key of one set: a hash of everything :func:`prepare_split` reads."""
    evaluation = config.evaluation
    recipe = {
        "corpus": config.corpus.model_dump(mode="json"),
        "base": config.base.model_dump(mode="json"),
        "evaluation": {"max_length": evaluation.max_length, "max_examples": evaluation.max_examples,
                       "summary_max_new_tokens": evaluation.summary_max_new_tokens},
        "task": task, "period": period, "split": split, "encoder_decoder": encoder_decoder, "format": 1,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
    return f"{task}-{period}-{split}-{digest}"


def _to_arrow(prepared: EvalSplit) -> bytes:
    import pyarrow as pa

    meta = {
        "task": prepared.task, "period": prepared.period, "split": prepared.split,
        "encoder_decoder": prepared.encoder_decoder, "pad_id": prepared.pad_id, "eos_id": prepared.eos_id,
        "candidates": list(prepared.candidates), "gold": list(prepared.gold),
        "prompts": [list(p) for p in prepared.prompts], "references": list(prepared.references), "n_rows": prepared.n_rows,
    }
    table = pa.table(
        {"input_ids": pa.array([list(e.input_ids) for e in prepared.examples], type=pa.list_(pa.int64())),
         "labels": pa.array([list(e.labels) for e in prepared.examples], type=pa.list_(pa.int64()))},
    ).replace_schema_metadata({"timevec.eval_split": json.dumps(meta)})
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _from_arrow(data: bytes) -> EvalSplit:
    import pyarrow as pa

    table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
    meta = json.loads(table.schema.metadata[b"timevec.eval_split"])
    examples = tuple(Example(input_ids=tuple(i), labels=tuple(lab))
                     for i, lab in zip(table.column("input_ids").to_pylist(), table.column("labels").to_pylist()))
    return EvalSplit(
        task=meta["task"], period=meta["period"], split=meta["split"], encoder_decoder=meta["encoder_decoder"],
        pad_id=meta["pad_id"], eos_id=meta["eos_id"], examples=examples, candidates=tuple(meta["candidates"]),
        gold=tuple(meta["gold"]), prompts=tuple(tuple(p) for p in meta["prompts"]), references=tuple(meta["references"]),
        n_rows=meta["n_rows"],
    )


def prepare_eval_sets(
    config: ExperimentConfig,
    wanted: Mapping[tuple[str, str], Iterable[str]] | None = None,
    splits: Sequence[Split] = ("test",),
    *,
    store: VectorStore | None = None,
    corpus: Corpus | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    keep_empty: bool = False,
) -> EvalSets:
    """The evaluation sets of every wanted (task, granularity) → periods, for each of ``splits``.

    ``wanted`` defaults to every configured task, granularity and period. With a ``store``, each set
    is read from ``<store>/examples/`` when it is there and written there when it is built (the
    corpus and the tokenizer are loaded only if some set is missing). An empty set has no metric:
    it is left out with a warning unless ``keep_empty``.
    """
    from timevec.data.models import base_is_encoder_decoder

    if wanted is None:
        wanted = {(t, g): config.period_list(g) for t in config.tasks for g in config.granularities}
    encoder_decoder = base_is_encoder_decoder(config.base)
    out: EvalSets = {name: {} for name in splits}
    for (task, granularity), periods in wanted.items():
        for name in splits:
            sets: dict[str, EvalSplit] = {}
            for period in sorted(set(periods), key=Period.parse):
                key = eval_set_key(config, task, period, name, encoder_decoder)
                path = f"{EXAMPLES_DIR}/{key}.arrow"
                if store is not None and store.exists_path(path):
                    prepared = _from_arrow(store.read_bytes(path))
                else:
                    if corpus is None:
                        from timevec.data.corpus import load_corpus

                        corpus = load_corpus(config.corpus)
                    if tokenizer is None:
                        from timevec.data.models import load_tokenizer

                        tokenizer = load_tokenizer(config.base)
                    prepared = prepare_split(task, corpus, period, tokenizer, encoder_decoder, config.evaluation, split=name)
                    if store is not None:
                        store.write_bytes(path, _to_arrow(prepared))
                if prepared.n_examples == 0 and not keep_empty:
                    log.warning("no %s %s examples in %s: left out", task, name, period)
                    continue
                sets[period] = prepared
            out[name][(task, granularity)] = sets
    return out
