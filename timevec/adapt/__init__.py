"""Adapting without training: interpolation, soups and patching, task analogies, forecasts, the
selection protocols that say what α may see, merge-method comparison and group swaps.

May import: ``data``, ``weights``, ``store``, ``train``, ``evaluate``, ``config``, ``results``. Ray-free: each is
pure logic with evaluation injected; ``timevec.distributed`` runs them on Ray.
"""
