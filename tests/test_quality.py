"""Static checks run as tests: ruff (lint, format) on the tree, mypy (strict on the core, default on the edges)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed; install the test extras: pip install -e '.[test]'")
    return exe


def test_ruff_is_clean():
    done = subprocess.run(
        [_tool("ruff"), "check", "twin", "streams", "scenarios", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_leaves_the_tree_as_it_is():
    done = subprocess.run([_tool("ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, "run `ruff format .`:\n" + done.stdout + done.stderr


def test_mypy_strict_on_twin_and_checked_on_streams_and_scenarios():
    # strict on the core (pyproject.toml), the default checks on the edges
    done = subprocess.run([_tool("mypy"), "twin", "streams", "scenarios"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
