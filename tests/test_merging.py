"""Merge methods: peft's functions applied tensor by tensor and shard by shard equal the dense result."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft.utils import merge_utils

from timevec.config import ConfigError, ExperimentConfig, load_config
from timevec.store.layout import shard_plan
from timevec.weights.merging import METHODS, MergeError, MergeMethod, merge_tensor, tensor_seed
from timevec.weights.vectors import TimeVector, WeightPatcher

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"corpus": {"source": "demo:trump_tweets"}, "periods": {"start": "2014", "end": "2016"}}


def _peft(method: MergeMethod, tensors: list[torch.Tensor], weights: list[float], name: str) -> torch.Tensor:
    """peft's function on the tensors as given (DARE seeded as merge_tensor seeds it)."""
    fn = getattr(merge_utils, method.name)
    w = torch.tensor(weights, dtype=torch.float32)
    extra: tuple = ()
    if method.name in ("ties", "dare_linear", "dare_ties", "magnitude_prune"):
        extra = (method.density,)
    if method.name in ("ties", "dare_ties"):
        extra += (method.majority_sign_method,)
    if method.is_random:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tensor_seed(method.seed, name))
            return fn(tensors, w, *extra)
    return fn(tensors, w, *extra)


def _folded(tensors: list[torch.Tensor], weights: list[float]) -> tuple[list[torch.Tensor], list[float]]:
    return [-t if w < 0 else t for t, w in zip(tensors, weights)], [abs(w) for w in weights]


def _methods(density: float = 0.3, sign: str = "total") -> list[MergeMethod]:
    return [MergeMethod(name, density, sign, seed=11) for name in METHODS]


