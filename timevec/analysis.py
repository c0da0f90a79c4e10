"""Analysis of the cell, similarity, interpolation and analogy tables.

Everything here is a pure function of DataFrames and NumPy arrays, so that the same numbers come
out whether the tables were produced on a laptop or by a Ray cluster, and so that each function can
be tested on a hand-computed case. Nothing here imports Ray or torch.

Sign conventions (used by every function and figure):

* ``pct_change`` is the paper's relative change of a cell against the mean of its test period
  (the column mean over all trained vectors), in percent, in the metric's own direction.
* ``degradation_pct`` is ``pct_change`` signed so that POSITIVE means WORSE whatever the metric:
  perplexity keeps its sign, macro-F1 and ROUGE-L are negated. Comparisons across tasks, decay fits
  and correlations use it so that a single reading ("up is bad") holds everywhere.
* ``gap`` is ``test_period - train_period`` in the granularity's units (years or months); a positive
  gap means the model is evaluated on a later period than it was trained on.
* ``gain*`` columns are improvements: POSITIVE means BETTER than the baseline they name.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from timevec.periods import Period

log = logging.getLogger(__name__)

Key = tuple[str, str]

#: Metric directions for tables that carry no ``higher_is_better`` column (the analogy table).
METRIC_HIGHER_IS_BETTER: dict[str, bool] = {
    "perplexity": False,
    "loss": False,
    "macro_f1": True,
    "accuracy": True,
    "rougeL": True,
    "rouge_l": True,
}

_GROUP = ["task", "granularity", "metric"]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def higher_is_better(metric: str) -> bool:
    """Direction of a metric by name; an unknown metric is an error rather than a silent guess."""
    try:
        return METRIC_HIGHER_IS_BETTER[metric]
    except KeyError as exc:
        raise ValueError(
            f"unknown metric {metric!r}: known are {sorted(METRIC_HIGHER_IS_BETTER)}"
        ) from exc


def improvement(value: Any, baseline: Any, higher: bool) -> Any:
    """``value`` minus ``baseline`` signed so that positive means ``value`` is better."""
    diff = np.asarray(value, dtype=float) - np.asarray(baseline, dtype=float)
    return diff if higher else -diff


def improvement_pct(value: Any, baseline: Any, higher: bool) -> Any:
    """:func:`improvement` as a percentage of ``|baseline|`` (NaN where the baseline is 0)."""
    base = np.asarray(baseline, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = improvement(value, base, higher) / np.abs(base) * 100.0
    return np.where(np.abs(base) > 0, out, np.nan)


def _period_gap(train: str, test: str) -> float:
    """Signed gap test − train; NaN when the two cannot be compared (a year vs a month)."""
    try:
        return float(Period.parse(train).distance(test))
    except ValueError:
        return math.nan


def _sort_key(period: str) -> tuple[int, int]:
    p = Period.parse(period)
    return (p.year, p.month or 0)


def sorted_periods(periods: Sequence[str]) -> list[str]:
    """Unique period strings in time order."""
    return sorted({str(p) for p in periods}, key=_sort_key)


def _key_granularity(period: str) -> str:
    return Period.parse(period).granularity


def _trained(cells: pd.DataFrame) -> pd.DataFrame:
    """Rows of trained single vectors (the base row and any row without a train period dropped)."""
    mask = cells["train_period"].notna()
    if "vector" in cells.columns:
        mask &= cells["vector"].astype(str) != "base"
    return cells.loc[mask].copy()


# --------------------------------------------------------------------------------------------
# temporal misalignment
# --------------------------------------------------------------------------------------------


def relative_change(cells: pd.DataFrame) -> pd.DataFrame:
    """The all-pairs cells of trained vectors with the paper's relative change added.

    The column mean (over every trained vector evaluated on one test period) is the reference
    because test periods differ in difficulty: a raw perplexity of 30 is good on one year and bad on
    another, while "x% worse than the average model on this year" is comparable across years.

    Adds ``column_mean``, ``pct_change`` (metric direction), ``degradation_pct`` (positive = worse)
    and ``gap`` (test − train in years or months). The base row is excluded: it is not one of the
    vectors whose misalignment is being measured.
    """
    rel = _trained(cells)
    if rel.empty:
        out = rel.copy()
        for col in ("column_mean", "pct_change", "degradation_pct", "gap"):
            out[col] = pd.Series(dtype=float)
        return out
    rel["train_period"] = rel["train_period"].astype(str)
    rel["test_period"] = rel["test_period"].astype(str)
    rel["value"] = rel["value"].astype(float)
    keys = ["task", "granularity", "metric", "test_period"]
    rel["column_mean"] = rel.groupby(keys, dropna=False)["value"].transform("mean")
    mean = rel["column_mean"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = (rel["value"].to_numpy(dtype=float) - mean) / mean * 100.0
    pct = np.where(mean != 0, pct, np.nan)
    rel["pct_change"] = pct
    higher = rel["higher_is_better"].astype(bool).to_numpy()
    rel["degradation_pct"] = np.where(higher, -pct, pct)
    rel["gap"] = [_period_gap(a, b) for a, b in zip(rel["train_period"], rel["test_period"])]
    n_bad = int(np.isnan(rel["gap"]).sum())
    if n_bad:
        log.warning("%d cells mix a year and a month in train/test period; their gap is NaN", n_bad)
    return rel.reset_index(drop=True)


def diagonal_summary(rel: pd.DataFrame) -> pd.DataFrame:
    """Per (task, granularity, metric): how often a test period's best vector is its own period.

    This is the paper's first finding (the diagonal of the all-pairs matrix is best). Only test
    periods that HAVE an own-period vector count, so a test-only period cannot dilute the share.
    Columns: ``n_test_periods``, ``n_diagonal_best``, ``diagonal_share``,
    ``mean_diagonal_degradation_pct``, ``mean_offdiagonal_degradation_pct``, ``best_not_own``
    (comma-separated test periods whose best vector is another period's).
    """
    rows: list[dict[str, Any]] = []
    if rel.empty:
        return pd.DataFrame(columns=[*_GROUP, "n_test_periods", "n_diagonal_best", "diagonal_share",
                                     "mean_diagonal_degradation_pct",
                                     "mean_offdiagonal_degradation_pct", "best_not_own"])
    for (task, gran, metric), grp in rel.groupby(_GROUP, sort=True):
        n_test = 0
        n_best = 0
        not_own: list[str] = []
        for test, col in grp.groupby("test_period"):
            col = col.dropna(subset=["degradation_pct"])
            if col.empty or not (col["train_period"] == test).any():
                continue
            n_test += 1
            own = float(col.loc[col["train_period"] == test, "degradation_pct"].min())
            # a tie counts for the diagonal: the own vector is (one of) the best
            if own <= float(col["degradation_pct"].min()):
                n_best += 1
            else:
                not_own.append(str(test))
        diag = grp.loc[grp["gap"] == 0, "degradation_pct"]
        off = grp.loc[grp["gap"] != 0, "degradation_pct"]
        rows.append({
            "task": task, "granularity": gran, "metric": metric,
            "n_test_periods": n_test, "n_diagonal_best": n_best,
            "diagonal_share": n_best / n_test if n_test else math.nan,
            "mean_diagonal_degradation_pct": float(diag.mean()) if len(diag) else math.nan,
            "mean_offdiagonal_degradation_pct": float(off.mean()) if len(off) else math.nan,
            "best_not_own": ",".join(sorted_periods(not_own)) if not_own else "",
        })
    return pd.DataFrame(rows)


class DecayFit(NamedTuple):
    """The two tables of :func:`decay_fit` (a NamedTuple so it unpacks as ``by_gap, fit``)."""

    by_gap: pd.DataFrame
    fit: pd.DataFrame


def decay_fit(rel: pd.DataFrame) -> DecayFit:
    """Degradation against the absolute gap, per (task, granularity, metric), with a linear fit.

    The paper reports that yearly performance decays near-linearly with the gap; the slope
    (percent degradation per year or month), intercept and R² quantify that claim on our data.
    The fit runs on every off- and on-diagonal cell (not on the per-gap means) so that ``n`` and
    ``p`` reflect the real number of observations. A group with fewer than 3 cells or a single
    distinct gap cannot be
    fitted: its numbers are NaN and ``reason`` says why.

    Returns ``DecayFit(by_gap, fit)``: ``by_gap`` has (task, granularity, metric, abs_gap,
    mean_degradation_pct, std_degradation_pct, n); ``fit`` has (task, granularity, metric, slope,
    intercept, r2, r, p, stderr, n, n_gaps, max_gap, reason).
    """
    by_gap_rows: list[pd.DataFrame] = []
    fit_rows: list[dict[str, Any]] = []
    data = rel.dropna(subset=["degradation_pct", "gap"]) if not rel.empty else rel
    for (task, gran, metric), grp in (data.groupby(_GROUP, sort=True) if not data.empty else []):
        g = grp.assign(abs_gap=grp["gap"].abs().astype(int))
        agg = g.groupby("abs_gap")["degradation_pct"].agg(["mean", "std", "count"]).reset_index()
        agg.columns = ["abs_gap", "mean_degradation_pct", "std_degradation_pct", "n"]
        agg.insert(0, "metric", metric)
        agg.insert(0, "granularity", gran)
        agg.insert(0, "task", task)
        by_gap_rows.append(agg)
        x = g["abs_gap"].to_numpy(dtype=float)
        y = g["degradation_pct"].to_numpy(dtype=float)
        row: dict[str, Any] = {"task": task, "granularity": gran, "metric": metric,
                               "slope": math.nan, "intercept": math.nan, "r2": math.nan,
                               "r": math.nan, "p": math.nan, "stderr": math.nan,
                               "n": int(len(x)), "n_gaps": int(len(np.unique(x))),
                               "max_gap": int(x.max()) if len(x) else 0, "reason": ""}
        if len(x) < 3:
            row["reason"] = f"only {len(x)} cells; a fit needs at least 3"
        elif len(np.unique(x)) < 2:
            row["reason"] = "a single distinct gap; no slope to fit"
        else:
            res = stats.linregress(x, y)
            row.update(slope=float(res.slope), intercept=float(res.intercept),
                       r=float(res.rvalue), r2=float(res.rvalue ** 2), p=float(res.pvalue),
                       stderr=float(res.stderr))
        fit_rows.append(row)
    by_gap = (pd.concat(by_gap_rows, ignore_index=True) if by_gap_rows else pd.DataFrame(
        columns=[*_GROUP, "abs_gap", "mean_degradation_pct", "std_degradation_pct", "n"]))
    fit = pd.DataFrame(fit_rows, columns=[*_GROUP, "slope", "intercept", "r2", "r", "p", "stderr",
                                          "n", "n_gaps", "max_gap", "reason"])
    return DecayFit(by_gap, fit)


def stripe_test(rel: pd.DataFrame, window: int = 3, period: int = 12) -> pd.DataFrame:
    """Are models better on test months a whole number of years away? (the paper's monthly stripes)

    For each monthly (task, metric) group, cells whose |gap| is a positive multiple of ``period``
    (12) are compared with cells at neighbouring gaps (within ``window`` months of such a multiple,
    the multiples themselves excluded). Restricting the comparison to neighbours matters because
    degradation grows with the gap: comparing with ALL other gaps would mix the seasonal effect with
    the overall decay. A multiple is used only when the data has gaps on both sides of it, so the
    neighbourhood is symmetric and the decay trend cancels.

    ``difference`` = mean_stripe − mean_other in degradation points (NEGATIVE = the stripe months
    are better, i.e. seasonal similarity); ``p`` is Welch's t-test (unequal variances). Groups with
    too little data get NaN and a ``reason``; yearly-only tasks get a row saying so.
    """
    cols = ["task", "granularity", "metric", "stripe_gaps", "n_stripe", "n_other", "mean_stripe",
            "mean_other", "difference", "t", "p", "window", "reason"]
    rows: list[dict[str, Any]] = []
    if rel.empty:
        return pd.DataFrame(columns=cols)
    data = rel.dropna(subset=["degradation_pct", "gap"])
    monthly_tasks = set(data.loc[data["granularity"] == "month", "task"])
    for task in sorted(set(rel["task"]) - monthly_tasks):
        rows.append({"task": task, "granularity": "month", "metric": "", "stripe_gaps": "",
                     "n_stripe": 0, "n_other": 0, "mean_stripe": math.nan, "mean_other": math.nan,
                     "difference": math.nan, "t": math.nan, "p": math.nan, "window": window,
                     "reason": "no monthly cells"})
    monthly = data.loc[data["granularity"] == "month"]
    for (task, metric), grp in (monthly.groupby(["task", "metric"], sort=True)
                                if not monthly.empty else []):
        abs_gap = grp["gap"].abs().astype(int).to_numpy()
        deg = grp["degradation_pct"].to_numpy(dtype=float)
        present = set(abs_gap.tolist())
        max_gap = max(present) if present else 0
        multiples = [m for m in range(period, max_gap + 1, period)
                     if m in present
                     and any(m - d in present for d in range(1, window + 1))
                     and any(m + d in present for d in range(1, window + 1))]
        row: dict[str, Any] = {"task": task, "granularity": "month", "metric": metric,
                               "stripe_gaps": ",".join(map(str, multiples)), "n_stripe": 0,
                               "n_other": 0, "mean_stripe": math.nan, "mean_other": math.nan,
                               "difference": math.nan, "t": math.nan, "p": math.nan,
                               "window": window, "reason": ""}
        if not multiples:
            row["reason"] = (f"no |gap| that is a multiple of {period} with neighbours on both "
                             f"sides (max |gap| {max_gap})")
            rows.append(row)
            continue
        stripe_mask = np.isin(abs_gap, multiples)
        near = np.zeros_like(stripe_mask)
        for m in multiples:
            near |= (np.abs(abs_gap - m) <= window) & (abs_gap % period != 0)
        s, o = deg[stripe_mask], deg[near]
        row.update(n_stripe=int(len(s)), n_other=int(len(o)),
                   mean_stripe=float(s.mean()) if len(s) else math.nan,
                   mean_other=float(o.mean()) if len(o) else math.nan)
        row["difference"] = row["mean_stripe"] - row["mean_other"]
        if len(s) < 2 or len(o) < 2:
            row["reason"] = f"too few cells for a t-test ({len(s)} stripe, {len(o)} other)"
        elif np.var(s) == 0 and np.var(o) == 0:
            row["reason"] = "no variance in either group; t-test undefined"
        else:
            res = stats.ttest_ind(s, o, equal_var=False)
            row.update(t=float(res.statistic), p=float(res.pvalue))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------------------------
# structure of the vectors
# --------------------------------------------------------------------------------------------


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
        groups.setdefault((task, _key_granularity(str(period))), []).append(i)
    return {g: sorted(idx, key=lambda i: _sort_key(str(keys[i][1])))
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
    """Pearson and Spearman with their p-values; NaN plus a ``reason`` where undefined (n < 3 or
    a constant variable), so a tiny study reports "cannot say" instead of raising."""
    out: dict[str, Any] = {"n": int(len(x)), "pearson_r": math.nan, "pearson_p": math.nan,
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
    return out


def similarity_vs_degradation(sim: pd.DataFrame, rel: pd.DataFrame) -> dict[str, Any]:
    """Does a more similar pair of vectors lose less when one is used on the other's period?

    Each off-diagonal cell (vector of task t trained on period a, tested on period b) is paired with
    cosine(τ_t(a), τ_t(b)) of the same task and granularity. The paper finds a negative correlation
    with % change for perplexity; here the y-variable is ``degradation_pct`` (positive = worse) so
    that the expected sign is NEGATIVE for every metric. Cells whose test period has no vector of
    its own are skipped (there is no τ_b to compare with).

    Returns ``{"n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "reason", "pairs",
    "by_group"}``: ``pairs`` is the paired DataFrame (task, granularity, metric, train_period,
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
    for (task, gran, metric), grp in (pairs.groupby(_GROUP, sort=True) if not pairs.empty else []):
        c = correlate(grp["cosine"].to_numpy(dtype=float),
                      grp["degradation_pct"].to_numpy(dtype=float))
        groups.append({"task": task, "granularity": gran, "metric": metric, **c})
    result["pairs"] = pairs
    result["by_group"] = pd.DataFrame(groups, columns=[*_GROUP, "n", "pearson_r", "pearson_p",
                                                       "spearman_rho", "spearman_p", "reason"])
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


# --------------------------------------------------------------------------------------------
# interpolation and analogy
# --------------------------------------------------------------------------------------------


def _cells_lookup(cells: pd.DataFrame | None, task: str, gran: str, metric: str,
                  test: str) -> tuple[float, float]:
    """(in-period value, base value) for one test period; NaN where absent."""
    if cells is None or cells.empty:
        return math.nan, math.nan
    sel = cells.loc[(cells["task"] == task) & (cells["granularity"] == gran)
                    & (cells["metric"] == metric) & (cells["test_period"].astype(str) == test)]
    own = sel.loc[sel["train_period"].notna() & (sel["train_period"].astype(str) == test),
                  "value"]
    is_base = sel["train_period"].isna()
    if "vector" in sel.columns:
        is_base &= sel["vector"].astype(str) == "base"
    base = sel.loc[is_base, "value"]
    return (float(own.iloc[0]) if len(own) else math.nan,
            float(base.iloc[0]) if len(base) else math.nan)


def _value_at(alphas: np.ndarray, values: np.ndarray, alpha: float) -> float:
    hit = np.isclose(alphas, alpha)
    return float(values[hit][0]) if hit.any() else math.nan


def interpolation_summary(interp: pd.DataFrame | None,
                          cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """For each test period strictly between the two ends: the best α and what it gains.

    α is the weight of the LATER vector (α = 0 is τ_first, α = 1 is τ_last, which is also the
    "latest available vector" baseline). Gains are positive when the best interpolation beats the
    baseline; following arXiv 2509.23487 the gain over the latest vector is reported explicitly,
    because that is the comparison that decides whether interpolation is worth it. The in-period
    vector (oracle) and base come from ``cells`` when present.
    """
    cols = ["task", "granularity", "first", "last", "test_period", "metric", "higher_is_better",
            "best_alpha", "best_value", "value_alpha0", "value_alpha1", "in_period_value",
            "base_value", "gain_vs_first", "gain_vs_last", "gain_vs_in_period",
            "gain_vs_first_pct", "gain_vs_last_pct", "gain_vs_in_period_pct", "beats_both_ends"]
    if interp is None or interp.empty:
        return pd.DataFrame(columns=cols)
    rows: list[dict[str, Any]] = []
    keys = ["task", "granularity", "first", "last", "test_period", "metric"]
    for (task, gran, first, last, test, metric), grp in interp.groupby(keys, sort=True):
        first, last, test = str(first), str(last), str(test)
        if not (_sort_key(first) < _sort_key(test) < _sort_key(last)):
            continue
        higher = bool(grp["higher_is_better"].iloc[0]) if "higher_is_better" in grp else \
            higher_is_better(metric)
        grp = grp.sort_values("alpha")
        values = grp["value"].to_numpy(dtype=float)
        alphas = grp["alpha"].to_numpy(dtype=float)
        best_i = int(np.nanargmax(values) if higher else np.nanargmin(values))
        best = float(values[best_i])
        v0, v1 = _value_at(alphas, values, 0.0), _value_at(alphas, values, 1.0)
        own, base = _cells_lookup(cells, task, gran, metric, test)
        g_first = float(improvement(best, v0, higher))
        g_last = float(improvement(best, v1, higher))
        rows.append({
            "task": task, "granularity": gran, "first": first, "last": last, "test_period": test,
            "metric": metric, "higher_is_better": higher, "best_alpha": float(alphas[best_i]),
            "best_value": best, "value_alpha0": v0, "value_alpha1": v1, "in_period_value": own,
            "base_value": base, "gain_vs_first": g_first, "gain_vs_last": g_last,
            "gain_vs_in_period": float(improvement(best, own, higher)),
            "gain_vs_first_pct": float(improvement_pct(best, v0, higher)),
            "gain_vs_last_pct": float(improvement_pct(best, v1, higher)),
            "gain_vs_in_period_pct": float(improvement_pct(best, own, higher)),
            "beats_both_ends": bool(g_first > 0 and g_last > 0),
        })
    out = pd.DataFrame(rows, columns=cols)
    if not out.empty:
        out = out.sort_values(["task", "granularity", "first", "last", "test_period"],
                              key=lambda s: s.map(_sort_key) if s.name in ("first", "last",
                                                                           "test_period") else s)
    return out.reset_index(drop=True)


ANALOGY_BASELINES = ("base", "task_j", "task_j_scaled", "latest", "in_period")


def analogy_summary(analogy: pd.DataFrame | None) -> pd.DataFrame:
    """The analogy's best point against every baseline, per (task, j, k, split).

    The baselines that matter most are ``task_j_scaled`` (much of the published analogy gain comes
    from scaling the task vector alone) and ``latest``. Gains are positive when the analogy is
    better, in metric units and in percent of the baseline.
    """
    if analogy is None or analogy.empty:
        return pd.DataFrame(columns=["task", "source_period", "target_period", "split", "metric",
                                     "higher_is_better", "analogy",
                                     *ANALOGY_BASELINES])
    keys = ["task", "source_period", "target_period", "split", "metric"]
    wide = analogy.pivot_table(index=keys, columns="method", values="value",
                               aggfunc="first").reset_index()
    wide.columns.name = None
    wide["higher_is_better"] = [higher_is_better(m) for m in wide["metric"]]
    for m in ("analogy", *ANALOGY_BASELINES):
        if m not in wide.columns:
            wide[m] = np.nan
    for b in ANALOGY_BASELINES:
        wide[f"gain_vs_{b}"] = [float(improvement(a, v, h)) for a, v, h in
                                zip(wide["analogy"], wide[b], wide["higher_is_better"])]
        wide[f"gain_vs_{b}_pct"] = [float(improvement_pct(a, v, h)) for a, v, h in
                                    zip(wide["analogy"], wide[b], wide["higher_is_better"])]
    best = analogy.loc[analogy["method"] == "analogy", [*keys, "alpha1", "alpha2", "alpha3"]]
    if not best.empty:
        wide = wide.merge(best.drop_duplicates(subset=keys), on=keys, how="left")
    return wide.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# headline
# --------------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    """A JSON/print-friendly number: NaN becomes None so callers never print a bare 'nan'."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else round(v, 4)


def headline(*, diagonal: pd.DataFrame | None = None,
             decay: DecayFit | pd.DataFrame | None = None,
             similarity: dict[str, Any] | None = None,
             similarity_centred: dict[str, Any] | None = None,
             stripes: pd.DataFrame | None = None, interpolation: pd.DataFrame | None = None,
             analogy: pd.DataFrame | None = None) -> dict[str, Any]:
    """The key findings as a flat ``{label: number or short text}`` dict, to print or tabulate.

    Flat on purpose: the CLI prints it line by line and the report renders it as a two-column
    table, and both stay readable without knowing the nesting. Missing inputs are simply left out;
    undefined numbers are ``None`` (with the reason alongside) rather than NaN.
    """
    out: dict[str, Any] = {}
    if diagonal is not None:
        for r in diagonal.itertuples(index=False):
            p = f"{r.task}/{r.granularity}"
            out[f"{p} own period best"] = f"{r.n_diagonal_best}/{r.n_test_periods} test periods"
            out[f"{p} diagonal share"] = _num(r.diagonal_share)
            out[f"{p} diagonal mean degradation %"] = _num(r.mean_diagonal_degradation_pct)
    if decay is not None:
        fit = decay.fit if isinstance(decay, DecayFit) else decay
        for r in fit.itertuples(index=False):
            p = f"{r.task}/{r.granularity}"
            unit = "year" if r.granularity == "year" else "month"
            out[f"{p} decay slope % per {unit}"] = _num(r.slope)
            out[f"{p} decay R²"] = _num(r.r2)
            out[f"{p} decay p"] = _sig(r.p)
            out[f"{p} decay n"] = int(r.n)
            if r.reason:
                out[f"{p} decay note"] = r.reason
    for label, sim in (("cosine vs degradation", similarity),
                       ("centred cosine vs degradation", similarity_centred)):
        if sim is None:
            continue
        out[f"{label} Pearson r"] = _num(sim.get("pearson_r"))
        out[f"{label} Pearson p"] = _sig(sim.get("pearson_p"))
        out[f"{label} Spearman rho"] = _num(sim.get("spearman_rho"))
        out[f"{label} n"] = int(sim.get("n", 0))
        if sim.get("reason"):
            out[f"{label} note"] = sim["reason"]
        by_group = sim.get("by_group")
        if by_group is not None and len(by_group) > 1:
            for r in by_group.itertuples(index=False):
                out[f"{r.task}/{r.granularity} {label} Pearson r"] = _num(r.pearson_r)
                out[f"{r.task}/{r.granularity} {label} Pearson p"] = _sig(r.pearson_p)
    if stripes is not None and len(stripes):
        if (stripes["reason"] == "no monthly cells").all():
            out["12-month stripes"] = "n/a: no monthly cells"
        for r in stripes.itertuples(index=False):
            p = f"{r.task}/month"
            if r.reason == "no monthly cells":
                continue  # a yearly-only task: said once above when no task has months
            if r.reason and math.isnan(float(r.difference)):
                out[f"{p} 12-month stripes"] = f"n/a: {r.reason}"
                continue
            out[f"{p} 12-month stripe difference (degradation points)"] = _num(r.difference)
            out[f"{p} 12-month stripe p"] = _sig(r.p)
            if r.reason:
                out[f"{p} 12-month stripe note"] = r.reason
    if interpolation is not None and not interpolation.empty:
        for (task, gran, first, last), grp in interpolation.groupby(
                ["task", "granularity", "first", "last"], sort=False):
            p = f"{task}/{gran} {first}→{last}"
            out[f"{p} best α by period"] = ", ".join(
                f"{t}: {a:.1f}" for t, a in zip(grp["test_period"], grp["best_alpha"]))
            out[f"{p} beats both ends"] = (f"{int(grp['beats_both_ends'].sum())}/{len(grp)} "
                                          "periods")
            out[f"{p} mean gain vs latest %"] = _num(grp["gain_vs_last_pct"].mean())
            if grp["gain_vs_in_period_pct"].notna().any():
                out[f"{p} mean gain vs in-period %"] = _num(grp["gain_vs_in_period_pct"].mean())
    if analogy is not None and not analogy.empty:
        split = "test" if (analogy["split"] == "test").any() else analogy["split"].iloc[0]
        a = analogy.loc[analogy["split"] == split]
        for task, grp in a.groupby("task", sort=True):
            for b in ("task_j", "task_j_scaled", "latest"):
                col = f"gain_vs_{b}_pct"
                if col in grp and grp[col].notna().any():
                    out[f"{task} analogy gain vs {b} % ({split}, mean of {len(grp)})"] = _num(
                        grp[col].mean())
    return out


def _sig(p: Any) -> float | None:
    """p-values keep 3 significant digits (rounding 1e-7 to 0 would overstate certainty)."""
    try:
        v = float(p)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else float(f"{v:.3g}")


class Analysis(NamedTuple):
    """Every analysis table, computed once and shared by the CLI and the report."""

    rel: pd.DataFrame
    diagonal: pd.DataFrame
    decay: DecayFit
    stripes: pd.DataFrame
    similarity: pd.DataFrame | None
    similarity_centred: pd.DataFrame | None  # within (task, granularity), mean τ of each removed
    sim_vs_deg: dict[str, Any] | None
    sim_vs_deg_centred: dict[str, Any] | None
    interpolation: pd.DataFrame
    analogy: pd.DataFrame
    headline: dict[str, Any]


def analyze(cells: pd.DataFrame, gram: np.ndarray | None = None,
            keys: Sequence[Key] | None = None, interpolation: pd.DataFrame | None = None,
            analogy: pd.DataFrame | None = None) -> Analysis:
    """Run every analysis on the available tables (the Gram matrix and the optional tables may be
    absent: a partial study still gets every number it can support)."""
    rel = relative_change(cells)
    diag = diagonal_summary(rel)
    decay = decay_fit(rel)
    stripes = stripe_test(rel)
    sim = simc = svd = svdc = None
    if gram is not None and keys is not None and len(keys):
        sim = similarity_table(gram, keys)
        simc = grouped_similarity(gram, keys, centre=True)
        svd = similarity_vs_degradation(sim, rel)
        svdc = similarity_vs_degradation(simc, rel)
    interp = interpolation_summary(interpolation, cells)
    ana = analogy_summary(analogy)
    head = headline(diagonal=diag, decay=decay, similarity=svd, similarity_centred=svdc,
                    stripes=stripes, interpolation=interp, analogy=ana)
    return Analysis(rel, diag, decay, stripes, sim, simc, svd, svdc, interp, ana, head)
