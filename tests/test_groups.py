"""Where in the weights time lives: the grouping of parameter names, the grouped streaming Gram
against a dense float64 reference, r per group, and group swaps against dense weights.

The names are those of real GPT-2, T5 and Llama models built from tiny configs on the meta device
(no download, no memory). The stores hold seeded perturbations of the tiny demo base: what is
tested is the arithmetic and the bookkeeping, not whether a tiny model learns.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from timevec import results
from timevec.adapt import group_swaps
from timevec.analyze import misalignment
from timevec.analyze.weight_groups import group_analysis, group_headline
from timevec.config import ConfigError, load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import prepare_split
from timevec.data.models import base_id, base_is_encoder_decoder, build_model, float_parameters, load_tokenizer
from timevec.evaluate.cells import CellEvaluator
from timevec.evaluate.gains import gain
from timevec.evaluate.metrics import evaluate
from timevec.param_groups import OTHER, group_counts, group_of, layer_of, param_group
from timevec.store import VectorStore
from timevec.weights.vectors import TimeVector

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "timevec" / "demo" / "tiny.yaml"


def _names(model_class, config) -> list[str]:
    with torch.device("meta"):
        model = model_class(config)
    # remove_duplicate=False: tied tensors under every name a state dict may carry them (lm_head, embed_tokens)
    return [n for n, p in model.named_parameters(remove_duplicate=False) if p.dtype.is_floating_point]


# ----------------------------------------------------------------------------- the grouping


def test_grouping_of_real_gpt2_t5_and_llama_names():
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        T5Config,
        T5ForConditionalGeneration,
    )

    gpt2 = _names(GPT2LMHeadModel, GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8,
                                                      bos_token_id=0, eos_token_id=0))
    assert {n: group_of(n) for n in gpt2} == {
        "transformer.wte.weight": ("embedding", ""), "transformer.wpe.weight": ("position", ""),
        "transformer.h.0.ln_1.weight": ("norm", "0"), "transformer.h.0.ln_1.bias": ("norm", "0"),
        "transformer.h.0.attn.c_attn.weight": ("attention", "0"), "transformer.h.0.attn.c_attn.bias": ("attention", "0"),
        "transformer.h.0.attn.c_proj.weight": ("attention", "0"), "transformer.h.0.attn.c_proj.bias": ("attention", "0"),
        "transformer.h.0.ln_2.weight": ("norm", "0"), "transformer.h.0.ln_2.bias": ("norm", "0"),
        "transformer.h.0.mlp.c_fc.weight": ("mlp", "0"), "transformer.h.0.mlp.c_fc.bias": ("mlp", "0"),
        "transformer.h.0.mlp.c_proj.weight": ("mlp", "0"), "transformer.h.0.mlp.c_proj.bias": ("mlp", "0"),
        "transformer.ln_f.weight": ("norm", ""), "transformer.ln_f.bias": ("norm", ""),
        "lm_head.weight": ("head", ""),  # tied to wte: a store holds it once, under transformer.wte
    }

    t5 = _names(T5ForConditionalGeneration, T5Config(
        vocab_size=16, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_decoder_layers=1, num_heads=2))
    enc, dec = "encoder.block.0.layer", "decoder.block.0.layer"
    assert {n: group_of(n) for n in t5} == {
        "shared.weight": ("embedding", ""),
        "encoder.embed_tokens.weight": ("embedding", ""), "decoder.embed_tokens.weight": ("embedding", ""),
        **{f"{enc}.0.SelfAttention.{w}.weight": ("attention", "encoder.0") for w in "qkvo"},
        f"{enc}.0.SelfAttention.relative_attention_bias.weight": ("position", "encoder.0"),
        f"{enc}.0.layer_norm.weight": ("norm", "encoder.0"),
        f"{enc}.1.DenseReluDense.wi.weight": ("mlp", "encoder.0"), f"{enc}.1.DenseReluDense.wo.weight": ("mlp", "encoder.0"),
        f"{enc}.1.layer_norm.weight": ("norm", "encoder.0"),
        "encoder.final_layer_norm.weight": ("norm", ""),
        **{f"{dec}.0.SelfAttention.{w}.weight": ("attention", "decoder.0") for w in "qkvo"},
        f"{dec}.0.SelfAttention.relative_attention_bias.weight": ("position", "decoder.0"),
        f"{dec}.0.layer_norm.weight": ("norm", "decoder.0"),
        **{f"{dec}.1.EncDecAttention.{w}.weight": ("attention", "decoder.0") for w in "qkvo"},
        f"{dec}.1.layer_norm.weight": ("norm", "decoder.0"),
        f"{dec}.2.DenseReluDense.wi.weight": ("mlp", "decoder.0"), f"{dec}.2.DenseReluDense.wo.weight": ("mlp", "decoder.0"),
        f"{dec}.2.layer_norm.weight": ("norm", "decoder.0"),
        "decoder.final_layer_norm.weight": ("norm", ""),
        "lm_head.weight": ("head", ""),
    }

    llama_cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False, num_labels=3)
    layer = {
        "model.embed_tokens.weight": ("embedding", ""),
        **{f"model.layers.0.self_attn.{w}_proj.weight": ("attention", "0") for w in "qkvo"},
        **{f"model.layers.0.mlp.{w}_proj.weight": ("mlp", "0") for w in ("gate", "up", "down")},
        "model.layers.0.input_layernorm.weight": ("norm", "0"),
        "model.layers.0.post_attention_layernorm.weight": ("norm", "0"),
        "model.norm.weight": ("norm", ""),
    }
    assert {n: group_of(n) for n in _names(LlamaForCausalLM, llama_cfg)} == {**layer, "lm_head.weight": ("head", "")}
    assert {n: group_of(n) for n in _names(LlamaForSequenceClassification, llama_cfg)} == {**layer, "score.weight": ("head", "")}


def test_unknown_names_are_counted_as_other_never_dropped():
    names = ["transformer.h.0.attn.c_attn.weight", "adapter.frobnicate.weight", "mystery"]
    assert [param_group(n) for n in names] == ["attention", OTHER, OTHER]
    counts = group_counts(names)
    assert counts[OTHER] == 2 and sum(counts.values()) == 3
    assert layer_of("model.layers.12.mlp.up_proj.weight") == "12"


def test_bad_groups_config_is_refused():
    with pytest.raises(ConfigError, match="unknown group"):
        load_config(TINY, ["groups.groups=[attention, mlps]"])
    with pytest.raises(ConfigError, match="groups.pairs"):
        group_swaps.swap_pairs([("2014", "20x5")], ["2014", "2015"], "year")


# ----------------------------------------------------------------------------- streamed vs dense


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny base in a store with small shards (groups split across shards) and 6 seeded vectors."""
    root = tmp_path_factory.mktemp("groups-store")
    config = load_config(TINY, [f"store.url={root}", "ray.eval_actors=1", "ray.max_failures=0", "tasks=[lm]",
                                "evaluation.max_examples=4", "groups.swaps=true", "groups.groups=[attention, mlp]"])
    tokenizer = load_tokenizer(config.base)
    base = {n: p.detach().clone() for n, p in float_parameters(build_model(config.base, tokenizer)).items()}
    store = VectorStore.from_config(config.store)
    store.init(base_id(config.base), base, target_shard_bytes=8192)
    assert store.num_shards > 3
    vectors = {}
    for i, (task, period) in enumerate([("lm", p) for p in ("2014", "2015", "2016", "2017")]
                                       + [("classification", p) for p in ("2014", "2015")]):
        g = torch.Generator().manual_seed(100 + i)
        # a common direction plus noise, different scales per tensor: cosines far from 0 and distinct per group
        vectors[(task, period)] = TimeVector({n: 0.02 * (1 + (k % 3)) * (torch.randn(t.shape, generator=g)
                                              + torch.ones(t.shape) * (0.3 + 0.1 * i))
                                              for k, (n, t) in enumerate(base.items())})
        store.put_vector(task, period, vectors[(task, period)])
    return config, store, base, vectors


