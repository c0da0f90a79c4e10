"""Connecting to Ray: an existing cluster (``ray job submit``, RAY_ADDRESS) or a local one."""

from __future__ import annotations

import logging
import os

import ray

from timevec.config import RayConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RayConfig) -> None:
    """Attach to the configured/ambient cluster, or start a local one sized by ``cfg.num_cpus``.

    Inside a ``ray job submit`` job RAY_ADDRESS is set and ``ray.init()`` attaches to that
    cluster; on a laptop, the first stage starts a local cluster and later stages reuse it.
    """
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    log.info("starting a local Ray cluster with %s CPUs", cfg.num_cpus or "all")
    ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)
