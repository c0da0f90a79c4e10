"""How a failure becomes an exit status, shared by the CLI and the ``ray job submit`` entrypoints.

Bad input (config, corpus, period, store) prints one line naming what is wrong and exits 2; a stage
that finished with some of its work failed exits 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

#: The bad-input error classes, by module. An exception of one can only exist once its module has
#: been imported, so they are looked up when one is caught, and importing this module stays light:
#: a mistyped stage or key exits 2 before torch, datasets or Ray are imported.
_USER_ERRORS = (
    ("timevec.data.corpus", "CorpusError"),
    ("timevec.data.periods", "PeriodError"),
    ("timevec.store.errors", "StoreError"),
)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key (exit status 2)."""


def user_errors() -> tuple[type[Exception], ...]:
    """The bad-input error classes of the modules imported so far (exit status 2)."""
    return (ConfigError, *(getattr(sys.modules[module], name) for module, name in _USER_ERRORS if module in sys.modules))


class MissingExtra(ConfigError):
    """A feature used without its optional dependency; the message names the extra to install (exit status 2)."""


def require_extra(module: str, extra: str, feature: str):
    """``import module``, or :class:`MissingExtra` saying ``pip install 'timevec[extra]'`` for ``feature``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{feature} needs the optional dependency {module!r}: pip install 'timevec[{extra}]'") from None


class StageFailed(RuntimeError):
    """A stage finished with some of its work failed (after Ray's retries): exit status 1."""


def run_with_exit_status(action: Callable[[], int], prefix: str) -> int:
    """``action()``'s status, or 2 for bad input and 1 for a failed stage, the message on stderr."""
    try:
        return action()
    except user_errors() as exc:
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"{prefix}error: {exc}", file=sys.stderr)
        return 1
