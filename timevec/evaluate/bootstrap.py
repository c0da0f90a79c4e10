"""Percentile bootstrap intervals over a test split's examples, for every cell metric.

Why: a cell is one number computed from a few dozen to a few hundred test examples, and the
study's findings compare cells ("the own-period vector is best on this year"). Whether such a
difference is more than the luck of which examples landed in the test split needs the sampling
error of each number. Resampling the examples with replacement and recomputing the metric gives
it for a ratio (perplexity), a non-smooth statistic (macro-F1) and a mean (ROUGE-L) alike, with
no distributional assumption and no extra forward pass: only the per-example quantities the
evaluation already has are resampled.

Choices, and why:

- **The unit is one evaluated example**: an LM block, whose summed loss and token count are
  resampled together (paired), so a resample's perplexity exp(Σ loss / Σ tokens) weights blocks by
  their length exactly as the full-split perplexity does; a classified text, as its (gold,
  predicted) pair; a summarised document, as its ROUGE-L F.
- **Deterministic, shared resamples.** The index matrix depends only on (n examples, B, seed):
  block k of 256 resamples comes from ``np.random.default_rng(SeedSequence((seed, n, k)))``. Two
  evaluations of the same weights give identical intervals (a resumed matrix never mixes noise
  into its bounds), and every cell on the same test split is resampled with the SAME indices. The
  cells' bootstrap replicates are therefore paired, like the cells themselves (same examples, other
  weights): a difference between two cells, recomputed per resample, is a difference on identical
  example draws, and the intervals of two cells move together instead of adding independent
  resampling noise. (Disjoint intervals of two cells are a conservative sign of a real difference;
  :func:`timevec.analyze.misalignment.diagonal_summary` uses exactly that.) The first b resamples are
  the same for every B ≥ b.
- **Cheap**: a resample is stored as how often it draws each example, so every statistic is a
  few matrix products of that ``B × n`` count matrix with per-example vectors, and the matrix of a
  split is computed once and reused by every cell on it (up to :data:`CACHE_BYTES`; larger ones
  are rebuilt per call, in blocks of 256 resamples). A cell pays well under a millisecond for
  B = 1000 on the demo's splits (``bench/bootstrap_overhead.py``).
- **Percentile intervals**: the (1 − c)/2 and (1 + c)/2 quantiles (linear, as ``np.quantile``) of the B
  resampled statistics, at confidence c. They respect the metric's range (F1 in [0, 1]) and its
  transformations (perplexity = exp of the mean token loss); BCa would need a jackknife, n more
  statistics per cell, for a correction that matters little at these n.
- **numpy, not ``scipy.stats.bootstrap``**: scipy draws its resamples internally (their order
  depends on its ``batch`` argument and version) and calls the statistic per batch of resampled
  data, while the pairing above needs the very same indices for every metric, cell and library
  version, reused across cells as one count matrix; owning the index matrix is a few lines.
- **Off is NaN**: B = 0, or fewer than 2 examples, gives NaN bounds (there is no spread to
  estimate from a single example).

Torch-free and Ray-free; :func:`timevec.evaluate.metrics.evaluate` calls it for every cell.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "BLOCK",
    "CACHE_BYTES",
    "NO_INTERVAL",
    "Interval",
    "counts_of",
    "encode_labels",
    "macro_f1_interval",
    "macro_f1_of",
    "mean_interval",
    "mean_of",
    "percentile_interval",
    "perplexity_interval",
    "perplexity_of",
    "interval_of",
    "replicates",
    "resample_counts",
    "resample_indices",
]

#: resamples drawn per block (memory: BLOCK · n indices at a time)
BLOCK = 256
#: bytes of resample-count matrices kept for reuse (every cell of a split reuses the split's)
CACHE_BYTES = 64 * 2**20

Statistic = Callable[[np.ndarray], np.ndarray]  # a (b, n) resample-count matrix -> b values


class Interval(NamedTuple):
    """A bootstrap interval; NaN bounds when none was computed."""

    low: float
    high: float


NO_INTERVAL = Interval(math.nan, math.nan)


def resample_indices(n: int, samples: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The bootstrap's index matrix, ``samples × n`` indices into ``range(n)``, in blocks of rows.

    A function of ``(n, samples, seed)`` alone: every metric and every cell of one test split
    draws the same resamples (see the module docstring).
    """
    for k, start in enumerate(range(0, samples, BLOCK)):
        rng = np.random.default_rng(np.random.SeedSequence((seed, n, k)))
        yield rng.integers(0, n, size=(min(BLOCK, samples - start), n))


