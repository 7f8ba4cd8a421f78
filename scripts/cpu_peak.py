#!/usr/bin/env python3
"""Measure this CPU's ceilings: peak FP32 FMA throughput and memory read bandwidth.

    python scripts/cpu_peak.py [--passes 7] [--read-mib 256]

Both loops are JIT-compiled by llvmlite for the host CPU (``compiler.bench.machine``: twelve
independent vector FMA chains; a read loop of 64-byte-aligned vector loads over a buffer
several times the last-level cache), run on 1 thread and on every core (ctypes releases
the GIL); medians over the passes.  `isamap bench` measures the same in every host run and
prints each row's fraction of the roofline they give.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from compiler.bench.machine import measure  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passes", type=int, default=7, help="timed passes per loop (median)")
    ap.add_argument("--read-mib", type=int, default=None, help="read buffer (default: 8x the last-level cache, >= 256)")
    ap.add_argument("--threads", type=int, default=None, help="default: every CPU")
    a = ap.parse_args()
    c = measure(read_bytes=a.read_mib << 20 if a.read_mib else None, passes=a.passes, threads=a.threads)
    print(c.summary().replace("this host, measured in the same run: ", ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
