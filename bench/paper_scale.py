"""Paper scale: the orchestration at the monthly study's count, with a micro model, on three Ray nodes.

    .venv/bin/python bench/paper_scale.py [--months 58] [--tasks lm,classification,summarization]
                                          [--steps 2] [--texts 4] [--stages finetune,evaluate,interpolate,analyze]
                                          [--tmp DIR] [--keep]

The paper's monthly study has 58 months; with 3 tasks that is 174 fine-tunes and 3 × (58² + 58)
cells (every vector × every test month, plus the base's row). Here every run is a micro model
(an embedded GPT-2 of d_model 8, ≈4 k parameters, byte-level vocabulary), ``--steps`` steps on
``--texts`` texts per month (the demo corpus, months 2013-01 … by default 2017-10), so what is
measured is the orchestration: Tune, the actor pool, the store, the tables. The cluster is three
Ray nodes on loopback (``ray.cluster_utils.Cluster``: a head and two workers, 1 CPU each); the
store is a folder that every node sees (one host).

Printed as each stage ends, for the one count of this invocation (run it at two counts to see what
grows; the machine's load average is printed at the start and the end):

- start-up: the cluster (head + 2 workers up), the fleet's corpus/base/lease before Tune, the
  cells' actor start-up (until the first actor could evaluate);
- fine-tunes: Tune's makespan, Σ training-loop seconds (the compute) and the per-run overhead beyond
  it — wall ``(makespan × slots − Σ train) / runs`` (a slot left idle counts as overhead), inside the
  trial, and CPU ``(CPU of every process of the cluster − Σ train CPU) / runs``, which a loaded
  machine inflates far less than wall time;
- the Tune driver's RSS (this process, sampled every 0.1 s) before and during the fleet, and the
  number of results Tune returned;
- cells: the same split into start-up, compute (Σ forward) and per-cell overhead (wall, inside
  the actors, CPU), and every append to the cells table (cost of the first and the last ones);
- interpolation and analysis walls; the streamed Gram over every vector (seconds, RSS added).

``--tables 20,58,167`` instead times the cells table's writes alone (no Ray): the rows of each count
appended in the cells driver's batches, against a whole-table rewrite per batch (what an append did
before part files).
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import harness
import psutil
import ray

from timevec.config import ExperimentConfig, StoreConfig
from timevec.periods import Period
from timevec.store import VectorStore
from timevec.store.tables import ResultTables

log = logging.getLogger("paper_scale")

FIRST_MONTH = "2013-01"


def month_range(months: int) -> tuple[str, str]:
    """``months`` consecutive months from :data:`FIRST_MONTH` (58 → 2013-01 … 2017-10)."""
    first = Period.parse(FIRST_MONTH)
    index = first.year * 12 + (first.month - 1) + months - 1
    return FIRST_MONTH, f"{index // 12:04d}-{index % 12 + 1:02d}"


def paper_config(months: int, tasks: list[str], steps: int, texts: int, store_url: str, nodes: int) -> ExperimentConfig:
    """The monthly study at ``months`` months with a micro model: the config this bench runs."""
    start, end = month_range(months)
    store: dict = {"url": store_url}
    if "shared" in StoreConfig.model_fields:  # a local folder on a multi-node cluster must be declared shared
        store["shared"] = True
    data = {
        "name": f"paper-scale-{months}",
        "seed": 0,
        "base": {
            "source": "embedded",
            "arch": "gpt2",
            "tiny": {"d_model": 8, "num_layers": 1, "num_heads": 1, "d_ff": 16, "max_positions": 32},
            "pretrain": {"steps": 2, "batch_size": 4, "lr": 0.003, "max_length": 32},
        },
        "corpus": {
            "source": "demo:trump_tweets", "text_column": "text", "date_column": "date", "label_column": "source",
            "key_column": "key",
            # the demo corpus has no summary pair: the text → its posting client stands in (orchestration only)
            **({"summary_source_column": "text", "summary_target_column": "source"} if "summarization" in tasks else {}),
            "caps": {"train": texts, "validation": texts, "test": texts},
        },
        "granularities": ["month"],
        "periods": {"start": start, "end": end},
        "tasks": tasks,
        "training": {"lr": 0.001, "steps": steps, "batch_size": texts, "max_length": 32, "checkpoint_every": 1000},
        "store": store,
        "ray": {"cpus_per_run": 1, "max_concurrent_runs": nodes, "eval_actors": nodes, "cpus_per_eval_actor": 1,
                "torch_threads": 1, "max_failures": 1},
        "evaluation": {"batch_size": texts, "max_length": 32, "max_examples": texts, "summary_max_new_tokens": 2,
                       "bootstrap_samples": 0},
        "interpolation": {"alphas": [0.0, 0.5, 1.0], "soup_max_distance": 1},
    }
    return ExperimentConfig.model_validate(data)


class Sampler:
    """In a thread: this process's RSS (peak per named phase, every ``every`` s) and the CPU seconds of
    this process and every descendant — the Ray nodes the bench started, their workers — per phase
    (every ``cpu_every`` s; a process's CPU counts up to its last sample)."""

    def __init__(self, every: float = 0.1, cpu_every: float = 0.5) -> None:
        self.every, self.cpu_every, self.phase = every, cpu_every, "setup"
        self.peaks: dict[str, int] = {}
        self.cpu: dict[str, float] = {}
        self.cpu_by_kind: dict[str, dict[str, float]] = {}  # phase -> driver | workers | daemons -> CPU s
        self._kind: dict[int, str] = {}
        self._seen: dict[int, float] = {}  # pid -> CPU seconds at its last sample
        self._start: dict[int, float] = {}  # pid -> CPU seconds when the phase began (or 0: born in it)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample_cpu(self) -> None:
        procs = [self._proc]
        try:
            procs += self._proc.children(recursive=True)
        except psutil.Error:
            pass
        for proc in procs:
            try:
                t = proc.cpu_times()
                if proc.pid not in self._kind:
                    argv = [*proc.cmdline(), "", ""]
                    # a worker starts as `python setup_worker.py …` or `python default_worker.py …`, then renames itself ray::…
                    worker = (argv[0].startswith("ray::") and "Agent" not in argv[0]) or argv[1].endswith(
                        ("setup_worker.py", "default_worker.py"))
                    self._kind[proc.pid] = ("driver" if proc.pid == self._proc.pid else "workers" if worker
                                            else "daemons")  # GCS, raylets, dashboard and runtime-env agents, monitors
            except psutil.Error:
                continue
            with self._lock:
                self._seen[proc.pid] = t.user + t.system
                self._start.setdefault(proc.pid, 0.0)  # first seen in this phase: born in it

    def _close_phase(self) -> None:
        with self._lock:
            kinds = self.cpu_by_kind.setdefault(self.phase, {"driver": 0.0, "workers": 0.0, "daemons": 0.0})
            for pid, start in self._start.items():
                if pid in self._seen:
                    kinds[self._kind.get(pid, "daemons")] += self._seen[pid] - start
            self.cpu[self.phase] = sum(kinds.values())
            self._start = dict(self._seen)

    def _run(self) -> None:
        last_cpu = 0.0
        while not self._stop.is_set():
            rss = self._proc.memory_info().rss
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            if time.monotonic() - last_cpu >= self.cpu_every:
                self._sample_cpu()
                last_cpu = time.monotonic()
            time.sleep(self.every)

    def enter(self, phase: str) -> None:
        self._sample_cpu()
        self._close_phase()
        self.phase = phase
        self.peaks[phase] = self._proc.memory_info().rss

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_cpu()
        self._close_phase()


class AppendLog:
    """Times every :meth:`ResultTables.append` (measurement only: the method itself runs unchanged)."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.calls: list[tuple[str, int, int, float]] = []  # name, rows before, rows added, seconds
        original = ResultTables.append
        log_ = self

        def append(tables, name, data, new_columns=()):  # noqa: ANN001, ANN202
            added = data.num_rows if hasattr(data, "num_rows") else len(data)
            began = time.perf_counter()
            original(tables, name, data, new_columns)
            log_.calls.append((name, log_.rows.get(name, 0), added, time.perf_counter() - began))
            log_.rows[name] = log_.rows.get(name, 0) + added

        ResultTables.append = append  # type: ignore[method-assign]

    def summary(self, name: str) -> str:
        calls = [c for c in self.calls if c[0] == name]
        if not calls:
            return f"{name}: no appends"
        k = max(1, len(calls) // 4)
        first, last = calls[:k], calls[-k:]
        mean = lambda cs: sum(c[3] for c in cs) / len(cs) * 1000  # noqa: E731
        return (f"{name}: {len(calls)} appends, {sum(c[2] for c in calls)} rows, {sum(c[3] for c in calls):.2f} s in all; "
                f"first {k}: {mean(first):.1f} ms each (table ≤ {first[-1][1]} rows), "
                f"last {k}: {mean(last):.1f} ms each (table ≥ {last[0][1]} rows)")


def table_writes(months: list[int], tasks: int, flush_rows: int, tmp: Path) -> None:
    """The cells table's writes alone (no Ray, no model), at each count of ``months``: the rows of
    ``tasks × (months² + months)`` cells appended in batches of ``flush_rows`` (the cells driver's
    flush) with :meth:`VectorStore.append_table`, side by side with what an append did before part
    files — read the table, concatenate, rewrite it whole (``write_table``) — and one read at the end."""
    import pandas as pd

    from timevec.results import CELLS_TABLE, TABLES, cells_frame

    print(f"\n== table writes: cells rows appended in batches of {flush_rows} (Ray-free), {harness.load_note()}")
    for n in months:
        periods = [f"p{i:03d}" for i in range(n)]
        rows = [{"task": f"t{t}", "granularity": "month", "vector": f"t{t}/{v}", "train_period": v, "test_period": p,
                 "metric": "perplexity", "value": 1.0, "low": 0.9, "high": 1.1, "higher_is_better": False,
                 "n_examples": 4, "n_tokens": 100, "seconds": 0.01}
                for t in range(tasks) for v in [*periods, None] for p in periods]
        batches = [TABLES[CELLS_TABLE].arrow(cells_frame(rows[i : i + flush_rows])) for i in range(0, len(rows), flush_rows)]
        line = [f"{n} months: {len(rows)} cells, {len(batches)} batches"]
        for how in ("rewrite", "append"):
            store = VectorStore(str(tmp / f"tables-{how}-{n}"))
            began = time.perf_counter()
            for batch in batches:
                if how == "append":
                    store.append_table("cells", batch)
                elif store.has_table("cells"):
                    store.write_table("cells", pd.concat([store.read_table("cells"), batch.to_pandas()], ignore_index=True))
                else:
                    store.write_table("cells", batch)
            store.compact_tables()
            seconds = time.perf_counter() - began
            t = time.perf_counter()
            assert len(store.read_table("cells")) == len(rows)
            line.append(f"{how} {seconds:.2f} s ({seconds / len(rows) * 1e6:.0f} µs/cell; read {time.perf_counter() - t:.2f} s)")
        print(" | ".join(line))


def trial_processes(storage_path: str, experiment: str) -> dict[tuple[str, int], int]:
    """(node IP, pid) of the Tune trial processes that ran the runs, with how many each ran (from the
    trials' ``result.json`` files: a local storage path)."""
    import json

    counts: dict[tuple[str, int], int] = {}
    for path in Path(storage_path, experiment).glob("*/result.json"):
        last = None
        for line in path.read_text().splitlines():
            if line.strip():
                last = json.loads(line)
        if last is not None:
            key = (str(last.get("node_ip")), int(last.get("pid", 0)))
            counts[key] = counts.get(key, 0) + 1
    return counts


def start_cluster(nodes: int, temp_dir: str):  # noqa: ANN201 - ray.cluster_utils.Cluster
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                             "temp_dir": temp_dir})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
    return cluster


