"""The LoRA-adapter export of a task analogy with a negative coefficient, on a real LM.

Trains three LoRA runs stored as factors (classification/j, lm/j, lm/k; a few steps each), exports
θ_pre + α₁·τ_cls(j) + α₂·τ_lm(k) − α₃·τ_lm(j) as a dense save_pretrained directory AND as one PEFT
adapter (timevec.adapt.lora_export), exports θ_pre, and in a FRESH process compares the logits of
``PeftModel.from_pretrained(base, DIR/adapter)`` with the dense export's, beside those of the same
analogy with the sign of α₃ flipped (what PEFT's weighted-adapter path would give, peft #3004).

    python bench/export_lora.py [--config jobs/configs/smollm2-smoke.yaml] [--out /tmp/export-lora]

Prints: adapter rank, adapter bytes vs the dense model's bytes, max |logit diff| vs dense, and the
flipped-sign difference.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import harness
import torch

from timevec.adapt.export import export
from timevec.config import load_config
from timevec.data.corpus import load_corpus
from timevec.store import VectorStore
from timevec.train.loop import prepare_base
from timevec.train.plan import RunSpec
from timevec.train.run import RunJob


def main() -> None:
    parser = harness.parser(__doc__, harness.config_options(harness.REPO / "jobs" / "configs" / "smollm2-smoke.yaml",
                                                            overrides=False))
    parser.add_argument("--out", default="/tmp/export-lora")
    parser.add_argument("--alphas", default="1.0,0.5,0.6", help="α₁,α₂,α₃ (the τ_lm(j) coefficient is −α₃)")
    args = parser.parse_args()
    harness.output_block()
    out = Path(args.out)
    config = load_config(args.config, [
        f"store.url={out / 'store'}", "store.dtype=float32", "training.steps=2",
        "training.lora={r: 8, alpha: 32, dropout: 0.0, store: factors}", "training.lr=0.005",
    ])
    j, k = config.period_list("year")[:2]
    began = time.perf_counter()
    corpus = load_corpus(config.corpus)
    store = VectorStore.from_config(config.store)
    prepare_base(config, corpus, store)
    for task, period in (("classification", j), ("lm", j), ("lm", k)):
        if not store.has_vector(task, period):
            job = RunJob(config, store, corpus, RunSpec(task, period, "year"))
            model, result = job.fit(None, None, torch.device("cpu"))
            job.finish(model, result, 0, None, result.tokens)
    print(f"trained/stored 3 LoRA-factor vectors in {time.perf_counter() - began:.0f} s")
    a1, a2, a3 = (float(a) for a in args.alphas.split(","))
    spec = f"analogy:task=classification,j={j},k={k},a1={a1},a2={a2},a3={a3}"
    card = export(config, spec, out / "analogy", overwrite=True)
    export(config, "base", out / "base", score=False, overwrite=True)
    export(config, f"analogy:task=classification,j={j},k={k},a1={a1},a2={a2},a3={-a3}", out / "flipped",
           score=False, lora=False, overwrite=True)
    code = f"""
        import json, torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained({str(out / 'analogy')!r})
        ids = tok(["The economy is doing great, believe me!", "Fake news media at it again tonight."],
                  return_tensors="pt", padding=True)
        def logits(m):
            with torch.no_grad():
                return m.eval()(**ids).logits
        dense = logits(AutoModelForCausalLM.from_pretrained({str(out / 'analogy')!r}))
        flipped = logits(AutoModelForCausalLM.from_pretrained({str(out / 'flipped')!r}))
        peft = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(out / 'base')!r}),
                                                {str(out / 'analogy' / 'adapter')!r}))
        print(json.dumps({{"max_diff": float((peft - dense).abs().max()), "flip_diff": float((flipped - dense).abs().max()),
                          "max_logit": float(dense.abs().max())}}))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    dense_bytes = sum(p.stat().st_size for p in (out / "analogy").glob("*.safetensors"))
    adapter = card["adapter"]
    print(f"{spec}: coefficients {[t['coefficient'] for t in card['terms']]}")
    print(f"adapter: rank {adapter['rank']} over {adapter['modules']} modules, {adapter['bytes']:,} bytes "
          f"(dense model {dense_bytes:,} bytes: {dense_bytes / adapter['bytes']:.0f}x)")
    print(f"max |logit(PEFT adapter on θ_pre) − logit(dense export)| = {figures['max_diff']:.3g} "
          f"(max |logit| {figures['max_logit']:.3g}); with the sign of α₃ flipped: {figures['flip_diff']:.3g}")
    for s in card["scores"]:
        print(f"score {s['task']} {s['test_period']}: {s['metric']} {s['value']:.4g} [{s['low']:.4g}, {s['high']:.4g}]")


if __name__ == "__main__":
    main()
