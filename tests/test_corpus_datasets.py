"""Hugging Face datasets as corpus sources: a save_to_disk directory (Dataset and DatasetDict), a local
script-free dataset repository (Parquet files + card, what load_dataset(path) reads), the dataset's
own splits through corpus.split_column, and one error naming the source when no form fits.
(hf://datasets/... URLs need the network: documented, not tested here.)"""

from __future__ import annotations

from pathlib import Path

import datasets
import pandas as pd
import pytest

from timevec.config import CorpusConfig
from timevec.data.corpus import CorpusError, load_corpus


def _frame(years=(2014, 2015), per_year=30) -> pd.DataFrame:
    return pd.DataFrame([{"published": f"{y}-{(i % 12) + 1:02d}-10", "body": f"story {y} {i}", "topic": "ab"[i % 2]}
                         for y in years for i in range(per_year)])


def _cfg(source: Path | str, **extra) -> CorpusConfig:
    return CorpusConfig(source=str(source), text_column="body", date_column="published", label_column="topic", **extra)


def test_save_to_disk_dataset_and_dataset_dict_read_like_files(tmp_path: Path) -> None:
    frame = _frame()
    datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(tmp_path / "one"))
    from_disk = load_corpus(_cfg(tmp_path / "one"))
    frame.to_json(tmp_path / "same.jsonl", orient="records", lines=True)
    from_file = load_corpus(_cfg(tmp_path / "same.jsonl"))
    columns = ["key", "date", "text", "label", "split"]
    pd.testing.assert_frame_equal(from_disk.records[columns], from_file.records[columns])  # same rows, same hash split

    train, test = frame.iloc[:40], frame.iloc[40:]
    datasets.DatasetDict({"train": datasets.Dataset.from_pandas(train, preserve_index=False),
                          "test": datasets.Dataset.from_pandas(test, preserve_index=False)}).save_to_disk(str(tmp_path / "dict"))
    own = load_corpus(_cfg(tmp_path / "dict", split_column="split"))
    assert own.records.groupby("split").size().to_dict() == {"train": 40, "test": 20}
    assert set(own.records.loc[own.records["split"] == "test", "text"]) == set(test["body"])
    hashed = load_corpus(_cfg(tmp_path / "dict"))  # without split_column: the hash split, as for files
    assert set(hashed.records["split"]) == {"train", "validation", "test"}


def test_local_dataset_repository_with_its_own_splits(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    frame = _frame()
    frame.iloc[:45].to_parquet(repo / "data" / "train-00000-of-00001.parquet")
    frame.iloc[45:].to_parquet(repo / "data" / "validation-00000-of-00001.parquet")
    (repo / "README.md").write_text("---\nlicense: cc0-1.0\n---\n# dated stories\n")
    corpus = load_corpus(_cfg(repo, split_column="split"))
    assert corpus.records.groupby("split").size().to_dict() == {"train": 45, "validation": 15}
    assert corpus.periods("year") == ["2014", "2015"]


def test_no_form_fits_one_error_naming_the_source(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"corpus.source '.*nowhere'.*save_to_disk.*hf://datasets"):
        load_corpus(_cfg(tmp_path / "nowhere"))
    frame = _frame()
    frame.assign(part="holdout").to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    with pytest.raises(CorpusError, match="split column 'part' holds 'holdout'"):
        load_corpus(_cfg(tmp_path / "c.jsonl", split_column="part"))
