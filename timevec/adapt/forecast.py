"""Forecasting future periods: the weights of a held-out period predicted from earlier vectors only.

The question (ARCHITECTURE §1, "adaptation without training"): when a new period begins, before any
of its data is labelled, can arithmetic on the past time vectors beat deploying the latest one? The
last ``forecast.horizon`` = H periods of each granularity are held out; from the past vectors
τ_1 … τ_n (periods p_1 < … < p_n, the last non-held-out ones that are stored) each method predicts
the weights of every held-out period p*, δ = p* − p_n periods ahead (:meth:`Period.distance`):

| method | weights (θ_pre + …) |
| --- | --- |
| ``latest`` | τ_n: what a practitioner deploys today, the reference of every gain |
| ``taylor`` | τ_n + (δ/d)·(τ_n − τ_{n−1}), d = p_n − p_{n−1} (d = 1 when no period is missing) |
| ``trend`` | the least-squares line through the last m vectors over time, read at p* |
| ``ema`` | Σ wᵢ·τᵢ, wᵢ ∝ β^(p_n − pᵢ), Σ wᵢ = 1 |
| ``scaled_latest`` | λ·τ_n, λ of a grid chosen as the best λ·τ_{n−1} on p_n's VALIDATION split |
| ``uniform_soup`` | the mean of all past vectors |

with the baselines ``base`` (θ_pre) and ``in_period`` (τ of p* itself: an ORACLE, labelled so).

Design choices, and why:

- **A forecast is a coefficient list over past periods** (:func:`forecast_coefficients`, pure and
  vector-free), turned into :data:`~timevec.adapt.interpolation.Term` lists and evaluated with the injected
  :data:`~timevec.adapt.interpolation.EvaluateWeights`, exactly like interpolation: no combined vector is ever
  materialised, and the tests check every list against a dense formula. The trend's list is the row
  of the OLS hat matrix: cᵢ = 1/m + (t* − t̄)(tᵢ − t̄)/Σ(tᵢ − t̄)², so the same weights serve T5-3b.
- **The held-out periods cannot leak.** Every vector read by a forecast goes through
  :func:`past_only`, which raises :class:`HeldOutError` for any period that is not a past period;
  λ is chosen on p_n's validation split (p_n's labels exist when p* begins) and nothing else; only
  the ``in_period`` oracle row reads a held-out vector, through its own ``load_oracle`` (or the
  cells table), and its ``selection`` says "oracle".
- **Baselines come from the all-pairs table when it holds them** (``known``, as
  :func:`timevec.adapt.interpolation.period_baselines`): base, latest and in_period on p*'s test split are cells
  (base, p*), (p_n, p*), (p*, p*); only what is absent is evaluated.
- **Gains on the examples both scored.** Under ``evaluation.target_halfwidth`` a row and the latest
  vector's may have scored different prefixes of p*'s seeded example order (:mod:`timevec.evaluate.sequential`);
  ``gain_vs_latest`` and its paired interval are then computed on the shorter prefix
  (:func:`timevec.evaluate.per_example.on_common_prefix`), while ``value`` is the row's own.
- **One work item is one (task, granularity, method)** over its held-out periods: λ is chosen once,
  and periods whose coefficients coincide (latest, ema, soup, scaled_latest) share one evaluation.
  Rows are keyed by :data:`~timevec.results.FORECAST_KEY` (task, granularity, method, target,
  horizon, history), so a re-run skips what the table holds, and a changed horizon or trend window
  (a different history) is recomputed; a changed β or λ grid is not detected (remove the table).

Ray-free; the Ray stage is :mod:`timevec.distributed.forecast`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from timevec.adapt.forecast_methods import ChoiceContext, Coefficients, ForecastParams, get_method, method_names, steps_between
from timevec.adapt.interpolation import (
    EvaluateWeights,
    KnownValue,
    LoadVector,
    Term,
    takes_replicates,
    task_higher,
    task_metric,
    value_of,
)
from timevec.config import ConfigError
from timevec.data.examples import EvalSplit
from timevec.errors import TimevecError
from timevec.evaluate.bootstrap import interval_of
from timevec.evaluate.gains import better, gain, gain_pct
from timevec.evaluate.per_example import on_common_prefix
from timevec.periods import sort_periods
from timevec.results import FORECAST_KEY

if TYPE_CHECKING:
    from timevec.config import ExperimentConfig

log = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "FORECASTS",
    "ForecastItem",
    "ForecastParams",
    "HeldOutError",
    "ORACLE",
    "PAST_ONLY",
    "check_horizon",
    "choose_scale",
    "evaluate_item",
    "forecast_coefficients",
    "forecast_done",
    "forecast_terms",
    "history_of",
    "method_cost",
    "past_only",
    "plan_forecast",
    "split_history",
]

#: The rows of every forecast table besides the methods: θ_pre, and the held-out period's own vector (oracle).
BASELINES = ("base", "in_period")
PAST_ONLY, ORACLE = "past-only", "oracle"


class HeldOutError(TimevecError, RuntimeError):
    """A forecast asked for a vector that is not a past period's: a bug, never a user error."""


