"""Low-rank (LoRA-factor) time vectors: the factor math against a float64 dense reference, the
store's low-rank kind (round trip, manifest kind, old dense stores unchanged, corruption), mixed
combinations applied by the patcher, and a real tiny LoRA run stored as its factors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import timevec.demo
from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.data.models import float_parameters
from timevec.store import StoreError, VectorStore
from timevec.train.loop import prepare_base
from timevec.train.plan import RunSpec
from timevec.train.run import RunJob
from timevec.weights.lowrank import Factor, LowRankVector, dot, gram
from timevec.weights.vectors import TimeVector, WeightPatcher

TINY = Path(timevec.demo.__file__).parent / "tiny.yaml"
SHAPES = {"0.weight": (6, 5), "0.bias": (6,), "1.weight": (4, 6), "1.bias": (4,)}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Linear(6, 4))


def _vectors() -> list[TimeVector | LowRankVector]:
    """Two dense vectors and three low-rank ones: different ranks, scales, dense parts and zeros."""
    g = torch.Generator().manual_seed(1)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    d1 = TimeVector({n: rnd(*s) for n, s in SHAPES.items()})
    d2 = TimeVector({n: rnd(*s) for n, s in SHAPES.items()})
    l1 = LowRankVector(
        {"0.weight": Factor(rnd(6, 2), rnd(2, 5), 0.5), "1.weight": Factor(rnd(4, 3), rnd(3, 6), 4.0)},
        {"1.bias": rnd(4)}, SHAPES,
    )
    l2 = LowRankVector({"0.weight": Factor(rnd(6, 3), rnd(3, 5), 2.0)}, {}, SHAPES)
    l3 = LowRankVector({"1.weight": Factor(rnd(4, 1), rnd(1, 6), -1.5)}, {"0.weight": rnd(6, 5)}, SHAPES)
    return [d1, l1, d2, l2, l3]


def _reference(vec: TimeVector | LowRankVector) -> dict[str, torch.Tensor]:
    """The dense delta per parameter in float64, factors multiplied out in float64."""
    if isinstance(vec, TimeVector):
        return {n: t.double() for n, t in vec.items()}
    out = {}
    for name, shape in SHAPES.items():
        part = vec.part(name)
        if part is None:
            out[name] = torch.zeros(shape, dtype=torch.float64)
        elif isinstance(part, Factor):
            out[name] = part.B.double() @ part.A.double() * part.scale
        else:
            out[name] = part.double()
    return out


def _flat(vec: TimeVector | LowRankVector) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in _reference(vec).values()])


def test_factor_math_matches_the_float64_dense_reference() -> None:
    vectors = _vectors()
    ref = torch.stack([_flat(v) for v in vectors]).numpy()
    expected = ref @ ref.T
    got = gram(vectors)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    d1, l1, _, l2, l3 = vectors
    for a, b in [(l1, l2), (l1, d1), (d1, l3), (l2, l3)]:
        want = float(_flat(a) @ _flat(b))
        assert dot(a, b) == pytest.approx(want, rel=1e-12)
        assert a.dot(b) == pytest.approx(want, rel=1e-12)  # TimeVector.dot accepts a low-rank vector too
        want_cos = want / float(_flat(a).norm() * _flat(b).norm())
        assert a.cosine(b) == pytest.approx(want_cos, rel=1e-12)
    assert l1.norm() == pytest.approx(float(_flat(l1).norm()), rel=1e-12)
    dense = l1.to_dense()  # the slow path: a TimeVector equal to the reference (fp32)
    for name, t in _reference(l1).items():
        torch.testing.assert_close(dense[name].double(), t, rtol=1e-6, atol=1e-6)


def test_apply_combination_of_mixed_vectors_equals_the_dense_reference() -> None:
    model = _model()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    d1, l1, d2, l2, l3 = _vectors()
    terms = [(0.5, l1), (-0.3, d1), (1.2, l2), (0.7, l3), (0.0, d2)]
    patcher = WeightPatcher(model)
    patcher.apply_combination(terms)
    for name, p in model.named_parameters():
        want = base[name].double() + sum(c * _reference(v)[name] for c, v in terms)
        torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-5)
    patcher.apply_combination([(1.0, l2)])  # parameters l2 does not touch go back to θ_pre
    assert torch.equal(model[1].weight, base["1.weight"])
    patcher.restore()
    for name, p in model.named_parameters():
        assert torch.equal(p, base[name]), name


@pytest.fixture
def toy_store(tmp_path: Path) -> VectorStore:
    """A store over the toy model's base, 3 shards (so the Gram streams over several)."""
    store = VectorStore(str(tmp_path / "store"), target_shard_bytes=100)
    store.init("toy", {n: p.detach() for n, p in _model().named_parameters()})
    assert store.num_shards == 3
    return store


