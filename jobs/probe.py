"""`ray job submit --working-dir . -- python jobs/probe.py --config X.yaml`: linear time probes (timevec.analyze.probe)."""

import sys

from _common import run_config_job

from timevec.cli import cmd_probe

if __name__ == "__main__":
    sys.exit(run_config_job(cmd_probe, __doc__))
