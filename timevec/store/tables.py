"""Results tables of the store: ``<root>/results/<name>.parquet`` written, appended and read with
pyarrow.

Why apart from the vectors: tables are small, whole-file, replaced atomically on every write, and
need pandas/pyarrow, which are imported here on first use so that workers that only move vectors
never pay for them. An append checks the columns and casts the new rows to the table's schema,
so a resumed stage cannot silently change a column's type.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from timevec.store.errors import StoreError
from timevec.store.fs import StoreFiles
from timevec.store.layout import check_table_name

if TYPE_CHECKING:  # pandas/pyarrow are imported on first table use: workers that only move vectors skip them
    import pandas as pd
    import pyarrow as pa

logger = logging.getLogger("timevec.store")

__all__ = ["ResultTables", "to_arrow"]


def to_arrow(data: pd.DataFrame | pa.Table) -> pa.Table:
    import pandas as pd
    import pyarrow as pa

    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise StoreError(f"a table must be a pandas DataFrame or a pyarrow Table, got {type(data).__name__}")


def _with_null_columns(table: pa.Table, schema: pa.Schema, added: Collection[str]) -> pa.Table:
    """``table`` in ``schema``'s column order (and metadata), the ``added`` columns all null."""
    import pyarrow as pa

    columns = [pa.nulls(table.num_rows, schema.field(col).type) if col in added else table.column(col)
               for col in schema.names]
    fields = [schema.field(col) if col in added else table.schema.field(col) for col in schema.names]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))


class ResultTables:
    """The Parquet tables under ``results/`` of one store; ``owner`` names the store in messages."""

    def __init__(self, files: StoreFiles, owner: str) -> None:
        self.files = files
        self.owner = owner

    def path(self, name: str) -> str:
        return self.files.path("results", f"{check_table_name(name)}.parquet")

    def write(self, name: str, data: pd.DataFrame | pa.Table) -> None:
        """Write ``results/<name>.parquet``, replacing any previous table atomically."""
        import pyarrow.parquet as pq

        path = self.path(name)
        table = to_arrow(data)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self.files.write(path, sink.getbuffer())
        logger.info("wrote table %s (%d rows) to %s", name, table.num_rows, self.owner)

    def append(self, name: str, data: pd.DataFrame | pa.Table, new_columns: Collection[str] = ()) -> None:
        """Append rows to a table (read, concatenate, replace); the columns must match.

        ``new_columns``: columns the rows may carry although the table lacks them (a table written
        before they were added to its schema); the table's rows get nulls (NaN) there, and the
        table takes the rows' column order.
        """
        import pyarrow as pa

        new = to_arrow(data)
        if not self.has(name):
            self.write(name, new)
            return
        old = self.read_arrow(name)
        old_cols, new_cols = old.schema.names, new.schema.names
        for col in old_cols:
            if col not in new_cols:
                raise StoreError(f"table {name}: appended rows lack column {col!r}")
        added = [col for col in new_cols if col not in old_cols]
        for col in added:
            if col not in new_columns:
                raise StoreError(f"table {name}: appended rows have column {col!r} that the table lacks")
        if added:
            old = _with_null_columns(old, new.schema, added)
            old_cols = old.schema.names
            logger.info("table %s: columns %s added, null in its %d earlier rows", name, added, old.num_rows)
        new = new.select(old_cols)
        columns = []
        for col in old_cols:
            want, have = old.schema.field(col).type, new.schema.field(col).type
            column = new.column(col)
            if want != have:
                if pa.types.is_null(want):
                    raise StoreError(f"table {name}: column {col!r} was written all-null; rewrite the table")
                try:
                    column = column.cast(want, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise StoreError(f"table {name}: column {col!r} is {have}, the table has {want}: {exc}") from None
            columns.append(column)
        new = pa.Table.from_arrays(columns, schema=old.schema)
        self.write(name, pa.concat_tables([old, new]))

    def read_arrow(self, name: str) -> pa.Table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.path(name)
        try:
            raw = self.files.read(path)
        except FileNotFoundError:
            raise StoreError(f"table {name} not found: no {self.files.rel(path)} in store {self.owner}") from None
        try:
            return pq.read_table(pa.BufferReader(pa.py_buffer(raw)))
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"table {name}: {self.files.rel(path)} is not a valid Parquet file: {exc}") from None

    def read(self, name: str) -> pd.DataFrame:
        """``results/<name>.parquet`` as a DataFrame; a missing table is a :class:`StoreError`."""
        return self.read_arrow(name).to_pandas()

    def has(self, name: str) -> bool:
        return self.files.exists(self.path(name))
