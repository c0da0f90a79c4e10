"""Matrix completion of the train-period × test-period cells: evaluate a designed fraction, estimate the rest.

Why: the all-pairs matrix M[i, j] (vector fine-tuned on period i, evaluated on test period j) costs
N² evaluations, and adding one period costs 2N − 1 more. The matrix is strongly structured — test
periods differ in difficulty, vectors in quality, and a vector degrades smoothly with the gap
between its period and the test period — so a designed fraction of its cells, plus a model of that
structure, gives every other cell as an estimate with a calibrated interval. Torch-free and Ray-free.

**The design** — which cells are evaluated — is :mod:`timevec.evaluate.design`'s (the evaluate stage follows it).

**The model** (:func:`complete_matrix`), on the metric's scale — log for perplexity (vectors and
test periods act multiplicatively on it), as-is for scores — standardised by the evaluated cells'
mean and spread::

    y[i, j] = μ + a[test j] + b[vector i] + f(gap j − i) + (U Vᵀ)[i, j] + ε

``f`` takes one value per integer gap with a second-difference (P-spline) penalty ``λ_f`` on each
side of the diagonal, f(0) free: decay may have a kink at 0 and the own-period cell may stand out.
``U Vᵀ`` is a rank-``r`` interaction fitted by ridge alternating least squares (penalty ``λ_r`` times
the RMS of the additive fit's residuals, so that it shrinks alike on matrices the additive part
explains well or poorly), alternating with the additive part's penalised least squares until the
fit stops changing.

**Choice and intervals**: one K-fold cross-validation of the evaluated cells (K = 10 by default,
leave-one-out below ten cells; folds spread each row's cells) predicts every held-out cell under
every ``(r, λ_f, λ_r)`` of the grid (default: r ∈ {0, 1, 2}, λ_f ∈ {1, 30}, λ_r = 3); the
configuration with the least held-out mean squared error is refitted on all cells. Its held-out
errors give the intervals: a missing cell's half-width is ``q · s(|gap|)``, where ``s² = c₀ + c₁·|gap|``
is fitted to the squared held-out errors (non-negative least squares, c₀ at least a tenth of their
mean: the far cells that a design leaves missing are predicted from fewer neighbours) and ``q`` is
the conformal ``⌈level·(n+1)⌉``-th smallest of the ``n`` standardised held-out errors ``|e|/s``
(Student's t on their root mean square when n is too small for that rank). Held-out fits see
(K−1)/K of the cells, the final fit all of them, so the intervals err on the wide side (measured:
96 % coverage at level 0.95 on synthetic 12 × 12 matrices, tests/test_completion.py). They are
prediction intervals for the value the cell would have had if evaluated (noise included), in the
metric's units (asymmetric for perplexity: computed on the log scale).

**Rows returned** by :func:`complete_cells`: only the completed cells (``estimated = True``) by
default, so that appending them to the evaluated rows gives the whole matrix and nothing twice;
``include_evaluated=True`` returns the whole matrix at once, the evaluated rows as given
(``estimated = False``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats

from timevec import results
from timevec.evaluate.design import gaps_of
from timevec.periods import Period

__all__ = ["LOG_METRICS", "Completion", "FitConfig", "complete_cells", "complete_matrix", "grid"]

logger = logging.getLogger("timevec.analyze")

#: metrics completed on the log scale (positive, and effects act multiplicatively)
LOG_METRICS = frozenset({"perplexity"})
#: the columns of :func:`complete_cells`'s rows: the cells schema's, then ``estimated``
_RIDGE = 1e-3  # on the standardised scale: identifies μ, a, b, f without shrinking them noticeably
_MAX_ITER, _TOL = 100, 1e-4
_MIN_CELLS = 5


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class FitConfig:
    """One point of the cross-validated grid: the interaction's rank, the gap curve's smoothing
    ``λ_f`` (on the standardised scale) and the interaction's ridge ``λ_r`` (in units of the additive
    fit's residual RMS)."""

    rank: int
    smooth: float
    ridge: float = 3.0


