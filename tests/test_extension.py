"""Adding periods to a finished study (timevec/train/extension.py), Ray-free: what counts as an extension,
the refusals naming the field, and the old range's results kept apart byte for byte.

The end-to-end count (runs trained, cells computed, old bytes unchanged) is in
tests/test_cli.py::test_tiny_demo_end_to_end_extended_by_a_year_then_store_tools.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from timevec import results
from timevec.config import ConfigError, load_config
from timevec.store import VectorStore
from timevec.train.extension import find_extension, keep_apart

TINY = Path(__file__).resolve().parents[1] / "timevec" / "demo" / "tiny.yaml"
YEARS = ["2014", "2015"]


def _config(root: Path, *overrides: str):
    return load_config(TINY, [f"store.url={root}", "tasks=[lm]", "periods.start='2014'", "periods.end='2015'", *overrides])


def _finish(config, periods: list[str], granularity: str = "year") -> VectorStore:
    """A finished lm study on ``periods``: its vectors (manifests carry the config) and every cell."""
    store = VectorStore.from_config(config.store)
    store.init("tiny-test-base", {"w": torch.zeros(4)})
    for i, period in enumerate(periods):
        store.put_vector("lm", period, {"w": torch.full((4,), float(i + 1))}, manifest={"config": config.model_dump(mode="json")})
    rows = [{"task": "lm", "granularity": granularity, "vector": vector, "test_period": test, "metric": "perplexity",
             "value": 10.0 + n, "low": 9.0, "high": 11.0, "higher_is_better": False, "n_examples": 4, "n_tokens": 40,
             "seconds": 0.1}
            for n, (vector, test) in enumerate((v, t) for v in ["base", *(f"lm/{p}" for p in periods)] for t in periods)]
    store.write_table(results.CELLS_TABLE, results.cells_frame(rows))
    return store


@pytest.fixture
def finished(tmp_path: Path) -> VectorStore:
    """A finished 2-year lm study: two vectors and its 3 × 2 cells."""
    return _finish(_config(tmp_path / "store"), YEARS)


def test_a_monthly_study_is_extended_by_one_month(tmp_path: Path) -> None:
    months = ("granularities=[month]", "periods={start: '2016-11', end: '2017-01'}")
    store = _finish(_config(tmp_path / "store", *months), ["2016-11", "2016-12", "2017-01"], "month")
    extension = find_extension(_config(tmp_path / "store", *months, "periods.end='2017-02'"), store)
    assert extension.added == {("lm", "month"): ["2017-02"]} and extension.label == "month-2016-11-2017-01"
    assert (extension.new_runs(), extension.new_cells()) == (1, 2 * 3 + 1 + 1)


def test_a_later_end_is_an_extension_and_the_same_or_a_shorter_range_is_not(finished: VectorStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    assert find_extension(_config(root), finished) is None
    assert find_extension(_config(root, "periods.end='2014'"), finished) is None  # a sub-study: left alone
    extension = find_extension(_config(root, "periods.end='2017'"), finished)
    assert extension.added == {("lm", "year"): ["2016", "2017"]} and extension.label == "year-2014-2015"
    assert extension.new_runs() == 2
    assert extension.new_cells() == 4 * 4 - 2 * 2 + 2  # the new rows and columns, and the base on 2016, 2017
    one = find_extension(_config(root, "periods.end='2016'"), finished)
    assert one.new_cells() == 2 * len(YEARS) + 1 + 1  # 2N + 1, plus the base
    assert find_extension(_config(tmp_path / "empty", "periods.end='2016'"), VectorStore(str(tmp_path / "empty"))) is None


@pytest.mark.parametrize("overrides, field", [
    (["tasks=[lm, classification]"], "tasks:"),
    (["granularities=[year, month]"], "granularities:"),
    (["periods.start='2015'", "periods.end='2017'"], "periods.start:"),
    (["training.lr=0.01"], "training.lr:"),
    (["training.task_overrides={lm: {steps: 3}}"], "training.task_overrides.lm"),
    (["evaluation.max_examples=8"], "evaluation.max_examples:"),
    (["corpus.caps.train=10"], "corpus.caps.train:"),
])
def test_an_incompatible_extension_is_refused_naming_the_field(finished: VectorStore, tmp_path: Path,
                                                               overrides: list[str], field: str) -> None:
    config = _config(tmp_path / "store", "periods.end='2016'", *overrides)
    with pytest.raises(ConfigError) as caught:
        find_extension(config, finished)
    assert str(caught.value).startswith(field), str(caught.value)
    assert str(finished.url) in str(caught.value)


def test_the_old_ranges_results_are_kept_apart_byte_for_byte(finished: VectorStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    frame = pd.DataFrame({"x": [1, 2]})
    for name in (results.INTERPOLATION_TABLE, results.SOUPS_TABLE, results.FORECAST_TABLE, results.ANALOGY_BEST_TABLE):
        finished.write_table(name, frame)
    finished.write_bytes("reports/index.html", b"<html>2014-2015</html>")
    # rows appended since the last compaction are part files: a reused table keeps its own, a moved one takes them along
    finished.append_table(results.CELLS_TABLE, finished.read_table(results.CELLS_TABLE).iloc[:1])
    finished.append_table(results.SOUPS_TABLE, frame.iloc[:1])
    cells_part, soups_part = (p for p in finished.list_paths("results") if ".parts/" in p)
    assert cells_part.startswith("results/cells.parts/") and soups_part.startswith("results/soups.parts/")
    before = {rel: finished.read_bytes(rel) for rel in finished.list_paths("results") + finished.list_paths("reports")}
    extension = find_extension(_config(root, "periods.end='2016'"), finished)
    moved = keep_apart(finished, extension)
    assert sorted(moved) == sorted(set(before) - {"results/cells.parquet", cells_part, "results/analogy_best.parquet"})
    assert finished.list_paths("results") == ["results/analogy_best.parquet", "results/cells.parquet", cells_part]
    assert finished.list_paths("reports") == []
    for rel in moved:
        assert finished.read_bytes(f"previous/year-2014-2015/{rel}") == before[rel]
    # a re-run (killed half-way) never overwrites the archive
    finished.write_table(results.INTERPOLATION_TABLE, pd.DataFrame({"x": [3]}))
    keep_apart(finished, extension)
    assert finished.read_bytes("previous/year-2014-2015/results/interpolation.parquet") == before["results/interpolation.parquet"]
    assert not finished.has_table(results.INTERPOLATION_TABLE)
