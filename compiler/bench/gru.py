"""DeepBench GRUs on a simulated target: our schedules with persistent recurrent weights
against the `vendor` schedules reloading them every step, simulated in the same run.

A sequence is one GEMM projecting the inputs of all T timesteps, then T recurrent steps
(``compiler.rnn``).  Every step runs the same program, so after ``SIMULATED_STEPS``
simulated steps the steady-state step time is extrapolated to T (marked in the
output); the numbers the simulated steps produce are checked against a numpy GRU with
bf16-rounded GEMM operands (the chip's precision).  FLOPs as DeepBench's result
workbooks: 6*T*N*H^2 (training), + T*N*H for inference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ir.errors import IsamapError

from . import machine
from .gemm import CONFIRM_BELOW, _cycles, retimed_mark, retimed_summary, roof_cell
from .progress import Progress, bench_backend, load_suite

SIMULATED_STEPS = 3
QUICK = [("training", 512, 32, 1), ("inference_server", 512, 4, 1), ("inference_server", 1024, 1, 1500)]


def gru_suite(suite: str, sets, only=None) -> list[tuple]:
    return load_suite(suite, QUICK, "deepbench_rnn.csv",
                      lambda r: (r["set"], int(r["hidden"]), int(r["batch"]), int(r["timesteps"])), sets,
                      keep=lambda r: r["cell"] == "gru", only=only)


@dataclass
class GruRow:
    set: str
    hidden: int
    batch: int
    timesteps: int
    cycles: float | None = None
    baseline_cycles: float | None = None
    ratio: float | None = None
    flops: float = 0.0
    of_peak: float | None = None
    max_abs_error: float | None = None
    correct: bool | None = None
    extrapolated: bool = False
    projection_modeled: bool = False
    resident: tuple = ()
    error: str | None = None
    extra: dict = field(default_factory=dict)


def gru_flops(st: str, H: int, N: int, T: int) -> float:
    """DeepBench's convention (its result workbooks): 6*T*N*H^2, plus T*N*H for inference."""
    return 6.0 * T * N * H * H + (T * N * H if st.startswith("inference") else 0)


def _sequence_cycles(target, H, N, T, persistent, scheduler, x, w, h0, budget):
    """(projection cycles, modeled?, step cycles for T steps, extrapolated?, hidden state, resident)."""
    import kernels
    from compiler.api import build
    from compiler.bench.gemm import gemm_source
    proj = build(gemm_source("bfloat16", "float", False, False), target=target,
                 sizes=dict(M=T * N, N=3 * H, K=H), scheduler=scheduler)
    pc, modeled, _ = _cycles(proj, budget)
    k = min(T, SIMULATED_STEPS)
    from compiler.rnn import round_bf16
    xp = (round_bf16(x[:k].reshape(k * N, H)) @ round_bf16(w.Wx)).reshape(k, N, 3 * H)
    step = build(kernels.path("gru_step"), target=target, sizes=dict(B=N, Hd=H), scheduler=scheduler,
                 persist=("Ur", "Uz", "Un") if persistent else ())
    sess = step.session()
    h = h0
    per = []
    for t in range(k):
        out = sess(XR=xp[t, :, :H], XZ=xp[t, :, H:2 * H], XN=xp[t, :, 2 * H:], Hp=h, Ur=w.Ur, Uz=w.Uz, Un=w.Un,
                   br=w.br, bz=w.bz, bhn=w.bhn)
        h = out["Ho"]
        per.append(sess.cycles())
    steady = per[-1] - per[-2] if len(per) >= 2 else per[-1]
    total = per[-1] + (T - k) * steady
    return pc, modeled, total, T > k, h, step.resident


