"""This host's two ceilings, FP32 FMA throughput and memory read bandwidth, measured by small
JIT-compiled loops in the same process as a benchmark run.

The host tables put every row against them (``floor_seconds``): a GEMM is fast when it is
near the FMA peak, but a batch-1 GRU whose recurrent weights do not fit in the last-level
cache streams them from memory every step, and there the ceiling is the read bandwidth,
which numpy reaches just as well.  Printing both in the same run is what tells a parity
row at the memory bound from a row with room left.  The numbers move with this shared
machine's load (the project's VMs: read bandwidth 22-54 GB/s between minutes), hence
medians over several passes, and hence measured rather than read from a datasheet.
"""
from __future__ import annotations

import ctypes
import functools
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

CHAINS = 12  # independent FMA chains: covers FMA latency (4) x ports (2) with room
UNROLL = 4  # vectors loaded per read-loop iteration (independent adds)


@dataclass(frozen=True)
class Ceilings:
    threads: int
    fma_gflops: float  # all threads
    fma_gflops_one: float
    read_gbs: float  # from memory: all threads, a buffer several times the last-level cache
    read_gbs_one: float
    llc_gbs: float  # from the last-level cache: all threads, a buffer half its size
    llc_bytes: int | None  # the last-level cache (sysfs), None where unknown
    l2_bytes: int | None  # one core's L2 (sysfs)
    lanes: int

    def summary(self) -> str:
        llc = f"{self.llc_bytes / 2**20:.0f} MiB last-level cache" if self.llc_bytes else "last-level cache unknown"
        return (f"this host, measured in the same run: FP32 FMA peak {self.fma_gflops:.0f} GFLOP/s on "
                f"{self.threads} threads ({self.fma_gflops_one:.0f} on 1, {self.lanes}-lane vectors), memory read "
                f"bandwidth {self.read_gbs:.1f} GB/s ({self.read_gbs_one:.1f} on 1), {llc} read at "
                f"{self.llc_gbs:.0f} GB/s")

    def as_dict(self) -> dict:
        return dict(peak_gflops=self.fma_gflops, read_gbs=self.read_gbs, llc_gbs=self.llc_gbs,
                    llc_bytes=self.llc_bytes)

    def best(self, other: "Ceilings") -> "Ceilings":
        """Each rate the higher of two measurements (before and after a row): a ceiling is
        what the machine can do, and a sample taken while a neighbour held the cores or the
        memory bus would otherwise inflate the row's %roof (a 167 GFLOP/s sample put a row
        at 105% that the 227 measured on either side of it puts at 77%)."""
        return replace(self, **{f: max(getattr(self, f), getattr(other, f))
                                for f in ("fma_gflops", "fma_gflops_one", "read_gbs", "read_gbs_one", "llc_gbs")})

    def read_seconds(self, working_set: float) -> float:
        """Reading a working set of ``working_set`` bytes once, when it was last used one phase
        ago: from memory where it exceeds the last-level cache, from that cache where it
        exceeds the L2s of the threads, else free (nothing where the cache sizes are unknown)."""
        if not self.llc_bytes:
            return 0.0
        if working_set > self.llc_bytes:
            return working_set / (self.read_gbs * 1e9)
        if working_set > (self.l2_bytes or 0) * self.threads:
            return working_set / (self.llc_gbs * 1e9)
        return 0.0

    def floor_seconds(self, flops: float, working_set: float) -> float:
        """The roofline time of one phase: its FLOPs at the FMA peak or reading its working set
        (``read_seconds``), whichever is longer."""
        return max(flops / (self.fma_gflops * 1e9), self.read_seconds(working_set))

    def memory_bound(self, flops: float, working_set: float) -> bool:
        return self.read_seconds(working_set) > flops / (self.fma_gflops * 1e9)


def _lanes() -> int:
    """The vector width of the cpu target this host gets (hw_models: AVX-512 or AVX2)."""
    from compiler.host import host_has_avx512
    return 16 if host_has_avx512() else 8