# ----------------------------------------------------------------------------- history and held-out periods


def split_history(periods: Sequence[str], horizon: int, granularity: str = "") -> tuple[list[str], list[str]]:
    """(past periods, held-out periods): the last ``horizon`` periods are held out.

    At least two past periods must remain (the trend and the Taylor step need two vectors): otherwise
    a :class:`~timevec.config.ConfigError` that names ``forecast.horizon`` and the period count.
    """
    ordered = sort_periods(periods)
    n = len(ordered)
    if n - horizon < 2:
        span = f" ({ordered[0]}–{ordered[-1]})" if ordered else ""
        kind = f"{granularity} " if granularity else ""
        raise ConfigError(
            f"forecast.horizon = {horizon} holds out {min(horizon, n)} of the {n} {kind}period(s){span} and leaves "
            f"{max(n - horizon, 0)} past period(s); forecasting needs at least 2: lower forecast.horizon or add periods"
        )
    return ordered[:-horizon], ordered[-horizon:]


def check_horizon(config: ExperimentConfig) -> None:
    """The forecast stage's preconditions: :func:`split_history` for every configured granularity, and
    the optional modules of every configured method installed (a ConfigError naming the extra)."""
    for granularity in config.granularities:
        split_history(config.period_list(granularity), config.forecast.horizon, granularity)
    for method in config.forecast.methods:
        for module in get_method(method).requires:
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"forecast.methods lists {method}, which needs {module}: pip install 'timevec[forecast]' "
                                  f"(or leave {method} out of forecast.methods)")


def past_only(load_vector: LoadVector, past: Sequence[str], what: str = "forecast") -> LoadVector:
    """``load_vector`` restricted to ``past``: any other period raises :class:`HeldOutError`."""
    allowed = frozenset(past)

    def load(period: str) -> Any:
        if period not in allowed:
            raise HeldOutError(f"{what}: read of the vector of {period}, which is not a past period ({', '.join(past)})")
        return load_vector(period)

    return load


# ----------------------------------------------------------------------------- the methods


def _steps(a: str, b: str) -> int:
    return steps_between(a, b)


def forecast_coefficients(method: str, past: Sequence[str], target: str, params: ForecastParams) -> Coefficients:
    """The forecast of ``target`` as ``[(cᵢ, past period)]``, in time order (the registered method's).

    ``past`` are the stored past periods; ``target`` must come after the last of them.
    """
    return get_method(method).coefficients(past, target, params)


def forecast_terms(
    method: str, past_periods: Sequence[str], target: str, load_vector: LoadVector, params: ForecastParams
) -> list[Term]:
    """:func:`forecast_coefficients` with each period's vector read by ``load_vector``."""
    return [(c, load_vector(p)) for c, p in forecast_coefficients(method, past_periods, target, params)]


