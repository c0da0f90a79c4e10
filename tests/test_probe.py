"""Linear time probes (timevec.analyze.probe): pooling against an unpadded reference, the probe on planted and
shuffled dates, the base-probe shift against its formula, and `timevec probe` on a tiny store."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
import torch

from timevec.analyze.probe import ProbeTexts, hidden_features, pool, probe_model_rows
from timevec.config import ConfigError, load_config
from timevec.data.models import base_id, build_model, float_parameters, load_tokenizer
from timevec.periods import fractional_year, period_midpoint
from timevec.results import PROBE_COLUMNS, PROBE_TABLE
from timevec.store import VectorStore
from timevec.weights.vectors import TimeVector

TEXTS = ["a", "time vectors", "the quick brown fox jumps over the lazy dog", "2016: a year"]


def test_fractional_year_and_midpoint():
    assert fractional_year(dt.date(2014, 1, 1)) == 2014.0
    assert fractional_year(dt.datetime(2014, 7, 2, 12)) == pytest.approx(2014 + 182.5 / 365)
    assert fractional_year(dt.date(2016, 12, 31)) == pytest.approx(2016 + 365 / 366)  # a leap year
    assert period_midpoint("2014") == pytest.approx(2014.5)
    assert period_midpoint("2014-12") == pytest.approx(2014 + (334 + 15.5) / 365)


def test_pool_on_a_left_padded_mask():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    assert pool(hidden, mask, "last").tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert pool(hidden, mask, "mean").tolist() == [[3.0, 4.0], [6.0, 7.0]]


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_pooled_features_equal_each_text_run_alone(arch):
    """Batched, length-sorted and padded features == each text forwarded alone (no padding) and pooled by hand."""
    config = load_config("timevec/demo/tiny.yaml", [f"base.arch={arch}", "base.tiny.num_layers=2"])
    tokenizer = load_tokenizer(config.base)
    model = build_model(config.base, tokenizer).eval()
    got = hidden_features(model, tokenizer, TEXTS, max_length=32, batch_size=3)
    forward = model.get_encoder() if arch == "t5" else model
    assert got["last"].shape == (3, len(TEXTS), config.base.tiny.d_model)  # embeddings + 2 layers
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"][:32]])
            hidden = forward(input_ids=ids, output_hidden_states=True).hidden_states
            for layer, h in enumerate(hidden):
                np.testing.assert_allclose(got["last"][layer, i], h[0, -1].double().numpy(), atol=1e-5)
                np.testing.assert_allclose(got["mean"][layer, i], h[0].mean(0).double().numpy(), atol=1e-5)
    picked = hidden_features(model, tokenizer, TEXTS, max_length=32, batch_size=8, poolings=["mean"], layers=[2, 0])
    np.testing.assert_allclose(picked["mean"], got["mean"][[2, 0]], atol=1e-6)
    with pytest.raises(ConfigError, match=r"probe.layers: \[3\] out of range"):  # exit 2 in the CLI (timevec.errors)
        hidden_features(model, tokenizer, TEXTS, max_length=32, batch_size=8, layers=[0, 3])


def _synthetic(n: int = 400, d: int = 24, seed: int = 0) -> tuple[np.ndarray, ProbeTexts, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    x = rng.normal(size=(n, d))
    years = 2015.0 + x @ w / np.linalg.norm(w) + rng.normal(scale=0.05, size=n)  # a planted linear date, R² ≈ 0.998
    texts = ProbeTexts(texts=[""] * n, years=years, year_period=[str(int(y)) for y in years], month_period=[""] * n,
                       train=rng.permutation(n) < int(0.7 * n))
    return x, texts, w


ALPHAS = [10.0 ** k for k in range(-3, 4)]


def test_probe_recovers_a_planted_date_and_not_shuffled_ones():
    x, texts, _ = _synthetic()
    rows, _ = probe_model_rows({"mean": x[None]}, [0], texts, ALPHAS, task=None, period=None, base=None)
    (row,) = rows
    assert row["probe"] == "own" and row["n_test"] == 120
    assert row["r2"] > 0.97 and row["spearman"] > 0.98
    shuffled = ProbeTexts(**{**texts.__dict__, "years": np.random.default_rng(1).permutation(texts.years)})
    (noise,), _ = probe_model_rows({"mean": x[None]}, [0], shuffled, ALPHAS, task=None, period=None, base=None)
    assert noise["r2"] < 0.05 and abs(noise["spearman"]) < 0.2


def test_base_probe_shift_matches_its_formula():
    """Tuned features moved by δ along the probe's direction: every prediction moves by the same amount, and
    the shifts toward t and toward the other periods are the signed means written out here."""
    x, texts, w = _synthetic()
    base_rows, base = probe_model_rows({"last": x[None]}, [0], texts, ALPHAS, task=None, period=None, base=None)
    probe = base.probes[(0, "last")]
    coef = probe[-1].coef_ / probe[0].scale_  # the prediction's slope in raw feature units
    moved = x + 0.5 * coef / (coef @ coef)  # every base-probe prediction +0.5 years
    periods = [str(y) for y in range(2012, 2018)]
    rows, _ = probe_model_rows({"last": moved[None]}, [0], texts, ALPHAS, task="lm", period="2013", base=base, periods=periods)
    fixed = next(r for r in rows if r["probe"] == "base")
    assert fixed["mean_shift"] == pytest.approx(0.5, abs=1e-9)
    test_years = texts.years[~texts.train]
    test_period = np.asarray(texts.year_period)[~texts.train]

    def toward(p: str) -> float:
        outside = test_period != p
        return float(np.mean(0.5 * np.sign(period_midpoint(p) - test_years[outside])))

    assert fixed["shift_toward"] == pytest.approx(toward("2013"), abs=1e-9)
    assert fixed["shift_toward_other"] == pytest.approx(np.mean([toward(p) for p in periods if p != "2013"]), abs=1e-9)
    assert fixed["r2"] < base_rows[0]["r2"]  # a biased read-out scores worse on the true dates


def test_cli_probe_writes_the_table_and_exit_2_on_a_bad_field(tmp_path, capsys):
    from timevec.cli import main
    from timevec.report.probe import probe_figures

    root = tmp_path / "store"
    corpus = tmp_path / "corpus.jsonl"  # 40 dated texts a year: reading the bundled tweets would cost seconds
    pd.DataFrame([{"key": f"{y}-{i}", "date": f"{y}-{1 + i % 12:02d}-{1 + i % 28:02d}", "source": "web",
                   "text": f"text {i} of the year {y}"} for y in (2014, 2015) for i in range(40)]).to_json(
        corpus, orient="records", lines=True)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(
        open("timevec/demo/tiny.yaml").read().replace("url: ./runs/tiny", f"url: {root}")
        .replace('source: "demo:trump_tweets"', f"source: {corpus}").replace("caps: {train: 96, validation: 24, test: 24}",
                                                                          "split: {validation: 0.3, test: 0.3}")
        + "probe: {texts_per_period: 12, test_fraction: 0.5, poolings: [last, mean]}\n"
    )
    config = load_config(config_path, ["periods.start='2014'", "periods.end='2015'"])
    tokenizer = load_tokenizer(config.base)
    base = {n: p.detach().clone() for n, p in float_parameters(build_model(config.base, tokenizer)).items()}
    store = VectorStore.from_config(config.store)
    store.init(base_id(config.base), base)
    for i, period in enumerate(["2014", "2015"]):
        g = torch.Generator().manual_seed(10 + i)
        store.put_vector("lm", period, TimeVector({n: 0.05 * torch.randn(t.shape, generator=g) for n, t in base.items()}))
    sets = ["--set", "periods.start='2014'", "--set", "periods.end='2015'"]
    assert main(["probe", str(config_path), *sets]) == 0
    assert "time probes by layer" in capsys.readouterr().out
    table = store.read_table(PROBE_TABLE)
    assert list(table.columns) == PROBE_COLUMNS
    # θ_pre (own probe) + 2 tuned models × (own, base) probes, × 2 hidden states × 2 poolings
    assert len(table) == (1 + 2 * 2) * 2 * 2
    assert set(table["model"]) == {"base", "lm/2014", "lm/2015"}
    assert (table["n_train"] == 12).all() and (table["n_test"] == 12).all()
    assert table["r2"].notna().all() and table.loc[table["probe"] == "base", "shift_toward"].notna().all()
    figures, written = [], {}
    probe_figures(table, figures, written.__setitem__)
    assert [f.name for f in figures] == ["probe_r2", "probe_shift"] and all(f.png.startswith(b"\x89PNG") for f in figures)
    base_r2 = table[(table["model"] == "base") & (table["pooling"] == "mean")].set_index("layer")["r2"]
    drawn = written["fig_probe_r2"].query("pooling == 'mean' and model == 'base'").set_index("layer")["r2_own_mean"]
    pd.testing.assert_series_equal(drawn, base_r2, check_names=False)

    assert main(["probe", str(config_path), *sets, "--set", "probe.poolings=[max]"]) == 2
    assert "probe.poolings" in capsys.readouterr().err
