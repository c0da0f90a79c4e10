"""One entry of the store (a vector, or the base) as shards + manifest: writing it, reading it
back, and the integrity checks on the way.

Why a module of its own: this is where a vector becomes visible or is refused. Writing validates
the layout, casts, refuses NaN/Inf before any byte is written, removes a stale manifest, writes
every shard and only then publishes the manifest — a writer killed at any point leaves the old
complete vector or no visible vector, never a visible half. Reading checks each shard's size,
checksum (xxh3_128 by default, sha256 for old manifests or on request) and base fingerprint
and every tensor's shape, so a truncated or flipped shard, or a vector taken against another base,
is an error naming the vector and the file.

``files`` is the store's :class:`~timevec.store.fs.StoreFiles`; ``info`` its parsed
``store.json``; ``directory`` the entry's full path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from timevec.store.checksum import DEFAULT_CHECKSUM, check_digest, entry_checksum, new_hasher
from timevec.store.codec import (
    Header,
    decode_numpy,
    decode_ranges,
    decode_safetensors,
    encode_shard,
)
from timevec.store.errors import StoreError
from timevec.store.fs import Pieces, StoreFiles
from timevec.store.layout import (
    FORMAT_VERSION,
    STORE_DTYPES,
    check_layout,
    now,
    shard_entry,
    shard_file,
    shard_names,
)
from timevec.weights.vectors import TimeVector, sum_of_squares

_CHECK_CHUNK = 1024 * 4096  # elements per step of the NaN/Inf + norm pass

__all__ = ["check_header", "check_shard", "load_shard", "read_entry", "shard_where", "write_entry"]


def write_entry(
    files: StoreFiles,
    info: Mapping[str, Any],
    label: str,
    directory: str,
    vec: TimeVector,
    dtype: str,
    run: dict[str, Any],
    *,
    task: str | None,
    period: str | None,
    write: Callable[[str, Any], None],
    publish: Callable[[str, dict[str, Any], str], None],
    stale: Sequence[str] = (),
    checksum: str = DEFAULT_CHECKSUM,
) -> dict[str, Any]:
    """Validate, cast, check finiteness, remove ``stale`` files, write every shard (``write``),
    then the manifest (``publish``, last); returns the manifest. Shared by vectors and the base.

    Each shard is written as the safetensors header followed by its tensors' own bytes in plan
    order (no joined copy on a local disk), and ``checksum`` is computed on the same chunks as
    they are written. Casts to another dtype are redone per shard rather than kept, so memory
    beyond the caller's vector is O(shard)."""
    check_layout(info, label, vec)
    torch_dtype = STORE_DTYPES[dtype]
    num_shards = int(info["shard_plan"]["num_shards"])
    plan = info["shard_plan"]["tensors"]
    # One pass: cast to the stored dtype and take the sum of squares (for the manifest's norm).
    # NaN/Inf propagate into it, so a non-finite sum means NaN/Inf in the tensor (or overflow
    # when casting to fp16) — refused before any byte is written.
    # Chunk by chunk (whole 4096-element rows of sum_of_squares), so no cast of a whole tensor is held.
    n_params = 0
    sumsq = 0.0
    for name in info["shapes"]:
        flat = vec[name].reshape(-1)
        n_bad = 0
        for a in range(0, flat.numel(), _CHECK_CHUNK):
            t = flat[a : a + _CHECK_CHUNK].to(torch_dtype)
            s = sum_of_squares(t)
            if not math.isfinite(s):
                bad = int((~torch.isfinite(t)).sum())
                if bad == 0:  # huge but finite values overflowed fp32 squares: redo in float64
                    s = float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
                n_bad += bad
            sumsq += s
        if n_bad or not math.isfinite(sumsq):
            what = f"as {dtype}" if torch_dtype != torch.float32 else ""
            raise StoreError(
                f"vector {label}: tensor {name!r} (shard {shard_file(plan[name])}) has {n_bad} NaN/Inf "
                f"value(s) {what}".rstrip()
            )
        n_params += flat.numel()
    files.remove(list(stale))
    fp = info["base_fingerprint"]

    def write_shard(k: int) -> dict[str, Any]:
        names = [n for n in info["shapes"] if plan[n] == k]
        meta = {
            "format": "pt",
            "timevec_format_version": str(FORMAT_VERSION),
            "vector": label,
            "shard": str(k),
            "base_fingerprint": fp,
        }
        header, pieces = encode_shard({n: vec[n].to(torch_dtype).contiguous() for n in names}, meta)
        hasher = new_hasher(checksum)
        write(f"{directory}/{shard_file(k)}", Pieces([header, *pieces], hasher.update))
        size = len(header) + sum(p.nbytes for p in pieces)
        return {"index": k, "file": shard_file(k), checksum: hasher.hexdigest(), "bytes": size, "tensors": names}

    shards = list(files.map(write_shard, range(num_shards), window=2))
    out = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "period": period,
        "base_id": info["base_id"],
        "base_fingerprint": fp,
        "dtype": dtype,
        "created": now(),
        "l2_norm": math.sqrt(sumsq),
        "n_params": n_params,
        "checksum": checksum,
        "shards": shards,
        "run": run,
    }
    publish(f"{directory}/manifest.json", out, label)
    return out


