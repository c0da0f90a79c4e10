"""A local Ray cluster for the benchmarks, retried: on a machine loaded far past its cores the raylet
can miss Ray's fixed 30 s registration deadline ("The current node timed out during startup")."""

from __future__ import annotations

import logging
import time

import ray

log = logging.getLogger(__name__)


def start_ray(num_cpus: int, attempts: int = 4) -> float:
    """``ray.init`` a local cluster of ``num_cpus`` CPUs; returns the seconds the successful attempt took."""
    for attempt in range(1, attempts + 1):
        began = time.perf_counter()
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return time.perf_counter() - began
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
            if attempt == attempts or "timed out during startup" not in str(exc):
                raise
            log.warning("ray.init attempt %d timed out (machine load); retrying", attempt)
            ray.shutdown()
    raise AssertionError("unreachable")
