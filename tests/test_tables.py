"""The table registry (timevec.results.registry): every table written and read through its declared schema."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from timevec import results
from timevec.store import StoreError, VectorStore


def _cell(**overrides) -> dict:
    row = {"task": "lm", "granularity": "year", "vector": "lm/2014", "train_period": "2014", "test_period": "2015",
           "metric": "perplexity", "value": 12.5, "low": 12.0, "high": 13.0, "higher_is_better": False,
           "n_examples": 8, "n_tokens": 800, "seconds": 0.25}
    return {**row, **overrides}


def test_every_declared_schema_is_well_formed() -> None:
    for declared in results.TABLES.values():
        assert declared.schema is not None, declared.name
        names = declared.schema.names
        assert len(names) == len(set(names)), declared.name
        assert {str(f.type) for f in declared.schema} <= {"string", "double", "int64", "bool", "list<item: double>",
                                                          "list<item: int64>", "list<item: string>"}, declared.name
        assert set(declared.added) <= set(names) and {c for c, _ in declared.fill} <= set(names), declared.name
    assert results.schema("a b:f64 c:i64 d:bool").equals(
        pa.schema([("a", pa.string()), ("b", pa.float64()), ("c", pa.int64()), ("d", pa.bool_())]))
    assert results.schema("e:list<f64> f:list<i64> g:list<str>").equals(
        pa.schema([("e", pa.list_(pa.float64())), ("f", pa.list_(pa.int64())), ("g", pa.list_(pa.string()))]))


@pytest.mark.parametrize("new_store", ["local"], indirect=True)
def test_a_first_batch_of_base_rows_is_stored_typed_and_later_batches_append(new_store: Callable[..., VectorStore]):
    """Why the schema is written, not inferred: the base's rows have no train period, and a null-typed column
    could not take the vectors' strings appended after it."""
    store = new_store()
    results.append_table(store, "cells", results.cells_frame([_cell(vector="base", train_period=None)]))
    results.append_table(store, "cells", results.cells_frame([_cell()]))
    store.compact_tables()
    path = f"{store.root}/results/cells.parquet"
    assert pq.read_schema(path).remove_metadata().equals(results.CELLS_SCHEMA)
    back = results.read_table(store, "cells")
    assert back["train_period"].isna().tolist() == [True, False] and back.loc[1, "train_period"] == "2014"
    assert back["n_examples"].dtype == "int64"


@pytest.mark.parametrize("new_store", ["local"], indirect=True)
def test_rows_that_disagree_with_the_declaration_are_refused_by_name_and_nothing_is_written(
        new_store: Callable[..., VectorStore]):
    store = new_store()
    frame = results.cells_frame([_cell()])
    with pytest.raises(ValueError, match=r"table 'cells': the rows lack \['seconds'\] and have undeclared \[\]"):
        results.write_table(store, "cells", frame.drop(columns="seconds"))
    with pytest.raises(ValueError, match=r"table 'cells': the rows lack \[\] and have undeclared \['gap'\]"):
        results.append_table(store, "cells", frame.assign(gap=1.0))
    assert not store.has_table("cells")
    with pytest.raises(ValueError, match="unknown result table 'cell'; the tables: analogy"):
        results.write_table(store, "cell", frame)


@pytest.mark.parametrize("new_store", ["local"], indirect=True)
def test_an_unknown_table_and_a_missing_table_are_one_clear_error_each(new_store: Callable[..., VectorStore]):
    store = new_store()
    with pytest.raises(ValueError, match="unknown result table 'interpolations'; the tables: .*interpolation,"):
        results.read_table(store, "interpolations")
    with pytest.raises(ValueError, match="unknown result table"):
        results.read_table(store, "interpolations", default=None)  # a default does not excuse a misspelt name
    with pytest.raises(StoreError, match="interpolation"):
        results.read_table(store, "interpolation")
    assert results.read_table(store, "interpolation", default=None) is None
    # a figure's table is the report's: any fig_<name>, columns its own
    results.write_table(store, "fig_matrix_lm_year", pd.DataFrame({"x": [1, 2]}))
    assert list(results.read_table(store, "fig_matrix_lm_year")["x"]) == [1, 2]


def test_builders_fix_columns_dtypes_and_the_declared_fills() -> None:
    frame = results.interpolation_frame([{"task": "lm", "alpha": 1, "value": 3, "higher_is_better": 0, "extra": "x"}])
    assert list(frame.columns) == results.INTERPOLATION_COLUMNS  # the key outside the schema is dropped
    assert frame.loc[0, "split"] == "test"  # a row that names no split is a test value
    assert frame.dtypes[["alpha", "value"]].tolist() == ["float64", "float64"] and frame["higher_is_better"].dtype == bool
    grid = results.analogy_frame([{"task": "lm", "alpha1": 1.0}])
    assert grid.loc[0, "method"] == "analogy" and math.isnan(grid.loc[0, "value"])
    old = pd.DataFrame([{k: v for k, v in _cell().items() if k not in ("low", "high")}])  # a table from before low/high
    cells = results.cells_frame(old)
    assert list(cells.columns) == results.CELLS_COLUMNS and math.isnan(cells.loc[0, "low"])
    assert math.isnan(cells.loc[0, "halfwidth"])
