#!/usr/bin/env python3
"""int8 and bfloat16 GEMMs on the cpu target against torch (and numpy's float32 GEMM),
measured in the same run.

    python scripts/bench_lowp_cpu.py [--repeats 20] [--only 0,3] [--precision int8|bfloat16]

For DeepBench GEMM rows (the harness's quick set) and two squares: our median time on the
instruction the cpu backend chose (AMX tiles, VNNI dot products, or FMA on widened values,
whichever the host has: `docs/cpu.md`), torch.matmul's on the same precision (bfloat16:
oneDNN, on AMX where the host has it; int8: torch's integer matmul), numpy's float32 GEMM on
the same values (OpenBLAS: what a numpy user without low precision runs), and the ratios
(theirs / ours: above 1 is faster).  Sides are timed in alternating rounds
(`compiler.bench.gemm._timed_sides`); results are checked against the float64 product of the
same values.  Needs torch (`pip install -e '.[torch]'`).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import hw_models  # noqa: E402
from compiler.api import load_kernel  # noqa: E402
from compiler.backends.llvm.native import compile_cpu  # noqa: E402
from compiler.bench import comparison_args  # noqa: E402
from compiler.bench.gemm import _timed_sides  # noqa: E402
from ir.bind import bind  # noqa: E402
from ir.dtypes import round_bf16  # noqa: E402

ROWS = [  # (M, N, K, A transposed)
    (1760, 16, 1760, False), (1760, 128, 1760, False), (2048, 32, 2048, False), (2560, 64, 2560, False),
    (1760, 32, 1760, True), (5124, 16, 2048, False), (512, 8, 500, False), (512, 512, 512, False),
    (2048, 2048, 2048, False)]

SOURCE = {  # precision -> (element type, widened type, C's type)
    "int8": ("int8", "int32", "int32(M, N) C"),
    "bfloat16": ("bfloat16", "float", "C"),
}


def source(precision: str, a_t: bool) -> str:
    el, wide, c = SOURCE[precision]
    a, shape = ("A(k, m)", "(K, M)") if a_t else ("A(m, k)", "(M, K)")
    return f"def g({el}{shape} A, {el}(K, N) B) -> ({c}) {{ C(m, n) +=! {wide}({a}) * {wide}(B(k, n)) }}"


def operands(precision: str, rng, a_shape, b_shape):
    if precision == "int8":
        return rng.integers(-128, 128, a_shape).astype(np.int8), rng.integers(-128, 128, b_shape).astype(np.int8)
    return (round_bf16(rng.uniform(-1, 1, a_shape).astype(np.float32)),
            round_bf16(rng.uniform(-1, 1, b_shape).astype(np.float32)))


def main() -> int:
    setup = comparison_args(__doc__, ROWS, lambda ap: ap.add_argument(
        "--precision", choices=list(SOURCE), action="append", help="int8 or bfloat16 (default: both)"))
    if setup is None:
        return 1
    args, torch, rows = setup
    target = hw_models.load("cpu")
    print(f"{'precision':9s} {'M x N x K':>17s} {'instr':>10s} {'ours ms':>9s} {'torch ms':>9s} {'numpy f32':>9s} "
          f"{'vs torch':>8s} {'vs numpy':>8s}  {'max err':>7s}")
    for precision in args.precision or list(SOURCE):
        ratios = {"torch": [], "numpy": []}
        for m, n, k, a_t in rows:
            kern = load_kernel(source(precision, a_t))
            b = bind(kern, dict(M=m, N=n, K=k))
            A, B = operands(precision, np.random.default_rng(0), b.shapes["A"], b.shapes["B"])
            nk = compile_cpu(kern, b, target)
            fa, fb = A.astype(np.float32), B.astype(np.float32)
            ta, tb = ((torch.from_numpy(A), torch.from_numpy(B)) if precision == "int8"
                      else (torch.from_numpy(A).bfloat16(), torch.from_numpy(B).bfloat16()))
            if a_t:
                fa, ta = fa.T, ta.T
            want = fa.astype(np.float64) @ fb.astype(np.float64)
            got = nk.run([A, B])[0]
            err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
            med = _timed_sides({"ours": lambda: nk.run([A, B]), "numpy": lambda: fa @ fb,
                                "torch": lambda: torch.matmul(ta, tb)}, repeats=args.repeats).medians()
            for side in ratios:
                ratios[side].append(med[side] / med["ours"])
            shape = f"{m}x{n}x{k}{' T' if a_t else ''}"
            print(f"{precision:9s} {shape:>17s} {nk.plans[0].instr:>10s} {med['ours'] * 1e3:9.3f} "
                  f"{med['torch'] * 1e3:9.3f} {med['numpy'] * 1e3:9.3f} {ratios['torch'][-1]:8.2f} "
                  f"{ratios['numpy'][-1]:8.2f}  {err:7.1e}", flush=True)
        gm = {s: float(np.exp(np.mean(np.log(r)))) for s, r in ratios.items()}
        print(f"{precision}: geometric-mean ratio vs torch {torch.__version__} {gm['torch']:.2f}, "
              f"vs numpy float32 {gm['numpy']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
