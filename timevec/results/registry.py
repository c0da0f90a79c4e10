"""The table registry: every result table declared once (name, writer, schema, key), and the one way rows are
built, written and read through it.

Why: a table written by one stage is read by the analysis, the report, later runs of the stage (resume,
extension) and users' notebooks. Declaring each table once — its Arrow schema from
:mod:`timevec.results.schemas` — and writing through :func:`write_table` / :func:`append_table` means every
table a stage writes has exactly its declared columns and types (appended batches always concatenate, a
first batch of nulls is not stored as a null-typed column), and a reader that names a table nobody declares
gets one clear error. Torch-free and Ray-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

import pandas as pd
import pyarrow as pa

from timevec.results import schemas as s

if TYPE_CHECKING:
    from timevec.store import VectorStore

_D = TypeVar("_D")

__all__ = [
    "FIGURE_TABLE_PREFIX", "TABLES", "Table", "append_table", "read_table", "table", "write_table",
    "analogy_best_frame", "analogy_frame", "cell_examples_frame", "cells_frame", "forecast_frame", "forgetting_frame", "group_norms_frame",
    "group_sim_deg_frame", "group_similarity_frame", "group_swaps_frame", "interpolation_frame", "merge_methods_frame",
    "patching_frame", "probe_frame", "soup_frame",
]


# ----------------------------------------------------------------------------- the table registry


#: The pandas dtype each Arrow type is built and read as (string columns stay Python objects).
_PANDAS_DTYPES = {pa.float64(): "float64", pa.int64(): "int64", pa.bool_(): "bool"}


@dataclass(frozen=True)
class Table:
    """One result table, declared once: its name, who writes it (a stage of :mod:`timevec.stages`, or a command),
    its Arrow schema (None: a report figure's table, whose columns are the figure's own) and the columns that
    identify a row (None: not declared; readers that sort or de-duplicate rows, ``bench/compare_tables.py``, take
    the key from here). ``fill``: the value a null means in a column (rows written before the column was filled);
    ``added``: columns added after stores were first written (an older table's rows read as null there)."""

    name: str
    written_by: str
    schema: pa.Schema | None = None
    key: tuple[str, ...] | None = None
    fill: tuple[tuple[str, Any], ...] = ()
    added: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...] | None:
        return None if self.schema is None else tuple(self.schema.names)

    def frame(self, rows: Iterable[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
        """Rows (dicts, or a frame read from a store) as a frame with exactly this table's columns, in order and
        with their dtypes, so that appended batches always concatenate. Keys outside the schema are dropped; a
        missing column is null (or its ``fill``)."""
        if self.schema is None:
            raise ValueError(f"table {self.name!r} declares no schema")
        columns = list(self.schema.names)
        frame = rows.reindex(columns=columns) if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows),
                                                                                                   columns=columns)
        for column, value in self.fill:
            frame[column] = frame[column].astype(object).fillna(value)
        return frame.astype({f.name: _PANDAS_DTYPES[f.type] for f in self.schema if f.type in _PANDAS_DTYPES})

    def arrow(self, data: pd.DataFrame | pa.Table) -> pa.Table:
        """``data`` as an Arrow table of exactly this schema (what the store writes). A missing or unexpected column
        is a ValueError naming the table and the columns: a writer and the declaration disagree."""
        if self.schema is None:
            return data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
        have = list(data.column_names if isinstance(data, pa.Table) else data.columns)
        missing = [c for c in self.schema.names if c not in have]
        extra = [c for c in have if c not in self.schema.names]
        if missing or extra:
            raise ValueError(f"table {self.name!r}: the rows lack {missing} and have undeclared {extra} "
                             f"(timevec.results declares {self.schema.names})")
        if isinstance(data, pa.Table):
            return data.select(self.schema.names).cast(self.schema)
        return pa.Table.from_pandas(data[self.schema.names], schema=self.schema, preserve_index=False)


def _declare(*tables: Table) -> dict[str, Table]:
    return {table.name: table for table in tables}


