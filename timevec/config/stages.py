"""The config's stage sections: evaluation, interpolation, analogy, merge methods, forecasts,
probes and group swaps — what each later stage computes and on which grid.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from timevec.config.sections import Task, _Strict
from timevec.param_groups import GROUPS
from timevec.periods import Period, PeriodError


class EvaluationConfig(_Strict):
    batch_size: int = Field(32, ge=1, description="examples per evaluation batch")
    max_examples: int | None = Field(None, ge=1, description="cap per test split (examples spread over the split); null: all")
    max_length: int = Field(128, ge=8, description="tokens per evaluated example")
    summary_max_new_tokens: int = Field(48, ge=1, description="tokens a summary may generate (summarization)")
    bootstrap_samples: int = Field(
        1000, ge=0, description="bootstrap resamples of the test examples per cell, for the cells' `low`/`high` interval "
        "(`timevec.evaluate.bootstrap`); 0: off, NaN bounds"
    )
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="confidence of the cells' bootstrap intervals")
    bootstrap_seed: int = Field(0, ge=0, description="seed of the resample indices and, under `target_halfwidth`, of each "
                                "test split's example order (both shared by every cell of a split)")
    target_halfwidth: float | None = Field(
        None, gt=0.0, description="evaluate each cell to this precision: it scores its test split in blocks of "
        "`block_examples`, in one seeded order per split (the same for every vector), until the bootstrap half-width of "
        "its value at `confidence` is at most this — percent of the value for perplexity, points (0–100) for macro-F1 "
        "and ROUGE-L (a half-width of 0, resamples that all agree, does not stop a cell) — or the split (at most "
        "`max_examples`) is used up; comparisons of two cells use the examples both scored "
        "(`timevec.evaluate.sequential`). null: every example"
    )
    block_examples: int = Field(16, ge=2, description="`target_halfwidth`: examples scored between two checks of the "
                                "half-width (also the fewest a cell scores); a block is batched on its own, so one "
                                "smaller than `batch_size` leaves its batches part empty")
    design: Literal["full", "band"] = Field(
        "full", description="which cells of each (task, granularity) matrix the evaluate stage evaluates: `full` every "
        "one; `band` every cell with |train period − test period| ≤ `design_band` periods plus a seeded `design_fraction` "
        "of the others, at least two a row and a column (`timevec.evaluate.design`); the `complete` stage "
        "then estimates the rest, each with an interval, as cells rows with `estimated` true"
    )
    design_band: int = Field(1, ge=0, description="`design: band`: the diagonal band evaluated, in periods of gap")
    design_fraction: float = Field(0.2, ge=0.0, le=1.0, description="`design: band`: the share of the cells outside the "
                                   "band evaluated (a hash of the seed and the cell's periods decides each one, so adding "
                                   "a period evaluates only its new cells)")

    @model_validator(mode="after")
    def _target_needs_bootstrap(self) -> EvaluationConfig:
        if self.target_halfwidth is not None and self.bootstrap_samples == 0:
            raise ValueError("evaluation.target_halfwidth needs the bootstrap (evaluation.bootstrap_samples > 0): the "
                             "half-width is the bootstrap interval's")
        return self


def _alpha_grid(start: float, stop: float, step: float) -> list[float]:
    n = int(round((stop - start) / step))
    return [round(start + i * step, 10) for i in range(n + 1)]


class InterpolationConfig(_Strict):
    alphas: list[float] = Field(default_factory=lambda: _alpha_grid(0.0, 1.0, 0.1),
                                description="the α grid in [0, 1]; α = weight of the LATER vector")
    soup_max_distance: int | None = Field(
        None, ge=1, description="greedy time soups try vectors at most this many periods away; null: every stored vector"
    )

    @field_validator("alphas")
    @classmethod
    def _in_unit(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("interpolation.alphas is empty")
        bad = [a for a in value if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"interpolation.alphas must lie in [0, 1]; got {bad}")
        return sorted(set(value))


class AnalogyConfig(_Strict):
    task: Task = Field("classification", description="the task whose vector τ_task(j) is moved to k")
    alpha1: list[float] = Field(default_factory=lambda: _alpha_grid(0.6, 2.2, 0.2), description="grid of α1, the weight of τ_task(j)")
    alpha2: list[float] = Field(default_factory=lambda: _alpha_grid(0.1, 0.6, 0.1), description="grid of α2, the weight of τ_lm(k)")
    alpha3: list[float] = Field(default_factory=lambda: _alpha_grid(0.1, 0.6, 0.1),
                                description="grid of α3, the weight subtracted of τ_lm(j)")
    searcher: Literal["grid", "optuna"] = Field(
        "grid", description="`grid`: every point of alpha1 × alpha2 × alpha3; `optuna`: `num_samples` points proposed by "
        "Optuna's TPE over the same grid"
    )
    num_samples: int = Field(40, ge=1, description="trials for the optuna searcher")
    source_periods: list[str] | None = Field(None, description="the periods j; default: the first period (k: every later year; "
                                                     "in a study of quarters, weeks or days alone: every later period of "
                                                     "its coarsest granularity)")
    max_concurrent_trials: int = Field(2, ge=1, description="Ray Tune trials at once")
    scheduler: Literal["full", "asha"] = Field(
        "full", description="`full`: every point scores the whole validation and test splits; `asha`: successive halving "
        "(Ray Tune's ASHA) with validation examples as the resource: every point scores its first `grace_examples` of the "
        "validation split's seeded order, the clearly worse are stopped at each rung, the rest continue; only points that "
        "scored the whole validation split are chosen, and only they are scored on test. Default `full`: on the demo's "
        "24-example splits ASHA scored 81–92 % of the examples in no less wall time (bench/README.md, analogy: full vs asha)"
    )
    grace_examples: int = Field(16, ge=1, description="`asha`: validation examples every point scores before it can be "
                                "stopped (the first rung; the whole split when it has fewer)")
    reduction_factor: float = Field(3.0, gt=1.0, description="`asha`: rung r is at grace_examples·reduction_factor^r "
                                    "examples; a point passes a rung when it is in the best 1/reduction_factor of the "
                                    "points recorded there")

    @field_validator("source_periods")
    @classmethod
    def _valid_periods(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        try:
            return [str(Period.parse(str(p))) for p in value]
        except PeriodError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("alpha1", "alpha2", "alpha3")
    @classmethod
    def _finite_nonneg(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("an analogy α list is empty")
        bad = [a for a in value if not (0.0 <= a <= 10.0)]
        if bad:
            raise ValueError(f"analogy α values must lie in [0, 10]; got {bad}")
        return value


MergeMethodName = Literal["task_arithmetic", "ties", "dare_linear", "dare_ties", "magnitude_prune"]
SignMethod = Literal["total", "frequency"]


class MergeConfig(_Strict):
    """How combinations of ≥ 2 vectors are merged (soups, interpolation, analogies, forecasts).

    The methods are ``peft.utils.merge_utils``'s, applied tensor by tensor (:mod:`timevec.weights.merging`);
    single vectors and the base are never merged. ``density``: fraction of each tensor the
    pruning methods keep; ``seed``: DARE's seed (default: the experiment's ``seed``).
    """

    method: MergeMethodName = Field(
        "task_arithmetic", description="the merge method (`peft.utils.merge_utils`'s function, tensor by tensor; "
        "`timevec.weights.merging`)"
    )
    density: float = Field(
        0.5, gt=0.0, le=1.0, description="`ties` / `dare_*` / `magnitude_prune`: fraction of each tensor kept, in (0, 1]"
    )
    majority_sign_method: SignMethod = Field(
        "total", description="`ties` / `dare_ties`: sign election by `total` mass or by count (`frequency`)"
    )
    seed: int | None = Field(None, description="`dare_*`: seed of the drop masks; default: the experiment's `seed`")

    @field_validator("density", "seed", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        # YAML's `true` would otherwise pass as 1 / 1.0
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        return value


#: The forecast methods, in the registry's order (:mod:`timevec.adapt.forecast_methods`, which declares each
#: one once with its function and checks, when its methods load, that it registered exactly these): the names a
#: config may hold, declared at the config like the merge methods (:data:`MergeMethodName`), so that the config
#: checks them without importing the methods. ``latest`` is always evaluated with the baselines base and in_period.
FORECAST_METHODS: tuple[str, ...] = ("latest", "taylor", "trend", "ema", "scaled_latest", "uniform_soup", "subspace",
                                     "subspace_simplex")


class ForecastConfig(_Strict):
    """The forecast stage: hold out the last ``horizon`` periods, predict their weights from earlier vectors.

    Whether the horizon leaves at least two past periods depends on the periods of each
    granularity; the forecast stage checks it when it starts (:func:`timevec.adapt.forecast.split_history`),
    so a short study still loads for its other stages.
    """

    horizon: int = Field(2, ge=1, description="H: the last H periods of each granularity are held out and forecast")
    trend_window: int = Field(3, ge=2, description="m: the trend is a least-squares line through the last m past vectors")
    ema_decay: float = Field(0.5, gt=0.0, lt=1.0, description="β: the EMA weighs a vector k periods old by β^k")
    lambdas: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5],
                                 description="the grid of λ for `scaled_latest` (λ·τ_latest), chosen on the past")
    subspace_max_rank: int = Field(3, ge=1, description="subspace: the most principal coordinates k (k chosen past-only)")
    subspace_max_order: int = Field(2, ge=0, description="subspace: the highest AR order p (p, d chosen past-only)")
    methods: list[str] = Field(default_factory=lambda: [m for m in FORECAST_METHODS if m != "latest"],
                               description="registered forecast methods (`timevec.adapt.forecast_methods`); default: all. base, "
                               "latest and the in-period oracle are always evaluated")

    @field_validator("lambdas")
    @classmethod
    def _positive_finite(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("forecast.lambdas is empty")
        bad = [v for v in value if not 0.0 < v <= 10.0]  # NaN fails too
        if bad:
            raise ValueError(f"forecast.lambdas must lie in (0, 10]; got {bad}")
        return sorted(set(value))

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("forecast.methods is empty")
        known = FORECAST_METHODS[1:]  # not latest
        unknown = [m for m in value if m not in known]
        if unknown:
            raise ValueError(f"forecast.methods: unknown method(s) {unknown} (known: {', '.join(known)}; "
                             "latest, base and in_period are always evaluated)")
        return list(dict.fromkeys(value))


#: What one text's hidden states are pooled to: the last real token, or the mean over the attention mask.
Pooling = Literal["last", "mean"]


class ProbeConfig(_Strict):
    """Linear time probes (:mod:`timevec.analyze.probe`): ridge regression from hidden states to each text's date.

    Texts come from the validation and test splits of every period (never what a vector was
    fine-tuned on); ``test_fraction`` of them, stratified by period and drawn with ``seed``, are
    held out from the probe's fit. ``layers``: indices into ``output_hidden_states`` (0 = the
    embeddings; default: every layer). ``tasks``: whose stored vectors give the tuned models.
    """

    texts_per_period: int = Field(200, ge=4, description="texts drawn per period (from its validation + test splits)")
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="share of each period's texts held out from the fit "
                                 "(stratified by period, drawn with `seed`)")
    layers: list[int] | None = Field(None, description="indices into `output_hidden_states` (0 = the embeddings); default: every layer")
    poolings: list[Pooling] = Field(default_factory=lambda: ["last", "mean"],  # type: ignore[arg-type]  # the literals are the list's type
                                    description="what a text's hidden states are pooled to: the `last` real token, or the "
                                    "`mean` over the attention mask")
    alphas: list[float] = Field(default_factory=lambda: [round(10.0 ** (k / 2), 6) for k in range(-6, 11)],
                                description="RidgeCV's grid (default 10^-3 … 10^5, half decades)")
    tasks: list[Task] = Field(default_factory=lambda: ["lm"], description="tasks whose stored vectors give the tuned models")  # type: ignore[arg-type]  # the literals are the list's type
    batch_size: int = Field(32, ge=1, description="texts per forward pass")
    max_length: int | None = Field(None, ge=8, description="tokens per text; default: `evaluation.max_length`")
    seed: int | None = Field(None, description="seed of the text draw and the held-out split; default: the experiment's `seed`")

    @field_validator("layers")
    @classmethod
    def _distinct_layers(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 0 or len(set(value)) != len(value)):
            raise ValueError(f"probe.layers must be distinct indices >= 0, at least one (got {value})")
        return value

    @field_validator("poolings", "tasks")
    @classmethod
    def _some(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("is empty")
        return list(dict.fromkeys(value))

    @field_validator("alphas")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        bad = [a for a in value if not 0.0 < a < 1e12]  # NaN fails too
        if not value or bad:
            raise ValueError(f"probe.alphas must be positive and finite, at least one (bad: {bad or 'empty'})")
        return sorted(set(value))


class GroupsConfig(_Strict):
    """Where in the weights time lives (:mod:`timevec.analyze.weight_groups`, :mod:`timevec.adapt.group_swaps`).

    ``analyze``: per parameter group and layer, the norms, cosines and r(cosine, degradation) in the
    analyze stage (one extra streaming pass over the vectors, no evaluation). ``swaps``: the
    ``groups`` stage evaluates τ_j with each group from τ_k on k, for ``pairs`` (default: the first
    and the last period of each granularity, both ways) of ``tasks`` (default: every task) — one
    evaluation per (pair, group).
    """

    analyze: bool = Field(
        True, description="per parameter group and layer, the norms, cosines and r(cosine, degradation) in the analyze stage "
        "(one extra streaming pass over the vectors, no evaluation)"
    )
    swaps: bool = Field(
        False, description="the `groups` stage: evaluate τ_j with each group taken from τ_k on k, one evaluation per (pair, group)"
    )
    pairs: list[tuple[str, str]] | None = Field(
        None, description="(j, k) periods; default: the first and the last stored period of each granularity, both ways"
    )
    tasks: list[Task] | None = Field(None, description="tasks whose vectors are swapped; default: every task")
    groups: list[str] | None = Field(None, description="groups to swap; default: every group the base has")

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs_as_text(cls, value: Any) -> Any:
        # YAML reads [[2012, 2017]] as numbers; periods are strings everywhere
        if isinstance(value, list):
            return [[str(p) for p in pair] if isinstance(pair, (list, tuple)) else pair for pair in value]
        return value

    @field_validator("groups")
    @classmethod
    def _known_groups(cls, value: list[str] | None) -> list[str] | None:
        bad = [g for g in value or [] if g not in GROUPS]
        if bad:
            raise ValueError(f"unknown group(s) {bad}; choose from {list(GROUPS)}")
        return value

