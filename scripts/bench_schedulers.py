#!/usr/bin/env python3
"""Scheduling strategies against `vendor` and the roofline on the simulated targets.

    python scripts/bench_schedulers.py [--quick] [--trials 12] [--out results.json]

For DeepBench GEMMs and MobileNet-style convolution layers: simulated cycles
of every strategy (vendor, analytical, cpsat, tuned), the ratio to vendor and
to the roofline, the analytical model's prediction error, scheduling time,
and the learned model's Spearman rank correlation on the measurements the
tuner made (predicted before measuring).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hw_models  # noqa: E402
import compiler  # noqa: E402
from compiler.bench.gemm import _cycles, gemm_source  # noqa: E402
from ir.bind import bind  # noqa: E402
from schedulers.tune import tune  # noqa: E402

GEMMS = {"sim-nnp": [("bfloat16", "float", 1760, 128, 1760), ("bfloat16", "float", 2048, 32, 2048),
                     ("bfloat16", "float", 5124, 16, 2048), ("bfloat16", "float", 512, 8, 500)],
         "sim-gemmini": [("int8", "int32", 512, 128, 512), ("int8", "int32", 1760, 16, 1760),
                         ("int8", "int32", 512, 8, 500)]}
CONV = {"sim-nnp": [("depthwise_separable_conv2d", dict(N=1, C=32, H=58, W=58, R=3, S=3, F=64)),
                    ("pointwise_conv2d", dict(N=1, C=64, H=28, W=28, F=128)),
                    ("conv2d", dict(N=1, C=32, H=30, W=30, F=64, R=3, S=3))],
        "sim-gemmini": []}


def run(target, src, sizes, strategies, trials):
    t = hw_models.load(target)
    row = {"target": target, "sizes": sizes}
    for s in strategies:
        t0 = time.time()
        ck = compiler.build(src, target=target, sizes=sizes, scheduler=s)
        row[f"{s}_schedule_s"] = round(time.time() - t0, 3)
        cyc, modeled, _ = _cycles(ck, 2_000_000)
        row[s] = cyc
        row[f"{s}_predicted"] = ck.schedule.predicted.get("cycles")
        if s == "analytical":
            row["roofline"] = None
    if trials:
        k = compiler.parse(src).kernel() if "def " in src else compiler.parse(src).kernel()
        b = bind(k, sizes)
        t0 = time.time()
        best, st = tune(k, b, t, trials, None, 1, progress=False)
        row["tuned"] = st["best_cycles"]
        row["tuned_s"] = round(time.time() - t0, 1)
        row["spearman"] = st["spearman"]
    ck = compiler.build(src, target=target, sizes=sizes, scheduler="analytical")
    arrays = {x.name: __import__("numpy").zeros(ck.bound.shapes[x.name], x.dtype.np) for x in ck.kernel.inputs}
    ck(**arrays)
    row["roofline"] = ck.report["roofline_cycles"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one shape per target")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = []
    strategies = ["vendor", "analytical", "cpsat"]
    for target in ("sim-nnp", "sim-gemmini"):
        shapes = GEMMS[target][:1] if a.quick else GEMMS[target]
        for in_t, acc, m, n, k in shapes:
            rows.append({"kernel": f"gemm {m}x{n}x{k} {in_t}",
                         **run(target, gemm_source(in_t, acc, False, False), dict(M=m, N=n, K=k), strategies,
                               a.trials)})
            print(json.dumps(rows[-1]), flush=True)
        for name, sizes in ([] if a.quick else CONV[target]):
            rows.append({"kernel": name, **run(target, str(Path("kernels") / f"{name}.tc"), sizes, strategies, 0)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"{'target':<12} {'kernel':<34} {'vendor':>9} {'analyt.':>9} {'cpsat':>9} {'tuned':>9} "
          f"{'best/vendor':>11} {'%roof':>6} {'model err':>9} {'rho':>5}")
    for r in rows:
        best = min(v for v in (r.get("analytical"), r.get("cpsat"), r.get("tuned")) if v)
        err = (r["analytical_predicted"] - r["analytical"]) / r["analytical"] * 100
        rho = r.get("spearman")
        print(f"{r['target']:<12} {r['kernel']:<34} {r['vendor']:>9.0f} {r['analytical']:>9.0f} {r['cpsat']:>9.0f} "
              f"{(r.get('tuned') or float('nan')):>9.0f} {r['vendor'] / best:>11.2f} "
              f"{100 * r['roofline'] / best:>5.1f}% {err:>+8.1f}% {(rho if rho is not None else float('nan')):>5.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
