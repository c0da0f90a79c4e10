"""A hard memory cap for one worker process, and how to recognise running out of memory.

Why: at scale an evaluation actor holds θ_pre, reads vectors of the base's size and builds
combinations of several of them; one item too many for the machine should fail *that item*, named,
rather than let the kernel's OOM killer (or Ray's memory monitor) kill the whole worker and leave
the stage to guess what was lost. ``ray.eval_actor_memory_mb`` caps each evaluation actor with an
``RLIMIT_DATA`` the actor sets on itself once θ_pre and the shared inputs (tokenised splits) are
loaded (:func:`cap_address_space`): from
then on the kernel refuses any mapping beyond the cap, torch raises ``DefaultCPUAllocator: can't
allocate memory`` (Python raises ``MemoryError``), and :func:`is_out_of_memory` tells that apart
from other errors. CUDA's ``torch.OutOfMemoryError`` counts too (the cap itself is host memory).

``RLIMIT_DATA`` (Linux ≥ 4.7) counts the process's private writable mappings — heap, anonymous
mmaps, thread stacks — but not read-only or ``PROT_NONE`` reservations (glibc's 64 MiB arenas),
shared mappings (Ray's object store) or files: close to the memory the process can commit, unlike
``RLIMIT_AS``, whose count of reserved address space made the same cap fail at random in a test.
Mapped is not resident: the cap is an upper bound on what the actor may touch. Linux only
(``/proc/self/status``); elsewhere the cap is not applied and a warning says so. No Ray import.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

__all__ = ["cap_data_memory", "data_memory_bytes", "is_out_of_memory", "peak_rss_mb"]

_ALLOCATOR_MESSAGES = ("can't allocate memory", "cannot allocate memory", "not enough memory", "out of memory")


def data_memory_bytes() -> int | None:
    """This process's private writable mappings now (``VmData``, what RLIMIT_DATA counts), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cap_data_memory(extra_mb: float) -> int | None:
    """Cap this process's data mappings at their current size + ``extra_mb`` MiB; returns the cap in bytes.

    Only the soft limit is set (the hard one stays), so the process could lift it again; a cap
    below the current size is refused by the kernel and raised as ValueError.
    """
    current = data_memory_bytes()
    if current is None:
        log.warning("cannot read this process's memory mappings: no memory cap applied")
        return None
    cap = current + int(extra_mb * 2**20)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY and cap > hard:
        cap = hard
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    log.info("memory cap: %.0f MiB of data mappings (%.0f MiB now + %.0f MiB)", cap / 2**20, current / 2**20, extra_mb)
    return cap


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation refused for lack of memory (host or CUDA), a thread's stack under
    :func:`cap_data_memory`'s cap included."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(exc).lower()
    if isinstance(exc, RuntimeError) and "can't start new thread" in text:
        # pthread_create refused: under a data cap the thread's stack (8 MiB, counted by RLIMIT_DATA) did not fit
        return resource.getrlimit(resource.RLIMIT_DATA)[0] != resource.RLIM_INFINITY
    return isinstance(exc, RuntimeError) and any(m in text for m in _ALLOCATOR_MESSAGES)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
