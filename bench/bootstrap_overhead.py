"""What the cells' bootstrap intervals add to a cell's evaluation (goal: < 5 %).

Evaluates every test split of a config (random-init base, as the cells stage's actors: one torch
thread) with ``evaluation.bootstrap_samples`` as configured and with 0 (off), alternating, and
times the interval computation alone on the same per-example data. Prints one line per task.

    python bench/bootstrap_overhead.py [timevec/demo/tiny.yaml] [--repeats 5]
"""

from __future__ import annotations

import time

import harness
import torch

from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import prepare_eval_sets
from timevec.data.models import build_model, load_tokenizer
from timevec.evaluate import bootstrap
from timevec.evaluate.metrics import classify, evaluate


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("config", nargs="?", default="timevec/demo/tiny.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    harness.output_block()
    torch.set_num_threads(1)
    config = load_config(args.config)
    tokenizer = load_tokenizer(config.base)
    model = build_model(config.base, tokenizer).eval()
    splits = prepare_eval_sets(config, corpus=load_corpus(config.corpus), tokenizer=tokenizer)["test"]
    on = config.evaluation
    off = on.model_copy(update={"bootstrap_samples": 0})
    kw = dict(samples=on.bootstrap_samples, confidence=on.confidence, seed=on.bootstrap_seed)
    for (task, granularity), by_period in splits.items():
        with_b: dict[str, list[float]] = {p: [] for p in by_period}
        without_b: dict[str, list[float]] = {p: [] for p in by_period}
        alone: dict[str, list[float]] = {p: [] for p in by_period}
        for _ in range(args.repeats):
            for period, split in by_period.items():
                for cfg, out in ((on, with_b), (off, without_b)):
                    began = time.perf_counter()
                    evaluate(model, split, cfg, tokenizer=tokenizer)
                    out[period].append(time.perf_counter() - began)
                # the interval alone, on the data evaluate() resamples
                if task == "classification":
                    with torch.inference_mode():
                        pred, _ = classify(model, split, on.batch_size)
                    began = time.perf_counter()
                    bootstrap.macro_f1_interval(list(split.gold), pred, **kw)
                else:
                    n = split.n_examples
                    loss, tokens = torch.rand(n, dtype=torch.float64).numpy() * 100, torch.randint(20, 60, (n,)).numpy()
                    began = time.perf_counter()
                    bootstrap.perplexity_interval(loss, tokens, **kw)
                alone[period].append(time.perf_counter() - began)
        n_examples = [s.n_examples for s in by_period.values()]
        # per split the least disturbed of the repeats (the machine may be shared), summed over splits
        cell_off = sum(min(t) for t in without_b.values()) / len(by_period)
        cell_on = sum(min(t) for t in with_b.values()) / len(by_period)
        interval = sum(min(t) for t in alone.values()) / len(by_period)
        print(f"{args.config} {task}/{granularity}: {len(by_period)} splits of {min(n_examples)}–{max(n_examples)} "
              f"examples, B={on.bootstrap_samples}; cell {cell_off * 1e3:.1f} ms without, {cell_on * 1e3:.1f} ms with "
              f"({(cell_on / cell_off - 1) * 100:+.1f} %); the interval alone {interval * 1e3:.2f} ms "
              f"= {interval / cell_off * 100:.1f} % of a cell")


if __name__ == "__main__":
    main()
