"""Fleet benchmark: what running fine-tunes as Tune trials costs against the same loop run plainly.

    .venv/bin/python bench/fleet.py [--config timevec/demo/tiny.yaml] [--runs 24] [--steps 400]
                                    [--concurrency 2] [--trainer-runs 2]
    .venv/bin/python bench/fleet.py --warm [--warm-runs 100,1000] [--warm-plain 10] [--real-runs 5]

On a local cluster (``num_cpus = concurrency``, one torch thread per run) it trains N monthly runs
of the tiny config (24 = every month of 2014–2015; ``--config timevec/demo/demo.yaml`` for the
demo's model, corpus and steps per run: the demo's scale) and prints, measured side by side in one go:

(a) training throughput: tokens/s of a run inside the fleet vs the same job (``run_one``: model
    from the store, examples, the loop, τ, vector write) in plain processes — goal ≥ 0.95×;
(b) fleet makespan (the Tune run) vs the ideal Σ(single-run train time) / concurrency — goal
    ≤ 1.1×; also split into the one-time start-up (until the first trial runs) and the rest.
    (a) and (b) are printed for each ``--report-intervals`` value (``ray.report_interval_s``: how
    often a run reports its step metrics; 0 = every step, as before the reports were coalesced),
    the fleets run back to back between the two plain halves;
(c) start-up: a few short runs with ``workers_per_run=0`` (in-trial) and ``=1`` (a Train V2
    ``TorchTrainer`` per run).

With ``--warm``, instead:

(d) runs at Ray's own overhead (bench/warm_runs.py): the overhead per run beyond the training loop of
    a fleet whose trial processes are reused for run after run and keep θ_pre, its tokenizer and the
    example sets (timevec/train/cache.py), against a fresh process per run — a micro model at
    ``--warm-runs`` runs per fleet (and the Tune driver's peak RSS at each count), SmolLM2 over
    ``--real-runs`` runs in one trial process (0: skip) — goals ≤ 0.15 s (micro) and ≤ 1 s
    (SmolLM2) per run after a process's first, and the driver's memory flat from 100 to 1,000 runs.

The plain baseline runs with the same concurrency (``concurrency`` processes, one thread each),
half of the runs BEFORE the fleet and half AFTER it, so that a machine shared with other work
loads both sides alike; the load average of each phase is printed.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
import psutil
import ray
import torch
import warm_runs
from ray import tune
from ray_start import start_ray

from timevec.config import ExperimentConfig, load_config
from timevec.data.corpus import load_corpus
from timevec.distributed.fleet import RunSpec, plan_runs, run_fleet, run_one
from timevec.store import VectorStore
from timevec.train.loop import prepare_base


def cpu_by_process() -> dict[int, float]:
    """CPU seconds of this process and each descendant (the local Ray cluster: GCS, raylet, workers)."""
    out: dict[int, float] = {}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


class Timeline(tune.Callback):
    """When the Tune run began, when its first trial started, and the CPU the whole cluster used.

    CPU is sampled per process (at most every second and at each trial's end), so processes that
    exit before the run ends (trial actors) still count with their last sample.
    """

    def __init__(self) -> None:
        self.began: float | None = None
        self.first_start: float | None = None
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._sampled = 0.0
        self.results = 0

    def _sample(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._sampled >= 1.0:
            self._sampled = now
            self._last.update(cpu_by_process())

    @property
    def cpu_used(self) -> float:
        return sum(cpu - self._base.get(pid, 0.0) for pid, cpu in self._last.items())

    def setup(self, **info) -> None:
        self.began = time.perf_counter()
        self._base = cpu_by_process()
        self._last = dict(self._base)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.results += 1
        self._sample()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._sample(force=True)

    def on_experiment_end(self, trials, **info) -> None:
        self._sample(force=True)


# ----------------------------------------------------------------------------- plain processes

_PLAIN: dict = {}


def _plain_init(config: ExperimentConfig) -> None:
    torch.set_num_threads(1)
    _PLAIN["config"] = config
    _PLAIN["corpus"] = load_corpus(config.corpus)
    _PLAIN["store"] = VectorStore.from_config(config.store)


def _plain_run(run: RunSpec) -> dict:
    began = time.time()
    metrics = run_one(_PLAIN["config"], run, _PLAIN["corpus"], _PLAIN["store"])
    return {**metrics, "began": began, "ended": time.time(), "total_seconds": time.time() - began}


def plain_phase(config: ExperimentConfig, runs: list[RunSpec], concurrency: int) -> tuple[list[dict], float, float]:
    """``runs`` in ``concurrency`` fresh processes; (per-run metrics, wall from first start to last end, load)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(concurrency, initializer=_plain_init, initargs=(config,)) as pool:
        out = pool.map(_plain_run, runs, chunksize=1)
    wall = max(m["ended"] for m in out) - min(m["began"] for m in out)
    return out, wall, harness.load_average()


# ----------------------------------------------------------------------------- the benchmark


def main() -> int:
    parser = harness.parser(__doc__, harness.config_options(
        harness.REPO / "timevec/demo/tiny.yaml", overrides=False,
        help="the study config whose model, corpus and training the runs use (default: %(default)s)"))
    parser.add_argument("--runs", type=int, default=24, help="monthly runs (from 2014-01)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: 400 for tiny.yaml, else the config's)")
    parser.add_argument("--concurrency", type=int, default=2, help="runs at once = local CPUs")
    parser.add_argument("--trainer-runs", type=int, default=2, help="runs for the workers_per_run 0 vs 1 comparison (0: skip)")
    parser.add_argument("--trainer-steps", type=int, default=50, help="steps per run in that comparison (start-up is what it measures)")
    parser.add_argument("--workdir", help="where stores go (default: a temporary directory)")
    parser.add_argument("--report-intervals", default="0.5,0",
                        help="ray.report_interval_s of each fleet run, comma-separated (0: report every step)")
    parser.add_argument("--warm", action="store_true", help="section (d) only: warm trial processes vs a fresh process per run")
    parser.add_argument("--warm-runs", default="100,1000", help="(d) micro fleets' run counts, comma-separated")
    parser.add_argument("--warm-plain", type=int, default=10, help="(d) micro runs in fresh processes (the baseline)")
    parser.add_argument("--real-runs", type=int, default=5, help="(d) SmolLM2 runs in one trial process (0: skip)")
    parser.add_argument("--real-store", default="dense,factors",
                        help="(d) how the SmolLM2 runs store τ (training.lora.store), comma-separated: each measured in turn")
    args = parser.parse_args()
    harness.output_block()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.warm:
        return warm_runs.main([int(n) for n in args.warm_runs.split(",")], args.warm_plain, args.real_runs,
                              args.concurrency, Path(args.workdir) if args.workdir else None, args.real_store.split(","))

    work = Path(args.workdir or tempfile.mkdtemp(prefix="timevec-bench-fleet-"))
    years = max(1, -(-args.runs // 12))
    source = Path(args.config)
    if args.steps is None:
        args.steps = 400 if source.name == "tiny.yaml" else load_config(source).training.steps
    overrides = [
        "tasks=[lm]",
        "granularities=[month]",
        "periods.start='2014'",
        f"periods.end='{2014 + years - 1}'",
        f"training.steps={args.steps}",
        f"training.checkpoint_every={max(1, args.steps // 2)}",
        f"ray.num_cpus={args.concurrency}",
        f"ray.max_concurrent_runs={args.concurrency}",
        "ray.cpus_per_run=1",
        "ray.torch_threads=1",
    ]

    def config_for(name: str, *extra: str) -> ExperimentConfig:
        root = work / name
        if not root.exists():
            shutil.copytree(work / "base", root)
        return load_config(source, [*overrides, f"store.url={root}", *extra])

    base_config = load_config(source, [*overrides, f"store.url={work / 'base'}"])
    runs = plan_runs(base_config)[: args.runs]
    prepare_base(base_config, load_corpus(base_config.corpus), VectorStore.from_config(base_config.store))
    print(f"{len(runs)} runs x {args.steps} steps of {source.name}, concurrency {args.concurrency}; work dir {work}")

    half = len(runs) // 2
    plain_config = config_for("plain")
    first, wall1, load1 = plain_phase(plain_config, runs[:half], args.concurrency)

    ray_init = start_ray(args.concurrency)
    intervals = [float(x) for x in args.report_intervals.split(",")]
    fleets = []
    for interval in intervals:
        timeline = Timeline()
        table = run_fleet(config_for(f"fleet-{interval:g}", f"ray.report_interval_s={interval}"), runs=runs,
                          progress=False, callbacks=[timeline])
        assert set(table["status"]) == {"done"}, table.to_string()
        fleets.append((interval, table, timeline, harness.load_average()))

    second, wall2, load2 = plain_phase(plain_config, runs[half:], args.concurrency)
    plain = first + second

    plain_tps = statistics.median(m["tokens_per_second"] for m in plain)
    sum_train = sum(m["train_seconds"] for m in plain)
    sum_total = sum(m["total_seconds"] for m in plain)
    ideal_train = sum_train / args.concurrency
    ideal_total = sum_total / args.concurrency
    plain_tokens = sum(m["tokens"] for m in plain)
    plain_cpu = 1e6 * sum(m["cpu_seconds"] for m in plain) / plain_tokens

    print()
    loads = ", ".join(f"fleet (report every {i:g} s) {load:.1f}" for i, _t, _tl, load in fleets)
    print(f"load average (1 min) after each phase: plain-1 {load1:.1f}, {loads}, plain-2 {load2:.1f}")
    print(f"ray.init(num_cpus={args.concurrency}): {ray_init:.1f} s (not in the makespan)")
    print(f"plain processes, 1 thread each: {plain_tps:.0f} tokens/s (median run), {plain_cpu:.2f} CPU ms per 1000 tokens; "
          f"ideal sum(train) / {args.concurrency} = {ideal_train:.1f} s, sum(total) / {args.concurrency} = {ideal_total:.1f} s, "
          f"wall {wall1 + wall2:.1f} s")
    for interval, table, timeline, _load in fleets:
        makespan = table.attrs["makespan_s"]
        fleet_tps = statistics.median(table["tokens_per_second"])
        startup = timeline.first_start - timeline.began
        fleet_train = float(table["seconds"].sum())
        # slot time outside training once the first trial runs: trial set-up, the vector write, Tune's
        # bookkeeping between trials (the one-time start-up is printed on its own)
        per_run = ((makespan - startup) * args.concurrency - fleet_train) / len(runs)
        fleet_tokens = float(table["tokens"].sum())
        trial_cpu = 1e6 * float(table["cpu_seconds"].sum()) / fleet_tokens
        cluster_cpu = 1e6 * timeline.cpu_used / fleet_tokens
        print(f"--- fleet, ray.report_interval_s={interval:g}" + (" (a report every step)" if interval == 0 else ""))
        print("(a) tokens/s of a run (median over runs)")
        print(f"    fleet trials, 1 thread each:     {fleet_tps:9.0f}   ratio {fleet_tps / plain_tps:.3f}  (goal >= 0.95)")
        print("    CPU ms per 1000 tokens trained (independent of other load on the machine):")
        print(f"      fleet trial while training:    {trial_cpu:7.2f}   plain/trial {plain_cpu / trial_cpu:.3f}"
              "  (the loop + reporting)")
        print(f"      whole cluster, Tune run:       {cluster_cpu:7.2f}   plain/cluster {plain_cpu / cluster_cpu:.3f}  "
              f"(+ driver, raylet, GCS, start-up, model loads, vector writes)")
        print("(b) makespan")
        print(f"    fleet (the Tune run):            {makespan:9.1f} s")
        print(f"    ideal sum(train) / {args.concurrency}:            {ideal_train:9.1f} s   "
              f"ratio {makespan / ideal_train:.3f}  (goal <= 1.1)")
        print(f"    ideal sum(total) / {args.concurrency}:            {ideal_total:9.1f} s   ratio {makespan / ideal_total:.3f}"
              "  (total = + model load, examples, vector write)")
        print(f"    plain processes, wall:           {wall1 + wall2:9.1f} s   ratio {makespan / (wall1 + wall2):.3f}")
        print(f"    start-up (Tune run begins -> first trial starts): {startup:.1f} s; the rest {makespan - startup:.1f} s "
              f"= {(makespan - startup) / ideal_train:.3f}x ideal")
        print(f"    per-run overhead in the fleet (slot time after the start-up - train time): {per_run:.2f} s/run "
              f"(plain: {(sum_total - sum_train) / len(runs):.2f} s/run)")
        print(f"    training inside the cluster: sum(train) {fleet_train:.1f} s vs plain {sum_train:.1f} s, "
              f"ratio {fleet_train / sum_train:.3f}")
        print(f"    makespan / ideal = start-up {startup / ideal_train:.3f} + training {fleet_train / sum_train:.3f} "
              f"+ per-run overhead {per_run * len(runs) / args.concurrency / ideal_train:.3f}"
              " (a slot left idle at the end counts as overhead)")
        print(f"    results Tune's driver handled: {timeline.results} ({timeline.results / len(runs):.0f} per run)")

    if args.trainer_runs:
        few = runs[: args.trainer_runs]
        print(f"(c) start-up: {len(few)} runs x {args.trainer_steps} steps, workers_per_run 0 (in-trial) vs 1 (TorchTrainer)")
        for workers in (0, 1):
            timeline = Timeline()
            config = config_for(
                f"workers{workers}", f"ray.workers_per_run={workers}", f"training.steps={args.trainer_steps}",
                f"training.checkpoint_every={max(1, args.trainer_steps // 2)}",
            )
            out = run_fleet(config, runs=few, progress=False, callbacks=[timeline])
            assert set(out["status"]) == {"done"}, out.to_string()
            span = out.attrs["makespan_s"]
            print(
                f"    workers_per_run={workers}: makespan {span:6.1f} s "
                f"(first trial after {timeline.first_start - timeline.began:4.1f} s), "
                f"per run: train {out['seconds'].median():5.2f} s at {out['tokens_per_second'].median():6.0f} tokens/s, "
                f"job wall {out['wall_seconds'].median():5.1f} s"
            )
    ray.shutdown()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