def test_store_round_trip_kind_and_dense_vectors_unchanged(toy_store: VectorStore) -> None:
    vectors = _vectors()
    keys = [("lm", str(2012 + i)) for i in range(len(vectors))]
    for (task, period), vec in zip(keys, vectors):
        toy_store.put_vector(task, period, vec, manifest={"kind": "test"})
    low = toy_store.manifest("lm", "2013")
    dense = toy_store.manifest("lm", "2012")
    shard = toy_store.info()["shard_plan"]["tensors"]["1.weight"]
    assert low["vector_kind"] == "lowrank" and low["factors"]["1.weight"] == {"rank": 3, "scale": 4.0, "shard": shard}
    assert low["l2_norm"] == pytest.approx(vectors[1].norm(), rel=1e-12)
    # A dense vector is written exactly as before kinds existed: no kind field, every tensor in its shard.
    assert "vector_kind" not in dense
    assert sorted(n for s in dense["shards"] for n in s["tensors"]) == sorted(SHAPES)
    native = toy_store.get_native("lm", "2013")
    assert isinstance(native, LowRankVector) and set(native.factors) == {"0.weight", "1.weight"}
    assert torch.equal(native.factors["1.weight"].A, vectors[1].factors["1.weight"].A)
    assert isinstance(toy_store.get_native("lm", "2012"), TimeVector)
    slow = toy_store.get_vector("lm", "2013")  # dense TimeVector for callers that need one
    assert isinstance(slow, TimeVector) and slow.equal(vectors[1].to_dense())
    ref = torch.stack([_flat(v) for v in vectors]).numpy()
    np.testing.assert_allclose(toy_store.gram(keys), ref @ ref.T, rtol=1e-10, atol=1e-10)
    assert toy_store.verify() == []
    low_bytes = sum(s["bytes"] for s in toy_store.manifest("lm", "2015")["shards"])
    assert low_bytes < sum(s["bytes"] for s in dense["shards"])


def test_a_corrupt_factor_shard_is_detected(toy_store: VectorStore) -> None:
    vectors = _vectors()
    toy_store.put_vector("lm", "2012", vectors[0])
    toy_store.put_vector("lm", "2013", vectors[1])
    path = Path(toy_store.root) / "vectors/lm/2013/shard-00000.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte inside a factor
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"vector lm/2013: shard .*shard-00000.*xxh3_128 mismatch"):
        toy_store.get_native("lm", "2013")
    with pytest.raises(StoreError, match="lm/2013"):
        toy_store.gram([("lm", "2012"), ("lm", "2013")])
    problems = toy_store.verify()
    assert len(problems) == 1 and "lm/2013" in problems[0] and "shard-00000" in problems[0]


def test_a_tiny_lora_run_stores_factors_equal_to_its_merged_tau(tmp_path: Path) -> None:
    config = load_config(TINY, [
        f"store.url={tmp_path / 'store'}", "base.pretrain.steps=0", "training.steps=3",
        "training.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [c_attn], store: factors}",
    ])
    corpus = load_corpus(config.corpus)
    store = VectorStore.from_config(config.store)
    prepare_base(config, corpus, store)
    job = RunJob(config, store, corpus, RunSpec("lm", "2015", "year"))
    model, result = job.fit(None, None, torch.device("cpu"))
    # The run's merged dense τ, from the very model whose factors are stored.
    merged = TimeVector.between({n: p.detach() for n, p in float_parameters(model).items()}, job.base)
    job.finish(model, result, 0, None, result.tokens)
    manifest = store.manifest("lm", "2015")
    assert manifest["vector_kind"] == "lowrank" and manifest["run"]["kind"] == "lora_factors"
    native = store.get_native("lm", "2015")
    assert isinstance(native, LowRankVector) and native.factors and not native.dense
    assert all(n.endswith("attn.c_attn.weight") for n in native.factors)
    for name, t in merged.items():
        product = native.get(name)
        if product is None:
            assert not t.any(), f"{name} changed but is not a LoRA target"
        else:  # fp32 tolerance: the merge rounds θ_pre + s·B·A once, at the weights' magnitude
            atol = 4 * torch.finfo(torch.float32).eps * float(job.base[name].abs().max())
            torch.testing.assert_close(product, t, rtol=0, atol=atol)
    assert manifest["run"]["factor_max_rel_error"] < 1e-3
    assert store.gram([("lm", "2015")])[0, 0] == pytest.approx(merged.norm() ** 2, rel=1e-5)
    dense_bytes = 4 * merged.n_params
    assert sum(s["bytes"] for s in manifest["shards"]) < dense_bytes / 5
    json.dumps(manifest)  # the manifest is plain JSON


def test_a_lora_run_reads_only_what_it_trained_and_stores_the_full_difference(tmp_path: Path) -> None:
    """A LoRA run from θ_pre computes τ over the weights it can have changed (its adapters' targets),
    and what it stores (dense) equals θ_merged − θ_pre over EVERY weight, bit for bit; a full
    fine-tune compares every weight."""
    lora = "training.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [c_attn]}"
    config = load_config(TINY, [f"store.url={tmp_path / 'store'}", "base.pretrain.steps=0", "training.steps=3",
                                "store.dtype=float32", lora])
    corpus = load_corpus(config.corpus)
    store = VectorStore.from_config(config.store)
    prepare_base(config, corpus, store)
    job = RunJob(config, store, corpus, RunSpec("lm", "2015", "year"))
    model, result = job.fit(None, None, torch.device("cpu"))
    params = float_parameters(model)
    full = TimeVector.between({n: p.detach().clone() for n, p in params.items()}, job.base)
    changed = job._changed(model, params)
    assert changed is not None and 0 < len(changed) < len(full)
    assert all(n.endswith("attn.c_attn.weight") for n in changed)
    assert {n for n, t in full.items() if t.any()} <= changed
    job.finish(model, result, 0, None, result.tokens)
    stored = store.get_vector("lm", "2015")
    assert list(stored.tensors) == list(full.tensors)
    assert all(torch.equal(stored[n], full[n]) for n in full), "the stored τ differs from θ_merged − θ_pre"
    plain = RunJob(config.model_copy(update={"training": config.training.model_copy(update={"lora": None})}),
                   store, corpus, RunSpec("lm", "2014", "year"))
    model, _ = plain.fit(None, None, torch.device("cpu"))
    assert plain._changed(model, float_parameters(model)) is None
    plain.cache.give_back(plain.model)
