"""DeepBench GEMM rows on the cuda target in chunks, each chunk's rows appended to a JSON-lines
file as soon as they are measured (so a run cut short by a time limit keeps what it measured).

    python scripts/cuda_bench_rows.py OUT.jsonl [--sets training] [--chunk 16] [--filter large|smalln|all]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hw_models  # noqa: E402
from compiler.bench.gemm import gemm_suite, run_cuda_gemm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--sets", default=None)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--filter", default="all", choices=["all", "large", "smalln"])
    a = ap.parse_args()
    probs = gemm_suite("deepbench", a.sets.split(",") if a.sets else None)
    if a.filter == "large":
        probs = [p for p in probs if p[1] * p[2] * p[3] >= 1e10]
    elif a.filter == "smalln":
        probs = [p for p in probs if p[2] <= 32]
    t = hw_models.load("cuda")
    with open(a.out, "a") as f:
        for i in range(0, len(probs), a.chunk):
            for r in run_cuda_gemm(t, probs[i:i + a.chunk], 5, False):
                f.write(json.dumps(dataclasses.asdict(r), default=float) + "\n")
            f.flush()
            print(f"{min(i + a.chunk, len(probs))}/{len(probs)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
