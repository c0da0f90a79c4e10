"""Bench: the vector store against raw fsspec IO of the same bytes, side by side in one run.

    .venv/bin/python bench/store.py [--n 32] [--params 10e6] [--backends local,s3] [--shard-mib 8]

For each backend (a local folder; a SeaweedFS S3 server on loopback, :mod:`timevec.store.local_s3`)
N synthetic vectors of a small transformer's shapes (random fp32, ≥ 10 M parameters) are:

- written with ``put_vector`` (cast, NaN/Inf check, norm, safetensors, xxh3_128, publish, manifest)
  vs ``fs.pipe_file`` of the very same shard bytes to other paths (raw write), interleaved per vector;
- read with ``get_vector(verify=True)`` (xxh3_128 + base fingerprint checked) vs ``fs.cat_file`` of the
  same files (raw read, the vector's bytes held until it is whole, as get_vector's output is; and,
  as before 2026-12-02, each shard's bytes dropped at once), interleaved per vector;
- reduced to the N×N Gram matrix by ``store.gram`` (streamed shard by shard, float64) vs ONE
  sequential ``cat_file`` of every vector byte (the floor for any all-pairs method that reads all);
- and vs the naive all-pairs method that loads both vectors for every pair: timed on a few pairs
  and extrapolated to the N(N+1)/2 pairs (said so in the output).

Goals: write/read ≥ 0.8× raw throughput; streamed Gram ≤ 1.5× one sequential read locally, ≤ 1.1× on S3; ≥ N/4 × faster
than naive pairwise. Every timing is the best of ``--repeat`` runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import safetensors.torch
import torch

from timevec.store import VectorStore
from timevec.weights.vectors import TimeVector


def transformer_shapes(params: float) -> dict[str, tuple[int, ...]]:
    """Shapes of a GPT-style model (d=512, vocab 8192) with enough layers for ``params``."""
    d, vocab, ff = 512, 8192, 2048
    per_layer = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d
    layers = max(1, math.ceil((params - vocab * d - 512 * d - 2 * d) / per_layer))
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d), "wpe.weight": (512, d)}
    for i in range(layers):
        p = f"h.{i}."
        shapes |= {
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
            p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
            p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
            p + "mlp.c_fc.weight": (d, ff), p + "mlp.c_fc.bias": (ff,),
            p + "mlp.c_proj.weight": (ff, d), p + "mlp.c_proj.bias": (d,),
        }  # fmt: skip
    shapes |= {"ln_f.weight": (d,), "ln_f.bias": (d,)}
    return shapes


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int, scale: float = 1e-3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g).mul_(scale) for n, s in shapes.items()}


def best(times: list[float]) -> float:
    return min(times)


def run_backend(name: str, store: VectorStore, shapes: dict, args: argparse.Namespace) -> dict[str, float]:
    fs, n = store.fs, args.n
    store.init("bench-base", random_tensors(shapes, 10_000, 0.02), target_shard_bytes=int(args.shard_mib * 2**20))
    k = store.num_shards
    plan = [store.shard_names(i) for i in range(k)]
    raw_dir = f"{store.root}/raw"
    if store._local:  # noqa: SLF001 - the bench mirrors the store's own directory creation
        Path(raw_dir).mkdir(parents=True, exist_ok=True)
    keys = [("lm", str(2000 + i)) for i in range(n)]
    nbytes = 0
    t_put, t_raw_w = 0.0, 0.0
    for i, key in enumerate(keys):
        vec = TimeVector(random_tensors(shapes, i))
        shard_bytes = [safetensors.torch.save({nm: vec[nm] for nm in names}) for names in plan]  # untimed
        nbytes += sum(len(b) for b in shard_bytes)
        order = [0, 1] if i % 2 == 0 else [1, 0]  # interleave so neither side always goes first
        for which in order:
            t0 = time.perf_counter()
            if which == 0:
                store.put_vector(*key, vec, {"bench": True})
                t_put += time.perf_counter() - t0
            else:
                for j, data in enumerate(shard_bytes):
                    if store._local:  # noqa: SLF001
                        Path(f"{raw_dir}/{i}").mkdir(exist_ok=True)
                    fs.pipe_file(f"{raw_dir}/{i}/{j}.bin", data)
                t_raw_w += time.perf_counter() - t0
        del vec, shard_bytes
    vec_files = [f"{store.root}/vectors/{t}/{p}/shard-{j:05d}.safetensors" for t, p in keys for j in range(k)]
    raw_files = [f"{raw_dir}/{i}/{j}.bin" for i in range(n) for j in range(k)]

    reads_store, reads_raw, reads_dropped = [], [], []
    for _ in range(args.repeat):
        t_get, t_cat, t_drop = 0.0, 0.0, 0.0
        for i, key in enumerate(keys):
            for which in [0, 1, 2][i % 3 :] + [0, 1, 2][: i % 3]:  # each goes first in turn
                t0 = time.perf_counter()
                if which == 0:
                    got: object = store.get_vector(*key)
                    t_get += time.perf_counter() - t0
                    del got  # dropped before the next read is timed
                elif which == 1:  # the vector's bytes, held to the end as get_vector's output is
                    got = [fs.cat_file(raw_files[i * k + j]) for j in range(k)]
                    t_cat += time.perf_counter() - t0
                    del got
                else:  # each shard's bytes dropped at once: the allocator hands the same pages back
                    for j in range(k):
                        fs.cat_file(raw_files[i * k + j])
                    t_drop += time.perf_counter() - t0
        reads_store.append(t_get)
        reads_raw.append(t_cat)
        reads_dropped.append(t_drop)

    grams, seqs = [], []
    gram = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for path in vec_files:
            fs.cat_file(path)
        seqs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gram = store.gram(keys)
        grams.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    store.gram(keys, verify=False)  # once: how much of the Gram pass is checksum verification
    gram_nv = time.perf_counter() - t0

    # naive all-pairs: load both vectors for every pair (i ≤ j), timed on a subset
    rng = np.random.default_rng(0)
    pairs = [tuple(sorted(rng.choice(n, 2, replace=False))) for _ in range(args.naive_pairs)]
    naive_times = []
    for i, j in pairs:
        t0 = time.perf_counter()
        a, b = store.get_vector(*keys[i]), store.get_vector(*keys[j])
        dot = a.dot(b)
        naive_times.append(time.perf_counter() - t0)
        assert gram is not None and abs(dot - gram[i, j]) <= 1e-6 * abs(gram[i, i] * gram[j, j]) ** 0.5
    all_pairs = n * (n + 1) // 2
    naive_total = float(np.mean(naive_times)) * all_pairs

    mb = nbytes / 1e6
    r = {
        "bytes_mb": mb,
        "shards": k,
        "put_mbs": mb / t_put,
        "raw_w_mbs": mb / t_raw_w,
        "get_mbs": mb / best(reads_store),
        "raw_r_mbs": mb / best(reads_raw),
        "raw_drop_mbs": mb / best(reads_dropped),
        "seq_s": best(seqs),
        "gram_s": best(grams),
        "gram_noverify_s": gram_nv,
        "naive_s": naive_total,
    }
    print(f"\n[{name}] {store!r}: N={n} vectors × {mb / n:.1f} MB ({k} shards each), {mb:.0f} MB in all")
    print(f"  write : put_vector {r['put_mbs']:7.1f} MB/s   raw pipe_file {r['raw_w_mbs']:7.1f} MB/s   "
          f"ratio {r['put_mbs'] / r['raw_w_mbs']:.2f}×  (goal ≥ 0.8)")  # fmt: skip
    print(f"  read  : get_vector {r['get_mbs']:7.1f} MB/s   raw cat_file  {r['raw_r_mbs']:7.1f} MB/s   "
          f"ratio {r['get_mbs'] / r['raw_r_mbs']:.2f}×  (goal ≥ 0.8; verify=True: checksum of every shard)")  # fmt: skip
    print(f"          raw cat_file, each shard's bytes dropped at once {r['raw_drop_mbs']:7.1f} MB/s   "
          f"ratio {r['get_mbs'] / r['raw_drop_mbs']:.2f}×  (the allocator reuses one shard's pages)")  # fmt: skip
    print(f"  gram  : streamed {r['gram_s']:6.2f} s   one sequential read of all bytes {r['seq_s']:6.2f} s   "
          f"ratio {r['gram_s'] / r['seq_s']:.2f}×  (goal ≤ {1.5 if name == 'local' else 1.1})")  # fmt: skip
    print(f"          without checksum verification (verify=False, one run) {r['gram_noverify_s']:6.2f} s   "
          f"ratio {r['gram_noverify_s'] / r['seq_s']:.2f}×")  # fmt: skip
    print(f"  naive : load both vectors per pair, {np.mean(naive_times):.3f} s/pair measured on {len(pairs)} pairs, "
          f"extrapolated to {all_pairs} pairs = {naive_total:.1f} s; streamed is {naive_total / r['gram_s']:.0f}× faster "
          f"(goal ≥ N/4 = {n / 4:.0f}×)")  # fmt: skip
    return r


def main() -> None:
    ap = harness.parser(__doc__, harness.tmp_option())
    ap.add_argument("--n", type=int, default=32, help="number of vectors")
    ap.add_argument("--params", type=float, default=10e6, help="parameters per vector (at least)")
    ap.add_argument("--backends", default="local,s3", help="comma-separated: local, s3")
    ap.add_argument("--shard-mib", type=float, default=8.0, help="store target_shard_bytes in MiB")
    ap.add_argument("--naive-pairs", type=int, default=4, help="pairs timed for the naive method")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many read/Gram runs")
    args = ap.parse_args()
    harness.output_block()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    shapes = transformer_shapes(args.params)
    n_params = sum(math.prod(s) for s in shapes.values())
    print(f"store bench: {n_params / 1e6:.1f} M params/vector ({len(shapes)} tensors), N={args.n}, "
          f"target shard {args.shard_mib} MiB, best of {args.repeat}, torch threads {torch.get_num_threads()}")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="timevec-bench-", dir=args.tmp))
    try:
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            began = time.perf_counter()
            if backend == "local":
                run_backend("local", VectorStore(str(tmp / "local-store")), shapes, args)
            elif backend == "s3":
                from timevec.store.local_s3 import start_s3_server

                server = start_s3_server(tmp / "s3", bucket="timevec-bench")
                try:
                    run_backend("s3", VectorStore(server.url("store"), server.storage_options), shapes, args)
                finally:
                    server.stop()
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            print(f"  ({backend} took {time.perf_counter() - began:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
