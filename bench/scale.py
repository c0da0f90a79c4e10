"""Bench: the vector store at model scale — a 1 B-parameter model and SmolLM2-135M — on a local
folder and on the S3 server on loopback, each operation in a fresh process with its peak RSS.

    .venv/bin/python bench/scale.py [--model 1b|smollm2-135m] [--n 8] [--backends local,s3]
                                    [--dtype float16] [--pairs 2] [--tmp DIR] [--gram-noverify]

Why it exists (issue #13): the store had never held a vector above 13 M parameters. Here N
synthetic vectors with the exact tensor shapes of Llama-3.2-1B (1.24 B parameters, a 263 M-
parameter embedding in one tensor) or SmolLM2-135M are written and read through the store and
compared, on the same bytes, with raw fsspec IO:

- write: ``put_vector`` (NaN/Inf check + norm, cast, safetensors, xxh3_128, atomic publish) of every
  vector; for ``--pairs`` of them, interleaved, ``fs.pipe_file`` of the identical shard bytes (the
  store's encoding is deterministic; they are built untimed, then written, then deleted);
- read: ``get_tensors(verify=True)`` (the vector in the store's dtype) and ``get_vector(verify=True)``
  (widened to fp32) against ``fs.cat_file`` of the same shard files, ``--pairs`` vectors, interleaved;
- Gram: ``store.gram`` of all N (verified) against ONE sequential ``cat_file`` of every vector byte.

Every operation runs in its own subprocess (``python bench/scale.py --child …``) and reports its
wall time and ``ru_maxrss`` before and after the operation: the vector's values are views into a
shared memory-mapped random pool (``pool`` in the table), so what an operation adds is its own.
The vectors are random, so the values do not matter — only shapes, dtype and bytes. Everything
is written under ``--tmp`` and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness


def model_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Llama-style parameter shapes: Llama-3.2-1B (d 2048, 16 layers, GQA 8 kv heads, vocab 128256,
    tied embedding) or SmolLM2-135M (d 576, 30 layers, 3 kv heads, vocab 49152, tied)."""
    if model == "1b":
        d, layers, ff, kv, vocab = 2048, 16, 8192, 512, 128256
    elif model == "smollm2-135m":
        d, layers, ff, kv, vocab = 576, 30, 1536, 192, 49152
    else:
        raise SystemExit(f"unknown --model {model!r}: 1b or smollm2-135m")
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
            p + "mlp.down_proj.weight": (d, ff),
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
        }  # fmt: skip
    shapes["model.norm.weight"] = (d,)
    return shapes


# ----------------------------------------------------------------------------- child side


