"""Low-rank time vectors: a LoRA run's τ kept as its factors, and the exact math on them.

A LoRA run changes each target module's weight by exactly ``s·B·A`` (B: out×r, A: r×in, the scale
s = α/r) and nothing else, except tensors trained densely beside the adapters (peft's
``modules_to_save``, e.g. a classification head). Stored dense, that τ costs the whole model (540 MB
for SmolLM2-135M, 12 GB for t5-3b); as factors it costs r·(out+in) per module. This module is the
Ray-free core of that vector KIND (ARCHITECTURE §13):

- :class:`Factor` and :class:`LowRankVector` — per parameter name a factor, a dense tensor, or
  nothing (zero). Factors are canonical: ``B @ A`` has the PARAMETER's shape (a GPT-2 ``Conv1D``,
  whose weight is in×out, is stored transposed at extraction), so every consumer can ignore peft's
  ``fan_in_fan_out``.
- exact inner products, accumulated in float64, never forming ``B·A``:
  ``⟨s₁B₁A₁, s₂B₂A₂⟩_F = s₁s₂·tr((B₁ᵀB₂)(A₂A₁ᵀ))`` and ``⟨D, sBA⟩ = s·Σ (BᵀD) ⊙ A``;
  :func:`module_gram` does all N vectors of one parameter at once (one product of the stacked
  factors), which is what both :func:`gram` and the store's streamed Gram
  (:mod:`timevec.store.lowrank`) call — one implementation.
- :meth:`LowRankVector.add_to` adds ``c·s·B·A`` into a live parameter with one ``addmm_``: the
  :class:`~timevec.weights.vectors.WeightPatcher` applies low-rank terms module by module this way.
- :func:`lora_factors` reads the factors off a peft model before it is merged;
  :func:`from_lora_run` checks them against the merged dense τ and keeps any other changed tensor
  dense, so "zero elsewhere" is verified, not assumed.

Dense stays the default kind: :meth:`LowRankVector.to_dense` is the slow path for callers that need
a :class:`~timevec.weights.vectors.TimeVector` (it materialises the whole vector).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from timevec.weights.vectors import TimeVector, VectorError, dot64

__all__ = ["Factor", "LowRankVector", "Operand", "dot", "from_lora_run", "gram", "inner", "lora_factors", "module_gram"]


@dataclass(frozen=True)
class Factor:
    """``scale · B @ A`` in the parameter's own shape (B: out×r, A: r×in, fp32 on the CPU)."""

    B: torch.Tensor
    A: torch.Tensor
    scale: float

    def __post_init__(self) -> None:
        if self.B.dim() != 2 or self.A.dim() != 2 or self.B.shape[1] != self.A.shape[0]:
            raise VectorError(f"factor shapes B {tuple(self.B.shape)} and A {tuple(self.A.shape)} do not multiply")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.B.shape[0]), int(self.A.shape[1]))

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def dense(self) -> torch.Tensor:
        """The module's delta as one dense fp32 tensor (one module, not the whole vector)."""
        return (self.B @ self.A).mul_(self.scale)


#: One parameter's part of a vector: dense delta, factors, or None (zero).
Part = torch.Tensor | Factor | None


