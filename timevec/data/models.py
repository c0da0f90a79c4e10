"""Base models, tokenizers, task formatting and weight fingerprints.

Two sources of a base: a Hugging Face hub id loaded with the Auto classes (cluster users:
``google-t5/t5-small``, ``t5-3b``; never run in the tests, which have no network), or the
embedded tiny model built from a config with the byte-level ``ByT5Tokenizer`` (no vocabulary file,
so it builds offline in milliseconds). Task formatting turns records into token-id examples for
both architectures: encoder-decoder (T5) and decoder-only (GPT-2 style).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    ByT5Tokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
)

from timevec.config import BaseConfig, ConfigError

log = logging.getLogger(__name__)

IGNORE = -100
LmObjective = Literal["next_block", "span_corruption"]


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_CONFIGS: dict[tuple, PretrainedConfig] = {}
_TOKENIZERS: dict[tuple, PreTrainedTokenizerBase] = {}


def _from_resolved(auto, where):
    """``auto.from_pretrained`` on a resolved base: a GGUF file's converted metadata, or the hub id / folder."""
    if where.gguf_file:
        return auto.from_pretrained(gguf_metadata_dir(where))
    return auto.from_pretrained(where.location, **where.kwargs())


def hub_config(base: BaseConfig) -> PretrainedConfig:
    """The hub/local/GGUF base's model config (cached per process: parsing a GGUF file takes seconds).

    A GGUF file's dequantised weights are plain floating-point tensors, so the config it yields is
    stripped of any ``quantization_config``: models built from it are ordinary, saveable models.
    """
    from timevec.data.presets import resolve

    where = resolve(base)
    if where.key not in _HUB_CONFIGS:
        config = _from_resolved(AutoConfig, where)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        _HUB_CONFIGS[where.key] = config
    return copy.deepcopy(_HUB_CONFIGS[where.key])