def _rss_mb() -> float:
    """This process's peak RSS (MB): VmHWM, which starts afresh at exec — unlike ``ru_maxrss``,
    which keeps the forking parent's resident size (here the random pool)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _vector(spec: dict, i: int):
    """Vector ``i``: every tensor a view into the memory-mapped pool at an offset of its own."""
    import numpy as np
    import torch

    pool = torch.from_numpy(np.memmap(spec["pool"], dtype=np.float32, mode="c"))
    out = {}
    for j, (name, shape) in enumerate(spec["shapes"].items()):
        numel = math.prod(shape)
        off = (i * 1_000_003 + j * 7919) % (pool.numel() - numel + 1)
        out[name] = pool[off : off + numel].view(shape)
    return out


def child(op: str, spec: dict, i: int) -> dict:
    from timevec.store import VectorStore
    from timevec.store.codec import encode_shard

    store = VectorStore(spec["url"], spec["options"])
    keys = [("lm", str(2000 + j)) for j in range(spec["n"])]
    files = lambda j: [f"{store.root}/vectors/lm/{2000 + j}/shard-{k:05d}.safetensors" for k in range(store.num_shards)]  # noqa: E731
    nbytes = 0
    if op == "init":
        before = _rss_mb()
        t0 = time.perf_counter()
        store.init("bench-1b-base", _vector(spec, 10_000), dtype=spec["dtype"], target_shard_bytes=spec["shard"])
    elif op == "put":
        vec = _vector(spec, i)
        before = _rss_mb()
        t0 = time.perf_counter()
        m = store.put_vector(*keys[i], vec, {"bench": True})
        nbytes = sum(s["bytes"] for s in m["shards"])
        digests = [s[m["checksum"]] for s in m["shards"]]
    elif op == "rawput":
        import xxhash

        from timevec.store.layout import STORE_DTYPES

        vec, info, dtype = _vector(spec, i), store.info(), STORE_DTYPES[spec["dtype"]]
        before = _rss_mb()
        seconds, paths, digests = 0.0, [], []
        for k in range(store.num_shards):  # the very bytes put_vector wrote, built untimed
            meta = {"format": "pt", "timevec_format_version": "1", "vector": f"lm/{2000 + i}", "shard": str(k),
                    "base_fingerprint": info["base_fingerprint"]}  # fmt: skip
            header, pieces = encode_shard({n: vec[n].to(dtype).contiguous()
                                           for n in store.shard_names(k)}, meta)  # fmt: skip
            data = b"".join([header, *(bytes(p) for p in pieces)])
            path = f"{store.root}/raw/{i}/{k}.bin"
            if store._local:  # noqa: SLF001
                os.makedirs(os.path.dirname(path), exist_ok=True)
            t0 = time.perf_counter()
            store.fs.pipe_file(path, data)
            seconds += time.perf_counter() - t0
            nbytes += len(data)
            paths.append(path)
            digests.append(xxhash.xxh3_128_hexdigest(data))
            del data, pieces
        store.fs.rm(paths)
        return {"op": op, "i": i, "seconds": seconds, "bytes": nbytes, "rss_before_mb": before,
                "rss_peak_mb": _rss_mb(), "digests": digests}  # fmt: skip
    elif op in ("get", "stored"):
        before = _rss_mb()
        t0 = time.perf_counter()
        vec = store.get_vector(*keys[i]) if op == "get" else store.get_tensors(*keys[i])
        nbytes = sum(s["bytes"] for s in store.manifest(*keys[i])["shards"])
        del vec
    elif op == "rawget":
        before = _rss_mb()
        t0 = time.perf_counter()
        held = [store.fs.cat_file(path) for path in files(i)]  # held to the end, as a read vector is
        nbytes = sum(len(b) for b in held)
        del held
    elif op == "seq":
        before = _rss_mb()
        t0 = time.perf_counter()
        for j in range(spec["n"]):
            for path in files(j):
                nbytes += len(store.fs.cat_file(path))
    elif op in ("gram", "gram_noverify"):
        store.info()
        before = _rss_mb()
        t0 = time.perf_counter()
        gram = store.gram(keys, verify=op == "gram")
        nbytes = sum(sum(s["bytes"] for s in store.manifest(*k)["shards"]) for k in keys)
        assert gram.shape == (spec["n"], spec["n"])
    else:
        raise SystemExit(f"unknown child op {op!r}")
    seconds = time.perf_counter() - t0
    out = {"op": op, "i": i, "seconds": seconds, "bytes": nbytes, "rss_before_mb": before, "rss_peak_mb": _rss_mb()}
    return out | ({"digests": digests} if op == "put" else {})


# ----------------------------------------------------------------------------- parent side


def run_child(op: str, spec_path: Path, i: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", op, "--spec", str(spec_path), "--i", str(i)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child {op} {i} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_backend(name: str, url: str, options: dict, args: argparse.Namespace, pool: Path, tmp: Path) -> None:
    spec = {"url": url, "options": options, "n": args.n, "dtype": args.dtype, "shard": int(args.shard_mib * 2**20),
            "pool": str(pool), "shapes": model_shapes(args.model)}  # fmt: skip
    spec_path = tmp / f"spec-{name}.json"
    spec_path.write_text(json.dumps(spec))
    began = time.perf_counter()
    init = run_child("init", spec_path)
    rows: list[dict] = []
    pairs = min(args.pairs, args.n)
    if args.gram_only:  # the Gram pass and its baseline only (the vectors are still written by put)
        pairs = 0
    for i in range(args.n):
        order = ["put", "rawput"] if i % 2 == 0 else ["rawput", "put"]
        for op in order:
            if op == "put" or i < pairs:
                rows.append(run_child(op, spec_path, i))
    reads = ["get", "stored", "rawget"]
    for i in range(pairs):
        for op in reads[i % 3 :] + reads[: i % 3]:  # each goes first in turn
            rows.append(run_child(op, spec_path, i))
    rows.append(run_child("seq", spec_path))
    rows.append(run_child("gram", spec_path))
    if args.gram_noverify:
        rows.append(run_child("gram_noverify", spec_path))

    def rate(op: str, subset: int | None = None) -> float:
        sel = [r for r in rows if r["op"] == op and (subset is None or r["i"] < subset)]
        return sum(r["bytes"] for r in sel) / sum(r["seconds"] for r in sel) / 1e6 if sel else math.nan

    def rss(op: str) -> str:
        sel = [r for r in rows if r["op"] == op]
        if not sel:
            return "not run"
        return f"peak RSS {max(r['rss_peak_mb'] for r in sel):7.0f} MB (before the op {max(r['rss_before_mb'] for r in sel):6.0f})"

    per_vec = rows[0]["bytes"] / 1e6
    seq = next(r for r in rows if r["op"] == "seq")
    gram = next(r for r in rows if r["op"] == "gram")
    goal_rw, goal_gram = (0.8, 1.5) if name == "local" else (0.9, 1.1)
    put_digests = {r["i"]: r["digests"] for r in rows if r["op"] == "put"}
    same = all(r["digests"] == put_digests[r["i"]] for r in rows if r["op"] == "rawput")
    print(f"\n[{name}] N={args.n} × {per_vec:.0f} MB ({args.dtype}, {init_shards(spec)} shards), "
          f"{seq['bytes'] / 1e9:.1f} GB of vectors; store init (fp32 base) {init['seconds']:.0f} s, "
          f"peak RSS {init['rss_peak_mb']:.0f} MB")  # fmt: skip
    put_p, raw_w = rate("put", pairs), rate("rawput")
    print(f"  write : put_vector {put_p:7.0f} MB/s (all {args.n}: {rate('put'):.0f})   raw pipe_file {raw_w:7.0f} MB/s   "
          f"ratio {put_p / raw_w:.2f}×  (goal ≥ {goal_rw}; same bytes: {same})")  # fmt: skip
    print(f"          put {rss('put')}   raw {rss('rawput')}")
    get, stored, raw_r = rate("get"), rate("stored"), rate("rawget")
    print(f"  read  : get_tensors {stored:7.0f} MB/s   raw cat_file  {raw_r:7.0f} MB/s   ratio {stored / raw_r:.2f}×  "
          f"(goal ≥ {goal_rw}; verify=True, {pairs} vectors, in the store's dtype)")  # fmt: skip
    print(f"          get_vector  {get:7.0f} MB/s   ratio {get / raw_r:.2f}×  (widened to fp32)")
    print(f"          get_tensors {rss('stored')}   get_vector {rss('get')} (its output is the fp32 vector, "
          f"{4 * n_params(spec) / 1e6:.0f} MB)   raw {rss('rawget')}")
    print(f"  gram  : streamed {gram['seconds']:7.1f} s   one sequential read {seq['seconds']:7.1f} s   "
          f"ratio {gram['seconds'] / seq['seconds']:.2f}×  (goal ≤ {goal_gram}; verified)")  # fmt: skip
    print(f"          gram {rss('gram')}   seq {rss('seq')}")
    if args.gram_noverify:
        nv = next(r for r in rows if r["op"] == "gram_noverify")
        print(f"          without verification {nv['seconds']:.1f} s, ratio {nv['seconds'] / seq['seconds']:.2f}×, {rss('gram_noverify')}")
    print(f"  ({name} took {time.perf_counter() - began:.0f} s)", flush=True)


def n_params(spec: dict) -> int:
    return sum(math.prod(s) for s in spec["shapes"].values())


def init_shards(spec: dict) -> int:
    from timevec.store.layout import shard_plan

    item = 2 if spec["dtype"] != "float32" else 4
    return shard_plan({n: math.prod(s) * item for n, s in spec["shapes"].items()}, spec["shard"])[0]


def main() -> None:
    ap = harness.parser(__doc__, harness.tmp_option())
    ap.add_argument("--model", default="1b", help="1b or smollm2-135m")
    ap.add_argument("--n", type=int, default=8, help="number of vectors")
    ap.add_argument("--dtype", default="float16", help="store dtype: float32, float16, bfloat16")
    ap.add_argument("--backends", default="local,s3", help="comma-separated: local, s3")
    ap.add_argument("--shard-mib", type=float, default=64.0, help="store target_shard_bytes in MiB")
    ap.add_argument("--pairs", type=int, default=2, help="vectors timed against raw IO for write and read")
    ap.add_argument("--gram-noverify", action="store_true", help="also time gram(verify=False)")
    ap.add_argument("--gram-only", action="store_true", help="no raw write / read comparison (put, Gram, sequential read)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--i", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(2)
        print(json.dumps(child(args.child, json.loads(Path(args.spec).read_text()), args.i)))
        return
    harness.output_block()
    import numpy as np

    shapes = model_shapes(args.model)
    total = sum(math.prod(s) for s in shapes.values())
    biggest = max(math.prod(s) for s in shapes.values())
    print(f"scale bench: {args.model} shapes, {total / 1e6:.1f} M params/vector ({len(shapes)} tensors, largest "
          f"{biggest / 1e6:.1f} M), N={args.n}, store dtype {args.dtype}, target shard {args.shard_mib} MiB; "
          f"{harness.load_note()}")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="timevec-scale-", dir=args.tmp))
    try:
        pool = tmp / "pool.f32"
        rng = np.random.default_rng(0)
        mm = np.memmap(pool, dtype=np.float32, mode="w+", shape=(biggest + (1 << 24),))
        for a in range(0, mm.size, 1 << 24):
            mm[a : a + (1 << 24)] = rng.standard_normal(min(1 << 24, mm.size - a), dtype=np.float32) * 1e-3
        mm.flush()
        del mm
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if backend == "local":
                run_backend("local", str(tmp / "local-store"), {}, args, pool, tmp)
                shutil.rmtree(tmp / "local-store", ignore_errors=True)
            elif backend == "s3":
                from timevec.store.local_s3 import start_s3_server

                server = start_s3_server(tmp / "s3", bucket="timevec-scale")
                try:
                    run_backend("s3", server.url("store"), server.storage_options, args, pool, tmp)
                finally:
                    server.stop()
                    shutil.rmtree(tmp / "s3", ignore_errors=True)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            print(f"  {harness.load_note()} now", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
