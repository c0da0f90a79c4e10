"""The vector store: sharded safetensors + JSON manifests + Parquet tables on any fsspec URL.

Layout (ARCHITECTURE §3)::

    <root>/store.json                                 format version, base id + fingerprint, dtype, shard plan
    <root>/base/shard-00000.safetensors …  manifest.json   the base weights (always fp32)
    <root>/vectors/<task>/<period>/shard-00000.safetensors …
    <root>/vectors/<task>/<period>/manifest.json      written LAST
    <root>/results/<name>.parquet
    <root>/reports/…

Why it looks like this:

- One SHARD PLAN per store (parameter name → shard index, balanced by bytes) means shard k of
  every vector holds the same tensors, so the all-pairs Gram matrix is one streaming pass: for each
  k, read shard k of all N vectors and add ``X_k·X_kᵀ``. Memory is O(N·D/K), each byte is read once
  (a shard's data block is read straight into its row of ``X_k``: :mod:`.gram`).
- safetensors, never pickle: reading a vector runs no code. Every shard's checksum (xxh3_128 by
  default, sha256 in older stores or on request: :mod:`.checksum`) and size are in the manifest
  and every shard header carries the base fingerprint, so a truncated or flipped shard, or a
  vector taken against another base, is an error naming the vector and the file.
- A vector is visible only once its manifest exists. Shards are published first (a local write goes
  to a temporary name and is renamed; an S3 PUT is atomic), the manifest last, and an overwrite
  removes the old manifest before touching any shard: a writer killed at any point leaves either
  the old complete vector, or no visible vector, never a visible half.
- Paths are built only from validated task names (``^[a-z][a-z0-9_]*$``) and periods
  (:meth:`Period.parse`), so data can never address anything outside the root.
- Credentials come only from the standard AWS chain (environment, profiles, instance roles). The
  store refuses credential-like ``storage_options``, never writes them and never logs them.

The package, one job per module: :mod:`.vector_store` (the :class:`VectorStore` façade),
:mod:`.fs` (fsspec IO, atomic publish, Ray storage URIs), :mod:`.layout` (format, shard plan,
names, manifest checks), :mod:`.shards` (writing and reading one entry with its integrity
checks), :mod:`.checksum` (which digest, and checking it), :mod:`.codec` (safetensors),
:mod:`.gram` (the streamed Gram matrix), :mod:`.tables` (Parquet results), :mod:`.errors` (:class:`StoreError`).

May import: ``data`` (fingerprints), ``weights`` (the vector types) and the foundation (``errors``, ``periods``,
``credentials``: the credential policy the config applies too); never Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timevec.store.errors import StoreError

if TYPE_CHECKING:
    from timevec.store.layout import DEFAULT_TARGET_SHARD_BYTES, FORMAT_VERSION, STORE_DTYPES, shard_plan
    from timevec.store.vector_store import VectorStore

__all__ = ["DEFAULT_TARGET_SHARD_BYTES", "FORMAT_VERSION", "STORE_DTYPES", "StoreError", "VectorStore", "shard_plan"]

_LAZY = {"DEFAULT_TARGET_SHARD_BYTES": "layout", "FORMAT_VERSION": "layout", "STORE_DTYPES": "layout",
         "shard_plan": "layout", "VectorStore": "vector_store"}


def __getattr__(name: str) -> Any:
    """The store's torch-backed pieces, imported on first use: importing ``timevec.credentials`` (as the
    config does) or ``timevec.store.errors`` must not load torch (a mistyped key exits 2 before torch loads)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