def grid(ranks: Sequence[int] = (0, 1, 2), smooths: Sequence[float] = (1.0, 30.0),
         ridges: Sequence[float] = (3.0,)) -> list[FitConfig]:
    """The configurations the cross-validation chooses from (rank 0 needs no ridge)."""
    return [FitConfig(r, s, 0.0 if r == 0 else g) for r in ranks for s in smooths for g in (ridges if r else (0.0,))]


@dataclass
class _Layout:
    """The fixed geometry of one matrix: its gaps as indices into the gap curve and its penalty."""

    gaps: np.ndarray  # N × M
    gap_index: np.ndarray  # N × M, into f
    curve_d2: np.ndarray  # second differences of f within each side of the diagonal

    @classmethod
    def of(cls, gaps: np.ndarray) -> _Layout:
        lo, hi = int(gaps.min()), int(gaps.max())
        values = np.arange(lo, hi + 1)
        rows = [k for k in range(1, len(values) - 1) if abs(values[k]) >= 2]  # centred at |gap| >= 2: f(0) and a kink free
        d2 = np.zeros((len(rows), len(values)))
        for n, k in enumerate(rows):
            d2[n, k - 1:k + 2] = (1.0, -2.0, 1.0)
        return cls(gaps, gaps - lo, d2)


def _fit(y: np.ndarray, mask: np.ndarray, layout: _Layout, config: FitConfig) -> np.ndarray:
    """The model's prediction of every cell (N × M) fitted to ``y[mask]`` (standardised scale)."""
    n_rows, n_cols = y.shape
    n_gaps = layout.curve_d2.shape[1]
    rows, cols = np.nonzero(mask)
    n_par = 1 + n_cols + n_rows + n_gaps
    design = np.zeros((len(rows), n_par))
    design[:, 0] = 1.0
    at = np.arange(len(rows))
    design[at, 1 + cols] = 1.0
    design[at, 1 + n_cols + rows] = 1.0
    design[at, 1 + n_cols + n_rows + layout.gap_index[rows, cols]] = 1.0
    penalty = np.diag(np.r_[0.0, np.full(n_par - 1, _RIDGE)])
    curve = slice(1 + n_cols + n_rows, n_par)
    penalty[curve, curve] += config.smooth * layout.curve_d2.T @ layout.curve_d2
    solve = np.linalg.solve(design.T @ design + penalty, design.T)  # β = solve @ target
    full_index = layout.gap_index

    def additive(target: np.ndarray) -> np.ndarray:
        beta = solve @ target
        a, b, f = beta[1:1 + n_cols], beta[1 + n_cols:1 + n_cols + n_rows], beta[curve]
        return beta[0] + a[None, :] + b[:, None] + f[full_index]

    observed = y[mask]
    base = additive(observed)
    if config.rank == 0:
        return base
    weights = mask.astype(float)
    resid = np.where(mask, y - base, 0.0)
    u_svd, s_svd, vt_svd = np.linalg.svd(resid / max(weights.mean(), 1e-9))
    r = min(config.rank, len(s_svd))
    root = np.sqrt(s_svd[:r])
    u, v = u_svd[:, :r] * root, vt_svd[:r].T * root
    # the ridge in units of the additive fit's residual (RMS): the rest is as free on a matrix the
    # additive part explains almost wholly as on one it does not
    eye = config.ridge * max(float(np.sqrt(np.mean(resid[mask] ** 2))), 1e-6) * np.eye(r)
    inter = u @ v.T
    for _ in range(_MAX_ITER):
        base = additive(observed - inter[mask])
        resid = np.where(mask, y - base, 0.0)
        # ridge ALS: each row's (column's) factors from its observed cells
        u = _solve_each(np.einsum("ij,jk,jl->ikl", weights, v, v) + eye, resid @ v)
        v = _solve_each(np.einsum("ij,ik,il->jkl", weights, u, u) + eye, resid.T @ u)
        new = u @ v.T
        change = float(np.max(np.abs(new - inter)))
        inter = new
        if change < _TOL:
            break
    return additive(observed - inter[mask]) + inter


