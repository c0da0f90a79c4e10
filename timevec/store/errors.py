"""The store's one exception type, in a module of its own so that every part of the store (and
:mod:`timevec.errors`) can import it without importing the rest."""

from __future__ import annotations

__all__ = ["StoreError"]


class StoreError(Exception):
    """Anything wrong with the store or its contents; the message names the vector and the file."""


# Tracebacks and failure lines name it by its public home, as they did before the store was a package.
StoreError.__module__ = "timevec.store"
