"""The Ray side of timevec: thin adapters that run the library's stages on a Ray cluster.

Only this package imports Ray. Fleet (Ray Tune trials, Ray Train for multi-worker runs), cells
(evaluation actors) and the α search (Ray Tune) each read their inputs from the store and write
their outputs back to it. The stage names and their order are :data:`timevec.stages.STAGES` (the stage registry).
"""
