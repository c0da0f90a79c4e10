"""The evaluation design: which cells of a train-period × test-period matrix the evaluate stage evaluates.

Why a design: the all-pairs matrix costs N² evaluations and grows by 2N − 1 with each period, while its
structure (test-period difficulty, vector quality, decay with the gap) lets a completion model
(:mod:`timevec.analyze.completion`) estimate the cells left out, each with an interval. The design is the
diagonal band ``|gap| <= band`` — where the structure changes fastest, and the cells the adaptation
stages need exactly (a period's own vector, the latest one before it) — plus each other cell with
probability ``fraction``, decided by a hash of ``(seed, train period, test period)``: a cell's choice never
depends on the other periods, so the design of a matrix extended by LATER periods contains the earlier
design and adding a period evaluates only the design's new cells. Every row and column then gets at
least two cells (needed to identify its effect): a row ``i`` whose cells at test periods ``<= i`` number
fewer than two gets the nearest of those, then the nearest later ones; a column ``j`` likewise counts
train periods ``<= j``. (A period added BEFORE the others keeps every hashed choice, but a top-up may move.)
Standard library, numpy and :mod:`timevec.periods` only.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence

import numpy as np

from timevec.periods import Period

__all__ = ["design_cells", "gaps_of"]


def _uniform(seed: int, train: str, test: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, train period, test period)."""
    digest = hashlib.blake2b(f"{seed}|{train}|{test}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def gaps_of(train_periods: Sequence[str], test_periods: Sequence[str]) -> np.ndarray:
    """``gaps[i, j]``: test period j minus train period i, in the granularity's units."""
    train = [Period.parse(p) for p in train_periods]
    return np.array([[t.distance(s) for s in test_periods] for t in train], dtype=np.int64)


def design_cells(train_periods: Iterable[str], test_periods: Iterable[str], band: int, fraction: float,
                 seed: int) -> set[tuple[str, str]]:
    """The ``(train period, test period)`` cells to evaluate: the band ``|gap| <= band``, a hashed
    random ``fraction`` of the others, and top-ups so that every row and column has two (module doc)."""
    if band < 0 or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"band must be >= 0 and fraction in [0, 1], got band={band}, fraction={fraction}")
    rows = [str(p) for p in sorted({Period.parse(p) for p in train_periods})]
    cols = [str(p) for p in sorted({Period.parse(p) for p in test_periods})]
    gaps = gaps_of(rows, cols)
    chosen = {(rows[i], cols[j]) for i, j in zip(*np.nonzero(np.abs(gaps) <= band))}
    chosen |= {(r, c) for r, c in itertools.product(rows, cols)
               if (r, c) not in chosen and _uniform(seed, r, c) < fraction}
    for i, r in enumerate(rows):  # test periods up to the row's own count (gap <= 0); later ones are appended
        _top_up(chosen, [(r, cols[j]) for j in range(len(cols))], gaps[i, :], earlier=gaps[i, :] <= 0)
    for j, c in enumerate(cols):  # train periods up to the column's own count (gap >= 0)
        _top_up(chosen, [(rows[i], c) for i in range(len(rows))], -gaps[:, j], earlier=gaps[:, j] >= 0)
    return chosen


def _top_up(chosen: set[tuple[str, str]], line: list[tuple[str, str]], gaps: np.ndarray, earlier: np.ndarray) -> None:
    """Give one row (column) two cells: walk its earlier side nearest first, then its later side nearest
    first, adding cells until two are counted; a later-side cell already chosen counts as it is passed
    (counting all of them would count periods added later, and change the earlier design)."""
    needed = 2 - sum(1 for cell, e in zip(line, earlier) if e and cell in chosen)
    order = sorted(range(len(line)), key=lambda k: (not earlier[k], abs(int(gaps[k]))))
    for k in order:
        if needed <= 0:
            break
        if line[k] not in chosen:
            chosen.add(line[k])
            needed -= 1
        elif not earlier[k]:
            needed -= 1
