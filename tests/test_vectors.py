"""TimeVector arithmetic and WeightPatcher, checked against dense float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from timevec.adapt.analogy import analogy_terms
from timevec.adapt.interpolation import interpolation_terms
from timevec.data.models import fingerprint
from timevec.weights.vectors import TimeVector, VectorError, WeightPatcher


def _rand(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


SHAPES = {"emb.weight": (11, 4), "lin.weight": (3, 4), "lin.bias": (3,), "norm.weight": (4,)}


def _vec(seed: int) -> TimeVector:
    return TimeVector(_rand(SHAPES, seed))


def _dense(v: TimeVector) -> np.ndarray:
    return np.concatenate([v[n].numpy().astype(np.float64).ravel() for n in v.names])


# ---------------------------------------------------------------------------- TimeVector


def test_between_is_finetuned_minus_base_over_float_tensors() -> None:
    base = _rand(SHAPES, 0) | {"position_ids": torch.arange(4)}
    ft = {n: t + 0.5 for n, t in base.items() if t.dtype.is_floating_point} | {"position_ids": torch.arange(4)}
    tau = TimeVector.between(ft, base)
    assert tau.names == list(SHAPES)  # the integer buffer is not part of a time vector
    for name in SHAPES:
        assert tau[name].dtype == torch.float32
        assert torch.allclose(tau[name], torch.full(SHAPES[name], 0.5), atol=1e-6)
    assert tau.n_params == sum(int(np.prod(s)) for s in SHAPES.values())


def test_between_bf16_weights_give_fp32_vector() -> None:
    base = {n: t.bfloat16() for n, t in _rand(SHAPES, 0).items()}
    ft = {n: (t.float() + 1).bfloat16() for n, t in base.items()}
    tau = TimeVector.between(ft, base)
    assert all(t.dtype == torch.float32 for t in tau.tensors.values())
    assert torch.equal(tau["lin.bias"], ft["lin.bias"].float() - base["lin.bias"].float())


def test_between_names_the_mismatching_tensor() -> None:
    base = _rand(SHAPES, 0)
    missing = {n: t for n, t in base.items() if n != "lin.bias"}
    with pytest.raises(VectorError, match="lin.bias"):
        TimeVector.between(missing, base)
    extra = base | {"head.weight": torch.zeros(2)}
    with pytest.raises(VectorError, match="head.weight"):
        TimeVector.between(extra, base)
    bad_shape = base | {"lin.weight": torch.zeros(4, 3)}
    with pytest.raises(VectorError, match=r"lin.weight.*\(4, 3\)"):
        TimeVector.between(bad_shape, base)


def test_operators_match_dense_reference() -> None:
    a, b = _vec(1), _vec(2)
    da, db = _dense(a), _dense(b)
    np.testing.assert_allclose(_dense(a + b), da + db, rtol=1e-6)
    np.testing.assert_allclose(_dense(a - b), da - db, rtol=1e-6)
    np.testing.assert_array_equal(_dense(-a), -da)
    np.testing.assert_allclose(_dense(2.5 * a), 2.5 * da, rtol=1e-6)
    np.testing.assert_allclose(_dense(a * 2.5), 2.5 * da, rtol=1e-6)
    np.testing.assert_allclose(_dense(a / 4), da / 4, rtol=1e-6)
    # operands are untouched
    assert np.array_equal(_dense(a), da)


def test_reductions_match_float64_reference() -> None:
    a, b = _vec(3), _vec(4)
    da, db = _dense(a), _dense(b)
    assert a.norm() == pytest.approx(np.linalg.norm(da), rel=1e-12)
    assert a.dot(b) == pytest.approx(da @ db, rel=1e-12)
    assert a.cosine(b) == pytest.approx(da @ db / np.linalg.norm(da) / np.linalg.norm(db), rel=1e-12)
    assert a.cosine(a) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(VectorError, match="zero"):
        a.cosine(TimeVector.zeros_like(a))


def test_mismatched_vectors_are_refused() -> None:
    a = _vec(1)
    b = TimeVector({n: t for n, t in _vec(2).items() if n != "norm.weight"})
    with pytest.raises(VectorError, match="norm.weight"):
        a + b
    c = TimeVector(_vec(2).tensors | {"lin.bias": torch.zeros(5)})
    with pytest.raises(VectorError, match="lin.bias"):
        a.dot(c)


def test_check_finite_names_the_tensor() -> None:
    v = _vec(1)
    v.check_finite("lm/2014")
    v.tensors["lin.weight"][0, 1] = float("nan")
    with pytest.raises(VectorError, match=r"lm/2014.*lin.weight"):
        v.check_finite("lm/2014")


def test_interpolation_and_analogy_terms_are_the_papers_formulas() -> None:
    """The live paths build coefficient terms; patched into a model they give the dense formulas."""
    a, b, c = _vec(5), _vec(6), _vec(7)
    da, db, dc = _dense(a), _dense(b), _dense(c)

    def dense(terms) -> np.ndarray:
        return sum(float(coef) * _dense(vec) for coef, vec in terms)

    for alpha in (0.0, 0.3, 1.0):
        terms = interpolation_terms(a, b, alpha)
        np.testing.assert_allclose(dense(terms), (1 - alpha) * da + alpha * db, rtol=1e-6, atol=1e-7)
    assert [c for c, _ in interpolation_terms(a, b, 0.0)] == [1.0, 0.0]  # the ends are exact
    assert [c for c, _ in interpolation_terms(a, b, 1.0)] == [0.0, 1.0]
    ref = 1.4 * da + 0.3 * db - 0.2 * dc
    np.testing.assert_allclose(dense(analogy_terms(1.4, a, 0.3, b, 0.2, c)), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- WeightPatcher


class Tiny(nn.Module):
    """Embedding tied to the output head, a layer norm and an MLP: tied weights must count once."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(13, 8)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 13, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        return self.head(h + self.mlp(self.norm(h)))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _delta_for(model: nn.Module, seed: int) -> TimeVector:
    g = torch.Generator().manual_seed(seed)
    return TimeVector({n: 0.01 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()})


