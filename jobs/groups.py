"""`ray job submit --working-dir . -- python jobs/groups.py --config X.yaml [--set groups.swaps=true ...]`:
group swaps — θ_pre + τ_j with one parameter group (embeddings, attention, MLP, norms, head) taken
from τ_k, evaluated on k (results/group_swaps.parquet). The per-group norms, cosines and
r(cosine, degradation) are written by the analyze stage (jobs/analyze.py)."""

import sys

from _common import run_stages

if __name__ == "__main__":
    sys.exit(run_stages(["groups"], __doc__))
