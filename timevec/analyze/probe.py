"""Linear time probes: does a model's hidden state say WHEN a text was written, and does τ_t move that?

The paper asks where time lives from the weights' side; Gurnee & Tegmark (2023, "Language Models
Represent Space and Time") ask it from the activations' side: a ridge regression from one layer's
hidden state to the text's date. This module is that probe, for θ_pre and for every tuned model
θ_pre + τ_t of the store (ARCHITECTURE §1):

- **texts**: ``probe.texts_per_period`` texts of every period, drawn (seeded) from its validation and
  test splits — never a vector's own training text — each dated as a fractional year
  (:func:`timevec.periods.fractional_year`); a seeded split by text, stratified by period, holds
  ``probe.test_fraction`` of them out of every fit, so every period is in the fit and in the test;
- **features**: every layer's hidden state (``output_hidden_states``; the encoder's for T5), pooled
  two ways over the attention mask — the last real token and the mean (:func:`pool`);
- **probe**: scikit-learn ``Pipeline(StandardScaler, RidgeCV(alphas))`` (:func:`fit_probe`), scored on
  the held-out texts by R² and Spearman's ρ.

Two probes per tuned model, because they answer two questions:

- ``probe="own"``: refitted on the tuned model's own features — is time still (or more) linearly
  decodable after fine-tuning on period t? (R² per layer, base vs tuned);
- ``probe="base"``: θ_pre's probe applied unchanged to the tuned model's features — a fixed read-out
  of "date", so a change in its predictions is a change in the representation. ``shift_toward``:
  the mean over held-out texts NOT of period t of (ŷ_tuned − ŷ_base)·sign(mid(t) − date), in years;
  positive = fine-tuning on t pulls the predicted dates toward t. A uniform drift (every date
  predicted later) also "pulls toward" late periods, so ``shift_toward_other`` is the same quantity
  toward every other configured period, averaged: the pull is specific to t only where
  ``shift_toward`` exceeds it. (A refitted probe cannot show a pull: it is fitted to the true dates.)

One row per (model, layer, pooling, probe) in the ``probe`` table (:data:`timevec.results.PROBE_COLUMNS`).
Ray-free: the models are patched in place in this process (:class:`~timevec.weights.vectors.WeightPatcher`),
one at a time, so memory holds θ_pre, one τ and two models' pooled features.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy import stats

try:
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import StandardScaler
except ImportError:  # the `probe` extra
    from timevec.errors import MissingExtra

    raise MissingExtra("the time probes (timevec probe) need scikit-learn: pip install 'timevec[probe]'") from None

from timevec.config import ConfigError, ExperimentConfig
from timevec.data.corpus import Corpus, CorpusError, load_corpus
from timevec.data.min_examples import apply_min_examples
from timevec.data.models import Example, collate, is_encoder_decoder
from timevec.periods import GRANULARITIES, Period, fractional_year, period_midpoint

log = logging.getLogger(__name__)

__all__ = ["ProbeTexts", "draw_texts", "fit_probe", "hidden_features", "pool", "probe_model_rows", "probe_scores",
           "run_probe", "summary"]

POOLINGS = ("last", "mean")


# ----------------------------------------------------------------------------- texts


@dataclass
class ProbeTexts:
    """The probe's texts: their dates (fractional years), periods, and which ones the fits see."""

    texts: list[str]
    years: np.ndarray  # fractional year of each text
    year_period: list[str]  # "YYYY" of each text
    month_period: list[str]  # "YYYY-MM" of each text
    train: np.ndarray  # bool: in the probes' fit; the rest is the held-out test
    finer_period: dict[str, list[str]] = field(default_factory=dict)  # quarter, week, day -> the period of each text

    def period_of(self, granularity: str) -> np.ndarray:
        if granularity == "year":
            return np.asarray(self.year_period)
        return np.asarray(self.month_period if granularity == "month" else self.finer_period[granularity])


