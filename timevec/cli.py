"""The ``timevec`` command line: one subcommand per stage, the whole pipeline, the demo, the store.

Every stage takes a config file (``--set key=value`` overrides any field) and reads/writes the
store named in it, so stages can be run one by one, re-run (finished work is skipped) or run on
another machine. Bad input exits non-zero with a message that names the culprit.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from timevec.stages import REGISTRY, STAGES


def _config(args: argparse.Namespace):
    from timevec.config import load_config

    return load_config(args.config, args.set)


def _store(config):
    from timevec.store import VectorStore

    return VectorStore.from_config(config.store)


def _print_table(frame, title: str) -> None:
    import pandas as pd

    with pd.option_context("display.max_rows", 200, "display.max_columns", 20, "display.width", 160):
        print(f"\n{title}\n{frame.to_string(index=False)}")


def cmd_run(args: argparse.Namespace) -> int:
    from timevec.pipeline import check_stages

    stages = [s for s in args.stages.split(",") if s] if args.stages else list(STAGES)
    check_stages(stages)
    config = _config(args)  # bad input exits 2 before the stages' modules (torch, Ray) are imported
    from timevec.distributed.pipeline import run_pipeline

    summary = run_pipeline(config, stages)
    _print_summary(summary, args.verbose)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from timevec.config import load_config
    from timevec.demo import demo_config_path

    if args.tiny and args.full:
        raise SystemExit("timevec demo: --tiny and --full exclude each other")
    overrides = list(args.set)
    if args.store:
        overrides.append(f"store.url={args.store}")
    if args.dashboard:
        overrides.append("ray.dashboard=true")
    config = load_config(demo_config_path("tiny" if args.tiny else "full" if args.full else "demo"), overrides)
    print(f"timevec demo: config '{config.name}', store {config.store.url}")
    from timevec.distributed.pipeline import run_pipeline  # after the config: bad input exits 2 at once

    summary = run_pipeline(config, list(STAGES))
    _print_summary(summary, args.verbose)
    return 0


def _stage_line(headline: dict) -> str:
    """``finetune 8 skipped · evaluate 40 cells (0 computed) · took finetune 12s, evaluate 3s, …``."""
    from timevec.train.progress import duration

    parts = []
    if isinstance(headline.get("runs"), dict):
        parts.append("fine-tune runs " + ", ".join(f"{n} {status}" for status, n in headline["runs"].items()))
    if "cells" in headline:
        parts.append(f"{headline['cells']} cells ({headline.get('cells computed', 0)} computed now)")
    if isinstance(headline.get("analogy"), str):
        parts.append(f"analogy {headline['analogy']}")
    took = [f"{k.removeprefix('seconds_')} {duration(v)}" for k, v in headline.items() if k.startswith("seconds_")]
    if took:
        parts.append("took " + ", ".join(took))
    return " · ".join(parts)


def _print_summary(summary: dict, verbose: bool = False) -> None:
    """Where everything is, then the verdict block (last, so it is what stays on screen): the paper's
    findings one row each and the adaptation-vs-latest table; every findings row is in the file it names.

    ``-v`` first prints the wide tables and every headline number.
    """
    from timevec.analyze.verdict import format_verdict

    headline = summary.get("headline", {})
    if verbose:
        for name, frame in summary.get("tables", {}).items():
            _print_table(frame, name)
        if headline:
            print("\nHeadline numbers")
            for key, value in headline.items():
                print(f"  {key}: {value}")
    line = _stage_line(headline)
    if line:
        print(f"\n{line}")
    for label, key in (("Tables", "results"), ("TensorBoard", "tensorboard"), ("HTML report", "report")):
        if summary.get(key):
            print(f"{label}: {summary[key]}")
    findings = summary.get("findings")
    if findings is not None:
        print(f"\n{format_verdict(findings, summary.get('findings_file'))}")


def _stage(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from timevec.distributed.pipeline import run_pipeline

        summary = run_pipeline(_config(args), [name])
        _print_summary(summary, args.verbose)
        return 0

    return run


def cmd_vectors(args: argparse.Namespace) -> int:
    """List the store's vectors with their norms and the cosine to the previous period."""
    import pandas as pd

    from timevec.periods import Period

    config = _config(args)
    store = _store(config)
    keys = store.list_vectors(args.task)
    if not keys:
        print(f"no vectors in {store.url}")
        return 0
    gram = store.gram(keys)
    rows = []
    for i, (task, period) in enumerate(keys):
        manifest = store.manifest(task, period)
        prev = next(
            (j for j in range(i - 1, -1, -1)
             if keys[j][0] == task and Period.parse(keys[j][1]).granularity == Period.parse(period).granularity),
            None,
        )
        cos_prev = gram[i, prev] / (gram[i, i] * gram[prev, prev]) ** 0.5 if prev is not None else float("nan")
        run = manifest.get("run", {})
        rows.append(
            {
                "task": task,
                "period": period,
                "l2_norm": manifest["l2_norm"],
                "cos_prev": round(float(cos_prev), 4),
                "steps": run.get("metrics", {}).get("steps"),
                "final_loss": run.get("metrics", {}).get("final_loss"),
                "kind": run.get("kind"),
            }
        )
    _print_table(pd.DataFrame(rows), f"vectors in {store.url}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    """Linear time probes of θ_pre and the tuned models (timevec.analyze.probe) into results/probe.parquet."""
    from timevec.analyze.probe import probe_stores, summary

    for where, table in probe_stores(_config(args)):
        _print_table(summary(table).round(4), f"time probes by layer (held-out R² and Spearman; shifts in years): {where}")
    print("`timevec report CONFIG` draws them (section 'Time probes').")
    return 0


def cmd_store(args: argparse.Namespace) -> int:
    import pandas as pd

    from timevec.store import VectorStore

    store = VectorStore(args.url)
    if not store.exists():
        print(f"{args.url}: no store here (no store.json)", file=sys.stderr)
        return 2
    if args.action == "info":
        info = store.info()
        plan = info.get("shard_plan", {})
        print(json.dumps({k: v for k, v in info.items() if k not in ("shard_plan", "shapes")}, indent=2))
        print(f"shards per vector: {plan.get('num_shards')}, tensors: {len(plan.get('tensors', {}))}")
        print(f"vectors: {len(store.list_vectors())}")
        return 0
    if args.action == "ls":
        rows = []
        for task, period in store.list_vectors(args.task):
            manifest = store.manifest(task, period)
            rows.append(
                {
                    "task": task,
                    "period": period,
                    "shards": len(manifest["shards"]),
                    "bytes": sum(s["bytes"] for s in manifest["shards"]),
                    "l2_norm": manifest["l2_norm"],
                    "created": manifest["created"],
                }
            )
        _print_table(pd.DataFrame(rows), f"{len(rows)} vectors in {args.url}") if rows else print("no vectors")
        return 0
    if args.action == "verify":
        problems = store.verify(args.task)
        for problem in problems:
            print(f"PROBLEM {problem}")
        print(f"verified {args.url}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 0 if not problems else 1
    if args.action == "rm":
        if not args.keys:
            raise SystemExit("timevec store rm: name vectors as task/period")
        for key in args.keys:
            task, _, period = key.partition("/")
            if not store.has_vector(task, period):
                print(f"{key}: not in the store", file=sys.stderr)
                return 2
            store.delete_vector(task, period)
            print(f"removed {key}")
        return 0
    raise SystemExit(f"unknown store action {args.action}")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="experiment config (YAML); every field: docs/CONFIG.md")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. --set training.lr=1e-4 (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timevec",
        description="Time vectors at cluster scale: fine-tune one model copy per period on Ray, store τ = θ_ft − θ_pre "
        "on object storage, evaluate the all-pairs matrix, analyse, and adapt by interpolation and task analogies.",
    )
    verbose_help = ("every INFO line (each table written, each run and trial), Ray/Tune's own output, and every "
                    "table and number at the end; -vv adds DEBUG logging")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=verbose_help)
    # -v after the command too (timevec demo --tiny -v); SUPPRESS: absent there, the top-level count stands
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", parents=[verbose],
                          help="run the whole pipeline on the embedded default (tiny model, bundled tweets, local store)",
                          description="Run every stage (pretrain base → fleet by year and month → store → cells → interpolation → "
                          "analogies → analysis → HTML report) on a local Ray cluster and print the headline findings.")
    demo.add_argument("--tiny", action="store_true", help="the smallest setting (a few minutes; what the tests run)")
    demo.add_argument("--full", action="store_true", help="the full-scale demo (about 24 minutes on 2 cores; store ./runs/demo-full)")
    demo.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with the local cluster and print its URL")
    demo.add_argument("--store", metavar="URL", help="store root (default ./runs/demo, or ./runs/tiny with --tiny); s3:// works")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the demo config (repeatable)")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", parents=[verbose], help="run the whole pipeline (or --stages) for a config")
    _add_config_args(run)
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    run.set_defaults(func=cmd_run)

    for name, declared in REGISTRY.items():
        stage = sub.add_parser(name, parents=[verbose], help=declared.help, description=declared.help)
        _add_config_args(stage)
        stage.set_defaults(func=_stage(name))

    vectors = sub.add_parser("vectors", parents=[verbose], help="list the stored vectors with norms and cosine to the previous period")
    _add_config_args(vectors)
    vectors.add_argument("--task", help="only this task")
    vectors.set_defaults(func=cmd_vectors)

    probe = sub.add_parser("probe", parents=[verbose],
                           help="linear time probes: ridge regression from every layer's hidden states to each text's date",
                           description="Fit RidgeCV probes from the pooled hidden states of θ_pre and of every tuned model "
                           "θ_pre + τ_t to the dates of held-out texts; R² and Spearman per layer into results/probe.parquet.")
    _add_config_args(probe)
    probe.set_defaults(func=cmd_probe)

    store = sub.add_parser("store", parents=[verbose], help="inspect or maintain a vector store: ls | info | verify | rm")
    store.add_argument("action", choices=["ls", "info", "verify", "rm"],
                       help="ls: vectors; info: store.json; verify: re-hash every shard; rm: delete vectors")
    store.add_argument("url", help="store root: a local folder or s3://bucket/prefix")
    store.add_argument("keys", nargs="*", help="for rm: vectors as task/period")
    store.add_argument("--task", help="ls/verify: only this task")
    store.set_defaults(func=cmd_store)

    # `timevec export`: a weight state the study knows, as a save_pretrained directory (timevec.adapt.export)
    def cmd_export(args: argparse.Namespace) -> int:
        from timevec.adapt.export import export, export_summary

        card = export(_config(args), args.recipe, args.out, score=not args.no_score, lora=not args.no_lora, overwrite=args.force)
        print("\n".join([*export_summary(card), f"written: {args.out}"]))
        return 0

    export_p = sub.add_parser(
        "export", help="write a stored vector or a combination (interpolation, soup, analogy, forecast, best of a protocol) "
        "as a save_pretrained directory with tokenizer and model card",
        description="RECIPE: base | TASK/PERIOD | interpolation:task=lm,alpha=0.5 | soup:task=lm,members=2014+2015 | "
        "analogy:task=classification,j=2014,k=2016,a1=1,a2=0.2,a3=0.1 | forecast:task=lm,method=taylor,target=2018 | "
        "best:task=lm,protocol=time_proportional,period=2015 (kind=analogy for the analogy's oracle/past_only)")
    _add_config_args(export_p)
    export_p.add_argument("recipe", help="what to export (see the description)")
    export_p.add_argument("--out", required=True, type=Path, help="the directory to write (local)")
    export_p.add_argument("--no-score", action="store_true", help="skip re-evaluating the export on the study's test splits")
    export_p.add_argument("--no-lora", action="store_true", help="no PEFT adapter even when every vector is stored as LoRA factors")
    export_p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    export_p.set_defaults(func=cmd_export)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a line is written (pytest's capsys swaps it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _QuietFormatter(logging.Formatter):
    """``12:03:04 fleet: 3/8 done …`` for the lines a person always sees; level and logger for warnings and errors."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")
        self._loud = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return self._loud.format(record) if record.levelno >= logging.WARNING else super().format(record)


