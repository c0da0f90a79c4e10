"""Peak RSS of each stage's unit of work on a real base, each in a fresh process.

    python bench/real_model_memory.py CONFIG STORE_URL

Needs a store that the config's pipeline has filled (at least 3 LM vectors), e.g. the SmolLM2
study's. Every stage runs in its own Python process (what a Ray trial or actor is) and reports
``ru_maxrss`` after imports and at the end, so the figures are the stage's own, not the driver's:

- ``fleet_trial``: θ_pre from the store, one LoRA fine-tune of ``training.steps`` steps, τ taken
  and written to a scratch key of a COPY of the store's layout (a temporary store);
- ``eval_actor``: a CellEvaluator (θ_pre once), one stored vector added and all its test cells;
- ``analogy_trial``: a CellEvaluator, three vectors read, θ_pre + 1.0·τ_a + 0.3·τ_b − 0.3·τ_c
  evaluated (LM vectors stand in for the task vector: the same sizes);
- ``gram``: the streamed N×N Gram matrix of every stored vector;
- ``store_get`` / ``store_put``: one vector read (fp32) / read and written back to a scratch store.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import harness


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _stage(name: str, config_path: str, url: str) -> dict:
    import torch

    from timevec.config import load_config
    from timevec.store import VectorStore

    config = load_config(config_path, [f"store.url={url}"])
    torch.set_num_threads(config.ray.torch_threads)
    store = VectorStore.from_config(config.store)
    keys = store.list_vectors("lm")
    after_imports = _rss_mb()
    began = time.perf_counter()
    if name == "store_get":
        store.get_vector(*keys[0])
    elif name == "store_put":
        import shutil

        root = tempfile.mkdtemp(prefix="tv-put-")  # a scratch copy of the store's base (files only)
        shutil.copytree(f"{url}/base", f"{root}/base")
        shutil.copy(f"{url}/store.json", f"{root}/store.json")
        vector = store.get_vector(*keys[0])
        VectorStore(root).put_vector("lm", "2099", vector)
        shutil.rmtree(root)
    elif name == "gram":
        store.gram(keys)
    elif name in ("eval_actor", "analogy_trial"):
        from timevec.data.examples import prepare_eval_sets
        from timevec.evaluate.cells import CellEvaluator

        splits = prepare_eval_sets(config)["test"]
        evaluator = CellEvaluator(config, store, splits)
        if name == "eval_actor":
            evaluator.evaluate_vector(keys[0])
        else:
            terms = [(1.0, evaluator.read_vector(*keys[0])), (0.3, evaluator.read_vector(*keys[1])),
                     (-0.3, evaluator.read_vector(*keys[2]))]
            evaluator.evaluate_weights(terms, [splits[("lm", "year")][keys[0][1]]])
    elif name == "fleet_trial":
        from timevec.data.corpus import load_corpus
        from timevec.data.examples import task_examples
        from timevec.data.models import base_from_store, float_parameters, is_encoder_decoder
        from timevec.train.loop import train
        from timevec.weights.vectors import TimeVector

        corpus = load_corpus(config.corpus)
        model, tokenizer = base_from_store(config.base, store)
        base = {k: v.detach().clone() for k, v in float_parameters(model).items()}
        cfg = config.training.for_task("lm", "year")
        examples = task_examples("lm", corpus, keys[0][1], "train", tokenizer, is_encoder_decoder(model), cfg.max_length)
        model, _ = train(model, examples, cfg, tokenizer.pad_token_id)
        tau = TimeVector({k: v.detach().float() - base[k] for k, v in float_parameters(model).items()})
        del tau
    else:
        raise SystemExit(f"unknown stage {name}")
    return {"stage": name, "after_imports_mb": round(after_imports), "peak_mb": round(_rss_mb()),
            "seconds": round(time.perf_counter() - began, 1)}


STAGES = ("store_get", "store_put", "gram", "eval_actor", "analogy_trial", "fleet_trial")


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("config", help="the study config")
    parser.add_argument("store_url", help="its store, filled by its pipeline (at least 3 LM vectors)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a child: one stage, its JSON line
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(_stage(args.stage, args.config, args.store_url)))
        return
    harness.output_block()
    for name in STAGES:
        out = subprocess.run([sys.executable, __file__, "--stage", name, args.config, args.store_url], capture_output=True,
                             text=True)
        ok = out.returncode == 0 and out.stdout.strip()
        line = out.stdout.strip().splitlines()[-1] if ok else json.dumps({"stage": name, "error": out.stderr[-400:]})
        print(line, flush=True)


if __name__ == "__main__":
    main()
