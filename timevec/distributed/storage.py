"""Where Ray Train/Tune keep their runs: the store's own filesystem object, or ``ray.storage_path``.

One job: the ``RunConfig(storage_path=…, storage_filesystem=…)`` pair for every Ray run of a study.
On an object store Ray gets the STORE's fsspec filesystem wrapped for pyarrow
(``pyarrow.fs.PyFileSystem(FSSpecHandler(fs))``, Ray's documented way to pass a custom filesystem),
so a custom endpoint, region or addressing style in ``store.storage_options`` reaches Ray's
checkpoints exactly as it reaches the vectors; pyarrow's own S3 client, built from a URI, knows
only an endpoint and a scheme. A local store keeps a plain path (Ray's default local filesystem).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.fs

from timevec.config import ExperimentConfig
from timevec.store import VectorStore
from timevec.store.fs import safe_url

__all__ = ["RayStorage", "ray_storage"]


@dataclass(frozen=True)
class RayStorage:
    """``path`` (prefix-stripped when ``filesystem`` is set), ``filesystem`` (None: a local path) and
    ``url`` (what logs show; for the store's own storage, the pyarrow URI of the same place)."""

    path: str
    filesystem: pyarrow.fs.FileSystem | None
    url: str

    def run_config(self) -> dict[str, Any]:
        """The keyword arguments of ``tune.RunConfig`` / ``ray.train.RunConfig``."""
        return {"storage_path": self.path, "storage_filesystem": self.filesystem}

    def fs_root(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """(pyarrow filesystem, root path on it), to list and delete what Ray wrote."""
        if self.filesystem is not None:
            return self.filesystem, self.path.rstrip("/")
        fs, root = pyarrow.fs.FileSystem.from_uri(self.path)
        return fs, root.rstrip("/")

    def experiment_url(self, name: str) -> str:
        """``<url>/<name>``, keeping a URI's query (``?endpoint_override=…``) at the end."""
        root, sep, query = self.url.partition("?")
        return f"{root.rstrip('/')}/{name}{sep}{query}"

    def last_results(self, name: str, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The last result holding every ``required`` key of each trial of experiment ``name`` (plain JSON).

        Read from each trial directory's ``result.json`` through pyarrow's filesystem (what Tune writes
        with: local folders and ``s3://…`` alike). A line cut by a crash and a trial that died before
        reporting are skipped: those trials are simply run again. Never ``Tuner.restore`` (it unpickles).
        """
        fs, root = self.fs_root()
        trials = []
        for info in fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{name}", allow_not_found=True)):
            if info.type != pyarrow.fs.FileType.Directory:
                continue
            try:
                with fs.open_input_stream(f"{info.path}/result.json") as stream:
                    lines = stream.read().decode("utf-8", errors="replace").splitlines()
            except (FileNotFoundError, OSError):
                continue
            for line in reversed(lines):
                try:
                    result = json.loads(line)
                except ValueError:
                    continue
                if all(key in result for key in required):
                    trials.append(result)
                    break
        return trials

    def __str__(self) -> str:
        return self.url


def _wrap(fs: fsspec.AbstractFileSystem) -> pyarrow.fs.FileSystem:
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def ray_storage(config: ExperimentConfig, store: VectorStore, sub: str = "ray") -> RayStorage:
    """``ray.storage_path`` when set (a URL gets the store's ``storage_options``), else ``<store>/<sub>``."""
    url = config.ray.storage_path
    if url is None:
        path, fs = store.ray_filesystem(sub)
        return RayStorage(path, None if fs is None else _wrap(fs), store.ray_storage_path(sub))
    if "://" not in url or url.startswith("file://"):
        return RayStorage(url, None, url)
    fs, root = fsspec.core.url_to_fs(url, **dict(store.storage_options))
    return RayStorage(root, _wrap(fs), safe_url(url))