def load_shard(
    files: StoreFiles,
    info: Mapping[str, Any],
    label: str,
    directory: str,
    entry: dict[str, Any],
    verify: bool,
    names: Sequence[str] | None = None,
    as_numpy: bool = False,
    widen: bool = True,
) -> dict[str, Any]:
    """Read one shard; with ``verify``, check size, checksum (the one its manifest entry names:
    :mod:`~timevec.store.checksum`, computed on each chunk as it arrives), base fingerprint and shapes.

    Returns fp32 torch tensors (``widen=False``: in the store's dtype, views into the shard's
    buffer — no copy), or with ``as_numpy`` read-only numpy arrays (fp32/fp16).
    Without ``verify`` and with ``names`` a strict subset, only those tensors' byte ranges are
    read (the header first, then one ranged read per tensor).
    """
    k = int(entry["index"])
    path = f"{directory}/{entry['file']}"
    where = shard_where(files, label, path)
    expected = shard_names(info, k)
    wanted = list(expected) if names is None else list(names)
    for name in wanted:
        if name not in expected:
            raise StoreError(f"{where}: tensor {name!r} is not in shard {k} of the store's plan")
    try:
        if not verify and len(wanted) < len(expected):
            tensors = decode_ranges(lambda start, end: files.read_range(path, start, end), where, wanted)
        else:
            buf = read_shard_bytes(files, path, entry, where, verify, writable=not as_numpy)
            decode = decode_numpy if as_numpy else decode_safetensors
            meta, tensors = decode(buf, where)  # type: ignore[assignment,arg-type]  # numpy arrays when as_numpy, tensors otherwise
            if verify:
                check_header(where, info, meta, tensors, expected)
            tensors = {n: tensors[n] for n in wanted if n in tensors}
    except FileNotFoundError:
        raise StoreError(f"{where}: file not found (manifest lists it)") from None
    shapes = info["shapes"]
    out: dict[str, Any] = {}
    for name in wanted:
        if name not in tensors:
            raise StoreError(f"{where}: tensor {name!r} is missing from the shard")
        t = tensors[name]
        if list(t.shape) != list(shapes[name]):
            raise StoreError(
                f"{where}: tensor {name!r} has shape {list(t.shape)}, the store's base has {list(shapes[name])}"
            )
        out[name] = t if as_numpy or not widen or t.dtype == torch.float32 else t.float()
    return out


