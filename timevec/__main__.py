"""``python -m timevec …``: the same command line as ``timevec …`` (what ``ray job submit`` runs)."""

import sys

from timevec.cli import main

if __name__ == "__main__":
    sys.exit(main())
