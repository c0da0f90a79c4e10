"""Metrics of one weight state on one test split: perplexity, macro-F1, ROUGE-L.

Two halves, on purpose:

- :func:`timevec.data.examples.prepare_split` turns one period's test rows into token ids ONCE
  (:func:`~timevec.data.examples.prepare_eval_sets`, once per study). The all-pairs matrix evaluates
  every test split under every vector, so tokenising per cell would repeat the same work N times; an
  :class:`~timevec.data.examples.EvalSplit` is a plain picklable value that the cell stage puts in
  Ray's object store and every evaluation actor shares.
- :func:`evaluate` runs the model over a prepared split. It is deterministic (``model.eval()``,
  ``torch.inference_mode``, a fixed batch order), so two evaluations of the same weights give the
  same number and the matrix can be resumed cell by cell without mixing noise into it.

The metric helpers (:func:`macro_f1`, :func:`rouge_l`) are pure functions of strings so that
tests can check them against hand-computed values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from timevec.config import EvaluationConfig
from timevec.data.examples import EvalSplit, EvaluationError
from timevec.data.models import (
    IGNORE,
    Example,
    collate,
    is_encoder_decoder,
    token_losses,
)
from timevec.evaluate.per_example import EXAMPLES, ExampleStats
from timevec.evaluate.sequential import example_order, halfwidth, to_precision

log = logging.getLogger(__name__)

#: metric name and direction of each task (the ``metric`` column of the cells table)
METRICS: dict[str, tuple[str, bool]] = {
    "lm": ("perplexity", False),
    "classification": ("macro_f1", True),
    "summarization": ("rougeL", True),
}


# ----------------------------------------------------------------------------- metric helpers


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Macro-averaged F1 over the labels present in ``gold ∪ pred``.

    The same definition as ``sklearn.metrics.f1_score(gold, pred, average="macro")``: per label
    F1 = 2·TP / (2·TP + FP + FN), unweighted mean over the union of labels (a label that is only
    ever predicted counts with F1 = 0). Computed by hand so the library needs no scikit-learn.
    """
    if len(gold) != len(pred):
        raise ValueError(f"macro_f1: {len(gold)} gold labels but {len(pred)} predictions")
    if not gold:
        return 0.0
    labels = sorted(set(gold) | set(pred))
    scores = []
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred) if g == label and p != label)
        denominator = 2 * tp + fp + fn
        scores.append(2 * tp / denominator if denominator else 0.0)
    return sum(scores) / len(scores)


_ROUGE_SCORERS: dict[bool, object] = {}


def rouge_l(references: Sequence[str], hypotheses: Sequence[str], use_stemmer: bool = True) -> float:
    """Mean ROUGE-L F-measure (``rouge-score``, sentence-level LCS) over pairs, in [0, 1].

    Stemming is on by default, as in Hugging Face's summarisation scripts; an empty hypothesis
    scores 0.
    """
    scores = rouge_l_scores(references, hypotheses, use_stemmer)
    return sum(scores) / len(scores) if scores else 0.0


