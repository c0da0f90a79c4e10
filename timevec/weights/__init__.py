"""Weight arithmetic: time vectors, LoRA factors, merge methods and parameter groups.

May import: ``data`` (models, fingerprints) and ``config``. Torch, never Ray; storage is ``timevec.store``.
"""
