"""A cell's per-example statistics, and two cells compared on the examples both scored.

Why: under ``evaluation.target_halfwidth`` (:mod:`timevec.evaluate.sequential`) each cell scores a
prefix of its test split's seeded example order, as long as its own precision needs, so two cells of
one split may have scored different numbers of examples. A difference between them (a gain over the
latest vector, a gap share) is only paired — the same examples under other weights, as the
bootstrap's shared resamples assume (:mod:`timevec.evaluate.bootstrap`) — on the examples BOTH
scored: the shorter cell's, the common prefix of the two orders. :class:`ExampleStats` keeps what
the metric needs of every scored example (no forward pass is repeated), so the longer cell's value
and bootstrap replicates can be recomputed on that prefix; the replicates of an m-example prefix are
the shared resamples of (m, B, seed), so the two cells' replicates stay paired draw by draw.

The statistics of each metric are :mod:`timevec.evaluate.bootstrap`'s (one implementation): the
value of a cell is its statistic with every example counted once. Torch-free and Ray-free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from timevec.evaluate import bootstrap
from timevec.evaluate.bootstrap import Interval, Statistic

__all__ = ["EXAMPLES", "ExampleStats", "on_common_prefix"]

#: The key of an evaluation row (:func:`timevec.evaluate.metrics.evaluate`) that holds its :class:`ExampleStats`.
EXAMPLES = "examples"


def _floats(values: Any = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _ints(values: Any = ()) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass(frozen=True, eq=False)
class ExampleStats:
    """What one cell's metric needs of each example it scored, in the order it scored them.

    ``perplexity``: ``loss`` (summed over an LM block) and ``tokens`` (scored in it); ``macro_f1``:
    ``gold`` and ``pred`` labels of each text; ``rougeL``: ``score``, each summary's ROUGE-L F.
    ``samples``/``seed``: the bootstrap the cell was resampled with (``evaluation.bootstrap_samples``,
    ``bootstrap_seed``), so that a prefix is resampled the same way.
    """

    metric: str
    loss: np.ndarray = field(default_factory=_floats)
    tokens: np.ndarray = field(default_factory=_ints)
    gold: tuple[str, ...] = ()
    pred: tuple[str, ...] = ()
    score: np.ndarray = field(default_factory=_floats)
    samples: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in ("perplexity", "macro_f1", "rougeL"):
            raise ValueError(f"unknown metric {self.metric!r}")
        object.__setattr__(self, "loss", _floats(self.loss))
        object.__setattr__(self, "tokens", _ints(self.tokens))
        object.__setattr__(self, "score", _floats(self.score))
        object.__setattr__(self, "gold", tuple(map(str, self.gold)))
        object.__setattr__(self, "pred", tuple(map(str, self.pred)))
        if len(self.loss) != len(self.tokens) or len(self.gold) != len(self.pred):
            raise ValueError(f"{self.metric}: {len(self.loss)} losses for {len(self.tokens)} token counts, "
                             f"{len(self.gold)} gold labels for {len(self.pred)} predictions")

    def __len__(self) -> int:
        if self.metric == "perplexity":
            return len(self.loss)
        if self.metric == "macro_f1":
            return len(self.gold)
        return len(self.score)

    def prefix(self, m: int) -> ExampleStats:
        """The statistics of the first ``m`` examples (all of them when ``m`` ≥ their number)."""
        return replace(self, loss=self.loss[:m], tokens=self.tokens[:m], gold=self.gold[:m], pred=self.pred[:m],
                       score=self.score[:m])

    def __add__(self, other: ExampleStats) -> ExampleStats:
        """These examples followed by ``other``'s (a sequential evaluation's next block)."""
        if other.metric != self.metric:
            raise ValueError(f"cannot join {self.metric} and {other.metric} statistics")
        return replace(self, loss=np.concatenate([self.loss, other.loss]),
                       tokens=np.concatenate([self.tokens, other.tokens]), gold=self.gold + other.gold,
                       pred=self.pred + other.pred, score=np.concatenate([self.score, other.score]))

    def statistic(self) -> Statistic:
        """The metric of a ``(b, n)`` matrix of example counts (:mod:`timevec.evaluate.bootstrap`'s functions)."""
        if self.metric == "perplexity":
            loss, tokens = self.loss, self.tokens
            return lambda w: bootstrap.perplexity_of(loss, tokens, w)
        if self.metric == "macro_f1":
            g, p, labels = bootstrap.encode_labels(self.gold, self.pred)
            return lambda w: bootstrap.macro_f1_of(g, p, len(labels), w)
        x = self.score
        return lambda w: bootstrap.mean_of(x, w)

    def value(self) -> float:
        """The metric over every example once; with none: perplexity inf, macro-F1 and ROUGE-L 0 (as
        :func:`timevec.evaluate.metrics.evaluate`)."""
        n = len(self)
        if n == 0:
            return math.inf if self.metric == "perplexity" else 0.0
        return float(self.statistic()(np.ones((1, n)))[0])

    def replicates(self) -> np.ndarray:
        """The ``samples`` bootstrap values over the shared resamples of (n, samples, seed)."""
        return bootstrap.replicates(self.statistic(), len(self), self.samples, self.seed)

    def interval(self, confidence: float) -> Interval:
        """The percentile interval of :meth:`value` (:func:`bootstrap.percentile_interval`)."""
        return bootstrap.percentile_interval(self.statistic(), len(self), self.samples, confidence, self.seed)

    def as_row(self) -> dict[str, Any]:
        """The columns of the ``cell_examples`` table (:data:`timevec.results.CELL_EXAMPLES_SCHEMA`): the
        lists the metric does not use are null."""
        ppl, f1, rouge = (self.metric == m for m in ("perplexity", "macro_f1", "rougeL"))
        return {"metric": self.metric, "n_examples": len(self),
                "loss": self.loss if ppl else None, "tokens": self.tokens if ppl else None,
                "gold": list(self.gold) if f1 else None, "pred": list(self.pred) if f1 else None,
                "score": self.score if rouge else None}

    @classmethod
    def from_row(cls, row: Mapping[str, Any], samples: int, seed: int) -> ExampleStats:
        """A ``cell_examples`` row back as statistics (null lists: empty), resampled with ``samples``/``seed``."""
        def get(name: str) -> Any:
            value = row.get(name)
            return () if value is None or (isinstance(value, float) and math.isnan(value)) else value

        return cls(str(row["metric"]), _floats(get("loss")), _ints(get("tokens")), tuple(get("gold")),
                   tuple(get("pred")), _floats(get("score")), samples, seed)


def on_common_prefix(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Evaluation rows restricted to the examples every one of them scored, for a paired comparison.

    With per-example statistics (:data:`EXAMPLES`; rows of one test split under
    ``evaluation.target_halfwidth``), the common prefix is the fewest examples any row scored, m: a row
    that scored more gets ``value`` (and ``replicates``, when it has them) recomputed on its first m
    examples and ``n_examples`` = m; a row that scored exactly m keeps its own numbers (they are those of
    the same m examples). Rows of which one lacks the statistics (every row scored the whole split:
    the target is off) come back unchanged.
    """
    out = [dict(row) for row in rows]
    stats: list[ExampleStats] = [row[EXAMPLES] for row in rows if row.get(EXAMPLES) is not None]
    if not stats or len(stats) < len(rows):
        return out
    m = min(len(s) for s in stats)
    for row, s in zip(out, stats):
        if len(s) > m:
            cut = s.prefix(m)
            row.update(value=cut.value(), n_examples=m, **{EXAMPLES: cut})
            if "replicates" in row:
                row["replicates"] = cut.replicates()
    return out
