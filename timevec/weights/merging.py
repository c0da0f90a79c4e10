"""Merge methods for combinations of time vectors: task arithmetic, TIES, DARE, magnitude pruning.

One concept: how the terms ``(cᵢ, τᵢ)`` of a combination (a soup, an interpolation point, an
analogy, a forecast) become ONE delta for one parameter. :class:`MergeMethod` names the method and
its settings (config section ``merge:``, :class:`timevec.config.MergeConfig`); :func:`merge_tensor`
merges the terms' tensors of one parameter by calling the function of the same name in
``peft.utils.merge_utils`` (installed with peft; the functions are used, not re-written). The
:class:`~timevec.weights.vectors.WeightPatcher` calls it tensor by tensor, so memory stays at
n_terms × the largest tensor and a shard-by-shard merge equals the merge of the whole vectors
(ARCHITECTURE §10). Ray-free and store-free; peft is imported only when a non-default method runs.

What each method computes for one parameter, with the peft functions' semantics (``prune`` keeps
the top-``int(density·numel)`` entries by magnitude of EACH tensor of EACH term, so pruning is per
tensor, not over the whole vector; ``random`` pruning keeps each entry with probability
``density`` and divides by it):

- ``task_arithmetic``: Σ cᵢ·τᵢ. The patcher keeps its own fp32 path for it (bit-identical to
  timevec's behaviour before merge methods existed); ``merge_tensor`` calls peft's.
- ``magnitude_prune``: Σ cᵢ·prune(τᵢ). Convex weights give a convex combination of sparser vectors:
  the result is smaller in norm than task arithmetic's by roughly the pruned share.
- ``ties``: prune, elect a sign per entry from the pruned (unweighted) tensors — ``total``: the
  sign of Σ prune(τᵢ); ``frequency``: the sign most terms have — then the DISJOINT MERGE
  Σ_{agreeing i} cᵢ·prune(τᵢ) / #agreeing. The division averages the agreeing entries, so the
  weights act as a scale on that average: with the convex weights of soups and interpolation
  (Σ cᵢ = 1) an entry where all n terms agree comes out as (Σ cᵢ·τᵢ)/n, n times smaller than task
  arithmetic's (the TIES paper uses weights 1 and a separate λ). The comparison table
  (:mod:`timevec.adapt.merge_comparison`) shows the effect as measured; it is not corrected here.
- ``dare_linear``: Σ cᵢ·random_prune(τᵢ)/density: task arithmetic in expectation, noisy per entry.
- ``dare_ties``: random pruning with rescaling, then TIES' sign election and disjoint merge.

Signed weights. peft elects TIES' sign on the tensors as given, before the weights multiply them.
An analogy's −α₃·τ_lm(j) would then vote with the sign of τ_lm(j) although it pushes the other
way. :func:`merge_tensor` therefore passes each term as ``(|cᵢ|, sign(cᵢ)·τᵢ)``: the vote is on
the direction each term actually moves the weights. For task_arithmetic, magnitude_prune and
dare_linear this changes nothing, bit for bit (pruning is symmetric in sign, DARE's mask does not
look at values, and (−τ)·|c| = τ·c exactly); for soups and interpolation all weights are ≥ 0 and
the inputs are peft's unchanged.

DARE is random. Its masks come from torch's global CPU generator; :func:`merge_tensor` seeds it
with :func:`tensor_seed` (sha256 of ``method.seed`` and the PARAMETER NAME, not Python's salted
``hash``) inside ``torch.random.fork_rng``, so the caller's random state is untouched and the same
combination (same terms, same order, same seed) gives the same weights in every process, on every
evaluation device (merging runs on the CPU, where the vectors are) and whether the vector is merged
whole or shard by shard. Different parameters get independent masks.

Which combinations are merged. A method other than task arithmetic applies only to combinations of
≥ 2 terms with a non-zero coefficient (the patcher decides, :meth:`WeightPatcher.apply_combination`);
a single vector, a single scaled vector (``c·τ``) and the base stay exact. A single term under TIES
or DARE is NOT the vector (TIES of one term is its magnitude-pruned copy, DARE's a random
sparsification of it): applying the method there would change every cell of the all-pairs matrix
and every single-vector baseline (in-period oracle, latest, previous, the task vector scaled alone),
so a merge method would be compared against baselines it had itself altered. Keeping them exact
means the method changes only the combinations, and interpolation's α = 0 and α = 1 points (one
coefficient exactly 0) stay bit-identical to the end vectors' own cells. A term with coefficient 0
is dropped before merging: in TIES' disjoint mean it would still count as an agreeing term.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import torch
from pydantic import ValidationError

from timevec.config import MergeConfig, MergeMethodName, SignMethod
from timevec.errors import TimevecError

if TYPE_CHECKING:
    from timevec.config import ExperimentConfig

__all__ = [
    "METHODS",
    "SIGN_METHODS",
    "MergeError",
    "MergeMethod",
    "TASK_ARITHMETIC",
    "merge_tensor",
    "tensor_seed",
]

#: The merge methods, named as the functions of ``peft.utils.merge_utils``; the names are the config's
#: (:data:`timevec.config.MergeMethodName`, the foundation every package may import), each method is
#: declared once below (:data:`_REGISTRY`) and the two must agree (checked at import).
METHODS: tuple[str, ...] = get_args(MergeMethodName)
SIGN_METHODS: tuple[str, ...] = get_args(SignMethod)


@dataclass(frozen=True)
class _Declared:
    """One merge method: the :class:`MergeMethod` settings peft's function takes after (tensors, weights), in its
    argument order, and whether its masks are random (seeded per parameter by :func:`tensor_seed`)."""

    settings: tuple[str, ...] = ()
    random: bool = False


_REGISTRY: dict[str, _Declared] = {
    "task_arithmetic": _Declared(),
    "magnitude_prune": _Declared(("density",)),
    "ties": _Declared(("density", "majority_sign_method")),
    "dare_linear": _Declared(("density",), random=True),
    "dare_ties": _Declared(("density", "majority_sign_method"), random=True),
}
if set(_REGISTRY) != set(METHODS):
    raise ImportError(f"merge methods declared {sorted(_REGISTRY)} differ from the config's {sorted(METHODS)}")
#: How a setting appears in a method's label.
_LABELS = {"density": "density={:g}", "majority_sign_method": "sign={}"}


class MergeError(TimevecError, ValueError):
    """A merge method that cannot be used, or terms that cannot be merged (names the parameter)."""


@dataclass(frozen=True)
class MergeMethod:
    """A merge method and its settings (a value: hashable, comparable, cheap to pass to actors).

    ``density`` (0, 1] is the fraction of each tensor kept by the pruning methods (ignored by task
    arithmetic), ``majority_sign_method`` TIES' sign election (``total`` or ``frequency``), ``seed``
    the seed DARE's masks are derived from (:func:`tensor_seed`).
    """

    name: str = MergeConfig.model_fields["method"].default
    density: float = MergeConfig.model_fields["density"].default
    majority_sign_method: str = MergeConfig.model_fields["majority_sign_method"].default
    seed: int = 0  # the config's default (None) means the experiment's seed: MergeMethod.from_config

    def __post_init__(self) -> None:
        # One owner of these rules: the config section (timevec.config.MergeConfig) validates them here too.
        try:
            section = MergeConfig.model_validate({"method": self.name, "density": self.density,
                                                  "majority_sign_method": self.majority_sign_method, "seed": self.seed})
        except ValidationError as exc:
            problems = "; ".join(f"merge.{'.'.join(map(str, e['loc']))} {e['input']!r}: {e['msg']}" for e in exc.errors())
            raise MergeError(problems) from None
        object.__setattr__(self, "density", float(section.density))

    @classmethod
    def from_config(cls, config: ExperimentConfig | MergeConfig, default_seed: int = 0) -> MergeMethod:
        """From an experiment config (``merge.seed`` unset: the experiment's ``seed``) or from its
        ``merge`` section alone (``merge.seed`` unset: ``default_seed``)."""
        if isinstance(config, MergeConfig):
            section = config
        else:
            section, default_seed = config.merge, config.seed
        seed = section.seed if section.seed is not None else default_seed
        return cls(section.method, section.density, section.majority_sign_method, int(seed))

    @property
    def is_task_arithmetic(self) -> bool:
        """Plain Σ cᵢ·τᵢ (the patcher's exact fp32 path; no peft call)."""
        return self.name == "task_arithmetic"

    @property
    def is_random(self) -> bool:
        return _REGISTRY[self.name].random

    @property
    def label(self) -> str:
        """The method with the settings that change its result, e.g. ``ties(density=0.5, sign=total)``."""
        declared = _REGISTRY[self.name]
        parts = [_LABELS[setting].format(getattr(self, setting)) for setting in declared.settings]
        if declared.random:
            parts.append(f"seed={self.seed}")
        return f"{self.name}({', '.join(parts)})" if parts else self.name

    def __str__(self) -> str:
        return self.label


TASK_ARITHMETIC = MergeMethod()


def tensor_seed(seed: int, name: str) -> int:
    """The seed of DARE's mask for parameter ``name``: the first 63 bits of sha256(seed, name).

    A pure function of its arguments (no salted ``hash``), so every process, worker and shard
    derives the same seed for the same parameter.
    """
    digest = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def _peft_function(name: str):
    from peft.utils import merge_utils  # deferred: importing peft costs seconds

    return getattr(merge_utils, name)


def merge_tensor(method: MergeMethod, tensors: Sequence[torch.Tensor], weights: Sequence[float], name: str) -> torch.Tensor:
    """The merged delta of ONE parameter: peft's ``method.name`` over the terms' tensors.

    ``tensors[i]`` is term i's tensor of parameter ``name`` (zeros where the term's vector lacks
    it: the caller's job), ``weights[i]`` its coefficient. Returns a new fp32 CPU tensor of the
    same shape; the inputs are not modified. Weights are passed as ``|cᵢ|`` with the sign folded
    into the tensor (see the module docstring); DARE is seeded by :func:`tensor_seed` of ``name``
    without touching the caller's random state.
    """
    if not tensors:
        raise MergeError(f"{name}: nothing to merge (no terms)")
    if len(tensors) != len(weights):
        raise MergeError(f"{name}: {len(tensors)} tensors but {len(weights)} weights")
    shape = tuple(tensors[0].shape)
    for i, tensor in enumerate(tensors):
        if tuple(tensor.shape) != shape:
            raise MergeError(f"{name}: term {i} has shape {tuple(tensor.shape)}, term 0 has {shape}")
    coefs = [float(w) for w in weights]
    if not all(math.isfinite(c) for c in coefs):
        raise MergeError(f"{name}: weights must be finite, got {coefs}")
    task_tensors = []
    for tensor, coef in zip(tensors, coefs):
        t = tensor.detach().to(device="cpu", dtype=torch.float32)
        task_tensors.append(-t if coef < 0 else t)
    w = torch.tensor([abs(c) for c in coefs], dtype=torch.float32)
    fn = _peft_function(method.name)
    with warnings.catch_warnings():
        # peft warns once per tensor that density 1 prunes nothing; that is what density 1 means
        warnings.filterwarnings("ignore", message=r"The density .* no pruning will be performed")
        declared = _REGISTRY[method.name]
        settings = [getattr(method, setting) for setting in declared.settings]
        if not declared.random:
            return fn(task_tensors, w, *settings)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tensor_seed(method.seed, name))
            return fn(task_tensors, w, *settings)
