"""Build: the twin's hot modules compiled to C with mypyc (``twin.compiled``).

Everything else is in ``pyproject.toml``. ``TWIN_PURE_PYTHON=1`` at install time builds
nothing (the package then runs from its sources, as it does when a compiled module's
source has changed since the build); the modules listed in ``twin.compiled.MODULES`` are
the ones compiled.
"""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _modules() -> tuple[str, ...]:
    """``twin.compiled.MODULES``, read from its source (importing it would decide how twin loads)."""
    tree = ast.parse((ROOT / "twin" / "compiled.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MODULES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    msg = "twin/compiled.py defines no MODULES"
    raise RuntimeError(msg)


MODULES = _modules()


def _extensions() -> list:  # type: ignore[type-arg]
    stamp = ROOT / "twin" / "_compiled.sha256"
    if os.environ.get("TWIN_PURE_PYTHON", "") not in ("", "0"):
        stamp.unlink(missing_ok=True)
        return []
    from mypyc.build import mypycify

    paths = [f"twin/{m}.py" for m in MODULES]
    # what the compiled modules were built from: ``twin.compiled`` runs the sources instead
    # when they no longer match (an edit since the build)
    stamp.write_text(
        "".join(f"{hashlib.sha256((ROOT / p).read_bytes()).hexdigest()}  {p}\n" for p in paths), encoding="utf-8"
    )
    try:
        extensions = mypycify(paths, opt_level="3", group_name="twin._native")
    except SystemExit as exc:  # mypy refused the modules (it exits after printing their errors)
        # the install goes on with the sources, as without a C compiler; ``twin run`` and
        # ``twin.compiled.describe()`` say so, and under CI=true a test fails on it
        stamp.unlink(missing_ok=True)
        print(f"warning: the twin's modules were not compiled (mypyc exited with {exc.code}); the sources will run")
        return []
    for ext in extensions:
        # a machine without a C compiler still installs: the sources run (``twin.compiled``)
        ext.optional = True
    return extensions


setup(ext_modules=_extensions())
