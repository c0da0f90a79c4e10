"""The study's inputs: periods, dated corpora, base models and tokenizers, presets, example sets.

May import: ``config``, ``errors`` and ``demo`` (the bundled tweets) only — never train, weights,
evaluate, adapt or analyze, never Ray. Everything downstream reads its texts, bases and examples from here.
"""
