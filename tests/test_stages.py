"""The stage registry (timevec/stages.py) is the one declaration of each stage: the pipeline, the CLI and the
docs come from it, and what it declares is true of the code."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from timevec import results
from timevec.stages import REGISTRY, STAGES, Stage, command_rows, register

ROOT = Path(__file__).resolve().parents[1]


def test_the_pipeline_the_cli_and_the_guide_come_from_the_registry() -> None:
    from timevec import pipeline
    from timevec.cli import build_parser
    from timevec.distributed.pipeline import STAGE_FUNCTIONS

    assert pipeline.STAGES == STAGES == tuple(REGISTRY) == tuple(STAGE_FUNCTIONS)
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    commands = [c for c in subparsers.choices if c in REGISTRY]
    assert commands == list(STAGES)  # every stage a subcommand, in the pipeline's order
    assert all(helps[name] == stage.help for name, stage in REGISTRY.items())
    guide = (ROOT / "docs" / "GUIDE.md").read_text().splitlines()
    documented = [line for line in guide if any(line.startswith(f"| `timevec {name} CONFIG`") for name in STAGES)]
    assert documented == command_rows(), "docs/GUIDE.md's stage rows: paste timevec.stages.command_rows()"


def test_every_declaration_names_real_tables_sections_and_runners() -> None:
    from timevec.config import ExperimentConfig

    tables = {value for name, value in vars(results).items() if name.endswith("_TABLE") and isinstance(value, str)}
    for stage in REGISTRY.values():
        assert set(stage.writes) | set(stage.reads) <= tables, (stage.name, set(stage.writes) | set(stage.reads) - tables)
        assert stage.section is None or stage.section in ExperimentConfig.model_fields, (stage.name, stage.section)
        assert callable(stage.function()), stage.runner
    assert REGISTRY["report"].reads == results.REPORT_TABLES
    writers = [table for stage in REGISTRY.values() for table in stage.writes]
    assert len(writers) == len(set(writers)), "a table is written by one stage"
    # the stage registry and the table registry say the same of who writes what
    for stage in REGISTRY.values():
        assert set(stage.writes) == {t.name for t in results.TABLES.values() if t.written_by == stage.name}, stage.name
    assert {t.written_by for t in results.TABLES.values()} - set(STAGES) == {"timevec probe", "bench/merge_methods.py --write",
                                                                            "run (replicates)"}


def test_every_table_is_declared_once_and_an_unknown_one_is_named() -> None:
    declared = {value for name, value in vars(results).items() if name.endswith("_TABLE") and isinstance(value, str)}
    assert set(results.TABLES) == declared
    for table in results.TABLES.values():
        assert table.key is None or (table.columns is not None and set(table.key) <= set(table.columns)), table.name
    with pytest.raises(ValueError, match="unknown result table .cell.; the tables: analogy, analogy_best"):
        results.table("cell")


def test_a_stage_declared_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'evaluate' is declared twice"):
        register(Stage("evaluate", "again", None, "timevec.pipeline:report"))
    assert list(REGISTRY) == list(STAGES)


def test_each_skip_rule_says_why_its_stage_does_not_apply() -> None:
    from timevec.config import load_config

    tiny = ROOT / "timevec" / "demo" / "tiny.yaml"
    applies = load_config(tiny, ["training.mode=continual", "groups.swaps=true", "evaluation.design=band"])
    assert {name: stage.skip_reason(applies) for name, stage in REGISTRY.items()} == dict.fromkeys(STAGES)
    short = load_config(tiny, ["periods.end='2015'", "tasks=[classification]"])
    reasons = {name: stage.skip_reason(short) for name, stage in REGISTRY.items() if stage.skip_reason(short)}
    assert reasons == {
        "complete": "evaluation.design is full: every cell is evaluated",
        "forgetting": "training.mode is independent, not continual",
        "forecast": "forecast.horizon = 2 holds out 2 of the 2 year period(s) (2014–2015) and leaves 0 past period(s); "
                    "forecasting needs at least 2: lower forecast.horizon or add periods",
        "analogy": "it needs the tasks 'lm' and 'classification' in config.tasks (have ['classification'])",
        "groups": "groups.swaps is false",
    }
    assert [name for name, stage in REGISTRY.items() if stage.strict] == ["forecast"]
