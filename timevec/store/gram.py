"""The all-pairs Gram matrix of stored vectors, streamed over the shard plan.

Why it is here and not in :mod:`timevec.weights.vectors`: the computation follows the store's layout.
Shard k of every vector holds the same tensors, so for each k the shard-k slices of all N
vectors form one N×D_k matrix ``X_k`` and ``X_k·X_kᵀ`` is added to the N×N result. Every byte is
read once, and the L2 norms need no pass: the diagonal is ``|τ_i|²``, and each manifest carries
``l2_norm`` computed in float64 at write time.

Per-group Gram matrices (:func:`grouped_gram_matrix`: attention, MLP, embeddings, per layer …)
come from the SAME pass: each tensor is a contiguous column range of ``X_k``, so a group's matrix
is the sum of ``X_k[:, range]·X_k[:, range]ᵀ`` over its tensors' ranges, and a grouping costs no
extra read.

Why it looks like this (the pass is meant to run at the speed of one sequential read):

- A shard the store writes holds its tensors' bytes in plan order, one contiguous block after
  the header, so for an fp32 store that block IS row i of ``X_k``: it is read straight into the
  preallocated matrix (``readinto`` / a ranged GET), with no decode copy and no dtype round trip,
  and checksummed on the same buffer as it arrives. fp16/bf16 blocks are widened once, in place.
  Shards laid out otherwise (older writers ordered tensors by name) are decoded and copied.
- A shard is taken in PANELS of at most ``target_shard_bytes / 4`` columns (a 1 B-parameter
  model's embedding is one 1 GB tensor, one shard), so memory is two N × panel fp32 buffers —
  O(N · shard), whatever the size of the largest tensor. (Cache-sized panels of 8 MiB halved
  the reads' CPU from the page cache but did not shorten the pass, and from disk their small reads
  made the 1B pass 1.58× a sequential read instead of 1.22×.)
- The two buffers alternate: the reads of panel p+1 (IO threads, each a contiguous group of the
  N rows; file reads, xxHash and torch release the GIL) run while the main thread multiplies
  panel p (fp32 products over column blocks of ``block_columns`` as one ``torch.bmm``, summed in
  float64).
- What bounds it on 2 cores (bench/README.md): N²·D multiply-adds (16 × 10.8 M: 65 ms on both
  cores) plus the checksum (≈ 7 GB/s a core) beside a sequential read that only copies.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from timevec.store.checksum import Hasher, check_digest, entry_checksum, new_hasher
from timevec.store.codec import parse_header
from timevec.store.errors import StoreError
from timevec.store.fs import StoreFiles
from timevec.store.layout import DEFAULT_TARGET_SHARD_BYTES, shard_entry, shard_names
from timevec.store.shards import check_header, load_shard, shard_where

logger = logging.getLogger("timevec.store")

__all__ = ["GroupKey", "gram_matrix", "grouped_gram_matrix"]

#: One vector of the pass: (label, its directory, its manifest, already checked against the base).
Entry = tuple[str, str, dict[str, Any]]
#: What a tensor name is grouped under (e.g. ``(group, layer)``, :func:`timevec.param_groups.group_of`).
GroupKey = Hashable

_HEAD_BYTES = 64 * 1024  # the first read of a shard: the header of any shard the store writes
_WIDEN = {torch.float32: None, torch.float16: np.float16, torch.bfloat16: "bf16"}
_BATCH = 256  # column blocks per batched matmul: its fp32 result is _BATCH × N × N
_scratch = threading.local()  # per IO thread: the raw bytes of an fp16/bf16 panel before widening


def _scratch_u16(n: int) -> np.ndarray:
    buf = getattr(_scratch, "u16", None)
    if buf is None or buf.size < n:
        buf = _scratch.u16 = np.empty(n, dtype=np.uint16)
    return buf[:n]


class _ShardReader:
    """Shard k of one vector, read panel by panel into rows of ``X_k`` (plan column order)."""

    def __init__(
        self, files: StoreFiles, info: Mapping[str, Any], entry_of: Entry, k: int, verify: bool
    ) -> None:
        label, directory, manifest = entry_of
        entry = shard_entry(label, manifest, k)
        self.files, self.info, self.label, self.directory, self.entry = files, info, label, directory, entry
        self.path = f"{directory}/{entry['file']}"
        self.where = shard_where(files, label, self.path)
        self.names = shard_names(info, k)
        self.verify = verify
        self.whole_limit = 2 * int(info.get("target_shard_bytes") or DEFAULT_TARGET_SHARD_BYTES)
        self.hasher: Hasher | None = None
        self.cached: np.ndarray | None = None
        try:
            self._open()
        except FileNotFoundError:
            raise StoreError(f"{self.where}: file not found (manifest lists it)") from None

    def _open(self) -> None:
        files, where, entry = self.files, self.where, self.entry
        size = None
        self.whole: bytes | bytearray | memoryview | None = None
        if not files.local and int(entry["bytes"]) <= self.whole_limit:
            # Object storage: ONE GET for the whole shard. A HEAD (size), a header GET and a data
            # GET cost three round trips per shard, which on S3 outweighed the bytes themselves.
            self.whole = files.read(self.path, writable=False)
            size = len(self.whole)
        if self.verify:
            self.algorithm, self.digest = entry_checksum(entry, where)
            if size is None:
                size = files.size(self.path)
            if size != int(entry["bytes"]):
                raise StoreError(f"{where}: truncated or resized: {size} bytes, the manifest says {entry['bytes']}")
        head = self.whole if self.whole is not None else files.read_range(self.path, 0, _HEAD_BYTES)
        if self.whole is None and len(head) >= 8:
            need = 8 + int.from_bytes(head[:8], "little")
            if len(head) < need <= 8 + 100 * 1024 * 1024 and (size is None or need <= size):
                head = files.read_range(self.path, 0, need)
        meta, header, data_start = parse_header(head, where, size)
        if self.verify:
            check_header(where, self.info, meta, header, self.names)
        shapes = self.info["shapes"]
        for name in self.names:
            if name not in header:
                raise StoreError(f"{where}: tensor {name!r} is missing from the shard")
            if header[name][1] != list(shapes[name]):
                raise StoreError(
                    f"{where}: tensor {name!r} has shape {header[name][1]}, the store's base has {list(shapes[name])}"
                )
        # The fast path: the data block is the plan's tensors in plan order, one dtype, nothing after.
        dtypes = {header[n][0] for n in self.names}
        at, in_order = 0, True
        for name in self.names:
            in_order = in_order and header[name][2] == at
            at = header[name][3]
        self.direct = in_order and len(dtypes) == 1 and next(iter(dtypes)) in _WIDEN
        self.direct = self.direct and (size is None or data_start + at == size)
        if self.direct:
            self.dtype = next(iter(dtypes))
            self.data_start = data_start
            if self.verify:
                self.hasher = hasher = new_hasher(self.algorithm)
                hasher.update(head[:data_start])
        else:  # decode (verified as a whole) and keep the flattened row until the shard is done
            self.whole = None
            tensors = load_shard(
                self.files, self.info, self.label, self.directory, entry, self.verify, as_numpy=True
            )
            self.cached = np.concatenate([np.asarray(tensors[n], dtype=np.float32).reshape(-1) for n in self.names])

    def fill(self, c0: int, c1: int, row: np.ndarray, last: bool) -> None:
        """Columns ``[c0, c1)`` of this vector's shard into ``row`` (fp32); ``last``: verify the digest."""
        if self.cached is not None:
            row[:] = self.cached[c0:c1]
            if last:
                self.cached = None
            return
        kind = _WIDEN[self.dtype]
        item = 4 if kind is None else 2
        target = row if kind is None else _scratch_u16(c1 - c0)
        view = memoryview(target).cast("B")  # type: ignore[arg-type]  # numpy arrays are buffers; its stubs lack __buffer__
        offset = self.data_start + c0 * item
        if self.whole is not None:
            data = memoryview(self.whole)[offset : offset + view.nbytes]
            got = data.nbytes
            view[:got] = data
            if last:
                self.whole = None
        else:
            try:
                got = self.files.read_into(self.path, offset, view)
            except FileNotFoundError:
                raise StoreError(f"{self.where}: file not found (manifest lists it)") from None
        if got != view.nbytes:
            raise StoreError(
                f"{self.where}: truncated: the data needs bytes up to {offset + view.nbytes}, the file ends at {offset + got}"
            )
        if self.hasher is not None:
            self.hasher.update(view)
            if last:
                check_digest(self.where, self.algorithm, self.hasher.hexdigest(), self.digest)
        if kind is np.float16:
            np.copyto(row, target.view(np.float16))  # fp16 widens here, in the one copy
        elif kind == "bf16":
            np.left_shift(target, 16, out=row.view(np.uint32), dtype=np.uint32)  # bf16 = the top half of fp32


