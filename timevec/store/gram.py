"""The all-pairs Gram matrix of stored vectors, streamed over the shard plan.

Why it is here and not in :mod:`timevec.vectors`: the computation follows the store's layout.
Shard k of every vector holds the same tensors, so for each k the shard-k slices of all N
vectors are read into one N×D_k matrix ``X_k`` and ``X_k·X_kᵀ`` is added to the N×N result:
memory is O(N·D/K), every byte is read once, and the next shard's reads overlap this shard's
arithmetic. The L2 norms need no pass: the diagonal is ``|τ_i|²``, and each manifest carries
``l2_norm`` computed in float64 at write time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from timevec.store.fs import StoreFiles
from timevec.store.layout import shard_entry, shard_names
from timevec.store.shards import load_shard

logger = logging.getLogger("timevec.store")

__all__ = ["gram_matrix"]

#: One vector of the pass: (label, its directory, its manifest, already checked against the base).
Entry = tuple[str, str, dict[str, Any]]


def gram_matrix(
    files: StoreFiles,
    info: Mapping[str, Any] | None,
    entries: Sequence[Entry],
    verify: bool = True,
    exact: bool = False,
    block_columns: int = 4096,
) -> np.ndarray:
    """``G[i, j] = ⟨τ_i, τ_j⟩`` (float64) of ``entries``; see :meth:`VectorStore.gram`.

    ``info`` (the parsed ``store.json``) may be None only when ``entries`` is empty.
    """
    n = len(entries)
    gram = np.zeros((n, n), dtype=np.float64)
    if n == 0:
        return gram
    assert info is not None
    shapes = info["shapes"]
    num_shards = int(info["shard_plan"]["num_shards"])
    names_by_shard = [shard_names(info, k) for k in range(num_shards)]

    def load(item: tuple[int, int]) -> tuple[int, int, dict[str, np.ndarray]]:
        k, i = item
        label, directory, manifest = entries[i]
        entry = shard_entry(label, manifest, k)
        return k, i, load_shard(files, info, label, directory, entry, verify, as_numpy=True)

    items = [(k, i) for k in range(num_shards) for i in range(n)]
    widths = [sum(math.prod(shapes[name]) for name in names) for names in names_by_shard]
    # Buffers are allocated once and reused for every shard: fresh large arrays cost page
    # faults that, on a busy machine, take longer than the arithmetic.
    x_all = np.empty((n, max(widths)), dtype=np.float32)
    cols = max(1, min(max(widths), int(block_columns)))
    block = np.empty((n, cols), dtype=np.float64) if exact else None
    for k, i, tensors in files.map(load, items, window=max(2, files.io_threads)):
        x = x_all[:, : widths[k]]
        offset = 0
        for name in names_by_shard[k]:  # the shard's tensors flattened into row i, one copy
            flat = tensors[name].reshape(-1)
            x[i, offset : offset + flat.size] = flat  # fp16 widens here, in the copy
            offset += flat.size
        del tensors
        if i == n - 1:
            for c0 in range(0, widths[k], cols):
                w = min(cols, widths[k] - c0)
                if block is None:
                    xb = np.ascontiguousarray(x[:, c0 : c0 + w])
                else:
                    xb = block if w == cols else np.empty((n, w), dtype=np.float64)
                    np.copyto(xb, x[:, c0 : c0 + w])
                gram += xb @ xb.T  # numpy runs A·Aᵀ as a symmetric rank-k update (syrk)
            logger.debug("gram: shard %d/%d of %d vectors", k + 1, num_shards, n)
    return gram
