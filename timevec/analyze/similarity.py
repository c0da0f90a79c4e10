"""Structure of the vectors: cosine similarity from the streamed Gram matrix, its link to degradation, UMAP.

The paper's second finding (Nylund et al. 2023, §4): vectors of nearby periods are more similar,
and similarity predicts how well a vector transfers. Everything starts from the Gram matrix that
the store computes in one streaming pass over the shard plan (never N vectors in memory); here it
becomes cosines (optionally centred on the mean vector of each (task, granularity)), a table, a
correlation with ``degradation_pct`` (:mod:`timevec.analyze.misalignment`) and a 2-D embedding.
Torch-free and Ray-free.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from timevec.analyze.misalignment import GROUP
from timevec.periods import Period

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (task, period) of a stored vector

__all__ = [
    "Key",
    "centre_gram",
    "correlate",
    "cosine_from_gram",
    "grouped_similarity",
    "key_groups",
    "similarity_table",
    "similarity_vs_degradation",
    "umap_embedding",
]




def _check_gram(gram: np.ndarray, keys: Sequence[Key]) -> np.ndarray:
    g = np.asarray(gram, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] != len(keys):
        raise ValueError(f"Gram matrix of shape {g.shape} does not match {len(keys)} keys")
    return (g + g.T) / 2.0  # streamed sums can be asymmetric in the last bits


def centre_gram(gram: np.ndarray) -> np.ndarray:
    """H G H with H = I − 11ᵀ/N: the Gram matrix of the vectors minus their mean.

    Every time vector shares a large "fine-tuned on this task at all" component; removing the mean
    τ exposes the time-specific part, which is where the paper's structure is clearest.
    """
    g = np.asarray(gram, dtype=np.float64)
    n = g.shape[0]
    h = np.eye(n) - np.full((n, n), 1.0 / n)
    return h @ g @ h


def cosine_from_gram(gram: np.ndarray) -> np.ndarray:
    """Cosine matrix from dot products; NaN for a zero-norm vector (undefined, not 0)."""
    g = np.asarray(gram, dtype=np.float64)
    d = np.sqrt(np.clip(np.diag(g), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = g / np.outer(d, d)
    tiny = d <= 1e-300
    cos[tiny, :] = np.nan
    cos[:, tiny] = np.nan
    return np.clip(cos, -1.0, 1.0)


def similarity_table(gram: np.ndarray, keys: Sequence[Key], centre: bool = False) -> pd.DataFrame:
    """All pairs (including self) of cosine similarity between time vectors, in long form.

    ``centre=True`` first removes the mean vector over ``keys`` (see :func:`centre_gram`). Long
    form keeps the table a plain Parquet schema: (task_a, period_a, task_b, period_b, cosine).
    """
    g = _check_gram(gram, keys)
    cos = cosine_from_gram(centre_gram(g) if centre else g)
    n = len(keys)
    tasks = [str(k[0]) for k in keys]
    periods = [str(k[1]) for k in keys]
    return pd.DataFrame({
        "task_a": np.repeat(tasks, n), "period_a": np.repeat(periods, n),
        "task_b": np.tile(tasks, n), "period_b": np.tile(periods, n),
        "cosine": cos.ravel(),
    })


def key_groups(keys: Sequence[Key]) -> dict[tuple[str, str], list[int]]:
    """Indices of ``keys`` per (task, granularity), each in time order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (task, period) in enumerate(keys):
        groups.setdefault((task, Period.parse(str(period)).granularity), []).append(i)
    return {g: sorted(idx, key=lambda i: Period.parse(str(keys[i][1])))
            for g, idx in sorted(groups.items())}


def grouped_similarity(gram: np.ndarray, keys: Sequence[Key], centre: bool = True) -> pd.DataFrame:
    """:func:`similarity_table` within each (task, granularity) group, centred per group.

    "Removing the mean τ" only makes sense among one task's time vectors: centring over several
    tasks at once subtracts a mix of task directions, and the remaining similarity is dominated by
    which task a vector belongs to rather than by time. Only within-group pairs are returned.
    """
    g = _check_gram(gram, keys)
    parts = []
    for idx in key_groups(keys).values():
        parts.append(similarity_table(g[np.ix_(idx, idx)], [keys[i] for i in idx], centre=centre))
    if not parts:
        return pd.DataFrame(columns=["task_a", "period_a", "task_b", "period_b", "cosine"])
    return pd.concat(parts, ignore_index=True)


