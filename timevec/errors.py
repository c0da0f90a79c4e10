"""How a failure becomes an exit status, shared by the CLI and the ``ray job submit`` entrypoints.

Bad input (config, corpus, period, store) prints one line naming what is wrong and exits 2; a stage
that finished with some of its work failed exits 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from timevec.config import ConfigError
from timevec.corpus import CorpusError
from timevec.periods import PeriodError
from timevec.store import StoreError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, CorpusError, PeriodError, StoreError)


class StageFailed(RuntimeError):
    """A stage finished with some of its work failed (after Ray's retries): exit status 1."""


def run_with_exit_status(action: Callable[[], int], prefix: str) -> int:
    """``action()``'s status, or 2 for bad input and 1 for a failed stage, the message on stderr."""
    try:
        return action()
    except USER_ERRORS as exc:
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return 1
