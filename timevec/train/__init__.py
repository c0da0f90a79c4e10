"""Fine-tuning: the training loop, one run, the run plan, continual chains, seed replicates, study
extension, the device rule and the per-worker memory caps.

May import: ``data``, ``weights``, ``store``, ``config``, ``results``, ``errors``. Ray-free: the fleet
that runs these on Ray lives in ``timevec.distributed``.
"""
