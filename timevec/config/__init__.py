"""The experiment config: pydantic models loaded from YAML, every field validated.

One file describes a whole study (base model, corpus, periods, tasks, training, store, Ray
resources, evaluation and the α grids), so any stage can be re-run anywhere from the config and
the store alone. Unknown keys are errors (``extra="forbid"``) because a misspelt key that is
silently ignored is how a 300-run fleet trains with the wrong learning rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from timevec.config.sections import (
    TASKS,
    BaseConfig,
    CapConfig,
    CorpusConfig,
    LoraConfig,
    PeriodRange,
    PretrainConfig,
    RayConfig,
    SplitConfig,
    StoreConfig,
    Task,
    TinyModel,
    TrainingConfig,
    _Strict,
)
from timevec.config.stages import (
    AnalogyConfig,
    EvaluationConfig,
    ForecastConfig,
    GroupsConfig,
    InterpolationConfig,
    MergeConfig,
    MergeMethodName,
    Pooling,
    ProbeConfig,
    SignMethod,
)
from timevec.errors import ConfigError
from timevec.periods import Granularity, Period, PeriodError, check_granularity

__all__ = [
    "TASKS", "AnalogyConfig", "BaseConfig", "CapConfig", "ConfigError", "CorpusConfig", "EvaluationConfig",
    "ExperimentConfig", "ForecastConfig", "GroupsConfig", "InterpolationConfig", "LoraConfig", "MergeConfig",
    "PeriodRange", "PretrainConfig", "ProbeConfig", "RayConfig", "SplitConfig", "StoreConfig", "Task", "TinyModel",
    "TrainingConfig", "dump_config", "load_config", "MergeMethodName", "Pooling",
    "SignMethod",
]


class ExperimentConfig(_Strict):
    """A whole study."""

    name: str = Field("timevec", pattern=r"^[A-Za-z0-9_.-]+$",
                      description="study name, used in Ray run names (letters, digits, `_`, `.`, `-`)")
    seed: int = Field(42, description="global seed: the default of `merge.seed` and `probe.seed`, and the analogy search's "
                                      "(`training.seed` seeds the fine-tunes)")
    base: BaseConfig = Field(BaseConfig(), description="The pretrained model θ_pre: an embedded tiny model built from a config "
                             "(no download) and pretrained here, or a hub model, a local `save_pretrained` directory or a "
                             "packaged preset. The store records the base by its weights' fingerprint and a portable `name`, "
                             "never by a local path.")
    corpus: CorpusConfig = Field(description="Where the dated records come from and which columns mean what.")
    granularities: list[Granularity] = Field(default_factory=lambda: ["year"],  # type: ignore[arg-type]  # the literals are the list's type
                                             description="any of `year`, `quarter`, `month`, `week` (ISO weeks: "
                                             "`2015-W53`) and `day`: a time vector per year, per month, …, or several "
                                             "granularities side by side")
    periods: PeriodRange = Field(description="The periods of the study: `{start: \"YYYY\", end: \"YYYY\"}`, whole years (of "
                                 "ISO weeks in a weekly study: 2016 is 2016-W01..2016-W52). For monthly runs only a bound may be "
                                 "a month (`\"2017-11\"`), so a monthly study can be extended one month at a time (see [Adding "
                                 "a new period](GUIDE.md#adding-a-new-period)); so may a quarter, ISO week or day bound "
                                 "(`\"2017-Q2\"`, `\"2017-W05\"`, `\"2017-03-09\"`) for runs of that granularity only.")
    month_periods: PeriodRange | None = Field(None, description="A narrower range for monthly runs, which use it when given "
                                              "(the same form as `periods`).")
    exclude_periods: list[str] = Field(default_factory=list, description="Periods of the study left out of every stage "
                                       "(training, evaluation and all that follows), e.g. a week the corpus barely covers. "
                                       "When the stages start, the `corpus.min_examples` rule adds every period too small "
                                       "for a task here, printing one line per period, task and count.")
    tasks: list[Task] = Field(default_factory=lambda: ["lm"],  # type: ignore[arg-type]  # the literals are the list's type
                              description="`lm` (perplexity; next-block for T5, next-token for decoder-only), `classification` "
                              "(macro-F1, labels scored by likelihood; needs `corpus.label_column`), `summarization` (ROUGE-L; "
                              "needs `corpus.summary_source_column` and `corpus.summary_target_column`)")
    training: TrainingConfig = Field(TrainingConfig(), description="Hyper-parameters of one fine-tune (one run per (task, "
                                     "period)); `task_overrides` and `granularity_overrides` change them per task or granularity.")
    store: StoreConfig = Field(StoreConfig(), description="Where the time vectors, manifests and result tables are written "
                               "(a folder or S3), and how.")
    ray: RayConfig = Field(RayConfig(), description="How the distributed stages use Ray: the cluster, and the resources of each "
                           "fine-tune run and evaluation actor.")
    evaluation: EvaluationConfig = Field(EvaluationConfig(), description="How every cell (a model on a task's test split of a "
                                         "period) is evaluated, and its bootstrap interval.")
    interpolation: InterpolationConfig = Field(InterpolationConfig(), description="The interpolation stage's α grid between "
                                               "two periods' vectors, and the greedy time soups.")
    analogy: AnalogyConfig = Field(AnalogyConfig(), description="Task analogies: θ = θ_pre + α1·τ_task(j) + α2·τ_lm(k) − "
                                   "α3·τ_lm(j) moves a task model from period j to a later period k with unlabeled text of k "
                                   "only; the α's are searched with Ray Tune (the grid, or Optuna), selected on validation.")
    merge: MergeConfig = Field(MergeConfig(), description="How every combination of ≥ 2 vectors (soups, interpolation, "
                               "patching, analogies, forecasts) is merged: peft's merge functions, tensor by tensor. Single "
                               "vectors and the base are never merged. `bench/merge_methods.py [--write]` compares the methods "
                               "in one table (`results/merge_methods.parquet`).")
    # built on use (default_factory): its default method names come from adapt's registry, which imports the config
    forecast: ForecastConfig = Field(default_factory=ForecastConfig, description="The forecast stage: hold out the last "
                                     "`horizon` periods of each granularity and predict their weights from earlier vectors "
                                     "only. Whether the horizon leaves at least two past periods is checked when the stage "
                                     "starts, so a short study still loads for its other stages.")
    groups: GroupsConfig = Field(GroupsConfig(), description="Where in the weights time lives: per parameter group and layer "
                                 "statistics in the analyze stage, and group swaps (τ_j with one group taken from τ_k) in the "
                                 "`groups` stage.")
    probe: ProbeConfig = Field(ProbeConfig(), description="`timevec probe`: linear time probes, ridge regression from hidden "
                               "states to each text's date. Texts come from the validation and test splits of every period "
                               "(never what a vector was fine-tuned on).")

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if not self.granularities:
            raise ValueError("granularities is empty")
        if not self.tasks:
            raise ValueError("tasks is empty")
        if "year" in self.granularities and self.periods.has_month_bounds():
            raise ValueError(f"periods: month bounds ({self.periods.start}, {self.periods.end}) are for monthly runs only; "
                             "with granularity year give years here and the months in month_periods")
        bound = self.periods.bound_granularity()
        if bound is not None and set(self.granularities) != {bound}:
            raise ValueError(f"periods: {bound} bounds ({self.periods.start}, {self.periods.end}) are for runs of granularity "
                             f"{bound} only; with granularities {', '.join(self.granularities)} give years here")
        if self.month_periods is not None and self.month_periods.bound_granularity() not in (None, "month"):
            raise ValueError(f"month_periods: bounds ({self.month_periods.start}, {self.month_periods.end}) are years or "
                             "months")
        self._check_excluded()
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

    @field_validator("exclude_periods")
    @classmethod
    def _normal_periods(cls, value: list[str]) -> list[str]:
        try:
            return [str(Period.parse(p)) for p in value]
        except PeriodError as exc:
            raise ValueError(str(exc)) from None

    def _check_excluded(self) -> None:
        """Every excluded period is one of the study's, and each granularity keeps at least one period."""
        ranges = {g: self._period_range(g) for g in self.granularities}
        for period in self.exclude_periods:
            if not any(period in r for r in ranges.values()):
                raise ValueError(f"exclude_periods: {period} is not a period of the study "
                                 f"({', '.join(f'{g} {r[0]}..{r[-1]}' for g, r in ranges.items())})")
        for granularity, periods in ranges.items():
            if not set(periods) - set(self.exclude_periods):
                raise ValueError(f"exclude_periods leaves no {granularity} period of {periods[0]}..{periods[-1]}")

    def _period_range(self, granularity: Granularity) -> list[str]:
        if granularity == "month" and self.month_periods is not None:
            return self.month_periods.periods("month")
        return self.periods.periods(granularity)

    def period_list(self, granularity: Granularity) -> list[str]:
        """The periods of one granularity that this study trains and tests on: its range, less ``exclude_periods``.

        Every stage takes the study's periods from here, so a period left out (by hand or by the
        ``corpus.min_examples`` rule, :mod:`timevec.data.min_examples`) is left out of all of them alike.
        """
        periods = self._period_range(check_granularity(granularity))
        if not self.exclude_periods:
            return periods
        excluded = set(self.exclude_periods)
        return [p for p in periods if p not in excluded]

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
            if err["type"] == "literal_error":  # say what was given: "Input should be 'lm' or …, got 'translation'"
                message += f", got {err['input']!r}"
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
