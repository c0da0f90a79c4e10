"""(d) One analogy trial's combine/evaluate ratio: ``WeightPatcher.apply_combination`` of 3 stored vectors
plus the restore, against one evaluation of a test split, with the vectors in host memory (as the stage
holds them) and already on the device."""

from __future__ import annotations

import statistics
import time
from typing import Any

from .context import GpuCheck


def analogy_ratio(check: GpuCheck, repeats: int = 3) -> dict[str, Any]:
    """Combine + restore vs one split's evaluation, median of ``repeats`` trials after a warm-up."""
    from timevec.adapt.analogy import analogy_terms
    from timevec.data.examples import prepare_split
    from timevec.data.models import base_is_encoder_decoder, load_tokenizer
    from timevec.evaluate.cells import CellEvaluator

    store = check.store()
    keys = sorted(store.list_vectors("lm"))
    if len(keys) < 3:
        raise RuntimeError(f"needs 3 stored lm vectors, the store has {len(keys)}")
    (_, first), (_, second), (_, last) = keys[0], keys[1], keys[-1]
    tokenizer = load_tokenizer(check.config.base)
    split = prepare_split("lm", check.corpus(), last, tokenizer, base_is_encoder_decoder(check.config.base),
                          check.config.evaluation)
    with check.threads():
        evaluator = CellEvaluator(check.config, store, device=check.device)
        vectors = [evaluator.read_vector("lm", p) for p in (first, last, second)]
        terms = analogy_terms(1.0, vectors[0], 0.3, vectors[1], 0.3, vectors[2])  # θ_pre + τ_j + 0.3 τ_k − 0.3 τ_j'
        on_device = [(c, {n: t.to(check.device) for n, t in v.tensors.items()}) for c, v in terms]

        def trial(combination) -> tuple[float, float]:
            check.sync()
            t0 = time.perf_counter()
            evaluator.patcher.apply_combination(combination)
            check.sync()
            t1 = time.perf_counter()
            evaluator.evaluate_split(split)  # ends on the host: .cpu() of the losses
            t2 = time.perf_counter()
            evaluator.patcher.restore()
            check.sync()
            t3 = time.perf_counter()
            return (t1 - t0) + (t3 - t2), t2 - t1

        trial(terms)  # warm-up: allocations, kernels, the split's resample matrix
        host = [trial(terms) for _ in range(repeats)]
        device_side = [trial(on_device) for _ in range(repeats)]
    patch = statistics.median(p for p, _ in host)
    evaluate = statistics.median(e for _, e in host)
    patch_dev = statistics.median(p for p, _ in device_side)
    n_params = sum(t.numel() for t in vectors[0].tensors.values())
    check.say(f"[d] analogy trial: combine 3 vectors + restore {patch * 1e3:.1f} ms, evaluate one split "
              f"({split.n_examples} examples) {evaluate * 1e3:.1f} ms — combine/evaluate {100 * patch / evaluate:.1f} % "
              f"(vectors in host memory, as the stage holds them); with the vectors already on the {check.device.type}: "
              f"{patch_dev * 1e3:.1f} ms = {100 * patch_dev / evaluate:.1f} % (median of {repeats}; {n_params / 1e6:.3g} M params)")
    return {"vectors": [f"lm/{p}" for p in (first, last, second)], "split": f"lm/{last}", "examples": split.n_examples,
            "params": n_params, "combine_ms": patch * 1e3, "evaluate_ms": evaluate * 1e3, "ratio": patch / evaluate,
            "combine_on_device_ms": patch_dev * 1e3, "ratio_on_device": patch_dev / evaluate, "repeats": repeats}
