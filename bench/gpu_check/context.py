"""What every section of the GPU check works with: the device, the config and its store, the device's memory.

:class:`GpuCheck` is built from ``bench/gpu.py``'s arguments: the config (``--quick``: the tiny
embedded model, :data:`QUICK`; ``--device cpu``: :data:`ON_CPU`; then ``--set``), a fresh store in a
temporary folder (never under ``--out``: the device machine sends ``$OUT`` back), the summary that
``OUT/gpu-bench.json`` records, and the sections' runner (:class:`harness.Sections`) with the
device's memory peak recorded for the sections that use the device.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from harness import REPO, Sections

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


class GpuCheck:
    """The run's device, config, store and summary, and the pieces the sections share."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args, self.torch = args, torch
        self.device = torch.device(args.device)
        self.sections = Sections(args.budget_s, on_start=self._section_start, on_ok=self._record_memory_peak)
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
        overrides += list(args.overrides)
        from timevec.config import load_config

        self.config = load_config(config_path, overrides)
        self.config_path = config_path
        self.summary: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": self.describe_device(),
            "config": str(config_path.relative_to(REPO) if config_path.is_relative_to(REPO) else config_path),
            "quick": bool(args.quick),
            "overrides": overrides[1:],
            "budget_s": finite(args.budget_s),
            "sections": self.sections.results,
        }
        self.memory = DeviceMemory(torch, self.device)
        self.summary["device"]["memory_in_use_at_start_bytes"] = finite(self.memory.at_start)

    def _section_start(self) -> None:
        self.memory.section_start()

    def _record_memory_peak(self, key: str, result: dict[str, Any]) -> None:
        """(b)–(e) use the device: their record gets its memory peak (every process, CUDA contexts included)."""
        if key in "bcde" and self.device.type == "cuda":
            result["device_memory_peak_bytes"] = finite(self.memory.peak)

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
        self.sections.say(line)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

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
