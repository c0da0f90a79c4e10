"""`ray job submit --working-dir . -- python jobs/finetune.py --config X.yaml [--set key=value ...]`:
one fine-tune per (task, period) on the cluster, each time vector into the store. Re-submitting
resumes: finished runs are skipped, interrupted ones continue from their latest checkpoint.
Exit status 0 when every run is done or skipped, 1 when a run failed after its retries, 2 on bad
input (config, corpus, store) with a message naming it."""

import sys

from _common import run_stages

if __name__ == "__main__":
    sys.exit(run_stages(["finetune"], __doc__))