def _accumulate(gram: np.ndarray, x: np.ndarray, cols: int, block: np.ndarray | None) -> None:
    """``gram += x·xᵀ``: fp32 products over blocks of ``cols`` columns, summed in float64 (with
    ``block``, a float64 scratch of ``cols`` columns, every product is float64). Whole blocks go
    as one batched matmul (``torch.bmm`` on views of ``x``: no copy, no Python loop per block —
    2.5× numpy's batched matmul here, whose small-matrix path is slower), the tail on its own."""
    n, w = x.shape
    xt = torch.from_numpy(x)  # a view, strided like x (a column range of a panel)
    whole = w // cols if block is None else 0
    for b0 in range(0, whole, _BATCH):
        b1 = min(whole, b0 + _BATCH)
        xr = xt[:, b0 * cols : b1 * cols].unflatten(1, (b1 - b0, cols)).transpose(0, 1)  # blocks × n × cols, a view
        gram += torch.bmm(xr, xr.transpose(1, 2)).sum(0, dtype=torch.float64).numpy()
    for c0 in range(whole * cols, w, cols):
        xb = xt[:, c0 : c0 + cols]
        if block is not None:
            scratch = torch.from_numpy(block[:, : xb.shape[1]])
            scratch.copy_(xb)
            xb = scratch
        gram += (xb @ xb.T).numpy()


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

    ``group_of(tensor name)`` gives each tensor's group; each group's column ranges of a panel add
    ``X[:, range]·X[:, range]ᵀ`` to that group's matrix, so the matrices sum to the whole-vector
    Gram and nothing larger than one panel of the N vectors is ever in memory. ``group_of=None``:
    one group, keyed ``None`` (:func:`gram_matrix`).
    """
    n = len(entries)
    grams: dict[GroupKey, np.ndarray] = {}
    if n == 0:
        return grams
    assert info is not None
    shapes = info["shapes"]
    num_shards = int(info["shard_plan"]["num_shards"])
    segments = _group_segments(info, num_shards, group_of)
    for key in (key for segs in segments for key, _, _ in segs):
        grams.setdefault(key, np.zeros((n, n), dtype=np.float64))
    widths = [sum(math.prod(shapes[name]) for name in shard_names(info, k)) for k in range(num_shards)]
    panel_cols = max(1, int(info.get("target_shard_bytes") or DEFAULT_TARGET_SHARD_BYTES) // 4)
    panels = [
        (k, c0, min(c0 + panel_cols, widths[k])) for k in range(num_shards) for c0 in range(0, max(widths[k], 1), panel_cols)
    ]
    most = max(c1 - c0 for _, c0, c1 in panels)
    # Allocated once and reused for every panel: fresh large arrays cost page faults that, on a
    # busy machine, take longer than the arithmetic.
    bufs = [np.empty((n, most), dtype=np.float32) for _ in range(min(2, len(panels)))]
    cols = max(1, min(most, int(block_columns)))
    block = np.empty((n, cols), dtype=np.float64) if exact else None
    readers: dict[tuple[int, int], _ShardReader] = {}
    # A panel's rows in io_threads contiguous groups, one task each (one task per row cost more
    # in scheduling than a small panel's reads); a group waits for its rows' previous panel.
    step = -(-n // max(1, min(files.io_threads, n)))
    groups = [range(g, min(n, g + step)) for g in range(0, n, step)]

    def fill(p: int, rows: range, prev: Future[None] | None) -> None:
        if prev is not None:
            prev.result()  # the same shard's previous panel: checksums are fed in file order
        k, c0, c1 = panels[p]
        last = c1 == widths[k]
        for i in rows:
            if c0 == 0:
                readers[k, i] = _ShardReader(files, info, entries[i], k, verify)
            readers[k, i].fill(c0, c1, bufs[p % len(bufs)][i, : c1 - c0], last)
            if last:
                del readers[k, i]

    with ThreadPoolExecutor(max_workers=len(groups), thread_name_prefix="timevec-gram") as pool:
        pending: list[list[Future[None]]] = []

        def submit(p: int) -> None:
            same = p > 0 and panels[p - 1][0] == panels[p][0]
            pending.append([pool.submit(fill, p, rows, pending[p - 1][g] if same else None) for g, rows in enumerate(groups)])

        try:
            submit(0)
            for p, (k, c0, c1) in enumerate(panels):
                if p + 1 < len(panels):
                    submit(p + 1)  # into the other buffer, whose product (panel p-1) is done
                for fut in pending[p]:
                    fut.result()
                x = bufs[p % len(bufs)]
                for key, s0, s1 in segments[k]:
                    lo, hi = max(s0, c0), min(s1, c1)
                    if lo < hi:
                        _accumulate(grams[key], x[:, lo - c0 : hi - c0], cols, block)
                logger.debug("gram: shard %d/%d columns %d-%d of %d vectors", k + 1, num_shards, c0, c1, n)
        finally:
            for futs in pending:
                for fut in futs:
                    fut.cancel()
    return grams


def _group_segments(
    info: Mapping[str, Any], num_shards: int, group_of: Callable[[str], GroupKey] | None
) -> list[list[tuple[GroupKey, int, int]]]:
    """Per shard: ``(group, start, stop)`` column ranges in plan order (adjacent tensors of one group merged)."""
    shapes = info["shapes"]
    segments: list[list[tuple[GroupKey, int, int]]] = []
    for k in range(num_shards):
        segs: list[tuple[GroupKey, int, int]] = []
        offset = 0
        for name in shard_names(info, k):
            key = group_of(name) if group_of is not None else None
            size = math.prod(shapes[name])
            if segs and segs[-1][0] == key and segs[-1][2] == offset:
                segs[-1] = (key, segs[-1][1], offset + size)
            else:
                segs.append((key, offset, offset + size))
            offset += size
        segments.append(segs)
    return segments
