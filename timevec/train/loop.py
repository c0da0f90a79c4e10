"""Fine-tune one (task, period) from the base: the loop each Ray worker or trial runs.

The loop knows nothing of Ray: it takes a ``report`` hook (metrics + an optional checkpoint
state) and an optional ``resume`` state, which the distributed fleet wires to
``ray.tune.report``/``ray.train.report`` and their checkpoints. The data order is a function of
(seed, step) alone, so a run resumed at step s sees exactly the batches an uninterrupted run
would have seen from s on.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from timevec.config import ConfigError, ExperimentConfig, TrainingConfig
from timevec.data.corpus import Corpus
from timevec.data.models import (
    Example,
    base_id,
    build_model,
    collate,
    fingerprint,
    float_parameters,
    is_encoder_decoder,
    lm_examples,
    load_tokenizer,
    max_positions,
    skeleton,
    token_losses,
)
from timevec.train.devices import cpu_threads

log = logging.getLogger(__name__)

TrainState = dict  # {"model": state_dict (LoRA: its trainable tensors only), "optimizer": ..., "scheduler": ..., "step": int}
ReportHook = Callable[[dict, "TrainState | None"], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def total_steps(n_examples: int, cfg: TrainingConfig) -> int:
    """Optimizer steps of a run: ``cfg.steps`` when set, else ``epochs`` over the examples."""
    if cfg.steps is not None:
        return cfg.steps
    per_step = cfg.batch_size * cfg.grad_accum
    return max(1, math.ceil(cfg.epochs * n_examples / per_step))


def batch_indices(n_examples: int, batch_size: int, micro_step: int, seed: int, shard: tuple[int, int] = (0, 1)) -> list[int]:
    """Example indices of global micro-batch ``micro_step``: a fresh permutation every epoch.

    A pure function of its arguments, so resuming needs no saved data-loader state. ``shard=(rank,
    world)``: a data-parallel worker's share of that same global micro-batch (every ``world``-th
    index from ``rank``), so ``world`` workers together see exactly the batches one worker would.
    """
    rank, world = shard
    if world > 1:
        return batch_indices(n_examples, batch_size, micro_step, seed)[rank::world]
    start = micro_step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n_examples)
        perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(batch_size - len(out), n_examples - offset)
        out.extend(perm[offset : offset + take].tolist())
    return out


@dataclass
class TrainResult:
    steps: int
    examples: int
    tokens: int
    first_loss: float
    final_loss: float
    seconds: float
    tokens_per_second: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _lr_lambda(cfg: TrainingConfig, steps: int) -> Callable[[int], float]:
    warmup = int(cfg.warmup_ratio * steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return factor


def check_lora_targets(model: torch.nn.Module, cfg: TrainingConfig) -> None:
    """Refuse LoRA target modules that the architecture lacks, naming the ones it has.

    peft matches a target name against the last components of every module's dotted name.
    """
    if cfg.lora is None or not cfg.lora.target_modules:
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in cfg.lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(
            f"training.lora.target_modules: {missing} not in {type(model).__name__}; its linear layers are {linear}"
        )


def wrap_lora(model: PreTrainedModel, cfg: TrainingConfig) -> PreTrainedModel:
    """Wrap the model with LoRA adapters (peft) when the config asks for it."""
    if cfg.lora is None:
        return model
    from peft import LoraConfig, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULT_TARGETS
    from transformers.pytorch_utils import Conv1D

    check_lora_targets(model, cfg)
    targets = set(cfg.lora.target_modules or DEFAULT_TARGETS.get(model.config.model_type, []))
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        # GPT-2's Conv1D keeps its weight in×out: peft must be told (it would otherwise flip the flag, warning)
        fan_in_fan_out=any(isinstance(m, Conv1D) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets),
        task_type="SEQ_2_SEQ_LM" if is_encoder_decoder(model) else "CAUSAL_LM",
    )
    return get_peft_model(model, lora)  # type: ignore[return-value]  # a PeftModel wraps and acts as the PreTrainedModel


def merge_lora(model: PreTrainedModel) -> PreTrainedModel:
    """Fold LoRA adapters into the weights (the reference code takes τ after merging).

    The factors are read first and kept on the merged model as ``timevec_lora_factors``
    (:func:`timevec.weights.lowrank.lora_factors`: r·(out+in) floats per module), so a run configured with
    ``training.lora.store: factors`` can store τ low-rank (:mod:`timevec.train.run`).
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    from timevec.weights.lowrank import lora_factors

    factors = lora_factors(model)
    merged = model.merge_and_unload()  # type: ignore[operator]  # a PeftModel method, typed as a Tensor attribute
    merged.timevec_lora_factors = factors
    return merged


