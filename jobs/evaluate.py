"""`ray job submit --working-dir . -- python jobs/evaluate.py --config X.yaml [--set key=value ...]`:
the all-pairs (train vector × test period) matrix, plus the base, into results/cells.parquet on
evaluation actors fed from the store. Re-submitting computes only the missing cells."""

import sys

from _common import run_stages

if __name__ == "__main__":
    sys.exit(run_stages(["evaluate"], __doc__))
