"""The results contract: every table a stage writes to ``<store>/results/``, its schema and its builder.

:mod:`timevec.results.schemas` declares each table's columns and types once; :mod:`timevec.results.registry`
says who writes each table and is the one way rows are built, written and read.

One package names the tables and fixes their schemas, so that the stages that write them, the
analysis and report that read them, and users' notebooks agree on one spelling. A builder turns
rows (dicts) into a frame with exactly the documented columns and fixed dtypes, so that appended
batches (resumable stages) always concatenate. Torch-free and Ray-free.

| table | written by | one row is |
| --- | --- | --- |
| ``cells`` | evaluate | one (vector or base, test period) evaluation |
| ``cell_examples`` | evaluate | what one cell's metric needs of each example it scored (``evaluation.target_halfwidth``) |
| ``interpolation`` | interpolate | one α of (1−α)·τ_first + α·τ_last on one test period |
| ``interpolation_best`` | interpolate | the best α of one middle period, against every baseline |
| ``soups`` / ``patching`` | interpolate | a greedy time soup / a patched period, or one of its baselines |
| ``forecast`` | forecast | one forecast (or baseline) of one held-out period, δ periods ahead |
| ``analogy`` | analogy | one (α₁, α₂, α₃) grid point on one split |
| ``analogy_best`` | analogy | the best point, or one baseline, of one (j, k) pair on one split |
| ``interpolation_protocols`` | analyze | one middle period under one α-selection protocol or baseline (:mod:`timevec.adapt.selection`) |
| ``analogy_protocols`` | analyze | one (j, k) pair under one selection protocol or baseline (:mod:`timevec.adapt.selection`) |
| ``relative_change``, ``diagonal``, ``decay_*``, ``stripes`` | analyze | see :mod:`timevec.analyze.misalignment` |
| ``similarity``, ``similarity_centred`` | analyze | one pair of vectors (:mod:`timevec.analyze.similarity`) |
| ``group_norms``, ``group_similarity``, ``group_similarity_degradation`` | analyze | see :mod:`timevec.analyze.weight_groups` |
| ``group_swaps`` | groups | τ_j with one parameter group from τ_k, on k: :mod:`timevec.adapt.group_swaps` |
| ``merged_cells`` | forgetting | one running mean of independent vectors θ_pre + mean(τ_1..τ_t) on one test period (cells schema) |
| ``forgetting`` | forgetting | one (updating mode, test period s, train period t ≥ s): :mod:`timevec.analyze.forgetting` |
| ``merge_methods`` | ``bench/merge_methods.py --write`` | one (combination, method, test period): :mod:`timevec.adapt.merge_comparison` |
| ``fig_<figure>`` | report | the numbers behind one figure of the report |
"""

from timevec.results import registry, schemas
from timevec.results.registry import *  # noqa: F403
from timevec.results.schemas import *  # noqa: F403

__all__ = [*schemas.__all__, *registry.__all__]