@functools.lru_cache(maxsize=None)
def kernels(lanes: int):
    """(fma(iterations) -> float, read(pointer, floats) -> float), JIT-compiled for this CPU.
    ``fma`` runs CHAINS vector FMA chains; ``read`` sums ``floats`` float32s (a multiple of
    UNROLL * lanes, 64-byte aligned) with UNROLL vector adds per iteration."""
    from llvmlite import binding as llvm
    from llvmlite import ir as L

    from compiler.backends.llvm.loader import target_machine
    f32, i64 = L.FloatType(), L.IntType(64)
    vec = L.VectorType(f32, lanes)
    mod = L.Module("ceilings")
    mod.triple = llvm.get_process_triple()
    fma = L.Function(mod, L.FunctionType(vec, [vec, vec, vec]), name=f"llvm.fma.v{lanes}f32")

    def counted_loop(fn, carried: list, body):
        """for i in [0, n): carried = body(i, carried); returns the final values."""
        b = L.IRBuilder(fn.append_basic_block("entry"))
        entry = b.block
        loop, done = fn.append_basic_block("loop"), fn.append_basic_block("done")
        b.branch(loop)
        b.position_at_end(loop)
        i = b.phi(i64)
        i.add_incoming(L.Constant(i64, 0), entry)
        phis = [b.phi(v.type) for v in carried]
        for p, v in zip(phis, carried):
            p.add_incoming(v, entry)
        new, step = body(b, i, phis)
        for p, v in zip(phis, new):
            p.add_incoming(v, b.block)
        nxt = b.add(i, L.Constant(i64, step))
        i.add_incoming(nxt, b.block)
        b.cbranch(b.icmp_unsigned("<", nxt, fn.args[-1]), loop, done)
        b.position_at_end(done)
        total = new[0]
        for v in new[1:]:
            total = b.fadd(total, v)
        lane = [b.extract_element(total, L.Constant(L.IntType(32), j)) for j in range(lanes)]
        while len(lane) > 1:  # a tree of adds: every lane's sum, exact for the read check
            lane = [b.fadd(lane[j], lane[j + 1]) for j in range(0, len(lane), 2)]
        b.ret(lane[0])

    f = L.Function(mod, L.FunctionType(f32, [i64]), name="fma_loop")
    x, y = L.Constant(vec, [1.0000001] * lanes), L.Constant(vec, [0.9999999] * lanes)
    counted_loop(f, [L.Constant(vec, [float(k)] * lanes) for k in range(CHAINS)],
                 lambda b, i, accs: ([b.call(fma, [a, x, y]) for a in accs], 1))

    r = L.Function(mod, L.FunctionType(f32, [vec.as_pointer(), i64]), name="read_loop")

    def read_body(b, i, accs):
        base = b.udiv(i, L.Constant(i64, lanes))
        out = []
        for u, a in enumerate(accs):
            p = b.gep(r.args[0], [b.add(base, L.Constant(i64, u))], inbounds=True)
            ld = b.load(p)
            ld.align = 64 if u == 0 else 4 * lanes
            out.append(b.fadd(a, ld))
        return out, UNROLL * lanes
    counted_loop(r, [L.Constant(vec, [0.0] * lanes) for _ in range(UNROLL)], read_body)

    tm = target_machine()
    m = llvm.parse_assembly(str(mod))
    m.verify()
    engine = llvm.create_mcjit_compiler(m, tm)
    engine.finalize_object()
    fma_fn = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64)(engine.get_function_address("fma_loop"))
    read_fn = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_void_p, ctypes.c_int64)(engine.get_function_address("read_loop"))
    return engine, fma_fn, read_fn


def aligned_ones(floats: int) -> np.ndarray:
    """``floats`` float32 ones starting on a 64-byte boundary."""
    raw = np.ones(floats + 16, np.float32)
    off = (-raw.ctypes.data % 64) // 4
    return raw[off:off + floats]


@functools.lru_cache(maxsize=2)
def _read_buffer(floats: int) -> np.ndarray:
    """``aligned_ones`` kept for the next measurement (the memory and the cache buffer): a
    benchmark measures before and after every row, and filling 256 MiB afresh each time took
    ~0.1 s of page faults.  Only ever read."""
    return aligned_ones(floats)


