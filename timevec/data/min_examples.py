"""The min-examples rule: a period with too little text for a task leaves the study, by rule and by name.

Why: a weekly or daily study has hundreds of periods and some are nearly empty (a holiday week, a
day the source was down). Fine-tuning on ten texts trains on noise, and a test split of three rows
measures nothing; silently doing either would put noise into the all-pairs matrix. Failing the whole
study (what ``corpus.min_rows_per_period`` does) is right for a yearly study with a hole in it and
wrong for a daily one. So with ``corpus.min_examples: N`` a period whose train or test split holds
fewer than N rows usable by one of the study's tasks (:meth:`~timevec.data.corpus.Corpus.usable_rows`)
is dropped, one printed line per (period, task, split) naming the count, and the others are kept.

Where: once, when the stages start (:func:`timevec.pipeline.run_stages` calls :func:`apply_min_examples`
on each replicate's config before its first stage), by adding the periods to ``exclude_periods``: every stage takes its periods
from :meth:`~timevec.config.ExperimentConfig.period_list`, which leaves those out, so training,
evaluation and every later stage see the same, smaller study. A period is dropped for every task alike
(the tasks' matrices keep the same axes); its line names the task(s) it was too small for. With the
default ``min_examples: 0`` the corpus is not even read here and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from timevec.config import ConfigError, ExperimentConfig
from timevec.data.corpus import Corpus, Split, load_corpus

__all__ = ["ShortPeriod", "apply_min_examples", "short_periods"]

#: the splits the rule counts: what a vector is trained on and what its cells are scored on
COUNTED: tuple[Split, ...] = ("train", "test")


@dataclass(frozen=True)
class ShortPeriod:
    """One split of one period with fewer usable rows than the rule asks for, for one task."""

    period: str
    task: str
    split: Split
    count: int
    needed: int

    def line(self) -> str:
        return (f"min_examples: dropped period {self.period}: {self.task} has {self.count} {self.split} examples "
                f"(corpus.min_examples {self.needed})")


def short_periods(corpus: Corpus, config: ExperimentConfig) -> list[ShortPeriod]:
    """Every (period, task, split) of the study below ``corpus.min_examples``, in period order."""
    needed = config.corpus.min_examples
    out = []
    for period in config.all_periods():
        for task in config.tasks:
            for split in COUNTED:
                count = corpus.usable_rows(task, period, split)
                if count < needed:
                    out.append(ShortPeriod(period, task, split, count, needed))
    return out


def apply_min_examples(config: ExperimentConfig, corpus: Corpus | None = None) -> ExperimentConfig:
    """``config`` with every period too small for one of its tasks added to ``exclude_periods``, each printed.

    Unchanged (and the corpus never read) when ``corpus.min_examples`` is 0 or nothing is short. A study
    that the rule would leave without any period of a granularity is a :class:`~timevec.errors.ConfigError`
    naming the granularity (exit status 2).
    """
    if config.corpus.min_examples <= 0:
        return config
    corpus = corpus if corpus is not None else load_corpus(config.corpus)
    short = short_periods(corpus, config)
    if not short:
        return config
    for item in short:
        print(item.line(), flush=True)  # a person always sees what left the study, with or without -v
    dropped = list(dict.fromkeys(item.period for item in short))
    for granularity in config.granularities:
        periods = config.period_list(granularity)
        if not set(periods) - set(dropped):
            raise ConfigError(f"corpus.min_examples {config.corpus.min_examples}: every {granularity} period of the study "
                              f"({periods[0]}..{periods[-1]}) is too small for a task; lower it or widen the periods")
    return config.with_overrides([f"exclude_periods={[*config.exclude_periods, *dropped]}"])
