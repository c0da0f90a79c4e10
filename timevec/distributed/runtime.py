"""Connecting to Ray: an existing cluster (``ray job submit``, RAY_ADDRESS) or a local one."""

from __future__ import annotations

import hashlib
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
    cluster; on a laptop, the first stage starts a local cluster and later stages reuse it. Then
    :func:`keep_credentials_out_of_trial_envs`.
    """
    if not ray.is_initialized():
        _start_or_attach(cfg)
    keep_credentials_out_of_trial_envs()


def _start_or_attach(cfg: RayConfig) -> None:
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    log.info("starting a local Ray cluster with %s CPUs", cfg.num_cpus or "all")
    context = ray.init(
        address="local",  # a cluster of our own, not one a `ray start` recorded in /tmp/ray/ray_current_cluster
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.dashboard,
        log_to_driver=_verbose,
        logging_level=logging.INFO if _verbose else logging.ERROR,
    )
    if cfg.dashboard and context.dashboard_url:
        log.info("Ray dashboard: http://%s", context.dashboard_url)


# What Tune copies from the driver's environment into every trial actor's runtime_env
# (ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE); Ray's runtime_env_agent.log prints runtime
# envs in plain text at INFO, so the keys would land in the session's logs.
AWS_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")
_checked: dict[tuple, bool] = {}


def _digests(names: tuple[str, ...]) -> dict[str, str | None]:
    """SHA-256 of each variable's value in this process's environment (never the value itself)."""
    return {n: hashlib.sha256(os.environ[n].encode()).hexdigest() if n in os.environ else None for n in names}


@ray.remote(num_cpus=0, max_retries=0)
def _worker_digests(names: tuple[str, ...]) -> dict[str, str | None]:
    return _digests(names)


def keep_credentials_out_of_trial_envs() -> bool:
    """Keep the driver's AWS keys out of the runtime envs Tune gives its trials, where the nodes already hold them.

    Tune copies ``AWS_*`` variables from the driver's environment into each trial actor's
    ``runtime_env`` — redundant where every node was started with the same keys (its workers inherit
    them: the standard AWS chain, as ``cluster/local.sh`` and a local ``ray.init`` do), and harmful,
    because Ray's runtime-env agent logs that runtime env in plain text. A zero-CPU task on each alive
    node compares SHA-256 digests of the keys (never the keys); where all nodes agree, the names leave
    Tune's propagation list and trials take the keys from their node. Where a node lacks them, Tune's
    copy stays (trials need it) and a warning says that Ray's logs will hold them. Returns True when
    no key travels in a runtime env. Checked once per process and set of keys.
    """
    present = tuple(n for n in AWS_CREDENTIAL_VARS if n in os.environ)
    if not present:
        return True
    mine = _digests(present)
    key = tuple(sorted(mine.items()))
    if key in _checked:
        return _checked[key]
    from ray.tune.execution import class_cache
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = [_worker_digests.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(present)
            for node in nodes]
    same = all(theirs == mine for theirs in ray.get(refs))
    if same:
        class_cache.ENV_VARS_TO_PROPAGATE.difference_update(present)
    else:
        log.warning("the Ray nodes were not started with this driver's AWS keys (%s): Tune passes them to its trials "
                    "in their runtime env, which Ray's runtime_env_agent.log prints; start the nodes with the keys in "
                    "their environment (cluster/README.md) to keep them out", ", ".join(present))
    _checked[key] = same
    return same


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
