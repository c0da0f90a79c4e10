"""The GPU check (issue #17): the whole study's costs on one device, measured side by side, in one run.

    bench/gpu.sh [--device cuda|cpu] [--config FILE] [--quick] [--out DIR] [--budget-s S] [--set k=v ...]
    python bench/gpu.py ...            (the same, in an environment that already has timevec's needs)

Sections, each printing one line (``[a] …`` to ``[f] …``) and recording its numbers in
``OUT/gpu-bench.json`` (and ``OUT/gpu-bench.md``):

(a) ``pytest -m gpu`` on the test files that carry the marker, in this process (on a CPU: "skipped");
(b) the fleet stage (:func:`timevec.distributed.fleet.run_fleet`) on the config: tokens/s per run
    (the fleet's run table) and of the whole fleet (Σ tokens / makespan), against a plain Hugging
    Face training loop (peft LoRA, AdamW, ``model(**batch).loss``, the same examples, batch, length,
    steps and precision) timed in this process on the same device;
(c) the evaluate stage (:func:`timevec.distributed.cells.run_cells`): cells/s against a plain forward
    loop (``torch.inference_mode``, the same splits and batch size) with the base; the GPU memory
    peak — of the whole device (``torch.cuda.mem_get_info`` sampled every 0.1 s: every process,
    CUDA contexts included) and of this process's plain loops (``torch.cuda.max_memory_allocated``);
    NaN on a CPU;
(d) one analogy trial's combine/evaluate ratio: ``WeightPatcher.apply_combination`` of 3 stored
    vectors (θ_pre + 1.0·τ_a + 0.3·τ_b − 0.3·τ_c) plus the restore, against one evaluation of a test
    split (:class:`timevec.evaluate.cells.CellEvaluator`), with the vectors in host memory (as the stage holds
    them) and, for comparison, already on the device;
(e) the study's headline at this scale: interpolate + analyze (:func:`run_pipeline`), then the
    findings rows own period best, decay, cosine r and interpolation (oracle α);
(f) the projection: the paper's monthly study (58 runs + 3,364 cells) for a model of T5-small's size
    (60 M parameters), from the measured seconds per run and per cell, scaled by the parameter-count
    ratio; is it ≤ 1 hour on this one device?

``--quick`` is a CPU-sized cut (the tiny embedded model of ``timevec/demo/tiny.yaml``, LM by year
2014–2017) that checks every section end to end; its rates say nothing about a real model.
``--budget-s``: a section that would start after the budget is spent is skipped and says so, and so
is the headline when its estimate (from the cells' measured rate) exceeds what is left; a section
whose input is missing (a failed or skipped earlier section) is skipped naming it. Exit
status 0 when no section failed, 1 otherwise, 2 for bad arguments (no CUDA for ``--device cuda``).
The store lives in a temporary folder (``--store`` to choose one), never under ``--out``: the device
machine sends ``$OUT`` back and 6 SmolLM2 vectors are 1.6 GB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "jobs" / "configs" / "smollm2-gpu-bench.yaml"
TINY = REPO / "timevec" / "demo" / "tiny.yaml"
INNER_ENV = "TIMEVEC_GPU_BENCH_INNER"  # set for the inner pytest: the bench's own gpu test does not recurse

#: the --quick cut: the tiny embedded GPT-2 (d32 × 1 layer), LM only, 4 years, a few steps
QUICK = [
    "tasks=[lm]",
    "granularities=[year]",
    "periods={start: '2014', end: '2017'}",
    "training.steps=6",
    "base.pretrain.steps=10",
    "ray.max_concurrent_runs=1",  # one trial process (reused by the 4 runs): 2 cores, and the driver needs one
    "ray.eval_actors=1",
    "evaluation.max_examples=16",
    "evaluation.bootstrap_samples=200",
    "interpolation.alphas=[0.0, 0.5, 1.0]",
    "interpolation.soup_max_distance=1",
]
QUICK_CUDA = ["ray.gpus_per_run=0.25", "ray.gpus_per_eval_actor=0.25", "training.precision=bf16", "ray.num_cpus=4",
              "ray.max_concurrent_runs=4", "ray.eval_actors=2"]
#: --device cpu: no GPU fractions, fp32 (bf16 autocast is slow on most CPUs), one core per run/actor
ON_CPU = ["ray.gpus_per_run=0", "ray.gpus_per_eval_actor=0", "training.precision=fp32", "ray.cpus_per_run=1",
          "ray.cpus_per_eval_actor=1", "ray.torch_threads=1"]

#: the paper's monthly study (Nylund et al. 2023): 58 monthly runs, 58 × 58 cells, T5-small
PAPER = {"runs": 58, "cells": 3364, "params": 60e6, "model": "T5-small"}
GOAL_HOURS = 1.0
HEADLINE = ("own period best", "decay with the gap", "cosine vs degradation", "interpolation beats both ends",
            "interpolation vs latest vector")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--config", default=None,
                        help=f"default: {DEFAULT_CONFIG.relative_to(REPO)} ({TINY.relative_to(REPO)} with --quick)")
    parser.add_argument("--quick", action="store_true", help="the CPU-sized cut: tiny embedded model, 4 years, a few steps")
    parser.add_argument("--out", default=None, help="summary folder (default $OUT, else ./runs/gpu-bench)")
    parser.add_argument("--store", default=None, help="store folder (default: a temporary folder, removed at the end)")
    parser.add_argument("--budget-s", type=float, default=math.inf, help="skip sections that would start after this many seconds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- small helpers


def finite(x: Any) -> float | None:
    """A JSON-safe number: NaN/inf become null (printed as nan)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(x: float | None, spec: str = ".3g") -> str:
    return "nan" if x is None or not math.isfinite(x) else format(x, spec)


