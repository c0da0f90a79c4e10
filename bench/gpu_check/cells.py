"""(c) The evaluate stage: cells/s against a plain forward loop (``torch.inference_mode``, the same splits and
batch size) with the base; the GPU memory peak of the whole device and of this process's plain loop."""

from __future__ import annotations

import math
import time
from typing import Any

from .context import GpuCheck, finite, fmt, gib


def plain_forward(check: GpuCheck) -> dict[str, Any]:
    """θ_pre over every test split the stage evaluates: ``model(**batch).loss``, inference mode, no patching."""
    torch = check.torch
    from timevec.data.examples import prepare_eval_sets
    from timevec.data.models import IGNORE, base_from_store, collate, load_tokenizer

    splits = prepare_eval_sets(check.config, corpus=check.corpus(), tokenizer=load_tokenizer(check.config.base))["test"]
    model, _ = base_from_store(check.config.base, check.store())
    model.to(check.device).eval()
    batch_size = check.config.evaluation.batch_size
    if check.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n_splits, perplexity = 0, {}
    with check.threads(), torch.inference_mode():
        check.sync()
        began = time.perf_counter()
        for (task, _granularity), by_period in splits.items():
            for period, split in by_period.items():
                if task == "summarization":
                    continue
                order = sorted(split.examples, key=lambda e: len(e.input_ids) + len(e.labels))
                total = torch.zeros((), dtype=torch.float64, device=check.device)
                count = 0
                for start in range(0, len(order), batch_size):
                    batch = collate(order[start: start + batch_size], split.pad_id, split.encoder_decoder)
                    labels = batch["labels"] if split.encoder_decoder else batch["labels"][:, 1:]
                    n = int((labels != IGNORE).sum())
                    batch = {k: v.to(check.device, non_blocking=True) for k, v in batch.items()}
                    total += model(**batch).loss.double() * n
                    count += n
                if task == "lm":
                    perplexity[period] = math.exp(float(total) / count)  # float(): one sync per split, as a cell's
                n_splits += 1
        check.sync()
        seconds = time.perf_counter() - began
    peak = float(torch.cuda.max_memory_allocated()) if check.device.type == "cuda" else math.nan
    del model
    return {"splits": n_splits, "seconds": seconds, "cells_per_second": n_splits / seconds, "base_perplexity": perplexity,
            "memory_peak_bytes": finite(peak)}


def cells(check: GpuCheck) -> dict[str, Any]:
    """The evaluate stage (:func:`timevec.distributed.cells.run_cells`) on the fleet's store, then :func:`plain_forward`."""
    from timevec.distributed.cells import run_cells

    frame, stats = run_cells(check.config, check.store())
    computed = stats.cells_computed
    stage_rate = computed / stats.seconds
    steady = computed / max(stats.seconds - stats.startup_seconds, 1e-9)
    per_actor = computed / stats.forward_seconds if stats.forward_seconds else math.nan
    stage_peak = check.memory.peak
    plain = plain_forward(check)
    base_rows = frame[(frame["vector"] == "base") & (frame["task"] == "lm")]
    worst = max((abs(v - plain["base_perplexity"][p]) / plain["base_perplexity"][p]
                 for p, v in zip(base_rows["test_period"], base_rows["value"]) if p in plain["base_perplexity"]), default=math.nan)
    ev = check.config.evaluation
    examples = sorted({int(n) for n in frame["n_examples"]})
    tokens_per_cell = float(frame["n_tokens"].mean())
    check.say(f"[c] cells: {computed} cells ({stats.items} vectors incl. the base × their test splits of ≤ {ev.max_examples} "
              f"examples, {examples[0]}–{examples[-1]} here) by {stats.actors} actor(s): {stage_rate:.2f} cells/s for the "
              f"stage, {steady:.2f} after actor start-up ({stats.startup_seconds:.1f} s), {per_actor:.2f} per actor "
              f"while evaluating; plain forward loop {plain['cells_per_second']:.2f} cells/s — ratio stage "
              f"{stage_rate / plain['cells_per_second']:.2f}, steady {steady / plain['cells_per_second']:.2f}, per actor "
              f"{per_actor / plain['cells_per_second']:.2f}; base perplexity stage vs plain: max rel. diff {fmt(worst, '.1e')}; "
              f"GPU memory peak: device {gib(stage_peak)} during the stage, {gib(check.memory.peak)} in all, "
              f"plain loop (this process) {gib(plain['memory_peak_bytes'])}")
    return {
        "cells": computed, "items": stats.items, "actors": stats.actors, "seconds_stage": stats.seconds,
        "startup_seconds": stats.startup_seconds, "forward_seconds": stats.forward_seconds,
        "cells_per_second_stage": stage_rate, "cells_per_second_steady": steady, "cells_per_second_per_actor": finite(per_actor),
        "examples_per_split": examples, "tokens_per_cell": tokens_per_cell, "batch_size": ev.batch_size, "max_length": ev.max_length,
        "bootstrap_samples": ev.bootstrap_samples, "plain": plain,
        "ratio_stage": stage_rate / plain["cells_per_second"], "ratio_steady": steady / plain["cells_per_second"],
        "ratio_per_actor": finite(per_actor / plain["cells_per_second"]),
        "base_perplexity_max_rel_diff": finite(worst),
        "device_memory_peak_stage_bytes": finite(stage_peak), "plain_memory_peak_bytes": plain["memory_peak_bytes"],
        "fleet_memory_peak_bytes": check.summary["sections"].get("fleet", {}).get("device_memory_peak_bytes"),
    }
