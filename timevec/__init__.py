"""timevec: time vectors at cluster scale."""

__version__ = "0.1.0"
