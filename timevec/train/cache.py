"""What the runs of one process share: θ_pre with its tokenizer, and the prepared example sets.

Why: a fleet trial process is reused for run after run (Tune's ``reuse_actors``), and each run used
to build everything again — the architecture (a random init of every weight), θ_pre read and
checked from the store, the tokenizer, the tokenised examples: 3–5 s of a SmolLM2 run's 5–7 s
outside its training loop. Here a process keeps them, keyed by CONTENT, so that run k+1 starts
training at once and nothing the store already holds is read or rebuilt:

- a base is keyed by the base config and the store's ``base_fingerprint`` (the sha256 of θ_pre's
  names, dtypes, shapes and bytes): two stores holding the same weights share an entry, a store
  holding other weights under the same path or name never does;
- an example set is keyed by a sha256 of the rows it is made of (the period's split of the
  corpus, every canonical column), the task, the split, the tokenizer (its base) and the
  formatting settings — never by a file name or an object's identity.

Exactness: a run must start from θ_pre bit for bit, as in a fresh process. The cache keeps a
pristine copy of θ_pre (every floating-point parameter and every buffer) beside ONE working model,
which it lends to one run at a time (:meth:`RunCache.base`) and takes back when the run has
written its τ (:meth:`RunCache.give_back`). Lending it again copies θ_pre into it, resets
``requires_grad`` (LoRA freezes the base weights), drops gradients and what a run attached
(``timevec_lora_factors``) and sets eval mode. LoRA leaves no other trace: peft injects its layers
into the model in place and ``merge_and_unload`` puts the original modules back, so the model's
module tree, hooks and attributes are checked against the ones recorded at load, and a model that
differs (a run died with LoRA layers still in it) is rebuilt from the kept θ_pre instead. A model
that was never given back (its run failed, or two jobs of one process overlap) is never lent twice:
the next run gets a fresh build from the kept θ_pre. The model stays on the device it trained on;
θ_pre is copied onto it there.

Bound: ``max_bases`` bases (default 1, the fleet's one base: its working model and its pristine
copy, what one run held before, model and θ_pre clone) and example sets, least recently used first
out, up to ``max_example_sets`` sets and ``max_example_tokens`` token ids in all (a set larger than
that is not kept). :data:`PROCESS_CACHE` is the process's cache; ``stats`` counts what was loaded,
served and evicted (what the tests and the benchmark read).

Ray-free: plain processes (:func:`timevec.train.run.run_one`) and trial processes use it alike.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from timevec.data.corpus import CANONICAL, Corpus, Split
from timevec.data.examples import task_examples
from timevec.data.models import (
    Example,
    assign_parameters,
    base_from_store,
    build_model,
    float_parameters,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from timevec.config import BaseConfig
    from timevec.store import VectorStore

__all__ = ["PROCESS_CACHE", "CacheStats", "RunCache", "base_key", "examples_digest", "rows_digest"]

#: bumped when the example formatting changes in a way its settings do not capture
EXAMPLES_FORMAT = 1
#: attributes a run may attach to the model it trained (``merge_lora``); removed before lending it again
RUN_ATTRIBUTES = ("timevec_lora_factors",)


@dataclass
class CacheStats:
    """What a :class:`RunCache` did since it was made (or :meth:`RunCache.clear`)."""

    base_loads: int = 0  # θ_pre read from the store and the architecture built: a miss
    base_hits: int = 0  # the kept working model lent again, θ_pre copied into it
    model_builds: int = 0  # a second working model built from the kept θ_pre (the first one not given back, or changed)
    example_builds: int = 0  # an example set tokenised
    example_hits: int = 0  # an example set served from memory
    evictions: int = 0  # entries dropped to stay within the bound

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def base_key(base: BaseConfig, store: VectorStore) -> str:
    """A base's cache key: its config (architecture, dtype, tokenizer) and θ_pre's content fingerprint."""
    recipe = {"base": base.model_dump(mode="json"), "fingerprint": store.base_fingerprint}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def rows_digest(corpus: Corpus, period: str, split: Split) -> str:
    """A sha256 of one period's split: every canonical column of every row, in order (what the examples are made of)."""
    rows = corpus.rows(period, split)
    digest = hashlib.sha256(f"{len(rows)}\n".encode())
    for column in CANONICAL:
        if column not in rows:
            continue
        digest.update(f"|{column}\n".encode())
        for value in rows[column].tolist():
            data = b"\x00" if value is None or value != value else str(value).encode()  # None / NaN / NaT
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def examples_digest(examples: Sequence[Example]) -> str:
    """A sha256 of token-id examples (inputs and labels, in order): part of a run's checkpoint fingerprint."""
    from array import array

    digest = hashlib.sha256()
    for e in examples:
        digest.update(array("i", e.input_ids).tobytes())
        digest.update(b"|")
        digest.update(array("i", e.labels).tobytes())
        digest.update(b"\n")
    return digest.hexdigest()


def _signature(model: torch.nn.Module) -> tuple:
    """The model's module tree, hooks and instance attributes: what a run must leave as it found it."""
    out = []
    for name, module in model.named_modules():
        attributes = tuple(sorted(k for k in vars(module) if k not in RUN_ATTRIBUTES))
        hooks = (len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks),
                 len(module._backward_pre_hooks), len(module._state_dict_hooks), len(module._load_state_dict_pre_hooks))
        out.append((name, type(module), attributes, hooks, tuple(module._parameters), tuple(module._buffers)))
    return tuple(out)