def model_state(model: torch.nn.Module, lora: bool) -> dict[str, torch.Tensor]:
    """The model's part of a checkpoint: its state dict; with LoRA only the tensors that train.

    A LoRA run's frozen weights are its start (θ_pre, or θ_pre + τ_{t−1} in a continual chain),
    which a resumed run rebuilds exactly — the checkpoint's fingerprint names that start — so
    writing them again would only copy θ_pre (540 MB for SmolLM2) into every checkpoint; the
    adapters are a few MB.
    """
    state = model.state_dict()
    if not lora:
        return state
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {name: t for name, t in state.items() if name in trainable}


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], lora: bool) -> None:
    """A checkpoint's model tensors into ``model``: all of them, or (LoRA) at least every trainable one."""
    if not lora:
        model.load_state_dict(state)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lacking = sorted(trainable.intersection(missing))
    if unexpected or lacking:
        raise ValueError(f"checkpoint does not fit the LoRA model: lacks {lacking[:3]}, unexpected {sorted(unexpected)[:3]}")


def train(
    model: PreTrainedModel,
    examples: Sequence[Example],
    cfg: TrainingConfig,
    pad_id: int,
    report: ReportHook | None = None,
    resume: TrainState | None = None,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    parallel: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> tuple[PreTrainedModel, TrainResult]:
    """Fine-tune ``model`` on ``examples``; returns the trained model (LoRA merged) and metrics.

    ``report(metrics, state)`` is called after every optimizer step with its metrics and, every
    ``cfg.checkpoint_every`` steps and at the end, with a resumable state (else None); ``resume``
    continues from such a state. The state holds references to the live tensors (no copy, which
    would double the memory of a 3B model): the hook must persist it before it returns.

    Data parallel (``shard=(rank, world)``, ``world > 1``, in an initialised torch.distributed
    group): every worker holds ALL ``examples`` and takes its share of each global micro-batch of
    ``cfg.batch_size``; ``parallel`` wraps the model for the forward and backward passes (Ray
    Train's ``prepare_model``: DistributedDataParallel, whose gradient buckets are all-reduced
    while the backward pass runs). Each worker's loss is scaled by the micro-batch's token count
    over all workers (one two-number all-reduce per micro-step), so that DDP's gradient mean is
    the gradient of the global batch's token-mean loss — what one worker computes — and the
    reported loss is that global loss. The state and the returned model are the unwrapped model's.
    """
    if not examples:
        raise ValueError("no training examples")
    seed_everything(cfg.seed)
    model = wrap_lora(model, cfg).to(device)  # type: ignore[arg-type]  # transformers types .to() as a decorator
    encoder_decoder = is_encoder_decoder(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = total_steps(len(examples), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps))
    start = 0
    if resume is not None:
        load_model_state(model, resume["model"], lora=cfg.lora is not None)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        start = int(resume["step"])
        log.info("resuming at step %d of %d", start, steps)
    world = shard[1]
    if world > 1 and parallel is None:
        raise ValueError("train: a data-parallel shard needs parallel= (e.g. ray.train.torch.prepare_model) to average gradients")
    forward = parallel(model) if parallel is not None and world > 1 else model  # after a resume: every rank agrees
    device_type = torch.device(device).type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()
    model.train()
    tokens = 0
    first_loss = math.nan
    loss_value = math.nan
    began = time.perf_counter()
    for step in range(start, steps):
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            idx = batch_indices(len(examples), cfg.batch_size, step * cfg.grad_accum + micro, cfg.seed, shard)
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id, encoder_decoder).items()}
            # DDP all-reduces gradients on the last micro-step's backward only (its documented no_sync)
            last = micro == cfg.grad_accum - 1
            sync = forward.no_sync() if forward is not model and not last else nullcontext()  # type: ignore[operator]  # DDP's method
            with sync:
                with autocast:
                    sums, counts = token_losses(forward, batch)  # type: ignore[arg-type]  # DDP wraps the model
                if world > 1:
                    import torch.distributed as dist

                    total = torch.stack([sums.detach().sum().float(), counts.sum().float()])
                    dist.all_reduce(total)  # the global micro-batch's loss sum and token count
                    loss = sums.sum() * world / total[1].clamp(min=1)  # DDP averages: Σ_r ∇sums_r / N
                    micro_loss = float(total[0] / total[1].clamp(min=1))
                else:
                    loss = sums.sum() / counts.sum().clamp(min=1)
                    micro_loss = loss.item()
                (loss / cfg.grad_accum).backward()
            step_loss += micro_loss / cfg.grad_accum
            tokens += int(counts.sum())
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        loss_value = step_loss
        if math.isnan(first_loss):
            first_loss = step_loss
        done = step + 1
        if report is not None:
            checkpoint = done % cfg.checkpoint_every == 0 or done == steps
            state = None
            if checkpoint:
                state = {
                    "model": model_state(model, lora=cfg.lora is not None),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": done,
                }
            report({"step": done, "steps": steps, "loss": step_loss, "lr": scheduler.get_last_lr()[0]}, state)
    seconds = time.perf_counter() - began
    result = TrainResult(
        steps=steps,
        examples=len(examples),
        tokens=tokens,
        first_loss=first_loss,
        final_loss=loss_value,
        seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
    )
    model = merge_lora(model)
    model.eval()
    return model, result


