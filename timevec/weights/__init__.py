"""Weight arithmetic: time vectors, LoRA factors, merge methods and parameter groups.

May import: ``data`` (models, fingerprints), ``config`` and ``errors``. Torch, never Ray; storage is ``timevec.store``.
"""