class _Base:
    """One base in memory: θ_pre (pristine), its tokenizer, and the working model when it is not lent out."""

    def __init__(self, key: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.key, self.tokenizer = key, tokenizer
        self.theta = {name: p.detach().clone() for name, p in float_parameters(model).items()}
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.signature = _signature(model)
        self.spare: PreTrainedModel | None = model  # the working model, ready to lend
        self.lent: PreTrainedModel | None = None

    def restore(self, model: PreTrainedModel) -> bool:
        """θ_pre into ``model`` in place, as base_from_store leaves a new one; False if the model changed shape."""
        for module in model.modules():
            for attribute in RUN_ATTRIBUTES:
                module.__dict__.pop(attribute, None)
        if _signature(model) != self.signature:
            return False
        params = float_parameters(model)
        buffers = dict(model.named_buffers())
        if params.keys() != self.theta.keys() or buffers.keys() != self.buffers.keys():
            return False
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(self.theta[name])
                param.requires_grad_(True)
                param.grad = None
            for name, buffer in buffers.items():
                buffer.copy_(self.buffers[name])
        model.eval()
        return True

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.theta.values(), *self.buffers.values()))


class RunCache:
    """A process's bases and example sets, bounded (LRU); see the module docstring. Thread-safe."""

    def __init__(self, max_bases: int = 1, max_example_sets: int = 64, max_example_tokens: int = 4_000_000) -> None:
        if max_bases < 1:
            raise ValueError("RunCache: max_bases must be >= 1 (the base of the run being trained)")
        self.max_bases, self.max_example_sets, self.max_example_tokens = max_bases, max_example_sets, max_example_tokens
        self.stats = CacheStats()
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        self._examples: OrderedDict[str, tuple[tuple[Example, ...], str, int]] = OrderedDict()
        self._example_tokens = 0
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ θ_pre

    def base(self, base: BaseConfig, store: VectorStore) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, torch.Tensor]]:
        """(a model holding exactly θ_pre, lent to the caller; the tokenizer; θ_pre itself, read-only).

        Give the model back with :meth:`give_back` once the run is over; θ_pre's tensors are the
        cache's own and must not be written to.
        """
        key = base_key(base, store)
        with self._lock:
            entry = self._bases.get(key)
            if entry is None:
                model, tokenizer = base_from_store(base, store)
                self.stats.base_loads += 1
                entry = _Base(key, model, tokenizer)
                self._bases[key] = entry
                while len(self._bases) > self.max_bases:
                    self._bases.popitem(last=False)
                    self.stats.evictions += 1
            else:
                self._bases.move_to_end(key)
                spare, entry.spare = entry.spare, None
                if spare is not None and entry.restore(spare):
                    model = spare
                    self.stats.base_hits += 1
                else:  # lent to a run that never gave it back, or changed: a new one from the kept θ_pre
                    model = build_model(base, entry.tokenizer, pretrained=False)
                    assign_parameters(model, entry.theta)
                    model.eval()
                    self.stats.model_builds += 1
            entry.spare, entry.lent = None, model
            return model, entry.tokenizer, entry.theta

    def give_back(self, model: torch.nn.Module) -> None:
        """The run that borrowed ``model`` is over: keep it for the next one (anything else is ignored)."""
        with self._lock:
            for entry in self._bases.values():
                if entry.lent is model:
                    entry.lent, entry.spare = None, entry.lent
                    return

    # ------------------------------------------------------------------ example sets

    def examples(
        self,
        base: BaseConfig,
        task: str,
        corpus: Corpus,
        period: str,
        split: Split,
        tokenizer: PreTrainedTokenizerBase,
        encoder_decoder: bool,
        max_length: int,
        seed: int,
    ) -> tuple[list[Example], str]:
        """:func:`~timevec.data.examples.task_examples` of one period's split, and their :func:`examples_digest`."""
        recipe = {
            "base": base.model_dump(mode="json"), "task": task, "period": period, "split": split,
            "rows": rows_digest(corpus, period, split), "encoder_decoder": encoder_decoder,
            "max_length": max_length, "seed": seed, "format": EXAMPLES_FORMAT,
        }
        key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        with self._lock:
            hit = self._examples.get(key)
            if hit is not None:
                self._examples.move_to_end(key)
                self.stats.example_hits += 1
                return list(hit[0]), hit[1]
        built = tuple(task_examples(task, corpus, period, split, tokenizer, encoder_decoder, max_length, seed))
        digest = examples_digest(built)
        tokens = sum(len(e.input_ids) + len(e.labels) for e in built)
        with self._lock:
            self.stats.example_builds += 1
            if tokens <= self.max_example_tokens and key not in self._examples:
                self._examples[key] = (built, digest, tokens)
                self._example_tokens += tokens
                while len(self._examples) > self.max_example_sets or self._example_tokens > self.max_example_tokens:
                    _key, (_built, _digest, dropped) = self._examples.popitem(last=False)
                    self._example_tokens -= dropped
                    self.stats.evictions += 1
        return list(built), digest

    # ------------------------------------------------------------------ the whole cache

    def clear(self) -> None:
        """Forget everything (and the stats)."""
        with self._lock:
            self._bases.clear()
            self._examples.clear()
            self._example_tokens = 0
            self.stats = CacheStats()

    def held(self) -> dict[str, Any]:
        """What the cache holds now: bases (and θ_pre's bytes), example sets (and their token ids)."""
        with self._lock:
            return {"bases": len(self._bases), "base_bytes": sum(b.nbytes for b in self._bases.values()),
                    "example_sets": len(self._examples), "example_tokens": self._example_tokens}


#: this process's cache: every :class:`~timevec.train.run.RunJob` uses it unless handed another
PROCESS_CACHE = RunCache()
