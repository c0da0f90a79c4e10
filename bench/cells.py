"""Bench: the actor design of the cell matrix vs a naive load-per-cell loop, side by side.

    .venv/bin/python bench/cells.py [--periods 2013:2017] [--d-model 256] [--layers 4] [--max-examples 16]

Both designs evaluate the same N vectors × M test periods on the same prepared splits with the
same parallelism (``ray.eval_actors`` actors vs as many concurrent 1-CPU tasks):

- actor: :func:`timevec.distributed.cells.run_cells` — each actor loads θ_pre once, then per vector
  reads τ once, patches it in, evaluates all M splits and restores θ_pre;
- naive: one Ray task per cell that builds the model, loads θ_pre and τ from the store, sets θ_pre + τ
  and evaluates ONE split.

The same comparison runs in one process without Ray, to separate the cost of loading from Ray's.
Printed: cells/s, model loads (and per cell / per vector), vector reads, the share of worker time
spent in forward passes, and the ratios. Vectors are random perturbations of the (pretrained a few
steps) base: evaluation cost does not depend on what the weights are.

``--against plain --config FILE [--set k=v]`` compares instead the evaluate stage (``run_cells``,
one actor with ``ray.torch_threads`` threads) with a plain Hugging Face loop in this process
(``bench/cells_plain.py``) on the config's store: the same model, vectors, prepared splits,
``evaluation.batch_size`` and ``max_length``, and torch threads. The store is filled first where it
lacks the base (``prepare_base``) or a vector of ``--vector-periods`` (random, as above).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time

import harness
import ray
import torch

from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import prepare_eval_sets
from timevec.data.models import assign_parameters, base_from_store, base_id, build_model, float_parameters, load_tokenizer
from timevec.distributed.cells import run_cells
from timevec.evaluate.cells import CellEvaluator
from timevec.evaluate.metrics import evaluate
from timevec.store import VectorStore
from timevec.weights.vectors import TimeVector


def naive_cell(config, store, split, task: str, period: str) -> dict:
    """Everything from scratch for ONE cell: build, load θ_pre, read τ, set θ_pre + τ, evaluate."""
    torch.set_num_threads(config.ray.torch_threads)
    began = time.perf_counter()
    model, tokenizer = base_from_store(config.base, store)
    base = store.get_base()
    vector = store.get_vector(task, period)
    assign_parameters(model, {n: base[n] + vector[n] for n in base})
    loaded = time.perf_counter()
    result = evaluate(model, split, config.evaluation, tokenizer=tokenizer)
    done = time.perf_counter()
    return {**result, "load_seconds": loaded - began, "forward_seconds": done - loaded, "seconds": done - began}


def make_store(config, root: str) -> VectorStore:
    tokenizer = load_tokenizer(config.base)
    model = build_model(config.base, tokenizer)
    base = {n: p.detach().clone() for n, p in float_parameters(model).items()}
    store = VectorStore(root)
    store.init(base_id(config.base), base)
    for i, period in enumerate(config.period_list("year")):
        g = torch.Generator().manual_seed(1000 + i)
        store.put_vector("lm", period, TimeVector({n: 0.02 * torch.randn(t.shape, generator=g) for n, t in base.items()}))
    return store


def row(design: str, cells: int, wall: float, loads: int, reads: int, forward: float, workers: int) -> dict:
    return {
        "design": design,
        "cells": cells,
        "wall_s": round(wall, 2),
        "cells_per_s": round(cells / wall, 2),
        "model_loads": loads,
        "loads_per_cell": round(loads / cells, 3),
        "vector_reads": reads,
        "forward_share": round(forward / (wall * workers), 3),
    }


def main() -> int:
    parser = harness.parser(__doc__, harness.config_options(
        None, help="(plain) the study config whose store, splits and model are compared"))
    parser.add_argument("--periods", default="2013:2017", help="first:last year (N vectors = M test periods)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-examples", type=int, default=16)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="one-process runs per design (best is shown)")
    parser.add_argument("--against", choices=["naive", "plain"], default="naive",
                        help="naive: a model load per cell; plain: a plain Hugging Face loop (bench/cells_plain.py)")
    parser.add_argument("--vector-periods", help="(plain) comma-separated periods whose vectors are evaluated "
                        "(default: every stored one); missing ones are written as random vectors")
    args = parser.parse_args()
    harness.output_block()
    logging.basicConfig(level=logging.WARNING)
    if args.against == "plain":
        from cells_plain import compare

        return compare(args.config, args.overrides, args.vector_periods, repeats=args.repeats)
    first, last = args.periods.split(":")
    with tempfile.TemporaryDirectory(prefix="timevec-bench-cells-") as root:
        config = load_config(
            harness.REPO / "timevec/demo/tiny.yaml",
            [
                f"store.url={root}",
                f"periods.start='{first}'",
                f"periods.end='{last}'",
                f"base.tiny.d_model={args.d_model}",
                f"base.tiny.num_layers={args.layers}",
                f"base.tiny.d_ff={4 * args.d_model}",
                "base.tiny.num_heads=4",
                f"evaluation.max_examples={args.max_examples}",
                "tasks=[lm]",
                "granularities=[year]",
                f"ray.eval_actors={args.actors}",
                "ray.torch_threads=1",
            ],
        )
        store = make_store(config, root)
        periods = config.period_list("year")
        n, m = len(periods), len(periods)
        cells = [(p, q) for p in periods for q in periods]
        n_params = sum(t.numel() for t in store.get_base().values())
        print(f"bench/cells.py: {n} vectors × {m} test periods = {len(cells)} cells; model {n_params / 1e6:.2f} M params; "
              f"{args.max_examples} LM blocks per split; {args.actors} workers; torch {torch.__version__}, ray {ray.__version__}")
        splits = prepare_eval_sets(config, corpus=load_corpus(config.corpus), tokenizer=load_tokenizer(config.base))["test"]
        lm = splits[("lm", "year")]

        # ---------------------------------------------------------------- in one process, no Ray
        # best of --repeats, interleaved, so that a burst of load on a shared machine hits both designs
        torch.set_num_threads(1)
        local_actor = local_naive = None
        for _ in range(args.repeats):
            began = time.perf_counter()
            evaluator = CellEvaluator(config, store, splits, device="cpu")
            for p in periods:
                evaluator.evaluate_vector(("lm", p))
            candidate = row("one process: load once, patch", len(cells), time.perf_counter() - began,
                            evaluator.stats.model_loads, evaluator.stats.vector_reads, evaluator.stats.forward_seconds, 1)
            local_actor = min([r for r in (local_actor, candidate) if r], key=lambda r: r["wall_s"])
            began = time.perf_counter()
            forward = 0.0
            for p, q in cells:
                forward += naive_cell(config, store, lm[q], "lm", p)["forward_seconds"]
            candidate = row("one process: load per cell", len(cells), time.perf_counter() - began, len(cells), len(cells),
                            forward, 1)
            local_naive = min([r for r in (local_naive, candidate) if r], key=lambda r: r["wall_s"])

        # ---------------------------------------------------------------- Ray: actors vs tasks
        began = time.perf_counter()
        ray.init(address="local", num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - began
        began = time.perf_counter()
        frame, stats = run_cells(config, store, include_base=False, table="bench_cells")
        wall = time.perf_counter() - began
        ray_actor = row("ray: actor pool (run_cells)", len(frame), wall,
                        stats.model_loads, stats.vector_reads, stats.forward_seconds, args.actors)
        ray_actor_steady = row("  same, after actor start-up", len(frame), wall - stats.startup_seconds,
                               stats.model_loads, stats.vector_reads, stats.forward_seconds, args.actors)
        ray_actor_steady["forward_share"] = round(stats.forward_seconds / stats.actor_seconds, 3)
        actor_prepare, actor_startup = stats.prepare_seconds, stats.startup_seconds

        remote = ray.remote(num_cpus=1)(naive_cell)
        config_ref, store_ref = ray.put(config), ray.put(store)
        split_refs = {q: ray.put(lm[q]) for q in periods}
        # warm the task workers (process start + imports + one load), as the actors were
        began = time.perf_counter()
        ray.get([remote.remote(config_ref, store_ref, split_refs[periods[0]], "lm", periods[0]) for _ in range(args.actors)])
        task_startup = time.perf_counter() - began
        began = time.perf_counter()
        results = ray.get([remote.remote(config_ref, store_ref, split_refs[q], "lm", p) for p, q in cells])
        wall = time.perf_counter() - began
        ray_naive = row("ray: task per cell", len(cells), wall + task_startup, len(cells) + args.actors,
                        len(cells) + args.actors, sum(r["forward_seconds"] for r in results), args.actors)
        ray_naive_steady = row("  same, after worker warm-up", len(cells), wall, len(cells), len(cells),
                               sum(r["forward_seconds"] for r in results), args.actors)
        ray.shutdown()

        # the two designs compute the same numbers
        naive_values = {(p, q): r["value"] for (p, q), r in zip(cells, results)}
        actor_values = {(v.split("/")[1], t): x for v, t, x in frame[["vector", "test_period", "value"]].itertuples(index=False)}
        worst = max(abs(actor_values[c] - naive_values[c]) / naive_values[c] for c in cells)

    import pandas as pd

    table = pd.DataFrame([local_actor, local_naive, ray_actor, ray_actor_steady, ray_naive, ray_naive_steady])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False))
    print("\n'after start-up' rows: wall from the first ready actor (actors) or after one warm-up task per worker "
          "(tasks); forward share of the actors' time from ready to end")
    print(f"ray.init {init_s:.1f} s (not counted). Start-up: actors {actor_startup:.1f} s (overlapping "
          f"{actor_prepare:.1f} s of split tokenising on the driver), task workers {task_startup:.1f} s")
    print(f"max relative difference actor vs naive values: {worst:.2e}")
    print("ratios (naive / actor):")
    for label, a, b in [("one process", local_actor, local_naive), ("ray", ray_actor, ray_naive),
                        ("ray steady", ray_actor_steady, ray_naive_steady)]:
        print(f"  {label:11s}: model loads {b['model_loads'] / a['model_loads']:.1f}x fewer "
              f"(M = {m} test splits; loads per vector {a['model_loads'] / n:.2f} vs {b['model_loads'] / n:.0f}); "
              f"cells/s {a['cells_per_s'] / b['cells_per_s']:.2f}x; forward share {a['forward_share']:.2f} vs {b['forward_share']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