def history_of(method: str, past: Sequence[str], target: str, params: ForecastParams) -> str:
    """The ``history`` column: the past periods a row was built from, comma-joined.

    base none; in_period only the target itself; a method its ``history`` hook, else the periods of
    its coefficient list.
    """
    past = sort_periods(past)
    if method == "base":
        return ""
    if method == "in_period":
        return str(target)
    spec = get_method(method)
    if spec.history is not None:
        return spec.history(past, target, params)
    return ",".join(p for _, p in spec.coefficients(past, target, params))


def _param(method: str, past: Sequence[str], target: str, params: ForecastParams) -> float:
    if method in BASELINES:
        return math.nan
    spec = get_method(method)
    return spec.param(past, target, params) if spec.param is not None else math.nan


def method_cost(method: str) -> int:
    """The stage's scheduling order of a method's items (the longest first: low first)."""
    if method in BASELINES:
        return 1 if method == "in_period" else 2
    return get_method(method).cost


def choose_scale(
    evaluate_weights: EvaluateWeights,
    load_vector: LoadVector,
    past: Sequence[str],
    validation: EvalSplit,
    lambdas: Sequence[float],
    higher: bool,
) -> tuple[float, list[tuple[float, float]]]:
    """scaled_latest's λ: the best λ·τ_{n−1} on p_n's validation split; returns (λ, [(λ, value)]).

    The step from p_{n−1} to p_n is the last one whose outcome is known when p* begins, so it is the
    one λ is fitted on. Ties keep the first (smallest) λ of the grid. The values compared (and returned)
    are on the examples every λ scored (:func:`timevec.evaluate.per_example.on_common_prefix`).
    """
    past = sort_periods(past)
    if validation.period != past[-1] or validation.split != "validation":
        raise ValueError(f"λ is chosen on {past[-1]}'s validation split, got {validation.period}'s {validation.split} split")
    previous = load_vector(past[-2])
    grid = [float(lam) for lam in sorted(lambdas)]
    rows = [evaluate_weights([(lam, previous)], [validation])[0] for lam in grid]
    trace = [(lam, float(row["value"])) for lam, row in zip(grid, on_common_prefix(rows))]  # target_halfwidth
    best_lam, best = trace[0]
    for lam, value in trace[1:]:
        if better(value, best, higher):
            best_lam, best = lam, value
    return best_lam, trace


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ForecastItem:
    """One method (or baseline) of one (task, granularity) on the held-out periods still to evaluate."""

    task: str
    granularity: str
    method: str
    past: tuple[str, ...]  # the stored past periods, in order; the last is "latest"
    targets: tuple[str, ...]
    params: ForecastParams


def _key(task: str, granularity: str, method: str, target: str, past: Sequence[str], params: ForecastParams) -> tuple:
    return (task, granularity, method, str(target), int(_steps(past[-1], target)), history_of(method, past, target, params))


def forecast_done(table: pd.DataFrame | None) -> set[tuple]:
    """The :data:`~timevec.results.FORECAST_KEY` tuples present in a forecast table."""
    if table is None or table.empty:
        return set()
    keys = table[FORECAST_KEY].astype({"target_period": str, "history": str}).astype({"horizon": "int64"})
    return set(map(tuple, keys.itertuples(index=False, name=None)))


