"""A one-line progress display for long runs (a line per update when not on a tty)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: float, stream: TextIO | None = None,
                 every: float = 1.0) -> None:
        self.label, self.total = label, total
        self.stream = stream or sys.stderr
        self.every = every
        self.tty = self.stream.isatty()
        self._last = -1e9
        self._t0 = time.monotonic()

    def update(self, done: float, msg: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        frac = 0.0 if self.total <= 0 else min(1.0, done / self.total)
        bar = "#" * int(frac * 20)
        line = (f"[{self.label}] [{bar:<20}] {frac * 100:5.1f}% "
                f"{done:7.1f}/{self.total:g} s  elapsed {now - self._t0:6.1f} s  {msg}")
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def fraction(self, frac: float, msg: str = "") -> None:
        self.update(frac * self.total, msg)

    def done(self, msg: str = "done") -> None:
        self.update(self.total, msg, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
