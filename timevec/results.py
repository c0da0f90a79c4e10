"""The results contract: every table a stage writes to ``<store>/results/``, its columns and its builder.

One module names the tables and fixes their schemas, so that the stages that write them, the
analysis and report that read them, and users' notebooks agree on one spelling. A builder turns
rows (dicts) into a frame with exactly the documented columns and fixed dtypes, so that appended
batches (resumable stages) always concatenate. Torch-free and Ray-free.

| table | written by | one row is |
| --- | --- | --- |
| ``cells`` | evaluate | one (vector or base, test period) evaluation |
| ``interpolation`` | interpolate | one α of (1−α)·τ_first + α·τ_last on one test period |
| ``interpolation_best`` | interpolate | the best α of one middle period, against every baseline |
| ``soups`` / ``patching`` | interpolate | a greedy time soup / a patched period, or one of its baselines |
| ``analogy`` | analogy | one (α₁, α₂, α₃) grid point on one split |
| ``analogy_best`` | analogy | the best point, or one baseline, of one (j, k) pair on one split |
| ``relative_change``, ``diagonal``, ``decay_*``, ``stripes`` | analyze | see :mod:`timevec.misalignment` |
| ``similarity``, ``similarity_centred`` | analyze | one pair of vectors (:mod:`timevec.similarity`) |
| ``fig_<figure>`` | report | the numbers behind one figure of the report |
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
import pyarrow as pa

__all__ = [
    "CELLS_ADDED_COLUMNS",
    "CELLS_COLUMNS",
    "CELLS_SCHEMA",
    "CELL_KEY",
    "cells_frame",
    "cells_table",
    "CELLS_TABLE",
    "DECAY_BY_GAP_TABLE",
    "DECAY_FIT_TABLE",
    "DIAGONAL_TABLE",
    "FINDINGS_TABLE",
    "HEADLINE_FILE",
    "RELATIVE_CHANGE_TABLE",
    "REPORT_TABLES",
    "SIMILARITY_CENTRED_TABLE",
    "SIMILARITY_TABLE",
    "STRIPES_TABLE",
    "ANALOGY_BEST_COLUMNS",
    "ANALOGY_BEST_TABLE",
    "ANALOGY_COLUMNS",
    "ANALOGY_METHODS",
    "ANALOGY_TABLE",
    "INTERPOLATION_BEST_COLUMNS",
    "INTERPOLATION_BEST_TABLE",
    "INTERPOLATION_COLUMNS",
    "INTERPOLATION_KEY",
    "INTERPOLATION_TABLE",
    "PATCHING_COLUMNS",
    "PATCHING_TABLE",
    "SOUPS_TABLE",
    "SOUP_COLUMNS",
    "alpha_key",
    "analogy_best_frame",
    "analogy_frame",
    "interpolation_frame",
    "patching_frame",
    "soup_frame",
]

CELLS_TABLE = "cells"
INTERPOLATION_TABLE = "interpolation"
INTERPOLATION_BEST_TABLE = "interpolation_best"
SOUPS_TABLE = "soups"
PATCHING_TABLE = "patching"
ANALOGY_TABLE = "analogy"
ANALOGY_BEST_TABLE = "analogy_best"
# written by the analysis stage (schemas: the frames of timevec.misalignment / timevec.similarity)
RELATIVE_CHANGE_TABLE = "relative_change"
DIAGONAL_TABLE = "diagonal"
DECAY_BY_GAP_TABLE = "decay_by_gap"
DECAY_FIT_TABLE = "decay_fit"
STRIPES_TABLE = "stripes"
SIMILARITY_TABLE = "similarity"
SIMILARITY_CENTRED_TABLE = "similarity_centred"
FINDINGS_TABLE = "findings"  # the verdict per finding (timevec.findings)
HEADLINE_FILE = "results/headline.json"
#: What the report reads (figures get their own ``fig_<name>`` tables, written by the report).
REPORT_TABLES = (CELLS_TABLE, INTERPOLATION_TABLE, SOUPS_TABLE, PATCHING_TABLE, ANALOGY_BEST_TABLE)


def alpha_key(alpha: float) -> float:
    """A mixing weight as stored in tables and keys: rounded so that 0.30000000000000004 and 0.3
    are the same point (every stage and every resume compares α through this one function)."""
    return round(float(alpha), 10)


# ----------------------------------------------------------------------------- cells

CELL_KEY = ["task", "granularity", "vector", "test_period"]
CELLS_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("granularity", pa.string()),
        ("vector", pa.string()),
        ("train_period", pa.string()),
        ("test_period", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("low", pa.float64()),  # the bootstrap interval of value (timevec.bootstrap); NaN: none
        ("high", pa.float64()),
        ("higher_is_better", pa.bool_()),
        ("n_examples", pa.int64()),
        ("n_tokens", pa.int64()),
        ("seconds", pa.float64()),
    ]
)
CELLS_COLUMNS = CELLS_SCHEMA.names
#: Columns added to the cells table after stores were first written (a store written before lacks
#: them): readers fill them with NaN (:func:`cells_frame`), appends add them to the old rows.
CELLS_ADDED_COLUMNS = ("low", "high")


def cells_frame(rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """Rows (dicts, or a frame read from a store) as a DataFrame with exactly the cells columns, in
    order and with their dtypes. Keys outside the schema are dropped; a missing ``low``/``high``
    (rows of an evaluation without bounds, a table written before they existed) is NaN."""
    frame = pd.DataFrame(rows if isinstance(rows, pd.DataFrame) else list(rows), columns=CELLS_COLUMNS)
    return frame.astype(
        {"value": "float64", "low": "float64", "high": "float64", "higher_is_better": "bool", "n_examples": "int64",
         "n_tokens": "int64", "seconds": "float64"}
    )


def cells_table(frame: pd.DataFrame) -> pa.Table:
    """The fixed Arrow schema, so a first batch of base rows (train_period all None) is not
    written as a null-typed column that later appends could not extend."""
    return pa.Table.from_pandas(frame[CELLS_COLUMNS], schema=CELLS_SCHEMA, preserve_index=False)


# ----------------------------------------------------------------------------- interpolation

INTERPOLATION_COLUMNS = ["task", "granularity", "first", "last", "alpha", "test_period", "metric", "value", "higher_is_better"]
INTERPOLATION_KEY = ["task", "granularity", "first", "last", "alpha", "test_period"]
INTERPOLATION_BEST_COLUMNS = [
    "task", "granularity", "first", "last", "test_period", "metric", "higher_is_better",
    "best_alpha", "best_value", "value_alpha0", "value_alpha1",
    "gain_vs_first", "gain_vs_last", "gain_vs_first_pct", "gain_vs_last_pct", "beats_both_ends",
    "in_period_value", "gain_vs_in_period", "gain_vs_in_period_pct",
    "latest_period", "latest_value", "gain_vs_latest", "gain_vs_latest_pct", "beats_latest",
    "previous_period", "previous_value", "gain_vs_previous", "gain_vs_previous_pct",
    "base_value",
]


def interpolation_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a frame with exactly :data:`INTERPOLATION_COLUMNS` and fixed dtypes (appendable)."""
    frame = pd.DataFrame(list(rows), columns=INTERPOLATION_COLUMNS)
    return frame.astype({"alpha": "float64", "value": "float64", "higher_is_better": "bool"})