def run_gru_bench(target: str, suite: str = "quick", sets=None, scheduler: str | None = None,
                  budget: int = 400_000, progress: bool = True, repeats: int = 3, only=None,
                  confirm: float | None = CONFIRM_BELOW) -> list[GruRow]:
    import hw_models
    from compiler.rnn import gru_reference
    t = hw_models.load(target)
    how = bench_backend(t)
    problems = gru_suite(suite, sets, only)
    if how == "llvm":
        return run_host_gru(t, problems, repeats, progress, confirm)
    if how == "cuda":
        return run_cuda_gru(t, problems, repeats, progress)

    def measure(i, row, w, h0):
        H, N, T = row.hidden, row.batch, row.timesteps
        x = np.random.default_rng(i).uniform(-1, 1, (min(T, SIMULATED_STEPS), N, H)).astype(np.float32)
        pc, m1, sc, ext, h, res = _sequence_cycles(target, H, N, T, True, scheduler, x, w, h0, budget)
        bpc, m2, bsc, _, _, _ = _sequence_cycles(target, H, N, T, False, "vendor", x, w, h0, budget)
        row.cycles, row.baseline_cycles = pc + sc, bpc + bsc
        row.ratio = row.baseline_cycles / row.cycles
        row.extrapolated, row.projection_modeled, row.resident = ext, m1 or m2, tuple(res)
        row.of_peak = row.flops / (2 * t.peak_macs_per_cycle() * row.cycles)
        ref = gru_reference(x, w, h0, "bfloat16")
        row.max_abs_error = float(np.abs(h - ref).max())
        row.correct = bool(row.max_abs_error <= 1e-3 * max(1.0, float(np.abs(ref).max())))

    return _each_problem(t, problems, progress, measure)


def run_host_gru(t, problems, repeats: int, progress: bool, confirm: float | None = CONFIRM_BELOW) -> list[GruRow]:
    """Host targets: the whole sequence (projection GEMM + T steps) as our JIT code against the
    numpy GRU (OpenBLAS GEMMs) in the same run, float32, median seconds over ``repeats``."""
    import os

    import kernels
    from compiler.api import build
    from compiler.rnn import gru_reference

    from .gemm import _timed_sides, gemm_source

    def measure(i, row, w, h0):
        H, N, T = row.hidden, row.batch, row.timesteps
        x = np.random.default_rng(i).uniform(-1, 1, (T, N, H)).astype(np.float32)
        proj = build(gemm_source("float", "float", False, False), target=t.path, sizes=dict(M=T * N, N=3 * H, K=H))
        step = build(kernels.path("gru_step"), target=t.path, sizes=dict(B=N, Hd=H))
        fixed = dict(Ur=w.Ur, Uz=w.Uz, Un=w.Un, br=w.br, bz=w.bz, bhn=w.bhn)
        names = [t.name for t in step.kernel.inputs]
        last = [t.name for t in step.kernel.outputs].index("Ho")

        def ours():  # the public calls (positional arrays: the lean path), as a user would make them
            xp = proj(x.reshape(T * N, H), w.Wx).reshape(T, N, 3 * H)
            h = h0
            for s in range(T):
                now = dict(XR=xp[s, :, :H], XZ=xp[s, :, H:2 * H], XN=xp[s, :, 2 * H:], Hp=h)
                h = step(*[now[n] if n in now else fixed[n] for n in names])[last]
            return h
        sides = {"ours": ours, "numpy": lambda: gru_reference(x, w, h0)}
        torch_gru = torch_baseline(x, w, h0)
        if torch_gru is not None:  # optional: PyTorch's nn.GRU with the same weights, same run
            sides["torch"] = torch_gru
        ceil = machine.for_row()
        timed = _timed_sides(sides, repeats, confirm=confirm)
        sec, smin, smax, h = timed["ours"]
        base, bmin, bmax, ref = timed["numpy"]
        row.cycles, row.baseline_cycles = sec, base  # seconds on host targets
        row.ratio = base / sec
        row.max_abs_error = float(np.abs(h - ref).max())
        row.correct = bool(row.max_abs_error <= 1e-3 * max(1.0, float(np.abs(ref).max())))
        row.extra = dict(seconds=sec, min=smin, max=smax, numpy_seconds=base, numpy_min=bmin, numpy_max=bmax,
                         gflops=row.flops / sec / 1e9, numpy_gflops=row.flops / base / 1e9,
                         threads=os.cpu_count(), code=step.report.get("code"))
        row.extra.update(timed.retimed())
        ceil = machine.for_row(ceil)
        row.extra.update(gru_roofline(ceil, H, N, T, timed.medians()))
        if "torch" in timed:
            tsec, tmin, tmax, th = timed["torch"]
            terr = float(np.abs(th - ref).max())
            row.extra.update(torch_seconds=tsec, torch_min=tmin, torch_max=tmax, torch_ratio=tsec / sec,
                             torch_max_abs_error=terr, torch_version=torch_version())
            row.correct = row.correct and bool(terr <= 1e-3 * max(1.0, float(np.abs(ref).max())))

    return _each_problem(t, problems, progress, measure)


