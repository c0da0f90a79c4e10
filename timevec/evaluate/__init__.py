"""Scoring one weight state: metrics (perplexity, macro-F1, ROUGE-L), the cell evaluator that holds
θ_pre once, bootstrap intervals, cells to a target precision with the per-example statistics that compare
two cells on the examples both scored, and gains in each metric's own direction.

May import: ``data``, ``weights``, ``store``, ``train`` (the device rule), ``config``, ``results``. Ray-free.
"""