# ----------------------------------------------------------------------------- soups and patching

SOUP_COLUMNS = [
    "task", "granularity", "period", "method", "members", "n_members", "split", "metric", "value",
    "higher_is_better", "gain",
]
PATCHING_COLUMNS = [
    "task", "granularity", "period", "method", "members", "split", "metric", "value", "higher_is_better", "gain",
]


def soup_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=SOUP_COLUMNS)
    return frame.astype({"n_members": "int64", "value": "float64", "higher_is_better": "bool", "gain": "float64"})


def patching_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=PATCHING_COLUMNS)
    return frame.astype({"value": "float64", "higher_is_better": "bool", "gain": "float64"})


# ----------------------------------------------------------------------------- task analogy

ANALOGY_COLUMNS = ["task", "source_period", "target_period", "alpha1", "alpha2", "alpha3", "split", "metric", "value"]
ANALOGY_BEST_COLUMNS = [
    "task", "source_period", "target_period", "method", "alpha1", "alpha2", "alpha3", "split", "metric", "value",
    "higher_is_better", "vector", "note",
]
#: The methods of ``analogy_best``: the analogy's best point and every baseline it is compared with.
ANALOGY_METHODS = ("base", "task_j", "task_j_scaled", "latest", "in_period", "analogy")


def analogy_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows of :data:`ANALOGY_COLUMNS` as a frame with fixed dtypes."""
    return pd.DataFrame(list(rows), columns=ANALOGY_COLUMNS).astype(
        {"alpha1": "float64", "alpha2": "float64", "alpha3": "float64", "value": "float64"})


def analogy_best_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=ANALOGY_BEST_COLUMNS)
    return frame.astype({"alpha1": "float64", "alpha2": "float64", "alpha3": "float64", "value": "float64",
                         "higher_is_better": "bool"})
