#!/usr/bin/env python3
"""Time the mapping pass: every kernel in kernels/ onto every instruction of a target.

    python scripts/bench_mapping.py [--target sim-nnp] [--repeat 5]

Reports the median over repeats (after one warm-up) per kernel, with and
without --explain (rejections recorded), and the legal/candidate counts.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compiler  # noqa: E402
import hw_models  # noqa: E402
import kernels  # noqa: E402
from compiler.mapping import mappings_for_kernel  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="sim-nnp")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    t = hw_models.load(a.target)
    print(f"# mapping time per kernel onto all {len(t.compute_instrs)} compute instructions of {t.name} "
          f"(median of {a.repeat}, ms)")
    print(f"{'kernel':28s} {'legal':>6s} {'explain':>8s} {'ms':>8s} {'ms(explain)':>12s}")
    worst = 0.0
    for name in kernels.names():
        k = compiler.parse(kernels.path(name)).kernel()
        row = []
        for explain in (False, True):
            mappings_for_kernel(k, t, explain)  # warm-up
            times = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                ms = mappings_for_kernel(k, t, explain)
                times.append(time.perf_counter() - t0)
            row.append((statistics.median(times), ms))
        (fast, ms), (slow, ems) = row
        worst = max(worst, slow)
        print(f"{name:28s} {sum(m.legal for m in ms):6d} {len(ems):8d} {fast * 1e3:8.1f} {slow * 1e3:12.1f}")
    print(f"# slowest kernel (with --explain): {worst * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
