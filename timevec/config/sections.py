"""The config's input and resource sections: the base, the corpus, the periods, training, the store
and Ray. Every section is a strict pydantic model: unknown keys are errors (``extra="forbid"``),
because a misspelt key that is silently ignored is how a 300-run fleet trains with the wrong
learning rate.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from timevec.config.presets import PRESETS, looks_local
from timevec.credentials import refuse_credentials
from timevec.periods import Granularity, Period, PeriodError, period_range

Task = Literal["lm", "classification", "summarization"]
TASKS: tuple[Task, ...] = ("lm", "classification", "summarization")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModel(_Strict):
    """Sizes of the embedded tiny model (built from a config, no download)."""

    d_model: int = Field(64, ge=8, description="hidden size")
    num_layers: int = Field(2, ge=1, description="layers (t5: of the encoder and of the decoder each)")
    num_heads: int = Field(4, ge=1, description="attention heads")
    d_ff: int = Field(256, ge=8, description="inner size of the feed-forward blocks")
    max_positions: int = Field(256, ge=16, description="decoder-only (gpt2) context length")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability of the model")


class PretrainConfig(_Strict):
    """The short 'pretraining' that turns the embedded tiny model into a real base."""

    steps: int = Field(300, ge=0, description="pretraining optimizer steps (0: the randomly initialised model is the base)")
    batch_size: int = Field(32, ge=1, description="examples per pretraining step")
    lr: float = Field(1e-3, gt=0, description="pretraining learning rate")
    max_length: int = Field(128, ge=8, description="tokens per pretraining example")


class BaseConfig(_Strict):
    """The pretrained model θ_pre.

    ``source: hub`` loads with the Auto classes from ``hub_id``: a Hugging Face model id
    (``google-t5/t5-small``) or a local directory that ``save_pretrained`` wrote (the same
    ``from_pretrained`` path either way), optionally one GGUF file in it (``gguf_file``,
    dequantised on load). ``preset`` names a base that a pip package ships (see
    :mod:`timevec.config.presets`; ``smollm2-135m-instruct``) and implies ``source: hub``. The store
    records the base by its weights' fingerprint and a portable ``name`` (default: the preset's
    name, the hub id, or a local directory's folder name), never by a local path.
    """

    source: Literal["embedded", "hub"] = Field(
        "embedded", description="`embedded`: the tiny model of `arch` and `tiny`, pretrained with `pretrain` (no download); "
        "`hub`: loaded with the Auto classes from `hub_id` or `preset`",
    )
    arch: Literal["t5", "gpt2"] = Field("t5", description="embedded architecture: `t5` encoder-decoder or `gpt2` decoder-only")
    hub_id: str | None = Field(
        None, description="Hugging Face model id (e.g. `google-t5/t5-small`) or a local `save_pretrained` directory (`source: hub`)"
    )
    revision: str | None = Field(None, description="the hub revision of `hub_id` (branch, tag or commit); default: `main`")
    gguf_file: str | None = Field(None, description="a GGUF file inside `hub_id` to load (dequantised), e.g. `model.Q4_1.gguf`")
    preset: str | None = Field(
        None, description="a base that a pip package ships (`timevec.config.presets`), e.g. `smollm2-135m-instruct`; implies `source: hub`"
    )
    name: str | None = Field(
        None, description="portable base name recorded in the store; default: the preset's name, the hub id (with its revision), "
        "or a local directory's folder name"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the base is loaded and fine-tuned in (the store keeps its own `store.dtype`)"
    )
    tiny: TinyModel = Field(TinyModel(), description="sizes of the embedded tiny model (`source: embedded` only)")
    pretrain: PretrainConfig = Field(
        PretrainConfig(), description="the short pretraining that turns the embedded tiny model into a real base (`source: embedded` only)"
    )

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
        return os.path.abspath(os.path.expanduser(value)) if looks_local(value) else value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
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

    validation: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of each period's rows in its validation split")
    test: float = Field(0.1, gt=0.0, lt=1.0, description="fraction of each period's rows in its test split")

    @model_validator(mode="after")
    def _leave_train(self) -> SplitConfig:
        if self.validation + self.test >= 1.0:
            raise ValueError(f"split.validation + split.test = {self.validation + self.test} leaves no train rows")
        return self


class CapConfig(_Strict):
    """Per-period row caps (after splitting); null means no cap."""

    train: int | None = Field(None, ge=1, description="train rows per period; null: no cap")
    validation: int | None = Field(None, ge=1, description="validation rows per period; null: no cap")
    test: int | None = Field(None, ge=1, description="test rows per period; null: no cap")


class CorpusConfig(_Strict):
    """Where dated records come from and which columns mean what."""

    source: str = Field(
        ..., description="`demo:trump_tweets`, any fsspec file URL/path or glob (Parquet, JSONL, CSV; `.gz` ok), a datasets "
        "`save_to_disk` directory, a local dataset repository (data files + card: what `load_dataset(path)` reads), or "
        "`hf://datasets/<owner>/<name>`")
    format: Literal["auto", "parquet", "jsonl", "csv"] = Field(
        "auto", description="the files' format; `auto`: from the name (`.parquet`, `.jsonl`/`.json`/`.ndjson`, `.csv`/`.tsv`)"
    )
    text_column: str = Field("text", description="column of each record's text")
    date_column: str = Field("date", description="column of each record's date, which puts it in a period")
    label_column: str | None = Field(None, description="column of each record's class label (needed by `tasks: [classification]`)")
    summary_source_column: str | None = Field(None, description="summarisation input column, e.g. `body`")
    summary_target_column: str | None = Field(None, description="summarisation target column, e.g. `subject`")
    key_column: str | None = Field(None, description="stable row key for the split hash; default: hash of date+text")
    split_column: str | None = Field(
        None, description="take each row's split from this column (train/validation/test; valid/dev too) instead of the hash "
        "split; a datasets source with several splits has them in the column `split`")
    bad_dates: Literal["report", "reject"] = Field(
        "report", description="rows with missing/unparseable dates: count and report them, or fail"
    )
    min_rows_per_period: int = Field(1, ge=1, description="a period with fewer train or test rows is an error")
    min_examples: int = Field(
        0, ge=0, description="a period whose train or test split has fewer rows a task can use (lm: rows; classification: "
        "labelled rows; summarization: rows with both summary columns) is dropped from the study when the stages start, "
        "one printed line per period, task and count, and listed in `exclude_periods` (every task keeps the same periods); "
        "0: no period is dropped, and one below `min_rows_per_period` is an error")
    split: SplitConfig = Field(SplitConfig(), description="fractions of each period's rows held out (by a stable hash of each "
                               "row's key); the rest is train")
    caps: CapConfig = Field(CapConfig(), description="row caps per period, after splitting (rows per year, spread evenly over "
                            "its months: a weekly or daily study keeps about a 52nd or 365th of the cap per period)")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options; never credentials")

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        return refuse_credentials(value)


class LoraConfig(_Strict):
    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA α: the update is α/r · BA")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout probability on the LoRA path")
    target_modules: list[str] | None = Field(
        None, description="modules that get LoRA adapters; default: peft's choice for the architecture"
    )
    store: Literal["dense", "factors"] = Field(
        "dense",
        description="how τ is stored: `dense` (merged, the reference protocol and every existing store) or "
        "`factors` (B, A and α/r per target module instead of dense, the low-rank kind: `timevec.weights.lowrank`, ARCHITECTURE §13)",
    )


class TrainingConfig(_Strict):
    """Hyper-parameters of one fine-tune (one per (task, period))."""

    lr: float = Field(8e-4, gt=0, description="peak learning rate (AdamW)")
    steps: int | None = Field(None, ge=1, description="optimizer steps; overrides `epochs`")
    epochs: float = Field(1.0, gt=0, description="passes over the period's train split, when `steps` is not set")
    batch_size: int = Field(16, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step (gradient accumulation)")
    max_length: int = Field(128, ge=8, description="tokens per training example")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the steps over which the learning rate warms up linearly")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    schedule: Literal["constant", "linear"] = Field(
        "linear", description="learning rate after the warmup: `constant`, or `linear` decay to 0 at the last step"
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="`bf16`: the forward pass under bfloat16 autocast; `fp32`: none")
    seed: int = Field(42, description="seed of each fine-tune (batch order, dropout, LoRA initialisation)")
    seeds: list[int] | None = Field(
        None, description="seed replicates: the study once per seed, each in `<store.url>/seeds/<seed>/` on one shared base "
        "(`timevec.train.replicates`); findings over seeds in `results/findings_seeds.parquet`"
    )
    checkpoint_every: int = Field(50, ge=1, description="steps between checkpoints (resume points)")
    lora: LoraConfig | None = Field(
        None, description="fine-tune LoRA adapters instead of every weight; they are merged before τ is taken. null: full fine-tune"
    )
    task_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-task overrides of any field above, e.g. `{classification: {epochs: 3}}`"
    )
    granularity_overrides: dict[Granularity, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-granularity overrides applied after the task's, e.g. `{month: {steps: 40}}` (a month has ~1/12 of a year's text)",
    )
    mode: Literal["independent", "continual", "equal_steps"] = Field(
        "independent",
        description="`independent`: every run starts from θ_pre. "
                    "`continual`: the run for period t starts from θ_pre + τ_{t−1} (`timevec.train.continual`); τ_t is still θ_t − θ_pre; "
                    "its own store `<store.url>/continual` (`continual-replay-<replay>` with replay). "
                    "`equal_steps`: the continual chain's control, an independent run from θ_pre trained for as many steps as "
                    "the chain has by period t ((position of t + 1) × steps; needs `steps`), in `<store.url>/continual-equal-steps`",
    )
    replay: float = Field(
        0.0, ge=0.0, le=1.0,
        description="`continual` only, 0–1: replay round(replay·n_t) training examples drawn from the earlier periods of the chain",
    )

    @model_validator(mode="after")
    def _continual_settings(self) -> TrainingConfig:
        if not math.isfinite(self.replay):
            raise ValueError(f"training.replay must be a finite fraction in [0, 1] (got {self.replay})")
        if self.replay > 0 and self.mode != "continual":
            raise ValueError(f"training.replay {self.replay} needs training.mode: continual (got mode {self.mode!r})")
        if self.mode == "equal_steps" and self.steps is None:
            raise ValueError("training.mode equal_steps multiplies training.steps by the chain position: set training.steps")
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
    url: str = Field("./runs/demo", description="the store: a folder or `s3://bucket/prefix` (any fsspec URL)")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="dtype the time vectors are stored in")
    target_shard_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="shard plan: bytes per shard")
    checksum: Literal["xxh3_128", "sha256"] = Field(
        "xxh3_128", description="checksum of new shards (readers follow each manifest; old ones say `sha256`)"
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options, e.g. `{endpoint_url: http://...}`; credentials are refused: they come "
        "from the AWS chain"
    )
    shared: bool = Field(
        False, description="a local-path url is a filesystem mounted at the same path on every node (NFS, a cluster "
        "filesystem): allowed on a multi-node Ray cluster, where an unshared one is refused",
    )
    lease_seconds: float = Field(
        120.0, gt=0, description="a stage driver's store lease (one per stage) expires this long after its last renewal; a second "
        "driver of the stage on the store exits 2 naming the first (ARCHITECTURE §3)"
    )

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        return refuse_credentials(value)


class RayConfig(_Strict):
    """How the distributed stages use Ray."""

    address: str | None = Field(None, description="the Ray cluster's address; null: attach to `RAY_ADDRESS` or start a local cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local cluster started by timevec")
    storage_path: str | None = Field(None, description="Train/Tune storage; default `<store>/ray`")
    cpus_per_run: float = Field(1.0, gt=0, description="CPUs each fine-tune run (each Train worker) reserves")
    gpus_per_run: float = Field(0.0, ge=0, description="GPUs each fine-tune run (each Train worker) reserves; fractional ok")
    workers_per_run: int = Field(0, ge=0, description="0: train inside the Tune trial; ≥ 1: a TorchTrainer per run")
    memory_per_run_mb: float | None = Field(
        None, gt=0, description="memory (MiB) each fine-tune run (each Train worker) declares to Ray, which places no more "
        "runs on a node than fit; null: estimated from θ_pre (process + 5x θ_pre for a full fine-tune, 2x with LoRA)",
    )
    max_concurrent_runs: int = Field(2, ge=1, description="fine-tune runs at once")
    runs_per_experiment: int | None = Field(
        200, ge=1, description="a fleet larger than this runs as consecutive Tune experiments of at most this many runs, so "
        "Tune's driver holds at most this many trials (≈ 45 kB each) whatever the fleet's size; each starts its trial "
        "processes anew (one cold run each); null: one experiment",
    )
    max_failures: int = Field(2, ge=0, description="retries of a failed fine-tune run (Ray's `FailureConfig`), and of an evaluation item "
                              "that ran out of memory (on a fresh actor)")
    eval_actors: int = Field(2, ge=1, description="evaluation actors, each holding θ_pre once")
    cpus_per_eval_actor: float = Field(1.0, gt=0, description="CPUs each evaluation actor reserves")
    gpus_per_eval_actor: float = Field(0.0, ge=0, description="GPUs each evaluation actor reserves; fractional ok")
    allow_cpu_fallback: bool = Field(
        False, description="a run or evaluation actor that Ray gave a GPU but whose torch sees no CUDA device runs on the "
        "CPU with a warning; false: the study stops with exit status 2 naming the node, `CUDA_VISIBLE_DEVICES` and the torch build",
    )
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per run/actor on CPU")
    eval_actor_memory_mb: float | None = Field(
        None, gt=0, description="cap (MiB of private writable memory, RLIMIT_DATA) on what an evaluation actor may map beyond "
        "θ_pre and the splits once loaded; an item over it is retried on a fresh actor, then reported (ARCHITECTURE §4); null: no cap",
    )
    eval_actor_memory_kind: Literal["data", "cgroup"] = Field(
        "data", description="how `eval_actor_memory_mb` is enforced: `data` (RLIMIT_DATA: an allocation over it fails, the "
        "item is retried, then reported) or `cgroup` (a memory cgroup per actor: the kernel's OOM killer kills the actor, "
        "as a container limit does; needs a writable cgroup filesystem)",
    )
    fault_first_attempt_headroom_mb: float | None = Field(
        None, gt=0, description="fault injection, for tests: the first attempt of every evaluation item maps ballast "
        "(private, untouched) that leaves only this many MiB of the `eval_actor_memory_mb` cap (kind `data`, above this) free "
        "while it works, so an item needing more runs out of memory there and its retry on a fresh actor, without "
        "ballast, need not; null: off",
    )
    autoscaling: bool = Field(
        False, description="the cluster adds nodes on demand: do not fail fast when no current node fits a run or actor"
    )
    dashboard: bool = Field(False, description="a local cluster starts Ray's dashboard (its URL is logged); costs seconds at start")
    report_interval_s: float = Field(
        0.5, ge=0, description="a fleet run reports its per-step metrics at most this often (checkpoints always); 0: every step"
    )
    loggers: list[Literal["mlflow"]] = Field(
        default_factory=list, description="experiment trackers beside TensorBoard (always on): `mlflow` records every fine-tune's "
        "curve and every α-search trial with Ray Tune's MLflow callback (extra: `timevec[mlflow]`)",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="where `ray.loggers`' mlflow writes; default `file://<store>/mlruns` (a local store only)"
    )

    @model_validator(mode="after")
    def _headroom_under_a_data_cap(self) -> RayConfig:
        headroom, cap = self.fault_first_attempt_headroom_mb, self.eval_actor_memory_mb
        if headroom is not None and (cap is None or self.eval_actor_memory_kind != "data" or headroom >= cap):
            raise ValueError(
                f"fault_first_attempt_headroom_mb={headroom:g} needs eval_actor_memory_mb above it and "
                f"eval_actor_memory_kind 'data' (got {cap}, {self.eval_actor_memory_kind!r})"
            )
        return self

    @field_validator("storage_path")
    @classmethod
    def _absolute_local_path(cls, value: str | None) -> str | None:
        # Tune runs each trial in its own working directory: a relative folder would name another one there
        if value is None or "://" in value:
            return value
        return os.path.abspath(os.path.expanduser(value))


class PeriodRange(_Strict):
    """Bounds are years (whole years of periods) or, for runs of one finer granularity only, periods of
    it ("2017-03", "2017-Q2", "2017-W05", "2017-03-09"), so that a study can be extended one month (week,
    …) at a time (ARCHITECTURE §12). A year bound of a weekly study means that ISO year's weeks: 2016 is
    2016-W01..2016-W52 (2016-01-01..03 are in 2015-W53)."""

    start: str = Field(description="the first period: a year `\"YYYY\"`, or (runs of one finer granularity only) a period "
                                   "of it: a month `\"YYYY-MM\"`, quarter `\"YYYY-Qn\"`, ISO week `\"YYYY-Www\"` or day "
                                   "`\"YYYY-MM-DD\"`")
    end: str = Field(description="the last period, included: a year, or (runs of one finer granularity only) a period of it")

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
        finer = {Period.parse(b).granularity for b in (self.start, self.end)} - {"year"}
        if len(finer) > 1:
            raise ValueError(f"periods.start {self.start} and periods.end {self.end} are of two granularities "
                             f"({' and '.join(sorted(finer))}): a bound is a year or a period of the study's one finer granularity")
        try:
            self.periods(self.bound_granularity() or "month")
        except PeriodError:
            raise ValueError(f"periods.end {self.end} is before periods.start {self.start}") from None
        return self

    def bound_granularity(self) -> Granularity | None:
        """The granularity of a bound that is not a year (at most one, checked), or None for two years."""
        finer = [Period.parse(b).granularity for b in (self.start, self.end) if Period.parse(b).granularity != "year"]
        return finer[0] if finer else None

    def has_month_bounds(self) -> bool:
        return self.bound_granularity() == "month"

    def periods(self, granularity: Granularity) -> list[str]:
        """Every period of ``granularity`` between the bounds (whole years, or from/to a bound of that granularity)."""
        if granularity == "year":
            return [str(p) for p in period_range(self.start, self.end)]
        start, end = Period.parse(self.start), Period.parse(self.end)
        first = start if start.granularity == granularity else Period.first_of_year(start.year, granularity)
        last = end if end.granularity == granularity else Period.last_of_year(end.year, granularity)
        return [str(p) for p in period_range(first, last)]
