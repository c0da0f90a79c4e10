"""`ray job submit --working-dir . -- python jobs/forgetting.py --config X.yaml --set training.mode=continual`:
the running means of the independent vectors evaluated on every test period (results/merged_cells),
then the forgetting of continual vs independent vs merged updating (results/forgetting.parquet) in
the continual store. Run jobs/finetune.py and jobs/evaluate.py in both modes first."""

import sys

from _common import run_stages

if __name__ == "__main__":
    sys.exit(run_stages(["forgetting"], __doc__))
