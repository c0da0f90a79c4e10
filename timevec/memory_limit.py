"""A hard memory cap for one worker process, and how to recognise running out of memory.

Why: at scale an evaluation actor holds θ_pre, reads vectors of the base's size and builds
combinations of several of them; one item too many for the machine should fail *that item*, named,
rather than let the kernel's OOM killer (or Ray's memory monitor) kill the whole worker and leave
the stage to guess what was lost. ``ray.eval_actor_memory_mb`` caps each evaluation actor with an
``RLIMIT_AS`` the actor sets on itself once θ_pre and the shared inputs (tokenised splits) are
loaded (:func:`cap_address_space`): from
then on the kernel refuses any mapping beyond the cap, torch raises ``DefaultCPUAllocator: can't
allocate memory`` (Python raises ``MemoryError``), and :func:`is_out_of_memory` tells that apart
from other errors. CUDA's ``torch.OutOfMemoryError`` counts too (the cap itself is host memory).

The cap is on address space, not resident memory: glibc arenas, thread stacks and allocator
caches reserve more than they touch, so the cap must leave room for those (tens of MB). Linux only
(``/proc/self/status``); elsewhere the cap is not applied and a warning says so. No Ray import.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

__all__ = ["address_space_bytes", "cap_address_space", "is_out_of_memory", "peak_rss_mb"]

_ALLOCATOR_MESSAGES = ("can't allocate memory", "cannot allocate memory", "not enough memory", "out of memory")


def address_space_bytes() -> int | None:
    """This process's mapped address space now (``VmSize``), or None where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cap_address_space(extra_mb: float) -> int | None:
    """Cap this process at its current address space + ``extra_mb`` MiB; returns the cap in bytes.

    Only the soft limit is set (the hard one stays), so the process could lift it again; a cap
    below the current size is refused by the kernel and raised as ValueError.
    """
    current = address_space_bytes()
    if current is None:
        log.warning("cannot read this process's address space: no memory cap applied")
        return None
    cap = current + int(extra_mb * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and cap > hard:
        cap = hard
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    log.info("memory cap: %.0f MiB of address space (%.0f MiB now + %.0f MiB)", cap / 2**20, current / 2**20, extra_mb)
    return cap


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation refused for lack of memory (host or CUDA)."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _ALLOCATOR_MESSAGES)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
