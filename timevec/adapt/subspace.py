"""Subspace forecasting: kernel PCA of the past vectors, an autoregression per coordinate, mapped back.

After TEA (arXiv 2509.26045): the past vectors τ_1 … τ_n (times t_1 < … < t_n) are projected on
their principal directions, each coordinate's time series is extrapolated δ periods by an
autoregressive model, and the forecast is read back in weight space. Everything is computed from
the past vectors' Gram matrix G (``VectorStore.gram``, streamed; dense and LoRA-factor vectors
alike), so no dense vector matrix is ever formed, and the forecast is a coefficient list over the
past periods that the merge path applies like every other method's:

- kernel PCA: centred Gram Gc = H·G·H (H = I − 11ᵀ/n) = V·Λ·Vᵀ; coordinate j of τ_i is
  z_ij = √λ_j·V_ij, direction u_j = Σ_i V_ij·(τ_i − μ)/√λ_j, μ the mean;
- forecast μ + Σ_j ẑ_j·u_j, i.e. cᵢ = 1/n + Σ_j ẑ_j·V_ij/√λ_j (Vᵀ1 = 0), with ẑ_j the δ-step
  forecast of (z_1j … z_nj) by ``statsmodels``' AutoReg on the d-th differences (an ARI(p, d) model
  with a constant; ARI(0, 1) without one is the random walk, ẑ = z_n);
- **k and (p, d) chosen on the past only**: a rolling-origin backtest in weight space — for every
  origin m, the first m past vectors forecast the vector δ periods after t_m among the past ones; the
  error ‖τ̂ − τ‖² is read from G exactly — and the candidate with the least mean error wins (ties:
  the smaller k, then the simpler model). With no origin (too few past vectors) k = n − 1 and the
  random walk: the latest vector itself.

``subspace_simplex`` (the "adaptive averaging" variant) returns the point of the simplex of past
vectors (wᵢ ≥ 0, Σ wᵢ = 1) closest in weight space to the subspace forecast: min wᵀGw − 2wᵀGc.

``statsmodels`` is the optional extra ``forecast`` (``pip install 'timevec[forecast]'``).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from timevec.adapt.forecast_methods import Coefficients, ForecastParams, forecast_method, steps_between

log = logging.getLogger(__name__)

__all__ = ["ArModel", "SubspaceChoice", "choose_subspace", "kernel_pca", "simplex_weights", "subspace_weights"]

#: Relative eigenvalue below which a principal direction is numerically absent.
_EIG_TOL = 1e-10


def _statsmodels():
    try:
        from statsmodels.tsa.ar_model import AutoReg
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("the subspace forecast methods need statsmodels: pip install 'timevec[forecast]'") from err
    return AutoReg


@dataclass(frozen=True)
class ArModel:
    """ARI(p, d) with a constant (``const``) or without; (0, 1, no constant) is the random walk."""

    p: int
    d: int
    const: bool = True

    def n_params(self) -> int:
        return self.p + int(self.const)

    def fits(self, n: int) -> bool:
        """Enough observations: n − d − p regression rows for p + const parameters (at least one row)."""
        rows = n - self.d - self.p
        return rows >= max(self.n_params(), 1) and n > self.d

    def __str__(self) -> str:
        return f"ARI({self.p},{self.d}){'+c' if self.const else ''}"


def candidate_models(max_order: int) -> list[ArModel]:
    """Simplest first: random walk, drift, mean, then AR orders 1 … ``max_order`` on levels and differences."""
    models = [ArModel(0, 1, False), ArModel(0, 1, True), ArModel(0, 0, True)]
    for p in range(1, max_order + 1):
        models += [ArModel(p, 0, True), ArModel(p, 1, True)]
    return models


def ar_forecast(series: np.ndarray, model: ArModel, steps: int) -> float:
    """The ``steps``-ahead forecast of ``series`` (equally spaced) by ``model``."""
    x = np.asarray(series, dtype=np.float64)
    y = np.diff(x, n=model.d) if model.d else x
    if model.n_params() == 0:
        path = np.zeros(steps)
    else:
        AutoReg = _statsmodels()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = AutoReg(y, lags=model.p, trend="c" if model.const else "n").fit()
            path = np.asarray(fit.predict(start=len(y), end=len(y) + steps - 1), dtype=np.float64)
    if model.d == 0:
        return float(path[-1])
    return float(x[-1] + path.sum())  # d = 1: integrate the differences


def kernel_pca(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V, λ): the centred Gram's eigenvectors (columns, Vᵀ1 = 0) and eigenvalues, largest first, the
    numerically zero ones left out."""
    n = gram.shape[0]
    h = np.eye(n) - np.full((n, n), 1.0 / n)
    lam, vec = np.linalg.eigh(h @ gram @ h)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    keep = lam > _EIG_TOL * max(float(np.trace(gram)), np.finfo(float).tiny)
    return vec[:, keep], lam[keep]


def subspace_weights(gram: np.ndarray, times: Sequence[float], target: float, k: int, model: ArModel) -> np.ndarray:
    """cᵢ over the n vectors of ``gram``: the rank-k subspace forecast at time ``target`` (module docstring).

    ``times`` must be equally spaced for the AR model (gaps are read as one step each).
    """
    n = gram.shape[0]
    vec, lam = kernel_pca(gram)
    k = min(k, len(lam))
    steps = _steps_ahead(times, target)
    c = np.full(n, 1.0 / n)
    for j in range(k):
        z = np.sqrt(lam[j]) * vec[:, j]
        z_hat = ar_forecast(z, model, steps)
        c += z_hat * vec[:, j] / np.sqrt(lam[j])
    return c


