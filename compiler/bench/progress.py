"""Shared harness plumbing: DeepBench suites and set selection, and a progress display for long runs."""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from ir.errors import IsamapError

SETS = ("training", "inference_server", "inference_device")


def bench_backend(t) -> str:
    """How a target is benchmarked: 'sim' (cycles against the vendor schedule), 'llvm' (seconds
    against numpy) or 'cuda' (device seconds against cuBLAS); any other backend is a user error."""
    backend = t.prop("backend", "sim")
    if backend not in ("sim", "llvm", "cuda"):
        raise IsamapError(f"benchmarking the {backend} backend is not available yet (the harness times "
                          f"cpu, cuda and simulated targets)")
    return backend


DATA = Path(__file__).resolve().parent / "data"


def load_suite(suite: str, quick: list[tuple], csv_name: str, row, sets, keep=lambda r: True,
               only=None) -> list[tuple]:
    """The problems of a suite: ``quick``, or every row of a shipped DeepBench CSV that ``keep``
    accepts, each made a tuple by ``row``; then restricted to ``sets`` and the ``only`` shapes."""
    if suite == "quick":
        rows = list(quick)
    elif suite == "deepbench":
        with open(DATA / csv_name) as f:
            rows = [row(r) for r in csv.DictReader(f) if keep(r)]
    else:
        raise IsamapError(f"unknown suite '{suite}' (quick or deepbench)")
    return select_shapes(select_sets(rows, sets), only)


def select_sets(rows: list[tuple], sets) -> list[tuple]:
    """Keep the rows (whose first field is the DeepBench set) in ``sets``; a typo is an error, not an empty run."""
    if not sets:
        return list(rows)
    for s in sets:
        if s not in SETS:
            raise IsamapError(f"unknown set '{s}' ({', '.join(SETS)})")
    return [r for r in rows if r[0] in sets]


def _shape_pattern(text: str) -> tuple[list[int], tuple[bool, bool] | None]:
    """'2048x1' -> ([2048, 1], None); '1024x8x500000:tn' -> ([1024, 8, 500000], (True, False))."""
    dims, _, layout = text.strip().lower().partition(":")
    try:
        sizes = [int(x) for x in dims.split("x")]
    except ValueError:
        sizes = []
    if not sizes or (layout and layout not in ("nn", "nt", "tn", "tt")):
        raise IsamapError(f"bad shape '{text}' for --only (sizes joined by 'x' in the table's column order, "
                          f"GEMM M x N x K or GRU hidden x batch x timesteps, a prefix of them matching any "
                          f"rest, e.g. 2048x1 or 1024x8x500000:tn)")
    return sizes, ((layout[0] == "t", layout[1] == "t") if layout else None)


def select_shapes(rows: list[tuple], only) -> list[tuple]:
    """Keep the rows matching one of the ``only`` shapes (a row is (set, sizes..., [a_t, b_t])):
    a shape lists leading sizes, so '2048x1' picks every hidden-2048 batch-1 GRU row. A shape
    that matches nothing is an error, like an unknown set: a typo should not bench nothing."""
    if not only:
        return list(rows)
    pats = [(text, *_shape_pattern(text)) for text in only]
    for text, sizes, layout in pats:
        if not any(_matches(r, sizes, layout) for r in rows):
            raise IsamapError(f"no row of the suite has shape '{text}'")
    return [r for r in rows if any(_matches(r, sizes, layout) for _, sizes, layout in pats)]


def _matches(row: tuple, sizes: list[int], layout) -> bool:
    dims = [x for x in row[1:] if isinstance(x, int) and not isinstance(x, bool)]
    flags = tuple(x for x in row[1:] if isinstance(x, bool))
    return dims[:len(sizes)] == sizes and (layout is None or flags == layout)


class Progress:
    """A one-line progress bar on stderr with the time left.  The rows of a suite differ in
    cost by orders of magnitude (the whole DeepBench GEMM set: 47 minutes, most of it in a
    few dozen large rows in the middle), so the estimate weighs each row by ``weights`` (any
    unit: a rough seconds guess) and scales by how long the finished rows actually took."""

    def __init__(self, what: str, total: int, enabled: bool = True, weights: list[float] | None = None,
                 after: float = 0.0):
        self.what, self.total, self.enabled = what, total, enabled
        self.weights = list(weights) if weights is not None and len(weights) == total else [1.0] * total
        self.t0 = time.time()
        self.done = 0
        self._width = 0
        self.after = after  # seconds of silence first: work that ends sooner shows no bar at all
        self._shown = False

    def left(self) -> float | None:
        """Seconds still to go, from the finished rows' pace (None before the first)."""
        done = sum(self.weights[:self.done])
        if self.done == 0 or done <= 0:
            return None
        return (time.time() - self.t0) * sum(self.weights[self.done:]) / done

    def step(self, note: str = ""):
        """One more done; ``note`` (e.g. the best so far) follows the count."""
        self.done += 1
        if self.enabled and time.time() - self.t0 >= self.after:
            self._shown = True
            bar = "#" * int(20 * self.done / max(1, self.total))
            left = self.left() if self.done < self.total else None
            eta = f", ~{_duration(left)} left" if left is not None else ""
            line = (f"{self.what}: [{bar:<20}] {self.done}/{self.total} ({time.time() - self.t0:.0f}s{eta})"
                    + (f" {note}" if note else ""))
            pad, self._width = max(0, self._width - len(line)), len(line)  # a shorter line covers the last
            print("\r" + line + " " * pad, end="", file=sys.stderr, flush=True)

    def close(self):
        if self.enabled and self._shown:
            print(file=sys.stderr)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 90 else f"{seconds / 60:.0f} min"
