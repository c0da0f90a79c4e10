"""Reading the tables: misalignment and decay, vector similarity, per-group structure, forgetting,
time probes, the findings and the verdict.

May import: ``data``, ``weights``, ``store``, ``train``, ``evaluate``, ``adapt``, ``config``, ``results``.
Ray-free.
"""
