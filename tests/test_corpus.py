import gzip
import json

import pandas as pd
import pytest

from tests.corpora import write_commits
from timevec.config import CorpusConfig
from timevec.data.corpus import CorpusError, load_corpus


def jsonl(tmp_path, rows, name="c.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows_for(years, per_year=40):
    return [
        {"date": f"{y}-{(i % 12) + 1:02d}-15", "text": f"text {y} number {i}", "label": "ab"[i % 2]}
        for y in years
        for i in range(per_year)
    ]


def test_bucketing_by_year_and_month_and_counts(tmp_path):
    path = jsonl(tmp_path, rows_for([2014, 2015]))
    corpus = load_corpus(CorpusConfig(source=str(path), label_column="label"))
    assert corpus.periods("year") == ["2014", "2015"]
    assert corpus.periods("month")[:2] == ["2014-01", "2014-02"] and len(corpus.periods("month")) == 24
    counts = corpus.counts("year", ["2013", "2014", "2015"])
    assert counts.set_index("period").loc["2013", "total"] == 0
    assert counts.set_index("period").loc["2014", "total"] == 40
    assert set(counts.columns) >= {"period", "granularity", "train", "validation", "test", "total"}
    splits = ("train", "validation", "test")
    assert len(corpus.rows("2014-03")) == sum(len(corpus.rows("2014-03", split)) for split in splits)
    ds = corpus.dataset("2014", "train")
    assert set(ds.column_names) >= {"key", "date", "text", "label"}


def test_split_is_a_deterministic_function_of_the_key(tmp_path):
    rows = rows_for([2014], 200)
    a = load_corpus(CorpusConfig(source=str(jsonl(tmp_path, rows, "a.jsonl"))))
    # shuffled order and extra rows from another year must not move any existing row
    b = load_corpus(CorpusConfig(source=str(jsonl(tmp_path, rows[::-1] + rows_for([2015], 50), "b.jsonl"))))
    sa = a.records.set_index("key")["split"]
    sb = b.records.set_index("key")["split"]
    assert (sa == sb.loc[sa.index]).all()
    fractions = sa.value_counts(normalize=True)
    assert 0.03 < fractions["test"] < 0.2 and 0.03 < fractions["validation"] < 0.2


def test_bad_dates_are_reported_not_dropped_silently(tmp_path, caplog):
    rows = rows_for([2014], 20) + [{"date": "not a date", "text": "x"}, {"date": None, "text": "y"}]
    corpus = load_corpus(CorpusConfig(source=str(jsonl(tmp_path, rows))))
    assert len(corpus.records) == 20
    assert sorted(corpus.bad_rows["reason"]) == ["missing date", "unparseable date"]
    assert list(corpus.bad_rows["row"]) == [20, 21]
    assert "2 of 22 rows have a missing or unparseable date" in caplog.text
    with pytest.raises(CorpusError, match=r"row 20: 'not a date'"):
        load_corpus(CorpusConfig(source=str(jsonl(tmp_path, rows)), bad_dates="reject"))


def test_missing_column_is_named(tmp_path):
    path = jsonl(tmp_path, rows_for([2014], 5))
    with pytest.raises(CorpusError) as err:
        load_corpus(CorpusConfig(source=str(path), label_column="component"))
    assert "label column 'component'" in str(err.value) and str(path) in str(err.value)


def test_empty_period_is_named(tmp_path):
    corpus = load_corpus(CorpusConfig(source=str(jsonl(tmp_path, rows_for([2014, 2016])))))
    with pytest.raises(CorpusError, match="2015 has 0 train rows"):
        corpus.check_periods(["2014", "2015", "2016"])


def test_formats_csv_parquet_gzip_and_non_utf8(tmp_path):
    frame = pd.DataFrame(rows_for([2014], 10))
    frame.to_csv(tmp_path / "c.csv", index=False)
    frame.to_parquet(tmp_path / "c.parquet")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as handle:
        frame.to_json(handle, orient="records", lines=True)
    for name in ("c.csv", "c.parquet", "c.jsonl.gz"):
        corpus = load_corpus(CorpusConfig(source=str(tmp_path / name), label_column="label"))
        assert len(corpus.records) == 10, name
    frame.iloc[:4].to_parquet(tmp_path / "part-a.parquet")
    frame.iloc[4:].to_parquet(tmp_path / "part-b.parquet")
    assert len(load_corpus(CorpusConfig(source=str(tmp_path / "part-*.parquet"))).records) == 10
    (tmp_path / "bad.csv").write_bytes(b"date,text\n2014-01-01,caf\xe9 \xff\n")
    with pytest.raises(CorpusError, match="UTF-8"):
        load_corpus(CorpusConfig(source=str(tmp_path / "bad.csv")))
    with pytest.raises(CorpusError, match="not found"):
        load_corpus(CorpusConfig(source=str(tmp_path / "nope.jsonl")))
    with pytest.raises(CorpusError, match="format"):
        load_corpus(CorpusConfig(source=str(tmp_path / "c.txt")))


def test_caps_keep_an_even_spread(tmp_path):
    corpus = load_corpus(CorpusConfig(source=str(jsonl(tmp_path, rows_for([2014], 600))), caps={"train": 120}))
    train = corpus.rows("2014", "train")
    assert len(train) == 120
    assert train["month"].value_counts().min() == 10


def test_demo_tweets_by_year_and_month():
    corpus = load_corpus(CorpusConfig(source="demo:trump_tweets", label_column="source", key_column="key"))
    years = corpus.periods("year")
    assert {"2012", "2013", "2014", "2015", "2016", "2017"} <= set(years)
    assert not corpus.records["text"].str.startswith("RT @").any()
    assert set(corpus.records["label"]) == {"Web Client", "Android", "iPhone", "other"}
    counts = corpus.counts("month", [f"2016-{m:02d}" for m in range(1, 13)])
    assert (counts["total"] > 50).all()


def test_commit_log_by_month(tmp_path):
    """A gzipped JSONL commit log (tests/corpora.py): 9 years of months, a label that appears in 2016."""
    path = write_commits(tmp_path / "commits.jsonl.gz", start=2012, end=2020, per_month=4)
    cfg = CorpusConfig(source=str(path), label_column="component", summary_source_column="body", summary_target_column="subject")
    corpus = load_corpus(cfg)
    assert len(corpus.periods("month")) == 108
    assert corpus.periods("year")[0] == "2012" and corpus.periods("year")[-1] == "2020"
    assert "actioncable" in set(corpus.rows("2016")["label"]) and "actioncable" not in set(corpus.rows("2015")["label"])


def test_split_by_quarter_iso_week_and_day(tmp_path):
    """A dated row goes to the period that contains its date: weeks by ISO week, whose year is the ISO year."""
    import datetime as dt

    from timevec.periods import Period

    start = dt.date(2015, 12, 24)
    rows = [{"date": (start + dt.timedelta(days=d)).isoformat(), "text": f"day {d} text {i}"}
            for d in range(18) for i in range(d % 3 + 1)]  # 2015-12-24 .. 2016-01-10, 1–3 rows a day
    rows += [{"date": "2016-02-29T23:59:00", "text": "a leap day"}, {"date": "2016-03-31", "text": "end of Q1"},
             {"date": "2016-04-01", "text": "start of Q2"}]
    corpus = load_corpus(CorpusConfig(source=str(jsonl(tmp_path, rows))))
    records = corpus.records
    assert corpus.periods("week") == ["2015-W52", "2015-W53", "2016-W01", "2016-W09", "2016-W13"]
    assert corpus.periods("quarter") == ["2015-Q4", "2016-Q1", "2016-Q2"]
    assert corpus.periods("day")[:2] == ["2015-12-24", "2015-12-25"] and "2016-02-29" in corpus.periods("day")
    for granularity in ("year", "quarter", "month", "week", "day"):  # the vectorised columns agree with Period.of_date
        expected = [str(Period.of_date(d, granularity)) for d in records["date"]]
        assert records[granularity].tolist() == expected, granularity
    # 2015-W53 is Monday 2015-12-28 .. Sunday 2016-01-03: its rows cross the calendar year
    week53 = corpus.rows("2015-W53")
    assert sorted(set(week53["date"].dt.strftime("%Y-%m-%d"))) == [f"2015-12-{d}" for d in range(28, 32)] + [
        f"2016-01-0{d}" for d in range(1, 4)]
    assert len(week53) == sum(d % 3 + 1 for d in range(4, 11))
    assert set(corpus.rows("2015")["day"]) == {f"2015-12-{d}" for d in range(24, 32)}  # the calendar year, not the ISO one
    assert corpus.rows("2016-02-29")["text"].tolist() == ["a leap day"]
    assert corpus.rows("2016-Q1")["text"].str.contains("end of Q1").any()
    assert corpus.rows("2016-Q2")["text"].tolist() == ["start of Q2"]
    counts = corpus.counts("week", ["2015-W52", "2015-W53", "2016-W02"]).set_index("period")
    assert counts.loc["2015-W53", "total"] == len(week53) and counts.loc["2016-W02", "total"] == 0
    assert (counts["granularity"] == "week").all()

