"""The store layout of low-rank vectors: factors per module in the store's own shard plan.

Why a module of its own: a low-rank vector (:class:`timevec.weights.lowrank.LowRankVector`) is a second
vector KIND, and everything the store does with it — write, read, verify, the streamed Gram — differs
from the dense kind only in what a shard holds. Dense stays the default and the dense code
(:mod:`.shards`, :mod:`.gram`) is untouched: the façade branches on the manifest's kind.

Layout: the same directory, the same ``shard-NNNNN.safetensors`` files and the same SHARD PLAN as
a dense vector, so shard k of every vector, of any kind, covers the same parameters and a mixed
Gram is still one streaming pass. Shard k of a low-rank vector holds, for each parameter of shard
k, either ``<name>::lora_B`` and ``<name>::lora_A`` (canonical factors, ``B @ A`` in the parameter's
shape), or ``<name>`` (a dense delta: a head, modules_to_save), or nothing (zero). The manifest
adds ``"vector_kind": "lowrank"`` and ``"factors": {name: {"rank": r, "scale": s}}``; a manifest
without ``vector_kind`` is dense, so every existing store reads unchanged. Each shard's size and
checksum (the store's, xxh3_128 by default) are in the manifest and its header carries the base fingerprint, as for dense shards;
factors are stored in the store's dtype and widened to fp32 on reading.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from timevec.store.checksum import DEFAULT_CHECKSUM, new_hasher
from timevec.store.codec import decode_safetensors, encode_safetensors
from timevec.store.errors import StoreError
from timevec.store.fs import StoreFiles
from timevec.store.layout import FORMAT_VERSION, STORE_DTYPES, now, shard_entry, shard_file, shard_names
from timevec.store.shards import check_header, load_shard, read_shard_bytes, shard_where
from timevec.weights.lowrank import Factor, LowRankVector, Part, module_gram
from timevec.weights.vectors import VectorError

__all__ = ["KIND", "is_lowrank", "lowrank_gram", "read_lowrank", "check_lowrank_shard", "vector_kind", "write_lowrank"]

KIND = "lowrank"
_B, _A = "::lora_B", "::lora_A"


def vector_kind(manifest: Mapping[str, Any]) -> str:
    """``"dense"`` (the default, and every manifest written before kinds existed) or ``"lowrank"``."""
    return str(manifest.get("vector_kind", "dense"))


def is_lowrank(manifest: Mapping[str, Any]) -> bool:
    return vector_kind(manifest) == KIND


def write_lowrank(
    files: StoreFiles,
    info: Mapping[str, Any],
    label: str,
    directory: str,
    vec: LowRankVector,
    dtype: str,
    run: dict[str, Any],
    *,
    task: str,
    period: str,
    write: Callable[[str, bytes], None],
    publish: Callable[[str, dict[str, Any], str], None],
    stale: Sequence[str] = (),
    checksum: str = DEFAULT_CHECKSUM,
) -> dict[str, Any]:
    """Validate, check finiteness, remove ``stale``, write every shard (each with its ``checksum``
    digest, :mod:`timevec.store.checksum`), then the manifest (last)."""
    shapes = {n: tuple(s) for n, s in info["shapes"].items()}
    if vec.shapes != shapes:
        bad = sorted(set(vec.shapes).symmetric_difference(shapes)) or [n for n in shapes if vec.shapes[n] != shapes[n]]
        raise StoreError(f"vector {label}: tensor {bad[0]!r} does not match the store's base (name or shape)")
    try:
        vec.check_finite(f"vector {label}")
    except VectorError as exc:
        raise StoreError(str(exc)) from None
    torch_dtype = STORE_DTYPES[dtype]
    plan = info["shard_plan"]["tensors"]
    fp = info["base_fingerprint"]
    files.remove(list(stale))

    def write_shard(k: int) -> dict[str, Any]:
        tensors: dict[str, torch.Tensor] = {}
        for name in shard_names(info, k):
            part = vec.part(name)
            if isinstance(part, Factor):
                tensors[name + _B] = part.B.to(torch_dtype).contiguous()
                tensors[name + _A] = part.A.to(torch_dtype).contiguous()
            elif part is not None:
                tensors[name] = part.to(torch_dtype).contiguous()
        meta = {
            "format": "pt",
            "timevec_format_version": str(FORMAT_VERSION),
            "vector": label,
            "shard": str(k),
            "base_fingerprint": fp,
            "vector_kind": KIND,
        }
        data = encode_safetensors(tensors, meta)
        write(f"{directory}/{shard_file(k)}", data)
        return {
            "index": k,
            "file": shard_file(k),
            checksum: _digest(checksum, data),
            "bytes": len(data),
            "tensors": list(tensors),
        }

    shards = list(files.map(write_shard, range(int(info["shard_plan"]["num_shards"])), window=2))
    stored = _stored_as(vec, torch_dtype)
    out = {
        "format_version": FORMAT_VERSION,
        "vector_kind": KIND,
        "checksum": checksum,
        "task": task,
        "period": period,
        "base_id": info["base_id"],
        "base_fingerprint": fp,
        "dtype": dtype,
        "created": now(),
        "l2_norm": stored.norm(),
        "n_params": vec.n_params,
        "stored_params": vec.stored_params,
        "factors": {n: {"rank": f.rank, "scale": f.scale, "shard": int(plan[n])} for n, f in vec.factors.items()},
        "dense_tensors": list(vec.dense),
        "shards": shards,
        "run": run,
    }
    publish(f"{directory}/manifest.json", out, label)
    return out


def _digest(algorithm: str, data: bytes | bytearray | memoryview) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


def _stored_as(vec: LowRankVector, dtype: torch.dtype) -> LowRankVector:
    """``vec`` rounded to the stored dtype (the manifest's norm is that of what is read back)."""
    if dtype == torch.float32:
        return vec
    factors = {n: Factor(f.B.to(dtype), f.A.to(dtype), f.scale) for n, f in vec.factors.items()}
    return LowRankVector(factors, {n: t.to(dtype) for n, t in vec.dense.items()}, vec.shapes)


def load_lowrank_shard(
    files: StoreFiles,
    info: Mapping[str, Any],
    label: str,
    directory: str,
    manifest: Mapping[str, Any],
    k: int,
    verify: bool,
) -> dict[str, Part]:
    """Shard ``k`` of a low-rank vector: ``{parameter name: Factor | dense tensor}`` (absent = zero).

    With ``verify``: size and checksum (the one the entry names) against the manifest, the base fingerprint in the header, and
    exactly the tensors the manifest lists. Always: every factor's shapes against the base's.
    """
    entry = shard_entry(label, dict(manifest), k)
    path = f"{directory}/{entry['file']}"
    where = shard_where(files, label, path)
    try:
        buf = read_shard_bytes(files, path, entry, where, verify)
    except FileNotFoundError:
        raise StoreError(f"{where}: file not found (manifest lists it)") from None
    meta, tensors = decode_safetensors(buf, where)
    if verify:
        if meta.get("base_fingerprint") is None:
            raise StoreError(f"{where}: its header names no base fingerprint")
        check_header(where, info, meta, tensors, entry.get("tensors", []), listed_in="the manifest's list")
    shapes = info["shapes"]
    factors = manifest.get("factors", {})
    out: dict[str, Part] = {}
    for name in shard_names(info, k):
        shape = tuple(shapes[name])
        if name in factors:
            try:
                b, a = tensors[name + _B].float(), tensors[name + _A].float()
            except KeyError:
                raise StoreError(f"{where}: factor {name!r} is missing its lora_B or lora_A tensor") from None
            rank = int(factors[name]["rank"])
            if len(shape) != 2 or tuple(b.shape) != (shape[0], rank) or tuple(a.shape) != (rank, shape[1]):
                raise StoreError(
                    f"{where}: factor {name!r} has B {list(b.shape)}, A {list(a.shape)}; "
                    f"the base's parameter is {list(shape)} at rank {rank}"
                )
            out[name] = Factor(b, a, float(factors[name]["scale"]))
        elif name in tensors:
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise StoreError(f"{where}: tensor {name!r} has shape {list(t.shape)}, the store's base has {list(shape)}")
            out[name] = t.float()
    return out


def read_lowrank(
    files: StoreFiles, info: Mapping[str, Any], label: str, directory: str, manifest: Mapping[str, Any], verify: bool
) -> LowRankVector:
    """The whole low-rank vector (its factors and dense tensors; every other parameter zero)."""
    num_shards = int(info["shard_plan"]["num_shards"])
    parts: dict[str, Part] = {}
    for shard in files.map(lambda k: load_lowrank_shard(files, info, label, directory, manifest, k, verify), range(num_shards)):
        parts.update(shard)
    factors = {n: p for n, p in parts.items() if isinstance(p, Factor)}
    dense = {n: p for n, p in parts.items() if isinstance(p, torch.Tensor)}
    return LowRankVector(factors, dense, info["shapes"])


def check_lowrank_shard(
    files: StoreFiles, info: Mapping[str, Any], label: str, directory: str, manifest: Mapping[str, Any], k: int
) -> str | None:
    """The problem with shard ``k`` of a low-rank vector (corrupt, mis-shaped, NaN/Inf), or None."""
    try:
        parts = load_lowrank_shard(files, info, label, directory, manifest, k, True)
    except StoreError as exc:
        return str(exc)
    for name, part in parts.items():
        tensors = (part.B, part.A) if isinstance(part, Factor) else (part,)
        if not all(bool(torch.isfinite(t).all()) for t in tensors):  # type: ignore[arg-type]
            return f"vector {label}: shard {files.rel(directory)}/{shard_file(k)}: tensor {name!r} has NaN/Inf"
    return None


#: One vector of the pass: (label, its directory, its manifest, already checked against the base).
Entry = tuple[str, str, dict[str, Any]]


def lowrank_gram(
    files: StoreFiles, info: Mapping[str, Any], entries: Sequence[Entry], verify: bool = True
) -> np.ndarray:
    """``G[i, j] = ⟨τ_i, τ_j⟩`` (float64) of a mix of dense and low-rank stored vectors.

    Streamed over the shard plan like :func:`timevec.store.gram.gram_matrix`: for each shard k, the
    shard-k parts of all N vectors are read (a bounded number in flight) and each parameter's N×N
    block is added by :func:`timevec.weights.lowrank.module_gram` — factors never multiplied out. Memory
    O(N · shard). Products and sums are float64 (an all-dense request goes to the dense path).
    """
    n = len(entries)
    gram = np.zeros((n, n), dtype=np.float64)
    if n == 0:
        return gram
    num_shards = int(info["shard_plan"]["num_shards"])

    def load(item: tuple[int, int]) -> tuple[int, int, dict[str, Part]]:
        k, i = item
        label, directory, manifest = entries[i]
        if is_lowrank(manifest):
            return k, i, load_lowrank_shard(files, info, label, directory, manifest, k, verify)
        entry = shard_entry(label, manifest, k)
        return k, i, dict(load_shard(files, info, label, directory, entry, verify))

    items = [(k, i) for k in range(num_shards) for i in range(n)]
    current: list[dict[str, Part]] = [{} for _ in range(n)]
    for k, i, parts in files.map(load, items, window=max(2, files.io_threads)):
        current[i] = parts
        if i == n - 1:
            for name in shard_names(info, k):
                column = [current[j].get(name) for j in range(n)]
                if any(p is not None for p in column):
                    gram += module_gram(column)
            current = [{} for _ in range(n)]
    return gram

