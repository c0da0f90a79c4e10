"""The store's shard checksums: which algorithm a manifest entry names, and checking a digest.

Why not sha256 everywhere: verification runs on every shard read, and sha256 manages 0.5–1.7 GB/s
on the development machine — slower than a page-cache copy, so it bounded every verified read.
xxHash's XXH3-128 (PyPI ``xxhash``) runs at ≈ 7 GB/s per core and releases the GIL on large
buffers, so hashing overlaps IO in the store's thread pool. It is an integrity check (it catches
truncation, bit flips and torn writes), not authentication: whoever can rewrite a shard can
rewrite its manifest too, with any algorithm. sha256 stays selectable (``store.checksum: sha256``).

Where the digest lives: each manifest shard entry holds ``"<algorithm>": hexdigest`` (e.g.
``"xxh3_128": "…"``), and the manifest's ``"checksum"`` names the algorithm it was written with.
Old manifests have only ``"sha256"`` and are verified with sha256. An entry naming several
algorithms is checked with sha256 first (the one a hand-repaired entry sets).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import xxhash

from timevec.store.errors import StoreError

__all__ = ["ALGORITHMS", "DEFAULT_CHECKSUM", "Hasher", "check_algorithm", "check_digest", "entry_checksum", "new_hasher", "shard_digest"]


class Hasher(Protocol):
    def update(self, data: Any, /) -> None: ...

    def hexdigest(self) -> str: ...


#: name → constructor of an incremental hasher (``update`` / ``hexdigest``), in reader preference order.
ALGORITHMS: dict[str, Callable[[], Hasher]] = {"sha256": hashlib.sha256, "xxh3_128": xxhash.xxh3_128}
DEFAULT_CHECKSUM = "xxh3_128"


def check_algorithm(name: str) -> str:
    if name not in ALGORITHMS:
        raise StoreError(f"store checksum {name!r} is not one of {sorted(ALGORITHMS)}")
    return name


def new_hasher(name: str) -> Hasher:
    return ALGORITHMS[check_algorithm(name)]()


def entry_checksum(entry: Mapping[str, Any], where: str) -> tuple[str, str]:
    """``(algorithm, expected hex digest)`` of one manifest shard entry."""
    for name in ALGORITHMS:
        digest = entry.get(name)
        if isinstance(digest, str):
            return name, digest
    raise StoreError(f"{where}: the manifest entry names no checksum (one of {list(ALGORITHMS)})")


def shard_digest(entry: Mapping[str, Any]) -> str | None:
    """The entry's digest under whichever algorithm it names (a content identity), or None."""
    return next((entry[name] for name in ALGORITHMS if isinstance(entry.get(name), str)), None)


def check_digest(where: str, algorithm: str, got: str, expected: str) -> None:
    """The error every reader raises when a shard's bytes do not hash to the manifest's digest."""
    if got != expected:
        raise StoreError(f"{where}: {algorithm} mismatch (file {got}, manifest {expected}): the shard is corrupt")
