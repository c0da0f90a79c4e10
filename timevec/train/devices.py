"""Which torch device a unit of work runs on: one rule for every stage.

One job: a fine-tune trial, an evaluation actor, an analogy trial and a plain evaluator all ask the
same question (was a GPU asked for, and is one visible?), so the answer is written once here.

Work that Ray was GIVEN a GPU for (``ray.gpus_per_run``, ``ray.gpus_per_eval_actor`` > 0) and that
sees no CUDA device is refused (:class:`NoCudaDevice`, exit status 2): a cluster whose nodes carry a
CPU-only torch wheel would otherwise train many times slower and say nothing.
``ray.allow_cpu_fallback: true`` is the explicit opt-out.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from timevec.errors import ConfigError

__all__ = ["NO_CUDA", "NoCudaDevice", "cpu_threads", "gpu_device", "pick_device", "torch_build"]

#: Words of every :class:`NoCudaDevice` message (found in the text Tune keeps of a failed trial).
NO_CUDA = "sees no CUDA device"

log = logging.getLogger(__name__)


class NoCudaDevice(ConfigError):
    """Ray gave this process a GPU but torch sees no CUDA device (exit status 2)."""


def torch_build() -> str:
    """torch's version and what it was built for, e.g. ``2.13.0+cpu (no CUDA support)``."""
    cuda = torch.version.cuda
    return f"{torch.__version__} ({f'CUDA {cuda}' if cuda else 'no CUDA support'})"


def pick_device(use_gpu: bool = True) -> torch.device:
    """CUDA when ``use_gpu`` and a GPU is visible to this process, else the CPU.

    For work nobody reserved a GPU for (a plain evaluator, the probe): any GPU there is. Work that
    Ray was given GPUs for asks :func:`gpu_device`, which refuses to fall back to the CPU silently.
    """
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")


def gpu_device(gpus: float, setting: str, allow_cpu_fallback: bool = False, node: str | None = None) -> torch.device:
    """The device of work that was given ``gpus`` GPUs (config field ``setting``, e.g. ``ray.gpus_per_run``).

    ``gpus == 0``: the CPU. Else CUDA when torch sees a device; when it does not, :class:`NoCudaDevice`
    naming ``node``, ``CUDA_VISIBLE_DEVICES`` and the torch build — or, with ``allow_cpu_fallback``,
    the CPU and a warning.
    """
    if gpus <= 0:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = node or socket.gethostname()
    what = (
        f"{setting}={gpus:g}: Ray gave this process a GPU on node {where} (CUDA_VISIBLE_DEVICES="
        f"{visible if visible is not None else '<unset>'}), but torch {torch_build()} {NO_CUDA}"
    )
    if allow_cpu_fallback:
        log.warning("%s; running on the CPU (ray.allow_cpu_fallback: true)", what)
        return torch.device("cpu")
    raise NoCudaDevice(
        f"{what}. Install a CUDA build of torch on every GPU node (the same environment on every node), "
        "set the ray.gpus_per_* settings to 0, or set ray.allow_cpu_fallback: true to run on the CPU anyway"
    )


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block, then restored.

    A CPU matmul summed over 2 threads is not bitwise the one over 1, so work whose result must be the
    same wherever it runs (θ_pre pretrained by a driver: ``timevec demo`` on a laptop, ``timevec run``, or a
    job's driver, which Ray starts with OMP_NUM_THREADS=1) uses the thread count the config fixes
    (``ray.torch_threads``, as every fine-tune trial and evaluation actor does), not the process's default.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