def _median_wall(pool, calls: list, passes: int) -> float:
    """Median wall time of running every call of ``calls`` at once (one per thread)."""
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        list(pool.map(lambda c: c(), calls))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(read_bytes: int | None = None, fma_iterations: int = 2_000_000, passes: int = 7,
            threads: int | None = None, single: bool = True) -> Ceilings:
    """Time the loops on ``threads`` (default: every CPU) and, with ``single``, on 1 thread
    (else those fields are 0), the median of ``passes`` each.  The memory read buffer defaults
    to 8x the last-level cache (at least 256 MiB, at most 1 GiB) so that no pass finds it
    cached; the cache read buffer is half the last-level cache (what a shared one reliably
    holds) but at most 8x the threads' L2s, read repeatedly within a pass; each thread reads
    its own contiguous share.  The cap matters on VMs of a big shared cache: on one whose sysfs
    shows a 480 MiB L3, half of it read at 31 GB/s, memory's speed (its neighbours hold the
    rest), while 8-64 MiB read at 56 GB/s and 2 x 2 MiB of L2 at 170; with the half, a
    25 MiB batch-1 GRU read faster than that "cache" and its %roof came out at 143%."""
    from compiler.host import host_cache_bytes
    lanes = _lanes()
    _, fma_fn, read_fn = kernels(lanes)
    n = threads or os.cpu_count() or 1
    llc = host_cache_bytes(3) or host_cache_bytes(2)
    l2 = host_cache_bytes(2) if host_cache_bytes(3) else None
    step = UNROLL * lanes
    total = read_bytes or max(256 << 20, min(1 << 30, 8 * (llc or 0)))
    per = max(step, total // 4 // n // step * step)
    buf = _read_buffer(per * n)
    if abs(read_fn(buf.ctypes.data, per) - per) > 1e-6 * per:  # the loop must read what it is timed on
        raise RuntimeError("the read-bandwidth loop summed the wrong value")
    cached_bytes = (llc or 16 << 20) // 2
    if l2:
        cached_bytes = min(cached_bytes, 8 * l2 * n)
    cper = max(step, cached_bytes // 4 // n // step * step)
    cbuf = _read_buffer(cper * n)
    reps = max(1, per // cper)  # the same bytes per pass as the memory read
    fma_fn(1000)
    flops = 2.0 * lanes * CHAINS * fma_iterations

    def again(a, floats, times):
        for _ in range(times):
            read_fn(a, floats)
    with ThreadPoolExecutor(n) as pool:
        one = _median_wall(pool, [lambda: fma_fn(fma_iterations)], passes) if single else float("inf")
        many = _median_wall(pool, [lambda: fma_fn(fma_iterations)] * n, passes)
        addr = [buf[t * per:].ctypes.data for t in range(n)]
        rone = _median_wall(pool, [lambda: read_fn(addr[0], per * n)], passes) if single else float("inf")
        rmany = _median_wall(pool, [functools.partial(read_fn, a, per) for a in addr], passes)
        cached = _median_wall(pool, [functools.partial(again, cbuf[t * cper:].ctypes.data, cper, reps)
                                     for t in range(n)], passes + 1)
    nbytes = 4.0 * per * n
    return Ceilings(n, n * flops / many / 1e9, flops / one / 1e9, nbytes / rmany / 1e9, nbytes / rone / 1e9,
                    4.0 * cper * n * reps / cached / 1e9, llc, l2, lanes)


def for_row(before: Ceilings | None = None) -> Ceilings:
    """The all-thread ceilings around a benchmark row (~0.1 s each once the buffers exist):
    measured again for every row, since this shared machine's bandwidth drifts over a long
    run; called before the row and then after it with the first measurement, it returns the
    better of the two (``best``)."""
    now = measure(passes=5, single=False)
    return now if before is None else before.best(now)


def row_fields(c: Ceilings, floor: float, memory_bound: bool, seconds: dict[str, float]) -> dict:
    """A host row's roofline fields: the ceilings it was timed under, its floor (``floor_seconds``),
    whether memory bounds it, and each side's fraction of the floor (``of_roofline`` for ours,
    ``<side>_of_roofline`` for the baselines)."""
    out = dict(c.as_dict(), floor_seconds=floor, memory_bound=memory_bound)
    for side, s in seconds.items():
        out["of_roofline" if side == "ours" else f"{side}_of_roofline"] = floor / s
    return out


def run_summary(extras: list[dict]) -> list[str]:
    """The table lines on the ceilings a run's rows were timed under (medians and ranges over
    rows) and the median fraction of the roofline each side reached, memory-bound rows apart."""
    extras = [x for x in extras if "peak_gflops" in x]
    if not extras:
        return []
    med = statistics.median

    def span(key, fmt):
        v = [x[key] for x in extras]
        return f"{fmt(med(v))} ({fmt(min(v))}-{fmt(max(v))})" if len(v) > 1 else fmt(v[0])
    llc = extras[0].get("llc_bytes")
    cache = f"{llc / 2**20:.0f} MiB last-level cache" if llc else "last-level cache"
    lines = [f"ceilings measured around each row (JIT'd loops, every thread, the better of before and after; "
             f"median, range over rows): FP32 FMA peak "
             f"{span('peak_gflops', lambda v: f'{v:.0f}')} GFLOP/s, read bandwidth from memory "
             f"{span('read_gbs', lambda v: f'{v:.1f}')} GB/s, from the {cache} {span('llc_gbs', lambda v: f'{v:.0f}')} GB/s; "
             f"%roof = roofline time / ours, the roofline being the FLOPs at that peak or reading each phase's "
             f"working set once (from memory where it exceeds the {cache}, from that cache where it exceeds "
             f"the L2s), whichever is longer; m: memory-bound rows"]
    sides = [k[:-len("_of_roofline")] for k in extras[0] if k.endswith("_of_roofline")]
    for label, keep in (("compute-bound", False), ("memory-bound", True)):
        group = [x for x in extras if x.get("memory_bound") is keep]
        if group:
            parts = [f"ours {100 * med([x['of_roofline'] for x in group]):.0f}%"]
            parts += [f"{s} {100 * med([x[f'{s}_of_roofline'] for x in group if f'{s}_of_roofline' in x]):.0f}%"
                      for s in sides]
            lines.append(f"{label} rows ({len(group)}): median %roof {', '.join(parts)}")
    return lines