def draw_texts(corpus: Corpus, periods: Sequence[str], per_period: int, test_fraction: float, seed: int) -> ProbeTexts:
    """``per_period`` texts of every period from its validation + test splits, and the held-out split.

    Seeded: the same config draws the same texts and the same split on every machine. A period with
    fewer than 2 such texts is a :class:`CorpusError` naming it (the split needs one each side).
    """
    rng = np.random.default_rng(seed)
    frames = []
    for period in periods:
        rows = corpus.rows(period)
        rows = rows[rows["split"].isin(["validation", "test"])]
        if len(rows) < 2:
            raise CorpusError(f"{corpus.source}: period {period} has {len(rows)} validation+test texts; the probe needs >= 2")
        if len(rows) < per_period:
            log.warning("probe: period %s has only %d validation+test texts (probe.texts_per_period %d)", period, len(rows), per_period)
        chosen = np.sort(rng.permutation(len(rows))[:per_period])
        frames.append(rows.iloc[chosen].assign(_period=period))
    frame = pd.concat(frames, ignore_index=True)
    index = np.arange(len(frame))
    _, held_out = train_test_split(index, test_size=test_fraction, random_state=seed, stratify=frame["_period"])
    train = np.ones(len(frame), dtype=bool)
    train[held_out] = False
    return ProbeTexts(
        texts=frame["text"].astype(str).tolist(),
        years=np.array([fractional_year(d) for d in frame["date"]], dtype=np.float64),
        year_period=frame["year"].astype(str).tolist(),
        month_period=frame["month"].astype(str).tolist(),
        train=train,
        finer_period={g: frame[g].astype(str).tolist() for g in ("quarter", "week", "day")},
    )


# ----------------------------------------------------------------------------- features


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[B, T, D]`` hidden states → ``[B, D]``: the last position whose mask is 1, or the mask-weighted mean.

    The last real token is found from the mask itself, so left or right padding are both right.
    """
    mask = mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device, dtype=hidden.dtype)
        last = (mask * (positions + 1)).argmax(dim=1)  # the largest masked-in position
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


@torch.no_grad()
def hidden_features(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int,
    poolings: Sequence[str] = POOLINGS,
    layers: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Pooled hidden states of every text: ``{pooling: array [n_layers, n_texts, d]}`` (float64).

    Layer ``i`` is ``output_hidden_states[i]`` (0 = the embeddings); for an encoder-decoder the
    encoder's. ``layers`` (default: all) picks and orders them; an index past the model's depth is
    a :class:`ConfigError` naming ``probe.layers``.
    """
    device = next(model.parameters()).device
    encoder = model.get_encoder() if is_encoder_decoder(model) else None  # type: ignore[operator,arg-type]  # a PreTrainedModel method on an nn.Module annotation
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: dict[str, list[np.ndarray]] = {p: [] for p in poolings}
    chosen: list[int] | None = None
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"][:max_length] or [tokenizer.eos_token_id] for text in texts]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")  # batches of similar length: little padding
    for start in range(0, len(texts), batch_size):
        examples = [Example(tuple(encoded[i]), tuple(encoded[i])) for i in order[start : start + batch_size]]
        batch = collate(examples, pad, encoder_decoder=False)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        forward = encoder if encoder is not None else model
        hidden = forward(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        if chosen is None:
            chosen = list(range(len(hidden))) if layers is None else list(layers)
            bad = [i for i in chosen if not 0 <= i < len(hidden)]
            if bad:
                raise ConfigError(f"probe.layers: {bad} out of range; the base has {len(hidden)} hidden states "
                                  f"(0 = embeddings … {len(hidden) - 1})")
        for pooling in poolings:
            out[pooling].append(torch.stack([pool(hidden[i].float(), mask, pooling) for i in chosen]).cpu().double().numpy())
    restore = np.argsort(order)
    return {p: np.concatenate(chunks, axis=1)[:, restore] for p, chunks in out.items()}


# ----------------------------------------------------------------------------- probes


def fit_probe(features: np.ndarray, years: np.ndarray, alphas: Sequence[float]) -> Pipeline:
    """Standardised features → ridge regression, α chosen by RidgeCV's efficient leave-one-out."""
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.asarray(alphas, dtype=np.float64))).fit(features, years)


