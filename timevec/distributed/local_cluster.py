"""A real multi-node Ray cluster on this machine: a head and worker nodes as separate `ray start` processes.

Ray's documented way to run several nodes on one host (what ``ray.cluster_utils.Cluster`` does in
process): one ``ray start --head`` and one ``ray start --address=<head>`` per worker node, each
node with its own resources, its own temp dir (``--temp-dir`` "can be specified per node") and
its own free ports (GCS, dashboard, client server, dashboard agent; the raylet's ports are Ray's
random ones). Every node runs ``ray start --block`` in a SESSION AND PROCESS GROUP OF ITS OWN
(``start_new_session``), so one node can be killed as a real node dies — ``SIGKILL`` to its
process group: the raylet, its workers, the node's agents — while the others go on, and nothing
else on the machine (other people's Ray clusters) is touched. There is never a ``ray stop``.

Every node is started with the same environment, as a real cluster's nodes must be: PYTHONPATH
(the checkout holding this package, :data:`CHECKOUT`, also the nodes' working directory), the
running Python's ``bin`` first on PATH, the S3 credentials of the store
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` from :mod:`timevec.store.local_s3`), no auth
token. The head is told to notice a dead node fast (GCS health checks every 0.5 s, dead after 4
misses: ≈ 2 s instead of Ray's ≈ 15 s default), which only shortens the tests.

    cluster = MultiNodeCluster(head_cpus=0, worker_cpus=[1, 1])
    cluster.start()                   # RayCliMissing without the `ray` executable
    ...  # ray job submit --address cluster.dashboard_url ...
    cluster.kill_node(1)              # a worker node dies
    cluster.add_worker(1)             # a replacement joins (what an autoscaler would do)
    cluster.stop()

Nothing here is part of a study: it is the cluster the tests (``tests/multinode.py``: the
``multinode_cluster`` fixture's context manager and its component check) and
``bench/multinode.py`` start, kept in the library as Ray keeps ``ray.cluster_utils`` in its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from timevec.errors import TimevecError
from timevec.store.local_s3 import free_ports

#: the checkout holding this package: the nodes' working directory and PYTHONPATH, what jobs are submitted from
CHECKOUT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RAY_BIN = str(VENV_BIN / "ray")  # the `ray` executable of the running Python's environment
START_TIMEOUT_S = 120.0


class RayCliMissing(TimevecError, RuntimeError):
    """There is no ``ray`` executable next to the running Python (the ``ray`` package installs it; exit status 2)."""

    exit_status = 2


@dataclass
class Node:
    """One ``ray start --block`` process (the leader of its own process group) and what Ray calls it."""

    name: str
    process: subprocess.Popen
    temp_dir: Path
    log_path: Path
    node_id: str | None = None  # Ray's node id (hex), once it registered

    @property
    def pgid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` is still alive."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every node (and so every task, actor and job driver on it) starts with."""
    env = os.environ.copy()  # holds the S3 keys when s3_server started first
    env["PATH"] = str(VENV_BIN) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(CHECKOUT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_DEDUP_LOGS"] = "0"
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # Ray's memory monitor judges the whole HOST's memory: on a machine shared with other work it kills
    # this cluster's processes (a job's supervisor, seen at 95 %) for memory others use. Off here.
    env["RAY_memory_monitor_refresh_ms"] = "0"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


@dataclass
class MultiNodeCluster:
    """A head and worker nodes on loopback; see the module docstring."""

    head_cpus: int = 0
    worker_cpus: list[int] = field(default_factory=lambda: [1, 1])
    env_extra: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tvmn-", dir="/tmp")))
    nodes: list[Node] = field(default_factory=list)
    gcs_address: str = ""
    dashboard_url: str = ""

    @property
    def env(self) -> dict[str, str]:
        return node_env(self.env_extra)

    def _popen(self, name: str, args: list[str], env: dict[str, str]) -> Node:
        # Short (Ray's socket paths must stay under ~107 bytes) and fresh for each start of a node.
        temp_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        log_path = temp_dir.with_suffix(".log")
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [RAY_BIN, "start", "--block", "--temp-dir", str(temp_dir), "--disable-usage-stats", *args],
                cwd=CHECKOUT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session and process group: kill_node ends this node only
            )  # fmt: skip
        node = Node(name, process, temp_dir, log_path)
        self.nodes.append(node)
        return node

    def start(self) -> MultiNodeCluster:
        """Start the head, then every worker node; return when Ray lists them all alive.

        Raises :class:`RayCliMissing` (and removes :attr:`root`) when there is no ``ray`` executable at
        :data:`RAY_BIN`; a node that does not come up stops every node started and re-raises.
        """
        if not Path(RAY_BIN).exists():
            self.stop()
            raise RayCliMissing(f"no ray CLI at {RAY_BIN}")
        port, dashboard_port, client_port, agent_port = free_ports(4)
        env = self.env
        # Notice a SIGKILLed node in ≈ 2 s (defaults: every 3 s, 5 misses).
        env.update(RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="4",
                   RAY_health_check_timeout_ms="1000")  # fmt: skip
        head = self._popen("head", [
            "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--dashboard-port", str(dashboard_port),
            "--dashboard-host", "127.0.0.1",
            "--include-dashboard", "true", "--ray-client-server-port", str(client_port),
            "--dashboard-agent-listen-port", str(agent_port), "--num-cpus", str(self.head_cpus), "--num-gpus", "0",
        ], env)  # fmt: skip
        self.gcs_address = f"127.0.0.1:{port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        try:
            self._wait_for(lambda: self._dashboard_answers(), head, "the head's job API")
            head.node_id = self._wait_node_id(head)
            for cpus in self.worker_cpus:
                self.add_worker(cpus)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, num_cpus: int, resources: dict[str, float] | None = None, attempts: int = 3) -> Node:
        """Start one more worker node; return when Ray lists it alive.

        On a loaded machine ``ray start`` can give up on the GCS (``Deadline Exceeded`` after 30 s):
        that node's process group is ended and it is started again, up to ``attempts`` times.
        """
        for attempt in range(attempts):
            try:
                return self._add_worker(num_cpus, resources)
            except RuntimeError:
                failed = self.nodes.pop()
                _kill_group(failed.pgid)
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _add_worker(self, num_cpus: int, resources: dict[str, float] | None) -> Node:
        (agent_port,) = free_ports(1)
        args = ["--address", self.gcs_address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--num-gpus", "0",
                "--dashboard-agent-listen-port", str(agent_port)]  # fmt: skip
        if resources:
            import json

            args += ["--resources", json.dumps(resources)]
        node = self._popen(f"w{len(self.nodes)}", args, self.env)  # its temp dir: a fresh one per try
        node.node_id = self._wait_node_id(node)
        return node

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if n.name != "head"]

    def kill_node(self, node: Node) -> None:
        """A node dies: SIGKILL to its whole process group (the raylet, its workers, its agents)."""
        _kill_group(node.pgid)
        node.process.wait(timeout=30)

    def alive_node_ids(self) -> set[str]:
        from ray.util.state import list_nodes

        return {n.node_id for n in list_nodes(address=self.dashboard_url) if n.state == "ALIVE"}

    def wait_dead(self, node: Node, timeout: float = 60.0) -> float:
        """Seconds until Ray no longer lists ``node`` alive."""
        began = time.monotonic()
        while node.node_id in self.alive_node_ids():
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"Ray still lists node {node.name} alive {timeout:.0f} s after it was killed")
            time.sleep(0.25)
        return time.monotonic() - began

    def stop(self) -> None:
        """End every node (workers first, then the head): SIGTERM to each group, SIGKILL what is left."""
        for node in reversed(self.nodes):
            if group_alive(node.pgid):
                _kill_group(node.pgid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in reversed(self.nodes):
            while group_alive(node.pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            _kill_group(node.pgid)
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def _dashboard_answers(self) -> bool:
        try:
            urllib.request.urlopen(self.dashboard_url + "/api/jobs/", timeout=3)
            return True
        except OSError:
            return False

    def _wait_for(self, ready, node: Node, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if not node.alive():
                raise RuntimeError(f"ray start of node {node.name} exited:\n{node.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready after {START_TIMEOUT_S:.0f} s:\n{node.log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def _wait_node_id(self, node: Node) -> str:
        """The id of the node whose raylet is ``node``'s (matched by the raylet's temp dir, via the state API)."""
        from ray.util.state import list_nodes

        found: list[str] = []
        known = {n.node_id for n in self.nodes if n.node_id}

        def ready() -> bool:
            try:
                alive = [n for n in list_nodes(address=self.dashboard_url, detail=True) if n.state == "ALIVE"]
            except Exception:  # noqa: BLE001 - the state API is not up yet
                return False
            for n in alive:
                if n.node_id in known:
                    continue
                if (node.name == "head") == bool(n.is_head_node):
                    if node.name == "head" or self._raylet_under(node, n.node_id):
                        found.append(n.node_id)
                        return True
            return False

        self._wait_for(ready, node, f"node {node.name}")
        return found[0]

    @staticmethod
    def _raylet_under(node: Node, node_id: str) -> bool:
        """Whether ``node_id``'s raylet runs in ``node``'s process group (its session files live in its temp dir)."""
        for path in node.temp_dir.glob("session_*/logs/raylet*.out"):
            try:
                if node_id in path.read_text(errors="replace"):
                    return True
            except OSError:
                continue
        return False


# ---------------------------------------------------------------- jobs on the cluster

#: What a job does not need (Ray also honours .gitignore and skips .git/.venv/__pycache__).
JOB_EXCLUDES = [".venv", "runs", ".pytest_cache", "*.egg-info", "build", "dist"]


def submit_job(cluster: MultiNodeCluster, submission_id: str, entrypoint: list[str]) -> None:
    """``ray job submit --no-wait --working-dir .`` of ``entrypoint`` to ``cluster`` (as a user does)."""
    import json

    done = subprocess.run(
        [RAY_BIN, "job", "submit", "--address", cluster.dashboard_url, "--submission-id", submission_id, "--no-wait",
         "--working-dir", ".", "--runtime-env-json", json.dumps({"excludes": JOB_EXCLUDES}), "--", *entrypoint],
        cwd=CHECKOUT, env=cluster.env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"ray job submit failed:\n{done.stdout}\n{done.stderr}")


def wait_for_job(client, submission_id: str, timeout: float, poll_s: float = 1.0) -> str:
    """A submitted job's final status (SUCCEEDED/FAILED/STOPPED), or TIMEOUT (then the job is stopped)."""
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(submission_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value)
        time.sleep(poll_s)
    client.stop_job(submission_id)
    return "TIMEOUT"


def wait_job(cluster: MultiNodeCluster, submission_id: str, timeout: float) -> str:
    """The job's final status on ``cluster`` (see :func:`wait_for_job`)."""
    from ray.job_submission import JobSubmissionClient

    return wait_for_job(JobSubmissionClient(cluster.dashboard_url), submission_id, timeout)
