"""`ray job submit --working-dir . -- python jobs/forecast.py --config X.yaml [--set k=v ...]`:
the last forecast.horizon periods held out and their weights forecast from earlier vectors only
(latest, Taylor step, trend, EMA, scaled latest, uniform soup) against the base and the in-period
oracle (results/forecast.parquet)."""

import sys

from _common import run_stages

if __name__ == "__main__":
    sys.exit(run_stages(["forecast"], __doc__))
