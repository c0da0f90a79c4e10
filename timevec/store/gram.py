"""The all-pairs Gram matrix of stored vectors, streamed over the shard plan.

Why it is here and not in :mod:`timevec.vectors`: the computation follows the store's layout.
Shard k of every vector holds the same tensors, so for each k the shard-k slices of all N
vectors are read into one N×D_k matrix ``X_k`` and ``X_k·X_kᵀ`` is added to the N×N result:
memory is O(N·D/K), every byte is read once, and the next shard's reads overlap this shard's
arithmetic. The L2 norms need no pass: the diagonal is ``|τ_i|²``, and each manifest carries
``l2_norm`` computed in float64 at write time.

Per-group Gram matrices (:func:`grouped_gram_matrix`: attention, MLP, embeddings, per layer …)
come from the SAME pass: the shard's columns are laid out group by group and each group's column
range is accumulated into its own matrix, so a grouping costs no extra read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from timevec.store.fs import StoreFiles
from timevec.store.layout import shard_entry, shard_names
from timevec.store.shards import load_shard

logger = logging.getLogger("timevec.store")

__all__ = ["GroupKey", "gram_matrix", "grouped_gram_matrix"]

#: One vector of the pass: (label, its directory, its manifest, already checked against the base).
Entry = tuple[str, str, dict[str, Any]]
#: What a tensor name is grouped under (e.g. ``(group, layer)``, :func:`timevec.param_groups.group_of`).
GroupKey = Hashable


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
    grams = grouped_gram_matrix(files, info, entries, None, verify=verify, exact=exact, block_columns=block_columns)
    return grams.get(None, np.zeros((len(entries), len(entries)), dtype=np.float64))


def grouped_gram_matrix(
    files: StoreFiles,
    info: Mapping[str, Any] | None,
    entries: Sequence[Entry],
    group_of: Callable[[str], GroupKey] | None,
    verify: bool = True,
    exact: bool = False,
    block_columns: int = 4096,
) -> dict[GroupKey, np.ndarray]:
    """One N×N Gram matrix per group of tensors, from the same single streaming pass.

    ``group_of(tensor name)`` gives each tensor's group; within a shard the tensors are laid out
    group by group, and each group's columns add ``X_k[:, group]·X_k[:, group]ᵀ`` to that group's
    matrix, so the matrices sum to the whole-vector Gram and nothing larger than one shard of the N
    vectors is ever in memory. ``group_of=None``: one group, keyed ``None`` (:func:`gram_matrix`).
    """
    n = len(entries)
    grams: dict[GroupKey, np.ndarray] = {}
    if n == 0:
        return grams
    assert info is not None
    shapes = info["shapes"]
    num_shards = int(info["shard_plan"]["num_shards"])
    names_by_shard, segments = _group_layout(info, num_shards, group_of)
    for key in (key for segs in segments for key, _, _ in segs):
        grams.setdefault(key, np.zeros((n, n), dtype=np.float64))

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
            for key, start, stop in segments[k]:
                gram = grams[key]
                for c0 in range(start, stop, cols):
                    w = min(cols, stop - c0)
                    if block is None:
                        xb = np.ascontiguousarray(x[:, c0 : c0 + w])
                    else:
                        xb = block if w == cols else np.empty((n, w), dtype=np.float64)
                        np.copyto(xb, x[:, c0 : c0 + w])
                    gram += xb @ xb.T  # numpy runs A·Aᵀ as a symmetric rank-k update (syrk)
            logger.debug("gram: shard %d/%d of %d vectors", k + 1, num_shards, n)
    return grams


def _group_layout(
    info: Mapping[str, Any], num_shards: int, group_of: Callable[[str], GroupKey] | None
) -> tuple[list[list[str]], list[list[tuple[GroupKey, int, int]]]]:
    """Per shard: its tensor names ordered group by group (stable), and each group's column range."""
    shapes = info["shapes"]
    names_by_shard: list[list[str]] = []
    segments: list[list[tuple[GroupKey, int, int]]] = []
    for k in range(num_shards):
        names = shard_names(info, k)
        keys = {name: (group_of(name) if group_of is not None else None) for name in names}
        rank = {key: r for r, key in enumerate(dict.fromkeys(keys.values()))}
        names = sorted(names, key=lambda name: rank[keys[name]])
        segs: list[tuple[GroupKey, int, int]] = []
        offset = 0
        for name in names:
            size = math.prod(shapes[name])
            if segs and segs[-1][0] == keys[name]:
                segs[-1] = (keys[name], segs[-1][1], offset + size)
            else:
                segs.append((keys[name], offset, offset + size))
            offset += size
        names_by_shard.append(names)
        segments.append(segs)
    return names_by_shard, segments
