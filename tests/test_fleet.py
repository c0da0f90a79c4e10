"""The fine-tune fleet on a real local Ray cluster (2 CPUs): vectors, retries, resumption, logs.

Every test runs the tiny demo config against its own store under ``tmp_path``; the pretrained
base is built once per session and copied into each store, so no test pays for pretraining.
Faults are real: a Tune callback SIGKILLs the trial process (its PID is in every Tune result); the
driver SIGKILLed mid-fleet is tests/reliability/test_faults.py's.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import ray
import torch
from ray import tune
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import timevec.demo
from tests.components import require
from timevec.config import ExperimentConfig, load_config
from timevec.data.corpus import load_corpus
from timevec.distributed.fleet import (
    RESULT_COLUMNS,
    RunSpec,
    run_fleet,
    run_one,
)
from timevec.distributed.storage import ray_storage
from timevec.store import VectorStore
from timevec.train.loop import prepare_base

TINY = Path(timevec.demo.__file__).parent / "tiny.yaml"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def base_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the tiny config's pretrained base (built once, copied by every test)."""
    root = tmp_path_factory.mktemp("fleet-base") / "store"
    config = load_config(TINY, [f"store.url={root}"])
    prepare_base(config, load_corpus(config.corpus), VectorStore.from_config(config.store))
    return root


def tiny(tmp_path: Path, base_store: Path, *overrides: str) -> ExperimentConfig:
    """The tiny config with its own copy of the base store under ``tmp_path``."""
    root = tmp_path / "store"
    shutil.copytree(base_store, root)
    return load_config(TINY, [f"store.url={root}", "ray.num_cpus=2", *overrides])


