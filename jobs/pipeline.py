"""`ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/X.yaml [--stages a,b]`:
every stage (or the chosen ones) in order; each resumes from what the store already holds."""

import sys

from _common import run_stages

if __name__ == "__main__":
    sys.exit(run_stages(None, __doc__))