def counts_of(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` examples is drawn in each row of an index matrix: ``(b, n)`` float64.

    Every statistic is a matrix product with these counts (a resample's sum of x is counts @ x),
    which is what makes B resamples cost a few BLAS calls; integer-valued floats count exactly.
    """
    b = idx.shape[0]
    return np.bincount((np.arange(b)[:, None] * n + idx).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)


_cache: OrderedDict[tuple[int, int, int], tuple[np.ndarray, ...]] = OrderedDict()


def resample_counts(n: int, samples: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """:func:`counts_of` each block of :func:`resample_indices`; reused across calls while they fit
    in :data:`CACHE_BYTES` (an evaluation actor resamples the same splits for every vector)."""
    key = (n, samples, seed)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    blocks = tuple(counts_of(idx, n) for idx in resample_indices(n, samples, seed))
    if samples * n * 8 > CACHE_BYTES:
        return blocks
    whole = np.concatenate(blocks)  # one matrix: one product per statistic
    whole.flags.writeable = False
    _cache[key] = (whole,)
    while sum(v[0].nbytes for v in _cache.values()) > CACHE_BYTES:
        _cache.popitem(last=False)
    return _cache[key]


def percentile_interval(statistic: Statistic, n: int, samples: int = 1000, confidence: float = 0.95,
                        seed: int = 0) -> Interval:
    """The percentile interval of a vectorised ``statistic`` over ``samples`` resamples of ``n`` examples.

    ``statistic`` maps a ``(b, n)`` matrix of resample counts (:func:`resample_counts`) to b values.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if samples < 0:
        raise ValueError(f"samples must be ≥ 0, got {samples}")
    if samples == 0 or n < 2:
        return NO_INTERVAL
    tail = (1.0 - confidence) / 2.0
    return Interval(*_quantiles(replicates(statistic, n, samples, seed), (tail, 1.0 - tail)))


def replicates(statistic: Statistic, n: int, samples: int = 1000, seed: int = 0) -> np.ndarray:
    """The ``samples`` resampled values of ``statistic`` (the shared resamples of ``(n, seed)``), in
    resample order: replicate b of two cells on the same split used the same example draw, so a
    function of several cells (a gap share) recomputed per b is a paired bootstrap of it. Empty when
    ``samples`` is 0 or ``n`` < 2."""
    if samples == 0 or n < 2:
        return np.empty(0)
    blocks = resample_counts(n, samples, seed)
    values = statistic(blocks[0]) if len(blocks) == 1 else np.concatenate([statistic(w) for w in blocks])
    return np.asarray(values, dtype=np.float64)


def interval_of(values: np.ndarray, confidence: float = 0.95) -> Interval:
    """The percentile interval of resampled values (NaN values, e.g. an undefined ratio, left out);
    :data:`NO_INTERVAL` when none is left."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return NO_INTERVAL
    tail = (1.0 - confidence) / 2.0
    return Interval(*_quantiles(values, (tail, 1.0 - tail)))


def _quantiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.quantile(values, qs)`` (linear interpolation) from one partial sort: a few times faster
    for B values than ``np.quantile``, which matters at a cell's millisecond scale."""
    positions = [q * (len(values) - 1) for q in qs]
    below = [math.floor(h) for h in positions]
    kth = sorted({k for b in below for k in (b, min(b + 1, len(values) - 1))})
    part = np.partition(values, kth)
    out = []
    for h, b in zip(positions, below):
        a, c = float(part[b]), float(part[min(b + 1, len(values) - 1)])
        t = h - b
        out.append(a if t == 0 or a == c else a + (c - a) * t)  # a == c: also an inf bound stays inf
    return out


# ----------------------------------------------------------------------------- the statistics
# Each takes the per-example data and a (b, n) matrix of resample counts and returns the b
# resampled values; np.ones((1, n)) (every example once) gives the metric of the whole split.


def perplexity_of(loss_sums: np.ndarray, token_counts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """exp(Σ loss / Σ tokens) of each resample: an example's loss sum and token count stay paired."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.exp((counts @ loss_sums) / (counts @ token_counts.astype(np.float64)))


def encode_labels(gold: Sequence[str], pred: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Integer codes of gold and predicted labels into the sorted union of the FULL sample's labels."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predictions")
    labels = sorted(set(gold) | set(pred))
    code = {label: i for i, label in enumerate(labels)}
    return (np.fromiter((code[g] for g in gold), np.int64, len(gold)),
            np.fromiter((code[p] for p in pred), np.int64, len(pred)), labels)


def macro_f1_of(gold: np.ndarray, pred: np.ndarray, n_labels: int, counts: np.ndarray) -> np.ndarray:
    """Macro-F1 of each resample, :func:`timevec.evaluate.metrics.macro_f1` vectorised over the rows of ``counts``.

    ``gold``/``pred`` are codes from :func:`encode_labels`: the label set is the union over the
    full sample. Within a resample the mean runs, as ``macro_f1``'s does on that resample, over the
    labels that occur in it (as gold or as prediction); a label that drew no example neither scores
    0 nor counts. TP, gold and predicted counts per (resample, label) are one matrix product each
    with one-hot labels (exact: integer-valued floats); labels are summed in sorted order, so each
    value equals ``macro_f1`` on the resampled lists.
    """
    eye = np.eye(n_labels)
    one_gold, one_pred = eye[gold], eye[pred]
    tp = counts @ (one_gold * (gold == pred)[:, None])
    denominator = counts @ one_gold + counts @ one_pred  # = 2·TP + FP + FN
    present = denominator > 0
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=present)
    total = np.zeros(len(counts))
    for label in range(n_labels):  # in label order, as macro_f1 sums (absent labels add 0.0)
        total += f1[:, label]
    return total / present.sum(axis=1)


def mean_of(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of per-example scores (ROUGE-L F) in each resample."""
    return (counts @ scores) / counts.shape[1]


# ----------------------------------------------------------------------------- per metric


def perplexity_interval(loss_sums: Sequence[float] | np.ndarray, token_counts: Sequence[int] | np.ndarray,
                        samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Interval of exp(Σ loss / Σ tokens) over LM blocks (loss sum and token count per block)."""
    loss, tokens = np.asarray(loss_sums, dtype=np.float64), np.asarray(token_counts, dtype=np.int64)
    if loss.shape != tokens.shape:
        raise ValueError(f"{loss.shape} loss sums but {tokens.shape} token counts")
    return percentile_interval(lambda w: perplexity_of(loss, tokens, w), len(loss), samples, confidence, seed)


def macro_f1_interval(gold: Sequence[str], pred: Sequence[str], samples: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> Interval:
    """Interval of macro-F1 over (gold, predicted) pairs."""
    g, p, labels = encode_labels(gold, pred)
    return percentile_interval(lambda w: macro_f1_of(g, p, len(labels), w), len(g), samples, confidence, seed)


def mean_interval(scores: Sequence[float] | np.ndarray, samples: int = 1000, confidence: float = 0.95,
                  seed: int = 0) -> Interval:
    """Interval of the mean of per-example scores (ROUGE-L F of each summary)."""
    x = np.asarray(scores, dtype=np.float64)
    return percentile_interval(lambda w: mean_of(x, w), len(x), samples, confidence, seed)
