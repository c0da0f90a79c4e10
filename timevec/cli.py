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

from timevec.pipeline import STAGES


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
    """Where everything is, then the verdict per finding (last, so it is what stays on screen).

    ``-v`` first prints the wide tables and every headline number.
    """
    from timevec.analyze.findings import format_findings

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
        print(f"\nFindings (95 % intervals; holds = the interval is on the paper's side)\n{format_findings(findings)}")


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

    from timevec.data.periods import Period

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
    parser.add_argument("config", type=Path, help="experiment config (YAML); see README 'Config reference'")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. --set training.lr=1e-4 (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timevec",
        description="Time vectors at cluster scale: fine-tune one model copy per period on Ray, store τ = θ_ft − θ_pre "
        "on object storage, evaluate the all-pairs matrix, analyse, and adapt by interpolation and task analogies.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, Ray/Tune's own output, and every table and number at the end")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the whole pipeline on the embedded default (tiny model, bundled tweets, local store)",
                          description="Run every stage (pretrain base → fleet by year and month → store → cells → interpolation → "
                          "analogies → analysis → HTML report) on a local Ray cluster and print the headline findings.")
    demo.add_argument("--tiny", action="store_true", help="the smallest setting (a few minutes; what the tests run)")
    demo.add_argument("--full", action="store_true", help="the full-scale demo (about 24 minutes on 2 cores; store ./runs/demo-full)")
    demo.add_argument("--dashboard", action="store_true", help="start Ray's dashboard with the local cluster and print its URL")
    demo.add_argument("--store", metavar="URL", help="store root (default ./runs/demo, or ./runs/tiny with --tiny); s3:// works")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the demo config (repeatable)")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the whole pipeline (or --stages) for a config")
    _add_config_args(run)
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    run.set_defaults(func=cmd_run)

    helps = {
        "finetune": "fine-tune one model per (task, period) on Ray and store each time vector (skips finished runs)",
        "evaluate": "evaluate the all-pairs (train vector × test period) matrix into results/cells.parquet (resumable)",
        "analyze": "similarity, degradation, decay fits, stripe test and UMAP into results/*.parquet",
        "forgetting": "training.mode continual: forgetting of continual, equal-steps, independent, merged -> results/forgetting.parquet",
        "interpolate": "evaluate (1−α)·τ_first + α·τ_last on the periods in between",
        "forecast": "hold out the last forecast.horizon periods and predict their weights from earlier vectors only",
        "analogy": "search α1·τ_task(j) + α2·τ_lm(k) − α3·τ_lm(j) with Ray Tune",
        "groups": "group swaps: τ_j with one parameter group from τ_k, on k (needs groups.swaps: true)",
        "report": "figures and a self-contained reports/index.html in the store",
    }
    for name in STAGES:
        stage = sub.add_parser(name, help=helps[name], description=helps[name])
        _add_config_args(stage)
        stage.set_defaults(func=_stage(name))

    vectors = sub.add_parser("vectors", help="list the stored vectors with norms and cosine to the previous period")
    _add_config_args(vectors)
    vectors.add_argument("--task", help="only this task")
    vectors.set_defaults(func=cmd_vectors)

    probe = sub.add_parser("probe", help="linear time probes: ridge regression from every layer's hidden states to each text's date",
                           description="Fit RidgeCV probes from the pooled hidden states of θ_pre and of every tuned model "
                           "θ_pre + τ_t to the dates of held-out texts; R² and Spearman per layer into results/probe.parquet.")
    _add_config_args(probe)
    probe.set_defaults(func=cmd_probe)

    store = sub.add_parser("store", help="inspect or maintain a vector store: ls | info | verify | rm")
    store.add_argument("action", choices=["ls", "info", "verify", "rm"],
                       help="ls: vectors; info: store.json; verify: re-hash every shard; rm: delete vectors")
    store.add_argument("url", help="store root: a local folder or s3://bucket/prefix")
    store.add_argument("keys", nargs="*", help="for rm: vectors as task/period")
    store.add_argument("--task", help="ls/verify: only this task")
    store.set_defaults(func=cmd_store)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("botocore", "aiobotocore", "s3fs", "urllib3", "fsspec", "filelock"):
        # at DEBUG these log request headers (the AWS access key id among them): never let -v do that
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from timevec.distributed.runtime import set_verbose
    from timevec.errors import run_with_exit_status

    set_verbose(args.verbose)

    return run_with_exit_status(lambda: args.func(args), f"timevec {args.command}: ")


if __name__ == "__main__":
    sys.exit(main())