def gru_roofline(c, H: int, N: int, T: int, seconds: dict[str, float]) -> dict:
    """A host GRU row's roofline fields (``machine.row_fields``).  The phases run one after
    another, so the floor is their sum: the input projection (a (T*N x H) x (H x 3H) GEMM),
    then T steps, each a (N x H) x (H x 3H) product with the recurrent weights (3*H*H
    float32s, the step's working set).  At small batches a step does 2*N FLOPs per weight
    read, so reading them bounds it: from the last-level cache up to hidden 1672 (32 MiB),
    from memory above, where every step streams them and the floor is the memory read
    bandwidth, whoever computes.  A row is memory-bound when the steps are."""
    proj_flops, step_flops = 2.0 * T * N * H * 3 * H, 2.0 * N * H * 3 * H
    proj_bytes = 4 * (T * N * H + 3 * H * H + T * N * 3 * H)
    step_bytes = 4 * 3 * H * H
    floor = c.floor_seconds(proj_flops, proj_bytes) + T * c.floor_seconds(step_flops, step_bytes)
    return machine.row_fields(c, floor, c.memory_bound(step_flops, step_bytes), seconds)


def cuda_sequence_source(t, H: int, N: int, T: int) -> str:
    """One CUDA library for a whole GRU sequence on device-resident buffers: the input projection
    as three generated GEMMs (X times W_r, W_z, W_n, all T timesteps at once, so each step's
    slice is contiguous), then T launches of the generated ``gru_step`` kernels, the hidden
    state ping-ponging between two buffers, replayed from a CUDA graph.  ``gru_time`` runs it
    ``reps`` times between CUDA events (two warm-up runs, the second capturing the graph,
    excluded) and copies the last hidden state back.  Built with ``--default-stream
    per-thread`` (``compile_source(per_thread=True)``): the legacy default stream cannot be
    captured."""
    import compiler
    import kernels
    from compiler.backends.cuda.gemm import tiles_header
    from compiler.backends.cuda.scalar import PRELUDE, cuda_source
    from ir.bind import bind

    from .gemm import gemm_source
    pk = compiler.parse(gemm_source("float", "float", False, False)).kernel()
    sk = compiler.parse(kernels.path("gru_step")).kernel()
    proj = cuda_source(pk, bind(pk, dict(M=T * N, N=H, K=H)), prefix="proj_", prelude=False, t=t)
    step = cuda_source(sk, bind(sk, dict(B=N, Hd=H)), prefix="step_", prelude=False, t=t)
    nh, hh, tnh = N * H, H * H, T * N * H
    # host buffers, in order: X (T*N x H), Wr, Wz, Wn, Ur, Uz, Un (H x H), br, bz, bhn (H), H0 (N x H)
    sizes = [tnh, hh, hh, hh, hh, hh, hh, H, H, H, nh]
    driver = f"""
extern "C" int gru_time(float** h, int reps, float* ms, float* hout) {{
    const long long n[11] = {{{", ".join(f"{x}LL" for x in sizes)}}};
    float* d[11];
    float *xr, *xz, *xn, *hb[2], *tmp[4];
    int err = 0;
    for (int i = 0; i < 11 && !err; ++i) {{
        err = (int)cudaMalloc((void**)&d[i], n[i] * 4);
        if (!err) err = (int)cudaMemcpy(d[i], h[i], n[i] * 4, cudaMemcpyHostToDevice);
    }}
    if (!err) err = (int)cudaMalloc((void**)&xr, {tnh}LL * 4);
    if (!err) err = (int)cudaMalloc((void**)&xz, {tnh}LL * 4);
    if (!err) err = (int)cudaMalloc((void**)&xn, {tnh}LL * 4);
    for (int i = 0; i < 2 && !err; ++i) err = (int)cudaMalloc((void**)&hb[i], {nh}LL * 4);
    for (int i = 0; i < 4 && !err; ++i) err = (int)cudaMalloc((void**)&tmp[i], {nh}LL * 4);
    if (err) return err;
    cudaEvent_t a, z;
    cudaEventCreate(&a); cudaEventCreate(&z);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t steps = nullptr;
    for (int r = -2; r < reps && !err; ++r) {{
        cudaMemcpyAsync(hb[0], d[10], {nh}LL * 4, cudaMemcpyDeviceToDevice);
        cudaEventRecord(a);
        float* xs[3] = {{xr, xz, xn}};
        for (int g = 0; g < 3 && !err; ++g) {{
            void* p[3] = {{d[0], d[1 + g], xs[g]}};
            err = proj_isamap_launch(p);
        }}
        // the T steps: launched one by one in the warm-up run (r = -2), captured once into a CUDA
        // graph after it (their launch overhead, several microseconds a kernel, is most of a
        // small step's time), replayed by the timed runs
        if (r == -1 && !err) err = (int)cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeThreadLocal);
        if (r == -2 || !steps)
            for (int s = 0; s < {T} && !err; ++s) {{
                float* hp = hb[s & 1];
                float* ho = hb[(s + 1) & 1];
                void* p[15] = {{xr + (long long)s * {nh}, xz + (long long)s * {nh}, xn + (long long)s * {nh}, hp,
                               d[4], d[5], d[6], d[7], d[8], d[9], tmp[0], tmp[1], tmp[2], tmp[3], ho}};
                err = step_isamap_launch(p);
            }}
        if (r == -1 && !err) {{
            err = (int)cudaStreamEndCapture(cudaStreamPerThread, &graph);
            if (!err) err = (int)cudaGraphInstantiate(&steps, graph, 0);
        }}
        if (r >= -1 && !err) err = (int)cudaGraphLaunch(steps, cudaStreamPerThread);
        cudaEventRecord(z);
        cudaEventSynchronize(z);
        if (r >= 0) cudaEventElapsedTime(&ms[r], a, z);
    }}
    if (!err) err = (int)cudaDeviceSynchronize();
    if (!err) err = (int)cudaMemcpy(hout, hb[{T} & 1], {nh}LL * 4, cudaMemcpyDeviceToHost);
    for (int i = 0; i < 11; ++i) cudaFree(d[i]);
    cudaFree(xr); cudaFree(xz); cudaFree(xn);
    for (int i = 0; i < 2; ++i) cudaFree(hb[i]);
    for (int i = 0; i < 4; ++i) cudaFree(tmp[i]);
    cudaEventDestroy(a); cudaEventDestroy(z);
    if (steps) cudaGraphExecDestroy(steps);
    if (graph) cudaGraphDestroy(graph);
    return err;
}}
"""
    return f"// GRU H={H} N={N} T={T}: generated by isamap\n" + PRELUDE + tiles_header() + proj + step + driver


