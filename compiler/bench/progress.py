"""Progress display for long benchmark runs (stderr, one line rewritten in place)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, what: str, total: int, enabled: bool = True):
        self.what, self.total, self.enabled = what, total, enabled
        self.t0 = time.time()
        self.done = 0

    def step(self):
        self.done += 1
        if self.enabled:
            bar = "#" * int(20 * self.done / max(1, self.total))
            print(f"\r{self.what}: [{bar:<20}] {self.done}/{self.total} ({time.time() - self.t0:.0f}s)",
                  end="", file=sys.stderr, flush=True)

    def close(self):
        if self.enabled:
            print(file=sys.stderr)
