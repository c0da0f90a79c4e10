"""The registry of forecast methods: one decorated function per method, as mergekit registers merge methods.

A forecast method turns the stored past periods and a target period into a coefficient list
``[(cᵢ, past period)]`` (:data:`Coefficients`); everything else — reading the vectors through the
held-out guard, combining them through the merge path, the baselines, the table's columns — is
:mod:`timevec.adapt.forecast`'s and the same for every method. A new method is ONE function here
(or in its own module imported by :mod:`timevec.adapt.forecast`)::

    @forecast_method("my_method", min_past=2, cost=1)
    def my_method(past, target, params):
        return [(1.0, past[-1])]

with its name added to the config's list of method names (:data:`timevec.config.stages.FORECAST_METHODS`, in
registration order: the config checks ``forecast.methods`` against it without importing the methods, the way
peft's ``PeftType`` names the methods ``register_peft_method`` attaches; the registry refuses to load when the
two differ). It is then planned, evaluated, keyed and reported like the others.

The optional hooks of :func:`forecast_method`:

- ``history(past, target, params)``: the ``history`` column (the past periods the row was built
  from); default: the periods the coefficient list uses.
- ``param(past, target, params)``: the ``param`` column (a chosen or configured scalar); default NaN.
- ``choose(context) -> ForecastParams | None``: a past-only choice made once per work item before
  any coefficient is computed (scaled_latest's λ on the last past period's validation split);
  ``None``: the item has no row (what it needed is missing).
- ``needs_gram``: the planner attaches the past vectors' Gram matrix (``ForecastParams.gram``,
  computed from the store over the past vectors only) before the method runs.
- ``min_past``: the fewest past vectors it needs; ``cost``: the stage's scheduling order (low first);
  ``requires``: the optional modules it imports (checked when the forecast stage starts).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from timevec.config import ForecastConfig
from timevec.config.stages import FORECAST_METHODS
from timevec.periods import Period, sort_periods

log = logging.getLogger(__name__)

__all__ = [
    "ChoiceContext",
    "Coefficients",
    "ForecastMethod",
    "ForecastParams",
    "forecast_method",
    "get_method",
    "method_names",
    "steps_between",
]

Coefficients = list[tuple[float, str]]


_SECTION = ForecastConfig.model_fields


@dataclass(frozen=True)
class ForecastParams:
    """The settings of the methods (``forecast`` of the config) and, once chosen, the per-item state.

    ``scale``: scaled_latest's λ once chosen; ``gram``: the past vectors' Gram matrix (rows in the
    order of the item's ``past``), attached by the planner for methods with ``needs_gram``.
    """

    # the defaults are the config section's (one owner of each value), not written again here
    trend_window: int = _SECTION["trend_window"].default
    ema_decay: float = _SECTION["ema_decay"].default
    lambdas: tuple[float, ...] = tuple(_SECTION["lambdas"].default_factory())  # type: ignore[call-arg,misc]
    scale: float | None = None
    subspace_max_rank: int = _SECTION["subspace_max_rank"].default
    subspace_max_order: int = _SECTION["subspace_max_order"].default
    gram: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: ForecastConfig) -> ForecastParams:
        return cls(config.trend_window, config.ema_decay, tuple(config.lambdas),
                   subspace_max_rank=config.subspace_max_rank, subspace_max_order=config.subspace_max_order)


def steps_between(a: str, b: str) -> int:
    """Periods from ``a`` to ``b`` (:meth:`Period.distance`)."""
    return Period.parse(a).distance(b)


@dataclass(frozen=True)
class ForecastMethod:
    """One registered method: its coefficient function and hooks (module docstring)."""

    name: str
    coefficients: Callable[[Sequence[str], str, ForecastParams], Coefficients]
    min_past: int = 1
    history: Callable[[Sequence[str], str, ForecastParams], str] | None = None
    param: Callable[[Sequence[str], str, ForecastParams], float] | None = None
    choose: Callable[[Any], ForecastParams | None] | None = None
    needs_gram: bool = False
    cost: int = 2
    requires: tuple[str, ...] = ()
    doc: str = ""


_REGISTRY: dict[str, ForecastMethod] = {}


@dataclass(frozen=True)
class ChoiceContext:
    """What a method's ``choose`` hook may use: evaluation, the GUARDED past-vector loader, the item's
    past periods and settings, and the validation splits (of which a past-only hook reads p_n's alone)."""

    evaluate_weights: Any  # timevec.adapt.interpolation.EvaluateWeights
    load: Callable[[str], Any]  # the guarded past-only loader
    past: tuple[str, ...]
    validation: Mapping[str, Any]  # EvalSplit by period
    higher: bool
    params: ForecastParams
    label: str



def forecast_method(
    name: str,
    *,
    min_past: int = 1,
    history: Callable[[Sequence[str], str, ForecastParams], str] | None = None,
    param: Callable[[Sequence[str], str, ForecastParams], float] | None = None,
    choose: Callable[[Any], ForecastParams | None] | None = None,
    needs_gram: bool = False,
    cost: int = 2,
    requires: tuple[str, ...] = (),
) -> Callable[[Callable[[Sequence[str], str, ForecastParams], Coefficients]], Callable[..., Coefficients]]:
    """Register ``fn(past, target, params) -> [(cᵢ, period)]`` as forecast method ``name``.

    The registered function is wrapped with the checks every method shares: ``past`` sorted and
    non-empty, ``target`` after its last period, at least ``min_past`` past vectors.
    """

    def register(fn: Callable[[Sequence[str], str, ForecastParams], Coefficients]) -> Callable[..., Coefficients]:
        if name in _REGISTRY:
            raise ValueError(f"forecast method {name!r} is registered twice")

        def coefficients(past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
            past = sort_periods(past)
            if not past:
                raise ValueError(f"{name}: no past vector to forecast {target} from")
            if steps_between(past[-1], target) <= 0:
                raise ValueError(f"{name}: target {target} is not after the last past period {past[-1]}")
            if len(past) < min_past:
                raise ValueError(f"{name} needs {min_past} past vectors, got {past}")
            return fn(past, target, params)

        _REGISTRY[name] = ForecastMethod(name, coefficients, min_past, history, param, choose, needs_gram, cost,
                                         requires, (fn.__doc__ or "").strip())
        return fn

    return register


# ----------------------------------------------------------------------------- the built-in methods


@forecast_method("latest", cost=2)
def _latest(past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
    """τ_n: what a practitioner deploys today, the reference of every gain."""
    return [(1.0, past[-1])]


@forecast_method("taylor", min_past=2, cost=1)
def _taylor(past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
    """τ_n + (δ/d)·(τ_n − τ_{n−1})."""
    ratio = steps_between(past[-1], target) / steps_between(past[-2], past[-1])
    return [(-ratio, past[-2]), (1.0 + ratio, past[-1])]


def _trend_param(past: Sequence[str], target: str, params: ForecastParams) -> float:
    return float(min(params.trend_window, len(past)))


@forecast_method("trend", min_past=2, param=_trend_param, cost=1)
def _trend(past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
    """The least-squares line through the last m vectors over time, read at p* (a row of the OLS hat matrix)."""
    window = list(past[-params.trend_window:])
    t = [float(steps_between(window[0], p)) for p in window]
    t_star = float(steps_between(window[0], target))
    mean = sum(t) / len(t)
    spread = sum((ti - mean) ** 2 for ti in t)
    return [(1.0 / len(t) + (t_star - mean) * (ti - mean) / spread, p) for ti, p in zip(t, window)]


@forecast_method("ema", param=lambda past, target, params: float(params.ema_decay), cost=2)
def _ema(past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
    """Σ wᵢ·τᵢ, wᵢ ∝ β^(p_n − pᵢ), Σ wᵢ = 1."""
    weights = [params.ema_decay ** steps_between(p, past[-1]) for p in past]
    total = sum(weights)
    return [(w / total, p) for w, p in zip(weights, past)]


def _choose_scale_hook(context: ChoiceContext) -> ForecastParams | None:
    latest = context.past[-1]
    split = context.validation.get(latest)
    if split is None or split.n_examples == 0:
        log.warning("%s: no validation split of %s to choose λ on, no row", context.label, latest)
        return None
    from timevec.adapt.forecast import choose_scale  # evaluation-side code: imported when a λ is chosen

    lam, trace = choose_scale(context.evaluate_weights, context.load, context.past, split, context.params.lambdas,
                              context.higher)
    log.info("%s: λ = %g chosen on %s validation (%s)", context.label, lam, latest,
             ", ".join(f"{a:g}: {v:.4g}" for a, v in trace))
    return replace(context.params, scale=lam)


@forecast_method(
    "scaled_latest", min_past=2, cost=0, choose=_choose_scale_hook,
    history=lambda past, target, params: ",".join(sort_periods(past)[-2:]),  # τ_{n−1} chose λ
    param=lambda past, target, params: math.nan if params.scale is None else float(params.scale),
)
def _scaled_latest(past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
    """λ·τ_n, λ of a grid chosen as the best λ·τ_{n−1} on p_n's VALIDATION split."""
    if params.scale is None:
        raise ValueError("scaled_latest: λ has not been chosen (choose_scale)")
    return [(float(params.scale), past[-1])]


@forecast_method("uniform_soup", cost=2)
def _uniform_soup(past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
    """The mean of all past vectors."""
    return [(1.0 / len(past), p) for p in past]


# ----------------------------------------------------------------------------- look-up


def get_method(name: str) -> ForecastMethod:
    """The registered method ``name``; ValueError naming the known ones otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown forecast method {name!r} (known: {', '.join(method_names())})") from None


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order (``latest`` first)."""
    _load_builtins()
    return tuple(_REGISTRY)


def _load_builtins() -> None:
    """Methods defined in modules of their own register when those are imported (here, on first look-up);
    the registry then holds exactly the names the config declares (:data:`timevec.config.stages.FORECAST_METHODS`),
    in its order."""
    import timevec.adapt.subspace  # noqa: F401  (numpy only at import; statsmodels when a forecast is made)

    if tuple(_REGISTRY)[: len(FORECAST_METHODS)] != FORECAST_METHODS:
        raise ImportError(f"forecast methods registered {list(_REGISTRY)} differ from the config's {list(FORECAST_METHODS)}")
