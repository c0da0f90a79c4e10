"""The whole-store passes of :class:`~timevec.store.VectorStore`: re-hashing every shard
(``verify``) and the streamed Gram matrices (``gram``, ``grouped_gram``), as a mixin of the façade."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from timevec.store import lowrank as lowrank_layout
from timevec.store.errors import StoreError
from timevec.store.gram import gram_matrix, grouped_gram_matrix
from timevec.store.shards import check_shard

if TYPE_CHECKING:
    from timevec.store.fs import StoreFiles


class StoreScans:
    """verify / gram / grouped_gram over the entries the façade lists (its ``_files``, ``info``,
    ``manifest`` and ``list_vectors``)."""

    if TYPE_CHECKING:  # provided by the façade (:class:`~timevec.store.VectorStore`)
        _files: StoreFiles

        @property
        def num_shards(self) -> int: ...

        def _path(self, *parts: str) -> str: ...
        def _key(self, task: str, period: str) -> tuple[str, str]: ...
        def _vector_dir(self, task: str, period: str) -> str: ...
        def _base_manifest(self) -> dict[str, Any]: ...
        def _check_manifest_base(self, label: str, directory: str, manifest: dict[str, Any]) -> None: ...
        def info(self) -> dict[str, Any]: ...
        def manifest(self, task: str, period: str) -> dict[str, Any]: ...
        def list_vectors(self, task: str | None = None) -> list[tuple[str, str]]: ...

    # ------------------------------------------------------------------ integrity

    def verify(self, task: str | None = None) -> list[str]:
        """Re-hash every shard of every visible vector (and the base when ``task`` is None).

        Returns one message per problem (empty: all good); also checks shapes and NaN/Inf.
        """
        problems: list[str] = []
        entries: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
        if task is None:
            entries.append(("base", self._path("base"), self._base_manifest))
        for t, p in self.list_vectors(task):
            entries.append((f"{t}/{p}", self._vector_dir(t, p), partial(self.manifest, t, p)))
        for label, directory, get_manifest in entries:
            try:
                manifest = get_manifest()
                self._check_manifest_base(label, directory, manifest)
            except StoreError as exc:
                problems.append(str(exc))
                continue

            def check(k: int, label: str = label, directory: str = directory, manifest: dict = manifest) -> str | None:
                if lowrank_layout.is_lowrank(manifest):
                    return lowrank_layout.check_lowrank_shard(self._files, self.info(), label, directory, manifest, k)
                return check_shard(self._files, self.info(), label, directory, manifest, k)

            problems.extend(msg for msg in self._files.map(check, range(self.num_shards)) if msg)
        return problems

    # ------------------------------------------------------------------ similarity

    def gram(
        self,
        keys: Sequence[tuple[str, str]],
        verify: bool = True,
        exact: bool = False,
        block_columns: int = 4096,
    ) -> np.ndarray:
        """The N×N Gram matrix ``G[i, j] = ⟨τ_i, τ_j⟩`` (float64), streamed shard by shard.

        For each shard k the shard-k slices of all N vectors are read (checksum-verified, a bounded
        number in flight, the next shard's reads overlapping this shard's arithmetic) into one
        N×D_k fp32 matrix ``X_k``, and ``X_k·X_kᵀ`` is accumulated in float64 over column blocks of
        ``block_columns``. Memory is O(N·D/K); every byte is read once.

        Within a block the products are summed in fp32 (``torch.bmm`` over all whole blocks of a panel,
        :func:`timevec.store.gram._accumulate`) — 3× faster than float64 on
        a 2-core machine, with a measured error ≈ 2e-8 relative to ``|τ_i|·|τ_j|`` (the scale a
        cosine is read on) because blocks are short and the sum over blocks is float64.
        ``exact=True`` converts each block to float64 first (products and sums in float64).
        The L2 norms are ``sqrt(diag(G))``, or each manifest's ``l2_norm`` (float64, at write time).
        """
        entries = self._gram_entries(keys)
        info = self.info() if entries else None
        if info is not None and any(lowrank_layout.is_lowrank(m) for _, _, m in entries):  # mixed or low-rank: exact from the factors
            return lowrank_layout.lowrank_gram(self._files, info, entries, verify=verify)
        return gram_matrix(self._files, info, entries, verify=verify, exact=exact, block_columns=block_columns)

    def grouped_gram(
        self,
        keys: Sequence[tuple[str, str]],
        group_of: Callable[[str], Hashable],
        verify: bool = True,
        exact: bool = False,
        block_columns: int = 4096,
    ) -> dict[Hashable, np.ndarray]:
        """One Gram matrix per group of tensors (``group_of(name)``), from the same single pass as
        :meth:`gram` (:func:`timevec.store.gram.grouped_gram_matrix`); they sum to :meth:`gram`."""
        entries = self._gram_entries(keys)
        lowrank = [label for label, _, m in entries if lowrank_layout.is_lowrank(m)]
        if lowrank:
            raise StoreError(f"vector {lowrank[0]}: per-group Gram matrices of low-rank (LoRA-factor) vectors are "
                             "not computed; store these vectors dense (training.lora.store: dense)")
        info = self.info() if entries else None
        return grouped_gram_matrix(self._files, info, entries, group_of, verify=verify, exact=exact,
                                   block_columns=block_columns)

    def _gram_entries(self, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str, dict[str, Any]]]:
        entries = []
        for t, p in (self._key(t, p) for t, p in keys):
            label = f"{t}/{p}"
            m = self.manifest(t, p)
            self._check_manifest_base(label, self._vector_dir(t, p), m)
            entries.append((label, self._vector_dir(t, p), m))
        return entries
