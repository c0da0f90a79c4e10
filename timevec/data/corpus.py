"""Dated corpora: records from any fsspec URL, bucketed by period, split deterministically.

Every corpus becomes one canonical table (``key, date, text, label, summary_source,
summary_target``) whatever its file format, so the rest of the system never sees a source's
column names. Splits are decided by a hash of a stable row key, not by random order, so that a
record lands in the same split on every machine, every run, and after the corpus grows.
Rows whose date is missing or unparseable are counted and reported (or rejected when the config
says so) — never silently dropped.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import fsspec
import pandas as pd

from timevec.config import CorpusConfig
from timevec.errors import TimevecError
from timevec.periods import Granularity, Period

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
CANONICAL = ["key", "date", "text", "label", "summary_source", "summary_target"]


class CorpusError(TimevecError, ValueError):
    """A corpus that cannot be used; the message names the file, column or period."""

    exit_status = 2


@dataclass
class Corpus:
    """A dated corpus: canonical records with their split, and the rows that had no usable date."""

    source: str
    records: pd.DataFrame
    bad_rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["row", "date", "reason"]))

    def periods(self, granularity: Granularity) -> list[str]:
        """The periods present in the corpus, in time order."""
        return sorted(self.records[granularity].unique(), key=Period.parse)

    def rows(self, period: str, split: Split | None = None) -> pd.DataFrame:
        """The records of one period (of any granularity), optionally one split of it."""
        parsed = Period.parse(period)
        frame = self.records[self.records[parsed.granularity] == str(parsed)]
        if split is not None:
            frame = frame[frame["split"] == split]
        return frame

    def dataset(self, period: str, split: Split) -> datasets.Dataset:
        """One split of one period as a Hugging Face ``datasets.Dataset`` (Arrow-backed)."""
        from timevec.data.hf_source import _datasets

        datasets = _datasets()
        frame = self.rows(period, split)[CANONICAL].reset_index(drop=True)
        frame = frame.assign(date=frame["date"].dt.strftime("%Y-%m-%d"))
        return datasets.Dataset.from_pandas(frame, preserve_index=False)

    def texts(self, period: str, split: Split) -> list[str]:
        return self.rows(period, split)["text"].tolist()

    def counts(self, granularity: Granularity, periods: list[str] | None = None) -> pd.DataFrame:
        """Rows per period and split (periods asked for but absent appear with zeros)."""
        table = (
            self.records.groupby([granularity, "split"]).size().unstack(fill_value=0).reindex(columns=list(SPLITS), fill_value=0)
        )
        wanted = periods if periods is not None else self.periods(granularity)
        table = table.reindex(wanted, fill_value=0)
        table.index.name = "period"
        table["total"] = table[list(SPLITS)].sum(axis=1)
        out = table.reset_index()
        out.insert(1, "granularity", granularity)
        return out

    def usable_rows(self, task: str, period: str, split: Split) -> int:
        """How many rows of one split of one period ``task`` can use: lm every row (its text is non-empty),
        classification the labelled ones, summarization those with both summary columns non-empty (what
        :func:`timevec.data.examples.task_examples` keeps)."""
        rows = self.rows(period, split)
        if task == "classification":
            return int(rows["label"].notna().sum())
        if task == "summarization":
            filled = (rows["summary_source"].fillna("").astype(str).str.strip() != "") & (
                rows["summary_target"].fillna("").astype(str).str.strip() != "")
            return int(filled.sum())
        return len(rows)

    def check_periods(self, periods: list[str], min_rows: int = 1) -> None:
        """Fail, naming them, if any wanted period has too few rows in train or test."""
        problems = []
        for period in periods:
            for split in ("train", "test"):
                n = len(self.rows(period, split))
                if n < min_rows:
                    problems.append(f"{period} has {n} {split} rows (need >= {min_rows})")
        if problems:
            raise CorpusError(f"{self.source}: empty or too small periods: " + "; ".join(problems))


def _read_frame(url: str, fmt: str, storage_options: dict) -> pd.DataFrame:
    if fmt == "auto":
        name = url.lower().removesuffix(".gz").removesuffix(".bz2").removesuffix(".zst")
        if name.endswith(".parquet"):
            fmt = "parquet"
        elif name.endswith((".jsonl", ".json", ".ndjson")):
            fmt = "jsonl"
        elif name.endswith((".csv", ".tsv")):
            fmt = "csv"
        else:
            from timevec.data.hf_source import FORMS

            raise CorpusError(f"corpus.source {url!r}: cannot tell the format from the name (set corpus.format); "
                              "a source is one of: " + "; ".join(FORMS))
    files = fsspec.open_files(url, "rb", compression="infer", **storage_options)
    if not files:
        raise CorpusError(f"{url}: corpus file not found (no file matches)")
    frames = []
    for opened in files:
        name = opened.full_name if hasattr(opened, "full_name") else url
        try:
            with opened as handle:
                if fmt == "parquet":
                    frames.append(pd.read_parquet(handle))
                elif fmt == "jsonl":
                    frames.append(pd.read_json(handle, lines=True, dtype=False, encoding="utf-8"))
                else:
                    sep = "\t" if url.lower().removesuffix(".gz").endswith(".tsv") else ","
                    frames.append(pd.read_csv(handle, dtype=str, keep_default_na=False, encoding="utf-8", sep=sep))
        except FileNotFoundError:
            raise CorpusError(f"{name}: corpus file not found") from None
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{name}: not valid UTF-8 at byte {exc.start}: {exc.reason}") from None
        except (ValueError, OSError) as exc:
            raise CorpusError(f"{name}: cannot read as {fmt}: {exc}") from None
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _stable_key(frame: pd.DataFrame, key_column: str | None) -> pd.Series:
    if key_column:
        return frame[key_column].astype(str)
    return frame["date"].astype(str) + "\x1f" + frame["text"].astype(str)


def _split_of(key: str, validation: float, test: float) -> Split:
    u = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test:
        return "test"
    if u < test + validation:
        return "validation"
    return "train"


#: a source's own split names (corpus.split_column) -> timevec's splits
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation", "dev": "validation",
               "val": "validation", "test": "test", "testing": "test"}


def _own_splits(values: pd.Series, origin: str, column: str) -> list[Split]:
    """The source's own split per row (corpus.split_column), mapped to train/validation/test."""
    names = values.astype(str).str.strip().str.lower()
    unknown = sorted(set(names) - set(SPLIT_NAMES))
    if unknown:
        raise CorpusError(f"{origin}: split column {column!r} holds {', '.join(map(repr, unknown[:5]))}, not one of "
                          f"{', '.join(sorted(SPLIT_NAMES))}")
    return [SPLIT_NAMES[n] for n in names]  # type: ignore[misc]  # SPLIT_NAMES maps onto the Split literals


