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

import csv
from dataclasses import dataclass

import numpy as np

from ir.errors import IsamapError

from .gemm import DATA, _cycles
from .progress import Progress, select_sets

SIMULATED_STEPS = 3
QUICK = [("training", 512, 32, 1), ("inference_server", 512, 4, 1), ("inference_server", 1024, 1, 1500)]


def gru_suite(suite: str, sets) -> list[tuple]:
    if suite == "quick":
        rows = QUICK
    elif suite == "deepbench":
        with open(DATA / "deepbench_rnn.csv") as f:
            rows = [(r["set"], int(r["hidden"]), int(r["batch"]), int(r["timesteps"]))
                    for r in csv.DictReader(f) if r["cell"] == "gru"]
    else:
        raise IsamapError(f"unknown suite '{suite}' (quick or deepbench)")
    return select_sets(rows, sets)


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
                  budget: int = 400_000, progress: bool = True) -> list[GruRow]:
    import hw_models
    from compiler.rnn import gru_reference, random_gru
    t = hw_models.load(target)
    if t.prop("backend", "sim") != "sim":
        raise IsamapError(f"benchmarking the {t.prop('backend')} backend is not available yet "
                          f"(its code generator is not built); use a simulated target")
    rows = []
    problems = gru_suite(suite, sets)
    bar = Progress(f"bench gru on {t.name}", len(problems), progress)
    for i, (st, H, N, T) in enumerate(problems):
        row = GruRow(st, H, N, T)
        row.flops = 6.0 * T * N * H * H + (T * N * H if st.startswith("inference") else 0)
        try:
            w = random_gru(H, H, seed=i)
            x = np.random.default_rng(i).uniform(-1, 1, (min(T, SIMULATED_STEPS), N, H)).astype(np.float32)
            h0 = np.zeros((N, H), np.float32)
            pc, m1, sc, ext, h, res = _sequence_cycles(target, H, N, T, True, scheduler, x, w, h0, budget)
            bpc, m2, bsc, _, _, _ = _sequence_cycles(target, H, N, T, False, "vendor", x, w, h0, budget)
            row.cycles, row.baseline_cycles = pc + sc, bpc + bsc
            row.ratio = row.baseline_cycles / row.cycles
            row.extrapolated, row.projection_modeled, row.resident = ext, m1 or m2, tuple(res)
            row.of_peak = row.flops / (2 * t.peak_macs_per_cycle() * row.cycles)
            ref = gru_reference(x, w, h0, "bfloat16")
            row.max_abs_error = float(np.abs(h - ref).max())
            row.correct = bool(row.max_abs_error <= 1e-3 * max(1.0, float(np.abs(ref).max())))
        except IsamapError as e:
            row.error = e.message + ("; " + "; ".join(e.notes) if e.notes else "")
        rows.append(row)
        bar.step()
    bar.close()
    return rows


def table(rows: list[GruRow], target: str) -> str:
    from .gemm import geomean
    lines = [f"# DeepBench GRU on {target}: simulated cycles; ours = persistent recurrent weights, baseline = "
             f"vendor schedules reloading them each step, same run; ratio = baseline / ours; FLOPs = "
             f"6*T*N*H^2 (+T*N*H inference); * = steady state extrapolated from {SIMULATED_STEPS} simulated steps",
             f"{'set':<17} {'H':>5} {'N':>4} {'T':>5} {'cycles':>12} {'baseline':>12} {'ratio':>6} {'%peak':>6} "
             f"{'check':>6}"]
    for r in rows:
        if r.error:
            lines.append(f"{r.set:<17} {r.hidden:>5} {r.batch:>4} {r.timesteps:>5} error: {r.error[:70]}")
            continue
        mark = "*" if r.extrapolated else " "
        lines.append(f"{r.set:<17} {r.hidden:>5} {r.batch:>4} {r.timesteps:>5} {r.cycles:>11.0f}{mark}"
                     f"{r.baseline_cycles:>12.0f} {r.ratio:>6.2f} {100 * r.of_peak:>5.1f}% "
                     f"{'PASS' if r.correct else 'FAIL':>6}")
    g = geomean([r.ratio for r in rows if not r.error])
    if g:
        lines.append(f"geometric-mean ratio vs baseline: {g:.2f}")
    return "\n".join(lines) + "\n"
