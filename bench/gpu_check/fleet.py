"""(b) The fleet stage on the config: tokens/s per run and of the whole fleet, against a plain Hugging Face
training loop (peft LoRA, AdamW, ``model(**batch).loss``; the same examples, batch, length, steps and
precision) timed in this process on the same device."""

from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext
from typing import Any

from .context import GpuCheck, finite


def plain_train(check: GpuCheck, period: str, task: str = "lm") -> dict[str, Any]:
    """A plain Hugging Face loop: peft LoRA, AdamW, HF's own loss; timevec's examples and batches."""
    torch = check.torch
    from timevec.data.examples import task_examples
    from timevec.data.models import IGNORE, base_from_store, collate, is_encoder_decoder
    from timevec.train.loop import batch_indices, total_steps

    cfg = check.config.training.for_task(task, "year")
    model, tokenizer = base_from_store(check.config.base, check.store())  # the same θ_pre as every run
    enc_dec = is_encoder_decoder(model)
    examples = task_examples(task, check.corpus(), period, "train", tokenizer, enc_dec, cfg.max_length, cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="SEQ_2_SEQ_LM" if enc_dec else "CAUSAL_LM"))
    model.to(check.device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = total_steps(len(examples), cfg)
    autocast = torch.autocast(check.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    if check.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens = 0
    with check.threads():
        check.sync()
        began = time.perf_counter()
        for step in range(steps):
            for micro in range(cfg.grad_accum):
                idx = batch_indices(len(examples), cfg.batch_size, step * cfg.grad_accum + micro, cfg.seed)
                batch = collate([examples[i] for i in idx], tokenizer.pad_token_id, enc_dec)
                labels = batch["labels"] if enc_dec else batch["labels"][:, 1:]
                tokens += int((labels != IGNORE).sum())  # counted on the host: no device sync
                batch = {k: v.to(check.device, non_blocking=True) for k, v in batch.items()}
                with autocast:
                    loss = model(**batch).loss
                (loss / cfg.grad_accum).backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        check.sync()
        seconds = time.perf_counter() - began
    peak = float(torch.cuda.max_memory_allocated()) if check.device.type == "cuda" else math.nan
    del model, optimizer
    return {"period": period, "steps": steps, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "final_loss": float(loss.detach().float().cpu()), "memory_peak_bytes": finite(peak)}


def fleet(check: GpuCheck) -> dict[str, Any]:
    """The fleet stage (:func:`timevec.distributed.fleet.run_fleet`) on the config, then :func:`plain_train` on its first period."""
    from timevec.distributed.fleet import run_fleet
    from timevec.train.loop import prepare_base

    store = check.store()
    began = time.perf_counter()
    prepare_base(check.config, check.corpus(), store)  # θ_pre into the store (the GGUF dequantised once)
    base_s = time.perf_counter() - began
    n_params = sum(t.numel() for t in store.get_base().values())
    table = run_fleet(check.config, store, progress=False)
    failed = table[table["status"] != "done"]
    if len(failed):
        raise RuntimeError(f"{len(failed)} run(s) not done: {failed[['task', 'period', 'status', 'error']].to_dict('records')}")
    makespan = float(table.attrs["makespan_s"])
    per_run = float(statistics.median(table["tokens_per_second"]))
    fleet_tps = float(table["tokens"].sum()) / makespan
    plain = plain_train(check, str(table["period"].iloc[0]))
    rc, cfg = check.config.ray, check.config.training.for_task("lm", "year")
    per_gpu = (1 / rc.gpus_per_run) if rc.gpus_per_run else None
    concurrency = min(rc.max_concurrent_runs, int(per_gpu) if per_gpu else rc.max_concurrent_runs)
    check.say(f"[b] fleet: {len(table)} runs × {int(table['steps'].iloc[0])} steps of {cfg.batch_size} × {cfg.max_length} tokens "
              f"({'LoRA r=' + str(cfg.lora.r) if cfg.lora else 'full'}, {cfg.precision}) on {check.device.type}, "
              f"{concurrency} at a time{f' ({per_gpu:g} per GPU)' if per_gpu else ''}: "
              f"{per_run:,.0f} tokens/s per run (median), {fleet_tps:,.0f} tokens/s for the fleet (Σ tokens / makespan "
              f"{makespan:.1f} s); plain HF loop {plain['tokens_per_second']:,.0f} tokens/s — ratio per run "
              f"{per_run / plain['tokens_per_second']:.2f}, fleet {fleet_tps / plain['tokens_per_second']:.2f} "
              f"(base into the store {base_s:.1f} s)")
    return {
        "runs": len(table), "steps": int(table["steps"].iloc[0]), "batch_size": cfg.batch_size, "max_length": cfg.max_length,
        "lora_r": cfg.lora.r if cfg.lora else None, "precision": cfg.precision, "concurrency": concurrency,
        "gpus_per_run": rc.gpus_per_run, "params": n_params, "base_into_store_s": round(base_s, 2),
        "makespan_s": makespan, "tokens": int(table["tokens"].sum()),
        "tokens_per_second_per_run": per_run, "tokens_per_second_fleet": fleet_tps,
        "run_train_seconds_median": float(statistics.median(table["seconds"])),
        "run_wall_seconds_median": float(statistics.median(table["wall_seconds"])),
        "plain": plain,
        "ratio_per_run": per_run / plain["tokens_per_second"], "ratio_fleet": fleet_tps / plain["tokens_per_second"],
        "runs_table": [{k: (finite(v) if isinstance(v, float) else v) for k, v in row.items()}
                       for row in table[["task", "period", "steps", "tokens", "seconds", "tokens_per_second",
                                         "wall_seconds", "final_loss"]].to_dict("records")],
    }
