"""Bench: the evaluate stage's actor against a plain Hugging Face forward loop, cells/s side by side.

    .venv/bin/python bench/cells.py --against plain --config timevec/demo/demo.yaml --set store.url=DIR

Why: issue #13 asks that the cell matrix run at ≥ 0.9× the rate of the loop anyone would write
with transformers alone, so that the actor pool, the patcher, the store reads and the intervals
cost nothing that matters. The plain loop gets what the stage gets — the same θ_pre, the same
stored vectors, the same tokenised splits (:func:`timevec.data.examples.prepare_eval_sets`), the same
``evaluation.batch_size`` and ``max_length`` and the same torch threads — and does it the plain
way: one model, per vector ``store.get_vector`` and ``load_state_dict(θ_pre + τ)``, batches in the
split's order padded to the longest, ``model(**batch)``; LM perplexity from the summed token
losses; classification by scoring every (text, candidate label) sequence whole and taking the
best, macro-F1 with scikit-learn. No bootstrap intervals (the stage computes them). The metric
values of the two must agree, cell for cell.

Rates: the plain loop's cells/s is over its whole loop (vector reads, weight loads and forward
passes; the one model load before it is left out, as the actor's is in "after start-up"). The
stage's is given three ways: the whole ``run_cells`` call; after the actor's start-up (process,
imports, θ_pre load); and the actor's busy time (reads + patches + forward passes).
"""

from __future__ import annotations

import math
import time
from typing import Any

import harness
import torch
from sklearn.metrics import f1_score

from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import EvalSplit, prepare_eval_sets
from timevec.data.models import IGNORE, base_from_store, float_parameters, load_tokenizer
from timevec.evaluate.cells import BASE
from timevec.store import VectorStore
from timevec.train.loop import prepare_base
from timevec.weights.vectors import TimeVector

TABLE = "bench_cells_plain"


def fill_store(config, store: VectorStore, periods: list[str]) -> None:
    """The base (``prepare_base``: trained, dequantised or cached) and a random τ for each missing (task, period)."""
    prepare_base(config, load_corpus(config.corpus), store)
    base = None
    for i, (task, period) in enumerate((t, p) for t in config.tasks for p in periods):
        if store.has_vector(task, period):
            continue
        base = base if base is not None else store.get_base()
        g = torch.Generator().manual_seed(1000 + i)
        delta = {n: 1e-3 * t.std().clamp(min=1e-3) * torch.randn(t.shape, generator=g) for n, t in base.items()}
        store.put_vector(task, period, TimeVector(delta))


def _batches(examples, batch_size: int, pad_id: int):
    """Batches in the given order, right-padded to the longest of each; labels IGNORE on the padding."""
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(e.input_ids) for e in chunk], batch_first=True,
                                              padding_value=pad_id)
        labels = torch.nn.utils.rnn.pad_sequence([torch.tensor(e.labels) for e in chunk], batch_first=True,
                                                 padding_value=IGNORE)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(e.input_ids), dtype=torch.long) for e in chunk],
                                               batch_first=True)
        yield ids, mask, labels


def plain_metric(model, split: EvalSplit, batch_size: int) -> float:
    """Perplexity (lm) or macro-F1 (classification) of ``model`` as it is, the plain way (decoder-only)."""
    if split.encoder_decoder or split.task not in ("lm", "classification"):
        raise SystemExit(f"the plain loop scores decoder-only lm/classification splits, not {split.task} "
                         f"(encoder_decoder={split.encoder_decoder})")
    if split.task == "lm":
        total, count = 0.0, 0
        for ids, mask, labels in _batches(split.examples, batch_size, split.pad_id):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            n = int((labels[:, 1:] != IGNORE).sum())
            total += out.loss.item() * n
            count += n
        return math.exp(total / count)
    scores = []
    for ids, mask, labels in _batches(split.examples, batch_size, split.pad_id):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
        scores.extend((-losses.sum(dim=1)).tolist())
    k = len(split.candidates)
    pred = [split.candidates[max(range(k), key=lambda c: scores[row * k + c])] for row in range(len(split.gold))]
    return float(f1_score(list(split.gold), pred, average="macro"))


