"""The fine-tune fleet: one Ray Tune trial per (task, period) run, each writing its τ to the store.

``run_fleet`` turns a config into vectors. It loads the corpus once, makes sure the store holds
θ_pre (``prepare_base``), skips every run whose vector is already complete in the store, and runs
the rest as ONE Tune experiment (a fleet of more than ``ray.runs_per_experiment`` runs: consecutive
experiments of that many, which bounds the Tune driver's memory) — Ray's documented pattern for many
trainings under Train V2:

- ``ray.workers_per_run == 0`` (default; one device per run): the trial trains in the trial
  process itself, with ``tune.with_resources({"cpu": cpus_per_run, "gpu": gpus_per_run})``
  (fractional GPUs allowed). This avoids Train's per-run start-up (a worker group, a controller,
  a process group: ≈ 20 s on the 2-core machine, ARCHITECTURE §5), which dominates small runs.
- ``ray.workers_per_run >= 1`` (multi-device runs, e.g. t5-3b): the trial builds and fits a
  ``TorchTrainer`` (``ScalingConfig(num_workers, use_gpu)``, a ``RunConfig`` named after the run,
  ``TuneReportCallback`` forwarding worker metrics to Tune).

Scheduling, retries (``FailureConfig(max_failures)``), checkpoint persistence and TensorBoard
logging are Ray's; nothing here schedules by hand.

Resuming, and why it is not ``Tuner.restore``
----------------------------------------------
Every submission is a FRESH Tune experiment over the runs that are still missing from the store,
under a stable experiment name (``<config.name>-finetune``) and stable per-run directory names.
The store is the source of truth for what is done; an interrupted run resumes from its newest
checkpoint:

- inside one submission (a killed trial process, a lost node), Tune retries the trial and
  ``tune.get_checkpoint()`` hands back its latest checkpoint;
- across submissions (the driver was killed, the job re-submitted), the trial finds the newest
  checkpoint that an earlier trial of the SAME run wrote under ``<storage>/<experiment>/`` (trial
  directories are named ``<task>_<period>_<trial id>``). A checkpoint is only used when its
  fingerprint (training settings, base fingerprint, the run's examples) matches, so a changed
  config never resumes from a stale state. With a ``TorchTrainer`` the Train run name is the run
  key, so Train V2 restores the run from its own checkpoint snapshot in storage.

``Tuner.restore`` was rejected for three reasons: it unpickles ``tuner.pkl`` and the experiment
state from the storage path (Ray's docs warn that this executes code from storage — this project
never unpickles what it reads back: checkpoints are loaded with ``torch.load(weights_only=True)``);
it restores the ORIGINAL run set, resources, concurrency and callbacks, so a re-submission could
not pick up new periods or a new cluster size; and an experiment whose trials all "finished" but
whose vectors are missing would still need a fresh experiment.

Checkpoints are a directory with ``train_state.pt`` (model — with LoRA only the adapters: the
frozen weights are the run's start, rebuilt on resume —, optimizer, scheduler and step, saved
with ``torch.save``) and ``meta.json``. Metrics are reported every step (at most one per
``ray.report_interval_s``, the newest), from a thread beside the
loop (``Reporter``: Ray's report blocks); a checkpoint only when the training loop hands a state
(every ``checkpoint_every`` steps and at the end). Once a run's vector is stored its checkpoints
are deleted (``keep_checkpoints=True`` keeps them).

Continual chains (``training.mode: continual``, :mod:`timevec.train.continual`)
-------------------------------------------------------------------------
Run t starts from θ_pre + τ_{t−1} read from the store, so a chain is sequential while different
(task, granularity) chains are independent. The driver submits WAVES: each is one ordinary Tune
experiment (the same trials, retries and checkpoints as above) over the next run of every chain
whose predecessor's vector is stored; the chains advance in parallel, one period per wave. A run
that fails after its retries stops its chain (its successors are reported ``failed``, naming it).
A killed chain resumes where it stopped with no state of its own: the store says which vectors
exist, the next wave starts from the last stored one, and an interrupted run resumes from its
checkpoint as any run does (its fingerprint includes its predecessor's shards, so a checkpoint
of a run started from another τ_{t−1} is never used). Cost: a Tune start per wave (a few
seconds), and a wave waits for its slowest chain.

Watching a fleet: ``FleetProgress`` logs a one-line summary (done / running / pending / failed /
retried, ETA); ``LossCurves`` (Tune's TensorBoard logger, trimmed) writes each run's loss and lr
per step under ``<storage>/<experiment>/<task>_<period>_<trial id>/``:
``tensorboard --logdir <storage>/<experiment>``.

Tests kill the real trial process (its PID is in every Tune result) from a Tune callback: there
is no fault-injection code path here.

This module is the driver only. The fleet's other parts, one job each: the run plan
(:mod:`timevec.train.plan`) and one run without Ray (:mod:`timevec.train.run`) in the core; the trial
functions (:mod:`.fleet_trials`), checkpoints over pyarrow.fs (:mod:`.checkpoints`), the reporter
thread (:mod:`.reporter`) and the progress/TensorBoard callbacks (:mod:`.fleet_callbacks`) here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
import ray
from ray import tune

from timevec.config import ExperimentConfig
from timevec.data.corpus import load_corpus
from timevec.distributed.checkpoints import drop_checkpoints
from timevec.distributed.fleet_callbacks import FleetProgress, ForgetFinishedStats, LossCurves
from timevec.distributed.fleet_trials import (
    DRIVER_MEMORY,
    FleetContext,
    in_trial_run,
    trainer_run,
    trial_dirname,
    trial_name,
)
from timevec.distributed.runtime import base_bytes, check_fits, check_gpus, ensure_ray, run_memory
from timevec.distributed.storage import ray_storage
from timevec.distributed.tracking import tracker_callbacks
from timevec.errors import StageFailed
from timevec.periods import Period
from timevec.store import VectorStore
from timevec.train import continual
from timevec.train.devices import NO_CUDA, NoCudaDevice
from timevec.train.loop import prepare_base
from timevec.train.plan import RunSpec, experiment_name, plan_runs
from timevec.train.run import run_one

log = logging.getLogger(__name__)

# The fleet's API: run_fleet, the plan it takes and the callbacks it installs (re-exported here).
__all__ = ["RESULT_COLUMNS", "FleetProgress", "LossCurves", "RunSpec", "experiment_name", "plan_runs", "run_fleet", "run_one"]

RESULT_COLUMNS = [
    "task",
    "period",
    "granularity",
    "status",
    "steps",
    "final_loss",
    "seconds",
    "tokens_per_second",
    "attempts",
    "resumed_from_step",
    "tokens",
    "wall_seconds",
    "cpu_seconds",
    "error",
]


def _row(run: RunSpec, status: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {column: None for column in RESULT_COLUMNS}
    row.update(task=run.task, period=run.period, granularity=run.granularity, status=status)
    row.update(values)
    return row


#: The store lease the fine-tune stage holds while it writes (timevec.store.lease; ARCHITECTURE §3).
FINETUNE_LEASE = "finetune"


class _Submission:
    """One Tune experiment over some runs (all of an independent fleet, or one wave of continual chains)."""

    def __init__(self, trainable: Any, ctx: FleetContext, store: VectorStore, rows: dict[str, dict], attrs: dict[str, Any],
                 progress: bool, callbacks: Sequence[tune.Callback]) -> None:
        self.trainable, self.ctx, self.store, self.rows, self.attrs = trainable, ctx, store, rows, attrs
        self.progress, self.callbacks = progress, callbacks

    def __call__(self, todo: list[RunSpec], skipped: int) -> None:
        """Train ``todo`` in Tune experiments of at most ``ray.runs_per_experiment`` runs, one after the other.

        Why in parts: Tune's driver keeps every trial of an experiment to its end (≈ 45 kB each, measured by
        bench/fleet.py --warm), so one experiment of a thousand runs grows the driver by tens of MiB; parts
        bound it by the part's size. A part starts its trial processes anew, so each pays one cold run
        (θ_pre read) — 1 in ``runs_per_experiment`` runs per process. Each run's row lands in ``rows``.
        """
        size = self.ctx.config.ray.runs_per_experiment or len(todo) or 1
        parts = -(-len(todo) // size)  # as few as the bound allows, of sizes that differ by one at most (202 at 200: 101 + 101)
        tracker = FleetProgress(total=len(todo), skipped=skipped, verbose=self.progress)
        for part in range(parts):
            self._experiment(todo[part * len(todo) // parts : (part + 1) * len(todo) // parts], tracker)

    def _experiment(self, todo: list[RunSpec], tracker: FleetProgress) -> None:
        """One Tune experiment over ``todo``; the fleet's progress callback carries over from part to part."""
        rc, store, rows = self.ctx.config.ray, self.store, self.rows
        loggers: list[tune.Callback] = []
        try:
            loggers.append(LossCurves())
        except ImportError:
            log.warning("fleet: tensorboardX is missing (pip install 'ray[tune]'): no TensorBoard logs")
        loggers += tracker_callbacks(self.ctx.config, self.ctx.experiment)  # ray.loggers: [mlflow]
        tuner = tune.Tuner(
            self.trainable,
            param_space={"run": tune.grid_search([r.as_dict() for r in todo])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=rc.max_concurrent_runs,
                # a trial process is reused by the next run (≈1.5 s less per run, ARCHITECTURE §5), and keeps
                # θ_pre, its tokenizer and the example sets for it (timevec/train/cache.py)
                reuse_actors=True,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=self.ctx.experiment,
                **self.ctx.storage.run_config(),
                failure_config=tune.FailureConfig(max_failures=rc.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[tracker, *loggers, *self.callbacks, ForgetFinishedStats()],  # last: after every reader
                verbose=0,
            ),
        )
        log.info("fleet: experiment %s under %s (%d concurrent)", self.ctx.experiment, self.ctx.storage,
                 rc.max_concurrent_runs)
        began = time.perf_counter()
        grid = tuner.fit()
        self.attrs["makespan_s"] += time.perf_counter() - began
        for result in grid:  # type: ignore[attr-defined]  # ResultGrid is iterable (__getitem__/__len__)
            run = RunSpec(**result.config["run"])
            metrics = result.metrics or {}
            attempts = tracker.attempts.get(run.key, 1)
            if result.error is not None or metrics.get("run_status") not in ("done", "skipped"):
                error = str(result.error).strip().splitlines()[-1] if result.error is not None else "no final report"
                if isinstance(getattr(result.error, "cause", result.error), NoCudaDevice) or NO_CUDA in error:
                    raise NoCudaDevice(error.split(": ", 1)[-1] if NO_CUDA in error else str(result.error))
                rows[run.key] = _row(run, "failed", attempts=attempts, error=error, steps=metrics.get("step"))
                continue
            if not store.has_vector(run.task, run.period):
                rows[run.key] = _row(run, "failed", attempts=attempts, error="the trial ended but its vector is not in the store")
                continue
            if metrics["run_status"] == "skipped":
                rows[run.key] = _row(run, "skipped", attempts=attempts)
                continue
            rows[run.key] = _row(
                run,
                "done",
                steps=metrics["steps"],
                final_loss=metrics["final_loss"],
                seconds=metrics["train_seconds"],
                tokens_per_second=metrics["tokens_per_second"],
                attempts=attempts,
                resumed_from_step=metrics["start_step"],
                tokens=metrics["tokens"],
                wall_seconds=metrics["wall_seconds"],
                cpu_seconds=metrics["cpu_seconds"],
            )
        for run in todo:
            if run.key not in rows:
                rows[run.key] = _row(run, "failed", attempts=0, error="the trial never reported")


def run_fleet(
    config: ExperimentConfig,
    store: VectorStore | None = None,
    runs: Iterable[RunSpec] | None = None,
    progress: bool = True,
    callbacks: Sequence[tune.Callback] = (),
    keep_checkpoints: bool = False,
) -> pd.DataFrame:
    """:func:`_run_fleet` under the store's ``finetune`` lease: one writing driver per store.

    A second driver on the same store gets :class:`~timevec.store.lease.LeaseHeld` (exit status
    2) naming the first, before it writes anything; a study whose vectors are all stored needs no
    lease. A driver whose lease was taken over while it ran (it stalled past ``store.lease_seconds``)
    fails with :class:`~timevec.errors.StageFailed` instead of reporting success, and its trials'
    writes are fenced (:meth:`VectorStore.fenced`): a late one is refused, not written.
    """
    store = store if store is not None else VectorStore.from_config(config.store)
    runs = list(runs) if runs is not None else plan_runs(config)
    if store.exists() and all(store.has_vector(r.task, r.period) for r in runs):
        return _run_fleet(config, store, runs, progress, callbacks, keep_checkpoints)
    lease = store.lease(FINETUNE_LEASE, config.store.lease_seconds, "the finetune stage")
    with lease:
        out = _run_fleet(config, store.fenced(lease), runs, progress, callbacks, keep_checkpoints)
    if lease.lost:
        raise StageFailed(f"{lease.lost}: check the store with `timevec store verify` and re-run")
    return out


def _run_fleet(
    config: ExperimentConfig,
    store: VectorStore,
    runs: list[RunSpec],
    progress: bool,
    callbacks: Sequence[tune.Callback],
    keep_checkpoints: bool,
) -> pd.DataFrame:
    """Fine-tune every run of the study that the store lacks; one row per run (``RESULT_COLUMNS``).

    ``status`` is ``done`` (trained now), ``skipped`` (its vector was already complete) or
    ``failed`` (``error`` says why, after ``ray.max_failures`` retries). ``attempts`` counts this
    submission's tries (0 when skipped); ``resumed_from_step`` > 0 when a run continued from a
    checkpoint. ``callbacks`` are extra Tune callbacks (monitoring; tests use one to kill a trial).
    Once a run's vector is stored its checkpoints are deleted, unless ``keep_checkpoints``.
    The frame's ``attrs`` hold ``experiment``, ``storage_path`` and ``makespan_s`` (the Tune run).
    """
    if len({r.key for r in runs}) != len(runs):
        raise ValueError("run_fleet: the run list has duplicates")
    experiment = experiment_name(config)
    attrs: dict[str, Any] = {"experiment": experiment, "storage_path": None, "makespan_s": 0.0}

    def frame(rows: list[dict]) -> pd.DataFrame:
        out = pd.DataFrame(rows, columns=RESULT_COLUMNS)
        out.attrs.update(attrs)
        return out

    if store.exists() and all(store.has_vector(r.task, r.period) for r in runs):
        log.info("fleet: all %d runs already have their vector in %s; nothing to train", len(runs), store)
        return frame([_row(r, "skipped", attempts=0) for r in runs])

    # A run that could never be placed, or whose GPU torch cannot see, fails now: before the base is built
    ensure_ray(config.ray)
    workers = max(config.ray.workers_per_run, 1)
    check_fits(
        config.ray,
        {"CPU": config.ray.cpus_per_run / workers, "GPU": config.ray.gpus_per_run / workers},
        "a fine-tune run (ray.cpus_per_run, ray.gpus_per_run, over ray.workers_per_run)",
    )
    check_gpus(config.ray, config.ray.gpus_per_run / workers, "ray.gpus_per_run")
    corpus = load_corpus(config.corpus)
    corpus.check_periods(sorted({r.period for r in runs}, key=Period.parse), config.corpus.min_rows_per_period)
    prepare_base(config, corpus, store)
    done_before = {r.key for r in runs if store.has_vector(r.task, r.period)}
    todo = [r for r in runs if r.key not in done_before]
    log.info("fleet: %d runs, %d already in the store, %d to train", len(runs), len(done_before), len(todo))
    rows = {r.key: _row(r, "skipped", attempts=0) for r in runs if r.key in done_before}
    if not todo:
        return frame([rows[r.key] for r in runs])

    memory = run_memory(config, base_bytes(store))
    check_fits(config.ray, {"CPU": config.ray.cpus_per_run / workers, "memory": memory},
               f"a fine-tune run's process ({memory / 2**20:.0f} MiB: ray.memory_per_run_mb or the estimate from θ_pre)")
    storage = ray_storage(config, store)
    attrs["storage_path"] = storage.url
    rc = config.ray
    ctx = FleetContext(
        config=config,
        store=store,
        corpus_ref=ray.put(corpus),
        storage=storage,
        memory=memory,
        experiment=experiment,
    )
    if rc.workers_per_run >= 1:
        # The trial only drives a TorchTrainer: the CPUs/GPUs are the Train workers'. Tune refuses
        # an empty request, and the driver process does hold memory, so that is what it reserves.
        trainable = tune.with_resources(tune.with_parameters(trainer_run, ctx=ctx), {"memory": DRIVER_MEMORY})
    else:
        trainable = tune.with_resources(
            tune.with_parameters(in_trial_run, ctx=ctx), {"cpu": rc.cpus_per_run, "gpu": rc.gpus_per_run, "memory": memory}
        )
    fit = _Submission(trainable, ctx, store, rows, attrs, progress, callbacks)
    if config.training.mode == "continual":
        # A chain is sequential (run t starts from τ_{t−1}), different chains run in parallel: each
        # wave is one Tune experiment over the next run of every chain whose predecessor is stored.
        stopped: set[str] = set()
        while True:
            wave, blocked = continual.next_wave(config, todo, lambda r: store.has_vector(r.task, r.period), stopped)
            for key, reason in blocked.items():
                run = next(r for r in todo if r.key == key)
                if key not in rows or rows[key]["status"] != "failed":
                    rows[key] = _row(run, "failed", attempts=0, error=reason)
            if not wave:
                break
            fit(wave, len(runs) - len(todo))
            stopped |= {r.key for r in wave if rows[r.key]["status"] == "failed"}
    else:
        fit(todo, len(done_before))

    missing = [r for r in runs if r.key not in rows]
    for run in missing:
        rows[run.key] = _row(run, "failed", attempts=0, error="the trial never reported")
    out = frame([rows[r.key] for r in runs])
    if not keep_checkpoints:
        finished = [r for r in runs if rows[r.key]["status"] != "failed"]
        removed = drop_checkpoints(storage, experiment, finished)
        log.debug("fleet: deleted %d checkpoints of finished runs", removed)
    counts = out["status"].value_counts().to_dict()
    log.info("fleet: finished in %.0f s: %s", attrs["makespan_s"], counts)
    return out
