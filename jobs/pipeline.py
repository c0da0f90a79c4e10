"""`ray job submit --working-dir . -- python jobs/pipeline.py --config jobs/configs/X.yaml`: every stage."""

import sys

from _common import run_stages

from timevec.distributed.pipeline import STAGE_FUNCTIONS

if __name__ == "__main__":
    sys.exit(run_stages(list(STAGE_FUNCTIONS), __doc__))