def _tensors(n: int, shape: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


# ---------------------------------------------------------------------------- merge_tensor


@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_merge_tensor_is_the_peft_function(sign: str) -> None:
    tensors = _tensors(3, (6, 9), 0)
    weights = [0.5, 0.3, 0.2]  # a soup: every weight >= 0, peft's inputs unchanged
    for method in _methods(0.4, sign):
        merged = merge_tensor(method, tensors, weights, "h.0.attn.weight")
        assert merged.dtype == torch.float32 and merged.shape == (6, 9)
        assert torch.equal(merged, _peft(method, tensors, weights, "h.0.attn.weight")), method.label
    assert all(torch.equal(t, r) for t, r in zip(tensors, _tensors(3, (6, 9), 0)))  # inputs untouched


def test_signed_weights_vote_with_the_direction_they_push() -> None:
    """An analogy's −α₃ term: TIES elects the sign on sign(c)·τ; the other methods are unchanged bit for bit."""
    tensors = _tensors(3, (8, 5), 1)
    weights = [1.4, 0.3, -0.2]
    folded_t, folded_w = _folded(tensors, weights)
    for method in _methods(0.5):
        merged = merge_tensor(method, tensors, weights, "w")
        assert torch.equal(merged, _peft(method, folded_t, folded_w, "w")), method.label
        raw = _peft(method, tensors, weights, "w")
        if method.name in ("ties", "dare_ties"):
            assert not torch.equal(merged, raw)  # the vote changed where −0.2·τ₃ decided it
        else:
            assert torch.equal(merged, raw), method.label


def test_density_one_and_task_arithmetic_are_the_plain_sum() -> None:
    tensors = _tensors(2, (4, 4), 2)
    weights = [0.7, 0.3]
    plain = 0.7 * tensors[0] + 0.3 * tensors[1]
    for name in ("task_arithmetic", "magnitude_prune", "dare_linear"):
        with_all = merge_tensor(MergeMethod(name, density=1.0), tensors, weights, "w")
        assert torch.allclose(with_all, plain, atol=1e-6), name


def test_merge_tensor_refuses_bad_terms() -> None:
    ties = MergeMethod("ties")
    with pytest.raises(MergeError, match="lin.weight"):
        merge_tensor(ties, [torch.zeros(2, 3), torch.zeros(3, 2)], [0.5, 0.5], "lin.weight")
    with pytest.raises(MergeError, match="2 tensors but 1 weights"):
        merge_tensor(ties, [torch.zeros(2), torch.zeros(2)], [1.0], "b")
    with pytest.raises(MergeError, match="no terms"):
        merge_tensor(ties, [], [], "b")
    with pytest.raises(MergeError, match="finite"):
        merge_tensor(ties, [torch.zeros(2), torch.zeros(2)], [1.0, float("nan")], "b")


def test_merge_method_validation_and_labels() -> None:
    with pytest.raises(MergeError, match="merge.method"):
        MergeMethod("average")
    for bad in (0.0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(MergeError, match="merge.density"):
            MergeMethod("ties", density=bad)
    with pytest.raises(MergeError, match="majority_sign_method"):
        MergeMethod("ties", majority_sign_method="mean")
    with pytest.raises(MergeError, match="merge.seed"):
        MergeMethod("dare_ties", seed=1.5)  # type: ignore[arg-type]
    assert MergeMethod().label == "task_arithmetic" and MergeMethod().is_task_arithmetic
    assert MergeMethod("magnitude_prune", 0.2).label == "magnitude_prune(density=0.2)"
    assert MergeMethod("ties", 0.5, "frequency").label == "ties(density=0.5, sign=frequency)"
    assert MergeMethod("dare_ties", 0.5, seed=3).label == "dare_ties(density=0.5, sign=total, seed=3)"
    assert MergeMethod("dare_linear", 1) == MergeMethod("dare_linear", 1.0)  # a value object


# ---------------------------------------------------------------------------- DARE's seed


def test_dare_is_seeded_per_tensor_and_leaves_the_global_rng_alone() -> None:
    tensors = _tensors(2, (32, 16), 3)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    for name in ("dare_linear", "dare_ties"):
        method = MergeMethod(name, 0.5, seed=7)
        a = merge_tensor(method, tensors, [0.5, 0.5], "h.0.mlp.weight")
        assert torch.equal(a, merge_tensor(method, tensors, [0.5, 0.5], "h.0.mlp.weight"))
        assert not torch.equal(a, merge_tensor(MergeMethod(name, 0.5, seed=8), tensors, [0.5, 0.5], "h.0.mlp.weight"))
        assert not torch.equal(a, merge_tensor(method, tensors, [0.5, 0.5], "h.1.mlp.weight"))  # independent masks
    assert torch.equal(torch.get_rng_state(), state)
    # sha256 of (seed, name): the same number in every process, whatever PYTHONHASHSEED
    expected = int.from_bytes(hashlib.sha256(b"7\x00h.0.mlp.weight").digest()[:8], "big") & ((1 << 63) - 1)
    assert tensor_seed(7, "h.0.mlp.weight") == expected


_CHILD = """
import hashlib, torch
from timevec.weights.merging import MergeMethod, merge_tensor
g = torch.Generator().manual_seed(3)
ts = [torch.randn(32, 16, generator=g) for _ in range(2)]
torch.manual_seed({global_seed})
out = [merge_tensor(MergeMethod(n, 0.5, seed=7), ts, [0.5, 0.5], "h.0.mlp.weight") for n in ("dare_linear", "dare_ties")]
print(hashlib.sha256(b"".join(t.numpy().tobytes() for t in out)).hexdigest())
"""


def test_dare_gives_the_same_weights_in_a_fresh_process() -> None:
    tensors = _tensors(2, (32, 16), 3)
    here = [merge_tensor(MergeMethod(n, 0.5, seed=7), tensors, [0.5, 0.5], "h.0.mlp.weight") for n in ("dare_linear", "dare_ties")]
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in here)).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    child = subprocess.run([sys.executable, "-c", _CHILD.format(global_seed=999)], env=env, capture_output=True,
                           text=True, timeout=120, check=True)
    assert child.stdout.strip() == digest


# ---------------------------------------------------------------------------- the patcher, shard by shard


