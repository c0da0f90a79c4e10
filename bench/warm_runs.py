"""Section (d) of bench/fleet.py: runs at Ray's own overhead — warm trial processes against a fresh process per run.

A module of bench/fleet.py (``fleet.py --warm``), not a script. A fleet's trial process is reused
for run after run (Tune's ``reuse_actors``) and keeps θ_pre, its tokenizer and the example sets
(timevec/train/cache.py); the baseline is what a run costs without either: a fresh Python process
per run (``run_one``: imports, the base from the store, the examples, the loop, τ written).

The overhead of a run is its wall time beyond its training loop (``train_seconds``):

- in the fleet, **in-trial**: Tune's ``time_total_s − train_seconds`` (the trial's clock, from its
  start to its final report: the job set up from the cache, the checkpoint's upload, τ written);
  **slot**: from the run's start (the driver's ``on_trial_start``) to the next run's start in the
  same process (its end, for a process's last run) − ``train_seconds``: adds Tune's hand-over
  between trials. A process's first run is *cold* (it reads θ_pre); the others are *warm*;
- in a fresh process: the process's wall (started → exited, as the parent sees it) −
  ``train_seconds``; and the part inside ``run_one`` (``wall_seconds − train_seconds``) beside it.

In the fleet, the end-of-loop checkpoint is saved inside the loop (so inside ``train_seconds``; a
plain run saves none) and uploaded after it (so inside the overhead).

Micro model: an embedded GPT-2 of d_model 8 (bench/paper_scale.py's), 2 steps of 4 texts, one run
per DAY of the demo corpus (every tweet kept, a quarter of them held out for test; the days of
2013–2017 with ≥ 4 train texts and a test one: 1,053), so that a thousand runs exist. Each fleet
runs in a fresh driver process (its own local Ray), whose RSS is sampled every 50 ms: before
``run_fleet`` and its peak during it. The fleets run as the config says (``ray.runs_per_experiment``, 200 by
default: a fleet of 1,000 is 5 Tune experiments one after the other), and the largest once more as ONE
experiment, for what the parts cost in makespan and save in memory. SmolLM2-135M-Instruct (the preset, LoRA r 8 as
jobs/configs/smollm2-smoke.yaml trains it), one run at a time on 1 thread, quarterly LM runs of
2016–2017: ``--real-runs`` runs in one trial process against the same runs but the first in fresh
processes. Half of each fresh-process sample runs before the fleets, half after, so that a shared
machine's load weighs on both sides alike.

The number of trial processes is printed: Tune hands a pending trial a cached (finished) trial
process as soon as there is one and cancels the process it was starting for it
(``TuneController._maybe_reuse_cached_actor``), so while runs are shorter than a process's start-up
(≈ 10–30 s here), a fleet runs in fewer processes than it has slots.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Empty
from typing import Any

import harness
import psutil
from ray import tune

from timevec.config import ExperimentConfig, load_config
from timevec.data.corpus import load_corpus
from timevec.store import VectorStore
from timevec.train.loop import prepare_base
from timevec.train.plan import RunSpec, plan_runs

SMOKE = harness.REPO / "jobs" / "configs" / "smollm2-smoke.yaml"
MICRO_TEXTS = 4

# One run in a fresh process: the config (JSON) and the run from argv, the metrics as JSON on stdout.
FRESH_RUN = """
import json, sys, torch
from timevec.config import ExperimentConfig
from timevec.data.corpus import load_corpus
from timevec.store import VectorStore
from timevec.train.plan import RunSpec
from timevec.train.run import run_one
config = ExperimentConfig.model_validate_json(open(sys.argv[1]).read())
torch.set_num_threads(config.ray.torch_threads)
metrics = run_one(config, RunSpec(**json.loads(sys.argv[2])), load_corpus(config.corpus), VectorStore.from_config(config.store))
print(json.dumps(metrics))
"""


def micro_config(store_url: Path, concurrency: int) -> ExperimentConfig:
    """The micro model on one day's texts per run (every demo tweet kept: enough days for 1,000 runs)."""
    data = {
        "name": "warm-micro", "seed": 0,
        "base": {"source": "embedded", "arch": "gpt2",
                 "tiny": {"d_model": 8, "num_layers": 1, "num_heads": 1, "d_ff": 16, "max_positions": 32},
                 "pretrain": {"steps": 2, "batch_size": 4, "lr": 0.003, "max_length": 32}},
        "corpus": {"source": "demo:trump_tweets", "text_column": "text", "date_column": "date", "label_column": "source",
                   "key_column": "key", "caps": {"train": None, "validation": None, "test": None},
                   "split": {"validation": 0.0, "test": 0.25}},  # a test row on as many days as can be
        "granularities": ["day"], "periods": {"start": "2013-01-01", "end": "2017-12-31"}, "tasks": ["lm"],
        "training": {"lr": 0.001, "steps": 2, "batch_size": MICRO_TEXTS, "max_length": 32, "checkpoint_every": 1000},
        "store": {"url": str(store_url)},
        "ray": {"num_cpus": concurrency, "cpus_per_run": 1, "max_concurrent_runs": concurrency, "torch_threads": 1,
                "max_failures": 1},
        "evaluation": {"batch_size": 4, "max_length": 32, "max_examples": 4},
    }
    return ExperimentConfig.model_validate(data)


