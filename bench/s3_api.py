"""Bench: the store's S3 calls through s3fs's public API vs the private ``_call_s3`` they replaced.

    .venv/bin/python bench/s3_api.py [--rounds 30] [--mib 64] [--reads 5]

On a SeaweedFS S3 server on loopback (:mod:`timevec.store.local_s3`), side by side, interleaved per round:

- the lease's conditional writes: ``pipe_file(path, data, mode="create")`` / ``pipe_file(..., IfMatch=etag)``
  vs ``_call_s3("put_object", IfNoneMatch="*" / IfMatch=etag)`` (one create, then swaps);
- the lease's read of (record, ETag): ``fs.open(path).read()`` + ``f.details["ETag"]`` (a HEAD, then a GET
  that s3fs checks against the HEAD's ETag) vs one ``_call_s3("get_object")`` (body and ETag together);
- a vector file streamed into one buffer: ``StoreFiles.read`` (``fs.open_async``, one GET read a chunk at
  a time) vs the raw ``get_object`` body stream it wraps vs ``fs.cat_file``.

Prints medians per operation (ms) or MB/s, and each public/private ratio.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
from fsspec.asyn import sync

from timevec.store.fs import StoreFiles
from timevec.store.local_s3 import start_s3_server


def private_put(fs, path: str, data: bytes, **condition) -> str:
    bucket, key = path.split("/", 1)

    async def put() -> str:
        return (await fs._call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition))["ETag"]

    return sync(fs.loop, put)


def public_put(fs, path: str, data: bytes, **condition) -> str:
    if condition.pop("IfNoneMatch", None):
        condition["mode"] = "create"
    return fs.pipe_file(path, data, **condition)["ETag"]


def private_read(fs, path: str) -> tuple[bytes, str]:
    bucket, key = path.split("/", 1)

    async def get() -> tuple[bytes, str]:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        async with resp["Body"] as body:
            return await body.read(), resp["ETag"]

    return sync(fs.loop, get)


def public_read(fs, path: str) -> tuple[bytes, str]:
    with fs.open(path, "rb", cache_type="none") as f:
        return f.read(), f.details["ETag"]


def private_stream(fs, path: str) -> memoryview:
    bucket, key = path.split("/", 1)

    async def get() -> memoryview:
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        view = memoryview(np.empty(int(resp["ContentLength"]), dtype=np.uint8))
        at = 0
        async with resp["Body"] as body:
            async for chunk in body.iter_chunks(1 << 20):
                view[at : at + len(chunk)] = chunk
                at += len(chunk)
        assert at == view.nbytes
        return view

    return sync(fs.loop, get)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    began = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - began, out


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=30, help="lease writes/reads per variant")
    parser.add_argument("--mib", type=int, default=64, help="size of the streamed file")
    parser.add_argument("--reads", type=int, default=5, help="streamed reads per variant")
    args = parser.parse_args()
    harness.output_block()
    with tempfile.TemporaryDirectory(prefix="tv-s3api-") as tmp:
        server = start_s3_server(Path(tmp) / "s3", bucket="timevec-bench")
        try:
            files = StoreFiles(server.url("bench"), server.storage_options)
            fs = files.fs
            record = json.dumps({"holder": "bench", "nonce": "x" * 32, "expires": 0.0}, indent=2).encode()
            times: dict[str, list[float]] = {k: [] for k in (
                "create: public", "create: private", "swap: public", "swap: private", "read: public", "read: private")}
            for i in range(args.rounds):
                for variant, put, read in (("public", public_put, public_read), ("private", private_put, private_read)):
                    path = files.path(f"leases/{variant}-{i}.json")
                    t, etag = timed(put, fs, path, record, IfNoneMatch="*")
                    times[f"create: {variant}"].append(t)
                    t, etag = timed(put, fs, path, record, IfMatch=etag)
                    times[f"swap: {variant}"].append(t)
                    t, (data, got) = timed(read, fs, path)
                    assert data == record and got == etag
                    times[f"read: {variant}"].append(t)
            # a refused swap must still be refused through the public call (a stale ETag)
            try:
                public_put(fs, files.path("leases/public-0.json"), record, IfMatch='"stale"')
                raise SystemExit("a PUT with a stale IfMatch was accepted: the lease would be unsafe")
            except OSError:
                pass
            for op in ("create", "swap", "read"):
                pub, pri = statistics.median(times[f"{op}: public"]), statistics.median(times[f"{op}: private"])
                print(f"lease {op:6s}: public {pub * 1e3:7.2f} ms  private {pri * 1e3:7.2f} ms  public/private {pub / pri:5.2f}x"
                      f"  (median of {args.rounds})")

            blob = np.random.default_rng(0).integers(0, 255, args.mib << 20, dtype=np.uint8).tobytes()
            path = files.path("vector.bin")
            fs.pipe_file(path, blob)
            speeds: dict[str, list[float]] = {"StoreFiles.read (open_async)": [], "raw get_object stream": [],
                                              "cat_file": []}
            for _ in range(args.reads):
                for name, fn in (("StoreFiles.read (open_async)", lambda: files.read(path)),
                                 ("raw get_object stream", lambda: private_stream(fs, path)),
                                 ("cat_file", lambda: fs.cat_file(path))):
                    t, out = timed(fn)
                    assert len(out) == len(blob)
                    speeds[name].append(len(blob) / t / 1e6)
            base = statistics.median(speeds["raw get_object stream"])
            for name, values in speeds.items():
                mbs = statistics.median(values)
                print(f"read {args.mib} MiB, {name:30s}: {mbs:7.0f} MB/s  ({mbs / base:4.2f}x the raw stream; median of {args.reads})")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
