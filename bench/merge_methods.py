"""Bench: the merge methods against plain task arithmetic on a study's stored vectors, one table.

    .venv/bin/python bench/merge_methods.py [--config timevec/demo/demo.yaml] [--set key=value ...]
                                            [--methods ties,dare_linear] [--train] [--write]

For every configured (task, granularity) with ≥ 2 stored vectors: the uniform soup of all of them
and the interpolation midpoint ½·τ_first + ½·τ_last, each under task arithmetic, TIES, DARE
(linear and TIES) and magnitude pruning (``merge.density``, ``merge.majority_sign_method`` and
``merge.seed`` of the config), evaluated on every configured period's test split
(:func:`timevec.adapt.merge_comparison.merge_methods_table`). Prints the table; ``--write`` also writes
it to ``<store>/results/merge_methods.parquet``. The default store is the demo's (``timevec demo``
first); ``--train`` fills a store that lacks the base or some vectors with the fleet's own run job
in this process (no Ray), e.g. ``--config timevec/demo/tiny.yaml --set store.url=/tmp/tiny --train``.
"""

from __future__ import annotations

import logging
import time

import harness
import pandas as pd

from timevec.adapt.merge_comparison import compared_methods, merge_methods_table
from timevec.config import load_config
from timevec.results import MERGE_METHODS_TABLE, write_table
from timevec.store import VectorStore
from timevec.weights.merging import MergeMethod

log = logging.getLogger("bench.merge_methods")


def train_missing(config, store: VectorStore) -> None:
    """θ_pre and every planned run the store lacks, trained here by the fleet's Ray-free run job."""
    from timevec.data.corpus import load_corpus
    from timevec.train.loop import prepare_base
    from timevec.train.plan import plan_runs
    from timevec.train.run import run_one

    corpus = load_corpus(config.corpus)
    prepare_base(config, corpus, store)
    stored = set(store.list_vectors())
    for run in plan_runs(config):
        if (run.task, run.period) in stored:
            continue
        began = time.perf_counter()
        run_one(config, run, corpus, store)
        log.info("trained %s in %.0f s", run.key, time.perf_counter() - began)


def main() -> None:
    parser = harness.parser(__doc__, harness.config_options(harness.REPO / "timevec/demo/demo.yaml"))
    parser.add_argument("--methods", help="comma-separated merge methods besides task arithmetic (default: all)")
    parser.add_argument("--train", action="store_true", help="train the base and missing vectors first (no Ray)")
    parser.add_argument("--write", action="store_true", help=f"write results/{MERGE_METHODS_TABLE}.parquet to the store")
    args = parser.parse_args()
    harness.output_block()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    began = time.perf_counter()
    config = load_config(args.config, args.overrides)
    store = VectorStore.from_config(config.store)
    if args.train:
        train_missing(config, store)
    if not store.exists():
        raise SystemExit(f"store {config.store.url} holds no base: run `timevec demo` (or pass --train) first")
    methods = compared_methods(config)
    if args.methods:
        wanted = {m.strip() for m in args.methods.split(",") if m.strip()}
        methods = [m for m in methods if m.is_task_arithmetic or m.name in wanted]
    table = merge_methods_table(config, store, methods)
    seconds = time.perf_counter() - began
    if args.write:
        write_table(store, MERGE_METHODS_TABLE, table)
    configured = MergeMethod.from_config(config)
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.4f}".format):
        print(f"merge methods vs task arithmetic: store {config.store.url}, density {configured.density:g}, "
              f"sign {configured.majority_sign_method}, seed {configured.seed}; {len(table)} rows in {seconds:.0f} s")
        print(table.to_string(index=False))
        summary = (table[table["method"] != "task_arithmetic"]
                   .groupby(["task", "combination", "method"], sort=False)["gain_vs_task_arithmetic"]
                   .agg(["mean", "min", "max"]).reset_index())
        print("\nmean / min / max gain vs task arithmetic over the test periods (positive: better)")
        print(summary.to_string(index=False))
    if args.write:
        print(f"\nwritten: {config.store.url}/results/{MERGE_METHODS_TABLE}.parquet")


if __name__ == "__main__":
    main()