def probe_scores(years: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(R², Spearman's ρ) of predicted against true dates; ρ is NaN when either side is constant."""
    rho = stats.spearmanr(years, predicted).statistic if np.ptp(predicted) > 0 and np.ptp(years) > 0 else float("nan")
    return float(r2_score(years, predicted)), float(rho)


def _shift_toward(shift: np.ndarray, years: np.ndarray, text_period: np.ndarray, period: str) -> float:
    """Mean of ``shift · sign(mid(period) − date)`` over the texts not of ``period`` (years; + = toward it)."""
    outside = text_period != period
    if not outside.any():
        return float("nan")
    return float(np.mean(shift[outside] * np.sign(period_midpoint(period) - years[outside])))


@dataclass
class BaseProbes:
    """θ_pre's fitted probes and their held-out predictions, per (layer, pooling)."""

    probes: dict[tuple[int, str], Pipeline]
    predicted: dict[tuple[int, str], np.ndarray]


def probe_model_rows(
    features: dict[str, np.ndarray],
    layers: Sequence[int],
    texts: ProbeTexts,
    alphas: Sequence[float],
    *,
    task: str | None,
    period: str | None,
    base: BaseProbes | None,
    periods: Sequence[str] = (),
) -> tuple[list[dict], BaseProbes]:
    """The rows of one model (θ_pre when ``period`` is None) and its fitted probes.

    ``base``: θ_pre's probes (for a tuned model: the ``probe="base"`` rows and the shifts, toward
    ``period`` and toward each other of ``periods``).
    """
    train, test = texts.train, ~texts.train
    y_train, y_test = texts.years[train], texts.years[test]
    rows: list[dict] = []
    mine = BaseProbes({}, {})
    model = "base" if period is None else f"{task}/{period}"
    common = {"model": model, "task": task, "train_period": period, "n_train": int(train.sum()), "n_test": int(test.sum())}
    granularity = Period.parse(period).granularity if period is not None else None
    text_period = texts.period_of(granularity)[test] if granularity else None
    for pooling, stacked in features.items():
        for li, layer in enumerate(layers):
            x = stacked[li]
            probe = fit_probe(x[train], y_train, alphas)
            predicted = probe.predict(x[test])
            r2, rho = probe_scores(y_test, predicted)
            mine.probes[(layer, pooling)], mine.predicted[(layer, pooling)] = probe, predicted
            key = {**common, "layer": layer, "pooling": pooling}
            rows.append({**key, "probe": "own", "alpha": float(probe[-1].alpha_), "r2": r2, "spearman": rho})
            if base is None or period is None:
                continue
            fixed = base.probes[(layer, pooling)]
            moved = fixed.predict(x[test])
            r2b, rhob = probe_scores(y_test, moved)
            shift = moved - base.predicted[(layer, pooling)]
            others = [_shift_toward(shift, y_test, text_period, s) for s in periods if s != period]  # type: ignore[arg-type]  # text_period is set with the test split
            rows.append({
                **key, "probe": "base", "alpha": float(fixed[-1].alpha_), "r2": r2b, "spearman": rhob,
                "mean_shift": float(shift.mean()), "shift_toward": _shift_toward(shift, y_test, text_period, period),  # type: ignore[arg-type]  # text_period is set with the test split
                "shift_toward_other": float(np.nanmean(others)) if others else float("nan"),
            })
    return rows, mine


# ----------------------------------------------------------------------------- the stage


def _text_periods(config: ExperimentConfig) -> list[str]:
    """The periods texts are drawn from: those of the study's coarsest granularity (its years; its months when it
    has no yearly runs; its weeks in a weekly study)."""
    return config.period_list(min(config.granularities, key=GRANULARITIES.index))


def run_probe(config: ExperimentConfig, store, corpus: Corpus | None = None) -> pd.DataFrame:
    """The probe table of one store: θ_pre, then every stored vector of ``probe.tasks`` in the study's periods."""
    from timevec.data.models import base_from_store
    from timevec.evaluate.cells import require_base
    from timevec.results import probe_frame
    from timevec.train.devices import pick_device
    from timevec.weights.vectors import WeightPatcher

    cfg = config.probe
    seed = config.seed if cfg.seed is None else cfg.seed
    require_base(store)
    corpus = corpus if corpus is not None else load_corpus(config.corpus)
    config = apply_min_examples(config, corpus)  # not run by the pipeline: the study's periods as its stages saw them
    texts = draw_texts(corpus, _text_periods(config), cfg.texts_per_period, cfg.test_fraction, seed)
    model, tokenizer = base_from_store(config.base, store)
    device = pick_device()
    model = model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() as a decorator
    patcher = WeightPatcher(model)
    max_length = cfg.max_length or config.evaluation.max_length

    def features() -> dict[str, np.ndarray]:
        return hidden_features(model, tokenizer, texts.texts, max_length=max_length, batch_size=cfg.batch_size,
                               poolings=cfg.poolings, layers=cfg.layers)

    began = time.perf_counter()
    base_features = features()
    layers = cfg.layers if cfg.layers is not None else list(range(next(iter(base_features.values())).shape[0]))
    rows, base = probe_model_rows(base_features, layers, texts, cfg.alphas, task=None, period=None, base=None)
    del base_features
    by_granularity = {g: set(config.period_list(g)) for g in config.granularities}
    for task in cfg.tasks:
        stored = [p for t, p in store.list_vectors(task) if p in by_granularity.get(Period.parse(p).granularity, ())]
        if not stored:
            log.warning("probe: no stored %s vectors of the study's periods in %s", task, store.url)
        for period in stored:
            peers = config.period_list(Period.parse(period).granularity)
            with patcher.applied(store.get_vector(task, period)):
                tuned = features()
            more, _ = probe_model_rows(tuned, layers, texts, cfg.alphas, task=task, period=period, base=base, periods=peers)
            rows += more
            log.info("probe: %s/%s done (%.0f s so far)", task, period, time.perf_counter() - began)
    return probe_frame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """R² and ρ by (task, pooling, layer): θ_pre, the tuned models' mean (own probe), and the base probe's pull.

    ``models_pulled`` of ``models``: the tuned models whose shift toward their own period exceeds the
    shift toward the other periods (the uniform-drift control). A table of θ_pre alone gives task ``None``.
    """
    tasks: list[str | None] = [t for t in dict.fromkeys(table["task"]) if isinstance(t, str)] or [None]
    return pd.concat([_summary_of(table[(table["model"] == "base") | (table["task"] == task)], task) for task in tasks],
                     ignore_index=True)


def _summary_of(table: pd.DataFrame, task: str | None) -> pd.DataFrame:
    own = table[table["probe"] == "own"]
    base = own[own["model"] == "base"].set_index(["pooling", "layer"])
    tuned = own[own["model"] != "base"].groupby(["pooling", "layer"])
    moved = table[table["probe"] == "base"]
    fixed = moved.groupby(["pooling", "layer"])
    pulled = (moved["shift_toward"] > moved["shift_toward_other"]).groupby([moved["pooling"], moved["layer"]]).sum()
    out = pd.DataFrame({
        "r2_base": base["r2"], "spearman_base": base["spearman"],
        "r2_tuned_mean": tuned["r2"].mean(), "r2_tuned_min": tuned["r2"].min(), "r2_tuned_max": tuned["r2"].max(),
        "spearman_tuned_mean": tuned["spearman"].mean(),
        "r2_base_probe_on_tuned": fixed["r2"].mean(),
        "shift_toward": fixed["shift_toward"].mean(), "shift_toward_other": fixed["shift_toward_other"].mean(),
        "models_pulled": pulled,
        "models": fixed["model"].nunique(),
    })
    return out.reset_index().assign(task=task)[["task", "pooling", "layer", *out.columns]]


def probe_stores(config: ExperimentConfig) -> list[tuple[str, pd.DataFrame]]:
    """``timevec probe``: the probe table of every replicate's store (one, without ``training.seeds``), written there."""
    from timevec.results import PROBE_TABLE, write_table
    from timevec.store import VectorStore
    from timevec.train.loop import check_store_base
    from timevec.train.replicates import replicate_configs

    corpus = load_corpus(config.corpus)
    done = []
    for _seed, replica in replicate_configs(config):
        store = VectorStore.from_config(replica.store)
        if store.exists():
            check_store_base(replica, store)
        table = run_probe(replica, store, corpus)
        write_table(store, PROBE_TABLE, table)
        done.append((f"{store.url.rstrip('/')}/results/{PROBE_TABLE}.parquet", table))
    return done
