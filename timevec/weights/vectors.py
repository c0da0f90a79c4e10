"""Time vectors and weight arithmetic.

A time vector τ is ``θ_run − θ_pre`` over every floating-point parameter of a model (ARCHITECTURE §1).
This module holds the arithmetic the study needs (sums, scaling, norms and cosines) and
:class:`WeightPatcher`, which puts ``θ_pre + Σ cᵢ·τᵢ`` into a live model in place and takes it back
out bit for bit. Interpolation, soups and analogies are coefficient lists over vectors
(:func:`timevec.adapt.interpolation.interpolation_terms`, :func:`timevec.adapt.analogy.analogy_terms`) that the patcher
applies; no combined vector is ever materialised. A combination of two or more vectors can be merged
by another method instead of summed (TIES, DARE, magnitude pruning: :mod:`timevec.weights.merging`), still
tensor by tensor.

Design choices, and why:

- Vectors are always fp32 on the CPU. Deltas are small numbers next to the base weights; holding
  them in fp16/bf16 would throw away most of their mantissa, and keeping them on the host lets a
  GPU hold nothing but the model being evaluated.
- Reductions (``norm``, ``dot``, ``cosine``) accumulate in float64, tensor by tensor, over all
  tensors flattened and concatenated: with millions of parameters an fp32 running sum loses the
  digits that distinguish a cosine of .895 from .90.
- Combinations are computed tensor by tensor, never by materialising the combined vector, so an
  α-search over three vectors needs one extra tensor of memory, not one extra model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from timevec.errors import TimevecError

if TYPE_CHECKING:
    from timevec.weights.merging import MergeMethod

logger = logging.getLogger(__name__)

__all__ = [
    "VectorError",
    "TimeVector",
    "WeightPatcher",
    "dot64",
    "sum_of_squares",
]


class VectorError(TimevecError, ValueError):
    """Vectors that cannot be combined (names/shapes differ) or hold NaN/Inf."""


Scalar = int | float
TensorMap = Mapping[str, torch.Tensor]


def _is_scalar(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex


def _as_float(value: object) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)  # type: ignore[arg-type]


def _fp32_cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=torch.float32)


class TimeVector:
    """Named fp32 CPU tensors: a weight delta with the same names and shapes as the base.

    The constructor converts to fp32 on the CPU but does not copy tensors that already are; every
    operator returns a new vector and never modifies its operands.
    """

    __slots__ = ("tensors",)

    def __init__(self, tensors: TensorMap) -> None:
        converted: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise VectorError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
            if not tensor.dtype.is_floating_point:
                raise VectorError(f"tensor {name!r} has dtype {tensor.dtype}; a time vector holds floating-point tensors")
            converted[name] = _fp32_cpu(tensor)
        self.tensors: dict[str, torch.Tensor] = converted

    # ------------------------------------------------------------------ construction

    @classmethod
    def between(cls, finetuned: TensorMap, base: TensorMap, changed: Collection[str] | None = None) -> TimeVector:
        """``finetuned − base`` over every floating-point tensor of ``base``, computed in fp32.

        Both sides must have the same floating-point tensor names and shapes; a mismatch is a
        :class:`VectorError` naming the tensor, because a silently skipped tensor would make every
        later cosine and every patched model subtly wrong.

        ``changed``: the only tensors that can differ, when the caller knows it by construction (a
        LoRA run started from θ_pre trains its adapters and nothing else, and the merge writes the
        target modules alone): the others are zero without being read. That spares a real base's
        run a pass over all its weights (≈ 0.2 s for SmolLM2's 135 M); None compares every tensor.
        """
        base_names = [n for n, t in base.items() if t.dtype.is_floating_point]
        ft_names = {n for n, t in finetuned.items() if t.dtype.is_floating_point}
        missing = [n for n in base_names if n not in ft_names]
        if missing:
            raise VectorError(f"fine-tuned weights lack tensor {missing[0]!r}" + _more(missing))
        extra = sorted(ft_names.difference(base_names))
        if extra:
            raise VectorError(f"fine-tuned weights have tensor {extra[0]!r} that the base lacks" + _more(extra))
        unknown = sorted(set(changed).difference(base_names)) if changed is not None else []
        if unknown:
            raise VectorError(f"changed tensor {unknown[0]!r} is not a tensor of the base" + _more(unknown))
        out: dict[str, torch.Tensor] = {}
        for name in base_names:
            b, f = base[name], finetuned[name]
            if tuple(b.shape) != tuple(f.shape):
                raise VectorError(
                    f"tensor {name!r}: fine-tuned shape {tuple(f.shape)} != base shape {tuple(b.shape)}"
                )
            if changed is None or name in changed:
                out[name] = _fp32_cpu(f) - _fp32_cpu(b)
            else:
                out[name] = torch.zeros(b.shape, dtype=torch.float32)
        return cls(out)

    @classmethod
    def zeros_like(cls, other: TimeVector | TensorMap) -> TimeVector:
        """A zero vector with the names and shapes of ``other``."""
        tensors = other.tensors if isinstance(other, TimeVector) else other
        return cls({n: torch.zeros(t.shape, dtype=torch.float32) for n, t in tensors.items()})

    # ------------------------------------------------------------------ container protocol

    @property
    def names(self) -> list[str]:
        """Tensor names in stored order."""
        return list(self.tensors)

    @property
    def n_params(self) -> int:
        """Number of scalar entries over all tensors."""
        return sum(t.numel() for t in self.tensors.values())

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def items(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.tensors.items()

    def subset(self, names: Iterable[str]) -> TimeVector:
        """The named tensors only (e.g. one parameter group)."""
        names = list(names)
        for name in names:
            if name not in self.tensors:
                raise VectorError(f"vector has no tensor {name!r}")
        return TimeVector({n: self.tensors[n] for n in names})

    def __repr__(self) -> str:
        return f"TimeVector(tensors={len(self.tensors)}, n_params={self.n_params})"

    # ------------------------------------------------------------------ arithmetic

    def _check_compatible(self, other: TimeVector, op: str) -> None:
        if not isinstance(other, TimeVector):
            raise TypeError(f"cannot {op} a TimeVector and a {type(other).__name__}")
        _check_same_layout(self.tensors, other.tensors, op)

    def __add__(self, other: TimeVector) -> TimeVector:
        if not isinstance(other, TimeVector):
            return NotImplemented
        self._check_compatible(other, "add")
        return TimeVector({n: t + other.tensors[n] for n, t in self.tensors.items()})

    def __sub__(self, other: TimeVector) -> TimeVector:
        if not isinstance(other, TimeVector):
            return NotImplemented
        self._check_compatible(other, "subtract")
        return TimeVector({n: t - other.tensors[n] for n, t in self.tensors.items()})

    def __neg__(self) -> TimeVector:
        return TimeVector({n: -t for n, t in self.tensors.items()})

    def __mul__(self, scale: Scalar) -> TimeVector:
        if not _is_scalar(scale):
            return NotImplemented
        s = _as_float(scale)
        return TimeVector({n: t * s for n, t in self.tensors.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale: Scalar) -> TimeVector:
        if not _is_scalar(scale):
            return NotImplemented
        return self * (1.0 / _as_float(scale))

    # ------------------------------------------------------------------ reductions

    def dot(self, other: TimeVector) -> float:
        """Inner product over all tensors flattened and concatenated, accumulated in float64."""
        if not isinstance(other, TimeVector) and hasattr(other, "factors"):  # a LowRankVector: exact from its factors
            return other.dot(self)
        self._check_compatible(other, "take the dot product of")
        return sum(dot64(a, other.tensors[name]) for name, a in self.tensors.items())

    def norm(self) -> float:
        """L2 norm over all tensors (see :func:`sum_of_squares` for the accumulation)."""
        return math.sqrt(sum(sum_of_squares(t) for t in self.tensors.values()))

    def cosine(self, other: TimeVector) -> float:
        """Cosine similarity over all tensors flattened and concatenated (ARCHITECTURE §1)."""
        na, nb = self.norm(), other.norm()
        if na == 0.0 or nb == 0.0:
            raise VectorError("cosine of a zero vector is undefined")
        return self.dot(other) / (na * nb)

    def equal(self, other: TimeVector) -> bool:
        """Same names, shapes and bit-identical values."""
        if self.names != other.names:
            return False
        return all(torch.equal(t, other.tensors[n]) for n, t in self.tensors.items())

    def check_finite(self, label: str = "vector") -> None:
        """Raise :class:`VectorError` naming ``label`` and the first tensor holding NaN/Inf."""
        for name, tensor in self.tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                n_bad = int((~torch.isfinite(tensor)).sum())
                raise VectorError(f"{label}: tensor {name!r} has {n_bad} NaN/Inf value(s)")


# ---------------------------------------------------------------------- float64 reductions

_CHUNK = 1 << 16
_ROW = 4096


def dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """``⟨a, b⟩`` of two same-size tensors with float64 products and sums.

    Works through 64 K-element chunks copied into two reused float64 buffers: converting a whole
    tensor to float64 would allocate (and page-fault) 2× its size for every call.
    """
    fa, fb = a.reshape(-1), b.reshape(-1)
    n = fa.numel()
    if n <= _CHUNK:
        return float(torch.dot(fa.double(), fb.double()))
    buf_a = torch.empty(_CHUNK, dtype=torch.float64)
    buf_b = torch.empty(_CHUNK, dtype=torch.float64)
    total = 0.0
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        ca, cb = buf_a[:m], buf_b[:m]
        ca.copy_(fa[start : start + m])
        cb.copy_(fb[start : start + m])
        total += float(torch.dot(ca, cb))
    return total


def sum_of_squares(t: torch.Tensor) -> float:
    """``Σ t²`` over a tensor: fp32 norms of 4096-element rows, squared and summed in float64.

    About 100× faster than a float64 cast on a shared CPU, relative error ≈ 1e-9 (rows are short,
    the long sum is float64); tensors under 4096 elements are done entirely in float64. NaN/Inf
    propagate, so a non-finite result means a non-finite entry (or, for |x| > 1e19, an fp32
    overflow of a square: the caller re-checks with :func:`torch.isfinite`).
    """
    flat = t.reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    m = flat.numel() // _ROW * _ROW
    total = 0.0
    if m:
        rows = torch.linalg.vector_norm(flat[:m].view(-1, _ROW), dim=1)
        total = float(rows.double().square().sum())
    if m < flat.numel():
        rest = flat[m:].double()
        total += float(torch.dot(rest, rest))
    return total


# ---------------------------------------------------------------------- module functions


def _more(items: Sequence[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _check_same_layout(a: TensorMap, b: TensorMap, op: str) -> None:
    if a.keys() != b.keys():
        only_a = [n for n in a if n not in b]
        only_b = [n for n in b if n not in a]
        name = only_a[0] if only_a else only_b[0]
        side = "first" if only_a else "second"
        raise VectorError(f"cannot {op} vectors: tensor {name!r} is only in the {side}" + _more(only_a + only_b))
    for name, t in a.items():
        if tuple(t.shape) != tuple(b[name].shape):
            raise VectorError(
                f"cannot {op} vectors: tensor {name!r} has shapes {tuple(t.shape)} and {tuple(b[name].shape)}"
            )


# ---------------------------------------------------------------------- patching a live model


class WeightPatcher:
    """Put ``θ_pre + Σ cᵢ·τᵢ`` into a model in place; restore ``θ_pre`` bit for bit.

    At construction the patcher keeps ONE host copy of the model's floating-point parameters (in
    their own dtype, pinned when the model is on CUDA): that is the only full copy, so an evaluation
    actor holds one model on its device plus one base in host memory, whatever the number of
    vectors it evaluates. Every write goes tensor by tensor: the sum is formed in fp32 on the
    parameter's device (one temporary the size of the largest tensor) and rounded once into the
    parameter's dtype. :meth:`restore` copies the saved bytes back, so it is exact.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._params: dict[str, nn.Parameter] = {
            name: p for name, p in model.named_parameters() if p.dtype.is_floating_point
        }
        self._base: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, p in self._params.items():
                pin = p.is_cuda
                host = torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=pin)
                host.copy_(p.detach())
                self._base[name] = host
        self._dirty: set[str] = set()
        self._fingerprint: str | None = None
        logger.debug("WeightPatcher holds a host copy of %d tensors", len(self._base))

    @property
    def names(self) -> list[str]:
        return list(self._params)

    @property
    def base(self) -> dict[str, torch.Tensor]:
        """The host copy of the base parameters (do not modify)."""
        return self._base

    def fingerprint(self) -> str:
        """:func:`timevec.data.models.fingerprint` of the saved base (compare with the store's)."""
        if self._fingerprint is None:
            from timevec.data.models import (
                fingerprint,  # deferred: timevec.data.models imports transformers
            )

            self._fingerprint = fingerprint(self._base)
        return self._fingerprint

    def _check_delta(self, delta: TensorMap, label: str) -> None:
        if hasattr(delta, "factors"):  # a LowRankVector (timevec.weights.lowrank): check its layout, not tensors
            shapes = delta.shapes  # type: ignore[attr-defined]  # LowRankVector (imports this module)
            for name in delta:
                if name not in self._params:
                    raise VectorError(f"{label}: tensor {name!r} is not a floating-point parameter of the model")
                if tuple(shapes[name]) != tuple(self._params[name].shape):
                    raise VectorError(
                        f"{label}: tensor {name!r} has shape {tuple(shapes[name])}, "
                        f"the model's parameter has {tuple(self._params[name].shape)}"
                    )
            return
        for name, tensor in delta.items():
            if name not in self._params:
                raise VectorError(f"{label}: tensor {name!r} is not a floating-point parameter of the model")
            if tuple(tensor.shape) != tuple(self._params[name].shape):
                raise VectorError(
                    f"{label}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                    f"the model's parameter has {tuple(self._params[name].shape)}"
                )

    def apply(self, vector: TimeVector | TensorMap, scale: float = 1.0) -> nn.Module:
        """Set the model to ``base + scale·vector`` (parameters the vector lacks stay at base)."""
        return self.apply_combination([(scale, vector)])

    def apply_combination(
        self, terms: Sequence[tuple[Scalar, TimeVector | TensorMap]], merge: MergeMethod | None = None
    ) -> nn.Module:
        """Set the model to ``base + Σ cᵢ·τᵢ`` without materialising the sum.

        Each parameter is computed as ``fp32(base) + Σ cᵢ·fp32(τᵢ)`` on its device, one tensor at a
        time, whatever the model was set to before (an earlier patch is overwritten, not added to).

        ``merge`` (:class:`timevec.weights.merging.MergeMethod`) other than task arithmetic replaces the sum
        by that merge of the terms with a non-zero coefficient, parameter by parameter
        (:func:`timevec.weights.merging.merge_tensor`, on the CPU, zeros for a term that lacks the tensor),
        when there are at least two such terms; one term stays exact (why: :mod:`timevec.weights.merging`).
        """
        maps: list[tuple[float, TensorMap]] = []
        for i, (coef, vec) in enumerate(terms):
            if not _is_scalar(coef):
                raise TypeError(f"term {i}: coefficient must be a number, got {type(coef).__name__}")
            # A LowRankVector is its own map: ``n in m``, ``m.get(n)`` (one module densified) and
            # ``m.add_to`` (one addmm_ per factor) are all the patcher uses (timevec.weights.lowrank).
            tensors = vec.tensors if isinstance(vec, TimeVector) else vec
            self._check_delta(tensors, f"term {i}")
            maps.append((_as_float(coef), tensors))
        touched: list[str] = [n for n in self._params if any(n in m for _, m in maps)]
        touched_set = set(touched)
        live = [(coef, tensors) for coef, tensors in maps if coef != 0.0]
        if merge is not None and not merge.is_task_arithmetic and len(live) >= 2:
            return self._apply_merged(live, touched, merge)
        with torch.no_grad():
            self._reset_untouched(touched_set)
            for name in touched:
                param = self._params[name]
                work = self._base[name].to(device=param.device, dtype=torch.float32, non_blocking=True)
                if work.data_ptr() == self._base[name].data_ptr():
                    work = work.clone()
                for coef, tensors in maps:
                    if hasattr(tensors, "add_to"):  # low-rank: c·s·B·A added module by module, never densified
                        tensors.add_to(name, work, coef)
                        continue
                    delta = tensors.get(name)
                    if delta is None or coef == 0.0:
                        continue
                    work.add_(delta.to(device=param.device, dtype=torch.float32), alpha=coef)
                # Mark dirty before writing: if the copy fails half way, restore() still fixes it.
                self._dirty.add(name)
                param.copy_(work)
                del work
        return self.model

    def _reset_untouched(self, touched: set[str]) -> None:
        """Parameters a previous combination wrote and this one does not touch go back to θ_pre
        (the touched ones are overwritten and marked dirty again as they are written)."""
        for name in sorted(self._dirty - touched):
            self._params[name].copy_(self._base[name])
        self._dirty.clear()

    def _apply_merged(self, maps: list[tuple[float, TensorMap]], touched: list[str], merge: MergeMethod) -> nn.Module:
        """``base + merge(terms)`` one parameter at a time: n_terms tensors of that parameter in memory."""
        from timevec.weights.merging import merge_tensor  # deferred: the default path needs no peft

        coefs = [coef for coef, _ in maps]
        touched_set = set(touched)
        with torch.no_grad():
            self._reset_untouched(touched_set)
            for name in touched:
                param = self._params[name]
                zeros: torch.Tensor | None = None
                tensors = []
                for _, tensor_map in maps:
                    delta = tensor_map.get(name)
                    if delta is None:
                        zeros = torch.zeros(param.shape, dtype=torch.float32) if zeros is None else zeros
                        delta = zeros
                    tensors.append(delta)
                merged = merge_tensor(merge, tensors, coefs, name)
                del tensors, zeros
                work = self._base[name].to(device=param.device, dtype=torch.float32, non_blocking=True)
                if work.data_ptr() == self._base[name].data_ptr():
                    work = work.clone()
                work.add_(merged.to(device=param.device))
                self._dirty.add(name)
                param.copy_(work)
                del work, merged
        return self.model

    def restore(self) -> nn.Module:
        """Copy every saved base tensor back into the model (bit-exact)."""
        with torch.no_grad():
            for name, param in self._params.items():
                param.copy_(self._base[name])
        self._dirty.clear()
        return self.model

    @contextlib.contextmanager
    def applied(self, vector: TimeVector | TensorMap, scale: float = 1.0) -> Iterator[nn.Module]:
        """``with patcher.applied(tau, 0.5) as model: ...`` — restored on exit, even on error."""
        try:
            yield self.apply(vector, scale)
        finally:
            self.restore()

    @contextlib.contextmanager
    def applied_combination(
        self, terms: Sequence[tuple[Scalar, TimeVector | TensorMap]], merge: MergeMethod | None = None
    ) -> Iterator[nn.Module]:
        """Context-manager form of :meth:`apply_combination`."""
        try:
            yield self.apply_combination(terms, merge)
        finally:
            self.restore()
