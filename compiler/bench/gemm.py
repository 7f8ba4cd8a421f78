"""DeepBench GEMMs on a target: our schedule against the `vendor` schedule, simulated in the same run.

Kernels are generated per problem (transposition flags pick the TN/NT forms)
in the precision DeepBench prescribes for its set, falling back to what the
target can map: training multiplies in 16 bits (bf16, then fp16, then fp32,
then int8 on integer-only chips), inference in int8 (then 16-bit, then fp32).  Cycles come from
the timing simulator; shapes too large to simulate within the instruction
budget are reported from the analytical model and marked so.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from ir.errors import IsamapError

from . import machine
from .progress import Progress, bench_backend, load_suite


QUICK = [  # (set, m, n, k, a_t, b_t): small-N training rows, a TN row, square-ish, inference int8
    ("training", 1760, 16, 1760, False, False),
    ("training", 1760, 128, 1760, False, False),
    ("training", 2048, 32, 2048, False, False),
    ("training", 2560, 64, 2560, False, False),
    ("training", 1760, 32, 1760, True, False),
    ("inference_server", 5124, 16, 2048, False, False),
    ("inference_device", 512, 8, 500, False, False),
]

PRECISIONS = {"training": [("bfloat16", "float"), ("half", "float"), ("float", "float"), ("int8", "int32")],
              "inference_server": [("int8", "int32"), ("bfloat16", "float"), ("float", "float")],
              "inference_device": [("int8", "int32"), ("bfloat16", "float"), ("float", "float")]}


def gemm_source(in_t: str, acc_t: str, a_t: bool, b_t: bool) -> str:
    A = "float(K, M) A" if a_t else "float(M, K) A"
    B = "float(N, K) B" if b_t else "float(K, N) B"
    A = A.replace("float", in_t, 1)
    B = B.replace("float", in_t, 1)
    a = "A(k, m)" if a_t else "A(m, k)"
    b = "B(n, k)" if b_t else "B(k, n)"
    out = f"{acc_t}(M, N) C" if acc_t != "float" else "C"
    rhs = f"{a} * {b}" if acc_t == in_t else f"{acc_t}({a}) * {acc_t}({b})"
    return f"def gemm({A}, {B}) -> ({out}) {{\n    C(m, n) +=! {rhs}\n}}\n"


def gemm_operands(rng, m: int, n: int, k: int, a_t: bool, b_t: bool, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Random A and B in [-1, 1) for an MxNxK product, stored as the transposition flags say."""
    A = rng.uniform(-1, 1, (k, m) if a_t else (m, k)).astype(dtype)
    B = rng.uniform(-1, 1, (n, k) if b_t else (k, n)).astype(dtype)
    return A, B


def gemm_suite(suite: str, sets: list[str] | None, only=None) -> list[tuple]:
    return load_suite(suite, QUICK, "deepbench_gemm.csv",
                      lambda r: (r["set"], int(r["m"]), int(r["n"]), int(r["k"]), r["a_transposed"] == "true",
                                 r["b_transposed"] == "true"), sets, only=only)


@dataclass
class Row:
    set: str
    m: int
    n: int
    k: int
    a_t: bool
    b_t: bool
    precision: str = ""
    cycles: float | None = None
    baseline_cycles: float | None = None
    ratio: float | None = None
    roofline_cycles: float | None = None
    of_roofline: float | None = None
    utilization: float | None = None
    modeled: bool = False
    scheduler: str = ""
    compile_seconds: float = 0.0
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k


def _build(src: str, target: str, sizes: dict, scheduler: str):
    import compiler
    return compiler.build(src, target=target, sizes=sizes, scheduler=scheduler)


