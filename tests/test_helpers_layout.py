"""Where shared code lives: no test file imports another test file, no benchmark imports the tests,
and only ``bench/harness.py`` touches ``sys.path``.

What several test files share is a helper module (``tests/stores.py``, ``tests/evaluation_inputs.py``,
...) or a fixture of ``tests/conftest.py``; what tests and benchmarks share is in the library
(``timevec.store.local_s3``, ``timevec.distributed.local_cluster``), as Ray keeps its
``ray.cluster_utils``; what the benchmarks share is ``bench/harness.py``. Read from the sources (ast),
nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` imports, by its absolute name: ``from a import b`` counts ``a`` and ``a.b``
    (``b`` may be a module), and a relative import is resolved against the file's package."""
    package = list(path.relative_to(root).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def among_test_files(modules: set[str]) -> list[str]:
    """The test files (``tests/**/test_*.py``) among ``modules``."""
    return sorted(m for m in modules if m.split(".")[0] == "tests" and any(p.startswith("test_") for p in m.split(".")[1:]))


def touches_sys_path(path: Path) -> bool:
    return any(isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
               and node.value.id == "sys" for node in ast.walk(ast.parse(path.read_text(), str(path))))


def test_no_test_file_imports_another() -> None:
    found = {str(path.relative_to(ROOT)): among_test_files(imported_modules(path))
             for path in sorted((ROOT / "tests").rglob("test_*.py"))}
    found = {path: modules for path, modules in found.items() if modules}
    assert not found, f"test files importing test files (move what they share into a helper module or tests/conftest.py): {found}"


def test_no_benchmark_imports_the_tests_and_only_the_harness_touches_sys_path() -> None:
    scripts = sorted((ROOT / "bench").rglob("*.py"))
    assert ROOT / "bench" / "harness.py" in scripts
    importing = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "tests") for p in scripts}
    assert not {p: m for p, m in importing.items() if m}, f"bench/ importing from tests/: {importing}"
    patching = [str(p.relative_to(ROOT)) for p in scripts if p.name != "harness.py" and touches_sys_path(p)]
    assert not patching, f"bench/ files touching sys.path (bench/harness.py finds the checkout): {patching}"


def test_the_checks_see_every_form_of_import(tmp_path: Path) -> None:
    (tmp_path / "tests" / "sub").mkdir(parents=True)
    sources = {
        "from tests.test_adapt import build_store": ["tests.test_adapt", "tests.test_adapt.build_store"],
        "import tests.test_store": ["tests.test_store"],
        "from tests import test_store": ["tests.test_store"],
        "from . import test_store": ["tests.sub.test_store"],
        "from ..test_adapt import x": ["tests.test_adapt", "tests.test_adapt.x"],
        "from tests.stores import build_store": [],
        "from tests.reliability import kill_when": [],
    }
    for source, expected in sources.items():
        path = tmp_path / "tests" / "sub" / "test_x.py"
        path.write_text(source + "\n")
        assert among_test_files(imported_modules(path, tmp_path)) == expected, source
    path.write_text("import sys\nsys.path.insert(0, 'x')\n")
    assert touches_sys_path(path)
    path.write_text("import os\nos.path.join('a')\n")
    assert not touches_sys_path(path)
