"""Every test that README.md's reliability table ("| fault | outcome | test |") and cluster/README.md §9
cite exists and is collected by pytest, so neither can name a test that is gone or renamed.

A citation is a backticked ``file.py::test_name``, ``::test_name`` (the same file as the citation before
it in the cell), or a path (``tests/reliability/test_bad_input.py``: a test file, which must collect at
least one test; a helper module, which must exist). A bare file name is looked up under tests/; where
several files carry it (tests/test_faults.py and tests/reliability/test_faults.py) the cited test must be
collected from exactly one of them, else the citation is reported as ambiguous.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE_HEADER = "| fault | outcome | test |"
SECTION = "## 9. "

_SPAN = re.compile(r"`([^`]+)`")
_CITATION = re.compile(r"(?:(?P<file>(?:[\w.-]+/)*[\w.-]+\.py))?(?:::(?P<test>\w+(?:::\w+)*))?")


@dataclass(frozen=True)
class Citation:
    where: str  # "README.md row 3" / "cluster/README.md §9"
    file: str  # as written: "test_faults.py", "tests/reliability/test_bad_input.py"
    test: str | None  # "test_x", "TestClass::test_x", or None for the whole file


def citations_in(text: str, where: str) -> list[Citation]:
    """The citations in ``text``, in order; ``::test_y`` takes the file of the citation before it."""
    found: list[Citation] = []
    file: str | None = None
    for span in _SPAN.findall(text):
        match = _CITATION.fullmatch(span.strip())
        if match is None or not (match["file"] or match["test"]):
            continue  # a setting, a command, an exception name: not a citation
        if match["file"]:
            file = match["file"]
        elif file is None:
            raise AssertionError(f"{where}: `{span}` continues a file, but no file was cited before it")
        found.append(Citation(where, file, match["test"]))
    return found


def table_rows(readme: str) -> list[tuple[str, str]]:
    """(the row's fault, its test cell) for every row of the reliability table."""
    lines = readme.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == TABLE_HEADER]
    assert len(starts) == 1, f"README.md holds {len(starts)} tables headed {TABLE_HEADER!r}, expected 1"
    rows = []
    for line in lines[starts[0] + 2 :]:  # past the header and its --- line
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"README.md reliability table: a row without 3 cells: {line!r}"
        rows.append((cells[0], cells[2]))
    return rows


def section(text: str, heading: str) -> str:
    """The text from the ``## `` heading that starts with ``heading`` to the next ``## `` heading."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(heading)]
    assert len(starts) == 1, f"{len(starts)} headings start with {heading!r}, expected 1"
    end = next((i for i in range(starts[0] + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[starts[0] : end])


def all_citations() -> tuple[list[Citation], list[Citation]]:
    readme = (REPO / "README.md").read_text()
    table = []
    for number, (fault, cell) in enumerate(table_rows(readme), 1):
        cited = citations_in(cell, f"README.md reliability table row {number} ({fault[:50]})")
        assert cited, f"README.md reliability table row {number} ({fault}) cites no test: {cell!r}"
        table.extend(cited)
    cluster = citations_in(section((REPO / "cluster" / "README.md").read_text(), SECTION), "cluster/README.md §9")
    return table, cluster


def _candidates(file: str) -> list[Path]:
    """The files a citation may mean: its path from the repository root, else every file so named in tests/."""
    if "/" in file:
        return [REPO / file] if (REPO / file).is_file() else []
    return sorted(p for p in (REPO / "tests").rglob(file) if p.is_file())


def _collected(paths: list[Path]) -> dict[str, set[str]]:
    """pytest's own collection of ``paths``: for each path (relative to the repo), its tests' names after ``::``."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *(str(p.relative_to(REPO)) for p in paths)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"pytest --collect-only over the cited files failed:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
    tests: dict[str, set[str]] = {str(p.relative_to(REPO)): set() for p in paths}
    for line in proc.stdout.splitlines():
        path, sep, name = line.strip().partition("::")
        if sep and path in tests:
            tests[path].add(re.sub(r"\[.*\]$", "", name))  # test_x[param] -> test_x
    return tests


def test_citation_parser_reads_each_form() -> None:
    cell = "`a.py::test_x`, `::test_y`, `LeaseLost`, `tests/reliability/b.py`, `c.py::TestK::test_z`, `store.url`"
    assert citations_in(cell, "here") == [
        Citation("here", "a.py", "test_x"),
        Citation("here", "a.py", "test_y"),
        Citation("here", "tests/reliability/b.py", None),
        Citation("here", "c.py", "TestK::test_z"),
    ]


def problems(citations: list[Citation], collected: dict[str, set[str]]) -> list[str]:
    """What is wrong with each citation, given pytest's collection (``_collected``) of the test files."""
    found = []
    for c in citations:
        cited = f"`{c.file}{'::' + c.test if c.test else ''}` ({c.where})"
        candidates = [str(p.relative_to(REPO)) for p in _candidates(c.file)]
        if not candidates:
            found.append(f"{cited}: no such file")
        elif len(candidates) > 1 and c.test is None:
            found.append(f"{cited}: ambiguous, files {candidates}: cite the path")
        elif c.test is None:
            if Path(candidates[0]).name.startswith("test_") and not collected.get(candidates[0]):
                found.append(f"{cited}: pytest collects no test from {candidates[0]}")
        else:
            holders = [path for path in candidates if c.test in collected.get(path, ())]
            if not holders:
                found.append(f"{cited}: not collected from {candidates}")
            elif len(holders) > 1:
                found.append(f"{cited}: ambiguous, collected from each of {holders}: cite the path")
    return found


def test_every_test_the_readmes_cite_is_collected() -> None:
    table, cluster = all_citations()
    assert len(table) >= 10, f"the README.md reliability table yielded only {len(table)} citations: {table}"
    assert any(Path(c.file).name.startswith("test_") for c in cluster), f"cluster/README.md §9 cites no test file: {cluster}"
    citations = table + cluster
    collected = _collected(sorted({p for c in citations for p in _candidates(c.file) if p.name.startswith("test_")}))
    wrong = problems(citations, collected)
    assert not wrong, "stale or ambiguous citations:\n" + "\n".join(wrong)


def test_a_missing_an_uncollected_or_an_ambiguous_citation_is_reported() -> None:
    both = ["tests/reliability/test_faults.py", "tests/test_faults.py"]  # two files of one name
    collected = {both[0]: {"test_only_here", "test_in_both"}, both[1]: {"test_in_both"}, "tests/test_store.py": set()}
    cited = [
        Citation("t", "test_faults.py", "test_only_here"),  # fine: one holder
        Citation("t", "test_faults.py", "test_in_both"),
        Citation("t", "test_faults.py", "test_gone"),
        Citation("t", "test_faults.py", None),
        Citation("t", "tests/test_faults.py", "test_in_both"),  # fine: the path decides
        Citation("t", "test_no_such_file.py", "test_x"),
        Citation("t", "tests/test_store.py", None),
    ]
    assert problems(cited, collected) == [
        f"`test_faults.py::test_in_both` (t): ambiguous, collected from each of {both}: cite the path",
        f"`test_faults.py::test_gone` (t): not collected from {both}",
        f"`test_faults.py` (t): ambiguous, files {both}: cite the path",
        "`test_no_such_file.py::test_x` (t): no such file",
        "`tests/test_store.py` (t): pytest collects no test from tests/test_store.py",
    ]
