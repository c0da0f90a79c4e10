"""Hugging Face ``datasets`` as corpus sources: a ``save_to_disk`` directory, a script-free dataset
repository (data files + card, what ``load_dataset(path)`` reads), or ``hf://datasets/<owner>/<name>``.

Each becomes one pandas frame for :func:`timevec.data.corpus.canonicalize`, with every split of a
``DatasetDict`` concatenated and its name in the column ``split`` (unless the data has one), so
``corpus.split_column: split`` takes the dataset's own splits instead of the hash split. Which form a
source is, is decided by what is there, in this order: a ``dataset_dict.json``/``state.json``
(save_to_disk), a ``hf://datasets/`` URL (the Hub, through ``datasets``' own resolution, which reads
with huggingface_hub's fsspec filesystem), a local directory (``load_dataset`` on it). A source that
is none of them is one :class:`~timevec.data.corpus.CorpusError` naming it and the forms tried.
``datasets`` is imported only here, only when such a source is used.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import fsspec
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["HUB_PREFIX", "is_dataset_source", "read_dataset"]

HUB_PREFIX = "hf://datasets/"
#: the forms a source can take, for the error that says none fits
FORMS = ("a Parquet/JSONL/CSV file or glob", "a datasets save_to_disk directory (dataset_dict.json or state.json)",
         "a local dataset repository load_dataset(path) reads (data files with a card)", "hf://datasets/<owner>/<name>")


def _is_dir(url: str, storage_options: dict[str, Any]) -> bool:
    if "://" not in url:
        return os.path.isdir(url)
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return fs.isdir(path)


def _saved_to_disk(url: str, storage_options: dict[str, Any]) -> bool:
    if "://" not in url:
        return any(os.path.isfile(os.path.join(url, name)) for name in ("dataset_dict.json", "state.json"))
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return any(fs.exists(f"{path.rstrip('/')}/{name}") for name in ("dataset_dict.json", "state.json"))


def is_dataset_source(url: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` names a ``datasets`` source rather than data files (a directory, or the Hub's root of a repo)."""
    if url.startswith(HUB_PREFIX):
        return not url.lower().endswith((".parquet", ".jsonl", ".json", ".csv", ".tsv", ".gz", ".ndjson"))
    try:
        return _is_dir(url, storage_options or {})
    except (OSError, ValueError):
        return False


def _datasets():
    from timevec.errors import require_extra

    return require_extra("datasets", "datasets", "a Hugging Face dataset as corpus.source")


def _frame(data: Any) -> pd.DataFrame:
    """A Dataset or DatasetDict as one frame; a dict's split names in ``split`` (unless a column has that name)."""
    if hasattr(data, "to_pandas"):
        return data.to_pandas()
    frames = []
    for name, part in data.items():
        frame = part.to_pandas()
        if "split" not in frame.columns:
            frame["split"] = name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_dataset(url: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """The dataset at ``url`` (see the module doc for the forms) as one frame."""
    from timevec.data.corpus import CorpusError

    storage_options = storage_options or {}
    datasets = _datasets()
    tried = []
    try:
        if not url.startswith(HUB_PREFIX) and _saved_to_disk(url, storage_options):
            log.info("corpus %s: a datasets save_to_disk directory", url)
            return _frame(datasets.load_from_disk(url, storage_options=storage_options or None))
        tried.append("no dataset_dict.json/state.json (not save_to_disk)")
        if url.startswith(HUB_PREFIX):  # hf://datasets/<owner>/<name>[@revision]: untested here (no network)
            repo, _, revision = url.removeprefix(HUB_PREFIX).strip("/").partition("@")
            log.info("corpus %s: the Hub's dataset %s", url, repo)
            return _frame(datasets.load_dataset(repo, revision=revision or None))
        log.info("corpus %s: a dataset repository (load_dataset)", url)
        return _frame(datasets.load_dataset(url))
    except (FileNotFoundError, ValueError) as exc:  # datasets' DatasetNotFoundError/EmptyDatasetError are FileNotFoundErrors
        tried.append(f"load_dataset: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise CorpusError(f"corpus.source {url!r}: none of the forms fits ({'; '.join(tried)}); a source is one of: " + "; ".join(FORMS))