@pytest.fixture(scope="module")
def gpt2():
    """A small real GPT-2 (transformers), its base parameters and three vectors."""
    import transformers
    cfg = transformers.GPT2Config(vocab_size=48, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    vectors = []
    for seed in (1, 2, 3):
        g = torch.Generator().manual_seed(seed)
        vectors.append(TimeVector({n: 0.01 * torch.randn(t.shape, generator=g) for n, t in base.items()}))
    return model, base, vectors


def _live(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _shards(base: dict[str, torch.Tensor]) -> list[list[str]]:
    """The store's shard plan over the model's tensors (small target: several shards)."""
    k, plan = shard_plan({n: t.numel() * 4 for n, t in base.items()}, target_shard_bytes=4096)
    shards = [[n for n in base if plan[n] == i] for i in range(k)]
    assert k >= 3 and all(shards)
    return shards


TERMS = {"soup": [1 / 3, 1 / 3, 1 / 3], "interpolation": [0.5, 0.5, 0.0], "analogy": [1.4, 0.3, -0.2]}


@pytest.mark.parametrize("combination", list(TERMS))
def test_patcher_shard_by_shard_equals_peft_on_whole_tensors(gpt2, combination: str) -> None:
    """The acceptance test: for every method, streaming (per tensor, per shard) == peft on each full tensor."""
    model, base, vectors = gpt2
    patcher = WeightPatcher(model)
    coefs = TERMS[combination]
    terms = list(zip(coefs, vectors))
    live = [(c, v) for c, v in terms if c != 0.0]  # a zero coefficient is not part of the combination
    shards = _shards(base)
    for method in _methods(0.4):
        patcher.apply_combination(terms, method)
        dense = _live(model)
        for name, got in dense.items():
            tensors, weights = _folded([v[name] for _, v in live], [c for c, _ in live])
            merged = _peft(method, tensors, weights, name)
            if method.is_task_arithmetic:  # the patcher's own fp32 sum (bit-identical to before): rounding order differs
                assert torch.allclose(got, base[name] + merged, atol=1e-7), name
            else:
                assert torch.equal(got, base[name] + merged), f"{method.label} {name}"
        for names in shards:
            patcher.apply_combination([(c, v.subset(names)) for c, v in terms], method)
            now = _live(model)
            for name in base:
                expected = dense[name] if name in names else base[name]
                assert torch.equal(now[name], expected), f"{method.label} shard {names[0]}: {name}"
        patcher.restore()
        assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


@pytest.mark.filterwarnings("ignore:The density 1.0 is greater")  # the reference's own peft call at density 1
def test_elementwise_methods_equal_peft_on_the_flattened_concatenation(gpt2) -> None:
    """Where a method has no per-tensor top-k (task arithmetic; TIES and magnitude pruning at density 1),
    peft applied ONCE to the whole vector flattened and concatenated gives the same weights."""
    model, base, vectors = gpt2
    patcher = WeightPatcher(model)
    names = list(base)
    flat = [torch.cat([v[n].reshape(-1) for n in names]) for v in vectors]
    weights = [0.5, 0.3, 0.2]
    for method in (MergeMethod(), MergeMethod("ties", 1.0), MergeMethod("ties", 1.0, "frequency"), MergeMethod("magnitude_prune", 1.0)):
        whole = _peft(method, flat, weights, "all")
        with patcher.applied_combination(list(zip(weights, vectors)), method) as patched:
            got = torch.cat([p.detach().reshape(-1) - base[n].reshape(-1) for n, p in patched.named_parameters()])
        if method.is_task_arithmetic:  # the patcher's own fp32 sum: same up to rounding order
            assert torch.allclose(got, whole, atol=1e-6)
        else:
            expected = torch.cat([(base[n] + w.view_as(base[n])).reshape(-1) - base[n].reshape(-1)
                                  for n, w in zip(names, whole.split([base[n].numel() for n in names]))])
            assert torch.equal(got, expected), method.label


def test_task_arithmetic_and_single_terms_stay_bit_identical(gpt2) -> None:
    model, base, vectors = gpt2
    patcher = WeightPatcher(model)
    analogy = [(1.4, vectors[0]), (0.3, vectors[1]), (-0.2, vectors[2])]
    patcher.apply_combination(analogy)
    old = _live(model)
    patcher.apply_combination(analogy, MergeMethod())
    assert all(torch.equal(p, old[n]) for n, p in model.named_parameters())
    # one live term (interpolation's α = 0, a scaled vector) is exact under every method
    for terms in ([(1.0, vectors[0]), (0.0, vectors[1])], [(0.7, vectors[2])]):
        patcher.apply_combination(terms)
        exact = _live(model)
        for method in _methods(0.2):
            patcher.apply_combination(terms, method)
            assert all(torch.equal(p, exact[n]) for n, p in model.named_parameters()), method.label
    patcher.restore()
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())


def test_ties_restores_the_base_exactly_and_missing_tensors_count_as_zeros(gpt2) -> None:
    model, base, vectors = gpt2
    patcher = WeightPatcher(model)
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        logits = model(ids).logits
    ties = MergeMethod("ties", 0.5)
    partial = vectors[1].subset([n for n in base if "mlp" in n])  # lacks every attention/embedding tensor
    with patcher.applied_combination([(0.5, vectors[0]), (0.5, partial)], ties) as patched:
        for name, p in patched.named_parameters():
            other = partial[name] if name in partial else torch.zeros_like(base[name])
            expected = base[name] + _peft(ties, [vectors[0][name], other], [0.5, 0.5], name)
            assert torch.equal(p.detach(), expected), name
        with torch.no_grad():
            assert not torch.allclose(patched(ids).logits, logits)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)


