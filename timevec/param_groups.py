"""Which part of the network a parameter belongs to: one grouping of tensor names for every base.

Why: "where in the weights does time live" (issue #12, part 1) asks for norms, cosines and swaps
of τ per parameter GROUP (token embeddings, position embeddings, attention, MLP, norms, the
LM/classification head) and per LAYER. The store only knows tensor names, so one function maps a
name to ``(group, layer)`` for the architectures timevec runs: GPT-2 (``transformer.wte``,
``transformer.h.3.attn.c_attn``), T5 (``shared``, ``encoder.block.2.layer.1.DenseReluDense.wi``,
``relative_attention_bias``) and Llama/SmolLM2 (``model.embed_tokens``,
``model.layers.5.self_attn.q_proj``, ``score``). Nothing is refused silently: a name no rule
matches goes to :data:`OTHER` and :func:`group_counts` counts it, so a new architecture shows up
as an "other" share in the tables instead of vanishing from them.

A tied LM head (the embedded GPT-2, T5-small) is not a parameter of its own: its share is in
``embedding``. T5's relative attention bias is how T5 encodes position, so it is ``position``.
Torch-free and Ray-free.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

__all__ = ["GROUPS", "OTHER", "group_counts", "group_of", "layer_of", "param_group"]

OTHER = "other"
#: The groups in report order (``other`` last).
GROUPS: tuple[str, ...] = ("embedding", "position", "attention", "mlp", "norm", "head", OTHER)

# Order matters: the first rule whose pattern is found in the name wins.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((g, re.compile(p)) for g, p in (
    ("position", r"(^|\.)(wpe|embed_positions|position_embeddings)\.|relative_attention_bias"),
    ("embedding", r"(^|\.)(wte|embed_tokens|shared|word_embeddings|tok_embeddings|token_type_embeddings)\."),
    ("norm", r"(^|\.)(ln_\d+|ln_f|layer_norm|final_layer_norm|input_layernorm|post_attention_layernorm|"
             r"pre_feedforward_layernorm|post_feedforward_layernorm|norm|layernorm|LayerNorm|"
             r"[qk]_norm)\.(weight|bias)$"),
    ("attention", r"(^|\.)(attn|self_attn|SelfAttention|EncDecAttention|attention|crossattention)\."),
    ("mlp", r"(^|\.)(mlp|DenseReluDense|feed_forward|ffn)\."),
    ("head", r"(^|\.)(lm_head|score|classifier|classification_head|qa_outputs)\."),
))
# transformer.h.3. / model.layers.3. / encoder.block.3. (T5 has two stacks: the layer names the stack)
_LAYER = re.compile(r"(?:^|\.)(?:(encoder|decoder)\.)?(?:h|layers|block|layer)\.(\d+)\.")


def param_group(name: str) -> str:
    """The group of one parameter name (one of :data:`GROUPS`; :data:`OTHER` when no rule matches)."""
    for group, pattern in _RULES:
        if pattern.search(name):
            return group
    return OTHER


def layer_of(name: str) -> str:
    """The layer a parameter sits in: ``"3"`` (decoder-only), ``"encoder.3"`` / ``"decoder.3"`` (T5),
    or ``""`` for a parameter outside the stack (embeddings, the final norm, the head)."""
    m = _LAYER.search(name)
    if m is None:
        return ""
    stack, index = m.group(1), m.group(2)
    return f"{stack}.{index}" if stack else index


def group_of(name: str) -> tuple[str, str]:
    """``(group, layer)`` of one parameter name: the key a grouped Gram matrix is accumulated under."""
    return param_group(name), layer_of(name)


def group_counts(names: Iterable[str]) -> dict[str, int]:
    """How many tensors fall in each group (every group of :data:`GROUPS`, zeros included)."""
    counts = Counter(param_group(n) for n in names)
    return {g: int(counts.get(g, 0)) for g in GROUPS}
