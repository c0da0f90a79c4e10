"""Result tables and raw files (reports) under a store's root, as a mixin of
:class:`~timevec.store.VectorStore`: every relative path is checked before it reaches the filesystem."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, TypeVar, overload

from timevec.store.errors import StoreError
from timevec.store.layout import check_relpath

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from timevec.store.fs import StoreFiles
    from timevec.store.tables import ResultTables


_REQUIRED: Any = object()  # read_table without a default: a missing table is an error
_D = TypeVar("_D")


class ResultFiles:
    """write/append/read tables and write/read/list/remove files, relative to the store's root."""

    if TYPE_CHECKING:  # provided by the façade (:class:`~timevec.store.VectorStore`)
        _tables: ResultTables
        _files: StoreFiles
        root: str

        def _path(self, *parts: str) -> str: ...

    # ------------------------------------------------------------------ tables

    def write_table(self, name: str, data: pd.DataFrame | pa.Table) -> None:
        """Write ``results/<name>.parquet``, replacing any previous table atomically."""
        self._tables.write(name, data)

    def append_table(self, name: str, data: pd.DataFrame | pa.Table, new_columns: Collection[str] = ()) -> None:
        """Append rows to a table (a part file: the table is not rewritten); the columns must match,
        except ``new_columns``, which an older table may lack (its rows get nulls there)."""
        self._tables.append(name, data, new_columns)

    def compact_tables(self) -> list[str]:
        """Fold every table's appended parts into ``results/<name>.parquet`` (atomically, each);
        the stages do it when they end. Returns the tables compacted."""
        return [name for name in self._tables.names() if self._tables.compact(name)]

    @overload
    def read_table(self, name: str) -> pd.DataFrame: ...
    @overload
    def read_table(self, name: str, default: _D) -> pd.DataFrame | _D: ...
    def read_table(self, name: str, default: Any = _REQUIRED) -> Any:
        """``results/<name>.parquet`` as a DataFrame; a missing table is a :class:`StoreError`, or ``default``
        when one is given (``store.read_table(name, default=None)``: the one way to read a table a stage may
        not have written yet)."""
        if default is not _REQUIRED and not self._tables.has(name):
            return default
        return self._tables.read(name)

    def has_table(self, name: str) -> bool:
        return self._tables.has(name)

    # ------------------------------------------------------------------ raw files (reports)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Write a file under the root (atomically replaced), e.g. ``reports/index.html``."""
        self._files.write(self._path(check_relpath(relpath)), data)

    def read_bytes(self, relpath: str) -> bytes:
        path = self._path(check_relpath(relpath))
        try:
            return bytes(self._files.read(path))
        except FileNotFoundError:
            raise StoreError(f"{relpath} not found in store {self}") from None

    def exists_path(self, relpath: str) -> bool:
        return self._files.exists(self._path(check_relpath(relpath)))

    def remove_paths(self, relpaths: list[str]) -> None:
        """Remove files under the root (absent ones are ignored), e.g. results moved aside by an extension."""
        self._files.remove([self._path(check_relpath(rel)) for rel in relpaths])

    def list_paths(self, prefix: str = "") -> list[str]:
        """Relative paths of every file under ``prefix`` (recursive, sorted; '' = the whole store)."""
        prefix = prefix.rstrip("/")
        base = self._path(check_relpath(prefix)) if prefix else self.root
        return self._files.find_rel(base, prefix)
