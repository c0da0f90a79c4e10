"""The store's one exception type, in a module of its own so that every part of the store can import it
without importing the rest."""

from __future__ import annotations

from timevec.errors import TimevecError

__all__ = ["StoreError"]


class StoreError(TimevecError):
    """Anything wrong with the store or its contents; the message names the vector and the file (exit status 2)."""

    exit_status = 2


# Tracebacks and failure lines name it by its public home, as they did before the store was a package.
StoreError.__module__ = "timevec.store"
