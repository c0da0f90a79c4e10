"""`timevec export`: a combination the study scored, written as a save_pretrained directory, loaded
in a FRESH process with transformers alone, gives the study's value exactly; a LoRA-factor
combination with a negative coefficient as one PEFT adapter matches the dense export's logits;
missing vectors are refused (exit 2) by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import timevec.demo
from timevec.adapt.interpolation import plan_interpolation, run_interpolation_item
from timevec.adapt.selection import interpolation_protocols
from timevec.cli import main
from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import prepare_eval_sets, prepare_split
from timevec.evaluate.cells import CellEvaluator
from timevec.results import interpolation_frame
from timevec.store import VectorStore
from timevec.train.loop import prepare_base
from timevec.train.plan import RunSpec
from timevec.train.run import RunJob

TINY = Path(timevec.demo.__file__).parent / "tiny.yaml"
ROOT = Path(__file__).resolve().parents[1]


def _study(tmp: Path, runs: list[tuple[str, str]], extra: list[str] = ()):
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
    assert main(["export", str(TINY), *sum((["--set", o] for o in overrides), []),
                 "best:task=lm,protocol=time_proportional,period=2015", "--out", str(out)]) == 0
    card = json.loads((out / "timevec_recipe.json").read_text())
    assert [(t["vector"], t["coefficient"]) for t in card["terms"]] == [("lm/2014", 0.5), ("lm/2016", 0.5)]
    assert card["alpha_selection"].startswith("past-only") and card["base"]["fingerprint"] == store.base_fingerprint
    assert all(t["shards"] and t["shards"][0]["xxh3_128"] for t in card["terms"])
    score = next(s for s in card["scores"] if s["test_period"] == "2015")
    assert score["matches_study"] and score["low"] <= score["value"] <= score["high"]
    assert "time_proportional" in (out / "README.md").read_text() or "past-only" in (out / "README.md").read_text()

    loaded = _fresh(f"""
        import json, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from timevec.config import load_config
        from timevec.data.corpus import load_corpus
        from timevec.evaluate.metrics import evaluate
        from timevec.data.examples import prepare_split
        config = load_config({str(TINY)!r}, {overrides!r})
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
        tokenizer = AutoTokenizer.from_pretrained({str(out)!r})
        split = prepare_split("lm", load_corpus(config.corpus), "2015", tokenizer, False, config.evaluation)
        print(json.dumps(evaluate(model, split, config.evaluation, "cpu", tokenizer=tokenizer)))
    """)
    assert loaded["value"] == study  # exactly the study's cell
    # and the file is not just the base: θ_pre's value on 2015 differs
    base_value = evaluator.evaluate_weights([], [prepare_split("lm", corpus, "2015", evaluator.tokenizer, False, config.evaluation)])
    assert base_value[0]["value"] != study


def test_a_combination_with_vectors_missing_is_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, overrides, _, _ = _study(tmp_path, [("lm", "2014")])
    out = tmp_path / "never"
    status = main(["export", str(TINY), *sum((["--set", o] for o in overrides), []),
                   "analogy:task=classification,j=2014,k=2016,a1=1,a2=0.2,a3=0.1", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert "classification/2014" in err and "lm/2016" in err and "lm/2014" not in err.split("store")[-1]
    assert not out.exists()


@pytest.mark.slow
def test_lora_analogy_with_negative_alpha3_as_one_peft_adapter(tmp_path: Path) -> None:
    lora = "training.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [c_attn, c_fc], store: factors}"
    config, overrides, _, store = _study(tmp_path, [("classification", "2014"), ("lm", "2014"), ("lm", "2016")],
                                         [lora, "training.lr=0.05"])
    from timevec.adapt.export import export

    dense, base = tmp_path / "analogy", tmp_path / "base"
    card = export(config, "analogy:task=classification,j=2014,k=2016,a1=1.0,a2=0.5,a3=0.6", dense, score=False)
    export(config, "base", base, score=False)
    assert [t["coefficient"] for t in card["terms"]] == [1.0, 0.5, -0.6]
    adapter = card["adapter"]
    assert adapter["rank"] == 12 and adapter["modules"] == 2  # three rank-4 terms concatenated
    flipped = tmp_path / "flipped"  # the same with +α₃: what a sign error would give
    export(config, "analogy:task=classification,j=2014,k=2016,a1=1.0,a2=0.5,a3=-0.6", flipped, score=False, lora=False)
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