def plan_forecast(
    task: str,
    granularity: str,
    periods: Sequence[str],
    stored: Sequence[str],
    horizon: int,
    params: ForecastParams,
    methods: Sequence[str],
    done: set[tuple] | None = None,
    gram_of: Callable[[tuple[str, ...]], Any] | None = None,
) -> tuple[list[ForecastItem], str | None]:
    """(items still to evaluate, a note when nothing can be forecast).

    Past periods are the configured ones before the held-out ones that have a stored vector; the
    in_period oracle is planned for held-out periods whose own vector is stored. ``gram_of(past)``:
    the Gram matrix of the PAST vectors (called at most once, only when a planned method needs it,
    and only ever with the past periods), attached to those methods' items as ``params.gram``.
    """
    past_all, held_out = split_history(periods, horizon, granularity)
    stored_set = set(stored)
    past = tuple(p for p in past_all if p in stored_set)
    if len(past) < 2:
        return [], f"{task}/{granularity}: {len(past)} stored past vector(s) before {held_out[0]}, nothing to forecast"
    done = done or set()
    items = []
    gram = None
    for method in ("base", "latest", "in_period", *(m for m in methods if m != "latest")):
        targets = [t for t in held_out if method != "in_period" or t in stored_set]
        missing = tuple(t for t in targets if _key(task, granularity, method, t, past, params) not in done)
        if missing:
            item_params = params
            if method not in BASELINES and get_method(method).needs_gram:
                if gram_of is None:
                    raise ValueError(f"forecast method {method} needs the past vectors' Gram matrix: pass gram_of")
                if gram is None:
                    gram = tuple(tuple(float(x) for x in row) for row in gram_of(past))
                item_params = replace(params, gram=gram)
            items.append(ForecastItem(task, granularity, method, past, missing, item_params))
    return items, None


# ----------------------------------------------------------------------------- evaluation


def _cell_values(
    evaluate_weights: EvaluateWeights,
    known: KnownValue | None,
    source: str,
    terms: Callable[[], Sequence[Term]],
    targets: Sequence[str],
    tests: Mapping[str, EvalSplit],
) -> dict[str, float]:
    """The value of one weight state on each target's test split: cells ``(source, target)`` when
    ``known`` has them, the rest in one evaluation (``terms()`` is called only then)."""
    values = {t: known(source, t) if known is not None else None for t in targets}
    missing = [t for t, v in values.items() if v is None]
    if missing:
        rows = evaluate_weights(terms(), [tests[t] for t in missing])
        values.update({t: value_of(rows, i) for i, t in enumerate(missing)})
    return {t: float(v) for t, v in values.items() if v is not None}  # every missing value was evaluated above


def _evaluate_grouped(
    evaluate_weights: EvaluateWeights,
    load: LoadVector,
    item: ForecastItem,
    params: ForecastParams,
    targets: Sequence[str],
    tests: Mapping[str, EvalSplit],
    paired: bool = False,
) -> dict[str, dict[str, Any]]:
    """Each target's forecast row on its test split; targets with the same coefficients share one evaluation."""
    groups: dict[tuple, list[str]] = {}
    for t in targets:
        groups.setdefault(tuple(forecast_coefficients(item.method, item.past, t, params)), []).append(t)
    out: dict[str, dict[str, Any]] = {}
    for coefficients, members in groups.items():
        terms = [(c, load(p)) for c, p in coefficients]
        out.update(zip(members, _evaluate(evaluate_weights, terms, [tests[t] for t in members], paired)))
    return out


def _evaluate(evaluate_weights: EvaluateWeights, terms: Any, splits: list[EvalSplit], paired: bool) -> list[dict[str, Any]]:
    if paired:
        return evaluate_weights(terms, splits, keep_replicates=True)  # type: ignore[call-arg]
    return evaluate_weights(terms, splits)


def _gain_interval(row: Mapping[str, Any] | None, reference: Mapping[str, Any] | None, higher: bool,
                   pct: bool, confidence: float = 0.95) -> tuple[float, float]:
    """The paired bootstrap interval of the gain over the reference (the same resampled test examples)."""
    a = np.asarray((row or {}).get("replicates", ()), dtype=np.float64)
    b = np.asarray((reference or {}).get("replicates", ()), dtype=np.float64)
    if a.size == 0 or a.size != b.size:
        return math.nan, math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = (a - b) if higher else (b - a)
        values = np.where(b != 0, diff / np.abs(b) * 100.0, np.nan) if pct else diff
    interval = interval_of(values, confidence)
    return float(interval.low), float(interval.high)


