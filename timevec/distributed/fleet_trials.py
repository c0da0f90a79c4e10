"""The fleet's Tune trial functions: one (task, period) run per trial, in the trial or on Ray Train.

One job: adapt a :class:`~timevec.train.run.RunJob` to Ray — ``in_trial_run`` trains in the
trial process (``workers_per_run == 0``), ``trainer_run`` builds and fits a ``TorchTrainer``
whose workers run ``train_worker`` (``workers_per_run >= 1``); both resume from the checkpoint
Ray hands back or one an earlier submission left (:mod:`timevec.distributed.checkpoints`), report
through a :class:`~timevec.distributed.reporter.Reporter`, and write τ to the store. The trial
names below are what the checkpoint search and the progress callback key runs by.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from typing import Any

import ray
import ray.train
import torch
from ray import tune

from timevec.config import ExperimentConfig
from timevec.data.corpus import Corpus
from timevec.distributed.checkpoints import earlier_checkpoint, resume_state
from timevec.distributed.reporter import Reporter
from timevec.distributed.runtime import worker_device
from timevec.distributed.storage import RayStorage
from timevec.store import VectorStore
from timevec.train.plan import RunSpec
from timevec.train.run import RunJob

log = logging.getLogger(__name__)

DRIVER_MEMORY = 256 * 1024**2  # bytes reserved for a trial that only drives a TorchTrainer
TRAIN_POLL_S = 0.1  # Train V2 controller poll interval for fleet runs (Ray's default: 2 s)


@dataclass
class FleetContext:
    """What every trial needs, shipped once through the object store (``tune.with_parameters``)."""

    config: ExperimentConfig
    store: VectorStore
    corpus_ref: Any  # ray.ObjectRef of the Corpus: put once, read by every trial/worker
    storage: RayStorage
    experiment: str
    memory: int = 0  # bytes each run's process (each Train worker) declares to Ray


#: the corpus a reused trial process last read, by its object's id: a Ray object never changes, so
#: the next run of the process skips deserialising it again (seconds for a large corpus)
_CORPUS: dict[bytes, Corpus] = {}


def _corpus(ctx: FleetContext) -> Corpus:
    key = ctx.corpus_ref.binary()
    if key not in _CORPUS:
        _CORPUS.clear()
        _CORPUS[key] = ray.get(ctx.corpus_ref)
    return _CORPUS[key]


def _skipped(run: RunSpec) -> dict[str, Any]:
    log.info("run %s: vector already in the store, skipped", run.key)
    return {"run_status": "skipped", "step": 0, "steps": 0}


def in_trial_run(params: dict, ctx: FleetContext) -> None:
    """A Tune function trial that trains one run in its own process (``workers_per_run == 0``)."""
    run = RunSpec(**params["run"])
    torch.set_num_threads(ctx.config.ray.torch_threads)
    store = ctx.store
    if store.has_vector(run.task, run.period):
        tune.report(_skipped(run))
        return
    job = RunJob(ctx.config, store, _corpus(ctx), run)
    resume, meta = resume_state(tune.get_checkpoint(), job)
    if resume is None:
        found = earlier_checkpoint(ctx.storage, ctx.experiment, run, job.fingerprint)
        if found is not None:
            resume, meta = found
            log.info("run %s: resuming from an earlier submission's checkpoint at step %d", run.key, meta["step"])
    start = int(resume["step"]) if resume is not None else 0
    reporter = Reporter(tune.report, tune.Checkpoint, job, start, meta, min_interval_s=ctx.config.ray.report_interval_s)
    try:
        model, result = job.fit(reporter, resume, worker_device(ctx.config.ray, ctx.config.ray.gpus_per_run, "ray.gpus_per_run"))
    finally:
        reporter.close()
    tokens = job.tokens_before(start) + result.tokens
    trial_id = tune.get_context().get_trial_id()
    extra = {"ray": {"experiment": ctx.experiment, "trial_id": trial_id, **placement()}}
    final = job.finish(model, result, start, meta, tokens, extra=extra)
    tune.report(final)


def placement() -> dict[str, Any]:
    """Where this process ran, for the run's manifest: Ray's node id and the GPU ids Ray gave it."""
    runtime = ray.get_runtime_context()
    return {"node_id": runtime.get_node_id(), "gpu_ids": [str(g) for g in runtime.get_accelerator_ids().get("GPU", [])]}


def train_worker(loop_config: dict) -> None:
    """One Ray Train worker of a multi-worker run (``workers_per_run >= 1``)."""
    import ray.train
    import ray.train.torch

    ctx: FleetContext = loop_config["ctx"]
    run = RunSpec(**loop_config["run"])
    torch.set_num_threads(ctx.config.ray.torch_threads)
    train_ctx = ray.train.get_context()
    rank, world = train_ctx.get_world_rank(), train_ctx.get_world_size()
    job = RunJob(ctx.config, ctx.store, _corpus(ctx), run, shard=(rank, world))
    resume, meta = resume_state(ray.train.get_checkpoint(), job)
    start = int(resume["step"]) if resume is not None else 0
    reporter = Reporter(ray.train.report, ray.train.Checkpoint, job, start, meta, with_checkpoint=rank == 0)
    try:
        rc = ctx.config.ray
        gpu = rc.gpus_per_run > 0 and torch.cuda.is_available()
        device = ray.train.torch.get_device() if gpu else worker_device(rc, rc.gpus_per_run / world, "ray.gpus_per_run")
        # Ray Train's data-parallel path: DistributedDataParallel around the model (one worker: as is)
        prepare = partial(ray.train.torch.prepare_model, move_to_device=False)
        model, result = job.fit(reporter, resume, device, parallel=prepare)
    finally:
        reporter.close()
    tokens = job.tokens_before(start) + result.tokens
    if world > 1:
        import torch.distributed as dist

        total = torch.tensor([tokens], dtype=torch.long)
        dist.all_reduce(total)
        tokens = int(total.item())
    extra = {"ray": {"experiment": ctx.experiment, "train_run": train_ctx.get_experiment_name(), **placement()}}
    final = job.finish(model, result, start, meta, tokens, extra=extra, write=rank == 0)
    ray.train.report(final)


def trainer_run(params: dict, ctx: FleetContext) -> None:
    """A Tune trial that builds and fits a ``TorchTrainer`` for one run (Ray's Train V2 + Tune pattern).

    The Train run is named after the run, not the trial id as Ray's example does: the name must be
    stable across SUBMISSIONS too, so that Train V2 restores an interrupted run from its checkpoints
    (``RunConfig(storage_path, name)`` identifies the run).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    run = RunSpec(**params["run"])
    if ctx.store.has_vector(run.task, run.period):
        tune.report(_skipped(run))
        return
    # Train V2 hands a worker's reports to Tune one per controller poll (2 s by default): poll
    # faster so that per-step metrics keep up with real steps. A value the user set wins; Train
    # propagates it from this process to its controller and workers.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(TRAIN_POLL_S))
    rc = ctx.config.ray
    workers = rc.workers_per_run
    per_worker = {"CPU": rc.cpus_per_run / workers, "memory": ctx.memory}  # each worker holds a whole replica
    if rc.gpus_per_run > 0:
        per_worker["GPU"] = rc.gpus_per_run / workers
    # NCCL needs CUDA: GPU workers allowed onto the CPU (ray.allow_cpu_fallback) talk over gloo
    backend = "gloo" if rc.gpus_per_run == 0 or (rc.allow_cpu_fallback and not torch.cuda.is_available()) else "nccl"
    trainer = TorchTrainer(
        train_worker,
        torch_config=TorchConfig(backend=backend),
        train_loop_config={"run": params["run"], "ctx": ctx},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=rc.gpus_per_run > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"{ctx.experiment}-{run.key}",
            **ctx.storage.run_config(),
            failure_config=ray.train.FailureConfig(max_failures=rc.max_failures),
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # a transformers callback (Ray's stubs name Tune's)
        ),
    )
    trainer.fit()


def trial_name(trial: Any) -> str:
    run = trial.config["run"]
    return f"{run['task']}_{run['period']}"


def trial_dirname(trial: Any) -> str:
    return f"{trial_name(trial)}_{trial.trial_id}"