def test_apply_then_restore_is_bit_exact() -> None:
    torch.manual_seed(0)
    model = Tiny()
    before = _params(model)
    ids = torch.tensor([[1, 2, 3, 4]])
    out_before = model(ids).detach()
    patcher = WeightPatcher(model)
    assert fingerprint(patcher.base) == fingerprint(before)
    # the host copy shares no storage with the live parameters
    assert all(patcher.base[n].data_ptr() != p.data_ptr() for n, p in model.named_parameters())
    tau = _delta_for(model, 1)
    patcher.apply(tau, scale=0.7)
    for name, p in model.named_parameters():
        expected = before[name] + 0.7 * tau[name]
        assert torch.allclose(p, expected, atol=1e-7)
    assert not torch.equal(model(ids), out_before)
    patcher.restore()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert torch.equal(model(ids), out_before)
    assert model.head.weight is model.emb.weight  # tying survives


def test_applied_context_restores_even_on_error() -> None:
    model = Tiny()
    before = _params(model)
    patcher = WeightPatcher(model)
    with pytest.raises(RuntimeError, match="boom"):
        with patcher.applied(_delta_for(model, 2), 2.0):
            assert not torch.equal(model.mlp[0].weight, before["mlp.0.weight"])
            raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_apply_replaces_rather_than_accumulates() -> None:
    model = Tiny()
    before = _params(model)
    patcher = WeightPatcher(model)
    a, b = _delta_for(model, 3), _delta_for(model, 4)
    patcher.apply(a)
    patcher.apply(b, 0.5)
    for name, p in model.named_parameters():
        assert torch.allclose(p, before[name] + 0.5 * b[name], atol=1e-7)
    # a partial delta resets everything it does not cover to the base
    patcher.apply({"mlp.0.bias": torch.ones(16)})
    for name, p in model.named_parameters():
        expected = before[name] + 1 if name == "mlp.0.bias" else before[name]
        assert torch.equal(p, expected), name


def test_apply_combination_equals_dense_reference() -> None:
    model = Tiny()
    before = _params(model)
    patcher = WeightPatcher(model)
    task_j, lm_k, lm_j = (_delta_for(model, s) for s in (5, 6, 7))
    terms = [(1.4, task_j), (0.3, lm_k), (-0.2, lm_j)]
    with patcher.applied_combination(terms):
        for name, p in model.named_parameters():
            ref = (
                before[name].double()
                + 1.4 * task_j[name].double()
                + 0.3 * lm_k[name].double()
                - 0.2 * lm_j[name].double()
            )
            assert torch.allclose(p.double(), ref, atol=1e-6), name
        patched = _params(model)
    combined = {n: 1.4 * task_j[n] + 0.3 * lm_k[n] - 0.2 * lm_j[n] for n in task_j}
    with patcher.applied(combined):  # same as materialising the analogy vector first
        for name, p in model.named_parameters():
            assert torch.allclose(p, patched[name], atol=1e-6)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_patcher_refuses_foreign_tensors() -> None:
    patcher = WeightPatcher(Tiny())
    with pytest.raises(VectorError, match="nope"):
        patcher.apply({"nope": torch.zeros(1)})
    with pytest.raises(VectorError, match="mlp.0.bias"):
        patcher.apply({"mlp.0.bias": torch.zeros(3)})


def test_bf16_model_restores_bit_exact() -> None:
    model = Tiny().to(torch.bfloat16)
    before = _params(model)
    patcher = WeightPatcher(model)
    patcher.apply(_delta_for(model, 8), 3.0)
    assert model.mlp[0].weight.dtype == torch.bfloat16
    patcher.restore()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_gpt2_between_apply_restore() -> None:
    import transformers
    cfg = transformers.GPT2Config(
        vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        logits_base = model(ids).logits
    # "fine-tune": perturb, take τ, then patch a fresh copy of the base
    finetuned = {n: p + 0.01 * torch.randn_like(p) for n, p in base.items()}
    tau = TimeVector.between(finetuned, base)
    patcher = WeightPatcher(model)
    with patcher.applied(tau) as patched:
        for name, p in patched.named_parameters():
            assert torch.allclose(p, finetuned[name], atol=1e-6), name
        with torch.no_grad():
            assert not torch.allclose(patched(ids).logits, logits_base)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits_base)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_patcher_on_cuda_keeps_host_base() -> None:
    model = Tiny().cuda()
    before = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    patcher = WeightPatcher(model)
    assert all(t.device.type == "cpu" for t in patcher.base.values())
    patcher.apply(_delta_for(model, 9))
    patcher.restore()
    assert all(torch.equal(p.cpu(), before[n]) for n, p in model.named_parameters())