# ---------------------------------------------------------------------------- config


def test_merge_config_defaults_and_seed() -> None:
    config = ExperimentConfig.model_validate(MINIMAL)
    assert config.merge.method == "task_arithmetic" and config.merge.density == 0.5
    assert config.merge.majority_sign_method == "total" and config.merge.seed is None
    assert MergeMethod.from_config(config) == MergeMethod(seed=42)  # the experiment's seed
    tuned = config.with_overrides(["merge.method=dare_ties", "merge.density=0.2", "merge.seed=5", "seed=1"])
    assert MergeMethod.from_config(tuned) == MergeMethod("dare_ties", 0.2, "total", 5)
    assert MergeMethod.from_config(tuned.merge.model_copy(update={"seed": None})).seed == 0


@pytest.mark.parametrize("override, key", [
    ("merge.density=0", "merge.density"), ("merge.density=1.5", "merge.density"),
    ("merge.method=average", "merge.method"), ("merge.majority_sign_method=mean", "merge.majority_sign_method"),
    ("merge.densty=0.3", "merge.densty"),
])
def test_bad_merge_config_names_the_key(override: str, key: str) -> None:
    config = ExperimentConfig.model_validate(MINIMAL)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.with_overrides([override])


def test_tiny_config_loads_with_a_merge_section() -> None:
    config = load_config(REPO / "timevec/demo/tiny.yaml", ["merge.method=ties", "merge.majority_sign_method=frequency"])
    assert MergeMethod.from_config(config) == MergeMethod("ties", 0.5, "frequency", config.seed)


# ---------------------------------------------------------------------------- the evaluator and the comparison table


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """The tiny demo config over 2014–2016 (lm only), a store with the base and 3 random vectors."""
    from timevec.data.corpus import load_corpus
    from timevec.data.examples import prepare_eval_sets
    from timevec.data.models import base_id, build_model, float_parameters, load_tokenizer
    from timevec.store import VectorStore

    root = tmp_path_factory.mktemp("merge-store")
    config = load_config(REPO / "timevec/demo/tiny.yaml", [
        f"store.url={root}", "periods.start='2014'", "periods.end='2016'", "evaluation.max_examples=4", "tasks=[lm]",
        "granularities=[year]", "merge.method=ties", "merge.density=0.3",
    ])
    tokenizer = load_tokenizer(config.base)
    base = {n: p.detach().clone() for n, p in float_parameters(build_model(config.base, tokenizer)).items()}
    store = VectorStore.from_config(config.store)
    store.init(base_id(config.base), base)
    for i, period in enumerate(["2014", "2015", "2016"]):
        g = torch.Generator().manual_seed(200 + i)
        store.put_vector("lm", period, TimeVector({n: 0.05 * torch.randn(t.shape, generator=g) for n, t in base.items()}))
    splits = prepare_eval_sets(config, corpus=load_corpus(config.corpus), tokenizer=tokenizer)["test"]
    return config, store, splits