def _cycles(ck, budget: int) -> tuple[float, bool, dict]:
    """Simulated cycles (timing only), or the model's when the stream would exceed ``budget``."""
    from compiler.backends.sim.simulate import Simulator
    from schedulers.cost import schedule_cost
    nests = [n for si, cs in enumerate(ck.candidates) for n in cs[ck.schedule.mappings[si]].nests]
    est = sum(c["steps"] * 1 for c in schedule_cost(ck.target_ir, nests, list(ck.schedule.nests))["nests"])
    execs = sum(n.executions for n in nests)
    if execs > budget:
        return schedule_cost(ck.target_ir, nests, list(ck.schedule.nests))["cycles"], True, {"steps": est}
    arrays = {t.name: np.zeros(ck.bound.shapes[t.name], dtype=t.dtype.np) for t in ck.kernel.inputs}
    sim = Simulator(ck.target_ir, ck.program, ck.kernel, ck.bound, arrays, functional=False)
    sim.run()
    cycles, busy, _ = sim.timing()
    return float(cycles), False, {"instructions": len(sim.insts)}


QUIET_SECONDS = 0.2  # OpenBLAS's and our worker threads spin (0.1 s, ~25 ms) after each call before sleeping
MIN_SECONDS = 0.25  # repeat short problems until this much time is measured
ROUNDS = 3  # each side is timed in this many alternating rounds
# a short problem's round runs until MIN_SECONDS / ROUNDS is measured (at most this many calls):
# its first calls after the quiet pause wait for sleeping worker threads -- ours and OpenBLAS's
# -- whose wake-up took 0.1-8 ms on the project's VMs, so a round of 50 GEMV calls (1.5 ms)
# measured mostly that: 1024x1x512 at median 32 us against 16 us once the workers are up
MAX_CALLS = 20000
CONFIRM_BELOW = 0.9  # host benches re-time a row whose ratio came out below this (see _timed_sides)
CONFIRM_ROUNDS = 2 * ROUNDS


# Before each timed block of a problem with outputs this large, the harness allocates and
# fills an array of that size and frees it.  On the project's VMs a large output's first
# touch sometimes spends far longer in the kernel than usual: after torch's calls (whose
# outputs are 4 KiB pages; numpy's are huge pages) the next large allocation spent 0.2-0.5 s
# of system time (getrusage) on a 187 MB output (5124x9124x1760), where 15-40 ms is usual,
# paid by whichever side allocated next, ours or numpy, and sometimes by the one after: a
# 0.8 s call measured 1.0-1.1 s.  With this allocation first, those calls measured
# 0.80-0.85 s (an occasional one still pays: not a cure, a mitigation).
SETTLE_BYTES = 32 << 20


def _nbytes(out) -> int:
    """The bytes of a side's result (an array, or a tuple or list of them)."""
    if isinstance(out, (tuple, list)):
        return sum(_nbytes(x) for x in out)
    return int(getattr(out, "nbytes", 0) or 0)


def _timed_sides(sides: dict, repeats: int, rounds: int = ROUNDS, quiet: bool = True,
                 confirm: float | None = None) -> "Timed":
    """name -> (median, min, max seconds, warm-up result) for each side, timed in alternating
    rounds (ours, baseline, ours, baseline, ...) so that a drift of this shared machine's
    speed over seconds, which reaches tens of percent, falls on every side alike instead of
    on whichever was timed in the slow moment.  Each round of a side: a quiet pause (the
    other side's threads spin after their calls), then at least ``repeats / rounds`` calls,
    more for short problems (until ``MIN_SECONDS / rounds`` is measured).  One warm-up call
    per side is excluded; its result is the one returned (for the checks), and a timed
    call's result is dropped at once rather than held until the side's next call (a 442 MB
    output each for 4608x24000x1536).  On the project's VMs such large outputs cost ~1 s of
    kernel page clearing on every other allocation (numpy alone: 1.66 s and 2.1-2.7 s in
    turn; ~0.07 s otherwise), held or dropped alike; the rotating side order below spreads
    the calls over both kinds of allocation rather than giving one side the same kind each
    round.

    The first two sides are the compared pair (ours and its baseline); any further ones
    (torch) are timed last in every round, and warmed up first.  The first call after
    torch's was measured 10-40% slower on large GEMMs whichever side made it, even after a
    1.5 s pause (3072x24000x1024: numpy 840-920 ms, ours 880-900, against 750-830 for the
    calls after them); a plain rotation of three sides over three rounds put ours after
    torch in every round.  Here the pair alternates who goes first, so each of them follows
    torch in every other round.

    With ``confirm``, a pair whose ratio (second side's median / first's) came out below it is
    timed again for ``CONFIRM_ROUNDS`` more rounds and the medians are taken over all calls of
    both passes (the first-pass ratio is kept as ``first_ratio``).  A slow moment of the VM
    lands on one side's block often enough to put a row at 0.7 that measures 0.95 when re-run
    (README); more calls, not a second opinion that replaces the first."""
    names = list(sides)
    pair, extra = names[:2], names[2:]
    outs = {name: sides[name]() for name in extra + pair}  # warm-ups, the extra sides first
    settle = max((_nbytes(out) for out in outs.values()), default=0) if quiet else 0
    times: dict = {name: [] for name in sides}
    _time_rounds(sides, times, pair, extra, repeats, rounds, quiet, settle)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    first = med[pair[1]] / med[pair[0]] if len(pair) == 2 and med[pair[0]] > 0 else None
    timed = Timed()
    if confirm and first is not None and first < confirm:
        _time_rounds(sides, times, pair, extra, repeats, CONFIRM_ROUNDS, quiet, settle)
        timed.first_ratio, timed.confirm_below = first, confirm
    timed.update({name: (statistics.median(ts), min(ts), max(ts), outs[name]) for name, ts in times.items()})
    return timed


