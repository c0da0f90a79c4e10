"""docs/CONFIG.md is the generator's output, and every config field says what it means."""

from __future__ import annotations

import subprocess
import sys

from timevec.config import ExperimentConfig
from timevec.config.reference import PAGE, iter_fields, render


def test_config_page_is_current() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        f"{PAGE} is stale: run `python -m timevec.config.reference --write`"
    )


def test_every_field_has_a_description() -> None:
    fields = list(iter_fields(ExperimentConfig))
    missing = [name for name, field in fields if not (field.description or "").strip()]
    assert not missing, f"config fields without Field(description=...): {missing}"
    assert len(fields) > 100  # the walk reached the nested sections


def test_every_field_is_on_the_page() -> None:
    page = render()  # a row per field; a top-level section is a heading
    absent = [name for name, _ in iter_fields(ExperimentConfig) if f"| `{name}` |" not in page and f"## `{name}`" not in page]
    assert not absent, absent


def test_the_config_package_does_not_import_the_generator() -> None:
    code = "import sys, timevec.config; print(sorted(m for m in ('timevec.config.reference', 'torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