def test_cell_evaluator_merges_combinations_with_the_configured_method(tiny_store) -> None:
    from timevec.evaluate.cells import CellEvaluator

    config, store, splits = tiny_store
    evaluator = CellEvaluator(config, store, splits, device="cpu")
    assert evaluator.merge == MergeMethod("ties", 0.3, "total", config.seed)
    split = splits[("lm", "year")]["2015"]
    a, b = evaluator.read_vector("lm", "2014"), evaluator.read_vector("lm", "2016")
    ties = evaluator.evaluate_weights([(0.5, a), (0.5, b)], [split])[0]["value"]
    single = evaluator.evaluate_weights([(1.0, a), (0.0, b)], [split])[0]["value"]
    evaluator.merge = MergeMethod()
    plain = evaluator.evaluate_weights([(0.5, a), (0.5, b)], [split])[0]["value"]
    assert ties != plain  # the combination is merged by TIES ...
    assert single == evaluator.evaluate_weights([(1.0, a)], [split])[0]["value"]  # ... a single vector is not
    stored_base = store.get_base()
    assert all(torch.equal(p.detach(), stored_base[n]) for n, p in evaluator.model.named_parameters() if n in stored_base)


def test_merge_comparison_table(tiny_store) -> None:
    import math

    from timevec.adapt.merge_comparison import compared_methods, merge_comparison
    from timevec.evaluate.cells import CellEvaluator
    from timevec.results import MERGE_METHODS_COLUMNS, MERGE_METHODS_TABLE, merge_methods_frame

    config, store, splits = tiny_store
    evaluator = CellEvaluator(config, store, device="cpu")
    methods = compared_methods(config)
    assert [m.name for m in methods] == list(METHODS) and methods[1] == MergeMethod("ties", 0.3, "total", config.seed)
    table = merge_comparison(evaluator, config, splits, store.list_vectors(), methods)
    assert list(table.columns) == MERGE_METHODS_COLUMNS
    assert len(table) == 2 * len(METHODS) * 3  # 2 combinations × 5 methods × 3 test periods
    assert set(table["combination"]) == {"uniform_soup", "midpoint"} and set(table["period"]) == {"2014", "2015", "2016"}
    assert evaluator.merge == MergeMethod.from_config(config)  # put back
    ta = table[table["method"] == "task_arithmetic"]
    assert (ta["gain_vs_task_arithmetic"] == 0.0).all()
    # task arithmetic's rows are the evaluator's own Σ cᵢ·τᵢ; the others are gains against them (perplexity: lower is better)
    vectors = {p: store.get_vector("lm", p) for p in ("2014", "2015", "2016")}
    evaluator.merge = MergeMethod()
    soup = evaluator.evaluate_weights([(1 / 3, vectors[p]) for p in sorted(vectors)], [splits[("lm", "year")]["2015"]])[0]["value"]
    row = ta[(ta["combination"] == "uniform_soup") & (ta["period"] == "2015")]["value"].item()
    assert row == soup
    ties = table[(table["method"] == methods[1].label) & (table["combination"] == "uniform_soup") & (table["period"] == "2015")]
    assert ties["gain_vs_task_arithmetic"].item() == pytest.approx(soup - ties["value"].item())
    assert all(math.isfinite(v) for v in table["value"])
    store.write_table(MERGE_METHODS_TABLE, table)
    assert merge_methods_frame(store.read_table(MERGE_METHODS_TABLE).to_dict("records")).equals(table)


def test_analogy_experiment_name_changes_with_the_merge_method_only(tiny_store) -> None:
    from timevec.distributed.analogy import experiment_name

    config, store, _ = tiny_store
    plain = config.with_overrides(["merge.method=task_arithmetic"])
    default = ExperimentConfig.model_validate({k: v for k, v in plain.model_dump().items() if k != "merge"})
    names = [experiment_name(c, store, "lm", "2014", "2015") for c in (plain, config, config.with_overrides(["merge.density=0.6"]))]
    assert experiment_name(default, store, "lm", "2014", "2015") == names[0]  # unchanged for existing studies
    assert len(set(names)) == 3
