"""Experiment trackers beside TensorBoard: ``ray.loggers: [mlflow]`` adds Ray Tune's MLflow callback.

TensorBoard logs are always written (Tune's TBX logger; :class:`~timevec.distributed.fleet_callbacks.LossCurves`
for the fleet). With ``mlflow`` in ``ray.loggers``, every Tune experiment timevec runs — each
fine-tune fleet (one MLflow run per (task, period) with its loss curve by step) and each α search
(one run per trial with its validation/test values and α's) — is also recorded by Ray's own
``MLflowLoggerCallback`` (``ray.air.integrations.mlflow``) under an MLflow experiment of the same
name. Tune callbacks run in the driver, so a ``file:`` tracking URI is a folder on the driver's
machine: the default is ``<store>/mlruns`` for a local store; an ``s3://`` store needs
``ray.mlflow_tracking_uri`` (a tracking server, or a local folder). Open it with
``mlflow ui --backend-store-uri <uri>`` (the UI needs the full ``mlflow`` package).
"""

from __future__ import annotations

import os
from typing import Any

from timevec.config import ConfigError, ExperimentConfig
from timevec.errors import require_extra

__all__ = ["mlflow_tracking_uri", "tracker_callbacks"]


def mlflow_tracking_uri(config: ExperimentConfig) -> str:
    """``ray.mlflow_tracking_uri``, or ``file://<store>/mlruns`` for a local store."""
    if config.ray.mlflow_tracking_uri:
        return config.ray.mlflow_tracking_uri
    url = config.store.url
    if "://" in url and not url.startswith("file://"):
        raise ConfigError(f"ray.loggers: [mlflow] with store.url {url!r}: set ray.mlflow_tracking_uri "
                          "(MLflow's file store is a local folder; or a tracking server URL)")
    return "file://" + os.path.join(os.path.abspath(os.path.expanduser(url.removeprefix("file://"))), "mlruns")


def tracker_callbacks(config: ExperimentConfig, experiment: str) -> list[Any]:
    """The Tune callbacks of ``ray.loggers`` for one Tune experiment (empty when none is configured)."""
    if "mlflow" not in config.ray.loggers:
        return []
    require_extra("mlflow", "mlflow", "ray.loggers: [mlflow]")
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = mlflow_tracking_uri(config)
    if uri.startswith("file:"):
        # MLflow ≥ 3.x refuses its file store unless this is set ("maintenance mode"); the file store is what
        # needs no server and no database, so keep it (a sqlite:// or http:// URI is the way out)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment,
                                 tags={"timevec.study": config.name}, save_artifact=False)]