class LowRankVector:
    """A time vector as factors per target module plus dense tensors; every other parameter is zero.

    ``shapes`` names EVERY parameter of the base (store order) with its shape: the vector's
    dimension is the base's, whatever it stores.
    """

    __slots__ = ("factors", "dense", "shapes")

    def __init__(
        self,
        factors: Mapping[str, Factor],
        dense: Mapping[str, torch.Tensor],
        shapes: Mapping[str, Sequence[int]],
    ) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {n: tuple(int(d) for d in s) for n, s in shapes.items()}
        self.factors: dict[str, Factor] = {}
        self.dense: dict[str, torch.Tensor] = {}
        for name, f in factors.items():
            self._check(name, f.shape, "factor")
            self.factors[name] = Factor(_fp32(f.B), _fp32(f.A), float(f.scale))
        for name, t in dense.items():
            if name in self.factors:
                raise VectorError(f"low-rank vector: tensor {name!r} is both a factor and dense")
            self._check(name, tuple(t.shape), "dense tensor")
            self.dense[name] = _fp32(t)

    def _check(self, name: str, shape: tuple[int, ...], what: str) -> None:
        if name not in self.shapes:
            raise VectorError(f"low-rank vector: {what} {name!r} is not a parameter of the base")
        if tuple(shape) != self.shapes[name]:
            raise VectorError(
                f"low-rank vector: {what} {name!r} has shape {tuple(shape)}, the base's parameter has {self.shapes[name]}"
            )

    # ------------------------------------------------------------------ container

    @property
    def names(self) -> list[str]:
        """Every parameter name of the base, in store order (most are zero)."""
        return list(self.shapes)

    @property
    def n_params(self) -> int:
        """The vector's dimension (the base's parameter count), as for a dense vector."""
        return sum(math.prod(s) for s in self.shapes.values())

    @property
    def stored_params(self) -> int:
        """Scalars actually held: factor entries plus dense entries."""
        return sum(f.B.numel() + f.A.numel() for f in self.factors.values()) + sum(t.numel() for t in self.dense.values())

    def part(self, name: str) -> Part:
        """The named parameter's part: a :class:`Factor`, a dense tensor or None (zero)."""
        if name not in self.shapes:
            raise VectorError(f"low-rank vector has no tensor {name!r}")
        return self.factors.get(name, self.dense.get(name))

    def __contains__(self, name: object) -> bool:
        """Whether the parameter is non-zero here (what a patcher must touch)."""
        return name in self.factors or name in self.dense

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def get(self, name: str, default: torch.Tensor | None = None) -> torch.Tensor | None:
        """The named parameter's delta, dense (one module densified), or ``default`` when zero."""
        part = self.factors.get(name, self.dense.get(name))
        if part is None:
            return default
        return part.dense() if isinstance(part, Factor) else part

    def add_to(self, name: str, work: torch.Tensor, coef: float) -> None:
        """``work += coef · τ[name]`` in place on ``work``'s device; a factor is one ``addmm_``."""
        part = self.factors.get(name, self.dense.get(name))
        if part is None or coef == 0.0:
            return
        if isinstance(part, Factor):
            b = part.B.to(device=work.device, dtype=work.dtype)
            a = part.A.to(device=work.device, dtype=work.dtype)
            work.view(part.shape).addmm_(b, a, alpha=coef * part.scale)
        else:
            work.add_(part.to(device=work.device, dtype=work.dtype), alpha=coef)

    def to_dense(self) -> TimeVector:
        """The SLOW path: the whole vector as a dense :class:`TimeVector` (every parameter materialised)."""
        out: dict[str, torch.Tensor] = {}
        for name, shape in self.shapes.items():
            t = self.get(name)
            out[name] = torch.zeros(shape, dtype=torch.float32) if t is None else t.reshape(shape)
        return TimeVector(out)

    def __repr__(self) -> str:
        return (
            f"LowRankVector(factors={len(self.factors)}, dense={len(self.dense)}, "
            f"n_params={self.n_params}, stored_params={self.stored_params})"
        )

    # ------------------------------------------------------------------ reductions

    def dot(self, other: Operand) -> float:
        """Exact inner product with a dense or low-rank vector, module by module, in float64."""
        return dot(self, other)

    def norm(self) -> float:
        return math.sqrt(max(0.0, dot(self, self)))

    def cosine(self, other: Operand) -> float:
        na, nb = self.norm(), other.norm()
        if na == 0.0 or nb == 0.0:
            raise VectorError("cosine of a zero vector is undefined")
        return dot(self, other) / (na * nb)

    def check_finite(self, label: str = "vector") -> None:
        for name in list(self.factors) + list(self.dense):
            part = self.factors.get(name, self.dense.get(name))
            tensors = (part.B, part.A) if isinstance(part, Factor) else (part,)
            if not all(bool(torch.isfinite(t).all()) for t in tensors):  # type: ignore[arg-type]  # part is one of the two maps' values
                raise VectorError(f"{label}: tensor {name!r} has NaN/Inf value(s)")