def _rank(key: str) -> str:
    return hashlib.sha1(("cap:" + key).encode("utf-8")).hexdigest()


def canonicalize(raw: pd.DataFrame, cfg: CorpusConfig, origin: str) -> Corpus:
    """Map a source's columns to the canonical schema, parse dates, split and cap."""
    wanted = {
        "text": cfg.text_column,
        "date": cfg.date_column,
        "label": cfg.label_column,
        "summary_source": cfg.summary_source_column,
        "summary_target": cfg.summary_target_column,
        "key": cfg.key_column,
    }
    missing = [f"{role} column {col!r}" for role, col in wanted.items() if col and col not in raw.columns]
    if cfg.split_column and cfg.split_column not in raw.columns:
        missing.append(f"split column {cfg.split_column!r}")
    if missing:
        raise CorpusError(f"{origin}: missing {', '.join(missing)} (columns present: {list(raw.columns)})")
    frame = pd.DataFrame({"row": range(len(raw))})
    for role, col in wanted.items():
        frame[role] = raw[col].to_numpy() if col else None
    frame["text"] = frame["text"].fillna("").astype(str)
    parsed = pd.to_datetime(frame["date"], errors="coerce", utc=True, format="mixed")
    bad = parsed.isna()
    bad_rows = pd.DataFrame(
        {
            "row": frame.loc[bad, "row"],
            "date": frame.loc[bad, "date"].astype(str),
            "reason": ["missing date" if pd.isna(v) or str(v).strip() == "" else "unparseable date" for v in frame.loc[bad, "date"]],
        }
    ).reset_index(drop=True)
    if len(bad_rows):
        examples = ", ".join(f"row {r.row}: {r.date!r}" for r in bad_rows.head(3).itertuples())
        message = f"{origin}: {len(bad_rows)} of {len(frame)} rows have a missing or unparseable date ({examples})"
        if cfg.bad_dates == "reject":
            raise CorpusError(message + "; set corpus.bad_dates: report to skip them")
        log.warning("%s; they are left out and listed in the corpus report", message)
    frame = frame.loc[~bad].copy()
    frame["date"] = parsed[~bad].dt.tz_convert(None).dt.normalize()
    empty = frame["text"].str.strip() == ""
    if empty.any():
        log.warning("%s: %d rows with empty text are left out", origin, int(empty.sum()))
        bad_rows = pd.concat(
            [bad_rows, pd.DataFrame({"row": frame.loc[empty, "row"], "date": frame.loc[empty, "date"].astype(str),
                                     "reason": "empty text"})],
            ignore_index=True,
        )
        frame = frame.loc[~empty]
    if cfg.label_column:
        frame["label"] = frame["label"].astype(str)
    frame["key"] = _stable_key(frame, cfg.key_column)
    duplicated = frame["key"].duplicated()
    if duplicated.any():
        log.info("%s: %d duplicate rows (same key) kept once", origin, int(duplicated.sum()))
        frame = frame.loc[~duplicated]
    frame["year"] = frame["date"].dt.strftime("%Y")
    frame["month"] = frame["date"].dt.strftime("%Y-%m")
    _finer_periods(frame)
    if cfg.split_column:
        frame["split"] = _own_splits(pd.Series(raw[cfg.split_column].to_numpy()[frame["row"].to_numpy()]), origin,
                                     cfg.split_column)
    else:
        frame["split"] = [_split_of(k, cfg.split.validation, cfg.split.test) for k in frame["key"]]
    frame = _apply_caps(frame, cfg)
    frame = frame.sort_values(["date", "key"]).reset_index(drop=True)
    return Corpus(source=origin, records=frame, bad_rows=bad_rows)


