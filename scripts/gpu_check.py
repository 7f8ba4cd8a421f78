"""Check and time the cuda backend on a machine with an NVIDIA GPU, in one call.

    python scripts/gpu_check.py [--target cuda-h100-wgmma] [--out DIR] [--sweep]

1. correctness: GEMMs in fp16 / bf16 / fp32, all four transposition forms, divisible and
   awkward sizes (1, primes, remainders, split-K), each against a float64 numpy product;
2. tiling sweep (--sweep): several block tilings of a few DeepBench shapes, timed, next to
   the tiling the model picks (what the model in schedulers/gpu_tiles.py should learn from).

The GPU tests (pytest -m gpu) and `isamap bench gemm --target cuda` are run separately.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compiler  # noqa: E402
import hw_models  # noqa: E402
from compiler.backends.cuda import cuda_source  # noqa: E402
from compiler.backends.cuda.gemm import with_tiling  # noqa: E402
from compiler.backends.cuda.runtime import CudaKernel, compile_source  # noqa: E402
from compiler.backends.cuda.scalar import plans  # noqa: E402
from compiler.bench.gemm import gemm_operands, gemm_source  # noqa: E402
from ir.bind import bind  # noqa: E402
from schedulers.gpu_tiles import TC_SHAPES, GpuTiling, smem_capacity  # noqa: E402

SIZES = [(1, 1, 1), (7, 5, 3), (16, 8, 16), (100, 37, 24), (129, 17, 257), (64, 64, 64), (1760, 16, 1760),
         (5124, 9, 500), (256, 1024, 72), (33, 300, 1000)]
WGMMA_SIZES = [(2048, 1024, 512), (2000, 1032, 520)]  # enough tiles for the model to pick wgmma (cuda-h100-wgmma)
NP = {"half": np.float16, "bfloat16": np.float32, "float": np.float32}


def operands(rng, it, m, n, k, a_t, b_t):
    A, B = gemm_operands(rng, m, n, k, a_t, b_t, NP[it])
    if it == "bfloat16":  # values exactly representable in bfloat16
        A = (A.view(np.uint32) & 0xFFFF0000).view(np.float32)
        B = (B.view(np.uint32) & 0xFFFF0000).view(np.float32)
    return A, B


def case_name(c) -> str:
    it, at, bt, (m, n, k) = c
    return f"{it},{'T' if at else 'N'}{'T' if bt else 'N'},{m},{n},{k}"


def correctness(t, out: list, only: str | None = None) -> int:
    bad = 0
    sizes = SIZES + (WGMMA_SIZES if any("wgmma" in i.name for i in t.instrs) else [])
    cases = [(it, at, bt, s) for it in ("half", "bfloat16", "float") for at in (False, True) for bt in (False, True)
             for s in sizes]
    if only:
        cases = [c for c in cases if case_name(c) == only]
    built = {}

    def build(c):
        it, at, bt, (m, n, k) = c
        ck = compiler.build(gemm_source(it, "float", at, bt), target=t.path, sizes=dict(M=m, N=n, K=k))
        compile_source(ck.gpu.src)
        return c, ck
    with ThreadPoolExecutor(12) as ex:
        for c, ck in ex.map(build, cases):
            built[c] = ck
    for c in cases:
        it, at, bt, (m, n, k) = c
        ck = built[c]
        print("run", case_name(c), flush=True)  # the last one printed is the culprit of a crash
        rng = np.random.default_rng(m * 7919 + n * 31 + k)
        A, B = operands(rng, it, m, n, k, at, bt)
        res, sec = ck.gpu({"A": A, "B": B})
        ref = (A.T if at else A).astype(np.float64) @ (B.T if bt else B).astype(np.float64)
        err = float(np.linalg.norm(res["C"] - ref) / max(np.linalg.norm(ref), 1e-30))
        tol = 1e-5 if it == "float" else 1e-3
        ok = err <= tol and np.isfinite(res["C"]).all()
        bad += not ok
        line = (f"{'ok ' if ok else 'BAD'} {it:<8} {'T' if at else 'N'}{'T' if bt else 'N'} {m:>5}x{n:>4}x{k:>5} "
                f"rel.err {err:.1e}  {ck.report['code'][:110]}")
        print(line, flush=True)
        out.append(line)
        if not ok:
            out.append("    " + error_map(res["C"], ref, tol))
            print(out[-1], flush=True)
    return bad


def error_map(c: np.ndarray, ref: np.ndarray, tol: float) -> str:
    """Where a wrong product is wrong, in the terms a tile bug shows in: the share of wrong
    elements, and which residues of rows and columns modulo 8, 16 and 64 hold them (a swizzle,
    fragment or descriptor mistake repeats with the tile's period; all residues: a whole-tile
    or pipeline mistake)."""
    wrong = ~np.isclose(c, ref, rtol=tol * 10, atol=tol * 10 * max(1.0, float(np.abs(ref).max())))
    if not wrong.any():
        return "no element off by more than 10x the tolerance"
    rows, cols = np.nonzero(wrong)
    parts = [f"{wrong.mean():.1%} of elements wrong, NaN {int(np.isnan(c).sum())}"]
    for name, idx in (("rows", rows), ("cols", cols)):
        for period in (8, 16, 64):
            res = sorted(set((idx % period).tolist()))
            parts.append(f"{name}%{period}: " + ("all" if len(res) == period else ",".join(map(str, res[:16]))))
    parts.append(f"first wrong at ({rows[0]}, {cols[0]}): {c[rows[0], cols[0]]:.4g} vs {ref[rows[0], cols[0]]:.4g}")
    return "; ".join(parts)


def sweep(t, out: list, shapes: list, a_t: bool = False, b_t: bool = False):
    for m, n, k in shapes:
        src = gemm_source("half", "float", a_t, b_t)
        kern = compiler.parse(src).kernel()
        b = bind(kern, dict(M=m, N=n, K=k))
        base = plans(kern, b, t)[0]
        chosen = base.tiling
        options = [chosen]
        if base.wgmma:  # warpgroup-MMA tilings: 128 x 128 or 256, 3-6 ring stages; warp-specialised with
            # TMA copies (persistent, one block per SM, or a block per tile), or every thread copying
            smem = smem_capacity(t)
            for bm, bn in ((128, 128), (128, 256)):
                for stages in (3, 4, 5, 6):
                    for tma, persistent in ((True, t.cores), (True, 0), (False, 0)):
                        tl = GpuTiling(bm, bn, 64, 64, bn, stages, 1, 0.0, True, tma, persistent)
                        if tl.smem_bytes(2) <= smem and bn <= 2 * n:
                            options.append(tl)
        for bm, bn, wm, wn in TC_SHAPES:
            for stages in (3, 4):
                for splits in (1, 2, 4, 8):
                    tiles = -(-m // bm) * -(-n // bn)
                    if bn > 2 * max(n, 8) or bm > 2 * m or (splits > 1 and (k // splits < 256 or tiles > 400)):
                        continue
                    options.append(GpuTiling(bm, bn, 32, wm, wn, stages, splits))
        options = list(dict.fromkeys(options))

        def build(tl):
            p = with_tiling(base, t, tl)
            src_cu = cuda_source(kern, b, t=t, gemm={0: p})
            try:
                compile_source(src_cu)
            except RuntimeError as e:
                return tl, None, str(e)[-300:]
            return tl, CudaKernel(kern, b, src_cu), None
        with ThreadPoolExecutor(14) as ex:
            results = list(ex.map(build, options))
        rng = np.random.default_rng(0)
        A, B = operands(rng, "half", m, n, k, a_t, b_t)
        from compiler.bench.gemm import _event_times, _torch_cuda
        torch = _torch_cuda()
        ref = None
        if torch is not None:  # float32 product on the GPU (no TF32): every option's result is checked
            fa, fb = torch.from_numpy(A.astype(np.float32)).cuda(), torch.from_numpy(B.astype(np.float32)).cuda()
            ref = ((fa.t() if a_t else fa) @ (fb.t() if b_t else fb)).cpu().numpy()
        rows = []
        for tl, kc, err in results:
            if kc is None:
                rows.append((float("inf"), tl, err))
                continue
            res, one = kc({"A": A, "B": B})
            if ref is not None:
                rel = float(np.linalg.norm(res["C"] - ref) / max(np.linalg.norm(ref), 1e-30))
                if not rel <= 1e-3:
                    err = f"WRONG RESULT (rel.err {rel:.1e})"
            inner = int(min(200, max(1, 2e-3 / max(one, 1e-7))))
            _, ts = kc.time({"A": A, "B": B}, reps=7, inner=inner)
            rows.append((statistics.median(ts), tl, err))
        rows.sort(key=lambda r: r[0])
        flops = 2 * m * n * k
        if torch is not None:
            ta, tb = torch.from_numpy(A).cuda(), torch.from_numpy(B).cuda()
            ta, tb = (ta.t() if a_t else ta), (tb.t() if b_t else tb)
            sec = statistics.median(_event_times(torch, lambda: torch.matmul(ta, tb), 7, 20))
            line = f"  cuBLAS {sec * 1e6:9.1f} us {flops / sec / 1e12:7.1f} TFLOP/s"
            print(line)
            out.append(line)
        head = f"# sweep {m}x{n}x{k}: model's choice {chosen.describe()}"
        print(head)
        out.append(head)
        for sec, tl, err in rows[:8] + [r for r in rows[8:] if r[1] == chosen or r[2]]:
            line = (f"  {'*' if tl == chosen else ' '} {sec * 1e6:9.1f} us {flops / sec / 1e12:7.1f} TFLOP/s  "
                    f"{tl.bm}x{tl.bn} w{tl.wm}x{tl.wn} s{tl.stages} split{tl.splits}" + (" wgmma" if tl.wgmma else "") + (" tma" if tl.tma else "")
                    + (f" persistent{tl.persistent}" if tl.persistent else "")
                    + (f" ERR {err}" if err else ""))
            print(line, flush=True)
            out.append(line)


def debug(t, out: list):
    """Small products on the tiled and the scalar paths: NaN counts, errors and where they are."""
    for it, (m, n, k) in (("bfloat16", (64, 64, 64)), ("half", (64, 64, 64)), ("bfloat16", (16, 8, 24)),
                          ("bfloat16", (16, 8, 16)), ("half", (16, 8, 24))):
        src = gemm_source(it, "float", False, False)
        rng = np.random.default_rng(1)
        A, B = operands(rng, it, m, n, k, False, False)
        ref = A.astype(np.float64) @ B.astype(np.float64)
        for sched in ("tiled", "scalar"):
            ck = compiler.build(src, target=t.path, sizes=dict(M=m, N=n, K=k), scheduler=sched)
            res, _ = ck.gpu({"A": A, "B": B})
            c = res["C"]
            bad = ~np.isclose(c, ref, rtol=1e-3, atol=1e-3)
            rows, cols = np.nonzero(bad)
            line = (f"{it} {m}x{n}x{k} {sched}: nan {int(np.isnan(c).sum())} bad {int(bad.sum())} rows "
                    f"{sorted(set(rows.tolist()))[:12]} cols {sorted(set(cols.tolist()))[:12]}")
            print(line, flush=True)
            out.append(line)
            if bad.any():
                out.append(np.array2string(c[:2, :8], precision=3) + " vs " + np.array2string(ref[:2, :8], precision=3))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--debug", action="store_true")
    ap.add_argument("--shapes", default="1760x128x1760,2048x32x2048,5124x16x2048,4096x4096x4096,2560x64x2560",
                    help="sweep shapes MxNxK[,...]; append :TN etc. for transposed operands")
    ap.add_argument("--only", help="one correctness case, e.g. half,NT,129,17,257")
    ap.add_argument("--target", default="cuda", help="cuda (A100 figures, mma.sync), cuda-h100 or cuda-h100-wgmma (H100/H200; "
                    "the latter adds the wgmma path and its cases)")
    a = ap.parse_args()
    t = hw_models.load(a.target)
    out: list[str] = []
    t0 = time.time()
    if a.debug:
        debug(t, out)
    bad = 0 if a.no_check else correctness(t, out, a.only)
    if a.sweep:
        for spec in a.shapes.split(","):
            dims, _, form = spec.partition(":")
            m, n, k = (int(x) for x in dims.split("x"))
            sweep(t, out, [(m, n, k)], form[:1] == "T", form[1:2] == "T")
    out.append(f"{bad} failures; {time.time() - t0:.0f} s")
    print(out[-1])
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "gpu_check.txt").write_text("\n".join(out) + "\n")
        (Path(a.out) / "gpu_check.json").write_text(json.dumps(out))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