def evaluate_item(
    evaluate_weights: EvaluateWeights,
    load_vector: LoadVector,
    item: ForecastItem,
    tests: Mapping[str, EvalSplit],
    validation: Mapping[str, EvalSplit],
    known: KnownValue | None = None,
    load_oracle: LoadVector | None = None,
) -> list[dict[str, Any]]:
    """Rows of :data:`~timevec.results.FORECAST_COLUMNS` for one item (one work item of the stage).

    ``tests``: test splits by period (the held-out ones are used); ``validation``: validation splits
    by period, of which only the last past period's is ever evaluated. ``load_vector`` is wrapped in
    :func:`past_only`; ``load_oracle`` (any period) serves the in_period row alone, when ``known``
    lacks its cell (without either, that row is left out).
    """
    label = f"forecast {item.task}/{item.granularity} {item.method}"
    load = past_only(load_vector, item.past, label)
    targets = [t for t in item.targets if t in tests]
    for t in item.targets:
        if t not in tests:
            log.warning("%s: no test split of %s, no row", label, t)
    if not targets:
        return []
    higher, latest = task_higher(item.task), item.past[-1]
    params = item.params
    if item.method not in BASELINES:
        spec = get_method(item.method)
        if spec.choose is not None:
            chosen = spec.choose(ChoiceContext(evaluate_weights, load, item.past, validation, higher, params, label))
            if chosen is None:
                return []
            params = chosen
    paired = takes_replicates(evaluate_weights)  # a bootstrap interval for every gain (cells carry no replicates)
    rows_of: dict[str, dict[str, Any]] = {}
    if paired:
        ref_rows = dict(zip(targets, _evaluate(evaluate_weights, [(1.0, load(latest))], [tests[t] for t in targets], True)))
        reference = {t: float(r["value"]) for t, r in ref_rows.items()}
    else:
        ref_rows = {}
        reference = _cell_values(evaluate_weights, known, latest, lambda: [(1.0, load(latest))], targets, tests)
    if item.method == "latest":
        values, rows_of = reference, ref_rows
    elif item.method == "base":
        if paired:
            rows_of = dict(zip(targets, _evaluate(evaluate_weights, [], [tests[t] for t in targets], True)))
            values = {t: float(r["value"]) for t, r in rows_of.items()}
        else:
            values = _cell_values(evaluate_weights, known, "base", lambda: [], targets, tests)
    elif item.method == "in_period":
        values = {}
        for t in targets:
            value = known(t, t) if known is not None and not (paired and load_oracle is not None) else None
            if value is None and load_oracle is not None:
                rows_of[t] = _evaluate(evaluate_weights, [(1.0, load_oracle(t))], [tests[t]], paired)[0]
                value = rows_of[t]["value"]
            if value is not None:
                values[t] = float(value)
    else:
        rows_of = _evaluate_grouped(evaluate_weights, load, item, params, targets, tests, paired)
        values = {t: float(r["value"]) for t, r in rows_of.items()}
    rows = []
    for t in targets:
        if t not in values:
            continue
        value, row, ref, base_value = values[t], rows_of.get(t), ref_rows.get(t), reference[t]
        if row is not None and ref is not None:  # the gain on the examples both scored (target_halfwidth)
            row, ref = on_common_prefix([row, ref])
            value_on, base_value = float(row["value"]), float(ref["value"])
        else:
            value_on = value
        rows.append({
            "task": item.task, "granularity": item.granularity, "method": item.method,
            "selection": ORACLE if item.method == "in_period" else PAST_ONLY, "target_period": t,
            "horizon": _steps(latest, t), "history": history_of(item.method, item.past, t, params),
            "param": _param(item.method, item.past, t, params), "split": "test", "metric": task_metric(item.task),
            "value": value, "higher_is_better": higher,
            "gain_vs_latest": gain(value_on, base_value, higher),
            "gain_vs_latest_pct": gain_pct(value_on, base_value, higher),
        })
        rows[-1]["gain_vs_latest_low"], rows[-1]["gain_vs_latest_high"] = _gain_interval(row, ref, higher, pct=False)
        rows[-1]["gain_vs_latest_pct_low"], rows[-1]["gain_vs_latest_pct_high"] = _gain_interval(row, ref, higher, pct=True)
    return rows


#: Methods that see only the past, in registration order; ``latest`` is also the reference of every gain.
FORECASTS = method_names()
