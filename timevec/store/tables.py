"""Results tables of the store: ``<root>/results/<name>.parquet`` written, appended and read with
pyarrow.

Why apart from the vectors: tables are small and need pandas/pyarrow, which are imported here on
first use so that workers that only move vectors never pay for them. An append checks the columns
and casts the new rows to the table's schema, so a resumed stage cannot silently change a column's type.

Appends without rewriting (issue #28): a stage streams its rows in batches, and rewriting the
whole table per batch made a stage's table writes quadratic in its rows. An append now publishes
its rows as one part file ``results/<name>.parts/<generation>-<seq>-<rows>.parquet`` and a read takes
the table file and its parts as one ``pyarrow.dataset``, in order. The table file is the commit
point: its Parquet metadata holds its *generation*, and only the parts of that generation belong
to it. :meth:`ResultTables.write` (and compaction) publishes a new generation's table file
atomically, after which the older parts are ignored, then removed; a crash anywhere leaves the
old table or the new one, never a mix. Compaction (parts folded into the table file) runs when
the parts hold as many rows as the table file (each row is rewritten O(1) times in all) or
number :data:`MAX_PARTS`, and at the end of every stage (:meth:`ResultTables.compact`), so that
``results/<name>.parquet`` read on its own (pandas, another tool) is the whole table between stages.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Collection
from typing import TYPE_CHECKING

from timevec.store.errors import StoreError
from timevec.store.fs import StoreFiles
from timevec.store.layout import check_table_name

if TYPE_CHECKING:  # pandas/pyarrow are imported on first table use: workers that only move vectors skip them
    import pandas as pd
    import pyarrow as pa

logger = logging.getLogger("timevec.store")

__all__ = ["MAX_PARTS", "ResultTables", "table_of", "to_arrow"]

#: Parquet metadata key of a table file's generation (absent: 0, a table written before part files)
GENERATION_KEY = b"timevec.generation"
#: an append folds the parts into the table file when there would be this many parts
MAX_PARTS = 64
PARTS_SUFFIX = ".parts"
_PART_RE = re.compile(r"^(\d+)-(\d+)-(\d+)\.parquet$")


def table_of(relpath: str) -> str | None:
    """The table that a root-relative path under ``results/`` belongs to (its file or one of its
    parts), or None: ``results/cells.parts/000001-000003-58.parquet`` → ``cells``."""
    parts = relpath.split("/")
    if len(parts) == 2 and parts[0] == "results" and parts[1].endswith(".parquet"):
        return parts[1][: -len(".parquet")]
    if len(parts) == 3 and parts[0] == "results" and parts[1].endswith(PARTS_SUFFIX) and _PART_RE.match(parts[2]):
        return parts[1][: -len(PARTS_SUFFIX)]
    return None


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


class _Part:
    __slots__ = ("generation", "path", "rows", "seq")

    def __init__(self, path: str, generation: int, seq: int, rows: int) -> None:
        self.path, self.generation, self.seq, self.rows = path, generation, seq, rows


class ResultTables:
    """The Parquet tables under ``results/`` of one store; ``owner`` names the store in messages."""

    def __init__(self, files: StoreFiles, owner: str) -> None:
        self.files = files
        self.owner = owner

    def path(self, name: str) -> str:
        return self.files.path("results", f"{check_table_name(name)}.parquet")

    def parts_dir(self, name: str) -> str:
        return self.files.path("results", f"{check_table_name(name)}{PARTS_SUFFIX}")

    # ------------------------------------------------------------------ layout

    def _head(self, name: str) -> tuple[pa.Schema, int, int] | None:
        """The table file's (schema, rows, generation) from its footer alone; None when absent."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.path(name)
        try:
            if self.files.local:
                meta = pq.read_metadata(path)
            else:
                with self.files.fs.open(path, "rb") as f:
                    meta = pq.read_metadata(f)
        except FileNotFoundError:
            return None
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"table {name}: {self.files.rel(path)} is not a valid Parquet file: {exc}") from None
        schema = meta.schema.to_arrow_schema()
        return schema, meta.num_rows, int((schema.metadata or {}).get(GENERATION_KEY, b"0"))

    def _parts(self, name: str) -> list[_Part]:
        """Every part file of the table, any generation, in (generation, seq) order."""
        found = []
        for path in self.files.list_files(self.parts_dir(name)):
            match = _PART_RE.match(path.rsplit("/", 1)[-1])
            if match:  # a writer's temporary file or anything else is not a part
                found.append(_Part(path, *(int(g) for g in match.groups())))
        return sorted(found, key=lambda p: (p.generation, p.seq))

    def _publish(self, name: str, table: pa.Table, generation: int) -> None:
        """Write the table file of ``generation`` atomically (the commit point), then remove every
        part of another generation: they are no longer the table's whatever happens next."""
        import pyarrow.parquet as pq

        metadata = dict(table.schema.metadata or {})
        metadata[GENERATION_KEY] = str(generation).encode()
        table = table.replace_schema_metadata(metadata)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        self.files.write(self.path(name), sink.getbuffer())
        stale = [p.path for p in self._parts(name) if p.generation != generation]
        self.files.remove(stale)
        if stale:
            self.files.remove_dir(self.parts_dir(name))

    def _next_generation(self, name: str) -> int:
        head = self._head(name)
        # above every part's too: parts left by a table deleted by hand never join a new one
        return 1 + max([head[2] if head else -1, *(p.generation for p in self._parts(name))])

    # ------------------------------------------------------------------ API

    def write(self, name: str, data: pd.DataFrame | pa.Table) -> None:
        """Write ``results/<name>.parquet``, replacing any previous table (its parts included) atomically."""
        table = to_arrow(data)
        self._publish(name, table, self._next_generation(name))
        logger.info("wrote table %s (%d rows) to %s", name, table.num_rows, self.owner)

    def compact(self, name: str) -> bool:
        """Fold the table's parts into its file (a new generation, atomically); False when it has none."""
        head = self._head(name)
        if head is None:
            return False
        parts = [p for p in self._parts(name) if p.generation == head[2]]
        if not parts:
            return False
        self._publish(name, self.read_arrow(name), self._next_generation(name))
        logger.info("table %s: %d parts folded into %s", name, len(parts), self.files.rel(self.path(name)))
        return True

    def names(self) -> list[str]:
        """Every table of the store (those with a table file)."""
        found = {table_of(self.files.rel(p)) for p in self.files.list_files(self.files.path("results"))}
        return sorted(n for n in found if n)

    def append(self, name: str, data: pd.DataFrame | pa.Table, new_columns: Collection[str] = ()) -> None:
        """Append rows to a table (one part file, or a compaction); the columns must match.

        ``new_columns``: columns the rows may carry although the table lacks them (a table written
        before they were added to its schema); the table's rows get nulls (NaN) there, and the
        table takes the rows' column order (the whole table is rewritten, once).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        new = to_arrow(data)
        head = self._head(name)
        if head is None:
            self.write(name, new)
            return
        schema, base_rows, generation = head
        old_cols, new_cols = schema.names, new.schema.names
        for col in old_cols:
            if col not in new_cols:
                raise StoreError(f"table {name}: appended rows lack column {col!r}")
        added = [col for col in new_cols if col not in old_cols]
        for col in added:
            if col not in new_columns:
                raise StoreError(f"table {name}: appended rows have column {col!r} that the table lacks")
        old: pa.Table | None = None
        if added:
            old = _with_null_columns(self.read_arrow(name), new.schema, added)
            schema, old_cols = old.schema, old.schema.names
            logger.info("table %s: columns %s added, null in its %d earlier rows", name, added, old.num_rows)
        new = new.select(old_cols)
        columns = []
        for col in old_cols:
            want, have = schema.field(col).type, new.schema.field(col).type
            column = new.column(col)
            if want != have:
                if pa.types.is_null(want):
                    raise StoreError(f"table {name}: column {col!r} was written all-null; rewrite the table")
                try:
                    column = column.cast(want, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise StoreError(f"table {name}: column {col!r} is {have}, the table has {want}: {exc}") from None
            columns.append(column)
        new = pa.Table.from_arrays(columns, schema=schema)
        if old is not None:
            self.write(name, pa.concat_tables([old, new]))
            return
        parts = [p for p in self._parts(name) if p.generation == generation]
        if sum(p.rows for p in parts) + new.num_rows >= base_rows or len(parts) + 1 >= MAX_PARTS:
            # geometric: the table file at least doubles, so each row is rewritten O(1) times in all
            self._publish(name, pa.concat_tables([self.read_arrow(name), new]), self._next_generation(name))
            return
        seq = 1 + max((p.seq for p in parts), default=0)
        sink = io.BytesIO()
        pq.write_table(new, sink)
        part = f"{self.parts_dir(name)}/{generation:06d}-{seq:06d}-{new.num_rows}.parquet"
        self.files.write(part, sink.getbuffer())

    def read_arrow(self, name: str) -> pa.Table:
        """The table file and its current parts as one ``pyarrow.dataset``, rows in append order."""
        import pyarrow as pa
        import pyarrow.dataset as ds

        path = self.path(name)
        head = self._head(name)
        if head is None:
            raise StoreError(f"table {name} not found: no {self.files.rel(path)} in store {self.owner}")
        schema, _, generation = head
        paths = [path, *(p.path for p in self._parts(name) if p.generation == generation)]
        try:
            dataset = ds.dataset(paths, schema=schema, format="parquet",
                                 filesystem=None if self.files.local else self.files.fs)
            return dataset.to_table()  # fragments in the order given
        except (pa.ArrowInvalid, OSError) as exc:
            raise StoreError(f"table {name}: {self.files.rel(path)} or a part of it is not valid Parquet: {exc}") from None

    def read(self, name: str) -> pd.DataFrame:
        """``results/<name>.parquet`` (with its parts) as a DataFrame; a missing table is a :class:`StoreError`."""
        return self.read_arrow(name).to_pandas()

    def has(self, name: str) -> bool:
        return self.files.exists(self.path(name))
