"""What every `ray job submit` entrypoint shares: argument parsing, logging, bad-input exits."""

from __future__ import annotations

import argparse
import logging
import sys

from timevec.config import load_config
from timevec.distributed.pipeline import StageFailed, run_pipeline, summary_frame
from timevec.errors import USER_ERRORS


def run_stages(stages: list[str], description: str) -> int:
    """Parse ``--config``/``--set``, run ``stages`` through the pipeline, log the findings."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="experiment config (YAML)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--stages", help="pipeline.py only: comma-separated subset of stages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.stages:
        stages = [s for s in args.stages.split(",") if s]
    try:
        summary = run_pipeline(load_config(args.config, args.set), stages)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for title, table in summary.get("tables", {}).items():
        logging.info("%s\n%s", title, table.to_string(index=False))
    logging.info("findings\n%s", summary_frame(summary).to_string(index=False))
    if summary.get("report"):
        logging.info("report: %s", summary["report"])
    return 0
