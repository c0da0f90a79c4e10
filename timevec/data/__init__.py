"""The study's inputs: dated corpora, base models and tokenizers, presets, example sets (periods: :mod:`timevec.periods`).

May import: ``config``, the foundation (``errors``, ``periods``, ``credentials``) and ``demo`` (the bundled
tweets) only — never train, weights, evaluate, adapt or analyze, never Ray. Everything downstream reads its
texts, bases and examples from here.
"""
