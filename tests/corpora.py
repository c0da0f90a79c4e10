"""Small dated corpora the tests build themselves (no test reads ``../shared``).

``write_commits`` writes a commit-log-like JSONL file — ``date, text, subject, body, component`` —
with the columns of a real repository's history: a subject line, a body that explains it (the
summarisation pair body → subject), and the component touched (the classification label, which
drifts: ``actioncable`` appears only from 2016 on). Deterministic for a seed; about 1 ms a row.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

# label -> how commits name it in prose (the labels themselves never appear in the text, so a
# subword tokenizer trained on the text splits them into several pieces)
COMPONENTS = {
    "activerecord": "Active Record",
    "actionpack": "Action Pack",
    "activesupport": "Active Support",
    "railties": "the generators",
    "actioncable": "Action Cable",
}
NEW_IN = {"actioncable": 2016}
VERBS = ["Fix", "Add", "Remove", "Deprecate", "Document", "Speed up", "Refactor", "Test"]
THINGS = ["migration timeout", "query cache", "routing helper", "time zone parsing", "cookie jar",
          "connection pool", "schema dumper", "callback order", "json encoder", "asset path",
          "channel subscription", "broadcast logger", "session store", "enum scopes", "inflector rules"]
WHY = ["it raised on nil", "the default was wrong", "it leaked memory under load", "users asked for it",
       "the old behaviour surprised people", "it was slow on large tables", "tests were flaky"]
TOPICS = {2012: "rack", 2013: "turbolinks", 2014: "spring", 2015: "web console", 2016: "api mode",
          2017: "webpacker", 2018: "credentials", 2019: "zeitwerk", 2020: "hotwire"}


def commit_rows(start: int = 2012, end: int = 2020, per_month: int = 12, seed: int = 0) -> list[dict[str, str]]:
    """``per_month`` commits in every month of the years ``start``..``end``."""
    rng = random.Random(seed)
    rows = []
    for year in range(start, end + 1):
        labels = [c for c in COMPONENTS if NEW_IN.get(c, 0) <= year]
        for month in range(1, 13):
            for i in range(per_month):
                label = labels[rng.randrange(len(labels))]
                thing = rng.choice(THINGS)
                subject = f"{rng.choice(VERBS)} {thing} in {COMPONENTS[label]}"
                body = (f"The {thing} in {COMPONENTS[label]} needed this because {rng.choice(WHY)}. "
                        f"Seen with {TOPICS.get(year, 'rails')} in {year}.")
                rows.append({"date": f"{year}-{month:02d}-{1 + (i * 7) % 28:02d}", "text": f"{subject}\n\n{body}",
                             "subject": subject, "body": body, "component": label})
    return rows


def write_commits(path: Path, **kwargs) -> Path:
    """:func:`commit_rows` as a gzipped JSONL file at ``path`` (its name should end in ``.jsonl.gz``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in commit_rows(**kwargs))
    return path