def _dense(vectors, keys, names):
    return np.stack([np.concatenate([vectors[k][n].double().numpy().ravel() for n in names]) for k in keys])


def _cells(keys, seed=0):
    """A synthetic all-pairs table over ``keys`` (lm perplexity, classification macro-F1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task, train in keys:
        for t, test in keys:
            if t == task:
                rows.append({"task": task, "granularity": "year", "vector": f"{task}/{train}", "train_period": train,
                             "test_period": test, "metric": "perplexity" if task == "lm" else "macro_f1",
                             "value": float(rng.uniform(5, 10)), "higher_is_better": task != "lm",
                             "n_examples": 4, "n_tokens": 4, "seconds": 0.0})
    return results.cells_frame(rows)


@pytest.fixture(scope="module")
def analysed(tiny):
    store = tiny[1]
    keys = store.list_vectors()
    rel = misalignment.relative_change(_cells(keys))
    return keys, rel, group_analysis(store, rel)


def test_grouped_gram_norms_cosines_and_r_match_a_dense_float64_reference(tiny, analysed):
    _, store, base, vectors = tiny
    keys, rel, got = analysed
    names = list(base)
    by_group = {g: [n for n in names if param_group(n) == g] for g in ("embedding", "attention", "mlp", "norm")}
    by_group["layer 0"] = [n for n in names if layer_of(n) == "0"]
    scale = max(float(np.linalg.norm(_dense(vectors, [k], names))) for k in keys) ** 2
    for label, members in [("all", names), *by_group.items()]:
        scope, part = ("all", "all") if label == "all" else (("layer", "0") if label.startswith("layer") else ("group", label))
        x = _dense(vectors, keys, members)
        gram = x @ x.T
        norms = got.norms[(got.norms.scope == scope) & (got.norms.part == part)]
        assert norms["n_tensors"].iloc[0] == len(members)
        assert np.allclose(norms["norm"].to_numpy(), np.sqrt(np.diag(gram)), rtol=1e-6, atol=0)
        total = np.diag(_dense(vectors, keys, names) @ _dense(vectors, keys, names).T)
        assert np.allclose(norms["norm_sq_share"].to_numpy(), np.diag(gram) / total, rtol=1e-6)
        cos = gram / np.outer(np.sqrt(np.diag(gram)), np.sqrt(np.diag(gram)))
        sim = got.similarity[(got.similarity.scope == scope) & (got.similarity.part == part) & ~got.similarity.centred]
        assert np.allclose(sim["cosine"].to_numpy().reshape(len(keys), len(keys)), cos, atol=1e-6)
        # every entry of the streamed Gram within fp32-block rounding of |τ_i|·|τ_j|
        assert np.abs(store.grouped_gram(keys, lambda n, m=set(members): n in m)[True] - gram).max() < 1e-6 * scale
        # r(cosine within the part, degradation) for lm, by scipy on the dense pairs
        lm = [i for i, k in enumerate(keys) if k[0] == "lm"]
        pairs = rel[(rel.task == "lm") & (rel.train_period != rel.test_period)]
        index = {keys[i][1]: i for i in lm}
        x_cos = [cos[index[a], index[b]] for a, b in zip(pairs.train_period, pairs.test_period)]
        ref = stats.pearsonr(x_cos, pairs["degradation_pct"])
        row = got.sim_vs_deg[(got.sim_vs_deg.scope == scope) & (got.sim_vs_deg.part == part)
                             & ~got.sim_vs_deg.centred & (got.sim_vs_deg.task == "lm")].iloc[0]
        assert row["n"] == len(pairs) == 12
        assert row["pearson_r"] == pytest.approx(ref.statistic, abs=1e-6)
        assert row["pearson_p"] == pytest.approx(ref.pvalue, rel=1e-4)
        assert row["pearson_low"] < row["pearson_r"] < row["pearson_high"]
    # the groups sum to the whole-vector Gram, and the ungrouped pass is unchanged by the grouping
    grams = store.grouped_gram(keys, group_of)
    whole = store.gram(keys)
    assert np.abs(sum(grams.values()) - whole).max() < 1e-6 * scale
    assert got.tensor_counts[OTHER] == 0 and sum(got.tensor_counts.values()) == len(names)


# ----------------------------------------------------------------------------- swaps


@pytest.fixture(scope="module")
def swapped(tiny):
    """Swaps of τ_2014 with attention and MLP from τ_2017, on 2017, by the library (no Ray)."""
    config, store, base, _ = tiny
    evaluator = CellEvaluator(config, store, device="cpu")
    tokenizer = load_tokenizer(config.base)
    split = prepare_split("lm", load_corpus(config.corpus), "2017", tokenizer, base_is_encoder_decoder(config.base),
                          config.evaluation)
    item = group_swaps.SwapItem("lm", "year", "2014", "2017", ("attention", "mlp"))
    rows = group_swaps.evaluate_swaps(evaluator.evaluate_weights, lambda p: evaluator.read_vector("lm", p), item,
                                      split, group_counts(base))
    return rows, split, tokenizer


def test_a_swap_equals_the_dense_weights_evaluated_directly(tiny, swapped):
    config, _, base, vectors = tiny
    rows, split, tokenizer = swapped
    model = build_model(config.base, tokenizer).eval()

    def dense(delta: dict[str, torch.Tensor]) -> float:
        model.load_state_dict({n: base[n] + delta[n] for n in base}, strict=False)
        return evaluate(model, split, config.evaluation, "cpu", tokenizer=tokenizer)["value"]

    def replicates(delta: dict[str, torch.Tensor]) -> np.ndarray:
        model.load_state_dict({n: base[n] + delta[n] for n in base}, strict=False)
        return evaluate(model, split, config.evaluation, "cpu", tokenizer=tokenizer, keep_replicates=True)["replicates"]

    v_j = dense(vectors[("lm", "2014")].tensors)
    v_k = dense(vectors[("lm", "2017")].tensors)
    r_j, r_k = replicates(vectors[("lm", "2014")].tensors), replicates(vectors[("lm", "2017")].tensors)
    assert len(r_j) == config.evaluation.bootstrap_samples
    assert [r["group"] for r in rows] == ["attention", "mlp"]
    for row in rows:
        swapped_tensors = {n: (vectors[("lm", "2017")] if param_group(n) == row["group"] else vectors[("lm", "2014")])[n]
                           for n in base}
        value = dense(swapped_tensors)
        assert row["value"] == pytest.approx(value, rel=1e-6)
        assert row["value"] != pytest.approx(v_j, rel=1e-6)  # the swap changed something
        assert (row["value_source"], row["value_target"]) == (pytest.approx(v_j, rel=1e-6), pytest.approx(v_k, rel=1e-6))
        assert row["gap_share"] == pytest.approx(gain(value, v_j, False) / gain(v_k, v_j, False), rel=1e-5)
        # its interval: the paired bootstrap (the same example draws for the swap and both ends)
        shares = (r_j - replicates(swapped_tensors)) / (r_j - r_k)  # perplexity: lower is better
        low, high = np.quantile(shares, [0.025, 0.975])
        assert (row["gap_share_low"], row["gap_share_high"]) == (pytest.approx(low, rel=1e-4, abs=1e-6),
                                                                  pytest.approx(high, rel=1e-4, abs=1e-6))
        assert row["gap_share_low"] < row["gap_share_high"]
        assert row["n_tensors"] == sum(param_group(n) == row["group"] for n in base)


def test_the_groups_stage_on_ray_resumes_and_matches_the_library(tiny, swapped, ray_session):
    from timevec.distributed.group_swaps import plan, run_group_swaps

    config, store, _, _ = tiny
    config = config.model_copy(update={"groups": config.groups.model_copy(update={"pairs": [("2014", "2017")]})})
    table = run_group_swaps(config, store)
    assert list(table["group"]) == ["attention", "mlp"]
    assert plan(config, store)[0] == []  # a re-run has nothing left to do
    assert len(run_group_swaps(config, store)) == 2
    direct = pd.DataFrame(swapped[0])
    assert np.allclose(table["value"], direct["value"], rtol=1e-6)
    assert np.allclose(table["gap_share"], direct["gap_share"], rtol=1e-5)
    assert all(math.isfinite(v) for v in table["gap_share"])


def test_the_report_draws_each_group_table(analysed, swapped):
    from timevec.report.groups import group_figures

    got = analysed[2]
    swaps = results.group_swaps_frame(swapped[0])
    written: dict[str, pd.DataFrame] = {}
    figures: list = []
    group_figures({results.GROUP_NORMS_TABLE: got.norms, results.GROUP_SIM_DEG_TABLE: got.sim_vs_deg,
                   results.GROUP_SWAPS_TABLE: swaps}, figures, written.__setitem__)
    assert [f.name for f in figures] == ["groups_norm_share", "groups_similarity_degradation", "groups_swaps"]
    assert all(f.png.startswith(b"\x89PNG") for f in figures)
    assert set(written) == {f"fig_{f.name}" for f in figures}
    assert np.allclose(written["fig_groups_swaps"]["gap_share"], swaps["gap_share"])
    shares = written["fig_groups_norm_share"]
    lm_groups = shares[(shares.task == "lm") & (shares.scope == "group")]
    assert lm_groups["norm_sq_share"].sum() == pytest.approx(1.0)  # the groups partition |τ|²
    head = group_headline(got.norms, got.sim_vs_deg, swaps)
    top = lm_groups.set_index("part")["norm_sq_share"].idxmax()
    assert head["groups: largest |τ|² share, lm"].startswith(f"{top} ")
    best = swaps.loc[swaps["gap_share"].idxmax(), "group"]
    assert head["groups: swap closing most of the gap, lm"].startswith(f"{best} ")
    group_figures({}, figures, written.__setitem__)  # no group tables: no figure, no error
    assert len(figures) == 3


def test_the_findings_state_each_group_swap_with_its_interval_and_over_seeds(swapped) -> None:
    from timevec.analyze.findings import FINDINGS_COLUMNS, _swap_rows
    from timevec.analyze.seeds import findings_over_seeds

    got = pd.DataFrame(_swap_rows(results.group_swaps_frame(swapped[0])), columns=FINDINGS_COLUMNS)
    got = got[got["finding"] == "group swap: gap share"].set_index("panel")
    for r in swapped[0]:
        row = got.loc[f"lm {r['group']}"]
        assert (row["estimate"], row["low"], row["high"]) == (r["gap_share"], r["gap_share_low"], r["gap_share_high"])
        assert row["holds"] in ("yes", "no", "unclear")
    # over seeds: the per-seed estimates' t interval (here two "seeds" whose shares differ by 0.1)
    other = got.reset_index().assign(estimate=lambda f: f["estimate"] + 0.1)
    seeds = findings_over_seeds({1: got.reset_index(), 2: other})
    seeds = seeds[seeds["finding"] == "group swap: gap share"].set_index("panel")
    for r in swapped[0]:
        assert seeds.loc[f"lm {r['group']}", "estimate"] == pytest.approx(r["gap_share"] + 0.05)
        assert seeds.loc[f"lm {r['group']}", "low"] < r["gap_share"] + 0.05 < seeds.loc[f"lm {r['group']}", "high"]
