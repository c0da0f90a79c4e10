"""`ray job submit --working-dir . -- python jobs/analogy.py --config X.yaml [--set k=v ...]`:
the task-analogy α search on Ray Tune (results/analogy.parquet, analogy_best.parquet; TensorBoard
under the Tune storage path). A repeated submission resumes the same experiments."""

import sys

from _common import run_stages

if __name__ == "__main__":
    sys.exit(run_stages(["analogy"], __doc__))
