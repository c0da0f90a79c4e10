"""The study's inputs: periods, dated corpora, base models and tokenizers, presets, example sets.

May import: ``timevec.errors`` and ``timevec.config`` only (never train/weights/evaluate/adapt/analyze,
never Ray). Everything downstream reads its texts, bases and examples from here.
"""