class Timed(dict):
    """name -> (median, min, max seconds, warm-up result); ``first_ratio`` is the pair's ratio
    before a confirming re-time below ``confirm_below`` (None: not re-timed)."""
    first_ratio: float | None = None
    confirm_below: float | None = None

    def retimed(self) -> dict:
        """A row's extra fields for a re-time (none when there was none): what the table's
        ``r`` mark and ``retimed_summary`` read."""
        return {} if self.first_ratio is None else dict(first_ratio=self.first_ratio, confirm_below=self.confirm_below)

    def medians(self) -> dict[str, float]:
        """name -> median seconds (what a row's roofline fraction is taken of, per side)."""
        return {name: v[0] for name, v in self.items()}


def _time_rounds(sides: dict, times: dict, pair: list, extra: list, repeats: int, rounds: int, quiet: bool,
                 settle: int) -> None:
    per_round = max(1, -(-repeats // rounds))
    for r in range(rounds):
        for name in pair[r % len(pair):] + pair[:r % len(pair)] + extra:
            fn = sides[name]
            if settle >= SETTLE_BYTES:
                np.ones(settle // 4, np.float32)  # (see SETTLE_BYTES)
            if quiet:
                time.sleep(QUIET_SECONDS)
            block: list[float] = []
            while len(block) < per_round or (sum(block) < MIN_SECONDS / rounds and len(block) < MAX_CALLS):
                t0 = time.perf_counter()
                fn()
                block.append(time.perf_counter() - t0)
            times[name] += block


def run_host_gemm(t, problems, repeats: int, progress: bool, confirm: float | None = CONFIRM_BELOW) -> list[Row]:
    """Host targets: our JIT-compiled code against numpy (OpenBLAS) in the same run, float32."""
    import os

    import compiler
    rows = []
    # a row's rough cost: ~13 calls (3 sides, warm-ups) at ~200 GFLOP/s, plus ~4 s of pauses and
    # short-problem repeats (fitted to the whole set's 47 minutes); only the progress line uses it
    bar = Progress(f"bench gemm on {t.name}", len(problems), progress,
                   weights=[4 + 13 * 2 * m * n * k / 2e11 for _, m, n, k, _, _ in problems])
    for i, (st, m, n, k, a_t, b_t) in enumerate(problems):
        row = Row(st, m, n, k, a_t, b_t, precision="float32")
        ck = compiler.build(gemm_source("float", "float", a_t, b_t), target=t.path, sizes=dict(M=m, N=n, K=k))
        A, B = gemm_operands(np.random.default_rng(i), m, n, k, a_t, b_t, np.float32)
        At, Bt = (A.T if a_t else A), (B.T if b_t else B)
        # the public call `ck(A, B)` (input checks, output allocation) against numpy's `@`: what a user pays
        sides = {"ours": lambda: ck(A, B), "numpy": lambda: At @ Bt}
        from .gru import torch_version
        if torch_version() is not None:  # optional second baseline: torch.matmul (MKL/oneDNN) on the same data
            import torch
            torch.set_num_threads(os.cpu_count() or 1)
            ta, tb = torch.from_numpy(At), torch.from_numpy(Bt)
            sides["torch"] = lambda: torch.matmul(ta, tb)
        ceil = machine.for_row()
        timed = _timed_sides(sides, repeats, confirm=confirm)
        ours, omin, omax, out = timed["ours"]
        base, bmin, bmax, ref = timed["numpy"]
        err = float(np.abs(out - ref).max())
        row.cycles, row.baseline_cycles = ours, base  # seconds on host targets
        row.ratio = base / ours
        row.utilization = row.flops / ours / 1e9  # GFLOP/s
        row.extra.update(seconds=ours, min=omin, max=omax, numpy_seconds=base, numpy_min=bmin, numpy_max=bmax,
                         gflops=row.flops / ours / 1e9, numpy_gflops=row.flops / base / 1e9, max_abs_error=err,
                         threads=os.cpu_count(), code=ck.report.get("code"))
        row.extra.update(timed.retimed())
        ceil = machine.for_row(ceil)
        ws = 4 * (m * k + k * n + m * n)  # operands and result
        row.extra.update(machine.row_fields(ceil, ceil.floor_seconds(row.flops, ws), ceil.memory_bound(row.flops, ws),
                                            timed.medians()))
        if "torch" in timed:
            tsec, tmin, tmax, _ = timed["torch"]
            row.extra.update(torch_seconds=tsec, torch_min=tmin, torch_max=tmax, torch_ratio=tsec / ours,
                             torch_version=torch_version())
        row.scheduler = "llvm"
        rows.append(row)
        bar.step()
    bar.close()
    return rows


CHECK_ROWS = 256
CUDA_SECONDS = 2e-3  # each timed block of back-to-back launches lasts about this long


def _torch_cuda():
    """torch, when it is installed and sees a CUDA device (the cuBLAS baseline); else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _event_times(torch, fn, reps: int, inner: int) -> list[float]:
    """Seconds per call of ``fn``: ``reps`` blocks of ``inner`` calls between CUDA events (the
    same method as the cuda backend's ``isamap_time``), one warm-up call excluded."""
    fn()
    a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out = []
    for _ in range(reps):
        a.record()
        for _ in range(inner):
            fn()
        z.record()
        z.synchronize()
        out.append(a.elapsed_time(z) / inner / 1e3)
    return out


def run_cuda_gemm(t, problems, repeats: int, progress: bool, scheduler: str | None = None) -> list[Row]:
    """The cuda target: our generated kernels (fp16 inputs, fp32 accumulation and output) against
    cuBLAS through torch.matmul on the same fp16 data (fp16 output), both timed with CUDA events
    on device-resident buffers in the same run; no baseline (ratio None) where torch cannot reach
    the GPU."""
    import compiler
    from compiler.backends.cuda.runtime import gpu_present
    if not gpu_present():
        raise IsamapError(f"no NVIDIA GPU on this machine: `isamap bench --target {t.name}` times generated "
                          f"code on one (use `isamap compile --emit cuda` to see the code here)")
    import os
    from concurrent.futures import ThreadPoolExecutor

    from compiler.backends.cuda.runtime import compile_source
    torch = _torch_cuda()
    reps = max(5, 2 * repeats)
    rows = []

    def build(p):  # generate and nvcc every problem's kernel up front, in parallel (nvcc runs outside the GIL)
        st, m, n, k, a_t, b_t = p
        c0 = time.time()
        ck = compiler.build(gemm_source("half", "float", a_t, b_t), target=t.path, sizes=dict(M=m, N=n, K=k),
                            scheduler=scheduler)
        compile_source(ck.gpu.src)
        return ck, time.time() - c0
    with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as ex:
        built = list(ex.map(build, problems))
    bar = Progress(f"bench gemm on {t.name}", len(problems), progress)
    for i, (st, m, n, k, a_t, b_t) in enumerate(problems):
        row = Row(st, m, n, k, a_t, b_t, precision="half->float")
        ck, row.compile_seconds = built[i]
        row.scheduler = ck.report.get("scheduler", "")
        rng = np.random.default_rng(i)
        A, B = gemm_operands(rng, m, n, k, a_t, b_t, np.float16)
        _, one = ck.gpu({"A": A, "B": B})  # builds, and sizes the timed blocks
        inner = int(min(1000, max(1, CUDA_SECONDS / max(one, 1e-7))))
        out, ts = ck.gpu.time({"A": A, "B": B}, reps=reps, inner=inner)
        # checked on up to CHECK_ROWS random rows of C: a float64 product of the largest shapes takes minutes
        pick = np.sort(rng.choice(m, size=min(m, CHECK_ROWS), replace=False))
        At, Bt = (A.T if a_t else A)[pick].astype(np.float64), (B.T if b_t else B).astype(np.float64)
        ref = At @ Bt
        got = out["C"][pick]
        err = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
        ours = statistics.median(ts)
        row.cycles = ours
        row.utilization = row.flops / ours / 1e12  # TFLOP/s
        row.extra.update(seconds=ours, min=min(ts), max=max(ts), tflops=row.utilization, rel_error=err,
                         inner=inner, code=ck.report.get("code"))
        if torch is not None:
            ta, tb = torch.from_numpy(A).cuda(), torch.from_numpy(B).cuda()
            ta, tb = (ta.t() if a_t else ta), (tb.t() if b_t else tb)
            bs = _event_times(torch, lambda: torch.matmul(ta, tb), reps, inner)
            base = statistics.median(bs)
            row.baseline_cycles = base
            row.ratio = base / ours
            row.extra.update(cublas_seconds=base, cublas_min=min(bs), cublas_max=max(bs),
                             cublas_tflops=row.flops / base / 1e12, torch_version=torch.__version__,
                             device=torch.cuda.get_device_name())
        if err > 1e-2:
            row.error = f"result differs from the float64 reference: relative error {err:.2e}"
        rows.append(row)
        bar.step()
    bar.close()
    return rows


def cuda_table(rows: list[Row], target: str) -> str:
    dev = next((r.extra.get("device") for r in rows if r.extra.get("device")), "GPU")
    lines = [f"# DeepBench GEMM on {target} ({dev}): fp16 inputs, fp32 accumulation; median device seconds of "
             f"blocks of back-to-back launches between CUDA events, warm-up excluded; baseline = cuBLAS "
             f"(torch.matmul, fp16 output) in the same run; ratio = cuBLAS time / ours; TFLOP/s with FLOPs = 2*M*N*K",
             f"{'set':<17} {'M':>5} {'N':>5} {'K':>5} {'tA':>2} {'tB':>2} {'ours us':>9} {'cuBLAS us':>9} "
             f"{'ratio':>6} {'TFLOP/s':>8} {'cuBLAS':>8} {'rel.err':>8}"]
    for r in rows:
        x = r.extra
        base = x.get("cublas_seconds")
        lines.append(f"{r.set:<17} {r.m:>5} {r.n:>5} {r.k:>5} {'T' if r.a_t else 'N':>2} {'T' if r.b_t else 'N':>2} "
                     f"{1e6 * x['seconds']:>9.1f} " + (f"{1e6 * base:>9.1f} {r.ratio:>6.2f} " if base else
                                                       f"{'-':>9} {'-':>6} ")
                     + f"{x['tflops']:>8.1f} " + (f"{x['cublas_tflops']:>8.1f}" if base else f"{'-':>8}")
                     + f" {x['rel_error']:>8.1e}" + (f"  {r.error}" if r.error else ""))
    g = geomean([r.ratio for r in rows if not r.error])
    if g:
        lines.append(f"geometric-mean ratio vs cuBLAS: {g:.2f}")
    return "\n".join(lines) + "\n"


def run_gemm_bench(target: str, suite: str = "quick", sets=None, scheduler: str | None = None,
                   budget: int = 400_000, progress: bool = True, repeats: int = 5, only=None,
                   confirm: float | None = CONFIRM_BELOW) -> list[Row]:
    import hw_models
    t = hw_models.load(target)
    how = bench_backend(t)
    problems = gemm_suite(suite, sets, only)
    if how == "llvm":
        return run_host_gemm(t, problems, repeats, progress, confirm)
    if how == "cuda":
        return run_cuda_gemm(t, problems, repeats, progress, scheduler)
    rows = []
    bar = Progress(f"bench gemm on {t.name}", len(problems), progress)
    for i, (st, m, n, k, a_t, b_t) in enumerate(problems):
        row = Row(st, m, n, k, a_t, b_t)
        sizes = dict(M=m, N=n, K=k)
        last_err = None
        for in_t, acc_t in PRECISIONS[st]:
            src = gemm_source(in_t, acc_t, a_t, b_t)
            try:
                c0 = time.time()
                ours = _build(src, target, sizes, scheduler)
                row.compile_seconds = time.time() - c0
                base = _build(src, target, sizes, "vendor")
            except IsamapError as e:
                last_err = e.message + ("; " + "; ".join(e.notes) if e.notes else "")
                continue
            row.precision = f"{in_t}->{acc_t}"
            row.scheduler = ours.schedule.strategy
            row.cycles, m1, x1 = _cycles(ours, budget)
            row.baseline_cycles, m2, _ = _cycles(base, budget)
            row.modeled = m1 or m2
            row.extra.update(x1)
            peak = t.peak_macs_per_cycle()
            mem = t.memory(t.main)
            isz = np.dtype({"int8": "int8", "bfloat16": "float16", "half": "float16"}.get(in_t, "float32")).itemsize
            osz = 4
            compulsory = (m * k + k * n) * isz + m * n * osz
            row.roofline_cycles = max(m * n * k / peak, compulsory / mem.bandwidth if mem.bandwidth else 0)
            row.of_roofline = row.roofline_cycles / row.cycles
            row.utilization = m * n * k / (peak * row.cycles)
            row.ratio = row.baseline_cycles / row.cycles
            break
        else:
            row.error = last_err or "no precision maps on this target"
        rows.append(row)
        bar.step()
    bar.close()
    return rows


def geomean(xs) -> float | None:
    xs = [x for x in xs if x]
    return float(np.exp(np.mean(np.log(xs)))) if xs else None


def host_table(rows: list[Row], target: str) -> str:
    torch = next((r.extra.get("torch_version") for r in rows if r.extra.get("torch_version")), None)
    lines = [f"# DeepBench GEMM on {target} (float32): median seconds over repeats in alternating rounds, warm-up excluded; baseline = "
             f"numpy (OpenBLAS) in the same run; ratio = numpy time / ours (second ratio: torch.matmul's, where torch "
             f"is installed); GFLOP/s with FLOPs = 2*M*N*K",
             f"{'set':<17} {'M':>5} {'N':>5} {'K':>5} {'tA':>2} {'tB':>2} {'ours ms':>9} {'numpy ms':>9} "
             f"{'ratio':>6} {'GFLOP/s':>8} {'numpy':>8} {'%roof':>6}" + (f" {'torch ms':>9} {'ratio':>6}" if torch else "")]
    for r in rows:
        x = r.extra
        lines.append(f"{r.set:<17} {r.m:>5} {r.n:>5} {r.k:>5} {'T' if r.a_t else 'N':>2} {'T' if r.b_t else 'N':>2} "
                     f"{1e3 * x['seconds']:>9.2f} {1e3 * x['numpy_seconds']:>9.2f} {r.ratio:>6.2f}"
                     f"{retimed_mark(x)}{x['gflops']:>8.1f} {x['numpy_gflops']:>8.1f} {roof_cell(x)}"
                     + (f" {1e3 * x['torch_seconds']:>9.2f} {x['torch_ratio']:>6.2f}" if "torch_seconds" in x else ""))
    g = geomean([r.ratio for r in rows if not r.error])
    if g:
        worst = min((r for r in rows if not r.error), key=lambda r: r.ratio)
        lines.append(f"geometric-mean ratio vs numpy: {g:.2f}, lowest {worst.ratio:.2f} ({worst.m}x{worst.n}x{worst.k}); "
                     f"threads: {rows[0].extra.get('threads')}")
    lines += retimed_summary([r for r in rows if not r.error], lambda r: f"{r.m}x{r.n}x{r.k}")
    lines += machine.run_summary([r.extra for r in rows if not r.error])
    if torch:
        lines.append(f"geometric-mean ratio vs torch.matmul {torch}: "
                     f"{geomean([r.extra.get('torch_ratio') for r in rows if not r.error]):.2f}")
    return "\n".join(lines) + "\n"


def roof_cell(extra: dict) -> str:
    """A host row's %roof, 6 wide: ``m`` after it for a memory-bound row, ``-`` where unmeasured."""
    if "of_roofline" not in extra:
        return f"{'-':>5} "
    return f"{100 * extra['of_roofline']:>4.0f}%{'m' if extra.get('memory_bound') else ' '}"


def retimed_mark(extra: dict) -> str:
    """The character after a row's ratio: ``r`` when it was re-timed."""
    return "r" if "first_ratio" in extra else " "


def retimed_summary(rows: list, label) -> list[str]:
    """The table's account of rows re-timed to confirm a low first ratio (``_timed_sides``):
    how many, and what the first pass alone would have reported."""
    again = [r for r in rows if "first_ratio" in r.extra]
    if not again:
        return []
    first = [r.extra.get("first_ratio", r.ratio) for r in rows]
    low = min(again, key=lambda r: r.extra["first_ratio"])
    return [f"r: {len(again)} row(s) came out below {low.extra.get('confirm_below', CONFIRM_BELOW)} and were timed again ({CONFIRM_ROUNDS} more "
            f"rounds, medians over both passes); the first pass alone: geometric mean {geomean(first):.2f}, "
            f"lowest {low.extra['first_ratio']:.2f} ({label(low)})"]


def table(rows: list[Row], target: str) -> str:
    if rows and rows[0].scheduler == "llvm":
        return host_table(rows, target)
    if rows and "tflops" in rows[0].extra:
        return cuda_table(rows, target)
    head = (f"{'set':<17} {'M':>5} {'N':>5} {'K':>5} {'tA':>2} {'tB':>2} {'precision':<15} "
            f"{'cycles':>10} {'vendor':>10} {'ratio':>6} {'%roof':>6}")
    lines = [f"# DeepBench GEMM on {target}: simulated cycles (timing model), vendor schedule simulated in the "
             f"same run; ratio = vendor / ours; FLOPs counted as 2*M*N*K", head]
    for r in rows:
        if r.error:
            lines.append(f"{r.set:<17} {r.m:>5} {r.n:>5} {r.k:>5} {'T' if r.a_t else 'N':>2} "
                         f"{'T' if r.b_t else 'N':>2} error: {r.error[:80]}")
            continue
        mark = "*" if r.modeled else " "
        lines.append(f"{r.set:<17} {r.m:>5} {r.n:>5} {r.k:>5} {'T' if r.a_t else 'N':>2} {'T' if r.b_t else 'N':>2} "
                     f"{r.precision:<15} {r.cycles:>10.0f}{mark}{r.baseline_cycles:>10.0f} {r.ratio:>6.2f} "
                     f"{100 * r.of_roofline:>5.1f}%")
    g = geomean([r.ratio for r in rows if not r.error])
    if g:
        lines.append(f"geometric-mean ratio vs vendor: {g:.2f}" + ("  (* = analytical model: too large to simulate)"
                                                                   if any(r.modeled for r in rows) else ""))
    return "\n".join(lines) + "\n"


def medians(xs):
    return statistics.median(xs) if xs else None