def correlate(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Pearson (with its 95 % interval, Fisher z as scipy computes it) and Spearman with their
    p-values; NaN plus a ``reason`` where undefined (n < 3 or a constant variable), so a tiny study
    reports "cannot say" instead of raising. The cells paired here share vectors and test periods,
    so they are not independent draws: read the interval as a lower bound on the uncertainty."""
    out: dict[str, Any] = {"n": int(len(x)), "pearson_r": math.nan, "pearson_p": math.nan,
                           "pearson_low": math.nan, "pearson_high": math.nan,
                           "spearman_rho": math.nan, "spearman_p": math.nan, "reason": ""}
    if len(x) < 3:
        out["reason"] = f"only {len(x)} pairs; a correlation needs at least 3"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        out["reason"] = "one variable is constant; correlation undefined"
    else:
        pr = stats.pearsonr(x, y)
        sr = stats.spearmanr(x, y)
        out.update(pearson_r=float(pr.statistic), pearson_p=float(pr.pvalue),
                   spearman_rho=float(sr.statistic), spearman_p=float(sr.pvalue))
        if len(x) > 3 and abs(pr.statistic) < 1:
            ci = pr.confidence_interval(0.95)
            out.update(pearson_low=float(ci.low), pearson_high=float(ci.high))
    return out


def similarity_vs_degradation(sim: pd.DataFrame, rel: pd.DataFrame) -> dict[str, Any]:
    """Does a more similar pair of vectors lose less when one is used on the other's period?

    Each off-diagonal cell (vector of task t trained on period a, tested on period b) is paired with
    cosine(τ_t(a), τ_t(b)) of the same task and granularity. The paper finds a negative correlation
    with % change for perplexity; here the y-variable is ``degradation_pct`` (positive = worse) so
    that the expected sign is NEGATIVE for every metric. Cells whose test period has no vector of
    its own are skipped (there is no τ_b to compare with).

    Returns ``{"n", "pearson_r", "pearson_p", "pearson_low", "pearson_high", "spearman_rho",
    "spearman_p", "reason", "pairs", "by_group"}``: ``pairs`` is the paired DataFrame (task, granularity, metric, train_period,
    test_period, gap, cosine, degradation_pct) for plotting, ``by_group`` the same statistics per
    (task, granularity, metric).
    """
    pair_cols = ["task", "granularity", "metric", "train_period", "test_period", "gap", "cosine",
                 "degradation_pct"]
    if rel.empty or sim.empty:
        pairs = pd.DataFrame(columns=pair_cols)
    else:
        s = sim.loc[sim["task_a"] == sim["task_b"], ["task_a", "period_a", "period_b", "cosine"]]
        s = s.rename(columns={"task_a": "task", "period_a": "train_period",
                              "period_b": "test_period"})
        r = rel.loc[rel["train_period"] != rel["test_period"]]
        pairs = r.merge(s, on=["task", "train_period", "test_period"], how="inner")
        pairs = pairs.dropna(subset=["cosine", "degradation_pct"])[pair_cols].reset_index(drop=True)
    result = correlate(pairs["cosine"].to_numpy(dtype=float),
                   pairs["degradation_pct"].to_numpy(dtype=float))
    groups = []
    for (task, gran, metric), grp in (pairs.groupby(GROUP, sort=True) if not pairs.empty else []):
        c = correlate(grp["cosine"].to_numpy(dtype=float),
                      grp["degradation_pct"].to_numpy(dtype=float))
        groups.append({"task": task, "granularity": gran, "metric": metric, **c})
    result["pairs"] = pairs
    result["by_group"] = pd.DataFrame(groups, columns=[*GROUP, "n", "pearson_r", "pearson_p", "pearson_low",
                                                       "pearson_high", "spearman_rho", "spearman_p", "reason"])
    return result


def _classical_mds(cos: np.ndarray, dims: int = 2) -> np.ndarray:
    """Classical MDS of a cosine matrix (PCA of the unit vectors): exact, needs no neighbours."""
    n = cos.shape[0]
    c = np.nan_to_num(cos, nan=0.0)
    h = np.eye(n) - np.full((n, n), 1.0 / n)
    b = h @ c @ h
    vals, vecs = np.linalg.eigh((b + b.T) / 2)
    order = np.argsort(vals)[::-1][:dims]
    coords = vecs[:, order] * np.sqrt(np.clip(vals[order], 0.0, None))
    if coords.shape[1] < dims:
        coords = np.hstack([coords, np.zeros((n, dims - coords.shape[1]))])
    return coords


def umap_embedding(gram: np.ndarray, keys: Sequence[Key], seed: int = 42) -> pd.DataFrame:
    """2-D map of the time vectors (the paper's UMAP), from the Gram matrix alone.

    The vectors themselves are far too large to hand to UMAP; cosine distance 1 − cos is all it
    needs with ``metric='precomputed'``. ``n_neighbors`` is capped at N − 1 because UMAP cannot ask
    for more neighbours than there are points. Below 4 vectors UMAP's graph is degenerate, so the
    map falls back to classical MDS of the cosine matrix; the ``method`` column says which was used.
    """
    g = _check_gram(gram, keys)
    n = len(keys)
    cos = cosine_from_gram(g)
    method = "umap"
    coords: np.ndarray | None = None
    if n == 0:
        coords = np.zeros((0, 2))
    elif n < 4:
        method = "mds"
        log.info("umap_embedding: %d vectors is too few for UMAP; using classical MDS", n)
        coords = _classical_mds(cos)
    else:
        import umap  # deferred: numba start-up is slow and only this function needs it

        dist = np.clip(1.0 - np.nan_to_num(cos, nan=0.0), 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        dist = (dist + dist.T) / 2.0
        for init in ("spectral", "random"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    reducer = umap.UMAP(n_neighbors=min(15, n - 1), n_components=2,
                                        metric="precomputed", random_state=seed, init=init)
                    coords = np.asarray(reducer.fit_transform(dist), dtype=float)
                if np.isfinite(coords).all():
                    break
                log.warning("UMAP with init=%s gave non-finite coordinates", init)
            except Exception as exc:  # noqa: BLE001 - UMAP raises many types on tiny graphs
                log.warning("UMAP with init=%s failed (%s)", init, exc)
            coords = None
        if coords is None:
            method = "mds"
            log.warning("umap_embedding: UMAP failed; falling back to classical MDS")
            coords = _classical_mds(cos)
    assert coords is not None
    return pd.DataFrame({
        "task": [k[0] for k in keys], "period": [str(k[1]) for k in keys],
        "x": coords[:, 0] if n else [], "y": coords[:, 1] if n else [],
        "method": [method] * n,
    })
