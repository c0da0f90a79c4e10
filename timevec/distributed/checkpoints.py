"""Fine-tune checkpoints in Ray storage (local folders or ``s3://…``), read and written via pyarrow.fs.

One job: the on-storage format of a run's checkpoint and its life cycle — save one, load one
(``torch.load(weights_only=True)``: loading runs no code), accept the one Ray hands back only if it
belongs to this very run, find the newest usable one an EARLIER submission left, and delete a
finished run's checkpoints. Kept apart from the trials so that the format and the resume rules can
be read (and tested) in one place.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import pyarrow.fs
import ray.train
import torch

from timevec.distributed.storage import RayStorage
from timevec.train.plan import RunSpec
from timevec.train.run import RunJob

log = logging.getLogger(__name__)

__all__ = [
    "META_FILE",
    "STATE_FILE",
    "drop_checkpoints",
    "earlier_checkpoint",
    "load_checkpoint",
    "resume_state",
    "save_checkpoint",
]

STATE_FILE = "train_state.pt"  # a checkpoint: the loop's state (torch.save; loaded weights_only)
META_FILE = "meta.json"  # ... and what it belongs to: run, fingerprint, step, losses


def save_checkpoint(directory: str, state: dict, meta: dict) -> None:
    torch.save(state, os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, META_FILE), "w") as handle:
        json.dump(meta, handle)


def load_checkpoint(directory: str) -> tuple[dict, dict]:
    """A checkpoint directory → (train state, meta). ``weights_only``: loading runs no code."""
    with open(os.path.join(directory, META_FILE)) as handle:
        meta = json.load(handle)
    state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
    return state, meta


def load_from(checkpoint: ray.train.Checkpoint) -> tuple[dict, dict]:
    with checkpoint.as_directory() as directory:
        return load_checkpoint(directory)


def resume_state(checkpoint: ray.train.Checkpoint | None, job: RunJob) -> tuple[dict | None, dict | None]:
    """(state, meta) of the checkpoint Ray hands back, if it belongs to this very run and config.

    A Train run restored by name, or a trial of an experiment dir reused with an edited config,
    could otherwise continue from weights trained under other settings.
    """
    if checkpoint is None:
        return None, None
    try:
        state, meta = load_from(checkpoint)
    except Exception as exc:  # noqa: BLE001 - e.g. deleted after its run finished: start afresh
        log.warning("run %s: cannot read the checkpoint Ray handed back (%s); starting from step 0", job.run.key, exc)
        return None, None
    if meta.get("fingerprint") != job.fingerprint:
        log.warning("run %s: ignoring a checkpoint made with other settings or data (step %s)", job.run.key, meta.get("step"))
        return None, None
    return state, meta


def earlier_checkpoint(storage: RayStorage, experiment: str, run: RunSpec, fingerprint: str) -> tuple[dict, dict] | None:
    """The newest usable checkpoint that an earlier submission's trial of ``run`` left in storage.

    Trial directories are ``<task>_<period>_<trial id>`` (see :func:`timevec.distributed.fleet_trials.trial_dirname`); each holds Tune's
    ``checkpoint_NNNNNN`` directories. Candidates are tried newest step first; one that fails to
    load (a copy cut short by a kill) is skipped with a warning.
    """
    try:
        fs, root = storage.fs_root()
    except (pyarrow.ArrowInvalid, ValueError, OSError) as exc:
        log.warning("cannot list earlier checkpoints under %s: %s", storage, exc)
        return None
    exp_dir = f"{root.rstrip('/')}/{experiment}"
    prefix = f"{run.key}_"
    candidates: list[tuple[int, str, dict]] = []
    try:
        trial_dirs = fs.get_file_info(pyarrow.fs.FileSelector(exp_dir, allow_not_found=True))
        for trial_dir in trial_dirs:
            if trial_dir.type != pyarrow.fs.FileType.Directory or not trial_dir.base_name.startswith(prefix):
                continue
            for entry in fs.get_file_info(pyarrow.fs.FileSelector(trial_dir.path, allow_not_found=True)):
                if entry.type != pyarrow.fs.FileType.Directory or not entry.base_name.startswith("checkpoint_"):
                    continue
                try:
                    with fs.open_input_stream(f"{entry.path}/{META_FILE}") as handle:
                        meta = json.loads(handle.read().decode())
                except (OSError, ValueError):
                    continue
                if meta.get("fingerprint") == fingerprint:
                    candidates.append((int(meta.get("step", 0)), entry.path, meta))
    except OSError as exc:
        log.warning("cannot list earlier checkpoints under %s/%s: %s", storage, experiment, exc)
        return None
    for step, path, _meta in sorted(candidates, key=lambda c: c[0], reverse=True):
        try:
            return load_from(ray.train.Checkpoint(path=path, filesystem=fs))
        except Exception as exc:  # noqa: BLE001 - a half-copied checkpoint: try the next one
            log.warning("run %s: skipping unreadable checkpoint %s (step %d): %s", run.key, path, step, exc)
    return None


def drop_checkpoints(storage: RayStorage, experiment: str, runs: Sequence[RunSpec]) -> int:
    """Delete the checkpoints of ``runs`` (whose vectors are stored): they only serve resuming.

    A t5-3b checkpoint with its optimizer state is tens of GB; kept for every run of a study it
    would dwarf the vectors. Covers the trials' ``<experiment>/<run>_<trial id>/checkpoint_*`` and
    the Train runs' ``<experiment>-<run>/checkpoint_*`` (with Train's index of them, so that a
    later Train run of the same name starts afresh); TensorBoard logs and results stay.
    Returns how many were deleted.
    """
    try:
        fs, root = storage.fs_root()
        trial_prefixes = tuple(f"{r.key}_" for r in runs)
        run_dirs = [f"{root}/{experiment}-{r.key}" for r in runs]
        for trial_dir in fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{experiment}", allow_not_found=True)):
            if trial_dir.type == pyarrow.fs.FileType.Directory and trial_dir.base_name.startswith(trial_prefixes):
                run_dirs.append(trial_dir.path)
        removed = 0
        for directory in run_dirs:
            for entry in fs.get_file_info(pyarrow.fs.FileSelector(directory, allow_not_found=True)):
                if not entry.base_name.startswith("checkpoint_"):
                    continue
                if entry.type == pyarrow.fs.FileType.Directory:
                    fs.delete_dir(entry.path)
                    removed += 1
                elif entry.base_name == "checkpoint_manager_snapshot.json":
                    fs.delete_file(entry.path)  # Train V2's index of the deleted checkpoints
        return removed
    except (OSError, pyarrow.ArrowInvalid, ValueError) as exc:
        log.warning("fleet: could not delete finished runs' checkpoints under %s/%s: %s", storage, experiment, exc)
        return 0
