"""A combination of LoRA-factor vectors exported as ONE exact PEFT LoRA adapter.

Where every term of a combination is a low-rank vector (:class:`~timevec.weights.lowrank.LowRankVector`,
factors only), ``Σ cᵢ·sᵢ·Bᵢ·Aᵢ`` of one module is the product of the factors concatenated along the
rank::

    Σ cᵢ·sᵢ·Bᵢ·Aᵢ = [c₁s₁B₁ … cₙsₙBₙ] · [A₁; …; Aₙ]

so one adapter of rank Σ rᵢ (scaling 1: ``lora_alpha = r``) holds the combination exactly, negative
coefficients included: the sign and scale go into the B block of their own term only. PEFT's
``add_weighted_adapter`` is NOT used: for a negative weight it scales both factors by √|w| and
puts the sign on both, so the product keeps the wrong sign (peft issue #3004).

Modules where a term has no factor contribute nothing from it; modules whose total rank is below the
adapter's are padded with zero columns/rows (exact). GPT-2's ``Conv1D`` stores its weight in×out and
timevec's factors are canonical (``B@A`` has the parameter's shape), so for it the factors are
transposed into peft's out×r / r×in layout and ``fan_in_fan_out`` is set. A combination merged by
a method other than task arithmetic, or a vector with dense tensors beside its factors, has no
such adapter: the card says why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["adapter_factors", "write_adapter"]


def adapter_factors(terms: Sequence[tuple[float, Any]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per parameter name, the concatenated canonical factors ``(B_cat, A_cat)`` with
    ``B_cat @ A_cat = Σ cᵢ·sᵢ·Bᵢ·Aᵢ`` (fp32)."""
    blocks: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for coef, vec in terms:
        if coef == 0.0:
            continue
        for name, factor in vec.factors.items():
            bs, as_ = blocks.setdefault(name, ([], []))
            bs.append(factor.B * (float(coef) * factor.scale))
            as_.append(factor.A)
    return {name: (torch.cat(bs, dim=1), torch.cat(as_, dim=0)) for name, (bs, as_) in blocks.items()}


def _refusal(terms: Sequence[tuple[float, Any]], merge) -> str | None:
    live = [(c, v) for c, v in terms if c != 0.0]
    if merge is not None and not merge.is_task_arithmetic and len(live) >= 2:
        return f"merged with {merge.label}, which is not a sum of the factors"
    for _, vec in live:
        if getattr(vec, "dense", None):
            return f"a vector holds dense tensors beside its factors ({', '.join(sorted(vec.dense)[:3])})"
    if not any(vec.factors for _, vec in live):
        return "no factors"
    return None


def write_adapter(model: torch.nn.Module, terms: Sequence[tuple[float, Any]], merge, directory: Path, base_id: str) -> dict[str, Any]:
    """Write the adapter of ``terms`` for ``model`` (θ_pre; peft wraps it in place) to ``directory``.

    Returns ``{rank, bytes, modules, directory}``, or ``{skipped: reason}`` when the combination has
    no exact adapter.
    """
    reason = _refusal(terms, merge)
    if reason is not None:
        log.info("no PEFT adapter: %s", reason)
        return {"skipped": reason}
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    factors = adapter_factors(terms)
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    conv = set()
    for name, (b_cat, a_cat) in factors.items():
        module_name = name.removesuffix(".weight")
        module = model.get_submodule(module_name)
        if isinstance(module, Conv1D):  # weight in×out: peft's B@A is its transpose
            conv.add(module_name)
            b_cat, a_cat = a_cat.T.contiguous(), b_cat.T.contiguous()
        elif not isinstance(module, torch.nn.Linear):
            return {"skipped": f"{module_name} is a {type(module).__name__}, not a Linear/Conv1D layer"}
        modules[module_name] = (b_cat, a_cat)
    if conv and len(conv) != len(modules):
        return {"skipped": "the targets mix Conv1D and Linear layers (peft's fan_in_fan_out is one flag)"}
    rank = max(a.shape[0] for _, a in modules.values())
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none", target_modules=sorted(modules),
                        fan_in_fan_out=bool(conv), init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    # The base's name afterwards: get_peft_model sets the model's own (none here), warning of a rename if one was given.
    peft_model.peft_config["default"].base_model_name_or_path = base_id
    with torch.no_grad():
        for module_name, (b, a) in modules.items():
            layer: Any = peft_model.base_model.model.get_submodule(module_name)  # type: ignore[union-attr]  # a peft LoRA layer
            lora_a, lora_b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            lora_a.zero_()
            lora_b.zero_()
            lora_a[: a.shape[0]].copy_(a)
            lora_b[:, : b.shape[1]].copy_(b)
            if layer.scaling["default"] != 1.0:
                raise RuntimeError(f"{module_name}: peft scaling {layer.scaling['default']} != 1")
    # No embedding layer is a target; "auto" would ask the Hugging Face Hub whether base_id's vocabulary changed.
    peft_model.save_pretrained(str(directory), save_embedding_layers=False)
    size = sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())
    log.info("PEFT adapter: %d modules, rank %d, %d bytes", len(modules), rank, size)
    return {"rank": rank, "bytes": size, "modules": len(modules), "directory": "adapter",
            "ranks": {m: int(a.shape[0]) for m, (_, a) in modules.items()}}