#: What the math accepts: a dense vector or a low-rank one.
Operand = TimeVector | LowRankVector


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32)


def _part(vec: Operand, name: str) -> Part:
    if isinstance(vec, LowRankVector):
        return vec.part(name)
    return vec.tensors.get(name)


def _shapes(vec: Operand) -> dict[str, tuple[int, ...]]:
    if isinstance(vec, LowRankVector):
        return vec.shapes
    return {n: tuple(t.shape) for n, t in vec.tensors.items()}


# ---------------------------------------------------------------------- float64 inner products


def _f64(t: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy. The factor products are small (r×r, r×in): numpy's BLAS runs them
    single-threaded, which on a loaded machine is ~20× faster than torch's thread pool spinning up
    for each of them (bench/README.md, lowrank)."""
    return t.detach().cpu().numpy().astype(np.float64)


def inner(x: Part, y: Part) -> float:
    """``⟨x, y⟩_F`` of two parts of one parameter (float64); a factor is never multiplied out."""
    if x is None or y is None:
        return 0.0
    if isinstance(x, Factor) and isinstance(y, Factor):
        # tr((B₁ᵀB₂)(A₂A₁ᵀ)) = Σ (B₁ᵀB₂) ⊙ (A₁A₂ᵀ): two r×r products.
        bb = _f64(x.B).T @ _f64(y.B)
        aa = _f64(x.A) @ _f64(y.A).T
        return x.scale * y.scale * float((bb * aa).sum())
    if isinstance(x, Factor):
        x, y = y, x
    if isinstance(y, Factor):
        d = _f64(x).reshape(y.shape)  # type: ignore[arg-type]  # x is dense: the Factor was swapped into y
        return y.scale * float(((_f64(y.B).T @ d) * _f64(y.A)).sum())
    return dot64(x, y)  # type: ignore[arg-type]  # both dense here


def dot(a: Operand, b: Operand) -> float:
    """``⟨a, b⟩`` over every parameter, for any mix of dense and low-rank vectors."""
    sa, sb = _shapes(a), _shapes(b)
    if sa != sb:
        only = sorted(set(sa).symmetric_difference(sb)) or [n for n in sa if sa[n] != sb.get(n)]
        raise VectorError(f"cannot take the dot product of vectors: tensor {only[0]!r} differs in name or shape")
    return sum(inner(_part(a, n), _part(b, n)) for n in sa)


def module_gram(parts: Sequence[Part]) -> np.ndarray:
    """The N×N float64 Gram of one parameter's parts over N vectors (None = zero).

    Dense parts: ``X·Xᵀ``. Factors: the stacked ``B̃ = [s₁B₁ … s_mB_m]`` and ``Ã = [A₁; …; A_m]``
    give ``(B̃ᵀB̃) ⊙ (ÃÃᵀ)``, whose (i, j) block sums to ``⟨sᵢBᵢAᵢ, sⱼBⱼAⱼ⟩``. Dense × factor:
    ``(B̃ᵀD) ⊙ Ã``, summed per block. No ``B·A`` is formed.
    """
    n = len(parts)
    out = np.zeros((n, n), dtype=np.float64)
    dense = [i for i, p in enumerate(parts) if isinstance(p, torch.Tensor)]
    facs = [i for i, p in enumerate(parts) if isinstance(p, Factor)]
    if dense:
        x = np.stack([_f64(parts[i].reshape(-1)) for i in dense])  # type: ignore[union-attr]
        out[np.ix_(dense, dense)] = x @ x.T
    if facs:
        fs: list[Factor] = [parts[i] for i in facs]  # type: ignore[misc]
        bt = np.concatenate([_f64(f.B) * f.scale for f in fs], axis=1)  # out × R
        at = np.concatenate([_f64(f.A) for f in fs], axis=0)  # R × in
        seg = np.zeros((len(fs), at.shape[0]))  # rank index → vector
        start = 0
        for j, f in enumerate(fs):
            seg[j, start : start + f.rank] = 1.0
            start += f.rank
        m = (bt.T @ bt) * (at @ at.T)
        out[np.ix_(facs, facs)] = seg @ m @ seg.T
        for row, i in enumerate(dense):
            d = x[row].reshape(fs[0].shape)
            cross = seg @ ((bt.T @ d) * at).sum(axis=1)  # ⟨D_i, s_j B_j A_j⟩ for every j
            out[i, facs] = cross
            out[facs, i] = cross
    return out


def gram(vectors: Sequence[Operand]) -> np.ndarray:
    """``G[i, j] = ⟨τ_i, τ_j⟩`` (float64) of in-memory vectors, dense and low-rank mixed."""
    n = len(vectors)
    g = np.zeros((n, n), dtype=np.float64)
    if not n:
        return g
    shapes = _shapes(vectors[0])
    for i, v in enumerate(vectors[1:], start=1):
        if _shapes(v) != shapes:
            raise VectorError(f"gram: vector {i} has other tensor names or shapes than vector 0")
    for name in shapes:
        g += module_gram([_part(v, name) for v in vectors])
    return g


# ---------------------------------------------------------------------- from a LoRA run


def lora_factors(model: torch.nn.Module) -> dict[str, Factor]:
    """The canonical factors of every LoRA layer of an UNMERGED peft model, by base parameter name.

    ``<module>.weight`` of the base gains ``scaling·B·A`` (transposed for ``fan_in_fan_out`` layers
    such as GPT-2's ``Conv1D``); the factors are stored so that ``B @ A`` has the weight's shape.
    """
    from peft.tuners.lora import LoraLayer  # deferred: only LoRA runs need peft

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]  # a PeftModel method, guarded by hasattr
    out: dict[str, Factor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            a = module.lora_A[adapter].weight.detach().float().cpu().clone()  # type: ignore[operator]  # peft's ModuleDict, typed as a Tensor attribute
            b = module.lora_B[adapter].weight.detach().float().cpu().clone()  # type: ignore[operator]  # peft's ModuleDict, typed as a Tensor attribute
            scale = float(module.scaling[adapter])
            if getattr(module, "fan_in_fan_out", False):
                b, a = a.T.contiguous(), b.T.contiguous()
            key = f"{name}.weight"
            if key in out:
                raise VectorError(f"LoRA layer {name!r} has more than one active adapter")
            out[key] = Factor(b, a, scale)
    return out


def from_lora_run(
    factors: Mapping[str, Factor], merged: TimeVector, shapes: Mapping[str, Sequence[int]] | None = None
) -> tuple[LowRankVector, float]:
    """The run's τ as a :class:`LowRankVector`, and the largest relative error of its factors.

    ``merged`` is the run's dense τ (θ_merged − θ_pre). Every parameter with a factor is checked
    against it (``max |τ − sBA| / max |τ|``, which for a faithful factorisation is fp32 rounding of
    the merge); any other parameter that changed is kept dense (modules_to_save, a head); the rest
    is exactly zero and not stored. ``shapes``: every parameter of the base, when ``merged`` holds
    only those the run can have changed (:meth:`timevec.train.run.RunJob`: a LoRA run's targets);
    the rest is zero by construction and never materialised. Default: ``merged``'s own.
    """
    shapes = {n: tuple(s) for n, s in shapes.items()} if shapes is not None else {n: tuple(t.shape) for n, t in merged.items()}
    dense: dict[str, torch.Tensor] = {}
    worst = 0.0
    for name, tensor in merged.items():
        if name in factors:
            ref = float(tensor.abs().max()) if tensor.numel() else 0.0
            err = float((tensor - factors[name].dense()).abs().max()) if tensor.numel() else 0.0
            worst = max(worst, err / ref if ref > 0 else err)
        elif bool(tensor.any()):
            dense[name] = tensor
    missing = [n for n in factors if n not in shapes]
    if missing:
        raise VectorError(f"LoRA factor {missing[0]!r} names no parameter of the merged model")
    return LowRankVector(factors, dense, shapes), worst
