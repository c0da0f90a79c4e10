"""Whether Ray's and Tune's own output reaches the terminal (``timevec -v``): one switch, set by the CLI.

Its own module, with no Ray import, so that the CLI sets it before it reads a config: bad input then
exits 2 before Ray or torch is imported (:mod:`timevec.errors`).
"""

from __future__ import annotations

import os

_verbose = False


def set_verbose(verbose: bool) -> None:
    """Show Ray's and Tune's own output (worker logs, checkpoint lines, Tune's tables) — ``timevec -v``.

    Quiet by default: a local run's terminal then holds timevec's progress lines and the findings,
    while every worker log stays in Ray's session folder (``/tmp/ray/session_latest/logs``).
    A job on a cluster always forwards worker logs: they are its only console.
    """
    global _verbose
    _verbose = bool(verbose)
    if not _verbose:
        # Tune's new output engine prints its experiment box and a TensorBoard hint into Ray's session
        # folder whatever RunConfig(verbose=0) says; the legacy engine at verbosity 0 prints nothing.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def is_verbose() -> bool:
    """The switch's state (what :func:`set_verbose` last set; quiet by default)."""
    return _verbose