def _steps_ahead(times: Sequence[float], target: float) -> int:
    step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1.0
    return max(1, int(round((target - times[-1]) / (step or 1.0))))


def _error(gram: np.ndarray, c: np.ndarray, fit: int, truth: int) -> float:
    """‖Σ_{i<fit} cᵢτᵢ − τ_truth‖² from the Gram."""
    g = gram[:fit, :fit]
    return float(c @ g @ c - 2.0 * c @ gram[:fit, truth] + gram[truth, truth])


@dataclass(frozen=True)
class SubspaceChoice:
    k: int
    model: ArModel
    error: float  # mean backtest ‖τ̂ − τ‖² (NaN: no origin, the fallback)
    origins: int


def choose_subspace(gram: np.ndarray, times: Sequence[float], horizon: int, max_rank: int, max_order: int) -> SubspaceChoice:
    """(k, model) of least mean backtest error at ``horizon`` steps, on the past vectors only (module docstring).

    Every candidate is scored on every origin m = 2 … n − horizon as a policy: where it does not fit
    m vectors it uses k ≤ m − 1 and, for a model with too many parameters, the random walk.
    """
    n = gram.shape[0]
    models = candidate_models(max_order)
    origins = list(range(2, n - horizon + 1))
    keys = [(k, mi) for k in range(1, max(1, min(max_rank, n - 1)) + 1) for mi in range(len(models))]
    if not origins:
        return SubspaceChoice(max(1, min(max_rank, n - 1)), models[0], float("nan"), 0)
    errors = {key: 0.0 for key in keys}
    for m in origins:
        sub, truth = gram[:m, :m], m - 1 + horizon
        for k, mi in keys:
            model = models[mi] if models[mi].fits(m) else models[0]
            c = subspace_weights(sub, times[:m], times[truth], min(k, m - 1), model)
            errors[(k, mi)] += _error(gram, c, m, truth) / len(origins)
    least = min(errors.values())
    best = min(key for key in keys if errors[key] <= least + 1e-9 * abs(least))  # ties: smaller k, simpler model
    return SubspaceChoice(best[0], models[best[1]], errors[best], len(origins))


def simplex_weights(gram: np.ndarray, c: np.ndarray) -> np.ndarray:
    """argmin over the simplex of ‖Σ wᵢτᵢ − Σ cᵢτᵢ‖² = wᵀGw − 2wᵀGc + const (scipy SLSQP)."""
    from scipy.optimize import minimize

    n = gram.shape[0]
    scale = float(np.trace(gram)) / n or 1.0
    g, b = gram / scale, gram @ c / scale
    result = minimize(lambda w: w @ g @ w - 2.0 * w @ b, np.full(n, 1.0 / n), jac=lambda w: 2.0 * (g @ w - b),
                      bounds=[(0.0, 1.0)] * n, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                      method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


# ----------------------------------------------------------------------------- the registered methods


def _gram_of(past: Sequence[str], params: ForecastParams) -> np.ndarray:
    if params.gram is None:
        raise ValueError("subspace: the past vectors' Gram matrix was not attached (plan_forecast with gram_of)")
    gram = np.asarray(params.gram, dtype=np.float64)
    if gram.shape != (len(past), len(past)):
        raise ValueError(f"subspace: a {gram.shape} Gram matrix for {len(past)} past periods")
    return gram


@functools.lru_cache(maxsize=256)
def _solve(past: tuple[str, ...], target: str, params: ForecastParams, simplex: bool) -> tuple[tuple[float, ...], SubspaceChoice]:
    gram = _gram_of(past, params)
    times = [float(steps_between(past[0], p)) for p in past]
    horizon = steps_between(past[-1], target)
    choice = choose_subspace(gram, times, horizon, params.subspace_max_rank, params.subspace_max_order)
    c = subspace_weights(gram, times, times[-1] + horizon, choice.k, choice.model)
    if simplex:
        c = simplex_weights(gram, c)
    log.info("subspace%s → %s: k = %d, %s (backtest ‖τ̂−τ‖² %.4g over %d origin(s))",
             " simplex" if simplex else "", target, choice.k, choice.model, choice.error, choice.origins)
    return tuple(float(x) for x in c), choice


def _history(past: Sequence[str], target: str, params: ForecastParams) -> str:
    return ",".join(past)  # every past vector: the Gram, the backtest and the combination use them all


def _k(past: Sequence[str], target: str, params: ForecastParams) -> float:
    return float(_solve(tuple(past), str(target), params, False)[1].k)


@forecast_method("subspace", min_past=2, needs_gram=True, history=_history, param=_k, cost=2,
                 requires=("statsmodels",))
def subspace(past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
    """μ + Σ_j ẑ_j·u_j: kernel-PCA coordinates of the past vectors extrapolated by AR models (k, order past-only)."""
    c, _ = _solve(tuple(past), str(target), params, False)
    return list(zip(c, past))


@forecast_method("subspace_simplex", min_past=2, needs_gram=True, history=_history, param=_k, cost=2,
                 requires=("statsmodels",))
def subspace_simplex(past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
    """The convex combination of past vectors closest to the subspace forecast (adaptive averaging)."""
    c, _ = _solve(tuple(past), str(target), params, True)
    return list(zip(c, past))
