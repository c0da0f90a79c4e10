"""The store's layout: format constants, the shard plan, validated names and paths, and the checks
that a ``store.json`` or a manifest describes this store.

Why it looks like this: one SHARD PLAN per store (parameter name → shard index, balanced by
bytes) means shard k of every vector holds the same tensors, so the all-pairs Gram matrix is one
streaming pass. Paths are built only from validated task names (``^[a-z][a-z0-9_]*$``) and
periods (:meth:`Period.parse`), and a manifest may name only the store's own shard files, so data
can never address anything outside the root. Everything here is pure: ``info`` is the parsed
``store.json``, nothing is read or written.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from timevec.periods import Period, PeriodError
from timevec.store.codec import bytes_per
from timevec.store.errors import StoreError
from timevec.weights.vectors import TimeVector

__all__ = [
    "DEFAULT_TARGET_SHARD_BYTES",
    "FORMAT_VERSION",
    "STORE_DTYPES",
    "check_info",
    "check_layout",
    "check_manifest",
    "check_manifest_base",
    "check_period",
    "check_relpath",
    "check_shard_entries",
    "check_table_name",
    "check_task",
    "new_info",
    "now",
    "shard_entry",
    "shard_file",
    "shard_names",
    "shard_plan",
]

FORMAT_VERSION = 1
DEFAULT_TARGET_SHARD_BYTES = 64 * 1024 * 1024
STORE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_TASK_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_INFO_FIELDS = ("base_id", "base_fingerprint", "dtype", "shard_plan", "shapes")
_MANIFEST_FIELDS = ("format_version", "base_fingerprint", "dtype", "shards")


def now() -> str:
    """The ``created`` time written into ``store.json`` and manifests (UTC, seconds)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def shard_file(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def shard_plan(sizes: Mapping[str, int], target_shard_bytes: int) -> tuple[int, dict[str, int]]:
    """Assign tensors (name → bytes) to ``K = ceil(total/target)`` shards, balanced by bytes.

    Greedy largest-first: each tensor, biggest first, goes to the shard holding the fewest bytes
    (ties: fewest tensors, then lowest index). ``K`` never exceeds the number of tensors, so no
    shard is empty. Deterministic for the same sizes.
    """
    if target_shard_bytes <= 0:
        raise StoreError(f"target_shard_bytes must be positive, got {target_shard_bytes}")
    if not sizes:
        raise StoreError("cannot plan shards for an empty set of tensors")
    total = sum(sizes.values())
    k = max(1, min(len(sizes), math.ceil(total / target_shard_bytes)))
    loads = [[0, 0, i] for i in range(k)]  # bytes, count, index
    plan: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        slot = min(loads)
        plan[name] = slot[2]
        slot[0] += sizes[name]
        slot[1] += 1
    return k, plan


def new_info(
    base_id: str, fingerprint: str, dtype: str, floats: Mapping[str, torch.Tensor], target_shard_bytes: int
) -> dict[str, Any]:
    """The ``store.json`` of a new store: the base's identity, the dtype and the shard plan of its
    floating-point tensors ``floats`` (in store order) at ``dtype``."""
    item = bytes_per(STORE_DTYPES[dtype])
    k, plan = shard_plan({n: t.numel() * item for n, t in floats.items()}, target_shard_bytes)
    return {
        "format_version": FORMAT_VERSION,
        "base_id": base_id,
        "base_fingerprint": fingerprint,
        "dtype": dtype,
        "shard_plan": {"num_shards": k, "tensors": {n: plan[n] for n in floats}},
        "shapes": {n: list(t.shape) for n, t in floats.items()},
        "target_shard_bytes": target_shard_bytes,
        "created": now(),
    }


def shard_names(info: Mapping[str, Any], k: int) -> list[str]:
    """The tensor names of shard ``k``, in store order (the base model's parameter order)."""
    plan = info["shard_plan"]["tensors"]
    return [n for n in info["shapes"] if plan[n] == k]


# ---------------------------------------------------------------------------- names and paths


def check_task(task: str) -> str:
    if not isinstance(task, str) or not _TASK_RE.match(task):
        raise StoreError(f"bad task name {task!r}: expected ^[a-z][a-z0-9_]*$")
    return task


def check_period(period: str | Period) -> str:
    try:
        return str(Period.parse(period))
    except PeriodError as exc:
        raise StoreError(str(exc)) from None


def check_relpath(relpath: str) -> str:
    if not isinstance(relpath, str) or not relpath:
        raise StoreError(f"bad store path {relpath!r}: expected a non-empty relative path")
    if relpath.startswith("/") or "\\" in relpath or "://" in relpath or "\x00" in relpath:
        raise StoreError(f"bad store path {relpath!r}: must be relative to the store root")
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"bad store path {relpath!r}: empty, '.' or '..' components are not allowed")
    return relpath


