"""Compare the result tables of two stores: identical, or the first difference (exit status 1).

    python bench/compare_tables.py STORE_A STORE_B [--tables cells,interpolation,...]

By default every table either store holds (``results/*.parquet``, the report's figure tables included).
A store is a folder holding ``results/*.parquet`` (or the ``results`` folder itself). Rows are
sorted by each table's key columns (the table registry's, ``timevec.results.TABLES``; all columns where it
declares none): the order of appends differs between runs. Two columns are
ignored: ``seconds`` (wall time of a cell) and ``experiment`` (analogy_best: the Tune experiment's
name, whose signature hashes the vectors' shard sha256 — and safetensors writes its metadata keys
in a per-process random order, so identical tensors get other file bytes on every run). Every
other value must be exactly equal (NaN equals NaN). Used to show that a refactoring leaves the
demo's tables unchanged.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import harness
import pandas as pd

from timevec.results import TABLES

#: Each table's key columns, as the table registry declares them (timevec.results.TABLES).
KEYS: dict[str, list[str]] = {t.name: list(t.key) for t in TABLES.values() if t.key is not None}
IGNORED = ("seconds", "experiment")  # timing; a name hashed from run-dependent file bytes


def _results(store: str) -> Path:
    path = Path(store)
    return path if path.name == "results" else path / "results"


def _load(store: str, table: str) -> pd.DataFrame | None:
    path = _results(store) / f"{table}.parquet"
    if not path.exists():
        return None
    frame = pd.read_parquet(path)
    frame = frame.drop(columns=[c for c in IGNORED if c in frame.columns])
    keys = [k for k in KEYS.get(table, []) if k in frame.columns] or list(frame.columns)
    order = frame[keys].astype(str)
    return frame.loc[order.sort_values(keys).index].reset_index(drop=True)


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True  # NaN == NaN
    try:
        return bool(a == b)
    except ValueError:  # arrays (e.g. soup members)
        return list(a) == list(b)  # type: ignore[call-overload]


def first_difference(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    """A description of the first difference, or None when the frames are identical."""
    if list(a.columns) != list(b.columns):
        return f"columns differ: {list(a.columns)} vs {list(b.columns)}"
    if len(a) != len(b):
        return f"row counts differ: {len(a)} vs {len(b)}"
    for column in a.columns:
        if a[column].dtype != b[column].dtype:
            return f"column {column!r}: dtype {a[column].dtype} vs {b[column].dtype}"
    for i in range(len(a)):
        for column in a.columns:
            x, y = a.at[i, column], b.at[i, column]
            if not _same(x, y):
                row = {k: a.at[i, k] for k in a.columns if k not in ("value",)}
                return f"row {i} column {column!r}: {x!r} vs {y!r} (row: {row})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("store_a")
    parser.add_argument("store_b")
    parser.add_argument("--tables", help="comma-separated (default: every table either store holds, figures' included)")
    args = parser.parse_args(argv)
    harness.output_block()
    different = False
    tables = ([t for t in args.tables.split(",") if t] if args.tables else
              sorted({p.stem for store in (args.store_a, args.store_b) for p in _results(store).glob("*.parquet")}))
    for table in tables:
        a, b = _load(args.store_a, table), _load(args.store_b, table)
        if a is None or b is None:
            missing = [s for s, f in ((args.store_a, a), (args.store_b, b)) if f is None]
            print(f"{table}: DIFFERENT (missing in {', '.join(missing)})")
            different = True
            continue
        diff = first_difference(a, b)
        if diff is None:
            print(f"{table}: identical ({len(a)} rows, {len(a.columns)} columns compared)")
        else:
            print(f"{table}: DIFFERENT: {diff}")
            different = True
    print(f"ignored columns: {', '.join(IGNORED)}")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
