"""Which torch device a unit of work runs on: one rule for every stage.

One job: a fine-tune trial, an evaluation actor, an analogy trial and a plain evaluator all ask the
same question (was a GPU asked for, and is one visible?), so the answer is written once here.
"""

from __future__ import annotations

import torch

__all__ = ["pick_device"]


def pick_device(use_gpu: bool = True) -> torch.device:
    """CUDA when ``use_gpu`` and a GPU is visible to this process, else the CPU.

    Callers pass whether Ray was asked for GPUs (``ray.gpus_per_run > 0``,
    ``ray.gpus_per_eval_actor > 0``); the default asks for any GPU there is.
    """
    return torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