def read_shard_bytes(
    files: StoreFiles, path: str, entry: Mapping[str, Any], where: str, verify: bool, writable: bool = True
) -> bytes | bytearray | memoryview:
    """The whole shard file; with ``verify``, its size and checksum (the one its manifest entry
    names, computed on each chunk as it arrives) against ``entry``. A missing file raises
    FileNotFoundError (the caller names it)."""
    hasher = None
    if verify:
        algorithm, digest = entry_checksum(entry, where)
        hasher = new_hasher(algorithm)
    buf = files.read(path, writable=writable, observe=None if hasher is None else hasher.update)
    if verify:
        if len(buf) != int(entry["bytes"]):
            raise StoreError(f"{where}: truncated or resized: {len(buf)} bytes, the manifest says {entry['bytes']}")
        assert hasher is not None
        check_digest(where, algorithm, hasher.hexdigest(), digest)
    return buf


def shard_where(files: StoreFiles, label: str, path: str) -> str:
    """How every message about one shard file starts."""
    return f"vector {label}: shard {files.rel(path)}" if label != "base" else f"base: shard {files.rel(path)}"


def check_header(
    where: str,
    info: Mapping[str, Any],
    meta: Mapping[str, str],
    tensors: Mapping[str, Any] | Header,
    expected: Sequence[str],
    listed_in: str = "the store's plan",
) -> None:
    """A verified shard's header: written against this store's base, holding exactly the tensors
    ``expected`` (those of the store's plan, or for a low-rank shard those its manifest lists)."""
    base_fingerprint = str(info["base_fingerprint"])
    shard_fp = meta.get("base_fingerprint")
    if shard_fp is not None and shard_fp != base_fingerprint:
        raise StoreError(
            f"{where}: was written against base fingerprint {shard_fp}, this store's base is {base_fingerprint}"
        )
    if sorted(tensors) != sorted(expected):
        missing = sorted(set(expected) - set(tensors)) or sorted(set(tensors) - set(expected))
        raise StoreError(f"{where}: holds tensors that differ from {listed_in} (e.g. {missing[0]!r})")


def read_entry(
    files: StoreFiles,
    info: Mapping[str, Any],
    label: str,
    directory: str,
    manifest: dict[str, Any],
    names: list[str] | None,
    verify: bool,
    widen: bool = True,
) -> dict[str, torch.Tensor]:
    """The entry's tensors (all in store order, or ``names`` in the given order), reading only the
    shards that hold them: fp32, or with ``widen=False`` in the store's dtype (nothing beyond the
    bytes read is allocated). ``manifest`` has passed :func:`~timevec.store.layout.check_manifest_base`."""
    plan = info["shard_plan"]["tensors"]
    wanted = list(info["shapes"]) if names is None else list(names)
    by_shard: dict[int, list[str]] = {}
    for name in wanted:
        if name not in plan:
            raise StoreError(f"vector {label}: no tensor {name!r} in the store's plan")
        by_shard.setdefault(int(plan[name]), []).append(name)
    full = names is None

    def load(k: int) -> dict[str, torch.Tensor]:
        entry = shard_entry(label, manifest, k)
        return load_shard(files, info, label, directory, entry, verify, None if full else by_shard[k], widen=widen)

    tensors: dict[str, torch.Tensor] = {}
    for part in files.map(load, sorted(by_shard)):
        tensors.update(part)
    return {n: tensors[n] for n in wanted}


def check_shard(
    files: StoreFiles, info: Mapping[str, Any], label: str, directory: str, manifest: dict[str, Any], k: int
) -> str | None:
    """The problem with shard ``k`` of an entry (corrupt, mis-shaped, NaN/Inf), or None."""
    try:
        entry = shard_entry(label, manifest, k)
        tensors = load_shard(files, info, label, directory, entry, True)
        for name, t in tensors.items():
            if not bool(torch.isfinite(t).all()):
                return f"vector {label}: shard {files.rel(directory)}/{entry['file']}: tensor {name!r} has NaN/Inf"
    except StoreError as exc:
        return str(exc)
    return None