def plain_loop(config, store: VectorStore, splits, items: list[tuple[str, str, str | None]]) -> dict[str, Any]:
    """Every (task, granularity, vector period or None for the base) on every test split of its granularity."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.ray.torch_threads)
    try:
        model, _tokenizer = base_from_store(config.base, store)
        model.eval()
        base = {n: p.detach().clone() for n, p in float_parameters(model).items()}
        values: dict[tuple[str, str, str, str], float] = {}
        forward = forward_cpu = 0.0
        began = time.perf_counter()
        with torch.inference_mode():
            for task, granularity, period in items:
                if period is None:
                    weights = base
                else:
                    vector = store.get_vector(task, period)
                    weights = {n: base[n] + vector[n] for n in base}
                model.load_state_dict(weights, strict=False)
                for test_period, split in splits[(task, granularity)].items():
                    start, cpu = time.perf_counter(), time.process_time()
                    values[(task, granularity, BASE if period is None else f"{task}/{period}", test_period)] = \
                        plain_metric(model, split, config.evaluation.batch_size)
                    forward += time.perf_counter() - start
                    forward_cpu += time.process_time() - cpu
        seconds = time.perf_counter() - began
    finally:
        torch.set_num_threads(threads)
    return {"values": values, "seconds": seconds, "forward_seconds": forward, "forward_cpu_seconds": forward_cpu,
            "cells": len(values)}


def compare(config_path: str, overrides: list[str], vector_periods: str | None, repeats: int = 2) -> int:
    import ray

    from timevec.distributed.cells import run_cells

    config = load_config(config_path, [*overrides, "ray.eval_actors=1"])
    config = config.with_overrides([f"ray.cpus_per_eval_actor={config.ray.torch_threads}"])
    store = VectorStore.from_config(config.store)
    periods = vector_periods.split(",") if vector_periods else []
    fill_store(config, store, periods)
    wanted = set(periods) if periods else None
    items = [(t, g, None) for t in config.tasks for g in config.granularities]
    items += [(t, g, p) for t in config.tasks for g in config.granularities for tt, p in store.list_vectors(t)
              if p in config.period_list(g) and (wanted is None or p in wanted)]
    if wanted is not None:  # the stage evaluates every stored vector of the configured periods
        extra = [(t, p) for t in config.tasks for _t, p in store.list_vectors(t) if p not in wanted]
        if extra:
            raise SystemExit(f"{store} holds vectors outside --vector-periods: {extra[:4]}; use a store with only those")
    splits = prepare_eval_sets(config, corpus=load_corpus(config.corpus), tokenizer=load_tokenizer(config.base))["test"]
    n_params = sum(t.numel() for t in store.get_base().values())
    sizes = {k: sorted({s.n_examples for s in v.values()}) for k, v in splits.items()}
    print(f"cells vs a plain HF loop: {config_path} {' '.join(overrides)}; {n_params / 1e6:.1f} M params; "
          f"{len(items)} weight states (incl. the base) × their test splits {sizes}; batch {config.evaluation.batch_size}, "
          f"max_length {config.evaluation.max_length}, {config.ray.torch_threads} torch thread(s) each side; "
          f"bootstrap {config.evaluation.bootstrap_samples} (stage only); {harness.load_note()}", flush=True)

    plains = [plain_loop(config, store, splits, items)]  # before the stage, and after it (a shared machine)
    print(f"  plain 1: {plains[0]['cells'] / plains[0]['seconds']:.3f} cells/s; {harness.load_note()}", flush=True)
    from ray_start import start_ray

    start_ray(max(2, config.ray.torch_threads))
    table = f"{TABLE}_{time.strftime('%Y%m%d_%H%M%S')}"  # a fresh table: every cell computed (left in the store)
    frame, stats = run_cells(config, store, include_base=True, table=table)
    ray.shutdown()
    print(f"  stage: {stats.cells_computed / stats.seconds:.3f} cells/s; {harness.load_note()}", flush=True)
    for _ in range(repeats - 1):
        plains.append(plain_loop(config, store, splits, items))
        print(f"  plain {len(plains)}: {plains[-1]['cells'] / plains[-1]['seconds']:.3f} cells/s; "
              f"{harness.load_note()}", flush=True)
    plain = min(plains, key=lambda r: r["seconds"])

    actor = stats.actor_stats[0]
    busy = actor["read_seconds"] + actor["patch_seconds"] + actor["forward_seconds"]
    cells = stats.cells_computed
    plain_rate = plain["cells"] / plain["seconds"]
    rates = {
        "stage, whole run_cells call": cells / stats.seconds,
        "stage, after actor start-up": cells / (stats.seconds - stats.startup_seconds),
        "actor busy (read + patch + forward)": cells / busy,
    }
    print(f"plain loop (best of {len(plains)}): {plain['cells']} cells in {plain['seconds']:.2f} s = {plain_rate:.3f} cells/s "
          f"(forward {plain['forward_seconds']:.2f} s)")
    for label, rate in rates.items():
        print(f"  {label:38s} {rate:8.3f} cells/s   ratio {rate / plain_rate:.3f}  (goal ≥ 0.9)")
    print(f"  actor: start-up {stats.startup_seconds:.1f} s, reads {actor['read_seconds']:.2f} s, patches "
          f"{actor['patch_seconds']:.2f} s, forward + metric + interval {actor['forward_seconds']:.2f} s; "
          f"forward ratio plain/actor {plain['forward_seconds'] / actor['forward_seconds']:.3f}")
    print(f"  CPU seconds of the forward passes (+ metric; the actor's + interval), independent of other load: plain "
          f"{plain['forward_cpu_seconds']:.2f} s, actor {actor['forward_cpu_seconds']:.2f} s — ratio plain/actor "
          f"{plain['forward_cpu_seconds'] / actor['forward_cpu_seconds']:.3f}  (goal ≥ 0.9)")
    worst, disagree = 0.0, []
    for row in frame.itertuples(index=False):
        key = (row.task, row.granularity, row.vector, row.test_period)
        mine = plain["values"][key]
        if row.task == "lm":
            worst = max(worst, abs(row.value - mine) / mine)
        elif abs(row.value - mine) > 1e-9:
            disagree.append(key)
    print(f"  values: perplexity max rel. diff {worst:.1e}; classification cells with another macro-F1: "
          f"{len(disagree)} of {sum(1 for k in plain['values'] if k[0] == 'classification')} {disagree[:3]}")
    return 0
