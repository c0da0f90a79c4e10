"""Reading the tables: misalignment and decay, vector similarity, per-group structure, forgetting,
time probes, the findings and the verdict.

May import: ``data``, ``weights``, ``evaluate``, ``adapt`` (summaries), ``store``, ``config``, ``results``.
Ray-free.
"""
