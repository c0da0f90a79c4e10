"""The experiment config: pydantic models loaded from YAML, every field validated.

One file describes a whole study (base model, corpus, periods, tasks, training, store, Ray
resources, evaluation and the α grids), so any stage can be re-run anywhere from the config and
the store alone. Unknown keys are errors (``extra="forbid"``) because a misspelt key that is
silently ignored is how a 300-run fleet trains with the wrong learning rate.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from timevec.credentials import refuse_credentials
from timevec.periods import Granularity, Period, PeriodError, period_range

Task = Literal["lm", "classification", "summarization"]
TASKS: tuple[Task, ...] = ("lm", "classification", "summarization")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModel(_Strict):
    """Sizes of the embedded tiny model (built from a config, no download)."""

    d_model: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    d_ff: int = Field(256, ge=8)
    max_positions: int = Field(256, ge=16, description="decoder-only context length")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


class PretrainConfig(_Strict):
    """The short 'pretraining' that turns the embedded tiny model into a real base."""

    steps: int = Field(300, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_length: int = Field(128, ge=8)


class BaseConfig(_Strict):
    """The pretrained model θ_pre.

    ``source: hub`` loads with the Auto classes from ``hub_id``: a Hugging Face model id
    (``google-t5/t5-small``) or a local directory that ``save_pretrained`` wrote (the same
    ``from_pretrained`` path either way), optionally one GGUF file in it (``gguf_file``,
    dequantised on load). ``preset`` names a base that a pip package ships (see
    :mod:`timevec.presets`; ``smollm2-135m-instruct``) and implies ``source: hub``. The store
    records the base by its weights' fingerprint and a portable ``name`` (default: the preset's
    name, the hub id, or a local directory's folder name), never by a local path.
    """

    source: Literal["embedded", "hub"] = "embedded"
    arch: Literal["t5", "gpt2"] = Field("t5", description="embedded architecture: encoder-decoder or decoder-only")
    hub_id: str | None = Field(
        None, description="Hugging Face model id (google-t5/t5-small) or a local save_pretrained directory (source: hub)"
    )
    revision: str | None = None
    gguf_file: str | None = Field(None, description="a GGUF file inside hub_id to load (dequantised), e.g. model.Q4_1.gguf")
    preset: str | None = Field(None, description="a packaged base, e.g. smollm2-135m-instruct (implies source: hub)")
    name: str | None = Field(None, description="portable base name recorded in the store; default from preset/hub_id")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the base is loaded and fine-tuned in (the store keeps its own store.dtype)"
    )
    tiny: TinyModel = TinyModel()
    pretrain: PretrainConfig = PretrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _preset_is_hub(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") and "source" not in data:
            data = {**data, "source": "hub"}
        return data

    @field_validator("hub_id")
    @classmethod
    def _absolute_local_dir(cls, value: str | None) -> str | None:
        # Tune runs each trial in its own working directory: a relative folder would name another one there
        if value is None:
            return value
        from timevec.presets import looks_local

        return os.path.abspath(os.path.expanduser(value)) if looks_local(value) else value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        from timevec.presets import PRESETS

        if value is not None and value not in PRESETS:
            raise ValueError(f"unknown preset {value!r} (known: {', '.join(sorted(PRESETS))})")
        return value

    @model_validator(mode="after")
    def _hub_needs_id(self) -> BaseConfig:
        if self.preset and self.source != "hub":
            raise ValueError("base.preset needs base.source 'hub' (or leave source out)")
        if self.preset and (self.hub_id or self.gguf_file):
            raise ValueError("give base.preset or base.hub_id/gguf_file, not both")
        if self.source == "hub" and not (self.hub_id or self.preset):
            raise ValueError("base.hub_id (or base.preset) is required when base.source is 'hub'")
        if self.source == "embedded" and (self.hub_id or self.gguf_file):
            raise ValueError("base.hub_id/gguf_file are for base.source 'hub'")
        return self


class SplitConfig(_Strict):
    """Fractions of each period's rows held out; the rest is train."""

    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _leave_train(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError(f"split.validation + split.test = {self.validation + self.test} leaves no train rows")
        return self


class CapConfig(_Strict):
    """Per-period row caps (after splitting); null means no cap."""

    train: int | None = Field(None, ge=1)
    validation: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)


