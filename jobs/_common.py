"""What every `ray job submit` entrypoint shares: argument parsing, logging, exit statuses."""

from __future__ import annotations

import argparse
import logging

from timevec.config import load_config
from timevec.errors import run_with_exit_status
from timevec.pipeline import STAGES, check_stages, summary_frame


def run_stages(stages: list[str] | None, description: str) -> int:
    """Parse ``--config``/``--set``, run ``stages`` through the pipeline, log the findings.

    ``stages=None`` (jobs/pipeline.py) runs every stage and accepts ``--stages`` to pick some;
    the single-stage jobs have their stages fixed.
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="experiment config (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    if stages is None:
        parser.add_argument(
            "--stages", default=",".join(STAGES),
            help=f"comma-separated subset of {','.join(STAGES)} (default: all, in that order)",
        )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chosen = stages if stages is not None else [s for s in args.stages.split(",") if s]

    def run() -> int:
        check_stages(chosen)
        config = load_config(args.config, args.set)  # bad input exits 2 before torch and Ray are imported
        from timevec.distributed.pipeline import run_pipeline

        summary = run_pipeline(config, chosen)
        for title, table in summary.get("tables", {}).items():
            logging.info("%s\n%s", title, table.to_string(index=False))
        logging.info("findings\n%s", summary_frame(summary).to_string(index=False))
        if summary.get("report"):
            logging.info("report: %s", summary["report"])
        return 0

    return run_with_exit_status(run, "error: ")


def run_config_job(action, description: str) -> int:
    """An entrypoint that is not a pipeline stage (jobs/probe.py): ``--config``/``--set``, then
    ``action(args)`` (a :mod:`timevec.cli` command) under the same exit statuses."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="experiment config (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_with_exit_status(lambda: action(args), f"{parser.prog}: ")
