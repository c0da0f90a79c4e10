"""Seed replicates: one store per seed sharing one base, the pipeline loop over them, findings over seeds."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

import timevec.demo
from timevec import pipeline
from timevec.analyze import findings as fnd
from timevec.analyze import seeds
from timevec.config import ConfigError, load_config
from timevec.data.corpus import load_corpus
from timevec.store import VectorStore
from timevec.train import replicates
from timevec.train.loop import prepare_base

TINY = Path(timevec.demo.__file__).parent / "tiny.yaml"


def test_replicate_configs_give_each_seed_its_own_store(tmp_path: Path) -> None:
    config = load_config(TINY, [f"store.url={tmp_path}/s", "training.seeds=[3, 5]", f"ray.storage_path={tmp_path}/ray"])
    reps = replicates.replicate_configs(config)
    assert [s for s, _ in reps] == [3, 5]
    for seed, rep in reps:
        assert rep.training.seed == seed and rep.training.seeds is None
        assert rep.store.url == f"{tmp_path}/s/seeds/{seed}"
        assert rep.ray.storage_path == f"{tmp_path}/ray/seeds/{seed}"
    one = replicates.replicate_configs(load_config(TINY, [f"store.url={tmp_path}/s", "training.seeds=[9]"]))
    assert [(s, c.training.seed, c.store.url) for s, c in one] == [(9, 9, f"{tmp_path}/s")]
    plain = load_config(TINY, [f"store.url={tmp_path}/s"])
    assert replicates.replicate_configs(plain) == [(plain.training.seed, plain)]
    for bad in ("[]", "[1, 1]"):
        with pytest.raises(ConfigError, match="training.seeds"):
            load_config(TINY, [f"training.seeds={bad}"])


def _finding(seed: int, estimate: float, finding: str = "decay with the gap", panel: str = "lm/year") -> dict:
    return {"finding": finding, "panel": panel, "estimate": estimate, "low": math.nan, "high": math.nan,
            "unit": "% per year", "measured": "", "paper": "", "holds": "", "note": "", "line": 0.0, "side": "above"}


def test_findings_over_seeds_t_interval_and_verdict() -> None:
    by_seed = {1: pd.DataFrame([_finding(1, 2.0), _finding(1, -0.3, "cosine vs degradation", "all") | {
                   "unit": "r", "side": "below"}]),
               2: pd.DataFrame([_finding(2, 3.0), _finding(2, -0.5, "cosine vs degradation", "all") | {
                   "unit": "r", "side": "below"}]),
               3: pd.DataFrame([_finding(3, 4.0), _finding(3, 0.4, "cosine vs degradation", "all") | {
                   "unit": "r", "side": "below"}])}
    over = seeds.findings_over_seeds(by_seed).set_index("finding")
    decay = over.loc["decay with the gap"]
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) · sd / √n, sd = 1
    assert decay["estimate"] == pytest.approx(3.0) and decay["n_seeds"] == 3
    assert decay["low"] == pytest.approx(3.0 - half) and decay["high"] == pytest.approx(3.0 + half)
    assert decay["holds"] == fnd.verdict(decay["low"], decay["high"], 0.0, "above") == "yes"
    assert "1: +2.00" in decay["note"] and "(3 seeds)" in decay["measured"]
    assert over.loc["cosine vs degradation", "holds"] == "unclear"  # one seed disagrees
    assert over.loc["cosine vs degradation", "low"] == -1.0  # clipped: r cannot leave [−1, 1]
    # one seed: no interval over seeds
    single = seeds.findings_over_seeds({1: by_seed[1]})
    assert single["low"].isna().all()
    assert seeds.findings_over_seeds({}).empty


def test_the_pipeline_runs_every_replicate_on_one_base(tmp_path: Path) -> None:
    """run_stages over two seeds with injected stage functions (the loop is what is tested)."""
    from timevec import results

    config = load_config(TINY, [f"store.url={tmp_path}/study", "training.seeds=[11, 12]"])
    calls: list[tuple[str, int, str]] = []

    def finetune(cfg, store):
        calls.append(("finetune", cfg.training.seed, store.url))
        made = not store.exists()
        prepare_base(cfg, load_corpus(cfg.corpus), store)  # the real one: pretrains only where no base is stored
        assert made == (cfg.training.seed == 11)  # the second replicate got the first one's base
        return {"headline": {"runs": 1}}

    def analyze(cfg, store):
        calls.append(("analyze", cfg.training.seed, store.url))
        assert store.base_fingerprint == VectorStore(f"{tmp_path}/study/seeds/11").base_fingerprint
        store.write_table(results.FINDINGS_TABLE, pd.DataFrame([_finding(cfg.training.seed, cfg.training.seed / 10)]))
        return {"findings": store.read_table(results.FINDINGS_TABLE)}

    def unused(cfg, store):
        raise AssertionError("stage not asked for")

    functions = {name: {"finetune": finetune, "analyze": analyze}.get(name, unused) for name in pipeline.STAGES}
    summary = pipeline.run_stages(config, ["finetune", "analyze"], functions)
    assert [c[:2] for c in calls] == [("finetune", 11), ("analyze", 11), ("finetune", 12), ("analyze", 12)]
    assert {c[2] for c in calls} == {f"{tmp_path}/study/seeds/11", f"{tmp_path}/study/seeds/12"}
    over = summary["findings"]
    assert over.iloc[0]["estimate"] == pytest.approx(1.15) and over.iloc[0]["n_seeds"] == 2
    stored = VectorStore(f"{tmp_path}/study").read_table(seeds.FINDINGS_SEEDS_TABLE)
    pd.testing.assert_frame_equal(stored, over.reset_index(drop=True))
    assert summary["findings_file"] == f"{tmp_path}/study/results/{seeds.FINDINGS_SEEDS_TABLE}.txt"
    assert Path(summary["findings_file"]).read_text().startswith("Verdict (95 % intervals")  # the block, then every row
    assert summary["headline"]["seed 12: runs"] == 1


@pytest.mark.slow
def test_two_seeds_through_the_real_stages_share_one_base_and_give_findings_over_seeds(ray_session: str, tmp_path: Path) -> None:
    """The replicate loop with the REAL stages (fleet on Ray, the cells stage, the analysis) on the tiny config:
    two seeds, one θ_pre (the second replicate gets the first one's), different vectors, and the findings over
    seeds equal to what the two stores' own findings tables give."""
    from timevec import results
    from timevec.distributed.pipeline import run_pipeline

    config = load_config(TINY, [f"store.url={tmp_path}/study", "training.seeds=[1, 2]", "tasks=[lm]", "periods.end='2016'",
                                "base.pretrain.steps=4", "training.steps=4", "corpus.caps={train: 48, validation: 8, test: 8}"])
    summary = run_pipeline(config, ["finetune", "evaluate", "analyze"])
    one, two = (VectorStore(replicates.replicate_url(config.store.url, seed)) for seed in (1, 2))
    keys = [("lm", p) for p in ("2014", "2015", "2016")]
    assert one.list_vectors() == keys and two.list_vectors() == keys
    assert one.base_fingerprint == two.base_fingerprint  # one θ_pre for both seeds
    assert not one.get_vector("lm", "2015").equal(two.get_vector("lm", "2015"))  # the seed changed the fine-tune
    assert len(one.read_table(results.CELLS_TABLE)) == len(two.read_table(results.CELLS_TABLE)) == 3 * 4
    by_seed = {1: one.read_table(results.FINDINGS_TABLE), 2: two.read_table(results.FINDINGS_TABLE)}
    expected = seeds.findings_over_seeds(by_seed)
    stored = VectorStore(config.store.url).read_table(seeds.FINDINGS_SEEDS_TABLE)
    pd.testing.assert_frame_equal(stored, expected)
    pd.testing.assert_frame_equal(summary["findings"].reset_index(drop=True), expected)
    # each finding over seeds is the mean of the two stores' estimates
    means = pd.concat(by_seed.values()).groupby(["finding", "panel"])["estimate"].mean()
    over = stored.set_index(["finding", "panel"])["estimate"]
    assert "decay with the gap" in set(stored["finding"]) and (stored["n_seeds"] == 2).any()
    for key, value in means.items():
        assert over[key] == pytest.approx(value, nan_ok=True), key