def _solve_each(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x[n] = a[n]⁻¹ b[n]`` for each n; ranks 1 and 2 in closed form (np.linalg.solve's overhead
    dominates on these tiny systems, solved thousands of times by a cross-validation)."""
    if a.shape[-1] == 1:
        return b / a[:, 0, :]
    if a.shape[-1] == 2:
        det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
        return np.column_stack([a[:, 1, 1] * b[:, 0] - a[:, 0, 1] * b[:, 1],
                                a[:, 0, 0] * b[:, 1] - a[:, 1, 0] * b[:, 0]]) / det[:, None]
    return np.linalg.solve(a, b[..., None])[..., 0]


def _folds(mask: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number for each evaluated cell (row-major order of ``mask``), each row's cells spread over folds."""
    rows, _ = np.nonzero(mask)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    order = order[np.argsort(rows[order], kind="stable")]  # random within each row, rows in turn
    folds = np.empty(len(rows), dtype=np.int64)
    folds[order] = (np.arange(len(rows)) + rng.integers(k)) % k
    return folds


# ----------------------------------------------------------------------------- completion


@dataclass
class Completion:
    """A completed matrix: rows are train periods, columns test periods, in the metric's units.

    ``evaluated`` marks the cells given; elsewhere ``estimate`` is the model's and ``low``/``high``
    its interval (NaN at evaluated cells). ``config`` is the configuration chosen, ``cv_rmse`` its
    held-out root mean squared error on the model's scale, ``scale_terms`` the fitted ``(c₀, c₁)`` of
    ``s² = c₀ + c₁·|gap|`` and ``quantile`` the multiplier ``q`` (module doc)."""

    train_periods: list[str]
    test_periods: list[str]
    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    evaluated: np.ndarray
    config: FitConfig
    cv_rmse: float
    scale_terms: tuple[float, float]
    quantile: float
    cv_errors: np.ndarray = field(repr=False)


def complete_matrix(values: np.ndarray, train_periods: Sequence[str], test_periods: Sequence[str], *,
                    log_scale: bool = False, level: float = 0.95, folds: int = 10, seed: int = 0,
                    configs: Sequence[FitConfig] | None = None) -> Completion:
    """Complete ``values`` (N train periods × M test periods, NaN where not evaluated).

    ``log_scale``: fit log(values) (perplexity). ``configs``: the grid cross-validated (default
    :func:`grid`). ``folds``: K, at most the number of evaluated cells (then leave-one-out). Raises
    ValueError with fewer than five evaluated cells."""
    values = np.asarray(values, dtype=float)
    if values.shape != (len(train_periods), len(test_periods)):
        raise ValueError(f"values are {values.shape}, periods {len(train_periods)} × {len(test_periods)}")
    mask = np.isfinite(values)
    if log_scale and np.any(values[mask] <= 0):
        raise ValueError("log-scale completion needs positive values")
    n_obs = int(mask.sum())
    if n_obs < _MIN_CELLS:
        raise ValueError(f"{n_obs} evaluated cells are too few to complete a matrix (at least {_MIN_CELLS})")
    folds = min(folds, n_obs)
    for axis, names, what in ((1, train_periods, "train period"), (0, test_periods, "test period")):
        for name, count in zip(names, mask.sum(axis=axis)):
            if count < 2:
                logger.warning("completion: %s %s has %d evaluated cell(s); its estimates lean on the others", what,
                               name, count)
    raw = np.log(values) if log_scale else values
    centre, spread = float(np.mean(raw[mask])), float(np.std(raw[mask])) or 1.0
    y = np.where(mask, (raw - centre) / spread, 0.0)
    layout = _Layout.of(gaps_of(train_periods, test_periods))
    configs = list(configs) if configs is not None else grid()

    fold_of = _folds(mask, folds, seed)
    rows, cols = np.nonzero(mask)
    held_out = np.zeros((len(configs), n_obs))
    for k in range(folds):
        test = fold_of == k
        train_mask = mask.copy()
        train_mask[rows[test], cols[test]] = False
        for c, config in enumerate(configs):
            held_out[c, test] = _fit(y, train_mask, layout, config)[rows[test], cols[test]]
    errors = held_out - y[rows, cols][None, :]
    best = int(np.argmin(np.mean(errors**2, axis=1)))
    config, err = configs[best], errors[best]

    abs_gap = np.abs(layout.gaps).astype(float)
    c0, c1 = _scale_terms(abs_gap[rows, cols], err**2)
    scale = np.sqrt(c0 + c1 * abs_gap)
    standardised = np.sort(np.abs(err) / scale[rows, cols])
    rank = math.ceil(level * (n_obs + 1))
    if rank <= n_obs:
        quantile = float(standardised[rank - 1])
    else:  # too few cells for the conformal rank: Student's t on their root mean square
        quantile = float(stats.t.ppf((1 + level) / 2, n_obs) * np.sqrt(np.mean(standardised**2)))
    point = _fit(y, mask, layout, config) * spread + centre
    half = quantile * scale * spread
    back = np.exp if log_scale else (lambda x: x)
    estimate = np.where(mask, values, back(point))
    low = np.where(mask, np.nan, back(point - half))
    high = np.where(mask, np.nan, back(point + half))
    return Completion(list(train_periods), list(test_periods), estimate, low, high, mask, config,
                      float(np.sqrt(np.mean(err**2))) * spread, (c0 * spread**2, c1 * spread**2), quantile,
                      err * spread)


def _scale_terms(abs_gap: np.ndarray, squared: np.ndarray) -> tuple[float, float]:
    """``(c₀, c₁) >= 0`` of ``squared ≈ c₀ + c₁·|gap|`` (non-negative least squares), ``c₀`` at least a
    tenth of the mean squared error, so that no cell's interval collapses."""
    (c0, c1), _ = optimize.nnls(np.column_stack([np.ones_like(abs_gap), abs_gap]), squared)
    return max(float(c0), 0.1 * float(np.mean(squared)), 1e-12), float(c1)


def complete_cells(cells: pd.DataFrame, *, include_evaluated: bool = False, level: float = 0.95, folds: int = 5,
                   seed: int = 0, log_metrics: Iterable[str] = LOG_METRICS,
                   configs: Sequence[FitConfig] | None = None) -> pd.DataFrame:
    """The missing cells of every (task, granularity, metric) matrix in ``cells``, estimated.

    ``cells``: evaluated rows in the cells schema (``vector == "base"`` rows are ignored). A group's
    matrix is its train periods × its test periods. Returns one row per missing (vector, test period)
    cell with the cells schema's columns (``value`` the estimate, ``low``/``high`` its ``level``
    interval, ``n_examples = n_tokens = 0``, ``seconds = 0.0``) and ``estimated = True``; with
    ``include_evaluated`` the evaluated rows too (as given, ``estimated = False``): the whole matrix."""
    frame = cells[cells["vector"] != "base"]
    log_metrics = frozenset(log_metrics)
    out: list[pd.DataFrame] = []
    for (task, granularity, metric), group in frame.groupby(["task", "granularity", "metric"], sort=True):
        group = group.drop_duplicates(["train_period", "test_period"], keep="last")
        train = [str(p) for p in sorted({Period.parse(p) for p in group["train_period"]})]
        test = [str(p) for p in sorted({Period.parse(p) for p in group["test_period"]})]
        matrix = group.pivot(index="train_period", columns="test_period", values="value").reindex(index=train, columns=test)
        if matrix.notna().all().all():
            done = None
        else:
            done = complete_matrix(matrix.to_numpy(), train, test, log_scale=metric in log_metrics, level=level,
                                   folds=folds, seed=seed, configs=configs)
        if include_evaluated:
            out.append(group.assign(estimated=False))
        if done is None:
            continue
        names = group.drop_duplicates("train_period").set_index("train_period")["vector"]
        i, j = np.nonzero(~done.evaluated)
        out.append(pd.DataFrame({
            "task": task, "granularity": granularity, "vector": names.loc[[train[k] for k in i]].to_numpy(),
            "train_period": [train[k] for k in i], "test_period": [test[k] for k in j], "metric": metric,
            "value": done.estimate[i, j], "low": done.low[i, j], "high": done.high[i, j],
            "higher_is_better": bool(group["higher_is_better"].iloc[0]), "n_examples": 0, "n_tokens": 0,
            "seconds": 0.0, "estimated": True}))
    return results.cells_frame(pd.concat(out, ignore_index=True) if out else [])
