"""How a failure becomes an exit status, shared by the CLI and the ``ray job submit`` entrypoints.

Bad input (config, corpus, period, store) prints one line naming what is wrong and exits 2; a stage
that finished with some of its work failed exits 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import ClassVar


class TimevecError(Exception):
    """The base of every error timevec raises on purpose; ``exit_status`` is what the command then exits with.

    2: bad input (a config, corpus, period, store or vector the user can fix; one line names it), 1: a stage
    finished with some of its work failed, None: an invariant of the code itself broke (a bug: the command
    fails with its traceback). A subclass says which once, as a class attribute, so the CLI needs no list of
    error classes and importing this module stays light: a mistyped stage or key exits 2 before torch,
    datasets or Ray are imported.
    """

    exit_status: ClassVar[int | None] = None


class ConfigError(TimevecError, ValueError):
    """A config that cannot be used; the message names the file and the key (exit status 2)."""

    exit_status = 2


class MissingExtra(ConfigError):
    """A feature used without its optional dependency; the message names the extra to install (exit status 2)."""


def require_extra(module: str, extra: str, feature: str):
    """``import module``, or :class:`MissingExtra` saying ``pip install 'timevec[extra]'`` for ``feature``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{feature} needs the optional dependency {module!r}: pip install 'timevec[{extra}]'") from None


class StageFailed(TimevecError, RuntimeError):
    """A stage finished with some of its work failed (after Ray's retries): exit status 1."""

    exit_status = 1


def run_with_exit_status(action: Callable[[], int], prefix: str) -> int:
    """``action()``'s status, or the ``exit_status`` of the :class:`TimevecError` it raised, the message on stderr."""
    try:
        return action()
    except TimevecError as exc:
        if exc.exit_status is None:
            raise
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return exc.exit_status
