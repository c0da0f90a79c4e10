"""The benchmarks' shared harness: the checkout, the environment, the command line, the output block.

Every script here is run as a file of the checkout — ``.venv/bin/python bench/NAME.py …``, the
commands of bench/README.md — so Python puts bench/ first on ``sys.path``, and a script imports
this module and its sibling modules by their plain names (``import harness``, ``from ray_start
import start_ray``). Nothing in bench/ imports from tests/: what tests and benchmarks share is in
the library (:mod:`timevec.store.local_s3`, :mod:`timevec.distributed.local_cluster`).

A script imports this module as ``import harness``, which isort puts before ``import ray``, every
``from … import`` and timevec's imports (a plain name sorts with the third-party plain imports).
Importing it

- makes THIS checkout's timevec importable, for the script and every process it starts: the venv
  ``make install`` builds (:data:`VENV_PYTHON`) holds timevec as an editable install of the
  checkout, and then nothing happens; under any other Python (a device machine's python3 with the
  wheels ``bench/gpu.sh`` carried, a venv of another checkout) the checkout goes first on
  ``sys.path`` and ``PYTHONPATH`` (Ray workers, subprocesses) — the one place bench/ touches
  ``sys.path`` (``tests/test_helpers_layout.py`` holds that);
- sets :data:`ENVIRONMENT` where the caller has not: the tests' environment (``tests/conftest.py``),
  for every benchmark and the Ray workers it starts.

Then :func:`parser` builds a script's command line (its docstring as the help; the common options
:func:`config_options` and :func:`tmp_option` as argparse parents); :func:`output_block` opens what
a run prints — the command, the UTC date, the commit, the machine, its load — and closes it at exit
with the wall time and the load then, so that a block copied into bench/README.md states when,
where and at which commit it was measured; :func:`load_note` is the load average printed beside
figures (on a shared machine the load decides whether two runs' times compare). :class:`Sections`
runs a check's named sections within a time budget (``bench/gpu.py``).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import importlib.metadata
import importlib.util
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the checkout this file is in
REPO = Path(__file__).resolve().parents[1]
#: the interpreter bench/README.md's commands name: the venv of ``make install`` (timevec installed editable)
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
#: what every benchmark (and the Ray workers it starts) runs with, unless the caller set otherwise
ENVIRONMENT = {
    "RAY_AUTH_MODE": "disabled",  # a local head without token auth (ARCHITECTURE §5)
    "RAY_DEDUP_LOGS": "0",  # read when ray is imported
    "TOKENIZERS_PARALLELISM": "false",  # tokenizers' threads and Ray's forked workers do not mix
    "HF_HUB_OFFLINE": "1",  # no benchmark reaches a model hub
}


def _this_checkout_importable() -> None:
    spec = importlib.util.find_spec("timevec")
    if spec is not None and spec.origin and Path(spec.origin).resolve().is_relative_to(REPO):
        return  # the venv's editable install of this checkout, or PYTHONPATH already names it
    sys.path.insert(0, str(REPO))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


_this_checkout_importable()
for _name, _value in ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)


# ----------------------------------------------------------------------------- the command line


def parser(doc: str | None, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A script's argument parser: its docstring as the help text, as written; ``parents``' options first."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                   parents=list(parents))


def config_options(default: str | Path | None, *, overrides: bool = True, help: str | None = None) -> argparse.ArgumentParser:
    """``--config FILE`` (``args.config``) and, with ``overrides``, ``--set KEY=VALUE`` (repeatable: ``args.overrides``)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--config", default=None if default is None else str(default),
                         help=help or "the study config (default: %(default)s)")
    if overrides:
        options.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="a config override (repeatable)")
    return options


def tmp_option() -> argparse.ArgumentParser:
    """``--tmp DIR`` (``args.tmp``): where the run's scratch folder is made (default: the system's temp dir)."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--tmp", default=None, help="scratch directory (default: a new temp dir)")
    return options


# ----------------------------------------------------------------------------- the output block


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def load_note(full: bool = False) -> str:
    """``load average 1.2`` (1 minute); ``full``: ``load average 1.2 1.5 2.0`` (1, 5 and 15 minutes)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} {five:.1f} {fifteen:.1f}" if full else f"load average {one:.1f}"


