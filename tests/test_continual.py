"""Continual updating (training.mode: continual) and the forgetting table.

The chain is checked against a Ray-free reference chain written here from the library's parts
(examples, the training loop, τ = θ − θ_pre) with the start θ_pre + τ_{t−1} built by hand; the
fleet's chain is killed for real (a Tune callback SIGKILLs the trial process of run 3) and resumed
by a second submission. On CPU both are expected to match to the last bit (ARCHITECTURE §9).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from ray import tune

import timevec.demo
from timevec import results
from timevec.analyze.forgetting import by_lag, forgetting_rows
from timevec.config import ConfigError, load_config
from timevec.data.corpus import load_corpus
from timevec.data.examples import task_examples
from timevec.data.models import base_from_store, float_parameters, is_encoder_decoder
from timevec.distributed.fleet import run_fleet
from timevec.store import VectorStore
from timevec.store.checksum import shard_digest
from timevec.train import continual
from timevec.train.loop import prepare_base, train
from timevec.train.plan import RunSpec
from timevec.train.run import RunJob
from timevec.weights.vectors import TimeVector

TINY = Path(timevec.demo.__file__).parent / "tiny.yaml"
CHAIN = ["tasks=[lm]", "corpus.caps={train: 48, validation: 8, test: 8}", "periods.end='2016'", "training.steps=6",
         "training.checkpoint_every=2", "base.pretrain.steps=4",
         "ray.num_cpus=2", "ray.max_failures=0", "training.mode=continual"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("continual-base") / "store"
    config = load_config(TINY, [f"store.url={root}", *CHAIN])
    corpus = load_corpus(config.corpus)
    prepare_base(config, corpus, VectorStore.from_config(config.store))
    return root, corpus


def _store(base, where: Path, *overrides: str):
    root, _corpus = base
    shutil.copytree(root, where)
    config = load_config(TINY, [f"store.url={where}", *CHAIN, *overrides])
    return config, VectorStore.from_config(config.store)


def _reference_chain(config, store: VectorStore, corpus) -> None:
    """The chain without the fleet or RunJob: start θ_pre + τ_{t−1} by hand, train, τ_t = θ − θ_pre."""
    previous: TimeVector | None = None
    for period in config.period_list("year"):
        model, tokenizer = base_from_store(config.base, store)
        theta_pre = {n: p.detach().clone() for n, p in float_parameters(model).items()}
        if previous is not None:
            with torch.no_grad():
                for name, p in float_parameters(model).items():
                    p.copy_(theta_pre[name] + previous[name])
        cfg = config.training
        examples = task_examples("lm", corpus, period, "train", tokenizer, is_encoder_decoder(model), cfg.max_length, cfg.seed)
        model, _ = train(model, examples, cfg, tokenizer.pad_token_id)
        tau = TimeVector.between({n: p.detach() for n, p in float_parameters(model).items()}, theta_pre)
        store.put_vector("lm", period, tau, manifest={"reference": True})
        previous = store.get_vector("lm", period)  # what the chain reads back (the store's dtype)


class KillRun(tune.Callback):
    """SIGKILLs the real trial process of one run when the driver sees its step ``at``."""

    def __init__(self, period: str, at: int) -> None:
        self.period, self.at, self.killed = period, at, False

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run = trial.config["run"]
        if not self.killed and run["period"] == self.period and result.get("step") == self.at \
                and result.get("run_status") == "training":
            self.killed = True
            os.kill(result["pid"], signal.SIGKILL)


def test_a_killed_chain_resumes_and_equals_the_reference_chain(ray_session: str, base, tmp_path: Path) -> None:
    # every step reported (ray.report_interval_s=0): the callback must see step 5
    config, store = _store(base, tmp_path / "fleet", "ray.report_interval_s=0")
    ref_config, ref = _store(base, tmp_path / "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.ray.torch_threads)  # the trials' thread count: the same float sums
    try:
        _reference_chain(ref_config, ref, base[1])
    finally:
        torch.set_num_threads(threads)

    killer = KillRun("2016", at=5)
    first = run_fleet(config, callbacks=[killer]).set_index("period")
    assert killer.killed, "the callback never saw run 2016 at step 5"
    assert list(first["status"]) == ["done", "done", "failed"], first.to_string()
    assert not store.has_vector("lm", "2016")
    again = run_fleet(config).set_index("period")  # the re-submission: only the chain's last run
    assert list(again["status"]) == ["skipped", "skipped", "done"], again.to_string()
    assert again.loc["2016", "resumed_from_step"] == 4  # from the step-4 checkpoint of the killed run

    for period in config.period_list("year"):
        a, b = store.get_vector("lm", period), ref.get_vector("lm", period)
        assert all(torch.equal(a[n], b[n]) for n in a.names), f"τ_{period} differs from the reference chain"
        run = store.manifest("lm", period)["run"]
        before = continual.predecessor(config, RunSpec("lm", period, "year"))
        assert run["mode"] == "continual" and run["continual"]["predecessor"] == before
        if before:
            shas = [shard_digest(s) for s in store.manifest("lm", before)["shards"]]
            assert run["continual"]["predecessor_shards"] == shas


def test_a_run_needs_its_predecessor_and_replay_mixes_the_fraction(base, tmp_path: Path) -> None:
    config, store = _store(base, tmp_path / "replay", "training.replay=0.5")
    corpus = base[1]
    with pytest.raises(ValueError, match=r"predecessor vector lm/2014 is not in the store"):
        RunJob(config, store, corpus, RunSpec("lm", "2015", "year"))
    first = RunJob(config, store, corpus, RunSpec("lm", "2014", "year"))
    assert first.replayed == 0  # nothing earlier to replay
    model, result = first.fit(None, None, torch.device("cpu"))
    first.finish(model, result, 0, None, result.tokens)
    job = RunJob(config, store, corpus, RunSpec("lm", "2015", "year"))
    tokenizer, cfg = job.tokenizer, config.training
    own = task_examples("lm", corpus, "2015", "train", tokenizer, False, cfg.max_length, cfg.seed)
    earlier = task_examples("lm", corpus, "2014", "train", tokenizer, False, cfg.max_length, cfg.seed)
    assert job.replayed == round(0.5 * len(own)) > 0
    assert len(job.examples) == len(own) + job.replayed
    key = lambda e: (tuple(e.input_ids), tuple(e.labels))  # noqa: E731
    assert [key(e) for e in job.examples[: len(own)]] == [key(e) for e in own]
    assert {key(e) for e in job.examples[len(own):]} <= {key(e) for e in earlier}
    assert job.start["continual"] | {"predecessor_shards": None} == {
        "predecessor": "2014", "predecessor_shards": None, "replay": 0.5, "replayed_examples": job.replayed}
    # the start is θ_pre + τ_2014 as read from the store
    tau = store.get_vector("lm", "2014")
    assert all(torch.equal(p.detach(), job.base[n] + tau[n]) for n, p in float_parameters(job.model).items())
    # a continual run does not chain off another mode's vector
    _plain, plain_store = _store(base, tmp_path / "plain", "training.mode=independent")
    plain_store.put_vector("lm", "2014", TimeVector.zeros_like(tau), manifest={"mode": "independent"})
    with pytest.raises(ValueError, match="not a continual vector with training.replay 0.5"):
        RunJob(config, plain_store, corpus, RunSpec("lm", "2015", "year"))


def test_replay_and_mode_are_validated_and_the_store_is_one_per_mode() -> None:
    for bad, field in ((["training.replay=0.3"], "training.mode: continual"),
                       (["training.mode=continual", "training.replay=1.5"], "training.replay"),
                       (["training.mode=continual", "training.replay=nan"], "training.replay"),
                       (["training.task_overrides={lm: {mode: continual}}"], "training.task_overrides.lm.mode")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(TINY, bad)
    assert continual.mode_url("/s/demo") == "/s/demo/continual"
    assert continual.mode_url("s3://b/p/", 0.25) == "s3://b/p/continual-replay-0.25"
    assert continual.independent_url("s3://b/p/continual-replay-0.25") == "s3://b/p"


def _cells(rows):
    return results.cells_frame([{"task": "lm", "granularity": "year", "vector": f"lm/{t}", "train_period": t,
                                 "test_period": s, "metric": "perplexity", "value": v, "higher_is_better": False,
                                 "n_examples": 1, "n_tokens": 1, "seconds": 0.0} for t, s, v in rows])


def test_forgetting_table_against_a_hand_computed_reference() -> None:
    periods = {("lm", "year"): ["2014", "2015", "2016"]}
    cont = _cells([("2014", "2014", 10.0), ("2015", "2014", 11.0), ("2016", "2014", 12.5), ("2015", "2015", 9.0),
                   ("2016", "2015", 9.9), ("2016", "2016", 8.0), ("2014", "2016", 99.0)])  # t < s: not forgetting
    ind = _cells([("2014", "2014", 10.0), ("2015", "2014", 12.0), ("2016", "2014", 13.0), ("2015", "2015", 10.0),
                  ("2016", "2015", 11.0), ("2016", "2016", 8.0)])
    merged = _cells([("2015", "2014", 10.5), ("2016", "2014", 10.4), ("2015", "2015", 10.2), ("2016", "2015", 10.1),
                     ("2016", "2016", 9.0)]).assign(vector=lambda f: "lm/mean(2014.." + f["train_period"] + ")")
    table = forgetting_rows(periods, cont, ind, merged)
    assert list(table.columns) == results.FORGETTING_COLUMNS
    got = table.set_index(["mode", "test_period", "train_period"])
    # perplexity: lower is better, so forgetting = value − value at learning, in % of it
    assert got.loc[("continual", "2014", "2016"), "lag"] == 2
    assert got.loc[("continual", "2014", "2016"), "forgetting"] == pytest.approx(2.5)
    assert got.loc[("continual", "2014", "2016"), "forgetting_pct"] == pytest.approx(25.0)
    assert got.loc[("continual", "2015", "2016"), "gap_to_in_period_pct"] == pytest.approx(-1.0)  # 9.9 vs τ_2015's 10
    assert got.loc[("independent", "2015", "2016"), "forgetting_pct"] == pytest.approx(10.0)
    # merged at the first period is τ_2014 itself (from the independent cells)
    assert got.loc[("merged", "2014", "2014"), "value"] == 10.0
    assert got.loc[("merged", "2014", "2016"), "forgetting_pct"] == pytest.approx(4.0)
    assert got.loc[("merged", "2016", "2016"), "gap_to_in_period_pct"] == pytest.approx(12.5)
    assert ("continual", "2016", "2014") not in got.index and len(table) == 3 * 6
    lags = by_lag(table).set_index(["mode", "lag"])
    assert lags.loc[("continual", 1), "n"] == 2
    assert lags.loc[("continual", 1), "forgetting_pct"] == pytest.approx((10.0 + 10.0) / 2)
    assert lags.loc[("merged", 2), "forgetting_pct"] == pytest.approx(4.0)
    assert math.isclose(lags.loc[("independent", 0), "forgetting_pct"], 0.0)
    assert list(pd.unique(by_lag(table)["mode"])) == ["continual", "independent", "merged"]


# ---------------------------------------------------------------------------- the forgetting stage


def _cell_key(frame: pd.DataFrame) -> list[tuple]:
    return sorted(zip(frame["task"], frame["granularity"], frame["vector"], frame["test_period"]))


@pytest.mark.slow
def test_forgetting_stage_merged_means_equal_a_dense_reference_and_a_killed_stage_resumes(
        ray_session: str, base, tmp_path: Path) -> None:
    """The stage through Ray (the interpolation actor pool) on the tiny config in continual mode: every merged
    state θ_pre + mean(τ_2014 … τ_t) of the independent vectors scores what a dense float64 model built here
    scores; a stage that loses the rows of its last state (as a SIGKILLed driver does: rows are appended as
    states finish) evaluates only that state again, and no cell is doubled; then the report's figure."""
    import subprocess
    import sys
    import time

    from tests.reliability import random_vector
    from timevec.config import dump_config
    from timevec.data.examples import prepare_eval_sets
    from timevec.data.models import assign_parameters
    from timevec.distributed.forgetting import run_forgetting
    from timevec.evaluate.metrics import evaluate

    root, _corpus = base
    study = tmp_path / "study"
    shutil.copytree(root, study)
    independent = VectorStore(str(study))
    periods = ["2014", "2015", "2016"]
    for k, period in enumerate(periods):  # the independent vectors: any τ will do, the reference is dense
        independent.put_vector("lm", period, random_vector(independent, 10 + k, scale=0.05))
    study_config = load_config(TINY, [f"store.url={study}", *CHAIN])
    config = continual.for_mode(study_config)  # the continual store, sharing the study's θ_pre
    assert config.store.url == continual.mode_url(str(study))
    store = VectorStore.from_config(config.store)

    table = run_forgetting(config, store)
    merged = store.read_table(results.MERGED_CELLS_TABLE)
    names = {f"lm/mean(2014..{t})" for t in ("2015", "2016")}
    assert set(merged["vector"]) == names and len(merged) == len(names) * len(periods)
    assert len(set(_cell_key(merged))) == len(merged)

    # the dense reference: float64 θ_pre + mean(τ), built parameter by parameter, scored by the library's metric
    splits = prepare_eval_sets(config)["test"][("lm", "year")]
    model, _tokenizer = base_from_store(config.base, store)
    model = model.double()
    theta = {n: p.detach().clone() for n, p in float_parameters(model).items()}
    taus = {p: independent.get_vector("lm", p) for p in periods}
    for last in ("2015", "2016"):
        members = periods[: periods.index(last) + 1]
        mean = {n: sum(taus[p][n].double() for p in members) / len(members) for n in theta}
        assign_parameters(model, {n: theta[n] + mean[n] for n in theta})
        for test in periods:
            want = evaluate(model, splits[test], config.evaluation)["value"]
            got = merged[(merged["vector"] == f"lm/mean(2014..{last})") & (merged["test_period"] == test)]["value"]
            assert got.item() == pytest.approx(want, rel=2e-3), (last, test)
    # the forgetting table: the merged rows are those cells, against the state right after learning s
    rows = table[table["mode"] == "merged"].set_index(["test_period", "train_period"])
    value = rows.loc[("2015", "2016"), "value"]
    assert value == pytest.approx(merged[(merged["vector"] == "lm/mean(2014..2016)") & (merged["test_period"] == "2015")]["value"].item())
    assert rows.loc[("2015", "2016"), "forgetting_pct"] == pytest.approx(
        100 * (value - rows.loc[("2015", "2015"), "value"]) / rows.loc[("2015", "2015"), "value"])  # perplexity: up is worse

    # a stage that lost its last state's rows evaluates that state only, and doubles nothing
    first = merged.sort_values(["vector", "test_period"], ignore_index=True)
    store.write_table(results.MERGED_CELLS_TABLE, merged[merged["vector"] != "lm/mean(2014..2016)"])
    run_forgetting(config, store)
    again = store.read_table(results.MERGED_CELLS_TABLE).sort_values(["vector", "test_period"], ignore_index=True)
    assert _cell_key(again) == _cell_key(first)
    assert again["value"].tolist() == pytest.approx(first["value"].tolist(), rel=1e-6)

    # a real kill: the stage's driver (the CLI) SIGKILLed while it evaluates; the next run completes it, nothing doubled
    store.write_table(results.MERGED_CELLS_TABLE, merged.iloc[:0])
    path = tmp_path / "continual.yaml"
    path.write_text(dump_config(study_config))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray_session}
    cmd = [sys.executable, "-m", "timevec.cli", "-v", "run", str(path), "--stages", "forgetting"]  # -v: the INFO line waited for
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as driver:
        for line in driver.stdout:
            if "merged state(s) to evaluate" in line:
                time.sleep(1.0)
                os.killpg(driver.pid, signal.SIGKILL)
                break
        driver.wait(timeout=120)
    assert driver.returncode == -signal.SIGKILL
    run_forgetting(config, store)  # the re-run (in this process: the CLI's start-up is tested above)
    final = store.read_table(results.MERGED_CELLS_TABLE).sort_values(["vector", "test_period"], ignore_index=True)
    assert _cell_key(final) == _cell_key(first)
    assert final["value"].tolist() == pytest.approx(first["value"].tolist(), rel=1e-6)

    # the report's figure: one per (task, granularity), its numbers the table's means by lag
    from timevec.analyze.forgetting import by_lag
    from timevec.report.forgetting import forgetting_figures

    figures, tables = [], {}
    forgetting_figures(table, figures, lambda name, frame: tables.__setitem__(name, frame))
    assert [f.name for f in figures] == ["forgetting_lm_year"] and list(tables) == ["fig_forgetting_lm_year"]
    assert figures[0].png[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(tables["fig_forgetting_lm_year"], by_lag(table))

def test_equal_steps_runs_start_from_the_base_and_train_as_long_as_the_chain(base, tmp_path: Path) -> None:
    config, store = _store(base, tmp_path / "equal", "training.mode=equal_steps")
    corpus = base[1]
    assert continual.mode_url("/s/demo", mode="equal_steps") == "/s/demo/continual-equal-steps"
    assert continual.independent_url("/s/demo/continual-equal-steps") == "/s/demo"
    moved = continual.for_mode(config)
    assert moved.store.url == continual.mode_url(config.store.url, mode="equal_steps")
    periods = config.period_list("year")
    theta_pre = {n: p.detach().clone() for n, p in float_parameters(base_from_store(config.base, store)[0]).items()}
    # the store the runs use holds a chain's earlier vectors: non-zero, recorded as a continual chain records them
    chain = config.with_overrides(["training.mode=continual"])
    earlier: dict[str, TimeVector] = {}
    g = torch.Generator().manual_seed(5)
    for period in periods[:-1]:
        tau = TimeVector({n: 0.01 * torch.randn(t.shape, generator=g) for n, t in theta_pre.items()})
        store.put_vector("lm", period, tau, manifest=continual.start_manifest(chain, RunSpec("lm", period, "year"), store, 0))
        earlier[period] = store.get_vector("lm", period)  # as stored (and as a chain run would read it)
        assert all(bool(earlier[period][n].ne(0).any()) for n in theta_pre)
    # the control that the store offers a start: a continual run there starts from θ_pre + τ_{t−1}
    follows = RunJob(chain, store, corpus, RunSpec("lm", periods[1], "year"))
    assert follows.start["continual"]["predecessor"] == periods[0]
    assert all(torch.equal(p.detach(), theta_pre[n] + earlier[periods[0]][n]) for n, p in float_parameters(follows.model).items())
    for i, period in enumerate(periods):
        job = RunJob(config, store, corpus, RunSpec("lm", period, "year"))
        assert job.steps == job.training.steps == (i + 1) * config.training.steps  # the chain's steps by then
        assert job.start == {"mode": "equal_steps", "equal_steps": {"chain_position": i + 1, "steps": job.steps}}
        # an independent start: θ_pre itself, although the store holds the chain's vector for the period before
        start = {n: p.detach() for n, p in float_parameters(job.model).items()}
        assert start.keys() == theta_pre.keys() and all(torch.equal(start[n], theta_pre[n]) for n in start)
        if i:
            assert not any(torch.equal(start[n], theta_pre[n] + earlier[periods[i - 1]][n]) for n in start)
    with pytest.raises(ConfigError, match="equal_steps"):
        load_config(TINY, ["training.mode=equal_steps", "training.steps=null"])
    # the forgetting table's control rows: continual vs equal steps at the same (s, t)
    periods = {("lm", "year"): ["2014", "2015"]}
    cont = _cells([("2014", "2014", 10.0), ("2015", "2014", 11.0), ("2015", "2015", 9.0)])
    equal = _cells([("2014", "2014", 10.0), ("2015", "2014", 13.0), ("2015", "2015", 8.5)])
    table = forgetting_rows(periods, cont, _cells([("2014", "2014", 10.0), ("2015", "2015", 10.0)]), None, equal)
    got = table.set_index(["mode", "test_period", "train_period"])
    assert got.loc[("equal_steps", "2014", "2015"), "forgetting_pct"] == pytest.approx(30.0)
    assert got.loc[("continual", "2014", "2015"), "forgetting_pct"] == pytest.approx(10.0)
    assert got.loc[("equal_steps", "2015", "2015"), "gap_to_in_period_pct"] == pytest.approx(-15.0)