class CorpusConfig(_Strict):
    """Where dated records come from and which columns mean what."""

    source: str = Field(..., description="'demo:trump_tweets' or a file URL/path (Parquet, JSONL, CSV; .gz ok)")
    format: Literal["auto", "parquet", "jsonl", "csv"] = "auto"
    text_column: str = "text"
    date_column: str = "date"
    label_column: str | None = None
    summary_source_column: str | None = Field(None, description="summarisation input column, e.g. body")
    summary_target_column: str | None = Field(None, description="summarisation target column, e.g. subject")
    key_column: str | None = Field(None, description="stable row key for the split hash; default: hash of date+text")
    bad_dates: Literal["report", "reject"] = Field(
        "report", description="rows with missing/unparseable dates: count and report them, or fail"
    )
    min_rows_per_period: int = Field(1, ge=1, description="a period with fewer rows is an error")
    split: SplitConfig = SplitConfig()
    caps: CapConfig = CapConfig()
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options; never credentials")

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        return refuse_credentials(value)


class LoraConfig(_Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="default: peft's choice for the architecture")
    store: Literal["dense", "factors"] = Field(
        "dense",
        description="how τ is stored: 'dense' (merged, the reference protocol and every existing store) or "
        "'factors' (B, A and α/r per target module, the low-rank kind: timevec.lowrank)",
    )


class TrainingConfig(_Strict):
    """Hyper-parameters of one fine-tune (one per (task, period))."""

    lr: float = Field(8e-4, gt=0)
    steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(128, ge=8)
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "linear"] = "linear"
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 42
    seeds: list[int] | None = Field(
        None, description="seed replicates: the study once per seed, each in <store.url>/seeds/<seed> (timevec.replicates)"
    )
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints (resume points)")
    lora: LoraConfig | None = None
    task_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-task overrides of any field above, e.g. {classification: {epochs: 3}}"
    )
    granularity_overrides: dict[Granularity, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-granularity overrides applied after the task's, e.g. {month: {steps: 40}} (a month has ~1/12 of a year's text)",
    )
    mode: Literal["independent", "continual"] = Field(
        "independent",
        description="continual: the run for period t starts from θ_pre + τ_{t−1} (timevec.continual); τ_t is still θ_t − θ_pre",
    )
    replay: float = Field(
        0.0, ge=0.0, le=1.0,
        description="continual only: replay round(replay·n_t) training examples drawn from the earlier periods of the chain",
    )

    @model_validator(mode="after")
    def _continual_settings(self) -> TrainingConfig:
        if not math.isfinite(self.replay):
            raise ValueError(f"training.replay must be a finite fraction in [0, 1] (got {self.replay})")
        if self.replay > 0 and self.mode != "continual":
            raise ValueError(f"training.replay {self.replay} needs training.mode: continual (got mode {self.mode!r})")
        for where, overrides in (("task_overrides", self.task_overrides), ("granularity_overrides", self.granularity_overrides)):
            for key, fields in overrides.items():
                if "mode" in fields:
                    raise ValueError(f"training.{where}.{key}.mode: the mode is one per study (its store), not per task")
        return self

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"training.seeds must be distinct seeds, at least one (got {seeds})")
        return seeds

    def for_task(self, task: str, granularity: Granularity | None = None) -> TrainingConfig:
        """The settings of one run: this config with the task's, then the granularity's overrides."""
        overrides = {**self.task_overrides.get(task, {}), **(self.granularity_overrides.get(granularity, {}) if granularity else {})}
        if not overrides:
            return self
        data = self.model_dump()
        data.update(overrides)
        data["task_overrides"] = {}
        data["granularity_overrides"] = {}
        return TrainingConfig.model_validate(data)


