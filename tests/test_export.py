"""`timevec export`: a combination the study scored (the best time-proportional interpolation, an
analogy point and a forecast, each from its stage's table), written as a save_pretrained directory
and loaded in a FRESH process with transformers alone, gives the study's cell exactly; a LoRA-factor
combination with a negative coefficient as one PEFT adapter matches the dense export's logits, on
GPT-2's Conv1D layout and on a Llama's Linear layout with unequal ranks; each combination without an
exact adapter gets none and the card says why; missing vectors are refused (exit 2) by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
import torch

import timevec.demo
from tests.stores import build_store
from timevec.adapt.export import export
from timevec.adapt.interpolation import plan_interpolation, run_interpolation_item
from timevec.adapt.selection import interpolation_protocols
from timevec.cli import main
from timevec.config import ExperimentConfig, load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import prepare_eval_sets, prepare_split
from timevec.evaluate.cells import CellEvaluator
from timevec.results import ANALOGY_BEST_TABLE, ANALOGY_TABLE, FORECAST_TABLE, interpolation_frame
from timevec.store import VectorStore
from timevec.train.loop import prepare_base
from timevec.train.plan import RunSpec
from timevec.train.run import RunJob
from timevec.weights.lowrank import Factor, LowRankVector

TINY = Path(timevec.demo.__file__).parent / "tiny.yaml"
ROOT = Path(__file__).resolve().parents[1]


def _study(tmp: Path, runs: list[tuple[str, str]], extra: Sequence[str] = ()):
    overrides = [f"store.url={tmp / 'store'}", "base.pretrain.steps=5", "training.steps=3", *extra]
    config = load_config(TINY, overrides)
    corpus = load_corpus(config.corpus)
    store = VectorStore.from_config(config.store)
    prepare_base(config, corpus, store)
    for task, period in runs:
        job = RunJob(config, store, corpus, RunSpec(task, period, "year"))
        model, result = job.fit(None, None, torch.device("cpu"))
        job.finish(model, result, 0, None, result.tokens)
    return config, overrides, corpus, store


def _fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter (nothing of this process's state); it prints one JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sets(overrides: list[str]) -> list[str]:
    """The overrides as the CLI's ``--set`` arguments."""
    return [arg for o in overrides for arg in ("--set", o)]