def main() -> None:
    parser = harness.parser(__doc__, harness.tmp_option())
    parser.add_argument("--months", type=int, default=58)
    parser.add_argument("--tasks", default="lm,classification,summarization")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--stages", default="finetune,evaluate,interpolate,analyze")
    parser.add_argument("--keep", action="store_true", help="keep the store and Ray's folder")
    parser.add_argument("--tables", default=None, help="only the table writes, at these month counts (e.g. 20,58,167)")
    args = parser.parse_args()
    harness.output_block()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's older progress output (read when a Tune run starts)
    if args.tables:
        tmp = Path(tempfile.mkdtemp(prefix="paper_tables_", dir=args.tmp))
        try:
            table_writes([int(m) for m in args.tables.split(",")], len(args.tasks.split(",")), 256, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)

    tmp = Path(tempfile.mkdtemp(prefix="paper_scale_", dir=args.tmp))
    os.environ["RAY_TMPDIR"] = str(tmp)  # the cluster's address file in tmp/ray too, never /tmp/ray's (other clusters)
    (tmp / "ray").mkdir()
    tasks = args.tasks.split(",")
    stages = args.stages.split(",")
    config = paper_config(args.months, tasks, args.steps, args.texts, str(tmp / "store"), args.nodes)
    store = VectorStore.from_config(config.store)
    log.info("store and Ray's folder under %s", tmp)
    appends = AppendLog()
    sampler = Sampler()
    mb = lambda b: b / 2**20  # noqa: E731
    slots = args.nodes

    def say(line: str) -> None:
        print(line, flush=True)

    say(f"\n== paper scale: {args.months} months × {len(tasks)} tasks ({','.join(tasks)}) on {args.nodes} Ray nodes "
        f"(1 CPU each), {args.steps} steps × {args.texts} texts per run; {os.cpu_count()} cores, "
        f"{harness.load_note()} at the start")
    began = time.perf_counter()
    cluster = None
    try:
        sampler.enter("cluster")
        t = time.perf_counter()
        cluster = start_cluster(args.nodes, str(tmp / "ray"))
        alive = [n for n in ray.nodes() if n["Alive"]]
        say(f"start-up: cluster (head + {args.nodes - 1} workers, {len(alive)} nodes alive) {time.perf_counter() - t:.1f} s")

        if "finetune" in stages:
            from timevec.distributed.fleet import run_fleet

            sampler.enter("fleet")
            t = time.perf_counter()
            runs = run_fleet(config, store, progress=False)
            wall = time.perf_counter() - t
            sampler.enter("after fleet")
            makespan = runs.attrs["makespan_s"]
            done = runs[runs["status"] == "done"]
            n = max(len(done), 1)
            train, run_wall, run_cpu = (float(done[c].sum()) for c in ("seconds", "wall_seconds", "cpu_seconds"))
            say(f"fine-tunes: {len(runs)} runs ({len(done)} trained) in {wall:.1f} s | before Tune (corpus, base, lease) "
                f"{wall - makespan:.1f} s | Tune makespan {makespan:.1f} s = {makespan / n:.2f} s/run | Σ train loop "
                f"{train:.1f} s wall, {run_cpu:.1f} s CPU | Σ in-trial run {run_wall:.1f} s wall")
            where = trial_processes(runs.attrs["storage_path"], runs.attrs["experiment"])
            say(f"  runs per trial process: {sorted(where.values(), reverse=True)}")  # on loopback every node has one IP
            used = len(where) or slots  # the trial processes that ran runs: Tune's slots that did work
            say(f"  per-run overhead beyond compute: wall {(makespan * used - train) / n:.2f} s "
                f"[(makespan × {used} trial processes − Σ train) / runs]; in the trial {(run_wall - train) / n:.2f} s; "
                f"CPU {(sampler.cpu['fleet'] - run_cpu) / n:.2f} s [(CPU of every process − Σ train CPU) / runs]")
            k = sampler.cpu_by_kind["fleet"]
            say(f"  CPU during the fleet: driver {k['driver']:.1f} s, Ray workers (trials) {k['workers']:.1f} s, Ray daemons "
                f"{k['daemons']:.1f} s ({k['daemons'] / makespan:.2f} CPU-s per s); per run, driver + trial CPU beyond the "
                f"train loop's: {(k['driver'] + k['workers'] - run_cpu) / n:.3f} s")
            say(f"  Tune driver (this process) RSS: {mb(sampler.peaks['cluster']):.0f} MiB before, peak "
                f"{mb(sampler.peaks['fleet']):.0f} MiB during the fleet; {len(runs)} results returned")
        if "evaluate" in stages:
            from timevec.distributed.cells import run_cells

            sampler.enter("cells")
            t = time.perf_counter()
            cells, stats = run_cells(config, store)
            wall = time.perf_counter() - t
            sampler.enter("after cells")
            n = max(stats.cells_computed, 1)
            forward_cpu = sum(float(a.get("forward_cpu_seconds", 0.0)) for a in stats.actor_stats)
            say(f"cells: {stats.cells_computed} computed ({len(cells)} rows), {stats.items} items, {stats.actors} actors, "
                f"{stats.flushes} flushes in {wall:.1f} s | actor start-up {stats.startup_seconds:.1f} s (splits prepared "
                f"meanwhile in {stats.prepare_seconds:.1f} s) | Σ forward {stats.forward_seconds:.1f} s wall, {forward_cpu:.1f} s CPU")
            over = ((wall - stats.startup_seconds) * stats.actors - stats.forward_seconds) / n * 1000
            in_actors = (stats.actor_seconds - stats.forward_seconds) / n * 1000
            say(f"  per-cell overhead beyond compute: wall {over:.1f} ms "
                f"[((wall − start-up) × actors − Σ forward) / cells]; in the actors {in_actors:.1f} ms; "
                f"CPU {(sampler.cpu['cells'] - forward_cpu) / n * 1000:.1f} ms [(CPU of every process − Σ forward CPU) / cells]")
            k = sampler.cpu_by_kind["cells"]
            say(f"  CPU during the cells: driver {k['driver']:.1f} s, Ray workers (actors) {k['workers']:.1f} s, Ray daemons "
                f"{k['daemons']:.1f} s; per cell, driver + actor CPU beyond the forward passes': "
                f"{(k['driver'] + k['workers'] - forward_cpu) / n * 1000:.1f} ms (actor start-up included)")
            say(f"  driver RSS peak {mb(sampler.peaks['cells']):.0f} MiB; {appends.summary('cells')}")
        if "interpolate" in stages:
            from timevec.distributed.interpolate import run_interpolation

            sampler.enter("interpolate")
            t = time.perf_counter()
            run_interpolation(config, store)
            say(f"interpolation: {time.perf_counter() - t:.1f} s")
            for name in sorted({c[0] for c in appends.calls} - {"cells"}):
                say(f"  {appends.summary(name)}")
        if "analyze" in stages:
            from timevec.distributed.pipeline import STAGE_FUNCTIONS

            sampler.enter("gram")
            keys = sorted(k for task in tasks for k in store.list_vectors(task))
            rss0 = psutil.Process().memory_info().rss
            t = time.perf_counter()
            gram = store.gram(keys)
            say(f"gram: {gram.shape[0]} vectors streamed in {time.perf_counter() - t:.2f} s, driver RSS "
                f"+{mb(sampler.peaks['gram'] - rss0):.1f} MiB")
            sampler.enter("analyze")
            t = time.perf_counter()
            STAGE_FUNCTIONS["analyze"](config, store)
            say(f"analysis: {time.perf_counter() - t:.1f} s")
    finally:
        sampler.stop()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"total {time.perf_counter() - began:.1f} s; {harness.load_note()} at the end; "
        f"driver ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    say("driver peak RSS per phase (MiB): " + ", ".join(f"{k} {mb(v):.0f}" for k, v in sampler.peaks.items()))
    say("CPU s of every process per phase: " + ", ".join(f"{k} {v:.1f}" for k, v in sampler.cpu.items()))


if __name__ == "__main__":
    main()
