"""A progress bar on stderr for long benchmark runs: one line per finished item, with a bar, the count, the elapsed
time and what the item gave (a terminal sees the line redrawn in place)."""

from __future__ import annotations

import sys
import time

BAR_WIDTH = 30


class Progress:
  def __init__(self, total: int, title: str, stream=None):
    self.total = max(total, 1)
    self.done = 0
    self.title = title
    self.stream = stream or sys.stderr
    self.start = time.monotonic()
    self.in_place = self.stream.isatty()

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def advance(self, message: str, steps: int = 1) -> None:
    self.done = min(self.total, self.done + steps)
    filled = BAR_WIDTH * self.done // self.total
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    line = f"{self.title} [{bar}] {self.done}/{self.total} {self.elapsed():6.0f}s  {message}"
    end = "\r" if self.in_place and self.done < self.total else "\n"
    print(line if not self.in_place else f"\x1b[2K{line}", end=end, file=self.stream, flush=True)