def rouge_l_scores(references: Sequence[str], hypotheses: Sequence[str], use_stemmer: bool = True) -> list[float]:
    """The ROUGE-L F-measure of each (reference, hypothesis) pair (:func:`rouge_l` is their mean)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"rouge_l: {len(references)} references but {len(hypotheses)} hypotheses")
    scorer = _ROUGE_SCORERS.get(use_stemmer)
    if scorer is None:
        from timevec.errors import require_extra

        rouge_scorer = require_extra("rouge_score.rouge_scorer", "summarization", "the summarization task's ROUGE-L")

        scorer = _ROUGE_SCORERS[use_stemmer] = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return [scorer.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in zip(references, hypotheses)]  # type: ignore[attr-defined]  # rouge_score is untyped


# ----------------------------------------------------------------------------- test splits


# ----------------------------------------------------------------------------- evaluation


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _score(
    model: PreTrainedModel, examples: Sequence[Example], split: EvalSplit, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and scored-token count of every example (float64 / int64, input order).

    Examples are batched in order of length (stable), which keeps padding small; the order is a
    function of the split alone, so results are reproducible.
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids) + len(examples[i].labels))
    sums = torch.zeros(len(examples), dtype=torch.float64)
    counts = torch.zeros(len(examples), dtype=torch.int64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([examples[i] for i in idx], split.pad_id, split.encoder_decoder)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        loss, n = token_losses(model, batch)
        index = torch.tensor(idx)
        sums[index] = loss.double().cpu()
        counts[index] = n.cpu()
    return sums, counts


def _generate(
    model: PreTrainedModel,
    split: EvalSplit,
    tokenizer: PreTrainedTokenizerBase,
    eval_cfg: EvaluationConfig,
    device: torch.device,
) -> tuple[list[str], int]:
    """Greedy summaries of the split (decoded text, generated-token count)."""
    if split.encoder_decoder:
        prompts = [e.input_ids for e in split.examples]
    else:
        prompts = list(split.prompts)
    hypotheses: list[str] = []
    generated = 0
    eos, pad = split.eos_id, split.pad_id
    for start in range(0, len(prompts), eval_cfg.batch_size):
        chunk = prompts[start : start + eval_cfg.batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, prompt in enumerate(chunk):
            if split.encoder_decoder:  # the encoder is bidirectional: pad on the right
                input_ids[i, : len(prompt)] = torch.tensor(prompt)
                attention[i, : len(prompt)] = 1
            else:  # a causal model continues from the last position: pad on the left
                input_ids[i, width - len(prompt) :] = torch.tensor(prompt)
                attention[i, width - len(prompt) :] = 1
        output = model.generate(  # type: ignore[operator]  # GenerationMixin.generate, seen as a Module attribute
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=eval_cfg.summary_max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        new = output if split.encoder_decoder else output[:, width:]
        for row in new.tolist():
            tokens = []
            for token in row:
                if token == eos:
                    break
                tokens.append(token)
            if split.encoder_decoder and tokens and tokens[0] == pad:  # decoder start token
                tokens = tokens[1:]
            tokens = [t for t in tokens if t != pad]
            generated += len(tokens)
            hypotheses.append(tokenizer.decode(tokens, skip_special_tokens=True))  # type: ignore[arg-type]  # one sequence decodes to one str
    return hypotheses, generated


def classify(model: PreTrainedModel, split: EvalSplit, batch_size: int, device: torch.device | None = None) -> tuple[list[str], int]:
    """Predicted label of every text (highest summed log-likelihood) and the scored-token count.

    Ties go to the first candidate in sorted label order (``torch.argmax`` returns the first
    maximum), so predictions never depend on batch composition or dictionary order.
    """
    device = device or _model_device(model)
    loglik, n_tokens = candidate_logliks(model, split, batch_size, device)
    best = torch.argmax(loglik, dim=1).tolist() if len(split.gold) else []
    return [split.candidates[i] for i in best], n_tokens


def _shared_prompts(split: EvalSplit) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(one prompt per text, one target per example): the prompt that every candidate of a text shares.

    Decoder-only examples are ``prompt + target`` with the prompt masked; encoder-decoder examples
    have the prompt as encoder input. :func:`prepare_split` truncates a text's prompt once for all
    of its candidates, which is what lets the prompt run once.
    """
    n_labels = len(split.candidates)
    prompts: list[tuple[int, ...]] = []
    targets: list[tuple[int, ...]] = []
    for row in range(len(split.gold)):
        group = split.examples[row * n_labels : (row + 1) * n_labels]
        cut = [0 if split.encoder_decoder else sum(1 for t in e.labels if t == IGNORE) for e in group]
        own = [e.input_ids if split.encoder_decoder else e.input_ids[:c] for e, c in zip(group, cut)]
        if any(p != own[0] for p in own):
            raise EvaluationError(
                f"classification/{split.period}: the candidates of text {row} do not share one prompt "
                "(prepare the split with timevec.data.examples.prepare_split)"
            )
        prompts.append(own[0])
        targets.extend(e.labels if split.encoder_decoder else e.input_ids[c:] for e, c in zip(group, cut))
    return prompts, targets