class StoreConfig(_Strict):
    url: str = "./runs/demo"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    target_shard_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="shard plan: bytes per shard")
    checksum: Literal["xxh3_128", "sha256"] = Field(
        "xxh3_128", description="checksum of new shards (readers follow each manifest; old ones say sha256)"
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options, e.g. {endpoint_url: http://...}; never credentials"
    )
    lease_seconds: float = Field(
        120.0, gt=0, description="a writing driver's store lease expires this long after its last renewal (ARCHITECTURE §3)"
    )

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        return refuse_credentials(value)


class RayConfig(_Strict):
    """How the distributed stages use Ray."""

    address: str | None = Field(None, description="None: attach to RAY_ADDRESS or start a local cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster started by timevec")
    storage_path: str | None = Field(None, description="Train/Tune storage; default <store>/ray")
    cpus_per_run: float = Field(1.0, gt=0)
    gpus_per_run: float = Field(0.0, ge=0)
    workers_per_run: int = Field(0, ge=0, description="0: train inside the Tune trial; >=1: a TorchTrainer per run")
    max_concurrent_runs: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)
    eval_actors: int = Field(2, ge=1)
    cpus_per_eval_actor: float = Field(1.0, gt=0)
    gpus_per_eval_actor: float = Field(0.0, ge=0)
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per run/actor on CPU")
    eval_actor_memory_mb: float | None = Field(
        None, gt=0, description="cap (MiB of private writable memory, RLIMIT_DATA) on what an evaluation actor may map beyond "
        "θ_pre and the splits once loaded; an item over it is retried on a restarted actor, then reported (ARCHITECTURE §4); None: no cap",
    )
    eval_actor_memory_kind: Literal["data", "cgroup"] = Field(
        "data", description="how eval_actor_memory_mb is enforced: 'data' (RLIMIT_DATA: an allocation over it fails, the "
        "item is retried, then reported) or 'cgroup' (a memory cgroup per actor: the kernel's OOM killer kills the actor, "
        "as a container limit does; needs a writable cgroup filesystem)",
    )
    autoscaling: bool = Field(
        False, description="the cluster adds nodes on demand: do not fail fast when no current node fits a run or actor"
    )
    dashboard: bool = Field(False, description="a local cluster starts Ray's dashboard (its URL is logged); costs seconds at start")
    report_interval_s: float = Field(
        0.5, ge=0, description="a fleet run reports its per-step metrics at most this often (checkpoints always); 0: every step"
    )

    @field_validator("storage_path")
    @classmethod
    def _absolute_local_path(cls, value: str | None) -> str | None:
        # Tune runs each trial in its own working directory: a relative folder would name another one there
        if value is None or "://" in value:
            return value
        return os.path.abspath(os.path.expanduser(value))


class EvaluationConfig(_Strict):
    batch_size: int = Field(32, ge=1)
    max_examples: int | None = Field(None, ge=1, description="cap per test split")
    max_length: int = Field(128, ge=8)
    summary_max_new_tokens: int = Field(48, ge=1)
    bootstrap_samples: int = Field(
        1000, ge=0, description="bootstrap resamples of the test examples per cell (timevec.bootstrap); 0: off, NaN bounds"
    )
    confidence: float = Field(0.95, gt=0.0, lt=1.0, description="confidence of the cells' bootstrap intervals")
    bootstrap_seed: int = Field(0, ge=0, description="seed of the resample indices (shared by every cell of a split)")


def _alpha_grid(start: float, stop: float, step: float) -> list[float]:
    n = int(round((stop - start) / step))
    return [round(start + i * step, 10) for i in range(n + 1)]


