"""Which of the twin's modules run compiled to C (mypyc), and running them from source instead.

The install (``setup.py``) compiles the modules a forecast spends its time in with mypyc:
the same source, type-checked, turned into a C extension that runs the same operations in
the same order (so the same floating-point results: a test compares every prediction with
the interpreted modules') without the interpreter's cost per attribute, call and object.

They run from their sources instead, with the reason in :data:`REASON`, when

- the install built nothing (``TWIN_PURE_PYTHON=1`` at install time, or a build without
  the compiled modules);
- ``TWIN_PURE_PYTHON`` is set when the twin is imported (to debug with ``pdb`` or
  ``cProfile``, which see only Python code, or to patch the modules' internals in tests);
- a module's source has changed since the build (an edit in a checkout installed with
  ``pip install -e .``): the extension would run the old code, so a warning says to
  rebuild (``python3 -m pip install -e .``) and the sources run meanwhile.

This module is imported by ``twin/__init__.py`` before any of the compiled ones.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: the modules compiled by the install (``setup.py`` reads this list from here)
MODULES = (
    "disruption",
    "durations",
    "engine",
    "forecast",
    "incremental",
    "lane",
    "live",
    "model",
    "network",
    "order",
    "placement",
    "provenance",
    "records",
    "site",
    "state",
    "trip",
    "vehicle",
)
#: the environment variable that makes the twin run its sources
PURE_ENV = "TWIN_PURE_PYTHON"

_HERE = Path(__file__).resolve().parent
#: written by the build: the SHA-256 of each compiled module's source
_STAMP = _HERE / "_compiled.sha256"


class _FromSource(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' sources ahead of their extensions."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(f"twin.{m}" for m in names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        return importlib.util.spec_from_file_location(fullname, _HERE / f"{fullname.rpartition('.')[2]}.py")


def _extensions() -> set[str]:
    """The twin's modules that have an extension next to their source (``_native__mypyc``: the shared one)."""
    found: set[str] = set()
    for path in _HERE.iterdir():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:  # the most specific first
            if path.name.endswith(suffix):
                if path.name[: -len(suffix)].isidentifier():
                    found.add(path.name[: -len(suffix)])
                break
    return found


def _changed() -> list[str]:
    """The compiled modules whose source differs from the one the build compiled."""
    try:
        lines = _STAMP.read_text(encoding="utf-8").splitlines()
    except OSError:
        return [f"twin/{m}.py" for m in MODULES]  # no record of the build: trust none of it
    built: dict[str, str] = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        built[name.strip()] = digest
    changed = []
    for m in MODULES:
        name = f"twin/{m}.py"
        try:
            digest = hashlib.sha256((_HERE / f"{m}.py").read_bytes()).hexdigest()
        except OSError:
            continue  # an installed wheel may hold the extension alone: nothing to compare
        if built.get(name) != digest:
            changed.append(name)
    return changed


def _decide(built: set[str]) -> tuple[bool, str]:
    if not built:
        return False, (
            "not built: the install compiled nothing (TWIN_PURE_PYTHON=1 at install time, no C compiler, "
            "or mypy refused the modules: `pip install -v` shows why)"
        )
    if built != {*MODULES, "_native__mypyc"}:
        # a build of another list of modules (a checkout updated since its install): some of
        # them old code, and a mix of compiled and source modules is never loaded
        return False, "the build compiled another list of modules: rebuild with `python3 -m pip install -e .`"
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return False, f"{PURE_ENV} is set"
    changed = _changed()
    if changed:
        return False, f"{', '.join(changed)} changed since the build: rebuild with `python3 -m pip install -e .`"
    return True, "compiled with mypyc"


_BUILT = _extensions()
#: whether the modules of :data:`MODULES` run compiled in this process
ACTIVE, REASON = _decide(_BUILT)

if not ACTIVE and _BUILT:
    if not REASON.startswith(PURE_ENV):
        warnings.warn(
            f"twin runs its compiled modules from their sources (slower): {REASON}", RuntimeWarning, stacklevel=2
        )
    # every module that has an extension, listed or not, runs from its source
    shadowed = (_BUILT | set(MODULES)) - {"_native__mypyc"}
    if any(f"twin.{m}" in sys.modules for m in shadowed):  # pragma: no cover - imported before twin itself
        msg = "twin.compiled must be imported before the twin's compiled modules"
        raise ImportError(msg)
    sys.meta_path.insert(0, _FromSource(sorted(shadowed)))


def describe() -> str:
    """One line for logs and benchmarks: how the twin's hot modules run, and why."""
    return f"twin modules: {'compiled' if ACTIVE else 'interpreted'} ({REASON})"