def real_config(store_url: Path, lora_store: str = "dense") -> ExperimentConfig:
    return load_config(SMOKE, [
        f"store.url={store_url}", "tasks=[lm]", "granularities=[quarter]", "training.steps=3",
        f"training.lora.store={lora_store}",
        # one thread: on a shared machine two threads of one run wait on each other (4x slower steps)
        "ray.num_cpus=2", "ray.cpus_per_run=1", "ray.max_concurrent_runs=1", "ray.torch_threads=1",
    ])


def with_store(config: ExperimentConfig, url: Path) -> ExperimentConfig:
    return config.model_copy(update={"store": config.store.model_copy(update={"url": str(url)})})


# ----------------------------------------------------------------------------- a fresh process per run


def fresh_runs(config: ExperimentConfig, runs: list[RunSpec], concurrency: int, work: Path) -> list[dict]:
    """Each run in a new Python process, ``concurrency`` at a time; the run's metrics and its process wall."""
    path = work / f"config-{os.getpid()}-{time.monotonic_ns()}.json"
    path.write_text(config.model_dump_json())

    def one(run: RunSpec) -> dict:
        began = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", FRESH_RUN, str(path), json.dumps(run.as_dict())],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - began
        if out.returncode != 0:
            raise RuntimeError(f"run {run.key} in a fresh process failed:\n{out.stderr[-3000:]}")
        return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_seconds": wall}

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, runs))


# ----------------------------------------------------------------------------- a fleet in a fresh driver


class TrialClock(tune.Callback):
    """Each trial's start and end as the driver sees them, and its final result's pid and times."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.trials: list[dict] = []

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = time.perf_counter()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        self.trials.append({"start": self.started[trial.trial_id], "end": time.perf_counter(), "pid": result["pid"],
                            "time_total_s": result["time_total_s"], "train_seconds": result["train_seconds"],
                            "base_loaded": result["base_loaded"]})


def _fleet_driver(config_json: str, runs: list[dict], concurrency: int, queue: Any) -> None:
    """In a fresh process: a local Ray, the fleet over ``runs``, this driver's RSS before and during it."""
    from ray_start import start_ray

    from timevec.distributed.fleet import run_fleet

    config = ExperimentConfig.model_validate_json(config_json)
    start_ray(concurrency)
    me, peak, stop = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.05)

    before = me.memory_info().rss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clock = TrialClock()
    table = run_fleet(config, runs=[RunSpec(**r) for r in runs], progress=False, callbacks=[clock])
    stop.set()
    sampler.join()
    assert set(table["status"]) == {"done"}, table.to_string()
    queue.put({"trials": clock.trials, "makespan": table.attrs["makespan_s"], "rss_before": before, "rss_peak": peak[0],
               "load": harness.load_average()})