def run_cuda_gru(t, problems, repeats: int, progress: bool) -> list[GruRow]:
    """The cuda target: a whole sequence (projection GEMMs + T steps) of generated kernels on
    device-resident buffers against torch.nn.GRU (cuDNN) on the same GPU with the same weights,
    both float32 (TF32 off) and timed with CUDA events in the same run; checked against the
    numpy GRU.  No baseline (ratio None) where torch cannot reach the GPU."""
    import ctypes
    import statistics

    from compiler.backends.cuda.runtime import _error_name, compile_source, gpu_present
    from compiler.rnn import gru_reference

    from .gemm import _event_times, _torch_cuda
    if not gpu_present():
        raise IsamapError(f"no NVIDIA GPU on this machine: `isamap bench gru --target {t.name}` times generated "
                          f"code on one (use `isamap compile --emit cuda` to see the code here)")
    torch = _torch_cuda()
    reps = max(5, 2 * repeats)

    def measure(i, row, w, h0):
        H, N, T = row.hidden, row.batch, row.timesteps
        x = np.random.default_rng(i).uniform(-1, 1, (T, N, H)).astype(np.float32)
        lib = ctypes.CDLL(str(compile_source(cuda_sequence_source(t, H, N, T), per_thread=True)))
        host = [x.reshape(T * N, H), w.Wx[:, :H], w.Wx[:, H:2 * H], w.Wx[:, 2 * H:], w.Ur, w.Uz, w.Un,
                w.br, w.bz, w.bhn, h0]
        host = [np.ascontiguousarray(a, dtype=np.float32) for a in host]
        ptrs = (ctypes.POINTER(ctypes.c_float) * len(host))(
            *[a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in host])
        ms = (ctypes.c_float * reps)()
        h = np.empty((N, H), np.float32)
        err = lib.gru_time(ptrs, reps, ms, h.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        if err:
            raise IsamapError(f"CUDA error {err} ({_error_name(err)}) in the GRU sequence H={H} N={N} T={T}")
        sec = statistics.median(ms) / 1e3
        ref = gru_reference(x, w, h0)
        row.max_abs_error = float(np.abs(h - ref).max())
        row.correct = bool(row.max_abs_error <= 1e-3 * max(1.0, float(np.abs(ref).max())))
        row.cycles = sec
        row.extra = dict(seconds=sec, min=min(ms) / 1e3, max=max(ms) / 1e3, gflops=row.flops / sec / 1e9)
        if torch is not None:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            gru = torch_gru(w).cuda()
            xt, ht = torch.from_numpy(x).cuda(), torch.from_numpy(h0[None]).cuda()
            with torch.inference_mode():
                th = gru(xt, ht)[1][0].cpu().numpy()
                ts = _event_times(torch, lambda: gru(xt, ht), reps, 1)
            base = statistics.median(ts)
            row.baseline_cycles = base
            row.ratio = base / sec
            terr = float(np.abs(th - ref).max())
            row.extra.update(torch_seconds=base, torch_min=min(ts), torch_max=max(ts), torch_ratio=base / sec,
                             torch_max_abs_error=terr, torch_version=torch.__version__,
                             device=torch.cuda.get_device_name())

    return _each_problem(t, problems, progress, measure)


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def torch_gru(w):
    """``torch.nn.GRU`` loaded with our weights (cuDNN's formulation, as ours: the input
    projection without bias, br/bz/bhn as the recurrent biases)."""
    import torch
    I, H3 = w.Wx.shape
    gru = torch.nn.GRU(I, H3 // 3)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.from_numpy(np.ascontiguousarray(w.Wx.T)))
        gru.weight_hh_l0.copy_(torch.from_numpy(np.concatenate([w.Ur.T, w.Uz.T, w.Un.T])))
        gru.bias_ih_l0.zero_()
        gru.bias_hh_l0.copy_(torch.from_numpy(np.concatenate([w.br, w.bz, w.bhn])))
    return gru


def torch_baseline(x: np.ndarray, w, h0: np.ndarray):
    """``torch_gru`` on the CPU over ``x`` from ``h0``, as a function returning the last hidden
    state; None where torch is not installed (it is an optional extra)."""
    if torch_version() is None:
        return None
    import os

    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    gru = torch_gru(w)
    xt, ht = torch.from_numpy(x), torch.from_numpy(h0[None])

    def run():
        with torch.inference_mode():
            return gru(xt, ht)[1][0].numpy()
    return run


def _each_problem(t, problems, progress: bool, measure) -> list[GruRow]:
    """One row per problem, with fresh random weights; ``measure`` fills it (a user error becomes the row's error)."""
    from compiler.rnn import random_gru
    rows = []
    # rough cost (progress line only): ~13 calls at ~25 GFLOP/s (batch-1 rows run slower), plus pauses
    bar = Progress(f"bench gru on {t.name}", len(problems), progress,
                   weights=[4 + 13 * gru_flops(st, H, N, T) / 2.5e10 for st, H, N, T in problems])
    for i, (st, H, N, T) in enumerate(problems):
        row = GruRow(st, H, N, T)
        row.flops = gru_flops(st, H, N, T)
        try:
            measure(i, row, random_gru(H, H, seed=i), np.zeros((N, H), np.float32))
        except IsamapError as e:
            row.error = e.message + ("; " + "; ".join(e.notes) if e.notes else "")
        rows.append(row)
        bar.step()
    bar.close()
    return rows


def cuda_table(rows: list[GruRow], target: str) -> str:
    from .gemm import geomean
    dev = next((r.extra.get("device") for r in rows if r.extra.get("device")), "GPU")
    lines = [f"# DeepBench GRU on {target} ({dev}), float32: whole sequence (3 projection GEMMs + T steps of "
             f"generated kernels on device buffers), median of CUDA-event-timed runs, warm-up excluded; baseline = "
             f"torch.nn.GRU (cuDNN, TF32 off) in the same run; ratio = cuDNN time / ours; FLOPs = 6*T*N*H^2 "
             f"(+T*N*H inference)",
             f"{'set':<17} {'H':>5} {'N':>4} {'T':>5} {'ours ms':>10} {'cuDNN ms':>10} {'ratio':>6} {'GFLOP/s':>8} "
             f"{'check':>6}"]
    for r in rows:
        key = f"{r.set:<17} {r.hidden:>5} {r.batch:>4} {r.timesteps:>5} "
        if r.error:
            lines.append(f"{key}error: {r.error[:70]}")
            continue
        x = r.extra
        base = f"{1e3 * x['torch_seconds']:>10.3f} {r.ratio:>6.2f}" if x.get("torch_seconds") else f"{'-':>10} {'-':>6}"
        lines.append(f"{key}{1e3 * x['seconds']:>10.3f} {base} {x['gflops']:>8.1f} "
                     f"{'PASS' if r.correct else 'FAIL':>6}")
    g = geomean([r.ratio for r in rows if not r.error])
    if g:
        lines.append(f"geometric-mean ratio vs cuDNN: {g:.2f}")
    return "\n".join(lines) + "\n"


def table(rows: list[GruRow], target: str) -> str:
    from .gemm import geomean
    if any(r.extra and "numpy_seconds" not in r.extra for r in rows):  # timed, but not against numpy: cuda
        return cuda_table(rows, target)
    host = any(r.extra for r in rows)
    if host:
        head = [f"# DeepBench GRU on {target} (float32): whole sequence (projection GEMM + T steps), median "
                f"seconds over repeats in alternating rounds, warm-up excluded; baseline = numpy GRU (OpenBLAS GEMMs) in the same run; "
                f"ratio = numpy time / ours (second ratio: torch.nn.GRU's, where torch is installed); FLOPs = "
                f"6*T*N*H^2 (+T*N*H inference)",
                f"{'set':<17} {'H':>5} {'N':>4} {'T':>5} {'ours ms':>10} {'numpy ms':>10} {'ratio':>6} "
                f"{'GFLOP/s':>8} {'numpy':>8} {'%roof':>6} {'torch ms':>9} {'ratio':>6} {'check':>6}"]
    else:
        head = [f"# DeepBench GRU on {target}: simulated cycles; ours = persistent recurrent weights, baseline = "
                f"vendor schedules reloading them each step, same run; ratio = baseline / ours; FLOPs = "
                f"6*T*N*H^2 (+T*N*H inference); * = steady state extrapolated from {SIMULATED_STEPS} simulated "
                f"steps",
                f"{'set':<17} {'H':>5} {'N':>4} {'T':>5} {'cycles':>12} {'baseline':>12} {'ratio':>6} {'%peak':>6} "
                f"{'check':>6}"]
    lines = list(head)
    for r in rows:
        key = f"{r.set:<17} {r.hidden:>5} {r.batch:>4} {r.timesteps:>5} "
        check = f"{'PASS' if r.correct else 'FAIL':>6}"
        if r.error:
            lines.append(f"{key}error: {r.error[:70]}")
        elif host:
            x = r.extra
            torch = (f"{1e3 * x['torch_seconds']:>9.2f} {x['torch_ratio']:>6.2f}" if "torch_seconds" in x
                     else f"{'-':>9} {'-':>6}")
            lines.append(f"{key}{1e3 * x['seconds']:>10.2f} {1e3 * x['numpy_seconds']:>10.2f} {r.ratio:>6.2f}"
                         f"{retimed_mark(x)}{x['gflops']:>8.1f} {x['numpy_gflops']:>8.1f} {roof_cell(x)} {torch} {check}")
        else:
            mark = "*" if r.extrapolated else " "
            lines.append(f"{key}{r.cycles:>11.0f}{mark}{r.baseline_cycles:>12.0f} {r.ratio:>6.2f} "
                         f"{100 * r.of_peak:>5.1f}% {check}")
    g = geomean([r.ratio for r in rows if not r.error])
    if g:
        code = next((r.extra.get("code") for r in rows if r.extra), None)
        lines.append(f"geometric-mean ratio vs {'numpy' if host else 'baseline'}: {g:.2f}"
                     + (f"  (code: {code})" if code else ""))
        lines += retimed_summary([r for r in rows if not r.error and r.extra], lambda r: f"{r.hidden}x{r.batch}x{r.timesteps}")
        lines += machine.run_summary([r.extra for r in rows if not r.error])
        tr = geomean([r.extra.get("torch_ratio") for r in rows if not r.error])
        if host and tr:
            lines.append(f"geometric-mean ratio vs torch.nn.GRU {rows[0].extra.get('torch_version')}: {tr:.2f}")
    return "\n".join(lines) + "\n"
