"""A memory cgroup for one worker process: the kernel's OOM killer enforces the cap.

Why: ``RLIMIT_DATA`` (:mod:`timevec.train.memory_limit`) makes an allocation over the cap FAIL, which the
actor survives and reports. A cluster enforces memory differently: a container's limit, a
Kubernetes pod's, the kernel's OOM killer on a full node — the worker is killed outright (SIGKILL)
mid-item, with no exception to catch. ``ray.eval_actor_memory_kind: cgroup`` puts each evaluation
actor, once θ_pre and the splits are loaded, into a memory cgroup of its own with
``ray.eval_actor_memory_mb`` as its limit, so that this fault is real and the stage's handling of
it (Ray restarts the actor and retries the call, then the item fails as ``ActorDied``, a fresh
actor takes the items left, a re-run computes only the missing cells) is exercised by the kernel, not simulated.

The new group is a child of the process's current memory cgroup (v1 ``memory`` hierarchy or the
v2 unified one with the ``memory`` controller), named ``timevec-<pid>``. Pages the process touched
before joining stay charged where they were (neither v1 without ``move_charge_at_immigrate`` nor v2
moves charges), so the limit is the memory the actor may touch BEYOND what it holds when it joins —
the same meaning as the ``RLIMIT_DATA`` cap. Groups of dead processes (a killed actor cannot
remove its own) are removed by the next process that joins one next to them. Needs a writable
cgroup filesystem (root, or a delegated subtree); otherwise :class:`CgroupUnavailable` says why.
Linux only; no Ray import.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from timevec.errors import TimevecError

log = logging.getLogger(__name__)

__all__ = ["CgroupUnavailable", "join_memory_cgroup", "memory_cgroup_dir", "sweep_dead_groups"]

PREFIX = "timevec-"


class CgroupUnavailable(TimevecError, RuntimeError):
    """No writable memory cgroup for this process (not Linux, no memory controller, no permission)."""


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, filesystem type, super options) of every cgroup mount, from /proc/self/mountinfo."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, options = (right.split() + ["", "", ""])[:3]
            if fstype in ("cgroup", "cgroup2"):
                mounts.append((left.split()[4], fstype, options))
    return mounts


def memory_cgroup_dir() -> tuple[Path, int]:
    """This process's memory cgroup directory and the cgroup version (1 or 2) whose limit applies."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
        mounts = _mounts()
        for _, controllers, path in lines:  # cgroup v1: a hierarchy with the memory controller
            if "memory" in controllers.split(","):
                for point, fstype, options in mounts:
                    if fstype == "cgroup" and "memory" in options.split(","):
                        return Path(point + path), 1
        for hierarchy, controllers, path in lines:  # cgroup v2: the unified hierarchy, memory enabled
            if hierarchy == "0" and controllers == "":
                for point, fstype, _ in mounts:
                    directory = Path(point + path)
                    if fstype == "cgroup2" and "memory" in (directory / "cgroup.subtree_control").read_text().split():
                        return directory, 2
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read this process's cgroups: {exc}") from exc
    raise CgroupUnavailable("no memory cgroup controller for this process (neither v1 'memory' nor v2 with +memory)")


def sweep_dead_groups(parent: Path) -> int:
    """Remove the ``timevec-<pid>`` groups under ``parent`` that hold no process; returns how many."""
    removed = 0
    for group in parent.glob(PREFIX + "*"):
        try:
            if not (group / "cgroup.procs").read_text().split():
                group.rmdir()  # refused (EBUSY) if a process joined meanwhile
                removed += 1
        except OSError:
            continue
    return removed


def join_memory_cgroup(limit_mb: float) -> Path:
    """Move this process into a new memory cgroup limited to ``limit_mb`` MiB beyond what it holds now.

    Returns the group's directory. Swap is capped too where the kernel offers it, so that the limit
    ends in the OOM killer rather than in swapping.
    """
    parent, version = memory_cgroup_dir()
    if parent.name.startswith(PREFIX):  # already in one of ours (a second call): a sibling, not a child
        parent = parent.parent
    sweep_dead_groups(parent)
    group = parent / f"{PREFIX}{os.getpid()}"
    limit = str(int(limit_mb * 2**20))
    try:
        group.mkdir(exist_ok=True)
        if version == 1:
            (group / "memory.limit_in_bytes").write_text(limit)
            if (group / "memory.memsw.limit_in_bytes").exists():
                with contextlib.suppress(OSError):  # swap accounting off: the memory limit alone applies
                    (group / "memory.memsw.limit_in_bytes").write_text(limit)
        else:
            (group / "memory.max").write_text(limit)
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        try:
            group.rmdir()
        except OSError:
            pass
        raise CgroupUnavailable(f"cannot create or join the memory cgroup {group}: {exc}") from exc
    log.info("memory cgroup %s: limit %.0f MiB (cgroup v%d)", group, limit_mb, version)
    return group