def fleet(config: ExperimentConfig, runs: list[RunSpec], concurrency: int) -> dict:
    """``runs`` as one fleet, driven from a fresh process; its figures (see :func:`overheads`)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    driver = ctx.Process(target=_fleet_driver, args=(config.model_dump_json(), [r.as_dict() for r in runs], concurrency, queue))
    driver.start()
    while True:
        try:
            out = queue.get(timeout=5)
            break
        except Empty:
            if not driver.is_alive():
                raise RuntimeError(f"the fleet's driver process exited ({driver.exitcode}) without its figures") from None
    driver.join()
    return {**out, **overheads(out["trials"])}


def overheads(trials: list[dict]) -> dict:
    """In-trial and slot overheads of each process's cold (first) and warm (later) runs."""
    cold, warm, slot = [], [], []
    by_pid: dict[int, list[dict]] = {}
    for t in sorted(trials, key=lambda t: t["start"]):
        by_pid.setdefault(t["pid"], []).append(t)
    for ts in by_pid.values():
        for i, t in enumerate(ts):
            (warm if i else cold).append(t["time_total_s"] - t["train_seconds"])
            if i:
                after = ts[i + 1]["start"] if i + 1 < len(ts) else t["end"]
                slot.append(after - t["start"] - t["train_seconds"])
    return {"processes": len(by_pid), "base_loads": sum(bool(t["base_loaded"]) for t in trials), "cold": cold,
            "warm": warm, "slot": slot, "train": [t["train_seconds"] for t in trials]}


# ----------------------------------------------------------------------------- the section


def _stats(values: list[float]) -> str:
    if not values:
        return "none"
    if len(values) <= 8:
        return f"mean {statistics.mean(values):.3f} s, each {' '.join(f'{v:.2f}' for v in values)}"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(values):.3f} s, mean {statistics.mean(values):.3f}, p90 {p90:.3f} ({len(values)} runs)"


def _fresh_line(label: str, fresh: list[dict], load: str) -> float:
    process = [m["process_seconds"] - m["train_seconds"] for m in fresh]
    inside = [m["wall_seconds"] - m["train_seconds"] for m in fresh]
    print(f"    {label}: overhead {statistics.mean(process):.2f} s/run (process wall − train; median "
          f"{statistics.median(process):.2f}), of which in run_one {statistics.mean(inside):.3f} s; train "
          f"{statistics.mean(m['train_seconds'] for m in fresh):.3f} s/run; {load}")
    if len(fresh) <= 8:
        print(f"      each: {' '.join(f'{v:.2f}' for v in process)} (in run_one {' '.join(f'{v:.2f}' for v in inside)})")
    return statistics.mean(process)


def _fleet_lines(label: str, out: dict, fresh: float) -> None:
    warm = statistics.mean(out["warm"]) if out["warm"] else float("nan")
    print(f"    {label}: {out['processes']} trial processes, θ_pre read {out['base_loads']}x; makespan {out['makespan']:.1f} s; "
          f"load average {out['load']:.1f} at its end")
    print(f"      warm runs, in-trial: {_stats(out['warm'])}   ratio warm/fresh {warm / fresh:.4f}")
    print(f"      warm runs, slot:     {_stats(out['slot'])}")
    print(f"      cold runs, in-trial: {_stats(out['cold'])}; train {statistics.mean(out['train']):.3f} s/run")
    print(f"      Tune driver RSS: {out['rss_before'] / 2**20:.0f} MiB before run_fleet, peak {out['rss_peak'] / 2**20:.0f} MiB "
          f"(+{(out['rss_peak'] - out['rss_before']) / 2**20:.0f} MiB)")


def _copy_store(work: Path, base: str, name: str) -> Path:
    shutil.copytree(work / base, work / name)
    return work / name


