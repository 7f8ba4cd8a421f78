#!/usr/bin/env python3
"""How well the learned cost model ranks schedules it has not seen, and how many
measurements `tuned` needs to come within 5% of `exhaustive`.

    python scripts/bench_learned.py [--samples 40] [--trials 24] [--quick] [--out results.json]

For each workload: random legal schedules (mutation walks from the vendor and analytical
schedules) are measured on the simulator (timing only); 5-fold cross-validation then
gives the Spearman rank correlation between predicted and measured cycles on the held-out
fold, for the analytical model alone, the numpy ridge model and (with scikit-learn) the
gradient-boosted model.  Then `exhaustive`'s schedule is measured and a `tuned` search is
run, recording after how many measurements its best came within 5% of it.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import compiler  # noqa: E402
import hw_models  # noqa: E402
from compiler.bench.gemm import gemm_source  # noqa: E402
from ir.bind import bind  # noqa: E402
from schedulers.base import get  # noqa: E402
from schedulers.cost import schedule_cost  # noqa: E402
from schedulers.learned import _has_sklearn, features, make_model, spearman  # noqa: E402
from schedulers.space import candidates  # noqa: E402
from schedulers.tune import _nests, measure, mutate, tune  # noqa: E402

WORKLOADS = [
    ("sim-nnp", "gemm 512x128x512 bf16", gemm_source("bfloat16", "float", False, False), dict(M=512, N=128, K=512)),
    ("sim-nnp", "gemm 1024x32x1024 bf16", gemm_source("bfloat16", "float", False, False), dict(M=1024, N=32, K=1024)),
    ("sim-nnp", "pointwise_conv2d 64->128 28x28", "kernels/pointwise_conv2d.tc", dict(N=1, C=64, H=28, W=28, F=128)),
    ("sim-gemmini", "gemm 256x64x256 int8", gemm_source("int8", "int32", False, False), dict(M=256, N=64, K=256)),
]


def sample(k, b, t, cands, n: int, seed: int) -> list:
    """Up to ``n`` distinct legal schedules: random mutation walks from vendor and analytical."""
    rng = random.Random(seed)
    seeds = [get("vendor").schedule(k, b, t)[0], get("analytical").schedule(k, b, t)[0]]
    seen = {s.to_json(): s for s in seeds}
    frontier = list(seeds)
    tries = 0
    while len(seen) < n and tries < 50 * n:
        tries += 1
        cur = rng.choice(frontier)
        for _ in range(rng.randint(1, 3)):
            nxt = mutate(rng, t, cands, cur)
            if nxt is None:
                break
            cur = nxt
        if cur.to_json() not in seen:
            seen[cur.to_json()] = cur
            frontier.append(cur)
    return list(seen.values())


def cross_validated(X, y, analytical, folds: int = 5, seed: int = 0) -> dict:
    idx = np.random.default_rng(seed).permutation(len(y))
    parts = np.array_split(idx, folds)
    kinds = ["ridge"] + (["gbt"] if _has_sklearn() else [])
    rho = {"analytical": [], **{kd: [] for kd in kinds}}
    for i in range(folds):
        test = parts[i]
        train = np.concatenate([parts[j] for j in range(folds) if j != i])
        rho["analytical"].append(spearman(analytical[test], y[test]))
        for kd in kinds:
            m = make_model(kd).fit(X[train], np.log(y[train]))
            rho[kd].append(spearman(m.predict(X[test]), y[test]))
    return {kd: float(np.nanmean(v)) for kd, v in rho.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="the first workload only")
    ap.add_argument("--out")
    a = ap.parse_args()
    rows = []
    for target, name, src, sizes in (WORKLOADS[:1] if a.quick else WORKLOADS):
        t = hw_models.load(target)
        k = compiler.parse(src).kernel()
        b = bind(k, sizes)
        cands = candidates(k, b, t)
        t0 = time.time()
        scheds = sample(k, b, t, cands, a.samples, 0)
        y = np.array([measure(k, b, t, cands, s) for s in scheds])
        X = np.array([features(t, _nests(cands, s), s) for s in scheds])
        an = np.array([schedule_cost(t, _nests(cands, s), list(s.nests))["cycles"] for s in scheds])
        rho = cross_validated(X, y, an)
        sample_s = time.time() - t0
        ex = get("exhaustive").schedule(k, b, t)[0]
        ex_cycles = measure(k, b, t, cands, ex)
        _, st = tune(k, b, t, a.trials, None, 1, progress=False)
        hist = st["history"]
        within = next((i + 1 for i, c in enumerate(hist) if c is not None and c <= 1.05 * ex_cycles), None)
        row = {"target": target, "kernel": name, "samples": len(scheds), "spearman": rho,
               "measured_min": float(y.min()), "measured_max": float(y.max()), "exhaustive": ex_cycles,
               "tuned_best": st["best_cycles"], "tuned_within_5pct_after": within, "trials": len(hist),
               "sample_seconds": round(sample_s, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    kinds = ["analytical", "ridge"] + (["gbt"] if _has_sklearn() else [])
    print(f"\n{'target':<12} {'kernel':<32} {'n':>3} " + " ".join(f"{'rho ' + kd:>14}" for kd in kinds)
          + f" {'exhaustive':>10} {'tuned':>9} {'within 5% after':>15}")
    for r in rows:
        w = r["tuned_within_5pct_after"]
        print(f"{r['target']:<12} {r['kernel']:<32} {r['samples']:>3} "
              + " ".join(f"{r['spearman'][kd]:>14.2f}" for kd in kinds)
              + f" {r['exhaustive']:>10.0f} {r['tuned_best']:>9.0f} "
              + f"{(str(w) + ' trials') if w else 'not in ' + str(r['trials']):>15}")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
