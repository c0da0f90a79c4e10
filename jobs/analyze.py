"""`ray job submit --working-dir . -- python jobs/analyze.py --config X.yaml`: analysis + report."""

import sys

from _common import run_stages

if __name__ == "__main__":
    sys.exit(run_stages(["analyze", "report"], __doc__))
