"""`ray.loggers: [mlflow]`: Ray Tune's MLflow callback records every fine-tune's loss curve and every
α-search trial in a local MLflow file store (read back with MLflow's own client)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.components import require
from tests.stores import build_store, tiny_config
from timevec.config import ConfigError
from timevec.distributed.analogy import run_analogy
from timevec.distributed.fleet import run_fleet
from timevec.distributed.tracking import mlflow_tracking_uri

try:
    import mlflow  # the `mlflow` extra (mlflow-skinny)
except ImportError as exc:
    require("mlflow", f"mlflow not importable: {exc}", allow_module_level=True)


def _runs(uri: str, experiment: str) -> list:
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    return client, client.search_runs([found.experiment_id])


@pytest.mark.slow  # a fleet and an α search on a local Ray: ≈ 3 min on the loaded 2-core machine
def test_fine_tune_curves_and_alpha_trials_land_in_a_local_mlflow_store(ray_session, tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "store", [
        "periods.start='2016'", "periods.end='2017'", "tasks=[lm]", "training.steps=4", "ray.report_interval_s=0",
        "ray.loggers=[mlflow]", "evaluation.max_examples=4",
    ])
    uri = mlflow_tracking_uri(config)
    assert uri == f"file://{tmp_path / 'store' / 'mlruns'}"
    run_fleet(config)
    client, runs = _runs(uri, f"{config.name}-finetune")
    assert len(runs) == 2  # one MLflow run per (task, period)
    for run in runs:
        curve = client.get_metric_history(run.info.run_id, "loss")
        assert len(curve) >= 2 and len({m.step for m in curve}) == len(curve)  # a curve, by step

    analogy = tiny_config(tmp_path / "analogy", [
        "periods.start='2016'", "periods.end='2017'", "tasks=[lm, classification]", "evaluation.max_examples=4",
        "analogy.alpha1=[1.0]", "analogy.alpha2=[0.1]", "analogy.alpha3=[0.1, 0.3]", "analogy.max_concurrent_trials=1",
        "ray.loggers=[mlflow]", f"ray.mlflow_tracking_uri=file://{tmp_path / 'tracking'}",
    ])
    build_store(analogy, {("classification", "2016"): 1, ("lm", "2016"): 2, ("lm", "2017"): 3}, scale=0.3)
    run_analogy(analogy)
    client = mlflow.tracking.MlflowClient(tracking_uri=f"file://{tmp_path / 'tracking'}")
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(experiments) == 1
    trials = client.search_runs([experiments[0].experiment_id])
    assert len(trials) == 2  # one run per grid point
    assert all("validation" in t.data.metrics and "test" in t.data.metrics for t in trials)


def test_mlflow_needs_a_tracking_uri_beside_an_s3_store(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, ["ray.loggers=[mlflow]", "store.url=s3://bucket/study"])
    with pytest.raises(ConfigError, match="ray.mlflow_tracking_uri"):
        mlflow_tracking_uri(config)