def commit() -> str:
    """``commit abc1234``, ``… with uncommitted changes``, or why it is unknown (a copy without .git)."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        # --no-optional-locks: never take the index lock another git command of the same checkout may need
        return subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=30)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return "commit unknown (not a git checkout)"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown (no git)"
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    """The cores, the CPU model, the memory and the versions that decide a benchmark's times."""
    model, memory = platform.machine(), ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    versions = [f"Python {platform.python_version()}"]
    for name in ("torch", "ray"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return f"{os.cpu_count()} cores ({model}){memory}; {', '.join(versions)}"


def output_block() -> None:
    """Print the lines that open a run's output block; at exit, the line that closes it.

    Called by a script's ``main`` once its arguments are parsed (never in the child processes whose
    stdout a parent reads)."""
    began = time.perf_counter()
    script = Path(sys.argv[0]).resolve()
    name = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else str(script)
    print(f"# {' '.join([name, *map(shlex.quote, sys.argv[1:])])}")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# {now}, {commit()}, {machine()}; {load_note(full=True)}", flush=True)
    atexit.register(lambda: print(f"# {name} ended after {time.perf_counter() - began:.0f} s; {load_note(full=True)}",
                                  flush=True))


# ----------------------------------------------------------------------------- sections of a check


class Sections:
    """A check's named sections, run in turn within a time budget, each recorded in :attr:`results`.

    A section is skipped — its line says why — when the budget is spent, when its estimate (where it
    has one) exceeds what is left, or when a section it needs did not finish; a section that raises
    is recorded as failed (its traceback printed) and the others still run. Every line said goes to
    stdout and to :attr:`lines`. ``on_start`` runs before each section, ``on_ok(key, result)`` after
    each that finished (to add to its record).
    """

    def __init__(self, budget_s: float = math.inf, on_start: Callable[[], None] | None = None,
                 on_ok: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.budget_s = budget_s
        self.began = time.perf_counter()
        self.lines: list[str] = []
        self.results: dict[str, dict[str, Any]] = {}
        self._on_start, self._on_ok = on_start, on_ok

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def run(self, key: str, name: str, section: Callable[[], dict[str, Any]], needs: tuple[str, ...] = (),
            estimate: Callable[[], float] | None = None, basis: str = "its estimate") -> None:
        """Run ``section`` as ``[key] name`` unless it must be skipped; record its result (a failure is recorded, not raised).

        ``estimate``: the seconds it would take, said to be ``basis``."""
        missing = [n for n in needs if self.results.get(n, {}).get("status") != "ok"]
        left = self.budget_s - self.elapsed()
        guess = estimate() if estimate is not None and not missing else None
        if left <= 0:
            why = f"the budget of {self.budget_s:g} s is spent ({self.elapsed():.0f} s elapsed)"
        elif guess is not None and guess > left:
            why = f"it would need ≈ {guess:.0f} s ({basis}), {left:.0f} s of the budget are left"
        elif missing:
            why = f"needs section(s) {', '.join(missing)}, which did not finish"
        else:
            why = None
        if why:
            self.results[name] = {"status": "skipped", "why": why}
            self.say(f"[{key}] {name}: skipped — {why}")
            return
        began = time.perf_counter()
        if self._on_start is not None:
            self._on_start()
        try:
            result = section()
            status = "ok"
        except Exception as exc:  # a failed section is reported; the others still run
            traceback.print_exc()
            result, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
            self.say(f"[{key}] {name}: FAILED — {result['error']}")
        result = {"status": status, **result, "seconds": round(time.perf_counter() - began, 2)}
        if guess is not None:
            result["estimate_s"] = round(guess, 1)
        if status == "ok" and self._on_ok is not None:
            self._on_ok(key, result)
        self.results[name] = result