def _reloaded(out: Path, overrides: list[str], task: str, period: str, threads: int | None = None) -> dict:
    """``out`` loaded in a fresh process with transformers alone, scored by timevec's own ``evaluate`` on
    the test split of (task, period), built from the corpus as the study builds it, with the exported
    tokenizer. ``threads``: the torch intra-op threads the study's value was computed with (the Ray
    stages' actors run ``ray.torch_threads``; the summation order of a forward can depend on it)."""
    return _fresh(f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from timevec.config import load_config
        from timevec.data.corpus import load_corpus
        from timevec.evaluate.metrics import evaluate
        from timevec.data.examples import prepare_split
        if {threads!r} is not None:
            torch.set_num_threads({threads!r})
        config = load_config({str(TINY)!r}, {overrides!r})
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
        split = prepare_split({task!r}, load_corpus(config.corpus), {period!r}, tokenizer, False, config.evaluation)
        print(json.dumps(evaluate(model, split, config.evaluation, "cpu", tokenizer=tokenizer)))
    """)


@pytest.mark.slow
def test_best_time_proportional_interpolation_reloads_with_the_study_value(tmp_path: Path) -> None:
    config, overrides, corpus, store = _study(tmp_path, [("lm", "2014"), ("lm", "2016")], ["periods.end='2016'", "tasks=[lm]"])
    # The study's own path: the interpolation points evaluated by the cell evaluator, then the protocols.
    evaluator = CellEvaluator(config, store, device="cpu")
    splits = prepare_eval_sets(config, tokenizer=evaluator.tokenizer)["test"][("lm", "year")]
    tau = {p: evaluator.read_vector("lm", p) for p in ("2014", "2016")}
    rows = []
    for item in plan_interpolation("lm", "year", ["2014", "2016"], list(splits), [0.0, 0.5, 1.0]):
        rows += run_interpolation_item(evaluator.evaluate_weights, tau["2014"], tau["2016"], item, splits)
    store.write_table("interpolation", interpolation_frame(rows))
    store.write_table("interpolation_protocols", interpolation_protocols(interpolation_frame(rows)))
    study = next(r["value"] for r in rows if r["alpha"] == 0.5 and r["test_period"] == "2015" and r["split"] == "test")

    out = tmp_path / "lm-2015"
    assert main(["export", str(TINY), *_sets(overrides), "best:task=lm,protocol=time_proportional,period=2015", "--out", str(out)]) == 0
    card = json.loads((out / "timevec_recipe.json").read_text())
    assert [(t["vector"], t["coefficient"]) for t in card["terms"]] == [("lm/2014", 0.5), ("lm/2016", 0.5)]
    assert card["alpha_selection"].startswith("past-only") and card["base"]["fingerprint"] == store.base_fingerprint
    assert all(t["shards"] and t["shards"][0]["xxh3_128"] for t in card["terms"])
    score = next(s for s in card["scores"] if s["test_period"] == "2015")
    assert score["matches_study"] and score["low"] <= score["value"] <= score["high"]
    assert "time_proportional" in (out / "README.md").read_text() or "past-only" in (out / "README.md").read_text()

    loaded = _reloaded(out, overrides, "lm", "2015")  # the study's value was computed here, with this process's threads
    assert loaded["value"] == study  # exactly the study's cell
    # and the file is not just the base: θ_pre's value on 2015 differs
    base_value = evaluator.evaluate_weights([], [prepare_split("lm", corpus, "2015", evaluator.tokenizer, False, config.evaluation)])
    assert base_value[0]["value"] != study


# ----------------------------------------------------------------------------- the analogy and forecast stages' cells


ADAPTED = [
    "periods.start='2015'", "periods.end='2017'", "tasks=[lm, classification]", "granularities=[year]",
    "forecast.horizon=1", "forecast.methods=[ema]",  # lm 2017 forecast from 2015 and 2016
    "analogy.source_periods=['2016']", "analogy.alpha1=[1.0]", "analogy.alpha2=[0.2, 0.4]", "analogy.alpha3=[0.3]",
]


@pytest.fixture(scope="module")
def adapted(ray_session: str, tmp_path_factory: pytest.TempPathFactory):
    """A store on which the analogy stage (classification 2016 → 2017, a 2-point grid, on Ray Tune) and the
    forecast stage (on the evaluation actors) ran as `timevec run` runs them, over seeded perturbations
    of the tiny base (tests/stores.build_store; no fine-tune). Perturbations of 0.3 so that the
    tiny model's macro-F1 moves with the weights (test_analogy's study does the same)."""
    from timevec.distributed.analogy import run_analogy
    from timevec.distributed.forecast import run_forecast

    overrides = [f"store.url={tmp_path_factory.mktemp('adapted') / 'store'}", "ray.max_failures=0", *ADAPTED]
    config = load_config(TINY, overrides)
    store, _ = build_store(config, {("classification", "2016"): 1, ("lm", "2015"): 2, ("lm", "2016"): 3, ("lm", "2017"): 4},
                           scale=0.3)
    run_analogy(config, store)
    run_forecast(config, store)
    return config, overrides, store


def _one(frame, **equal) -> dict:
    """The one row of ``frame`` with these column values."""
    for column, value in equal.items():
        frame = frame.loc[frame[column] == value]
    assert len(frame) == 1, frame
    return frame.iloc[0].to_dict()


@pytest.mark.slow
def test_analogy_export_reloads_with_the_study_cell(adapted, tmp_path: Path) -> None:
    config, overrides, store = adapted
    # the grid point the stage chose on 2017's validation split, and its test cell in the analogy table
    chosen = _one(store.read_table(ANALOGY_BEST_TABLE), method="analogy", split="test")
    a1, a2, a3 = chosen["alpha1"], chosen["alpha2"], chosen["alpha3"]
    cell = _one(store.read_table(ANALOGY_TABLE), method="analogy", split="test", alpha1=a1, alpha2=a2, alpha3=a3)["value"]

    out = tmp_path / "analogy"
    assert main(["export", str(TINY), *_sets(overrides), f"analogy:task=classification,j=2016,k=2017,a1={a1!r},a2={a2!r},a3={a3!r}",
                 "--out", str(out)]) == 0
    card = json.loads((out / "timevec_recipe.json").read_text())
    assert [(t["vector"], t["coefficient"]) for t in card["terms"]] == [("classification/2016", a1), ("lm/2017", a2), ("lm/2016", -a3)]
    score = _one(pd.DataFrame(card["scores"]), test_period="2017")
    assert score["metric"] == "macro_f1" and score["study_value"] == cell and score["matches_study"]

    loaded = _reloaded(out, overrides, "classification", "2017", threads=config.ray.torch_threads)
    assert loaded["value"] == cell  # exactly the study's cell
    base = _one(store.read_table(ANALOGY_BEST_TABLE), method="base", split="test")["value"]
    assert base != cell  # and the export is not θ_pre


@pytest.mark.slow
def test_the_model_for_the_next_period_is_the_forecast_the_held_out_periods_chose_past_only(adapted, tmp_path) -> None:
    """Issue 39: `timevec export best:…,period=next` names the past-only choice for the period after the study's."""
    from timevec.adapt.export import resolve
    from timevec.adapt.forecast import ForecastParams, forecast_coefficients
    from timevec.config import ConfigError

    config, _, store = adapted
    table = store.read_table(FORECAST_TABLE)
    held = table[(table["task"] == "lm") & (table["selection"] == "past-only") & (table["split"] == "test")
                 & ~table["method"].isin(["base", "latest"])]
    gains = held.groupby("method")["gain_vs_latest_pct"].mean().dropna()
    recipe = resolve(config, store, "best:task=lm,period=next")
    assert recipe.target == "2018" and recipe.task == "lm"  # the period after the last stored lm vector, 2017
    if gains.max() > 0:  # the method that beat the latest vector most on the held-out years, from every stored year
        method = gains.idxmax()
        assert recipe.kind == "forecast" and recipe.params["method"] == method
        expected = forecast_coefficients(method, ["2015", "2016", "2017"], "2018", ForecastParams.from_config(config.forecast))
        assert [(c, p) for c, _, p in recipe.terms] == expected
        assert f"{method} beat the latest vector most" in recipe.selection
    else:  # no forecast beat it there: the latest vector itself
        assert recipe.kind == "vector" and recipe.terms == [(1.0, "lm", "2017")]
        assert "no forecast beat the latest vector" in recipe.selection
    assert recipe.selection.startswith("past-only: on the study's held-out")
    empty = VectorStore(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no lm vector of granularity year"):
        resolve(config, empty, "best:task=lm,period=next")


@pytest.mark.slow
def test_forecast_export_reloads_with_the_study_cell(adapted, tmp_path: Path) -> None:
    config, overrides, store = adapted
    table = store.read_table(FORECAST_TABLE)
    row = _one(table, task="lm", method="ema", target_period="2017")
    assert row["history"] == "2015,2016" and row["selection"] == "past-only"

    out = tmp_path / "forecast"
    assert main(["export", str(TINY), *_sets(overrides), "forecast:task=lm,method=ema,target=2017", "--out", str(out)]) == 0
    card = json.loads((out / "timevec_recipe.json").read_text())
    # EMA with β = 0.5: weights 0.5 (2015) and 1 (2016), normalised
    assert [t["vector"] for t in card["terms"]] == ["lm/2015", "lm/2016"]
    assert [t["coefficient"] for t in card["terms"]] == pytest.approx([1 / 3, 2 / 3], rel=1e-12)
    assert card["alpha_selection"].startswith("past-only")
    score = _one(pd.DataFrame(card["scores"]), test_period="2017")
    assert score["metric"] == "perplexity" and score["study_value"] == row["value"] and score["matches_study"]

    loaded = _reloaded(out, overrides, "lm", "2017", threads=config.ray.torch_threads)
    assert loaded["value"] == row["value"]  # exactly the study's cell
    assert _one(table, task="lm", method="base", target_period="2017")["value"] != row["value"]  # and not θ_pre


def test_a_combination_with_vectors_missing_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, overrides, _, _ = _study(tmp_path, [("lm", "2014")])
    out = tmp_path / "never"
    status = main(["export", str(TINY), *_sets(overrides), "analogy:task=classification,j=2014,k=2016,a1=1,a2=0.2,a3=0.1",
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert "classification/2014" in err and "lm/2016" in err and "lm/2014" not in err.split("store")[-1]
    assert not out.exists()


ANALOGY = "analogy:task=classification,j=2014,k=2016,a1=1.0,a2=0.5,a3={a3}"  # with _study's vectors


def _peft_equals_dense(config: ExperimentConfig, tmp: Path) -> dict:
    """Export θ_pre + τ_cls(2014) + 0.5·τ_lm(2016) − 0.6·τ_lm(2014) (dense, and as one PEFT adapter), θ_pre,
    and the same with +0.6 (what a sign error would give, dense only); in a fresh process,
    PeftModel(θ_pre, adapter) must give the dense export's logits, and the flipped export must not.

    Tolerance: the adapter adds B·(A·x) in fp32 to the base layer's output where the dense export
    folded the same product into W in fp32, so the two differ by fp32 rounding only (≪ 1e-5 of the
    largest logit). Returns the dense export's card."""
    dense, base, flipped = tmp / "analogy", tmp / "base", tmp / "flipped"
    card = export(config, ANALOGY.format(a3=0.6), dense, score=False)
    export(config, "base", base, score=False)
    export(config, ANALOGY.format(a3=-0.6), flipped, score=False, lora=False)
    assert [t["coefficient"] for t in card["terms"]] == [1.0, 0.5, -0.6]
    result = _fresh(f"""
        import json, torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        ids = torch.arange(40).reshape(2, 20) % 250 + 3
        def logits(m):
            with torch.no_grad():
                return m.eval()(input_ids=ids).logits
        dense = logits(AutoModelForCausalLM.from_pretrained({str(dense)!r}))
        flipped = logits(AutoModelForCausalLM.from_pretrained({str(flipped)!r}))
        base = AutoModelForCausalLM.from_pretrained({str(base)!r})
        peft = logits(PeftModel.from_pretrained(base, {str(dense / 'adapter')!r}))
        print(json.dumps({{"diff": float((peft - dense).abs().max()), "flip": float((flipped - dense).abs().max()),
                          "scale": float(dense.abs().max())}}))
    """)
    tol = 1e-5 * max(1.0, result["scale"])
    assert result["diff"] <= tol, result
    assert result["flip"] > 100 * tol, result  # the sign of α₃ is visible far above the tolerance
    return card


@pytest.mark.slow
def test_lora_analogy_with_negative_alpha3_as_one_peft_adapter(tmp_path: Path) -> None:
    lora = "training.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [c_attn, c_fc], store: factors}"
    config, _, _, _ = _study(tmp_path, [("classification", "2014"), ("lm", "2014"), ("lm", "2016")], [lora, "training.lr=0.05"])
    card = _peft_equals_dense(config, tmp_path)
    assert card["model_class"] == "GPT2LMHeadModel"  # Conv1D layers: the factors transposed, fan_in_fan_out
    adapter = card["adapter"]
    assert adapter["rank"] == 12 and adapter["modules"] == 2  # three rank-4 terms concatenated


# ----------------------------------------------------------------------------- a Linear-layout base


def _hub_base(directory: Path, model) -> Path:
    """``model`` and the embedded base's byte tokenizer as a save_pretrained directory: a base for
    ``base: {source: hub, hub_id: DIR}`` (the path a Llama/SmolLM2 directory takes), no download."""
    from transformers import ByT5Tokenizer

    model.save_pretrained(directory)
    ByT5Tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM: its projections are nn.Linear (out×in weights), as in SmolLM2."""
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = ByT5Tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return _hub_base(tmp_path_factory.mktemp("llama") / "llama-tiny", LlamaForCausalLM(config))


LLAMA_LORA = [
    "training.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj, down_proj], store: factors}",
    # the task's vector at another rank, scale and module set: per module the adapter's blocks are
    # 2 + 4 + 4 wide (q_proj, down_proj) or 4 + 4, zero-padded to 10 (v_proj)
    "training.task_overrides={classification: {lora: {r: 2, alpha: 6, dropout: 0.0, target_modules: [q_proj, down_proj], "
    "store: factors}}}",
    "training.lr=0.05",
]


@pytest.fixture(scope="module")
def llama_lora(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """classification/2014 (LoRA rank 2) and lm/2014, lm/2016 (rank 4) fine-tuned on the tiny Llama, stored as factors."""
    runs = [("classification", "2014"), ("lm", "2014"), ("lm", "2016")]
    config, overrides, _, store = _study(tmp_path_factory.mktemp("llama-lora"), runs,
                                         ["base.source=hub", f"base.hub_id={llama_dir}", *LLAMA_LORA])
    return config, overrides, store


@pytest.mark.slow
def test_lora_analogy_of_unequal_ranks_on_linear_layers_as_one_peft_adapter(llama_lora, tmp_path: Path) -> None:
    config, _, store = llama_lora
    ranks: dict[str, dict[str, int]] = {}
    for task, period in (("classification", "2014"), ("lm", "2016"), ("lm", "2014")):
        vector = store.get_native(task, period)
        assert isinstance(vector, LowRankVector) and not vector.dense
        ranks[f"{task}/{period}"] = {n.removesuffix(".weight"): f.rank for n, f in vector.factors.items()}
    q, v, down = (f"model.layers.0.{m}" for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
    assert ranks == {"classification/2014": {q: 2, down: 2}, "lm/2016": {q: 4, v: 4, down: 4}, "lm/2014": {q: 4, v: 4, down: 4}}

    card = _peft_equals_dense(config, tmp_path)
    assert card["model_class"] == "LlamaForCausalLM"
    assert card["adapter"]["rank"] == 10 and card["adapter"]["ranks"] == {q: 10, v: 8, down: 10}
    adapter_config = json.loads((tmp_path / "analogy" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 10 and adapter_config["fan_in_fan_out"] is False  # Linear: peft's own out×r / r×in layout


# ----------------------------------------------------------------------------- no exact adapter: none, and why


@pytest.mark.slow
def test_a_merge_other_than_task_arithmetic_gets_no_adapter_and_the_card_says_why(llama_lora, tmp_path: Path) -> None:
    _, overrides, _ = llama_lora
    out = tmp_path / "ties"
    card = export(load_config(TINY, [*overrides, "merge.method=ties"]), ANALOGY.format(a3=0.6), out, score=False)
    reason = "merged with ties(density=0.5, sign=total), which is not a sum of the factors"
    assert card["adapter"] == {"skipped": reason} and card["merge"]["applies"]
    assert (out / "model.safetensors").exists() and not (out / "adapter").exists()
    assert f"No PEFT adapter: {reason}." in (out / "README.md").read_text()


NORM, EMBED = "model.norm.weight", "model.embed_tokens.weight"
Q = "model.layers.0.self_attn.q_proj.weight"


def _factor(shape: torch.Size, rank: int, seed: int) -> Factor:
    g = torch.Generator().manual_seed(seed)
    return Factor(0.1 * torch.randn(shape[0], rank, generator=g), 0.1 * torch.randn(rank, shape[1], generator=g), 2.0)


@pytest.fixture(scope="module")
def handmade(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ExperimentConfig:
    """The tiny Llama as the base of a store of hand-made vectors, one per way a vector lacks an exact adapter."""
    config = load_config(TINY, [f"store.url={tmp_path_factory.mktemp('handmade')}", "base.source=hub", f"base.hub_id={llama_dir}"])
    store, base = build_store(config, {("lm", "2017"): 7})  # a dense τ
    shapes = {n: t.shape for n, t in base.items()}
    store.put_vector("lm", "2014", LowRankVector({Q: _factor(shapes[Q], 2, 1)}, {NORM: 0.01 * torch.ones(shapes[NORM])}, shapes))
    store.put_vector("lm", "2015", LowRankVector({}, {}, shapes))  # zero: no factor, nothing dense
    store.put_vector("lm", "2016", LowRankVector({EMBED: _factor(shapes[EMBED], 2, 2)}, {}, shapes))
    return config


@pytest.mark.parametrize(("vector", "reason"), [
    ("lm/2014", f"a vector holds dense tensors beside its factors ({NORM})"),
    ("lm/2015", "no factors"),
    ("lm/2016", "model.embed_tokens is a Embedding, not a Linear/Conv1D layer"),
])
def test_a_low_rank_vector_without_an_exact_adapter_gets_none_and_the_card_says_why(
    handmade: ExperimentConfig, tmp_path: Path, vector: str, reason: str,
) -> None:
    out = tmp_path / "out"
    card = export(handmade, vector, out, score=False)
    assert card["adapter"] == {"skipped": reason}
    assert (out / "model.safetensors").exists() and not (out / "adapter").exists()
    assert f"No PEFT adapter: {reason}." in (out / "README.md").read_text()


def test_a_dense_vector_gets_no_adapter_and_the_card_says_why(handmade: ExperimentConfig, tmp_path: Path) -> None:
    out = tmp_path / "out"
    card = export(handmade, "lm/2017", out, score=False)
    reason = "lm/2017 is stored dense, not as LoRA factors (training.lora.store: factors stores a run's vector as an adapter)"
    assert card["terms"][0]["kind"] == "dense" and card["adapter"] == {"skipped": reason}
    assert (out / "model.safetensors").exists() and not (out / "adapter").exists()
    assert f"No PEFT adapter: {reason}." in (out / "README.md").read_text()


def test_factors_on_conv1d_and_linear_layers_get_no_adapter_and_the_card_says_why(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    # untied: lm_head (an nn.Linear) is a parameter of its own beside the Conv1D layers
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=384, n_positions=64, n_embd=32, n_layer=1, n_head=2, n_inner=64,
                                      bos_token_id=1, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False))
    directory = _hub_base(tmp_path / "gpt2-untied", gpt2)
    config = load_config(TINY, [f"store.url={tmp_path / 'store'}", "base.source=hub", f"base.hub_id={directory}"])
    store, base = build_store(config, {})
    shapes = {n: t.shape for n, t in base.items()}
    conv, head = "transformer.h.0.attn.c_attn.weight", "lm_head.weight"
    store.put_vector("lm", "2014", LowRankVector({conv: _factor(shapes[conv], 2, 1), head: _factor(shapes[head], 2, 2)}, {}, shapes))
    out = tmp_path / "out"
    card = export(config, "lm/2014", out, score=False)
    reason = "the targets mix Conv1D and Linear layers (peft's fan_in_fan_out is one flag)"
    assert card["adapter"] == {"skipped": reason}
    assert (out / "model.safetensors").exists() and not (out / "adapter").exists()
    assert f"No PEFT adapter: {reason}." in (out / "README.md").read_text()
