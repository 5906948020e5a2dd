"""A tiny progress display: a bar on a terminal, plain lines otherwise.

No dependency: on a TTY one line is redrawn with ``\\r``; when the output is a
file or a pipe (CI logs) each finished step is one plain line, so logs stay
readable and nothing is lost to carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BAR_WIDTH = 24  # characters; leaves room for the label on an 80-column terminal


class Progress:
    """Counts steps of a known total and shows them.

    Args:
        total: the number of steps expected.
        stream: where to write (default: ``sys.stdout``).
        tty: force bar (True) or plain-line (False) mode; default: ``stream.isatty()``.

    Example::

        progress = Progress(total=3)
        for name in ("a", "b", "c"):
            progress.step(f"{name} done")
        progress.close()
    """

    def __init__(self, total: int, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._started = time.monotonic()
        self._width = 0

    def status(self, label: str) -> None:
        """Say what is running now (shown on a terminal only)."""
        if self.tty:
            self._draw(label)

    def step(self, label: str) -> None:
        """Count one finished step and show it."""
        self.done = min(self.done + 1, self.total)
        if self.tty:
            self._draw(label)
        else:
            elapsed = time.monotonic() - self._started
            self.stream.write(f"[{self.done:>3}/{self.total}] {elapsed:6.1f}s  {label}\n")
            self.stream.flush()

    def note(self, line: str) -> None:
        """Print a line above the bar (or as a plain line)."""
        if self.tty:
            self._clear()
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Finish the bar's line so that what follows starts on a fresh one."""
        if self.tty and self._width:
            self._clear()

    def _draw(self, label: str) -> None:
        filled = _BAR_WIDTH * self.done // self.total
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        elapsed = time.monotonic() - self._started
        text = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}"[:100]
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def _clear(self) -> None:
        self.stream.write("\r" + " " * self._width + "\r")
        self.stream.flush()
        self._width = 0