def micro(sizes: list[int], plain: int, concurrency: int, work: Path) -> None:
    """The micro model's fleets of each size against ``plain`` runs in fresh processes."""
    config = micro_config(work / "micro-base", concurrency)
    corpus = load_corpus(config.corpus)
    prepare_base(config, corpus, VectorStore.from_config(config.store))
    by_split = corpus.records.groupby(["split", "day"]).size()
    days = [p for p in config.period_list("day")  # the fleet wants a test row in each period too
            if by_split.get(("train", p), 0) >= MICRO_TEXTS and by_split.get(("test", p), 0) >= 1]
    runs = [RunSpec("lm", day, "day") for day in days]
    if max(sizes) > len(runs):
        raise SystemExit(f"--warm-runs: at most {len(runs)} micro runs exist (days with >= {MICRO_TEXTS} train texts and a test one)")

    print(f"  micro model (GPT-2 d_model 8, 2 steps x {MICRO_TEXTS} texts, a day per run), {concurrency} runs at a time:")
    fresh_config = with_store(config, _copy_store(work, "micro-base", "micro-fresh"))
    half = plain // 2
    first = fresh_runs(fresh_config, runs[:half], concurrency, work)
    fleets = [(n, fleet(with_store(config, _copy_store(work, "micro-base", f"micro-fleet-{n}")), runs[:n], concurrency))
              for n in sizes]
    # the largest fleet once more as ONE Tune experiment (ray.runs_per_experiment null): what the parts cost and save
    n = max(sizes)
    whole = config.model_copy(update={"ray": config.ray.model_copy(update={"runs_per_experiment": None})})
    one = fleet(with_store(whole, _copy_store(work, "micro-base", f"micro-fleet-{n}-one")), runs[:n], concurrency)
    fresh = first + fresh_runs(fresh_config, runs[half:plain], concurrency, work)
    fresh_mean = _fresh_line(f"fresh processes ({plain} runs)", fresh, harness.load_note())
    parts = config.ray.runs_per_experiment
    for n, out in fleets:
        _fleet_lines(f"fleet of {n} runs ({-(-n // parts) if parts else 1} Tune experiment(s): ray.runs_per_experiment {parts})",
                     out, fresh_mean)
    _fleet_lines(f"fleet of {n} runs as one Tune experiment (ray.runs_per_experiment null)", one, fresh_mean)
    if len(fleets) > 1:
        (a, small), (b, large) = fleets[0], fleets[-1]
        print(f"    Tune driver peak RSS, {b} vs {a} runs: {large['rss_peak'] / 2**20:.0f} vs {small['rss_peak'] / 2**20:.0f} MiB, "
              f"ratio {large['rss_peak'] / small['rss_peak']:.3f}; growth during the fleet "
              f"+{(large['rss_peak'] - large['rss_before']) / 2**20:.0f} vs +{(small['rss_peak'] - small['rss_before']) / 2**20:.0f} MiB")


def real(real_runs: int, work: Path, lora_stores: list[str]) -> None:
    """SmolLM2: ``real_runs`` runs in one trial process against runs 2… in fresh processes, for each way
    of storing a LoRA run's τ (``training.lora.store``: dense, the merged τ of every weight; factors)."""
    for lora_store in lora_stores:
        config = real_config(work / "real-base", lora_store)
        prepare_base(config, load_corpus(config.corpus), VectorStore.from_config(config.store))
        planned = plan_runs(config)[:real_runs]
        lora = config.training.lora
        print(f"  SmolLM2-135M-Instruct (LoRA r {lora.r if lora else '-'}, τ stored {lora_store} in {config.store.dtype}, "
              f"{config.training.steps} steps, {config.training.batch_size} x {config.training.max_length} tokens), "
              f"one run at a time, {config.ray.torch_threads} thread(s):")
        fresh_config = with_store(config, _copy_store(work, "real-base", f"real-fresh-{lora_store}"))
        later = planned[1:]
        first = fresh_runs(fresh_config, later[: len(later) // 2], 1, work)
        out = fleet(with_store(config, _copy_store(work, "real-base", f"real-fleet-{lora_store}")), planned, config.ray.num_cpus)
        fresh = first + fresh_runs(fresh_config, later[len(later) // 2 :], 1, work)
        fresh_mean = _fresh_line(f"fresh processes (runs 2–{len(planned)})", fresh, harness.load_note())
        _fleet_lines(f"fleet of {len(planned)} runs", out, fresh_mean)


def main(sizes: list[int], plain: int, real_runs: int, concurrency: int, work: Path | None,
         lora_stores: list[str] | None = None) -> int:
    """Print section (d); ``sizes``: the micro fleets' run counts, ``plain``: micro runs in fresh processes."""
    work = work or Path(tempfile.mkdtemp(prefix="timevec-bench-warm-"))
    work.mkdir(parents=True, exist_ok=True)
    print("(d) runs at Ray's own overhead: warm trial processes (reuse_actors + timevec/train/cache.py) "
          "vs a fresh process per run (definitions: bench/warm_runs.py)")
    sizes = [n for n in sizes if n > 0]
    if sizes:
        micro(sizes, plain, concurrency, work)
    if real_runs:
        real(real_runs, work, lora_stores or ["dense", "factors"])
    return 0
