"""One fine-tune run without Ray: build it from the store and the corpus, train, write τ.

One job: everything a single (task, period) run does, the same whether it trains in a Tune trial,
in each worker of a Ray Train run (``shard=(rank, world)``), or in a plain process (``run_one``,
the benchmark baseline). The Ray side (:mod:`timevec.distributed.fleet_trials`) only wires Ray's
reporting and checkpoints into it, which is why it lives in the core: no Ray import here.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from timevec.config import ExperimentConfig, TrainingConfig
from timevec.data.corpus import Corpus
from timevec.data.models import (
    IGNORE,
    Example,
    float_parameters,
    is_encoder_decoder,
)
from timevec.store import VectorStore
from timevec.train import continual
from timevec.train.cache import PROCESS_CACHE, RunCache, examples_digest
from timevec.train.loop import (
    TrainResult,
    batch_indices,
    merge_lora,
    total_steps,
    train,
)
from timevec.train.plan import RunSpec
from timevec.weights.lowrank import LowRankVector, from_lora_run
from timevec.weights.vectors import TimeVector, WeightPatcher

__all__ = ["RunJob", "examples_digest", "run_one", "tokens_before"]


def label_tokens(example: Example, encoder_decoder: bool) -> int:
    """Tokens the loss is taken on (what ``token_losses`` counts): decoder-only shifts by one."""
    labels = example.labels if encoder_decoder else example.labels[1:]
    return sum(1 for t in labels if t != IGNORE)


def tokens_before(examples: Sequence[Example], cfg: TrainingConfig, steps: int, encoder_decoder: bool,
                  shard: tuple[int, int] = (0, 1)) -> int:
    """Loss tokens of the first ``steps`` optimizer steps: the batches are a pure function of the step.

    Lets a resumed run report the tokens of the WHOLE run, not just of its last attempt.
    """
    if steps <= 0:
        return 0
    counts = torch.tensor([label_tokens(e, encoder_decoder) for e in examples], dtype=torch.long)
    total = 0
    for micro in range(steps * cfg.grad_accum):
        total += int(counts[batch_indices(len(examples), cfg.batch_size, micro, cfg.seed, shard)].sum())
    return total


class RunJob:
    """Everything one run needs, built from the store and the corpus (shared by trials and workers).

    ``shard=(rank, world)`` gives a data-parallel worker its share of every global batch (the
    config's ``batch_size`` stays the EFFECTIVE batch of the run; the workers together see the
    very batches one worker would).

    θ_pre, its tokenizer and the example sets come from ``cache`` (the process's
    :data:`~timevec.train.cache.PROCESS_CACHE` by default): a process's later runs read and build
    none of them again, and start from θ_pre bit for bit all the same. ``self.base`` is the
    cache's θ_pre (read-only); :meth:`finish` gives the model back to the cache.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        store: VectorStore,
        corpus: Corpus,
        run: RunSpec,
        shard: tuple[int, int] = (0, 1),
        cache: RunCache | None = None,
    ) -> None:
        self.config, self.store, self.run = config, store, run
        self.cache = cache if cache is not None else PROCESS_CACHE
        self.began = time.perf_counter()
        loads = self.cache.stats.base_loads
        self.model, self.tokenizer, self.base = self.cache.base(config.base, store)
        self.base_loaded = self.cache.stats.base_loads > loads  # read θ_pre from the store (a process's first run)
        self.encoder_decoder = is_encoder_decoder(self.model)
        self.training = config.training.for_task(run.task, run.granularity)
        steps = continual.run_steps(config, run, self.training.steps)  # equal_steps: the chain's total so far
        if steps != self.training.steps:
            self.training = self.training.model_copy(update={"steps": steps})
        examples, digest = self._examples(corpus, run.period)
        if not examples:
            raise ValueError(f"run {run.key}: no training examples in period {run.period}")
        mixed = self._continue_chain(corpus, examples)
        if mixed is not examples:
            examples, digest = mixed, examples_digest(mixed)
        self.total_examples = len(examples)
        self.steps = total_steps(len(examples), self.training)  # the run's steps, as one device would count them
        rank, world = shard
        self.rank, self.world = rank, world
        # Fingerprint before sharding: every worker of a run agrees, and so does a later submission.
        self.fingerprint = hashlib.sha256(
            json.dumps(
                {
                    "run": run.as_dict(),
                    "training": self.training.model_dump(mode="json"),
                    "base": store.base_fingerprint,
                    "examples": digest,
                    "world": world,
                    "start": self.start,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        if world > 1 and self.training.batch_size % world:
            raise ValueError(
                f"training.batch_size {self.training.batch_size} is not divisible by ray.workers_per_run {world}"
            )
        self.examples = examples  # every worker holds all of them and takes its share of each batch
        self.cpu_seconds = 0.0

    def _examples(self, corpus: Corpus, period: str) -> tuple[list[Example], str]:
        """The run's task on ``period``'s train split, and their digest (through the cache)."""
        cfg = self.training
        return self.cache.examples(self.config.base, self.run.task, corpus, period, "train", self.tokenizer,
                                   self.encoder_decoder, cfg.max_length, cfg.seed)

    def _continue_chain(self, corpus: Corpus, examples: list[Example]) -> list[Example]:
        """Continual mode: start from θ_pre + τ_{t−1} read from the store, and mix in the replay.

        Sets ``start`` (what the manifest and the checkpoint fingerprint record about the start).
        Independent mode: nothing changes (``examples`` itself is returned).
        """
        run, store, cfg = self.run, self.store, self.training
        self.replayed = 0
        before = continual.predecessor(self.config, run)
        self.from_base = before is None  # the model holds θ_pre itself (a chain's run starts from θ_pre + τ_{t−1})
        if before is not None:
            if not store.has_vector(run.task, before):
                raise ValueError(f"run {run.key} (training.mode continual): its predecessor vector {run.task}/{before} "
                                 f"is not in the store {store}; a chain is trained in period order")
            stored = store.manifest(run.task, before).get("run", {}).get("continual", {})
            if stored.get("replay") != self.config.training.replay:
                raise ValueError(f"run {run.key}: the predecessor vector {run.task}/{before} in {store} is not a continual "
                                 f"vector with training.replay {self.config.training.replay} (its manifest: {stored or 'independent'})")
            WeightPatcher(self.model).apply(store.get_vector(run.task, before))  # θ_pre + τ_{t−1}, as evaluated
        if before is not None and self.config.training.replay > 0:
            periods = self.config.period_list(run.granularity)
            pool = [e for p in periods[: periods.index(run.period)] for e in self._examples(corpus, p)[0]]
            examples, self.replayed = continual.mix_replay(examples, pool, self.config.training.replay, cfg.seed)
        self.start = continual.start_manifest(self.config, run, store, self.replayed)
        return examples

    def fit(
        self,
        report: Callable[[dict, dict | None], None] | None,
        resume: dict | None,
        device: torch.device,
        parallel: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    ) -> tuple[torch.nn.Module, TrainResult]:
        """The library's training loop; with ``world > 1``, data parallel: ``parallel`` wraps the
        model (Ray Train's ``prepare_model``, DistributedDataParallel) for this worker's share of
        every global batch (:func:`~timevec.train.loop.train`)."""
        cpu = time.process_time()
        model, result = train(self.model, self.examples, self.training, self.tokenizer.pad_token_id, report=report,
                              resume=resume, device=device, shard=(self.rank, self.world), parallel=parallel)
        # CPU of the whole process while training (the loop, and the reporting threads beside it).
        self.cpu_seconds = time.process_time() - cpu
        return merge_lora(model), result

    def tokens_before(self, step: int) -> int:
        """Loss tokens of this worker's share of the first ``step`` steps."""
        return tokens_before(self.examples, self.training, step, self.encoder_decoder, (self.rank, self.world))

    def finish(
        self,
        model: torch.nn.Module,
        result: TrainResult,
        start_step: int,
        resume_meta: dict | None,
        tokens: int,
        extra: dict[str, Any] | None = None,
        write: bool = True,
    ) -> dict[str, Any]:
        """τ = θ_run − θ_pre into the store (with its manifest); returns the run's final metrics.

        The run is over then: its model goes back to the cache (the next run of the process gets
        it with θ_pre copied in), so neither ``model`` nor ``self.model`` may be used afterwards.
        """
        try:
            return self._finish(model, result, start_step, resume_meta, tokens, extra, write)
        finally:
            self.cache.give_back(self.model)

    def _finish(
        self,
        model: torch.nn.Module,
        result: TrainResult,
        start_step: int,
        resume_meta: dict | None,
        tokens: int,
        extra: dict[str, Any] | None,
        write: bool,
    ) -> dict[str, Any]:
        first_loss = (resume_meta or {}).get("first_loss", result.first_loss) if start_step else result.first_loss
        final_loss = result.final_loss
        if math.isnan(final_loss) and resume_meta:  # resumed at the very end: nothing left to train
            final_loss = float(resume_meta.get("loss", math.nan))
        metrics = {
            "run_status": "done",
            "step": self.steps,
            "steps": self.steps,
            "start_step": start_step,
            "first_loss": float(first_loss),
            "final_loss": float(final_loss),
            "tokens": int(tokens),
            "examples": self.total_examples,
            "train_seconds": result.seconds,
            "tokens_per_second": (result.tokens * self.world) / result.seconds if result.seconds > 0 else 0.0,
            "cpu_seconds": self.cpu_seconds,
            "base_loaded": self.base_loaded,
        }
        if write:
            params = {name: p.detach() for name, p in float_parameters(model).items()}
            changed = self._changed(model, params)
            vector: TimeVector | LowRankVector
            lora = self.training.lora
            kind = "lora_merged" if lora is not None else "full"
            factor_check: dict[str, Any] = {}
            if lora is not None and lora.store == "factors":
                factors = getattr(model, "timevec_lora_factors", None)
                if not factors:
                    raise RuntimeError(f"run {self.run.key}: training.lora.store is 'factors' but the model has no LoRA factors")
                names = params.keys() if changed is None else changed  # the rest is zero: not even materialised
                merged = TimeVector.between({n: params[n] for n in names}, {n: self.base[n] for n in names})
                vector, err = from_lora_run(factors, merged, {n: p.shape for n, p in params.items()})
                kind, factor_check = "lora_factors", {"factor_max_rel_error": err}
            else:
                vector = TimeVector.between(params, self.base, changed)
            manifest = {
                "task": self.run.task,
                "period": self.run.period,
                "granularity": self.run.granularity,
                "kind": kind,
                "seed": self.training.seed,
                "steps": self.steps,
                "tokens": int(tokens),
                "examples": self.total_examples,
                "metrics": {k: metrics[k] for k in ("first_loss", "final_loss", "train_seconds", "tokens_per_second")}
                | {"resumed_from_step": start_step},
                "training": self.config.training.for_task(self.run.task, self.run.granularity).model_dump(mode="json"),
                "config": self.config.model_dump(mode="json"),
                "workers": self.world,
                **self.start,
                **factor_check,
                **(extra or {}),
            }
            self.store.put_vector(self.run.task, self.run.period, vector, manifest=manifest)
        metrics["wall_seconds"] = time.perf_counter() - self.began
        return metrics

    def _changed(self, model: torch.nn.Module, params: dict[str, torch.Tensor]) -> set[str] | None:
        """The parameters this run can have changed, when construction says so; None: any of them.

        A LoRA run that started from θ_pre itself trains its adapters and what peft leaves trainable
        (modules_to_save, still ``requires_grad`` after the merge); the merge writes its adapters'
        target weights and nothing else, so every other weight is θ_pre bit for bit and its τ is
        zero (tests/test_lowrank checks the stored τ against the full difference). A full fine-tune or a
        continual chain's run (started from θ_pre + τ_{t−1}) is compared everywhere.
        """
        factors = getattr(model, "timevec_lora_factors", None)
        if self.training.lora is None or not self.from_base or factors is None:
            return None
        return set(factors) | {name for name, p in params.items() if p.requires_grad}


def run_one(
    config: ExperimentConfig,
    run: RunSpec,
    corpus: Corpus,
    store: VectorStore,
    device: torch.device | str = "cpu",
    write: bool = True,
) -> dict[str, Any]:
    """One run in this process, without Ray: the same job a fleet trial does (the benchmark baseline).

    Returns the run's final metrics; writes its vector unless ``write`` is False.
    """
    job = RunJob(config, store, corpus, run)
    model, result = job.fit(None, None, torch.device(device))
    return job.finish(model, result, 0, None, result.tokens, write=write)
