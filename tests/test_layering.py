"""The layering of DESIGN.md: twin/ is a pure core; scenarios/ never imports streams/."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_TWIN = {
    "streams", "scenarios", "faust", "aiokafka", "kafka", "confluent_kafka", "aiohttp", "http",
    "urllib", "requests", "prometheus_client", "polars", "pyarrow", "mode", "msgspec", "mcp",
}  # fmt: skip
# mypy_extensions: the compiler's class decorator (``mypyc_attr``), no behaviour of its own (twin.compiled)
ALLOWED_IN_TWIN = {"simpy", "numpy", "mypy_extensions", "twin"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_twin_imports_only_stdlib_simpy_numpy():
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "twin").rglob("*.py")):
        for name in _imports(path):
            assert name not in FORBIDDEN_IN_TWIN, f"{path.relative_to(ROOT)} imports {name}"
            assert name in stdlib or name in ALLOWED_IN_TWIN, f"{path.relative_to(ROOT)} imports {name}"


def test_scenarios_never_import_streams():
    for path in sorted((ROOT / "scenarios").rglob("*.py")):
        assert "streams" not in _imports(path), f"{path.relative_to(ROOT)} imports streams"


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports (import-linter) is not installed; install the test extras: pip install -e '.[test]'")
    done = subprocess.run([exe, str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
