"""The :class:`VectorStore` façade: time vectors, the base, result tables and report files under
one fsspec root URL (the layout: :mod:`timevec.store`), composed from the store's parts.

This module holds the public API and the order of operations (what is checked, read and
written when); the work is done by :mod:`~timevec.store.fs` (IO), :mod:`~timevec.store.layout`
(plan, names, manifest checks), :mod:`~timevec.store.shards` (one entry's shards and their
integrity), :mod:`~timevec.store.codec` (safetensors), :mod:`~timevec.store.gram` and
:mod:`~timevec.store.tables`. Credentials come only from the standard AWS chain (environment,
profiles, instance roles): the store refuses credential-like ``storage_options``, never writes
them and never logs them (:mod:`timevec.credentials`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from timevec.credentials import (
    credential_keys,
    environment_secrets,
    is_credential_key,
    scrub_credentials,
)
from timevec.periods import Period
from timevec.store import lowrank as lowrank_layout
from timevec.store.checksum import DEFAULT_CHECKSUM, check_algorithm
from timevec.store.errors import StoreError
from timevec.store.fs import TMP_MARK, Pieces, StoreFiles, ray_storage_uri, safe_url
from timevec.store.layout import (
    DEFAULT_TARGET_SHARD_BYTES,
    STORE_DTYPES,
    check_info,
    check_manifest,
    check_manifest_base,
    check_period,
    check_relpath,
    check_shard_entries,
    check_table_name,
    check_task,
    new_info,
    shard_names,
)
from timevec.store.lease import Fence, StoreLease
from timevec.store.results_files import ResultFiles
from timevec.store.scans import StoreScans
from timevec.store.shards import read_entry, write_entry
from timevec.store.tables import ResultTables
from timevec.weights.lowrank import LowRankVector
from timevec.weights.vectors import TimeVector

if TYPE_CHECKING:  # pandas/pyarrow are imported on first table use: workers that only move vectors skip them
    from timevec.config import StoreConfig
    pass

logger = logging.getLogger("timevec.store")

__all__ = ["VectorStore"]


class VectorStore(StoreScans, ResultFiles):
    """Time vectors, the base, result tables and report files under one fsspec root URL.

    ``url`` is a local path (relative or absolute), ``file://…`` or ``s3://bucket/prefix``;
    ``storage_options`` go to fsspec (e.g. ``{"endpoint_url": "http://127.0.0.1:8333"}`` for a
    non-AWS S3) and must not hold credentials. ``dtype`` and ``target_shard_bytes`` are only the
    defaults of :meth:`init`; an existing store's ``store.json`` always wins.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        dtype: str = "float32",
        target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES,
        io_threads: int | None = None,
        checksum: str = DEFAULT_CHECKSUM,
        fence: Fence | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise StoreError(f"store url must be a non-empty string, got {url!r}")
        options = dict(storage_options or {})
        for key in options:
            if is_credential_key(key):
                raise StoreError(
                    f"storage_options.{key}: credentials come from the standard AWS chain "
                    "(environment, profile, instance role), never from store options"
                )
        for path in credential_keys(options):  # nested ones (client_kwargs, …)
            raise StoreError(f"{path}: credentials come from the AWS chain")
        if dtype not in STORE_DTYPES:
            raise StoreError(f"store dtype {dtype!r} is not one of {sorted(STORE_DTYPES)}")
        self.url = url
        self.storage_options = options
        self.checksum = check_algorithm(checksum)  # what new shards are written with; readers follow each manifest
        self._default_dtype = dtype
        self._default_target = int(target_shard_bytes)
        self._io_threads_arg = io_threads
        self._files = StoreFiles(url, options, io_threads)
        self.fence = fence
        if fence is not None:
            files = self._files
            files.guard = lambda path: fence.check(files, path)
        self.fs = self._files.fs
        self.root = self._files.root
        self._local = self._files.local
        if self._local:
            # By its absolute path: Tune runs each trial in its own working directory, where a
            # relative URL like ``./runs/demo`` would name another (empty) folder.
            self.url = self.root
        self._io_threads = self._files.io_threads
        self._tables = ResultTables(self._files, str(self))
        self._info: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, store_cfg: StoreConfig) -> VectorStore:
        """From a :class:`timevec.config.StoreConfig` (url, dtype, target_shard_bytes, storage_options)."""
        return cls(
            store_cfg.url,
            dict(store_cfg.storage_options or {}),
            dtype=store_cfg.dtype,
            target_shard_bytes=store_cfg.target_shard_bytes,
            checksum=getattr(store_cfg, "checksum", DEFAULT_CHECKSUM),
        )

    def __repr__(self) -> str:
        return f"VectorStore({safe_url(self.url)!r})"

    __str__ = __repr__

    def __getstate__(self) -> dict[str, Any]:
        # Ship only what rebuilds the store; the filesystem object is re-created on the other side.
        return {
            "url": self.url,
            "storage_options": self.storage_options,
            "dtype": self._default_dtype,
            "target_shard_bytes": self._default_target,
            "io_threads": self._io_threads_arg,
            "checksum": self.checksum,
            "fence": self.fence,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["url"],
            state["storage_options"],
            dtype=state["dtype"],
            target_shard_bytes=state["target_shard_bytes"],
            io_threads=state["io_threads"],
            checksum=state.get("checksum", DEFAULT_CHECKSUM),
            fence=state.get("fence"),
        )

    # ------------------------------------------------------------------ paths and the write seam

    def _path(self, *parts: str) -> str:
        return self._files.path(*parts)

    def _rel(self, path: str) -> str:
        return self._files.rel(path)

    def _key(self, task: str, period: str | Period) -> tuple[str, str]:
        return check_task(task), check_period(period)

    def _vector_dir(self, task: str, period: str) -> str:
        return self._path("vectors", task, period)

    def _write(self, path: str, data: bytes | bytearray | memoryview | Pieces) -> None:
        """Every shard, manifest and ``store.json`` is published through here (atomically)."""
        self._files.write(path, data)

    def _write_json(self, path: str, obj: Mapping[str, Any], what: str) -> None:
        self._write(path, self._files.json_bytes(path, obj, what))

    def _publish_manifest(self, path: str, manifest: dict[str, Any], label: str) -> None:
        """The last step of every write: the vector becomes visible here."""
        self._write_json(path, manifest, f"vector {label}")

    def _write_entry(
        self, label: str, directory: str, vec: TimeVector, dtype: str, run: dict[str, Any], **where: Any
    ) -> dict[str, Any]:
        """:func:`~timevec.store.shards.write_entry` through this store's write seams."""
        info = self.info()
        return write_entry(
            self._files,
            info,
            label,
            directory,
            vec,
            dtype,
            run,
            write=self._write,
            publish=self._publish_manifest,
            checksum=self.checksum,
            **where,
        )

    # ------------------------------------------------------------------ store.json and the base

    def exists(self) -> bool:
        """Whether ``store.json`` exists (it is written last by :meth:`init`)."""
        return self._info is not None or self._files.exists(self._path("store.json"))

    def info(self) -> dict[str, Any]:
        """The parsed ``store.json`` (cached: it never changes once written)."""
        if self._info is None:
            try:
                info = self._files.read_json(self._path("store.json"), f"store {self}")
            except FileNotFoundError:
                raise StoreError(f"no store at {safe_url(self.url)}: store.json not found (run init first)") from None
            self._info = check_info(info, f"store {self}")
        return self._info

    @property
    def base_fingerprint(self) -> str:
        return str(self.info()["base_fingerprint"])

    @property
    def base_id(self) -> str:
        return str(self.info()["base_id"])

    @property
    def dtype(self) -> str:
        return str(self.info()["dtype"])

    @property
    def num_shards(self) -> int:
        return int(self.info()["shard_plan"]["num_shards"])

    @property
    def shapes(self) -> dict[str, list[int]]:
        return self.info()["shapes"]

    def shard_names(self, k: int) -> list[str]:
        """The tensor names of shard ``k``, in store order (the base model's parameter order)."""
        return shard_names(self.info(), k)

    def init(
        self,
        base_id: str,
        base_tensors: Mapping[str, torch.Tensor],
        dtype: str | None = None,
        target_shard_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Create the store for one base: the shard plan, then the base shards, then ``store.json``.

        Idempotent for the same base (same fingerprint): returns the existing ``store.json``.
        A different base is a :class:`StoreError` naming both fingerprints: vectors are only
        meaningful against the base they were taken from.
        """
        dtype = dtype or self._default_dtype
        if dtype not in STORE_DTYPES:
            raise StoreError(f"store dtype {dtype!r} is not one of {sorted(STORE_DTYPES)}")
        target = int(target_shard_bytes or self._default_target)
        from timevec.data.models import (
            fingerprint,  # deferred: timevec.data.models imports transformers (seconds)
        )

        floats = {n: t for n, t in base_tensors.items() if t.dtype.is_floating_point}
        if not floats:
            raise StoreError(f"store {self}: the base {base_id!r} has no floating-point tensors")
        fp = fingerprint(floats)
        if self.exists():
            info = self.info()
            if info["base_fingerprint"] != fp:
                raise StoreError(
                    f"store {self} holds base {info['base_id']!r} (fingerprint {info['base_fingerprint']}); "
                    f"refusing to init it for base {base_id!r} (fingerprint {fp})"
                )
            if info["dtype"] != dtype:
                logger.warning("store %s keeps its dtype %s (init asked for %s)", self, info["dtype"], dtype)
            logger.info("store %s already initialised for base %s", self, info["base_id"])
            return info
        info = new_info(base_id, fp, dtype, floats, target)
        k = info["shard_plan"]["num_shards"]
        self._info = info  # the writers below read the plan from it
        try:
            base = TimeVector(floats)  # fp32 CPU
            self._write_entry("base", self._path("base"), base, "float32", {"kind": "base"}, task=None, period=None)
            self._write_json(self._path("store.json"), info, f"store {self}")
        except BaseException:
            self._info = None
            raise
        logger.info("initialised store %s: base %s, %d tensors in %d shard(s), %s", self, base_id, len(floats), k, dtype)
        return info

    def get_base(self, names: list[str] | None = None, verify: bool = True) -> dict[str, torch.Tensor]:
        """The base weights (fp32), all or the named tensors."""
        manifest = self._base_manifest()
        return self._read_entry("base", self._path("base"), manifest, names, verify)

    def _base_manifest(self) -> dict[str, Any]:
        path = self._path("base", "manifest.json")
        try:
            manifest = self._files.read_json(path, "base")
        except FileNotFoundError:
            raise StoreError(f"base: manifest {self._rel(path)} not found in store {self}") from None
        check_shard_entries(manifest, f"base: manifest {self._rel(path)}")
        return manifest

    # ------------------------------------------------------------------ writing vectors

    def put_vector(
        self, task: str, period: str, vector: TimeVector | LowRankVector | Mapping[str, torch.Tensor], manifest: dict | None = None
    ) -> dict[str, Any]:
        """Write a vector (dense, or the low-rank kind): shards first, the manifest LAST; returns the manifest.

        ``manifest`` (run config, train metrics, kind full/lora_merged, seed, …) is stored under
        ``"run"``. An existing vector under the same key is replaced (its manifest is removed
        first, so readers never see a manifest pointing at half-new shards).
        """
        task, period = self._key(task, period)
        label = f"{task}/{period}"
        vec = vector if isinstance(vector, TimeVector | LowRankVector) else TimeVector(vector)
        directory = self._vector_dir(task, period)
        run = scrub_credentials(dict(manifest or {}), environment_secrets(), log=logger)
        info = self.info()
        manifest_path = self._path("vectors", task, period, "manifest.json")
        # An old manifest and a killed writer's leftovers go once the new vector has been validated
        # (a refused vector leaves the stored one intact) and before any shard is touched.
        stale = [
            p for p in self._files.list_files(directory) if p == manifest_path or TMP_MARK in os.path.basename(p)
        ]
        if isinstance(vec, LowRankVector):  # the low-rank kind: factors per module (timevec.store.lowrank)
            out = lowrank_layout.write_lowrank(
                self._files, info, label, directory, vec, info["dtype"], run, task=task, period=period,
                write=self._write, publish=self._publish_manifest, stale=stale, checksum=self.checksum,
            )
        else:
            out = self._write_entry(label, directory, vec, info["dtype"], run, task=task, period=period, stale=stale)
        logger.info("stored vector %s (%d params, |τ|=%.4g) in %s", label, out["n_params"], out["l2_norm"], self)
        return out

    # ------------------------------------------------------------------ listing and manifests

    def has_vector(self, task: str, period: str) -> bool:
        """Whether a complete vector is visible (its manifest exists and parses). Cheap: one small read."""
        try:
            self.manifest(task, period)
        except StoreError:
            return False
        return True

    def list_vectors(self, task: str | None = None) -> list[tuple[str, str]]:
        """``(task, period)`` of every visible vector (with a manifest), by task then time."""
        if task is not None:
            check_task(task)
        pattern = self._path("vectors", task or "*", "*", "manifest.json")
        found: list[tuple[str, str]] = []
        for path in self._files.glob(pattern):
            parts = self._rel(path).split("/")
            if len(parts) != 4:
                continue
            t, p = parts[1], parts[2]
            try:
                found.append(self._key(t, p))
            except StoreError:
                logger.warning("store %s: ignoring unexpected directory vectors/%s/%s", self, t, p)
        return sorted(set(found), key=lambda tp: (tp[0], Period.parse(tp[1])))

    def manifest(self, task: str, period: str) -> dict[str, Any]:
        """The manifest of a visible vector; a missing or unreadable one is a :class:`StoreError`."""
        task, period = self._key(task, period)
        label = f"{task}/{period}"
        path = self._path("vectors", task, period, "manifest.json")
        try:
            m = self._files.read_json(path, f"vector {label}")
        except FileNotFoundError:
            leftovers = [
                os.path.basename(p)
                for p in self._files.list_files(self._vector_dir(task, period))
                if p.endswith(".safetensors")
            ]
            hint = (
                f" ({len(leftovers)} shard file(s) without a manifest, e.g. {leftovers[0]}: an unfinished write)"
                if leftovers
                else ""
            )
            raise StoreError(f"vector {label} not found: no manifest at {self._rel(path)}{hint}") from None
        return check_manifest(m, label, self._rel(path))

    def delete_vector(self, task: str, period: str) -> bool:
        """Remove a vector: the manifest first (it disappears at once), then its shards.

        Returns whether anything was there.
        """
        task, period = self._key(task, period)
        directory = self._vector_dir(task, period)
        manifest_path = f"{directory}/manifest.json"
        files = self._files.list_files(directory)
        if not files:
            return False
        if manifest_path in files:
            self._files.remove([manifest_path])
        self._files.remove([f for f in files if f != manifest_path])
        self._files.remove_dir(directory)
        logger.info("deleted vector %s/%s from %s", task, period, self)
        return True

    # ------------------------------------------------------------------ reading vectors

    def _check_manifest_base(self, label: str, directory: str, manifest: dict[str, Any]) -> None:
        check_manifest_base(self.info(), label, self._rel(directory), manifest)

    def _read_entry(
        self,
        label: str,
        directory: str,
        manifest: dict[str, Any],
        names: list[str] | None,
        verify: bool,
        widen: bool = True,
    ) -> dict[str, torch.Tensor]:
        self._check_manifest_base(label, directory, manifest)
        if lowrank_layout.is_lowrank(manifest):  # the slow path: the factors multiplied out
            dense = lowrank_layout.read_lowrank(self._files, self.info(), label, directory, manifest, verify).to_dense()
            return (dense if names is None else dense.subset(names)).tensors
        return read_entry(self._files, self.info(), label, directory, manifest, names, verify, widen)

    def get_vector(
        self, task: str, period: str, names: list[str] | None = None, verify: bool = True
    ) -> TimeVector:
        """A stored vector as fp32 (all tensors in store order, or ``names`` in the given order).

        With ``verify`` (default) every shard read is checked against the manifest's size and
        checksum (xxh3_128, or sha256 where its manifest says so) and the base fingerprint.
        A subset of ``names`` reads only the shards holding them (and, with ``verify=False``, only
        their byte ranges). A low-rank vector comes back dense (every factor multiplied out: the
        SLOW path; :meth:`get_native` keeps its factors). On an fp16/bf16 store this is
        :meth:`get_tensors` widened shard by shard (a shard's half-precision bytes are freed as
        it is widened): twice the bytes it reads are written.
        """
        return TimeVector(self._read_stored(task, period, names, verify, widen=True))

    def get_tensors(
        self, task: str, period: str, names: list[str] | None = None, verify: bool = True
    ) -> dict[str, torch.Tensor]:
        """A stored vector's tensors in the store's own dtype, verified as :meth:`get_vector` is.

        The tensors are views into the shard bytes as read (writable, nothing else allocated), so
        this is the read at the store's bandwidth; :meth:`get_vector` is this widened to fp32. For
        a consumer that widens tensor by tensor anyway (:class:`~timevec.weights.vectors.WeightPatcher`
        adds each τ tensor in fp32) it halves the memory an fp16 vector holds. A low-rank vector
        comes back dense, in fp32.
        """
        return self._read_stored(task, period, names, verify, widen=False)

    def _read_stored(
        self, task: str, period: str, names: list[str] | None, verify: bool, widen: bool
    ) -> dict[str, torch.Tensor]:
        task, period = self._key(task, period)
        label = f"{task}/{period}"
        manifest = self.manifest(task, period)
        return self._read_entry(label, self._vector_dir(task, period), manifest, names, verify, widen)

    def get_native(self, task: str, period: str, verify: bool = True) -> TimeVector | LowRankVector:
        """A stored vector in its own kind: a :class:`LowRankVector` for a low-rank one (factors,
        never multiplied out), else the dense :class:`TimeVector` of :meth:`get_vector`."""
        task, period = self._key(task, period)
        label = f"{task}/{period}"
        manifest = self.manifest(task, period)
        if not lowrank_layout.is_lowrank(manifest):
            return self.get_vector(task, period, verify=verify)
        directory = self._vector_dir(task, period)
        self._check_manifest_base(label, directory, manifest)
        return lowrank_layout.read_lowrank(self._files, self.info(), label, directory, manifest, verify)

    # ------------------------------------------------------------------ leases

    def lease(self, name: str, ttl_s: float, what: str) -> StoreLease:
        """The writer lease ``leases/<name>.json`` (:mod:`~timevec.store.lease`); use it as ``with``."""
        return StoreLease(self._files, self.url, check_table_name(name), ttl_s, what)

    def fenced(self, lease: StoreLease) -> VectorStore:
        """This store, with every write and delete checked against ``lease`` first (its fence).

        A write after the lease was taken over, released or let expire raises
        :class:`~timevec.store.lease.LeaseLost`, here and in every Ray worker the store is
        shipped to (the fence travels with it); what that does and does not exclude:
        :mod:`~timevec.store.lease`.
        """
        state = self.__getstate__() | {"fence": lease.fence()}
        out = VectorStore.__new__(VectorStore)
        out.__setstate__(state)
        return out

    # ------------------------------------------------------------------ Ray

    def ray_storage_path(self, sub: str = "ray") -> str:
        """A ``RunConfig(storage_path=…)`` for Ray Train/Tune under this store.

        Local stores give an absolute path. S3 with a custom ``endpoint_url`` gives
        ``s3://bucket/prefix/sub?endpoint_override=HOST:PORT&scheme=http`` (pyarrow's S3 URI
        options; ARCHITECTURE §5); credentials still come from the AWS chain.
        """
        return ray_storage_uri(self._files, check_relpath(sub), self.storage_options)

    def ray_filesystem(self, sub: str = "ray") -> tuple[str, Any]:
        """(path of ``<root>/<sub>`` on the store's filesystem, that fsspec filesystem object), for Ray's
        ``RunConfig(storage_filesystem=…)``; a local store gives (its absolute path, None)."""
        if self._files.local:
            return self.ray_storage_path(sub), None
        return self._files.path(check_relpath(sub)), self._files.fs
