"""The interpreted baseline of a benchmark: the same measurement with the twin run from source.

The twin's hot modules run compiled (``twin.compiled``); a benchmark that compares with them
run from source measures that in a child process of its own script, started with
``TWIN_PURE_PYTHON=1`` and ``--child``, which prints its figures as one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from twin import compiled


def add_flags(ap: argparse.ArgumentParser, what: str) -> None:
    """``--interpreted-baseline`` (on by default) and the child's hidden ``--child``."""
    ap.add_argument(
        "--interpreted-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also time {what} with the twin's modules run from source (a child process)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the baseline's child


def run_child(script: str, args: list[str]) -> dict:
    """Run ``script --child ARGS`` with the twin's sources; its last line of output, as JSON."""
    out = subprocess.run(
        [sys.executable, script, "--child", *args],
        env={**os.environ, compiled.PURE_ENV: "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if out.returncode != 0:
        msg = f"the interpreted baseline failed:\n{out.stderr[-3000:]}"
        raise SystemExit(msg)
    return json.loads(out.stdout.strip().splitlines()[-1])