def check_table_name(name: str) -> str:
    if not isinstance(name, str) or not _TABLE_RE.match(name) or ".." in name:
        raise StoreError(f"bad table name {name!r}: expected letters, digits, '_', '-', '.'")
    return name


# ---------------------------------------------------------------------------- store.json and manifests


def check_info(info: dict[str, Any], where: str) -> dict[str, Any]:
    """A parsed ``store.json`` of this format with every field a reader needs."""
    version = info.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(f"{where}: format_version {version!r}, this timevec reads {FORMAT_VERSION}")
    for field in _INFO_FIELDS:
        if field not in info:
            raise StoreError(f"{where}: store.json lacks {field!r}")
    return info


def check_shard_entries(manifest: dict[str, Any], where: str) -> None:
    """A manifest names only the store's own shard files (``shard-NNNNN.safetensors`` beside it):
    a forged ``file`` such as ``../../x`` must not make a reader open anything outside the root."""
    for entry in manifest.get("shards", []):
        index = entry.get("index")
        if not isinstance(index, int) or entry.get("file") != shard_file(index):
            raise StoreError(f"{where}: shard entry {entry.get('file')!r} is not a shard file of this store")


def check_manifest(manifest: dict[str, Any], label: str, rel_path: str) -> dict[str, Any]:
    """A vector's manifest (at ``rel_path``) of this format, naming only its own shard files."""
    for field in _MANIFEST_FIELDS:
        if field not in manifest:
            raise StoreError(f"vector {label}: manifest {rel_path} lacks {field!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise StoreError(f"vector {label}: manifest {rel_path} has format_version {manifest['format_version']!r}")
    check_shard_entries(manifest, f"vector {label}: manifest {rel_path}")
    return manifest


def check_manifest_base(info: Mapping[str, Any], label: str, rel_dir: str, manifest: dict[str, Any]) -> None:
    """The manifest (in ``rel_dir``) was taken against this store's base and follows its plan."""
    fp = str(info["base_fingerprint"])
    if manifest.get("base_fingerprint") != fp:
        files = [s.get("file", "?") for s in manifest.get("shards", [])]
        shown = files[0] + (f" … ({len(files)} shards)" if len(files) > 1 else "") if files else "no shards"
        raise StoreError(
            f"vector {label} was taken against another base: its manifest "
            f"{rel_dir}/manifest.json says base fingerprint {manifest.get('base_fingerprint')} "
            f"(base {manifest.get('base_id')!r}), this store's base is {fp} ({str(info['base_id'])!r}); shards: {shown}"
        )
    num_shards = int(info["shard_plan"]["num_shards"])
    if len(manifest["shards"]) != num_shards:
        raise StoreError(
            f"vector {label}: manifest {rel_dir}/manifest.json lists {len(manifest['shards'])} "
            f"shards, the store's plan has {num_shards}"
        )


def shard_entry(label: str, manifest: dict[str, Any], k: int) -> dict[str, Any]:
    """The manifest's entry for shard ``k``."""
    for entry in manifest["shards"]:
        if int(entry["index"]) == k:
            return entry
    raise StoreError(f"vector {label}: manifest lists no shard {k} ({shard_file(k)})")


def check_layout(info: Mapping[str, Any], label: str, vec: TimeVector) -> None:
    """``vec`` has exactly the store's tensors, with the base's shapes."""
    plan = info["shard_plan"]["tensors"]
    shapes = info["shapes"]
    for name in shapes:
        if name not in vec:
            shard = shard_file(plan[name])
            raise StoreError(f"vector {label}: tensor {name!r} (shard {shard}) is missing from the vector")
    for name, tensor in vec.items():
        if name not in shapes:
            raise StoreError(f"vector {label}: tensor {name!r} is not in the store's shard plan (not a base parameter)")
        if list(tensor.shape) != list(shapes[name]):
            raise StoreError(
                f"vector {label}: tensor {name!r} (shard {shard_file(plan[name])}) has shape "
                f"{list(tensor.shape)}, the store's base has {list(shapes[name])}"
            )
