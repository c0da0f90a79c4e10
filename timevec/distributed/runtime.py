"""Connecting to Ray: an existing cluster (``ray job submit``, RAY_ADDRESS) or a local one."""

from __future__ import annotations

import logging
import os

import ray

from timevec.config import ConfigError, RayConfig

log = logging.getLogger(__name__)

_verbose = False


def set_verbose(verbose: bool) -> None:
    """Show Ray's and Tune's own output (worker logs, checkpoint lines, Tune's tables) — ``timevec -v``.

    Quiet by default: a local run's terminal then holds timevec's progress lines and the findings,
    while every worker log stays in Ray's session folder (``/tmp/ray/session_latest/logs``).
    A job on a cluster always forwards worker logs: they are its only console.
    """
    global _verbose
    _verbose = bool(verbose)
    if not _verbose:
        # Tune's new output engine prints its experiment box and a TensorBoard hint into Ray's session
        # folder whatever RunConfig(verbose=0) says; the legacy engine at verbosity 0 prints nothing.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


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
    context = ray.init(
        address="local",  # a NEW local cluster: never attach to another user's `ray start` cluster on this machine
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.dashboard,
        log_to_driver=_verbose,
        logging_level=logging.INFO if _verbose else logging.ERROR,
    )
    if cfg.dashboard and context.dashboard_url:
        log.info("Ray dashboard: http://%s", context.dashboard_url)


def check_fits(cfg: RayConfig, request: dict[str, float], what: str) -> None:
    """Fail fast when no node of the cluster can ever host one unit of work.

    Ray would otherwise keep such a trial or actor pending forever (Tune only warns). On an
    autoscaling cluster (``ray.autoscaling: true``) nodes appear on demand, so nothing is checked.
    ``request`` maps config field names (``gpus_per_run`` …) to (Ray resource, amount) pairs.
    """
    if cfg.autoscaling:
        return
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    needs = {"CPU": request.get("CPU", 0.0), "GPU": request.get("GPU", 0.0)}
    if any(all(node.get(res, 0.0) >= amount for res, amount in needs.items()) for node in nodes):
        return
    best = {res: max((node.get(res, 0.0) for node in nodes), default=0.0) for res in needs}
    raise ConfigError(
        f"{what} asks for {needs['CPU']:g} CPU and {needs['GPU']:g} GPU, but the largest node of the cluster has "
        f"{best['CPU']:g} CPU and {best['GPU']:g} GPU: lower those ray.* settings, or set ray.autoscaling: true "
        "if the cluster adds nodes on demand"
    )