def gib(n: float | None) -> str:
    return "nan" if n is None or not math.isfinite(n) else f"{n / 2**30:.2f} GiB"


class DeviceMemory:
    """The whole device's memory in use (total − free, every process), sampled every ``every_s`` s."""

    def __init__(self, torch, device, every_s: float = 0.1) -> None:
        self.torch, self.on = torch, device.type == "cuda"
        self.peak = math.nan
        self.at_start = math.nan
        self._stop = threading.Event()
        if self.on:
            free, total = torch.cuda.mem_get_info()
            self.at_start = float(total - free)
            self.peak = self.at_start
            self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
            self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            free, total = self.torch.cuda.mem_get_info()
            self.peak = max(self.peak, float(total - free))

    def section_start(self) -> None:
        if self.on:
            free, total = self.torch.cuda.mem_get_info()
            self.peak = float(total - free)

    def stop(self) -> None:
        self._stop.set()


# ----------------------------------------------------------------------------- the bench


class GpuBench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args, self.torch = args, torch
        self.device = torch.device(args.device)
        self.began = time.perf_counter()
        self.out = Path(args.out or os.environ.get("OUT") or REPO / "runs" / "gpu-bench").resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.own_store = args.store is None
        self.store_dir = Path(args.store or tempfile.mkdtemp(prefix="timevec-gpu-bench-")).resolve()
        if not self.own_store and self.store_dir.exists():
            if any(self.store_dir.iterdir()) and not (self.store_dir / "store.json").exists():
                raise SystemExit(f"--store {self.store_dir}: not empty and not a timevec store; refusing to clear it")
            shutil.rmtree(self.store_dir)  # a fresh store: a re-run must train and evaluate again to measure
        config_path = Path(args.config) if args.config else (TINY if args.quick else DEFAULT_CONFIG)
        overrides = [f"store.url={self.store_dir}"]
        if args.quick:
            overrides += QUICK + (QUICK_CUDA if self.device.type == "cuda" else [])
        if self.device.type == "cpu":
            overrides += ON_CPU
        overrides += list(args.set)
        from timevec.config import load_config

        self.config = load_config(config_path, overrides)
        self.config_path = config_path
        self.lines: list[str] = []
        self.summary: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": self.describe_device(),
            "config": str(config_path.relative_to(REPO) if config_path.is_relative_to(REPO) else config_path),
            "quick": bool(args.quick),
            "overrides": overrides[1:],
            "budget_s": finite(args.budget_s),
            "sections": {},
        }
        self.memory = DeviceMemory(torch, self.device)
        self.summary["device"]["memory_in_use_at_start_bytes"] = finite(self.memory.at_start)

    # -------------------------------------------------------------- plumbing

    def describe_device(self) -> dict[str, Any]:
        torch = self.torch
        info = {"type": self.device.type, "torch": torch.__version__, "python": platform.python_version(),
                "cpus": os.cpu_count(), "host": platform.node()}
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(0)
            info.update(name=torch.cuda.get_device_name(0), cuda=torch.version.cuda, memory_bytes=props.total_memory,
                        multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
            try:
                info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                                capture_output=True, text=True, timeout=20).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                pass
        else:
            info["name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        return info

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def section(self, key: str, name: str, run: Callable[[], dict[str, Any]], needs: tuple[str, ...] = (),
                estimate: Callable[[], float] | None = None) -> None:
        """Run one section unless the budget is spent, its estimate (when it has one) exceeds what is left, or an
        input section did not finish; record its result (a failure is recorded, not raised)."""
        sections = self.summary["sections"]
        missing = [n for n in needs if sections.get(n, {}).get("status") != "ok"]
        left = self.args.budget_s - self.elapsed()
        guess = estimate() if estimate is not None and not missing else None
        if left <= 0:
            why = f"the budget of {self.args.budget_s:g} s is spent ({self.elapsed():.0f} s elapsed)"
        elif guess is not None and guess > left:
            why = f"it would need ≈ {guess:.0f} s (from the cells' measured rate), {left:.0f} s of the budget are left"
        elif missing:
            why = f"needs section(s) {', '.join(missing)}, which did not finish"
        else:
            why = None
        if why:
            sections[name] = {"status": "skipped", "why": why}
            self.say(f"[{key}] {name}: skipped — {why}")
            return
        began = time.perf_counter()
        self.memory.section_start()
        try:
            result = run()
            status = "ok"
        except Exception as exc:  # a failed section is reported; the others still run
            traceback.print_exc()
            result, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
            self.say(f"[{key}] {name}: FAILED — {result['error']}")
        result = {"status": status, **result, "seconds": round(time.perf_counter() - began, 2)}
        if guess is not None:
            result["estimate_s"] = round(guess, 1)
        if status == "ok" and key in "bcde" and self.device.type == "cuda":
            result["device_memory_peak_bytes"] = finite(self.memory.peak)
        sections[name] = result

    # -------------------------------------------------------------- shared pieces

    def store(self):
        from timevec.store import VectorStore

        return VectorStore.from_config(self.config.store)

    def corpus(self):
        if not hasattr(self, "_corpus"):
            from timevec.data.corpus import load_corpus

            self._corpus = load_corpus(self.config.corpus)
        return self._corpus

    def threads(self):
        """On a CPU the plain loops use the fleet's/actors' torch threads, for a like-for-like rate."""
        torch = self.torch
        before = torch.get_num_threads()

        class _Threads:
            def __enter__(inner):
                if self.device.type == "cpu":
                    torch.set_num_threads(self.config.ray.torch_threads)

            def __exit__(inner, *exc):
                torch.set_num_threads(before)

        return _Threads()

    # -------------------------------------------------------------- (a)

    def gpu_tests(self) -> dict[str, Any]:
        """``pytest -m gpu -q`` on the files that carry the marker, in this process (no second torch import)."""
        import pytest

        files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                       if "mark.gpu" in p.read_text() and p.name != "test_gpu_bench.py")

        class Outcomes:
            def __init__(self) -> None:
                self.counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}

            def pytest_runtest_logreport(self, report) -> None:
                if report.when == "call" or report.outcome != "passed":
                    kind = "error" if report.failed and report.when != "call" else report.outcome
                    self.counts[kind] += 1

        outcomes = Outcomes()
        # Libraries that bind a log handler to sys.stderr when first imported must be imported before pytest
        # swaps sys.stderr for its capture (closed afterwards): transformers' own handler would then fail.
        import datasets  # noqa: F401
        import ray  # noqa: F401
        import transformers  # noqa: F401
        os.environ[INNER_ENV] = "1"
        cwd = os.getcwd()
        try:
            os.chdir(REPO)
            args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning", *files]
            code = int(pytest.main(args, plugins=[outcomes]))  # the warning: plugins (anyio) imported above
        finally:
            os.chdir(cwd)
            os.environ.pop(INNER_ENV, None)
        counts = outcomes.counts
        ok = code in (0, 5) and counts["failed"] == 0 and counts["error"] == 0
        self.say(f"[a] gpu tests: {counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed, "
                 f"{counts['error']} errors ({len(files)} files: {', '.join(files)}; the bench's own gpu test is left out) "
                 f"— pytest exit {code}")
        if not ok:
            raise RuntimeError(f"pytest -m gpu: exit {code}, {counts['failed']} failed, {counts['error']} errors")
        return {"files": files, **counts, "pytest_exit": code}

    # -------------------------------------------------------------- (b)

    def plain_train(self, period: str, task: str = "lm") -> dict[str, Any]:
        """A plain Hugging Face loop: peft LoRA, AdamW, HF's own loss; timevec's examples and batches."""
        torch = self.torch
        from timevec.data.examples import task_examples
        from timevec.data.models import IGNORE, base_from_store, collate, is_encoder_decoder
        from timevec.train.loop import batch_indices, total_steps

        cfg = self.config.training.for_task(task, "year")
        model, tokenizer = base_from_store(self.config.base, self.store())  # the same θ_pre as every run
        enc_dec = is_encoder_decoder(model)
        examples = task_examples(task, self.corpus(), period, "train", tokenizer, enc_dec, cfg.max_length, cfg.seed)
        torch.manual_seed(cfg.seed)
        if cfg.lora is not None:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(
                r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules, task_type="SEQ_2_SEQ_LM" if enc_dec else "CAUSAL_LM"))
        model.to(self.device).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = total_steps(len(examples), cfg)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        tokens = 0
        with self.threads():
            self.sync()
            began = time.perf_counter()
            for step in range(steps):
                for micro in range(cfg.grad_accum):
                    idx = batch_indices(len(examples), cfg.batch_size, step * cfg.grad_accum + micro, cfg.seed)
                    batch = collate([examples[i] for i in idx], tokenizer.pad_token_id, enc_dec)
                    labels = batch["labels"] if enc_dec else batch["labels"][:, 1:]
                    tokens += int((labels != IGNORE).sum())  # counted on the host: no device sync
                    batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                    with autocast:
                        loss = model(**batch).loss
                    (loss / cfg.grad_accum).backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            self.sync()
            seconds = time.perf_counter() - began
        peak = float(torch.cuda.max_memory_allocated()) if self.device.type == "cuda" else math.nan
        del model, optimizer
        return {"period": period, "steps": steps, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
                "final_loss": float(loss.detach().float().cpu()), "memory_peak_bytes": finite(peak)}

    def fleet(self) -> dict[str, Any]:
        from timevec.distributed.fleet import run_fleet
        from timevec.train.loop import prepare_base

        store = self.store()
        began = time.perf_counter()
        prepare_base(self.config, self.corpus(), store)  # θ_pre into the store (the GGUF dequantised once)
        base_s = time.perf_counter() - began
        self.n_params = sum(t.numel() for t in store.get_base().values())
        table = run_fleet(self.config, store, progress=False)
        failed = table[table["status"] != "done"]
        if len(failed):
            raise RuntimeError(f"{len(failed)} run(s) not done: {failed[['task', 'period', 'status', 'error']].to_dict('records')}")
        makespan = float(table.attrs["makespan_s"])
        per_run = float(statistics.median(table["tokens_per_second"]))
        fleet_tps = float(table["tokens"].sum()) / makespan
        plain = self.plain_train(str(table["period"].iloc[0]))
        rc, cfg = self.config.ray, self.config.training.for_task("lm", "year")
        per_gpu = (1 / rc.gpus_per_run) if rc.gpus_per_run else None
        concurrency = min(rc.max_concurrent_runs, int(per_gpu) if per_gpu else rc.max_concurrent_runs)
        self.say(f"[b] fleet: {len(table)} runs × {int(table['steps'].iloc[0])} steps of {cfg.batch_size} × {cfg.max_length} tokens "
                 f"({'LoRA r=' + str(cfg.lora.r) if cfg.lora else 'full'}, {cfg.precision}) on {self.device.type}, "
                 f"{concurrency} at a time{f' ({per_gpu:g} per GPU)' if per_gpu else ''}: "
                 f"{per_run:,.0f} tokens/s per run (median), {fleet_tps:,.0f} tokens/s for the fleet (Σ tokens / makespan "
                 f"{makespan:.1f} s); plain HF loop {plain['tokens_per_second']:,.0f} tokens/s — ratio per run "
                 f"{per_run / plain['tokens_per_second']:.2f}, fleet {fleet_tps / plain['tokens_per_second']:.2f} "
                 f"(base into the store {base_s:.1f} s)")
        self.fleet_table = table
        return {
            "runs": len(table), "steps": int(table["steps"].iloc[0]), "batch_size": cfg.batch_size, "max_length": cfg.max_length,
            "lora_r": cfg.lora.r if cfg.lora else None, "precision": cfg.precision, "concurrency": concurrency,
            "gpus_per_run": rc.gpus_per_run, "params": self.n_params, "base_into_store_s": round(base_s, 2),
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

    # -------------------------------------------------------------- (c)

    def plain_forward(self) -> dict[str, Any]:
        """θ_pre over every test split the stage evaluates: ``model(**batch).loss``, inference mode, no patching."""
        torch = self.torch
        from timevec.data.examples import prepare_eval_sets
        from timevec.data.models import IGNORE, base_from_store, collate, load_tokenizer

        splits = prepare_eval_sets(self.config, corpus=self.corpus(), tokenizer=load_tokenizer(self.config.base))["test"]
        model, _ = base_from_store(self.config.base, self.store())
        model.to(self.device).eval()
        batch_size = self.config.evaluation.batch_size
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        n_splits, perplexity = 0, {}
        with self.threads(), torch.inference_mode():
            self.sync()
            began = time.perf_counter()
            for (task, _granularity), by_period in splits.items():
                for period, split in by_period.items():
                    if task == "summarization":
                        continue
                    order = sorted(split.examples, key=lambda e: len(e.input_ids) + len(e.labels))
                    total = torch.zeros((), dtype=torch.float64, device=self.device)
                    count = 0
                    for start in range(0, len(order), batch_size):
                        batch = collate(order[start: start + batch_size], split.pad_id, split.encoder_decoder)
                        labels = batch["labels"] if split.encoder_decoder else batch["labels"][:, 1:]
                        n = int((labels != IGNORE).sum())
                        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                        total += model(**batch).loss.double() * n
                        count += n
                    if task == "lm":
                        perplexity[period] = math.exp(float(total) / count)  # float(): one sync per split, as a cell's
                    n_splits += 1
            self.sync()
            seconds = time.perf_counter() - began
        peak = float(torch.cuda.max_memory_allocated()) if self.device.type == "cuda" else math.nan
        del model
        return {"splits": n_splits, "seconds": seconds, "cells_per_second": n_splits / seconds, "base_perplexity": perplexity,
                "memory_peak_bytes": finite(peak)}

    def cells(self) -> dict[str, Any]:
        from timevec.distributed.cells import run_cells

        frame, stats = run_cells(self.config, self.store())
        computed = stats.cells_computed
        stage_rate = computed / stats.seconds
        steady = computed / max(stats.seconds - stats.startup_seconds, 1e-9)
        per_actor = computed / stats.forward_seconds if stats.forward_seconds else math.nan
        stage_peak = self.memory.peak
        plain = self.plain_forward()
        base_rows = frame[(frame["vector"] == "base") & (frame["task"] == "lm")]
        worst = max((abs(v - plain["base_perplexity"][p]) / plain["base_perplexity"][p]
                     for p, v in zip(base_rows["test_period"], base_rows["value"]) if p in plain["base_perplexity"]), default=math.nan)
        ev = self.config.evaluation
        examples = sorted({int(n) for n in frame["n_examples"]})
        tokens_per_cell = float(frame["n_tokens"].mean())
        self.say(f"[c] cells: {computed} cells ({stats.items} vectors incl. the base × their test splits of ≤ {ev.max_examples} "
                 f"examples, {examples[0]}–{examples[-1]} here) by {stats.actors} actor(s): {stage_rate:.2f} cells/s for the "
                 f"stage, {steady:.2f} after actor start-up ({stats.startup_seconds:.1f} s), {per_actor:.2f} per actor "
                 f"while evaluating; plain forward loop {plain['cells_per_second']:.2f} cells/s — ratio stage "
                 f"{stage_rate / plain['cells_per_second']:.2f}, steady {steady / plain['cells_per_second']:.2f}, per actor "
                 f"{per_actor / plain['cells_per_second']:.2f}; base perplexity stage vs plain: max rel. diff {fmt(worst, '.1e')}; "
                 f"GPU memory peak: device {gib(stage_peak)} during the stage, {gib(self.memory.peak)} in all, "
                 f"plain loop (this process) {gib(plain['memory_peak_bytes'])}")
        self.cells_stats = stats
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
            "fleet_memory_peak_bytes": self.summary["sections"].get("fleet", {}).get("device_memory_peak_bytes"),
        }

    # -------------------------------------------------------------- (d)

    def analogy_ratio(self, repeats: int = 3) -> dict[str, Any]:
        from timevec.adapt.analogy import analogy_terms
        from timevec.data.examples import prepare_split
        from timevec.data.models import base_is_encoder_decoder, load_tokenizer
        from timevec.evaluate.cells import CellEvaluator

        store = self.store()
        keys = sorted(store.list_vectors("lm"))
        if len(keys) < 3:
            raise RuntimeError(f"needs 3 stored lm vectors, the store has {len(keys)}")
        (_, first), (_, second), (_, last) = keys[0], keys[1], keys[-1]
        tokenizer = load_tokenizer(self.config.base)
        split = prepare_split("lm", self.corpus(), last, tokenizer, base_is_encoder_decoder(self.config.base),
                              self.config.evaluation)
        with self.threads():
            evaluator = CellEvaluator(self.config, store, device=self.device)
            vectors = [evaluator.read_vector("lm", p) for p in (first, last, second)]
            terms = analogy_terms(1.0, vectors[0], 0.3, vectors[1], 0.3, vectors[2])  # θ_pre + τ_j + 0.3 τ_k − 0.3 τ_j'
            on_device = [(c, {n: t.to(self.device) for n, t in v.tensors.items()}) for c, v in terms]

            def trial(combination) -> tuple[float, float]:
                self.sync()
                t0 = time.perf_counter()
                evaluator.patcher.apply_combination(combination)
                self.sync()
                t1 = time.perf_counter()
                evaluator.evaluate_split(split)  # ends on the host: .cpu() of the losses
                t2 = time.perf_counter()
                evaluator.patcher.restore()
                self.sync()
                t3 = time.perf_counter()
                return (t1 - t0) + (t3 - t2), t2 - t1

            trial(terms)  # warm-up: allocations, kernels, the split's resample matrix
            host = [trial(terms) for _ in range(repeats)]
            device_side = [trial(on_device) for _ in range(repeats)]
        patch = statistics.median(p for p, _ in host)
        evaluate = statistics.median(e for _, e in host)
        patch_dev = statistics.median(p for p, _ in device_side)
        n_params = sum(t.numel() for t in vectors[0].tensors.values())
        self.say(f"[d] analogy trial: combine 3 vectors + restore {patch * 1e3:.1f} ms, evaluate one split "
                 f"({split.n_examples} examples) {evaluate * 1e3:.1f} ms — combine/evaluate {100 * patch / evaluate:.1f} % "
                 f"(vectors in host memory, as the stage holds them); with the vectors already on the {self.device.type}: "
                 f"{patch_dev * 1e3:.1f} ms = {100 * patch_dev / evaluate:.1f} % (median of {repeats}; {n_params / 1e6:.3g} M params)")
        return {"vectors": [f"lm/{p}" for p in (first, last, second)], "split": f"lm/{last}", "examples": split.n_examples,
                "params": n_params, "combine_ms": patch * 1e3, "evaluate_ms": evaluate * 1e3, "ratio": patch / evaluate,
                "combine_on_device_ms": patch_dev * 1e3, "ratio_on_device": patch_dev / evaluate, "repeats": repeats}

    # -------------------------------------------------------------- (e)

    def headline_estimate(self) -> float:
        """Seconds the interpolation will take, roughly: actor start-up + its evaluations at the cells' steady rate
        (every α on the validation and test split of each middle period; soups and patching add ≈ a half)."""
        cells = self.summary["sections"]["cells"]
        middle = sum(max(len(self.config.period_list(g)) - 2, 0) for g in self.config.granularities) * len(self.config.tasks)
        evaluations = 1.5 * middle * len(self.config.interpolation.alphas) * 2
        return cells["startup_seconds"] + evaluations / cells["cells_per_second_steady"] + 5.0

    def headline(self) -> dict[str, Any]:
        from timevec.distributed.pipeline import run_pipeline

        result = run_pipeline(self.config, ["interpolate", "analyze"])
        findings = result["findings"]
        keep = findings["finding"].isin(HEADLINE)
        interp = findings["finding"].str.startswith("interpolation")
        keep &= ~interp | findings["panel"].str.contains("oracle α", regex=False)
        rows = findings.loc[keep, ["finding", "panel", "measured", "paper", "holds"]].to_dict("records")
        self.say(f"[e] headline: {len(rows)} findings rows (interpolate {result['headline'].get('seconds_interpolate', 0):.1f} s, "
                 f"analyze {result['headline'].get('seconds_analyze', 0):.1f} s)")
        for row in rows:
            self.say(f"    {row['finding']} | {row['panel']} | {row['measured']} | paper: {row['paper']} | holds: {row['holds']}")
        return {"findings": rows, "seconds_interpolate": result["headline"].get("seconds_interpolate"),
                "seconds_analyze": result["headline"].get("seconds_analyze")}

    # -------------------------------------------------------------- (f)

    def projection(self) -> dict[str, Any]:
        fleet, cells = self.summary["sections"]["fleet"], self.summary["sections"]["cells"]
        run_s = fleet["makespan_s"] / fleet["runs"]  # per run on this device, with the fleet's concurrency
        cell_s = cells["seconds_stage"] / cells["cells"]  # per cell, with the stage's actors, start-up included
        scale = PAPER["params"] / fleet["params"]
        train_h = PAPER["runs"] * run_s * scale / 3600
        cells_h = PAPER["cells"] * cell_s * scale / 3600
        hours = train_h + cells_h
        verdict = "met" if hours <= GOAL_HOURS else "NOT met"
        tokens_per_run = fleet["tokens"] / fleet["runs"]
        self.say(f"[f] projection: the paper's monthly study ({PAPER['runs']} runs + {PAPER['cells']:,} cells) for a "
                 f"{PAPER['params'] / 1e6:.0f} M-parameter model ({PAPER['model']}'s size; times scaled by the parameter "
                 f"count {PAPER['params'] / 1e6:.0f} M / {fleet['params'] / 1e6:.2f} M = {scale:.3g}) on this one "
                 f"{self.summary['device']['name']}: {PAPER['runs']} × {run_s * scale:.1f} s + {PAPER['cells']:,} × "
                 f"{cell_s * scale:.3f} s = {train_h:.2f} h + {cells_h:.2f} h = {hours:.2f} h — goal ≤ {GOAL_HOURS:g} h: {verdict} "
                 f"(runs of this bench's size, {tokens_per_run:,.0f} tokens each: {1e6 * run_s * scale / tokens_per_run:,.1f} s "
                 f"per M training tokens; cells of its split size, {cells['tokens_per_cell']:,.0f} tokens each: "
                 f"{1e3 * cell_s * scale / cells['tokens_per_cell']:,.2f} s per k tokens scored)")
        return {
            "paper": PAPER, "goal_hours": GOAL_HOURS, "seconds_per_run_measured": run_s, "seconds_per_cell_measured": cell_s,
            "param_scale": scale, "seconds_per_run_projected": run_s * scale, "seconds_per_cell_projected": cell_s * scale,
            "tokens_per_run": tokens_per_run, "tokens_per_cell": cells["tokens_per_cell"],
            "seconds_per_million_train_tokens_projected": 1e6 * run_s * scale / tokens_per_run,
            "seconds_per_thousand_eval_tokens_projected": 1e3 * cell_s * scale / cells["tokens_per_cell"],
            "train_hours": train_h, "cells_hours": cells_h, "hours": hours,
            "goal_met": hours <= GOAL_HOURS,
            "assumptions": [
                "per run: the fleet's makespan / runs on this device at its concurrency (start-up included), for runs of "
                "this bench's size (steps × batch × length); the paper's months may hold more or fewer tokens",
                "per cell: the evaluate stage's wall time / cells with its actors (start-up included), at this bench's split size",
                "time ∝ parameter count (compute-bound); a model this small is partly launch/overhead-bound on a GPU, so the "
                "scaling is optimistic for T5-small; T5 is encoder-decoder (both halves run per token)",
                "the --quick cut scales a 0.1 M-parameter model by ~600×: its projection checks the arithmetic, not the goal",
            ],
        }

    # -------------------------------------------------------------- run

    def run(self) -> int:
        cfg = self.config
        self.say(f"GPU check: {self.summary['device']['name']} (torch {self.torch.__version__}), config "
                 f"{self.summary['config']}{' --quick' if self.args.quick else ''}; {cfg.name}: {cfg.tasks} by "
                 f"{cfg.granularities} {cfg.all_periods()[0]}–{cfg.all_periods()[-1]}; store {self.store_dir}; "
                 f"summary in {self.out}")
        try:
            self.section("a", "gpu_tests", self.gpu_tests)
            self.section("b", "fleet", self.fleet)
            self.section("c", "cells", self.cells, needs=("fleet",))
            self.section("d", "analogy", self.analogy_ratio, needs=("fleet",))
            self.section("e", "headline", self.headline, needs=("cells",), estimate=self.headline_estimate)
            self.section("f", "projection", self.projection, needs=("fleet", "cells"))
        finally:
            self.memory.stop()
            import ray

            if ray.is_initialized():
                ray.shutdown()
            if self.own_store:
                shutil.rmtree(self.store_dir, ignore_errors=True)
        self.summary["device_memory_peak_bytes"] = finite(self.memory.peak) if self.device.type == "cuda" else None
        self.summary["seconds"] = round(self.elapsed(), 1)
        failed = [n for n, s in self.summary["sections"].items() if s["status"] == "failed"]
        skipped = [n for n, s in self.summary["sections"].items() if s["status"] == "skipped"]
        self.say(f"done in {self.summary['seconds']:.0f} s: {6 - len(failed) - len(skipped)} sections ok, "
                 f"{len(skipped)} skipped{' (' + ', '.join(skipped) + ')' if skipped else ''}, {len(failed)} failed"
                 f"{' (' + ', '.join(failed) + ')' if failed else ''}")
        self.summary["lines"] = self.lines
        (self.out / "gpu-bench.json").write_text(json.dumps(self.summary, indent=2, default=str))
        (self.out / "gpu-bench.md").write_text(self.markdown())
        print(f"summary: {self.out / 'gpu-bench.json'}, {self.out / 'gpu-bench.md'}", flush=True)
        return 1 if failed else 0

    def markdown(self) -> str:
        d = self.summary["device"]
        head = [f"# GPU check — {d['name']}, {self.summary['date']}", "",
                f"torch {d['torch']}" + (f", CUDA {d.get('cuda')}, driver {d.get('driver', '?')}" if d["type"] == "cuda" else "")
                + f"; config `{self.summary['config']}`{' --quick' if self.summary['quick'] else ''}; "
                f"{self.summary['seconds']:.0f} s in all", "", "```"]
        return "\n".join(head + self.lines + ["```", ""])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local head without token auth (ARCHITECTURE §5)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the driver, the plain loops and every Ray worker stay on the CPU
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # Ray workers
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: --device cuda, but torch sees no CUDA device (torch "
              f"{torch.__version__}); run with --device cpu", file=sys.stderr)
        return 2
    from timevec.config import ConfigError
    from timevec.distributed.verbosity import set_verbose

    set_verbose(False)
    try:
        bench = GpuBench(args)
    except ConfigError as exc:
        print(f"bench/gpu.py: {exc}", file=sys.stderr)
        return 2
    return bench.run()


if __name__ == "__main__":
    sys.exit(main())