class InterpolationConfig(_Strict):
    alphas: list[float] = Field(default_factory=lambda: _alpha_grid(0.0, 1.0, 0.1))
    soup_max_distance: int | None = Field(
        None, ge=1, description="greedy soups try vectors at most this many periods away; None: every stored vector"
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
    task: Task = "classification"
    alpha1: list[float] = Field(default_factory=lambda: _alpha_grid(0.6, 2.2, 0.2))
    alpha2: list[float] = Field(default_factory=lambda: _alpha_grid(0.1, 0.6, 0.1))
    alpha3: list[float] = Field(default_factory=lambda: _alpha_grid(0.1, 0.6, 0.1))
    searcher: Literal["grid", "optuna"] = "grid"
    num_samples: int = Field(40, ge=1, description="trials for the optuna searcher")
    source_periods: list[str] | None = Field(None, description="j; default: the first period")
    max_concurrent_trials: int = Field(2, ge=1)

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

    The methods are ``peft.utils.merge_utils``'s, applied tensor by tensor (:mod:`timevec.merging`);
    single vectors and the base are never merged. ``density``: fraction of each tensor the
    pruning methods keep; ``seed``: DARE's seed (default: the experiment's ``seed``).
    """

    method: MergeMethodName = "task_arithmetic"
    density: float = Field(0.5, gt=0.0, le=1.0, description="ties / dare_* / magnitude_prune: fraction of each tensor kept")
    majority_sign_method: SignMethod = Field("total", description="ties / dare_ties: sign election by total mass or by count")
    seed: int | None = Field(None, description="dare_*: seed of the drop masks; default: the experiment seed")


#: The forecast methods a config can choose (the baselines base, latest and in_period are always evaluated).
ForecastMethod = Literal["taylor", "trend", "ema", "scaled_latest", "uniform_soup"]
FORECAST_METHODS: tuple[ForecastMethod, ...] = ("taylor", "trend", "ema", "scaled_latest", "uniform_soup")


class ForecastConfig(_Strict):
    """The forecast stage: hold out the last ``horizon`` periods, predict their weights from earlier vectors.

    Whether the horizon leaves at least two past periods depends on the periods of each
    granularity; the forecast stage checks it when it starts (:func:`timevec.forecast.split_history`),
    so a short study still loads for its other stages.
    """

    horizon: int = Field(2, ge=1, description="H: the last H periods of each granularity are held out and forecast")
    trend_window: int = Field(3, ge=2, description="m: the trend is a least-squares line through the last m past vectors")
    ema_decay: float = Field(0.5, gt=0.0, lt=1.0, description="β: the EMA weighs a vector k periods old by β^k")
    lambdas: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5],
                                 description="the grid of λ for scaled_latest (λ·τ_latest), chosen on the past")
    methods: list[ForecastMethod] = Field(default_factory=lambda: list(FORECAST_METHODS))

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
        return list(dict.fromkeys(value))


#: What one text's hidden states are pooled to: the last real token, or the mean over the attention mask.
Pooling = Literal["last", "mean"]


class ProbeConfig(_Strict):
    """Linear time probes (:mod:`timevec.probe`): ridge regression from hidden states to each text's date.

    Texts come from the validation and test splits of every period (never what a vector was
    fine-tuned on); ``test_fraction`` of them, stratified by period and drawn with ``seed``, are
    held out from the probe's fit. ``layers``: indices into ``output_hidden_states`` (0 = the
    embeddings; default: every layer). ``tasks``: whose stored vectors give the tuned models.
    """

    texts_per_period: int = Field(200, ge=4, description="texts drawn per period (from its validation + test splits)")
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="share of each period's texts held out from the fit")
    layers: list[int] | None = Field(None, description="hidden-state indices (0 = embeddings); default: all")
    poolings: list[Pooling] = Field(default_factory=lambda: ["last", "mean"])
    alphas: list[float] = Field(default_factory=lambda: [round(10.0 ** (k / 2), 6) for k in range(-6, 11)],
                                description="RidgeCV's grid (default 10^-3 … 10^5, half decades)")
    tasks: list[Task] = Field(default_factory=lambda: ["lm"], description="tasks whose vectors are probed")
    batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(None, ge=8, description="tokens per text; default: evaluation.max_length")
    seed: int | None = Field(None, description="text draw and held-out split; default: the experiment seed")

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


class PeriodRange(_Strict):
    """Bounds are years (whole years of periods) or, for monthly runs only, months ("2017-03"), so
    that a monthly study can be extended one month at a time (ARCHITECTURE §12)."""

    start: str
    end: str

    @field_validator("start", "end")
    @classmethod
    def _valid_year(cls, value: str) -> str:
        try:
            period = Period.parse(str(value))
        except PeriodError as exc:
            raise ValueError(str(exc)) from None
        return str(period)

    @model_validator(mode="after")
    def _ordered(self) -> PeriodRange:
        try:
            self.periods("month")
        except PeriodError:
            raise ValueError(f"periods.end {self.end} is before periods.start {self.start}") from None
        return self

    def has_month_bounds(self) -> bool:
        return Period.parse(self.start).granularity == "month" or Period.parse(self.end).granularity == "month"

    def periods(self, granularity: Granularity) -> list[str]:
        """Every period of ``granularity`` between the bounds (whole years, or from/to a month bound)."""
        if granularity == "year":
            return [str(p) for p in period_range(self.start, self.end)]
        first = self.start if Period.parse(self.start).granularity == "month" else f"{self.start}-01"
        last = self.end if Period.parse(self.end).granularity == "month" else f"{self.end}-12"
        return [str(p) for p in period_range(first, last)]


class GroupsConfig(_Strict):
    """Where in the weights time lives (:mod:`timevec.weight_groups`, :mod:`timevec.group_swaps`).

    ``analyze``: per parameter group and layer, the norms, cosines and r(cosine, degradation) in the
    analyze stage (one extra streaming pass over the vectors, no evaluation). ``swaps``: the
    ``groups`` stage evaluates τ_j with each group from τ_k on k, for ``pairs`` (default: the first
    and the last period of each granularity, both ways) of ``tasks`` (default: every task) — one
    evaluation per (pair, group).
    """

    analyze: bool = True
    swaps: bool = False
    pairs: list[tuple[str, str]] | None = Field(None, description="(j, k) periods; default: first↔last")
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
        from timevec.param_groups import GROUPS

        bad = [g for g in value or [] if g not in GROUPS]
        if bad:
            raise ValueError(f"unknown group(s) {bad}; choose from {list(GROUPS)}")
        return value


class ExperimentConfig(_Strict):
    """A whole study."""

    name: str = Field("timevec", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 42
    base: BaseConfig = BaseConfig()
    corpus: CorpusConfig
    granularities: list[Granularity] = Field(default_factory=lambda: ["year"])
    periods: PeriodRange
    month_periods: PeriodRange | None = Field(None, description="narrower year range for monthly runs")
    tasks: list[Task] = Field(default_factory=lambda: ["lm"])
    training: TrainingConfig = TrainingConfig()
    store: StoreConfig = StoreConfig()
    ray: RayConfig = RayConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    interpolation: InterpolationConfig = InterpolationConfig()
    analogy: AnalogyConfig = AnalogyConfig()
    merge: MergeConfig = MergeConfig()
    forecast: ForecastConfig = ForecastConfig()
    groups: GroupsConfig = GroupsConfig()
    probe: ProbeConfig = ProbeConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if not self.granularities:
            raise ValueError("granularities is empty")
        if not self.tasks:
            raise ValueError("tasks is empty")
        if "year" in self.granularities and self.periods.has_month_bounds():
            raise ValueError(f"periods: month bounds ({self.periods.start}, {self.periods.end}) are for monthly runs only; "
                             "with granularity year give years here and the months in month_periods")
        if "classification" in self.tasks and not self.corpus.label_column:
            raise ValueError("tasks includes classification but corpus.label_column is not set")
        if "summarization" in self.tasks and not (
            self.corpus.summary_source_column and self.corpus.summary_target_column
        ):
            raise ValueError("tasks includes summarization but corpus.summary_source/target_column are not set")
        for task in self.training.task_overrides:
            if task not in TASKS:
                raise ValueError(f"training.task_overrides.{task}: unknown task (expected one of {TASKS})")
            self.training.for_task(task)
        for granularity in self.training.granularity_overrides:
            self.training.for_task(self.tasks[0], granularity)
        return self

    def period_list(self, granularity: Granularity) -> list[str]:
        """The periods of one granularity that this study trains and tests on."""
        if granularity == "month" and self.month_periods is not None:
            return self.month_periods.periods("month")
        return self.periods.periods(granularity)

    def all_periods(self) -> list[str]:
        return [p for g in self.granularities for p in self.period_list(g)]

    def with_overrides(self, overrides: list[str]) -> ExperimentConfig:
        """Apply ``dotted.key=value`` overrides (YAML values), re-validating everything."""
        data = self.model_dump()
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key.path=value")
            key, raw = item.split("=", 1)
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    if node.get(part) is None and part in node:
                        node[part] = {}
                    else:
                        raise ConfigError(f"override {key!r}: {part!r} is not a section")
                node = node[part]
            node[parts[-1]] = yaml.safe_load(raw)
        return _validate(data, "overrides")


def _validate(data: Any, origin: str) -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the config must be a mapping, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"  {where}: {message}")
        raise ConfigError(f"{origin}: invalid config\n" + "\n".join(problems)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load and validate a YAML config; errors name the file and each bad key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    config = _validate(data, str(path))
    return config.with_overrides(overrides) if overrides else config


def dump_config(config: ExperimentConfig) -> str:
    """The config as YAML (what a run's manifest records to be repeated)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
