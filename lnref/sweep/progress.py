"""A sweep's live count on stderr: done / total, failures, time spent and time left.

On a terminal, one line redrawn in place with a bar (failures are printed above it as they
come); elsewhere (a log file, a pipe, CI) one plain line per finished task. The estimate of
the time left is the mean wall time per finished task of this run, times the tasks left: with
several workers it already counts their overlap.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    """Reports a sweep of ``total`` tasks named ``label`` ("stability", "profile", ...).

    ``emit(line)`` receives the plain lines; with ``bar_stream`` (a terminal) the count is
    drawn there instead, and ``emit`` receives only failures and the last line.
    """

    def __init__(self, label: str, emit: Callable[[str], None], bar_stream: TextIO | None = None) -> None:
        self.label = label
        self.emit = emit
        self.bar_stream = bar_stream
        self.total = self.skipped = self.finished = self.failed = 0
        self.started = time.perf_counter()

    @classmethod
    def on_stderr(cls, label: str, emit: Callable[[str], None]) -> Progress:
        """A bar when stderr is a terminal, plain lines through ``emit`` otherwise."""
        return cls(label, emit, sys.stderr if sys.stderr.isatty() else None)

    def start(self, total: int, skipped: int) -> None:
        self.total, self.skipped = total, skipped
        self.started = time.perf_counter()
        self._draw()

    def task_done(self, task_text: str, outcome: str, ok: bool) -> None:
        self.finished += 1
        self.failed += not ok
        if self.bar_stream is None:
            self.emit(f"{self.label} [{self._count()}] {task_text}: {outcome} ({self._timing()})")
            return
        if not ok:
            self._clear()
            self.emit(f"{self.label}: {task_text}: {outcome}")
        self._draw()

    def refresh(self) -> None:
        """Redraw the terminal's count (the time spent moves on); nothing on plain lines."""
        self._draw()

    def close(self) -> None:
        if self.bar_stream is not None:
            self._clear()
            self.bar_stream.flush()
            self.emit(f"{self.label} [{self._count()}] ({self._timing()})")

    def _count(self) -> str:
        text = f"{self.skipped + self.finished}/{self.total}"
        return text + (f", {self.failed} failed" if self.failed else "")

    def _timing(self) -> str:
        elapsed = time.perf_counter() - self.started
        left = self.total - self.skipped - self.finished
        text = duration(elapsed)
        if left and self.finished:
            text += f"; about {duration(elapsed / self.finished * left)} left"
        return text

    def _draw(self) -> None:
        if self.bar_stream is None:
            return
        done = self.skipped + self.finished
        filled = round(BAR_WIDTH * done / self.total) if self.total else BAR_WIDTH
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.bar_stream.write(f"\r{self.label} [{bar}] {self._count()} ({self._timing()})\x1b[K")
        self.bar_stream.flush()

    def _clear(self) -> None:
        assert self.bar_stream is not None
        self.bar_stream.write("\r\x1b[K")


def duration(seconds: float) -> str:
    """``seconds`` for a person: "0.4 s", "45 s", "3 min 10 s", "2 h 5 min"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