def gguf_metadata_dir(where) -> str:
    """A local folder with the GGUF file's model config and tokenizer as ordinary HF files.

    Parsing a GGUF file for them takes seconds (tens on a busy machine) in every process that
    builds the architecture or the tokenizer: each fleet trial and evaluation actor. They are
    converted once per machine into ``$TIMEVEC_CACHE`` (default ``~/.cache/timevec``), keyed by
    the file's path, size and mtime, and written to a temporary folder renamed into place (safe
    for concurrent processes). The weights are still read from the GGUF file itself.
    """
    path = os.path.join(where.location, where.gguf_file)
    stat = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = os.environ.get("TIMEVEC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "timevec")
    target = os.path.join(root, "gguf", f"{os.path.splitext(where.gguf_file)[0]}-{key}")
    if os.path.isfile(os.path.join(target, "complete")):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(target))
    try:
        config = AutoConfig.from_pretrained(where.location, gguf_file=where.gguf_file)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(where.location, gguf_file=where.gguf_file).save_pretrained(tmp)
        with open(os.path.join(tmp, "complete"), "w") as handle:
            handle.write(path + "\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process got there first
            if not os.path.isfile(os.path.join(target, "complete")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def base_is_encoder_decoder(base: BaseConfig) -> bool:
    """Whether the base is encoder-decoder, without building it (a hub t5-3b would cost GBs)."""
    if base.source == "embedded":
        return base.arch == "t5"
    return bool(getattr(hub_config(base), "is_encoder_decoder", False))


def load_tokenizer(base: BaseConfig) -> PreTrainedTokenizerBase:
    """The base's tokenizer: ByT5 bytes for the embedded model, the hub/local/GGUF one otherwise.

    Real tokenizers are made fit for timevec's batching: a missing pad token becomes EOS (padded
    positions are always masked, so which id pads does not matter) or UNK; padding is on the right
    (timevec pads its batches itself; generation prompts are left-padded where they are built);
    a tokenizer without EOS is refused, since every text is closed by it. Cached per process.
    """
    if base.source == "embedded":
        return ByT5Tokenizer()
    from timevec.data.presets import resolve

    where = resolve(base)
    if where.key not in _TOKENIZERS:
        tokenizer = _from_resolved(AutoTokenizer, where)
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"base {where.name!r}: the tokenizer has no EOS token (timevec closes every text with it)")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"
        _TOKENIZERS[where.key] = tokenizer
    return _TOKENIZERS[where.key]


def _auto_class(config: PretrainedConfig):
    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


def build_model(base: BaseConfig, tokenizer: PreTrainedTokenizerBase, pretrained: bool = True) -> PreTrainedModel:
    """A fresh model: the embedded tiny model (random init), or the hub/local/GGUF model.

    ``pretrained=False`` builds a hub model's architecture only (no weight download or GGUF
    dequantisation): the workers of a distributed stage then load θ_pre from the vector store,
    so they need nothing but it (and the config and tokenizer files).
    """
    if base.source == "hub":
        from timevec.data.presets import resolve

        dtype = _DTYPES[base.dtype]
        config = hub_config(base)
        auto = _auto_class(config)
        if pretrained:
            where = resolve(base)
            log.info("loading base %s from %s%s", where.name, where.location, f" ({where.gguf_file})" if where.gguf_file else "")
            loaded = auto.from_pretrained(where.location, dtype=dtype, **where.kwargs())
            if getattr(loaded.config, "quantization_config", None) is None and not where.gguf_file:
                return loaded
            # a GGUF-loaded model is marked quantised (save_pretrained refuses it) although its
            # weights are dequantised floats: rebuild it as the plain model of its config
            plain = auto.from_config(config, dtype=dtype)
            plain.load_state_dict(loaded.state_dict())
            return plain
        return auto.from_config(config, dtype=dtype)
    tiny = base.tiny
    torch.manual_seed(0)  # the embedded architecture's initial weights are part of its identity
    if base.arch == "t5":
        config = T5Config(  # type: ignore[call-arg]  # PretrainedConfig's **kwargs
            vocab_size=len(tokenizer),
            d_model=tiny.d_model,
            d_kv=max(tiny.d_model // tiny.num_heads, 4),
            d_ff=tiny.d_ff,
            num_layers=tiny.num_layers,
            num_decoder_layers=tiny.num_layers,
            num_heads=tiny.num_heads,
            dropout_rate=tiny.dropout,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        return T5ForConditionalGeneration(config)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=tiny.max_positions,
        n_embd=tiny.d_model,
        n_layer=tiny.num_layers,
        n_head=tiny.num_heads,
        n_inner=tiny.d_ff,
        resid_pdrop=tiny.dropout,
        embd_pdrop=tiny.dropout,
        attn_pdrop=tiny.dropout,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def skeleton(base: BaseConfig) -> PreTrainedModel:
    """The base's architecture on the meta device: parameter names and shapes, no memory, no weights."""
    with torch.device("meta"):
        if base.source == "hub":
            return _auto_class(hub_config(base)).from_config(hub_config(base))
        return build_model(base, load_tokenizer(base), pretrained=False)


def max_positions(model_config: PretrainedConfig) -> int | None:
    """The longest sequence a decoder-only model's positions allow (None: no fixed limit, e.g. T5)."""
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(model_config, attr, None)
        if isinstance(value, int):
            return value
    return None


def save_pretrained_base(base: BaseConfig, directory: str) -> str:
    """Write the base (model + tokenizer) as an ordinary ``save_pretrained`` directory.

    The way to turn a GGUF file or a preset into the local-directory form that every
    ``from_pretrained`` user (and a cluster's shared filesystem) takes.
    """
    tokenizer = load_tokenizer(base)
    model = build_model(base, tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def base_id(base: BaseConfig) -> str:
    """The base's portable name for the store: preset name, hub id@revision, local folder name,
    or the embedded settings. Never a filesystem path (the fingerprint identifies the weights)."""
    if base.source == "hub":
        from timevec.data.presets import resolve

        return resolve(base).name
    t, p = base.tiny, base.pretrain
    return (
        f"embedded-{base.arch}-d{t.d_model}-l{t.num_layers}-h{t.num_heads}-ff{t.d_ff}"
        f"-pre{p.steps}x{p.batch_size}-lr{p.lr:g}-len{p.max_length}"
    )


def assign_parameters(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """Copy named tensors into the model's parameters in place (dtype/device of the model kept)."""
    params = float_parameters(model)
    missing = sorted(set(params) - set(tensors))
    if missing:
        raise KeyError(f"weights lack {len(missing)} parameters of the model, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, param in params.items():
            if tuple(tensors[name].shape) != tuple(param.shape):
                raise ValueError(f"parameter {name}: shape {tuple(tensors[name].shape)} != model {tuple(param.shape)}")
            param.copy_(tensors[name])
    return model


def base_from_store(base: BaseConfig, store) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """θ_pre as the store holds it: the architecture built locally, the weights read from the store."""
    tokenizer = load_tokenizer(base)
    model = build_model(base, tokenizer, pretrained=False)
    assign_parameters(model, store.get_base())
    model.eval()
    return model, tokenizer


def is_encoder_decoder(model: PreTrainedModel) -> bool:
    model = getattr(model, "module", model)  # a DistributedDataParallel wrapper: the model it wraps
    return bool(getattr(model.config, "is_encoder_decoder", False))


def float_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every floating-point parameter by name (tied weights once): what a time vector covers."""
    return {name: p for name, p in model.named_parameters() if p.dtype.is_floating_point}


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A stable sha256 of named tensors (names, dtypes, shapes and bytes, in name order).

    Two bases with the same fingerprint are bit-identical, so a vector taken against one can be
    applied to the other; anything else is refused by the store.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# ----------------------------------------------------------------------------- task formatting


@dataclass(frozen=True)
class Example:
    """One training/evaluation example as token ids; ``labels`` use -100 where no loss is taken."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def lm_examples(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    encoder_decoder: bool,
    block: int,
    objective: LmObjective = "next_block",
    seed: int = 0,
) -> list[Example]:
    """Language-modelling examples from a period's texts, each text closed by EOS.

    Decoder-only: the token stream cut into ``block``-token windows, next-token loss.
    Encoder-decoder, ``next_block`` (the reference code's T5 objective): source = block i,
    target = block i+1. ``span_corruption``: T5's denoising — ~15% of each block masked in spans of
    ~3 tokens replaced by sentinels; the target lists the sentinels and the dropped spans.
    """
    stream: list[int] = []
    for text in texts:
        stream.extend(_ids(tokenizer, text))
        stream.append(tokenizer.eos_token_id)
    blocks = [tuple(stream[i : i + block]) for i in range(0, len(stream), block)]
    blocks = [b for b in blocks if len(b) > 1]
    if not encoder_decoder:
        return [Example(b, b) for b in blocks]
    if objective == "next_block":
        return [Example(blocks[i], blocks[i + 1]) for i in range(len(blocks) - 1)]
    return [_span_corrupt(b, tokenizer, seed + i) for i, b in enumerate(blocks)]


def _sentinel_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """T5's ``<extra_id_k>`` sentinel ids (T5 and ByT5 tokenizers both define them)."""
    ids: list[int] = []
    for k in range(100):
        token_id = tokenizer.convert_tokens_to_ids(f"<extra_id_{k}>")
        if token_id is None or token_id == tokenizer.unk_token_id:
            break
        ids.append(token_id)  # type: ignore[arg-type]  # one token in, one id out
    if not ids:
        raise ValueError("span corruption needs a tokenizer with <extra_id_k> sentinel tokens (T5/ByT5)")
    return ids


def _span_corrupt(block: Sequence[int], tokenizer: PreTrainedTokenizerBase, seed: int) -> Example:
    generator = torch.Generator().manual_seed(seed)
    n = len(block)
    n_spans = max(1, round(n * 0.15 / 3))
    starts = sorted(set(torch.randint(0, max(n - 3, 1), (n_spans,), generator=generator).tolist()))
    sentinels = _sentinel_ids(tokenizer)
    source: list[int] = []
    target: list[int] = []
    pos = 0
    for k, start in enumerate(starts):
        if start < pos or k >= len(sentinels):
            continue
        source.extend(block[pos:start])
        source.append(sentinels[k])
        target.append(sentinels[k])
        target.extend(block[start : start + 3])
        pos = start + 3
    source.extend(block[pos:])
    target.append(tokenizer.eos_token_id)
    return Example(tuple(source), tuple(target))


def prompt_examples(
    sources: Sequence[str],
    targets: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    encoder_decoder: bool,
    max_length: int,
    prefix: str,
    target_room: int | None = None,
) -> list[Example]:
    """Conditional examples (classification labels, summaries): loss on the target only.

    Encoder-decoder: source = ``prefix + text``, target = the target text + EOS. Decoder-only: one
    sequence ``prefix + text + ' => ' + target + EOS`` with the prompt positions masked out; the
    prompt is truncated from the right so that the target always fits: so that ``target_room``
    tokens fit when given (label candidates reserve room for the longest, so that every candidate
    of a text shares one prompt), else this target's own length.
    """
    examples = []
    for source, target in zip(sources, targets, strict=True):
        target_ids = _ids(tokenizer, target)[: max_length - 1] + [tokenizer.eos_token_id]
        if encoder_decoder:
            source_ids = _ids(tokenizer, f"{prefix}: {source}")[:max_length]
            examples.append(Example(tuple(source_ids), tuple(target_ids)))
        else:
            room = max(max_length - max(len(target_ids), target_room or 0), 1)
            prompt = _ids(tokenizer, f"{prefix}: {source} => ")[:room]
            examples.append(Example(tuple(prompt + target_ids), (IGNORE,) * len(prompt) + tuple(target_ids)))
    return examples


def collate(examples: Sequence[Example], pad_id: int, encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """Pad a batch. Encoder-decoder: labels are the decoder targets (the model shifts them)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    label_width = max(len(e.labels) for e in examples) if encoder_decoder else width
    labels = torch.full((len(examples), label_width), IGNORE, dtype=torch.long)
    for i, example in enumerate(examples):
        input_ids[i, : len(example.input_ids)] = torch.tensor(example.input_ids)
        attention[i, : len(example.input_ids)] = 1
        labels[i, : len(example.labels)] = torch.tensor(example.labels)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def token_losses(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed loss and scored-token counts (shape ``[batch]`` each).

    Computed here rather than taken from ``model(...).loss`` because evaluation needs sums over a
    whole split (perplexity = exp(total loss / total tokens)) and per-example scores (label
    likelihoods), not a batch mean.
    """
    labels = batch["labels"]
    if is_encoder_decoder(model):
        logits = model(**batch).logits
        targets = labels
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = labels[:, 1:]
    losses = nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(targets.shape)
    mask = targets != IGNORE
    return (losses * mask).sum(dim=1), mask.sum(dim=1)


def perplexity(total_loss: float, total_tokens: int) -> float:
    """exp(mean token loss); infinite for an empty split rather than a division error."""
    return math.exp(total_loss / total_tokens) if total_tokens else math.inf