def candidate_logliks(
    model: PreTrainedModel, split: EvalSplit, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """``[texts, candidates]`` summed log-likelihoods of every label, and the scored-token count.

    The prompt (a tweet is ~15× longer than its label) runs through the model ONCE per text and
    only the candidates' few tokens run per candidate: the decoder-only model continues from the
    prompt's key/value cache, the encoder-decoder model's encoder output is shared. That makes
    classification about as cheap as one LM pass over the texts instead of one per label. The
    scores equal scoring each ``prompt + candidate`` sequence alone (up to float rounding; a test
    checks it). ``batch_size`` counts (text, candidate) sequences, as for the other tasks.
    """
    n_labels = len(split.candidates)
    prompts, targets = _shared_prompts(split)
    sums = torch.zeros(len(prompts), n_labels, dtype=torch.float64)
    n_tokens = 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts_per_batch = max(1, batch_size // max(n_labels, 1))
    for start in range(0, len(order), texts_per_batch):
        idx = order[start : start + texts_per_batch]
        prompt_ids, prompt_mask = _pad([prompts[i] for i in idx], split.pad_id)
        target_ids, target_mask = _pad([targets[i * n_labels + c] for i in idx for c in range(n_labels)], split.pad_id)
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        target_ids, target_mask = target_ids.to(device), target_mask.to(device)
        if split.encoder_decoder:
            encoded = model.get_encoder()(input_ids=prompt_ids, attention_mask=prompt_mask).last_hidden_state
            logits = model(
                encoder_outputs=(encoded.repeat_interleave(n_labels, dim=0),),
                attention_mask=prompt_mask.repeat_interleave(n_labels, dim=0),
                labels=target_ids.masked_fill(target_mask == 0, IGNORE),
            ).logits
        else:
            out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
            lengths = prompt_mask.sum(dim=1)
            last = out.logits[torch.arange(len(idx), device=device), lengths - 1]  # predicts each target's 1st token
            cache = out.cache
            cache.batch_repeat_interleave(n_labels)
            positions = lengths.repeat_interleave(n_labels)[:, None] + torch.arange(target_ids.size(1), device=device)
            rest = model(
                input_ids=target_ids,
                attention_mask=torch.cat([prompt_mask.repeat_interleave(n_labels, dim=0), target_mask], dim=1),
                position_ids=positions,
                cache=cache,
            ).logits
            logits = torch.cat([last.repeat_interleave(n_labels, dim=0)[:, None], rest[:, :-1]], dim=1)
        losses = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction="none"
        ).view(target_ids.shape)
        sums[torch.tensor(idx)] = -(losses * target_mask).sum(dim=1).double().cpu().view(len(idx), n_labels)
        n_tokens += int(target_mask.sum())
    return sums, n_tokens


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def example_stats(
    model: PreTrainedModel, split: EvalSplit, eval_cfg: EvaluationConfig, device: torch.device,
    tokenizer: PreTrainedTokenizerBase | None,
) -> tuple[ExampleStats, int, float]:
    """Every example of ``split`` scored, in its order: (their statistics, the scored or generated token
    count, the metric over the whole split). The value is computed as it always was (the statistics'
    own :meth:`~ExampleStats.value` may differ from it in the last bit for perplexity)."""
    metric, _ = METRICS[split.task]
    samples, seed = eval_cfg.bootstrap_samples, eval_cfg.bootstrap_seed
    if split.task == "lm":
        sums, counts = _score(model, split.examples, split, eval_cfg.batch_size, device)
        n_tokens = int(counts.sum())
        value = math.exp(float(sums.sum()) / n_tokens) if n_tokens else math.inf
        stats = ExampleStats(metric, loss=sums.numpy(), tokens=counts.numpy(), samples=samples, seed=seed)
        return stats, n_tokens, value
    if split.task == "classification":
        pred, n_tokens = classify(model, split, eval_cfg.batch_size, device)
        stats = ExampleStats(metric, gold=split.gold, pred=tuple(pred), samples=samples, seed=seed)
        return stats, n_tokens, macro_f1(list(split.gold), pred)
    if tokenizer is None:
        raise EvaluationError("summarization needs the tokenizer to decode the generated summaries")
    hypotheses, n_tokens = _generate(model, split, tokenizer, eval_cfg, device)
    scores = rouge_l_scores(list(split.references), hypotheses)
    value = sum(scores) / len(scores) if scores else 0.0  # = rouge_l(references, hypotheses)
    return ExampleStats(metric, score=np.asarray(scores, dtype=np.float64), samples=samples, seed=seed), n_tokens, value


def evaluate(
    model: PreTrainedModel,
    split: EvalSplit,
    eval_cfg: EvaluationConfig,
    device: torch.device | str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    keep_replicates: bool = False,
) -> dict:
    """The task metric of ``model`` (as it is now) on ``split``.

    Returns ``{metric, value, low, high, halfwidth, higher_is_better, n_examples, n_tokens}``: perplexity =
    exp(total loss / total tokens) over the whole split (lm); macro-F1 of likelihood-scored labels
    (classification); mean ROUGE-L F of greedy summaries (summarization; needs ``tokenizer`` to
    decode). ``low``/``high``: the percentile bootstrap interval of ``value`` over the split's
    examples (:mod:`timevec.evaluate.bootstrap`; ``eval_cfg.bootstrap_samples`` resamples at
    ``eval_cfg.confidence``), NaN when it is off or the split has fewer than 2 examples; ``halfwidth``:
    its half-width, in percent of the value for perplexity and in points for macro-F1 and ROUGE-L
    (:func:`timevec.evaluate.sequential.halfwidth`).
    ``keep_replicates``: also ``replicates``, the B resampled values (:func:`timevec.evaluate.bootstrap.replicates`:
    the same draws for every cell of the split, so functions of several cells can be bootstrapped paired).
    ``n_tokens`` counts the tokens the model scored (lm, classification: over every candidate) or
    generated (summarization). The model is put in eval mode and left on its device; ``device``
    defaults to the model's.

    With ``eval_cfg.target_halfwidth`` set, the examples are scored in blocks in the split's seeded
    order until that precision is reached (:func:`timevec.evaluate.sequential.to_precision`):
    ``n_examples`` counts the examples scored, and ``examples`` holds their
    :class:`~timevec.evaluate.per_example.ExampleStats`, for comparisons on a common prefix.
    """
    if split.encoder_decoder != is_encoder_decoder(model):
        raise EvaluationError(
            f"{split.task}/{split.period}: split was tokenised for encoder_decoder={split.encoder_decoder}, "
            f"the model is encoder_decoder={is_encoder_decoder(model)}"
        )
    device = torch.device(device) if device is not None else _model_device(model)
    metric, higher = METRICS[split.task]
    target = eval_cfg.target_halfwidth if split.n_examples > 0 else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if target is None:
                stats, n_tokens, value = example_stats(model, split, eval_cfg, device, tokenizer)
                interval = stats.interval(eval_cfg.confidence)
            else:
                tokens = [0]

                def score(indices: np.ndarray) -> ExampleStats:
                    block, n, _ = example_stats(model, split.subset(indices), eval_cfg, device, tokenizer)
                    tokens[0] += n
                    return block

                order = example_order(split.n_examples, eval_cfg.bootstrap_seed, split.task, split.period, split.split)
                stats, interval = to_precision(order, eval_cfg.block_examples, target, score, eval_cfg.confidence)
                n_tokens, value = tokens[0], stats.value()
    finally:
        if was_training:
            model.train()
    out = {
        "metric": metric,
        "value": float(value),
        "low": interval.low,
        "high": interval.high,
        "halfwidth": halfwidth(metric, float(value), interval),
        "higher_is_better": higher,
        "n_examples": len(stats),
        "n_tokens": n_tokens,
    }
    if target is not None:
        out[EXAMPLES] = stats
    if keep_replicates:
        out["replicates"] = stats.replicates()
    return out
