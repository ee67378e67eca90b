"""Progress reporting for long commands: one updating line on a terminal, sparse lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """Callable ``(message, fraction)`` that prints progress to a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False, min_interval: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.min_interval = min_interval
        self._last = 0.0
        self._last_len = 0

    def __call__(self, message: str, fraction: float) -> None:
        """Report ``message`` at ``fraction`` (0..1) of the work done."""
        if self.quiet:
            return
        now = time.monotonic()
        final = fraction >= 1.0
        if not final and now - self._last < self.min_interval and fraction > 0.0:
            return
        self._last = now
        pct = f"{100 * min(max(fraction, 0.0), 1.0):5.1f}%"
        line = f"[{pct}] {message}"
        if self.tty:
            pad = max(0, self._last_len - len(line))
            self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            self._last_len = 0 if final else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """End an in-place line."""
        if self.tty and self._last_len:
            self.stream.write("\n")
            self._last_len = 0