@pytest.fixture(scope="module")
def finished(ray_session: str, base_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A whole 4-period fleet (2014–2017), run once for the module's tests."""
    config = tiny(tmp_path_factory.mktemp("fleet"), base_store)
    began = time.perf_counter()
    table = run_fleet(config)
    return config, table, time.perf_counter() - began


def test_fleet_writes_a_complete_vector_per_period(finished) -> None:
    config, table, _seconds = finished
    store = VectorStore.from_config(config.store)
    periods = config.period_list("year")
    assert len(periods) >= 4
    expected = [(task, p) for task in config.tasks for p in periods]
    assert list(table.columns) == RESULT_COLUMNS
    assert [tuple(x) for x in table[["task", "period"]].values.tolist()] == expected
    assert set(table["status"]) == {"done"}, table.to_string()
    assert (table["attempts"] == 1).all() and (table["resumed_from_step"] == 0).all()
    assert (table["steps"] == config.training.steps).all()
    assert table["final_loss"].map(math.isfinite).all() and (table["tokens_per_second"] > 0).all()

    assert sorted(store.list_vectors()) == sorted(expected)
    base = store.get_base()
    for row in table.itertuples():
        vector = store.get_vector(row.task, row.period)
        assert sorted(vector.names) == sorted(base)
        assert all(tuple(vector[n].shape) == tuple(base[n].shape) for n in base)
        assert vector.norm() > 0
        run = store.manifest(row.task, row.period)["run"]
        assert run["task"] == row.task and run["period"] == row.period and run["granularity"] == "year"
        assert run["kind"] == "full" and run["seed"] == config.training.seed
        assert run["steps"] == config.training.steps and run["tokens"] == row.tokens > 0
        assert run["metrics"]["final_loss"] == pytest.approx(row.final_loss)
        assert run["metrics"]["resumed_from_step"] == 0
        assert run["config"]["name"] == config.name
        assert run["training"] == config.training.for_task(row.task, row.granularity).model_dump(mode="json")


def test_tensorboard_event_files_under_the_storage_path(finished) -> None:
    config, table, _seconds = finished
    storage = Path(table.attrs["storage_path"]) / table.attrs["experiment"]
    for row in table.itertuples():
        trial_dirs = list(storage.glob(f"{row.task}_{row.period}_*"))
        assert trial_dirs, f"no trial directory for {row.task} {row.period} under {storage}"
        events = [p for d in trial_dirs for p in d.glob("events.out.tfevents.*")]
        assert events and all(p.stat().st_size > 0 for p in events), f"no TensorBoard events in {trial_dirs}"
        # Each run's loss curve: metric-only reports are coalesced (one per ray.report_interval_s),
        # so at least the first step, every checkpoint step and the last, and only steps of the run.
        curve = EventAccumulator(str(trial_dirs[0]))
        curve.Reload()
        steps = {e.step for e in curve.Scalars("ray/tune/loss")}
        every = config.training.for_task(row.task, row.granularity).checkpoint_every
        assert {1, row.steps, *range(every, row.steps + 1, every)} <= steps <= set(range(1, row.steps + 1)), sorted(steps)
        # ... while the checkpoints, needed only to resume, are gone once the vector is stored.
        assert not [c for d in trial_dirs for c in d.glob("checkpoint_*")]


def test_a_second_submission_trains_nothing(finished) -> None:
    config, _table, _seconds = finished
    store = VectorStore.from_config(config.store)
    created = {(t, p): store.manifest(t, p)["created"] for t, p in store.list_vectors()}
    again = run_fleet(config)
    assert set(again["status"]) == {"skipped"} and (again["attempts"] == 0).all()
    assert {(t, p): store.manifest(t, p)["created"] for t, p in store.list_vectors()} == created


def test_the_same_config_gives_bit_identical_vectors_another_seed_does_not(finished, base_store: Path,
                                                                            tmp_path: Path) -> None:
    """Determinism (CPU, through Ray): retrained from scratch in another store, τ matches to the last bit."""
    config, _table, _seconds = finished
    first = VectorStore.from_config(config.store)
    again = tiny(tmp_path / "again", base_store, "tasks=[lm, classification]", "periods.end='2014'")
    other = tiny(tmp_path / "seed", base_store, "tasks=[lm]", "periods.end='2014'", "training.seed=7")
    run_fleet(again)
    run_fleet(other)
    for task in ("lm", "classification"):
        a, b = first.get_vector(task, "2014"), VectorStore.from_config(again.store).get_vector(task, "2014")
        assert all(torch.equal(a[n], b[n]) for n in a.names), task
    c = VectorStore.from_config(other.store).get_vector("lm", "2014")
    a = first.get_vector("lm", "2014")
    assert not all(torch.equal(a[n], c[n]) for n in a.names)  # the seed is what a replicate varies


class RunsByProcess(tune.Callback):
    """Each finished run's trial process (its PID) and whether it read θ_pre from the store, in completion order."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, bool]] = []
        self.stats_kept: list[int] = []
        self.experiments: list[int] = []  # the trials of each Tune experiment, as it ends

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        self.runs.append((result["pid"], result["base_loaded"]))

    def on_experiment_end(self, trials, **info) -> None:
        self.stats_kept += [len(t.metric_analysis) for t in trials]
        self.experiments.append(len(trials))


def test_a_reused_trial_process_reads_the_base_once(ray_session: str, base_store: Path, tmp_path: Path) -> None:
    """Tune hands a finished trial's process the next run (``reuse_actors``); the process keeps θ_pre
    (timevec/train/cache.py), so only its first run reads it from the store."""
    config = tiny(tmp_path, base_store, "tasks=[lm, classification]", "training.steps=2")
    seen = RunsByProcess()
    table = run_fleet(config, progress=False, callbacks=[seen])
    assert set(table["status"]) == {"done"} and len(seen.runs) == len(table) == 8, table.to_string()
    by_process: dict[int, list[bool]] = {}
    for pid, loaded in seen.runs:
        by_process.setdefault(pid, []).append(loaded)
    assert len(by_process) < len(seen.runs), f"no trial process ran a second run: {seen.runs}"
    assert all(loads == [True] + [False] * (len(loads) - 1) for loads in by_process.values()), by_process
    # the driver keeps no per-metric statistics of finished runs (ForgetFinishedStats), only their last result
    assert seen.stats_kept == [0] * 8


def test_a_fleet_larger_than_runs_per_experiment_runs_in_parts(ray_session: str, base_store: Path, tmp_path: Path) -> None:
    """Eight runs, at most three an experiment: three Tune experiments (2, 3, 3) one after the other (so Tune's driver
    never holds more than three trials), every vector stored, each part's processes reading θ_pre once."""
    config = tiny(tmp_path, base_store, "tasks=[lm, classification]", "training.steps=2", "ray.runs_per_experiment=3")
    seen = RunsByProcess()
    table = run_fleet(config, progress=False, callbacks=[seen])
    assert set(table["status"]) == {"done"} and len(table) == 8, table.to_string()
    assert seen.experiments == [2, 3, 3]
    store = VectorStore.from_config(config.store)
    assert all(store.has_vector(r.task, r.period) for r in table.itertuples())
    assert sum(loaded for _, loaded in seen.runs) == len({pid for pid, _ in seen.runs})  # one read per process


class KillTrialOnce(tune.Callback):
    """SIGKILLs the real trial process once, when the driver processes the result of step ``at``.

    ``tune.report`` blocks until the driver has processed the result, and the trial reports every
    step in order before it writes its vector: when this runs for step ``at`` the run cannot be
    finished, and the newest checkpoint Tune has registered is the last one before ``at``.
    """

    def __init__(self, at: int) -> None:
        self.at = at
        self.killed: dict | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.killed is None and result.get("run_status") == "training" and result.get("step") == self.at:
            self.killed = {"run": trial.config["run"], "pid": result["pid"], "step": result["step"]}
            os.kill(result["pid"], signal.SIGKILL)


def test_a_killed_trial_resumes_from_its_checkpoint(ray_session: str, base_store: Path, tmp_path: Path) -> None:
    config = tiny(
        tmp_path, base_store, "tasks=[lm]",
        "periods.end='2015'", "training.steps=12", "training.checkpoint_every=4", "ray.max_concurrent_runs=1",
        "ray.report_interval_s=0",  # every step reported: the callback must see step 6
    )
    killer = KillTrialOnce(at=6)
    table = run_fleet(config, callbacks=[killer])
    assert killer.killed is not None, "the callback never saw step 6"
    assert set(table["status"]) == {"done"}, table.to_string()
    killed = RunSpec(**killer.killed["run"])
    row = table.set_index("period").loc[killed.period]
    assert row["attempts"] == 2 and row["resumed_from_step"] == 4  # the step-4 checkpoint, not step 0
    others = table[table["period"] != killed.period]
    assert (others["attempts"] == 1).all() and (others["resumed_from_step"] == 0).all()
    store = VectorStore.from_config(config.store)
    run = store.manifest(killed.task, killed.period)["run"]
    assert run["metrics"]["resumed_from_step"] == 4 and run["steps"] == 12

    # Resuming is exact: the data order is a function of (seed, step) and the optimizer and
    # scheduler state are restored, so the result matches an uninterrupted run of the same period.
    threads = torch.get_num_threads()
    torch.set_num_threads(config.ray.torch_threads)
    try:
        reference = run_one(config, killed, load_corpus(config.corpus), store, write=False)
    finally:
        torch.set_num_threads(threads)
    assert row["tokens"] == reference["tokens"]
    assert row["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-5)


def test_torch_trainer_runs(ray_session: str, base_store: Path, tmp_path: Path) -> None:
    """``workers_per_run=1``: each trial fits a Train V2 ``TorchTrainer`` (the multi-device path)."""
    config = tiny(tmp_path, base_store, "tasks=[lm]", "periods.end='2014'", "ray.workers_per_run=1")
    table = run_fleet(config)
    assert set(table["status"]) == {"done"}, table.to_string()
    store = VectorStore.from_config(config.store)
    base = store.get_base()
    for period in ("2014",):
        vector = store.get_vector("lm", period)
        assert sorted(vector.names) == sorted(base) and vector.norm() > 0
        run = store.manifest("lm", period)["run"]
        assert run["workers"] == 1 and run["steps"] == config.training.steps
        # The Train run is named after the run (stable across submissions, so Train V2 can restore
        # it); its checkpoints are deleted once the vector is stored.
        train_dir = Path(table.attrs["storage_path"]) / f"{table.attrs['experiment']}-lm_{period}"
        assert run["ray"]["train_run"] == train_dir.name and train_dir.is_dir()
        assert not list(train_dir.glob("checkpoint_*"))


@ray.remote(num_cpus=0)
def _worker_env(name: str) -> str | None:
    return os.environ.get(name)


def test_fleet_on_s3_resumes_from_s3_checkpoints(ray_session: str, base_store: Path, s3_server, tmp_path: Path) -> None:
    """Store, Tune checkpoints and TensorBoard logs on a real S3 endpoint (SeaweedFS on loopback)."""
    if ray.get(_worker_env.remote("AWS_ACCESS_KEY_ID")) != os.environ.get("AWS_ACCESS_KEY_ID"):
        require("s3", "Ray was started before the S3 server: its workers lack the server's keys")
    import pyarrow.fs

    from timevec.distributed.checkpoints import earlier_checkpoint
    from timevec.train.run import RunJob

    url = s3_server.url(f"fleet-{tmp_path.name}")
    local = VectorStore(str(base_store))
    VectorStore(url, s3_server.storage_options).init(local.base_id, local.get_base(), dtype=local.dtype)
    config = load_config(TINY, [
        f"store.url={url}", f"store.storage_options.endpoint_url={s3_server.endpoint_url}", "tasks=[lm]",
        "periods.end='2015'", "training.steps=12", "training.checkpoint_every=4", "ray.max_concurrent_runs=1",
        "ray.report_interval_s=0",  # every step reported: the callback must see step 6
    ])  # fmt: skip
    store = VectorStore.from_config(config.store)
    assert "endpoint_override=" in store.ray_storage_path()
    killer = KillTrialOnce(at=6)
    table = run_fleet(config, callbacks=[killer], keep_checkpoints=True)
    assert set(table["status"]) == {"done"}, table.to_string()
    killed = RunSpec(**killer.killed["run"])
    row = table.set_index("period").loc[killed.period]
    assert row["attempts"] == 2 and row["resumed_from_step"] == 4
    assert store.list_vectors() == [("lm", "2014"), ("lm", "2015")]

    storage = table.attrs["storage_path"]
    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    files = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{table.attrs['experiment']}", recursive=True))
    assert any(f.base_name.startswith("events.out.tfevents") for f in files)
    # A later submission would find the run's newest checkpoint on S3 (the final one, step 12).
    job = RunJob(config, store, load_corpus(config.corpus), killed)
    found = earlier_checkpoint(ray_storage(config, store), table.attrs["experiment"], killed, job.fingerprint)
    assert found is not None and found[0]["step"] == 12 and found[1]["step"] == 12
