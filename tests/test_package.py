"""The package's shape: its public API, and the layering every package's docstring promises."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

import timevec

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "timevec"
#: The standard-library pieces at the bottom, which every package may import and which import no package:
#: the errors with their exit statuses, periods, the credential policy.
FOUNDATION = {"errors", "periods", "credentials", "param_groups"}
#: What each package may import from timevec besides itself and the foundation (imports for type checking only
#: are not counted): the study's order, config → data → weights → store → train / evaluate → adapt → analyze.
#: ``config`` is the bottom: the names its validators check are declared below it or in it (parameter groups at the
#: foundation, base presets in config.presets, forecast and merge method names beside their sections, which the
#: registries in adapt and weights check at import).
ALLOWED = {
    "results": set(),  # the tables' contract: pandas and pyarrow only
    "config": {"errors"},
    "data": {"config", "errors", "demo"},
    "weights": {"data", "config", "errors"},
    "store": {"data", "weights", "errors"},
    "train": {"data", "weights", "store", "config", "errors", "results"},
    "evaluate": {"data", "weights", "store", "train", "config", "errors", "results"},  # train.devices: the device rule
    "adapt": {"data", "weights", "store", "train", "evaluate", "config", "errors", "results"},
    "analyze": {"data", "weights", "store", "train", "evaluate", "adapt", "config", "errors", "results"},
    "report": {"data", "weights", "store", "train", "evaluate", "adapt", "analyze", "config", "errors", "results"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            if node.module == "timevec":
                out.update(f"timevec.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_public_api_resolves_and_import_stays_light():
    for name in timevec.__all__:
        assert getattr(timevec, name) is not None, name
    code = "import sys, timevec; print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert subprocess.run([sys.executable, "-m", "timevec", "--help"], cwd=ROOT, capture_output=True).returncode == 0


def test_the_config_and_the_cli_load_neither_torch_nor_ray_and_a_mistyped_key_exits_2_before_them():
    """errors.py's promise: bad input exits 2 at once, before the stages' heavy modules load."""
    code = ("import sys, timevec.config, timevec.cli; "
            "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = ("import sys, timevec.cli; status = timevec.cli.main(['run', 'timevec/demo/tiny.yaml', '--set', "
            "'evaluation.max_exampels=3']); print(status, sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "2 []", (done.stdout, done.stderr[-2000:])
    assert "max_exampels" in done.stderr


def test_packages_import_only_downward_and_ray_only_in_distributed():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        package = rel.parts[0] if len(rel.parts) > 1 else None
        imports = _imports(path)
        if package != "distributed" and any(m == "ray" or m.startswith("ray.") for m in imports):
            problems.append(f"{rel}: imports ray outside timevec/distributed")
        if package in ALLOWED:
            for module in imports:
                parts = module.split(".")
                if parts[0] != "timevec" or len(parts) < 2 or parts[1] == package:
                    continue
                if parts[1] not in ALLOWED[package] | FOUNDATION:
                    problems.append(f"{rel}: {package} imports {module}")
    assert not problems, "\n".join(problems)


def test_every_package_says_what_it_holds_and_no_module_is_oversized():
    for init in PACKAGE.glob("*/__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)} has no docstring"
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > 520}, "modules over ~500 lines"
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "cli.py", "credentials.py", "errors.py", "param_groups.py", "periods.py",
                   "pipeline.py", "stages.py"]
    for name in FOUNDATION:  # the bottom imports nothing of timevec but the bottom
        imports = {m.split(".")[1] for m in _imports(PACKAGE / f"{name}.py") if m.startswith("timevec.")}
        assert imports <= FOUNDATION - {name}, (name, imports)


def _package_graph() -> dict[str, set[str]]:
    """What each package (or top-level module) of timevec imports of the others, typing-only imports aside."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        unit = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        graph.setdefault(unit, set())
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] == "timevec" and len(parts) > 1 and parts[1] != unit and (
                    (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
                graph[unit].add(parts[1])
    return graph


def test_no_package_level_import_cycle():
    """Ray Train v2's circular-import test, at the level of packages: the packages form a layering, so each can
    be read (and imported) knowing only those below it. graphlib names one cycle when there is one."""
    graph = _package_graph()
    assert {"config", "data", "adapt", "distributed", "pipeline"} <= set(graph)
    assert "weights" in graph["store"] and "config" in graph["data"]  # the walk sees real edges
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as cycle:
        raise AssertionError(f"package import cycle: {' -> '.join(cycle.args[1])}") from None
    assert order.index("config") < order.index("data") < order.index("adapt") < order.index("pipeline")


def test_the_cycle_check_finds_a_cycle():
    graph = _package_graph()
    graph["config"] = graph["config"] | {"adapt"}  # what config's forecast validator did before issue 37
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())