TABLES: dict[str, Table] = _declare(
    Table(s.CELLS_TABLE, "evaluate", s.CELLS_SCHEMA, tuple(s.CELL_KEY), fill=(("estimated", False),),
          added=s.CELLS_ADDED_COLUMNS),
    Table(s.CELL_EXAMPLES_TABLE, "evaluate", s.CELL_EXAMPLES_SCHEMA, tuple(s.CELL_KEY)),
    Table(s.INTERPOLATION_TABLE, "interpolate", s.INTERPOLATION_SCHEMA, tuple(s.INTERPOLATION_KEY), fill=(("split", "test"),)),
    Table(s.INTERPOLATION_BEST_TABLE, "interpolate", s.INTERPOLATION_BEST_SCHEMA,
          ("task", "granularity", "first", "last", "test_period")),
    Table(s.SOUPS_TABLE, "interpolate", s.SOUP_SCHEMA, ("task", "granularity", "period", "method", "split")),
    Table(s.PATCHING_TABLE, "interpolate", s.PATCHING_SCHEMA, ("task", "granularity", "period", "method", "split")),
    Table(s.FORECAST_TABLE, "forecast", s.FORECAST_SCHEMA, tuple(s.FORECAST_KEY)),
    Table(s.ANALOGY_TABLE, "analogy", s.ANALOGY_SCHEMA,
          ("task", "source_period", "target_period", "method", "alpha1", "alpha2", "alpha3", "split"),
          fill=(("method", "analogy"), ("stopped", False)), added=s.ANALOGY_ADDED_COLUMNS),
    Table(s.ANALOGY_BEST_TABLE, "analogy", s.ANALOGY_BEST_SCHEMA, ("task", "source_period", "target_period", "method", "split")),
    Table(s.GROUP_SWAPS_TABLE, "groups", s.GROUP_SWAPS_SCHEMA, tuple(s.GROUP_SWAPS_KEY)),
    Table(s.MERGED_CELLS_TABLE, "forgetting", s.CELLS_SCHEMA, tuple(s.CELL_KEY), fill=(("estimated", False),),
          added=s.CELLS_ADDED_COLUMNS),
    Table(s.FORGETTING_TABLE, "forgetting", s.FORGETTING_SCHEMA, ("task", "granularity", "mode", "test_period", "train_period")),
    Table(s.INTERPOLATION_PROTOCOLS_TABLE, "analyze", s.INTERPOLATION_PROTOCOL_SCHEMA),
    Table(s.ANALOGY_PROTOCOLS_TABLE, "analyze", s.ANALOGY_PROTOCOL_SCHEMA),
    Table(s.GROUP_NORMS_TABLE, "analyze", s.GROUP_NORMS_SCHEMA),
    Table(s.GROUP_SIMILARITY_TABLE, "analyze", s.GROUP_SIMILARITY_SCHEMA),
    Table(s.GROUP_SIM_DEG_TABLE, "analyze", s.GROUP_SIM_DEG_SCHEMA),
    Table(s.RELATIVE_CHANGE_TABLE, "analyze", s.RELATIVE_CHANGE_SCHEMA, tuple(s.CELL_KEY)),
    Table(s.DIAGONAL_TABLE, "analyze", s.DIAGONAL_SCHEMA, ("task", "granularity")),
    Table(s.DECAY_BY_GAP_TABLE, "analyze", s.DECAY_BY_GAP_SCHEMA, ("task", "granularity", "abs_gap")),
    Table(s.DECAY_FIT_TABLE, "analyze", s.DECAY_FIT_SCHEMA, ("task", "granularity")),
    Table(s.STRIPES_TABLE, "analyze", s.STRIPES_SCHEMA, ("task", "granularity")),
    Table(s.SIMILARITY_TABLE, "analyze", s.SIMILARITY_SCHEMA, ("task_a", "period_a", "task_b", "period_b")),
    Table(s.SIMILARITY_CENTRED_TABLE, "analyze", s.SIMILARITY_SCHEMA, ("task_a", "period_a", "task_b", "period_b")),
    Table(s.FINDINGS_TABLE, "analyze", s.FINDINGS_SCHEMA),
    Table(s.FINDINGS_SEEDS_TABLE, "run (replicates)", s.FINDINGS_SEEDS_SCHEMA),
    Table(s.PROBE_TABLE, "timevec probe", s.PROBE_SCHEMA),
    Table(s.MERGE_METHODS_TABLE, "bench/merge_methods.py --write", s.MERGE_METHODS_SCHEMA),
)


