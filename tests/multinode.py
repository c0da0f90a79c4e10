"""The tests' multi-node Ray cluster: ``multinode_cluster()``, a started cluster for a pytest fixture.

The cluster itself is :mod:`timevec.distributed.local_cluster` (separate ``ray start`` process
groups on loopback, shared with ``bench/multinode.py``). Here only the test-side rule: without the
``ray`` executable the tests using it skip with the reason, or fail under
``TIMEVEC_REQUIRE_COMPONENTS=1`` (``tests/components.py``, component ``ray-cli``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.components import require
from timevec.distributed.local_cluster import MultiNodeCluster, RayCliMissing

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def multinode_cluster(head_cpus: int = 0, worker_cpus: tuple[int, ...] = (1, 1)) -> Iterator[MultiNodeCluster]:
    """A started cluster (default: a head with 0 CPUs — job drivers only — and two 1-CPU worker nodes),
    stopped on exit. Start the S3 server first: its keys are then in every node's environment."""
    cluster = MultiNodeCluster(head_cpus=head_cpus, worker_cpus=list(worker_cpus))
    try:
        cluster.start()
    except RayCliMissing as exc:
        require("ray-cli", str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()
