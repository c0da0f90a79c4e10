"""The errors that mean "bad input": the CLI and the jobs print them and exit non-zero.

Anything else is a bug and keeps its traceback.
"""

from timevec.config import ConfigError
from timevec.corpus import CorpusError
from timevec.periods import PeriodError
from timevec.store import StoreError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, CorpusError, PeriodError, StoreError)
