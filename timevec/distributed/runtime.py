"""Connecting to Ray: an existing cluster (``ray job submit``, RAY_ADDRESS) or a local one."""

from __future__ import annotations

import hashlib
import logging
import math
import os
from urllib.parse import urlsplit

import ray
import torch

from timevec.config import ConfigError, ExperimentConfig, RayConfig, StoreConfig
from timevec.distributed.verbosity import is_verbose
from timevec.store import VectorStore
from timevec.train.devices import gpu_device
from timevec.train.progress import log as progress_log

log = logging.getLogger(__name__)

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
        log_to_driver=is_verbose(),
        logging_level=logging.INFO if is_verbose() else logging.ERROR,
    )
    if cfg.dashboard and context.dashboard_url:
        progress_log.info("Ray dashboard: http://%s", context.dashboard_url)  # where to look: shown without -v


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
    needs = {"CPU": request.get("CPU", 0.0), "GPU": request.get("GPU", 0.0), "memory": request.get("memory", 0.0)}
    if any(all(node.get(res, 0.0) >= amount for res, amount in needs.items()) for node in nodes):
        return
    best = {res: max((node.get(res, 0.0) for node in nodes), default=0.0) for res in needs}
    raise ConfigError(
        f"{what} asks for {needs['CPU']:g} CPU, {needs['GPU']:g} GPU and {needs['memory'] / MIB:.0f} MiB of memory, but "
        f"the largest node of the cluster has {best['CPU']:g} CPU, {best['GPU']:g} GPU and {best['memory'] / MIB:.0f} MiB: "
        "lower those ray.* settings (memory: ray.memory_per_run_mb, ray.eval_actor_memory_mb), or set "
        "ray.autoscaling: true if the cluster adds nodes on demand"
    )


MIB = 2**20
#: A Ray worker's memory before it loads a model: Python, torch, transformers, Ray and timevec
#: imported (peak RSS 555 MiB measured on 2026-12-06 with torch 2.13 CPU, Ray 2.60), rounded up.
PROCESS_BYTES = 600 * MIB


def base_bytes(store: VectorStore) -> int:
    """θ_pre's bytes as a worker holds it (fp32), from the store's shapes; 0 before the base is stored."""
    if not store.exists():
        return 0
    return 4 * sum(math.prod(shape) for shape in store.shapes.values())


def eval_memory(cfg: RayConfig, base: int, vectors: int = 1) -> int:
    """Bytes an evaluation actor (or analogy trial) declares to Ray (``memory=``), so that Ray places
    no more of them on a node than its memory holds: the process, θ_pre, and beyond it either the
    cap ``ray.eval_actor_memory_mb`` or ``vectors`` vectors plus the saved bytes a patch restores."""
    beyond = cfg.eval_actor_memory_mb * MIB if cfg.eval_actor_memory_mb is not None else (vectors + 1) * base
    return int(PROCESS_BYTES + base + beyond)


def run_memory(config: ExperimentConfig, base: int) -> int:
    """Bytes a fine-tune run's process declares (``memory=``; each Train worker holds a replica):
    ``ray.memory_per_run_mb`` when set, else the process, the model, the run's copy of θ_pre, and
    for a full fine-tune its gradients and AdamW's two moments (5 × θ_pre; LoRA: 2 ×). Activations
    are not counted: a run with long sequences or large batches sets ``ray.memory_per_run_mb``."""
    if config.ray.memory_per_run_mb is not None:
        return int(config.ray.memory_per_run_mb * MIB)
    copies = 2 if config.training.lora is not None else 5
    return int(PROCESS_BYTES + copies * base)


def node_label() -> str:
    """This worker's node as a person finds it: host name, IP and Ray's node id (first 8 hex digits)."""
    import socket

    ctx = ray.get_runtime_context()
    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node {ctx.get_node_id()[:8]})"


def worker_device(cfg: RayConfig, gpus: float, setting: str) -> torch.device:
    """:func:`~timevec.train.devices.gpu_device` inside a Ray worker, naming its node."""
    return gpu_device(gpus, setting, cfg.allow_cpu_fallback, node_label() if gpus > 0 else None)


def eval_actor_device(cfg: RayConfig) -> torch.device:
    """An evaluation actor's or trial's device (:func:`worker_device`); on the CPU with ``ray.torch_threads``."""
    device = worker_device(cfg, cfg.gpus_per_eval_actor, "ray.gpus_per_eval_actor")
    if device.type == "cpu":
        torch.set_num_threads(cfg.torch_threads)
    return device


def _probe_device(cfg: RayConfig, gpus: float, setting: str) -> str:
    return str(worker_device(cfg, gpus, setting))


#: (node id, GPUs, setting) already probed by this driver: a study probes each node once per request.
_PROBED: set[tuple[str, float, str]] = set()
PROBE_TIMEOUT_S = 120.0


def check_gpus(cfg: RayConfig, gpus: float, setting: str) -> None:
    """Refuse a study whose GPU work would run on the CPU: before a stage's first run or actor
    starts, one task per alive GPU node, given ``gpus`` GPUs like the work, asks torch for a CUDA
    device (:class:`~timevec.train.devices.NoCudaDevice`, exit status 2, names the node,
    ``CUDA_VISIBLE_DEVICES`` and the torch build). Nothing is probed for CPU-only work or with
    ``ray.allow_cpu_fallback: true``; a node whose GPUs stay busy past :data:`PROBE_TIMEOUT_S` is
    left to the work's own check (:func:`worker_device`, the same refusal when it starts).
    """
    if gpus <= 0 or cfg.allow_cpu_fallback:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(_probe_device)
    pending = {}
    for node in ray.nodes():
        if not node.get("Alive") or node.get("Resources", {}).get("GPU", 0.0) < gpus:
            continue
        key = (node["NodeID"], float(gpus), setting)
        if key in _PROBED:
            continue
        ref = probe.options(
            num_cpus=0, num_gpus=gpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(cfg, gpus, setting)
        pending[ref] = key
    if not pending:
        return
    ready, late = ray.wait(list(pending), num_returns=len(pending), timeout=PROBE_TIMEOUT_S)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), ConfigError) else None
            if cause is not None:
                raise cause from None
            raise
        _PROBED.add(pending[ref])
    for ref in late:
        ray.cancel(ref, force=True)
        log.warning("no GPU of node %s came free within %.0f s to check its CUDA device; each run checks its own",
                    pending[ref][0][:8], PROBE_TIMEOUT_S)


def is_local_url(url: str) -> bool:
    return urlsplit(url).scheme in ("", "file", "local")


def check_store_reach(store: StoreConfig, cfg: RayConfig) -> None:
    """Refuse a local-path store (or ``ray.storage_path``) on a cluster of more than one alive node.

    Each node would write its runs' vectors and checkpoints to its own disk: the driver and the
    other nodes would never see them. An object store (``s3://``) is reached from every node; a
    filesystem mounted at the same path on every node is declared with ``store.shared: true``.
    """
    if store.shared:
        return
    local = [(name, url) for name, url in (("store.url", store.url), ("ray.storage_path", cfg.storage_path))
             if url is not None and is_local_url(url)]
    if not local:
        return
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) <= 1:
        return
    name, url = local[0]
    raise ConfigError(
        f"{name} {url} is a local path, but the Ray cluster has {len(alive)} alive nodes: each node would write "
        "its runs to its own disk. Use a store every node reaches: an s3:// URL (store.url: s3://bucket/prefix, with "
        "store.storage_options for a custom endpoint), or, for a filesystem mounted at the same path on every node "
        "(NFS, a cluster filesystem), set store.shared: true"
    )