#: The numbers behind one figure of the report: ``fig_<figure>``, columns the figure's own.
FIGURE_TABLE_PREFIX = "fig_"


def table(name: str) -> Table:
    """The declaration of table ``name`` (a ``fig_<figure>`` table: the report's); an unknown name is one clear
    error naming the known ones."""
    if name in TABLES:
        return TABLES[name]
    if name.startswith(FIGURE_TABLE_PREFIX) and len(name) > len(FIGURE_TABLE_PREFIX):
        return Table(name, "report")
    raise ValueError(f"unknown result table {name!r}; the tables: {', '.join(sorted(TABLES))} and fig_<figure>")


# ----------------------------------------------------------------------------- reading and writing through the registry


_REQUIRED: Any = object()


def write_table(store: VectorStore, name: str, data: pd.DataFrame | pa.Table) -> None:
    """Write table ``name`` (replacing it) in its declared schema: the one way a stage writes a result table."""
    store.write_table(name, table(name).arrow(data))


def append_table(store: VectorStore, name: str, data: pd.DataFrame | pa.Table) -> None:
    """Append rows to table ``name`` in its declared schema (an older table may lack the declaration's ``added``)."""
    declared = table(name)
    store.append_table(name, declared.arrow(data), new_columns=declared.added)


@overload
def read_table(store: VectorStore, name: str) -> pd.DataFrame: ...
@overload
def read_table(store: VectorStore, name: str, default: _D) -> pd.DataFrame | _D: ...
def read_table(store: VectorStore, name: str, default: Any = _REQUIRED) -> Any:
    """Table ``name`` of ``store``: an undeclared name is a ValueError naming the known tables, a missing table the
    store's error, or ``default`` when one is given (the way to read a table a stage may not have written yet)."""
    table(name)
    return store.read_table(name) if default is _REQUIRED else store.read_table(name, default=default)


def _builder(name: str) -> Callable[[Iterable[dict[str, Any]] | pd.DataFrame], pd.DataFrame]:
    declared = TABLES[name]

    def build(rows: Iterable[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
        return declared.frame(rows)

    build.__doc__ = f"Rows as a frame of table ``{name}``'s columns and dtypes (:meth:`Table.frame`)."
    return build


cells_frame = _builder(s.CELLS_TABLE)
cell_examples_frame = _builder(s.CELL_EXAMPLES_TABLE)
interpolation_frame = _builder(s.INTERPOLATION_TABLE)
soup_frame = _builder(s.SOUPS_TABLE)
patching_frame = _builder(s.PATCHING_TABLE)
forecast_frame = _builder(s.FORECAST_TABLE)
analogy_frame = _builder(s.ANALOGY_TABLE)
analogy_best_frame = _builder(s.ANALOGY_BEST_TABLE)
merge_methods_frame = _builder(s.MERGE_METHODS_TABLE)
group_norms_frame = _builder(s.GROUP_NORMS_TABLE)
group_sim_deg_frame = _builder(s.GROUP_SIM_DEG_TABLE)
group_swaps_frame = _builder(s.GROUP_SWAPS_TABLE)
probe_frame = _builder(s.PROBE_TABLE)
forgetting_frame = _builder(s.FORGETTING_TABLE)


def group_similarity_frame(rows: Iterable[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows (or a frame's selected rows) of table ``group_similarity``, renumbered from 0."""
    return TABLES[s.GROUP_SIMILARITY_TABLE].frame(rows).reset_index(drop=True)

