"""Ray clusters of several nodes on this one machine, for tests: Ray's own ``ray.cluster_utils.Cluster``
(each node its own raylet process, with its own resources: CPUs, fake GPUs), the study run on it
as a user runs it (``python -m timevec`` with RAY_ADDRESS), and Ray's state API read back."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from timevec.store.local_s3 import free_ports

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "timevec" / "demo" / "tiny.yaml"


def start_cluster(nodes: list[dict], attempts: int = 3) -> object:
    """A ``ray.cluster_utils.Cluster`` of ``nodes`` (head first), not joined by this process.

    Its own temp dir (short: Ray's socket paths must fit in 107 bytes) and dashboard port; the
    dashboard serves the state API. ``stop_cluster`` stops every node process it started. Ray
    gives a raylet 30 s to register; on a loaded machine that can pass, so a cluster whose start
    failed is stopped and started again (``attempts`` in all).
    """
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")  # what Ray's own message advises under load
    # Ray's memory monitor kills workers when the MACHINE nears its memory limit: on a shared machine
    # that is other people's processes; these tests do not test it (Ray's memory resource is theirs)
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    for attempt in range(1, attempts + 1):
        (dashboard_port,) = free_ports(1)
        temp = tempfile.mkdtemp(prefix="tv-ray-", dir="/tmp")
        head = {"temp_dir": temp, "include_dashboard": True, "dashboard_port": dashboard_port, **nodes[0]}
        cluster = None
        try:
            cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
            cluster.tv_temp_dir = temp
            for node in nodes[1:]:
                cluster.add_node(**node)
            cluster.wait_for_nodes()
            return cluster
        except Exception:
            if cluster is not None:
                stop_cluster(cluster)
            else:
                shutil.rmtree(temp, ignore_errors=True)
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def stop_cluster(cluster) -> None:
    """Stop the cluster's node processes (its own, by their handles) and remove its temp dir."""
    try:
        cluster.shutdown()
    finally:
        shutil.rmtree(cluster.tv_temp_dir, ignore_errors=True)


def timevec_cli(address: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "timevec.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


STATE_QUERY = """
import json, ray
from ray.util.state import list_actors
ray.init(address={address!r}, log_to_driver=False)
print(json.dumps([dict(cls=a.class_name, node=a.node_id, pid=a.pid, res=a.required_resources)
                  for a in list_actors(address={address!r}, detail=True, limit=10000, raise_on_missing_output=False)]))
"""


def actors(address: str) -> list[dict]:
    """Every actor the cluster has run (alive or dead), from Ray's state API."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", STATE_QUERY.format(address=address)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def demand(resources: dict, name: str) -> float:
    """How much of resource ``name`` an actor holds: its plain request, or, in a placement group
    (Tune trials, Train workers), its bundle's ``<name>_group_<group id>`` (Ray also lists the same
    amount under ``<name>_group_<bundle index>_<group id>``)."""
    if name in resources:
        return float(resources[name])
    pattern = re.compile(rf"^{re.escape(name)}_group_[0-9a-f]+$")
    return float(sum(v for k, v in resources.items() if pattern.match(k)))