def _finer_periods(frame: pd.DataFrame) -> None:
    """The quarter, ISO week and day columns of each dated row, spelt as :class:`~timevec.periods.Period` spells them.

    A row goes to the period that contains its date; for weeks that is its ISO week, whose year is the ISO
    year (2016-01-01 is in ``2015-W53``). Vectorised, not :meth:`Period.of_date` per row, for corpora of
    millions of rows; ``tests/test_corpus.py`` checks the two agree.
    """
    dates = frame["date"].dt
    frame["quarter"] = dates.strftime("%Y") + "-Q" + dates.quarter.astype(str)
    iso = dates.isocalendar()
    frame["week"] = iso["year"].astype(int).map("{:04d}".format) + "-W" + iso["week"].astype(int).map("{:02d}".format)
    frame["day"] = dates.strftime("%Y-%m-%d")


def _apply_caps(frame: pd.DataFrame, cfg: CorpusConfig) -> pd.DataFrame:
    """Keep at most N rows per (month, split), chosen by a hash rank: deterministic and unbiased.

    Caps are per month so that a year keeps an even spread over its months; the configured cap is
    per year, divided over the months present.
    """
    caps = cfg.caps.model_dump()
    if not any(caps.values()):
        return frame
    frame = frame.assign(_rank=[_rank(k) for k in frame["key"]]).sort_values("_rank")
    kept = []
    for (_year, split), group in frame.groupby(["year", "split"], sort=False):
        cap = caps.get(split)
        if cap is None or len(group) <= cap:
            kept.append(group)
            continue
        months = group["month"].nunique()
        per_month = max(cap // months, 1)
        kept.append(group.groupby("month", sort=False).head(per_month))
    return pd.concat(kept).drop(columns="_rank")


def load_corpus(cfg: CorpusConfig) -> Corpus:
    """Read the configured corpus (the embedded demo tweets, a file URL or glob such as
    ``s3://bucket/news/*.parquet``, whose files are concatenated, or a Hugging Face dataset:
    :mod:`timevec.data.hf_source`) into a :class:`Corpus`."""
    if cfg.source.startswith("demo:"):
        from timevec.demo.tweets import load_tweets

        name = cfg.source.removeprefix("demo:")
        if name != "trump_tweets":
            raise CorpusError(f"corpus.source {cfg.source!r}: the only embedded corpus is 'demo:trump_tweets'")
        raw = load_tweets()
    else:
        from timevec.data.hf_source import is_dataset_source, read_dataset

        if cfg.format == "auto" and is_dataset_source(cfg.source, cfg.storage_options):
            raw = read_dataset(cfg.source, cfg.storage_options)
        else:
            raw = _read_frame(cfg.source, cfg.format, cfg.storage_options)
    try:
        corpus = canonicalize(raw, cfg, cfg.source)
    except UnicodeDecodeError as exc:  # bytes columns (e.g. Parquet binary) decoded while mapping columns
        raise CorpusError(f"{cfg.source}: a text column is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    log.info("corpus %s: %d rows, %d without a usable date", cfg.source, len(corpus.records), len(corpus.bad_rows))
    return corpus