def configure_logging(verbosity: int) -> None:
    """Logging for one ``timevec`` process, configured here once.

    Quiet (the default): warnings and errors, plus the progress lines of
    :data:`timevec.train.progress.PROGRESS_LOGGER` (long steps, the fleet, the stage times) —
    every other INFO line (each table written, each run, each trial) waits for ``-v``; ``-vv`` adds
    DEBUG. Ray's and Tune's own output follows the same switch (:func:`timevec.distributed.verbosity.set_verbose`).
    """
    from timevec.train.progress import PROGRESS_LOGGER

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "timevec", False)]:
        root.removeHandler(handler)  # main() called again in one process (tests): one handler, not two
    handler = _StderrHandler()
    handler.timevec = True  # type: ignore[attr-defined]
    if verbosity:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    else:  # the handler filters, not the loggers' levels: whatever else listens (pytest's caplog) still hears INFO
        handler.setFormatter(_QuietFormatter())
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or record.name == PROGRESS_LOGGER)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    for noisy in ("botocore", "aiobotocore", "s3fs", "urllib3", "fsspec", "filelock"):
        # at DEBUG these log request headers (the AWS access key id among them): never let -v do that
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    from timevec.distributed.verbosity import set_verbose
    from timevec.errors import run_with_exit_status

    set_verbose(bool(args.verbose))

    return run_with_exit_status(lambda: args.func(args), f"timevec {args.command}: ")


if __name__ == "__main__":
    sys.exit(main())