def pretrain_base(
    model: PreTrainedModel,
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    steps: int,
    batch_size: int,
    lr: float,
    max_length: int,
    seed: int = 0,
) -> tuple[PreTrainedModel, TrainResult]:
    """The embedded base's short "pretraining": the LM objective on pooled text of every period.

    A randomly initialised model has no language to drift from; after this it does, so the
    per-period fine-tunes start from a shared, meaningful θ_pre as in the paper.
    """
    from timevec.train.progress import Progress

    examples = lm_examples(texts, tokenizer, is_encoder_decoder(model), max_length, seed=seed)
    cfg = TrainingConfig(lr=lr, steps=steps, batch_size=batch_size, max_length=max_length, seed=seed,
                         warmup_ratio=0.05, schedule="linear")
    progress = Progress("base pretraining", steps, unit="steps")
    return train(model, examples, cfg, tokenizer.pad_token_id,
                 report=lambda metrics, _state: progress.advance(1, extra=f"loss {metrics['loss']:.3f}"))


def check_base_fits(config: ExperimentConfig) -> None:
    """Config errors that the base's architecture reveals, found before any run starts (exit 2):
    LoRA target modules it lacks, sequence lengths beyond its positions."""
    model = skeleton(config.base)
    for task in config.tasks:
        check_lora_targets(model, config.training.for_task(task))
    limit = None if is_encoder_decoder(model) else max_positions(model.config)
    if limit is not None:
        for key, value in (("training.max_length", config.training.max_length), ("evaluation.max_length", config.evaluation.max_length)):
            if value > limit:
                raise ConfigError(f"{key} = {value} exceeds the {limit} positions of base {base_id(config.base)!r}")


def _describe(shapes: dict[str, list[int]]) -> str:
    embedding = max((s for s in shapes.values() if len(s) == 2), key=lambda s: s[0], default=None)
    vocab = f"vocabulary {embedding[0]}, " if embedding else ""
    return f"{vocab}{len(shapes)} tensors, {sum(math.prod(s) for s in shapes.values()):,} parameters"


def check_store_base(config: ExperimentConfig, store) -> None:
    """Refuse a store whose θ_pre is not the config's base: its vectors mean nothing for this model.

    The architecture (parameter names and shapes, hence the vocabulary) must match, checked on a
    meta-device skeleton (no weights). Then the portable name: when it differs (say the folder
    was renamed) the config's weights are loaded and their fingerprint decides.
    """
    from timevec.store import StoreError

    wanted = base_id(config.base)
    info = store.info()
    have = info["base_id"]
    mine = {name: list(p.shape) for name, p in float_parameters(skeleton(config.base)).items()}
    if mine != info["shapes"]:
        raise StoreError(
            f"store {store.url} holds base {have!r} ({_describe(info['shapes'])}); the config's base {wanted!r} "
            f"has another architecture ({_describe(mine)}): use another store.url"
        )
    if have == wanted:
        return
    tokenizer = load_tokenizer(config.base)
    model = build_model(config.base, tokenizer)
    fp = fingerprint({k: v.detach().float().cpu() for k, v in float_parameters(model).items()})
    if fp != store.base_fingerprint:
        raise StoreError(
            f"store {store.url} holds base {have!r} (fingerprint {store.base_fingerprint[:12]}), the config asks for "
            f"{wanted!r} (fingerprint {fp[:12]}): use another store.url"
        )
    log.info("base %r has the fingerprint of the store's base %r: the same weights", wanted, have)


def prepare_base(config: ExperimentConfig, corpus: Corpus, store) -> str:
    """Make sure the store holds θ_pre; returns its fingerprint.

    The store is the cache: when it already holds this base (same id), nothing is trained or
    downloaded again. The embedded base is pretrained on the pooled TRAIN text of every configured
    period (test text never leaks into θ_pre).
    """
    check_base_fits(config)
    if store.exists():
        check_store_base(config, store)
        return store.base_fingerprint
    wanted = base_id(config.base)
    tokenizer = load_tokenizer(config.base)
    model = build_model(config.base, tokenizer)
    if config.base.source == "embedded" and config.base.pretrain.steps > 0:
        texts = [t for p in config.all_periods() for t in corpus.texts(p, "train")]
        texts = list(dict.fromkeys(texts))  # a year's texts are also its months' texts
        pre = config.base.pretrain
        log.info("pretraining the embedded base: %d steps on %d texts", pre.steps, len(texts))
        with cpu_threads(config.ray.torch_threads):  # the same θ_pre bit for bit wherever the driver runs
            model, result = pretrain_base(model, texts, tokenizer, pre.steps, pre.batch_size, pre.lr, pre.max_length,
                                          config.seed)
        log.info("base pretrained: loss %.3f -> %.3f in %.0f s", result.first_loss, result.final_loss, result.seconds)
    tensors = {k: v.detach().float().cpu() for k, v in float_parameters(model).items()}
    del model
    store.init(wanted, tensors, dtype=config.store.dtype, target_shard_bytes=config.store.target_shard_bytes)
    return store.base_fingerprint
