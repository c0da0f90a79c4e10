"""`ray job submit --working-dir . -- python jobs/interpolate.py --config X.yaml [--set k=v ...]`:
interpolation between the first and last vector of each task and granularity, greedy time soups
and missing-period patching (results/interpolation*.parquet, soups.parquet, patching.parquet)."""

import sys

from _common import run_stages

if __name__ == "__main__":
    sys.exit(run_stages(["interpolate"], __doc__))
