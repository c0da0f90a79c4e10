"""The min-examples rule (issue 39): a period too small for a task leaves the whole study, named, the others stay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from timevec.config import ConfigError, ExperimentConfig, load_config
from timevec.data.corpus import load_corpus
from timevec.data.min_examples import ShortPeriod, apply_min_examples, short_periods
from timevec.evaluate.cells import plan_cells
from timevec.pipeline import STAGES, run_stages
from timevec.train.plan import plan_runs

#: rows per (ISO week of 2016, split); week 3 is short in test, week 5 short for summarization only
WEEKS = {1: (6, 4), 2: (5, 3), 3: (6, 2), 4: (4, 4), 5: (7, 5)}
NO_SUMMARY = {5: 4}  # week -> train rows whose summary target is empty


def _corpus_file(tmp_path: Path) -> Path:
    rows = []
    for week, (train, test) in WEEKS.items():
        day = f"2016-01-{4 + 7 * (week - 1):02d}" if week < 5 else "2016-02-01"  # the Monday of 2016-W0<week>
        for split, n in (("train", train), ("test", test)):
            for i in range(n):
                empty = split == "train" and i < NO_SUMMARY.get(week, 0)
                rows.append({"date": day, "text": f"week {week} {split} {i}", "part": split,
                             "body": f"body {week} {i}", "subject": "" if empty else f"subject {week} {i}"})
    path = tmp_path / "weeks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path: Path, min_examples: int, tasks: str = "[lm]") -> ExperimentConfig:
    text = (f"corpus: {{source: '{_corpus_file(tmp_path)}', split_column: part, summary_source_column: body, "
            f"summary_target_column: subject, min_examples: {min_examples}}}\n"
            f"periods: {{start: '2016-W01', end: '2016-W05'}}\ngranularities: [week]\ntasks: {tasks}\n"
            f"store: {{url: '{tmp_path / 'store'}'}}\n")
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)


def test_usable_rows_per_task(tmp_path):
    corpus = load_corpus(_config(tmp_path, 0).corpus)
    assert corpus.usable_rows("lm", "2016-W05", "train") == 7
    assert corpus.usable_rows("summarization", "2016-W05", "train") == 7 - 4  # rows with both summary columns
    assert corpus.usable_rows("lm", "2016-W03", "test") == 2
    assert corpus.usable_rows("lm", "2016-W06", "test") == 0  # a week the corpus lacks


def test_a_short_period_is_dropped_and_named_the_others_kept(tmp_path, capsys):
    config = _config(tmp_path, 3)
    corpus = load_corpus(config.corpus)
    assert short_periods(corpus, config) == [ShortPeriod("2016-W03", "lm", "test", 2, 3)]
    kept = apply_min_examples(config, corpus)
    assert capsys.readouterr().out == ("min_examples: dropped period 2016-W03: lm has 2 test examples "
                                       "(corpus.min_examples 3)\n")
    assert kept.period_list("week") == ["2016-W01", "2016-W02", "2016-W04", "2016-W05"]
    assert kept.exclude_periods == ["2016-W03"] and config.period_list("week")[2] == "2016-W03"  # a new config
    # training and evaluation plan from the same list: no run, no vector and no test period of the dropped week
    assert [r.period for r in plan_runs(kept)] == kept.period_list("week")
    items, _ = plan_cells(kept, [("lm", f"2016-W0{w}") for w in range(1, 6)], set(), include_base=True)
    assert {i.period for i in items} == {None, *kept.period_list("week")}
    assert all(i.test_periods == tuple(kept.period_list("week")) for i in items)


def test_each_task_counts_its_own_examples(tmp_path, capsys):
    kept = apply_min_examples(_config(tmp_path, 3, "[lm, summarization]"))
    assert capsys.readouterr().out.splitlines() == [
        "min_examples: dropped period 2016-W03: lm has 2 test examples (corpus.min_examples 3)",
        "min_examples: dropped period 2016-W03: summarization has 2 test examples (corpus.min_examples 3)",
    ]
    assert kept.period_list("week") == ["2016-W01", "2016-W02", "2016-W04", "2016-W05"]
    stricter = apply_min_examples(_config(tmp_path, 4, "[lm, summarization]"))
    assert capsys.readouterr().out.splitlines() == [
        "min_examples: dropped period 2016-W02: lm has 3 test examples (corpus.min_examples 4)",
        "min_examples: dropped period 2016-W02: summarization has 3 test examples (corpus.min_examples 4)",
        "min_examples: dropped period 2016-W03: lm has 2 test examples (corpus.min_examples 4)",
        "min_examples: dropped period 2016-W03: summarization has 2 test examples (corpus.min_examples 4)",
        # week 5 has 7 train rows for lm, but only 3 with a summary: dropped for summarization, so for every task
        "min_examples: dropped period 2016-W05: summarization has 3 train examples (corpus.min_examples 4)",
    ]
    assert stricter.period_list("week") == ["2016-W01", "2016-W04"]


def test_the_default_reads_no_corpus_and_changes_nothing(tmp_path, capsys):
    config = _config(tmp_path, 0).with_overrides(["corpus.source=/nonexistent/corpus.jsonl"])
    assert apply_min_examples(config) is config  # the missing corpus is never opened
    assert capsys.readouterr().out == ""
    too_few = _config(tmp_path, 100)
    with pytest.raises(ConfigError, match=r"corpus.min_examples 100: every week period of the study \(2016-W01..2016-W05\) "
                       "is too small") as err:
        apply_min_examples(too_few)
    assert err.value.exit_status == 2


def test_the_drop_happens_once_where_the_stages_start(tmp_path, capsys):
    """Every stage function is handed the config with the short week left out (one drop, before the first stage)."""
    seen: dict[str, list[str]] = {}

    def stage(name: str):
        def run(config, store):
            seen[name] = config.period_list("week")
            return {}
        return run

    run_stages(_config(tmp_path, 3), ["finetune", "evaluate", "report"], {name: stage(name) for name in STAGES})
    weeks = ["2016-W01", "2016-W02", "2016-W04", "2016-W05"]
    assert seen == {"finetune": weeks, "evaluate": weeks, "report": weeks}
    assert capsys.readouterr().out.count("dropped period 2016-W03") == 1
