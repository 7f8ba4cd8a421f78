"""Compiled host kernels and how they are called: ``NativeKernel`` holds a build's machine
code (cached on disk, `loader.py`), how each call splits across the native pool's threads
(``pool.py``), and the call paths from Python (``exact``, and the native ``entry.py`` for
short kernels); ``compile_cpu`` decides a build's plans (`plan.py`) and generates its code
(`scalar.py`, `contraction.py`) only when the cache does not hold it.  Nothing here imports
LLVM: a cached build loads a shared library and runs without it.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace
from math import prod

import numpy as np

from ir.bind import Bound
from ir.dtypes import BFLOAT16, BOOL, DType
from ir.expr import Access, Var, walk
from ir.kernel import Kernel

from ..access import covers_output
from ..fusion import epilogue
from .plan import Contraction, recognise

# the source a build's code depends on: changing it invalidates cached builds (read once per process)
GENERATORS = tuple(f"compiler/backends/llvm/{f}" for f in ("scalar.py", "contraction.py", "plan.py", "native.py"))
RECORD = 12  # i64 fields of a part's record in a pool context (a contraction's uses 11)
PARALLEL_MIN_WORK = 1 << 15  # iterations below which one thread is faster
PARALLEL_MIN_SECONDS = 1.3e-5  # contractions estimated below this on one core run on one thread (a pool
                               # dispatch costs ~2-3 us; measured: 3072x1x128 55 -> 25 us on 2 threads).
                               # 4e-6 made 64x64x64 8.1 -> 5.9 us in a tight loop on a Zen 4 VM but lost in
                               # the bench harness's medians (0.71/0.62 -> 0.57/0.49 of numpy): a 5 us job
                               # split across both vCPUs of a shared VM waits on the slower one.  Raised
                               # from 8e-6 with the native entry (entry.py), which only one-thread kernels
                               # get: 128x1x1024 (8.8 us estimated) 6.4 us alone vs 7.9 split, 128x1x1408
                               # (12.1) 8.1 vs 8.9; 128x4x1408 (14.4) 14.6 vs 12.0, 256x1x1024 (17.6) 13.4 vs 12.4


def one_core_seconds(p: Contraction) -> float:
    """A rough single-core time: the FMAs at ~100 GFLOP/s, or for GEMV-like shapes the operands
    streamed at ~60 GB/s, whichever is longer."""
    nb = prod(p.extent(v) for v in p.batch) * p.tap_points()
    m, n, k = p.extent(p.row), p.extent(p.vec), p.extent(p.red)
    return max(p.flops() / 1e11, 4 * nb * (m * k + k * n + m * n) / 6e10)


class NativeKernel:
    """The JIT-compiled statement functions; calls split each statement's outermost loop across
    threads (ctypes releases the GIL), statements one after another."""

    def __init__(self, k: Kernel, b: Bound, source, key: str, threads: int | None = None, plans=()):
        """``source()`` generates the LLVM IR and its function table; ``key`` identifies the build
        without generating it (kernel, sizes, plans, generator version), so a cached build
        skips code generation entirely."""
        import json
        import os
        self.k, self.b = k, b
        self.plans = list(plans)
        self.row_runs: list[list[int]] = []  # scalar statements run as one row loop (compile_cpu)
        self._source = source
        self._ir = None
        self.threads = threads or os.cpu_count() or 1
        self._optimized = None
        from . import loader
        stem = loader.cache_stem(key)
        meta = stem.with_suffix(".json") if stem is not None else None
        code = loader.cached(stem) if meta is not None and meta.exists() else None
        table = None
        if code is not None:  # machine code from an earlier build, and its table of functions
            from compiler.cache import touch
            try:
                table = json.loads(meta.read_text())
                touch(meta)
            except (OSError, ValueError):  # trimmed or torn since: built again
                code = None
        if table is not None:
            functions = [(n, si, self.plans[o] if isinstance(o, int) else o, tuple(r)) for n, si, o, r in table]
            self.cached = True
        else:
            self._ir, functions = source()
            code = loader.compile_module(self._optimize(), stem)
            if meta is not None:
                index = {id(p): i for i, p in enumerate(self.plans)}
                table = [(n, si, index[id(o)] if isinstance(o, Contraction) else o, list(r)) for n, si, o, r in functions]
                from compiler.cache import write_atomic
                write_atomic(meta, json.dumps(table).encode())  # the table last: an entry counts once both exist
            self.cached = False
        self.code = code
        P = ctypes.POINTER(ctypes.c_void_p)
        import threading
        self._lock = threading.Lock()
        self._ptrs = (ctypes.c_void_p * len(k.inputs + k.outputs))()
        self._steps = None
        self._fast = None
        self._in_specs = [(t.name, _holding(t.dtype)) for t in k.inputs]
        # outputs that the code writes in full before reading need no zero fill (np.zeros of a
        # 1760x128 float32 C costs ~20 us, more than a small GEMM)
        self._out_specs = [(b.shapes[t.name], _holding(t.dtype), np.empty if _written_first(k, b, t.name) else np.zeros)
                           for t in k.outputs]
        self._out_names = [(t.name, t.dtype == BOOL) for t in k.outputs]
        self._scratch: dict[int, np.ndarray] = {}
        self._contexts: list = []
        self.calls = []
        self.workspace = 0
        for name, si, outer, (lo, hi) in functions:
            if outer is None and name.endswith("_init"):  # not splittable: called directly
                self.calls.append(_Call(ctypes.CFUNCTYPE(None, P)(self.code.address(name))))
                continue
            task = self.code.address(f"{name}_task")  # every other call goes through it
            if isinstance(outer, Contraction):
                self.calls.append(_Call(None, task, outer, reduce=name.endswith("_reduce")))
                self.workspace = max(self.workspace, hi)
            else:
                work = prod(h - l for l, h in b.domain(si).values())
                self.calls.append(_Call(None, task, None, lo, hi, work))
    @property
    def llvm_ir(self) -> str:
        """The unoptimised module (generated on demand after a cached build)."""
        if self._ir is None:
            self._ir, _ = self._source()
        return self._ir

    def _optimize(self):
        from llvmlite import binding as llvm

        from .loader import target_machine
        mod = llvm.parse_assembly(self.llvm_ir)
        mod.verify()
        tm = target_machine()
        pto = llvm.create_pipeline_tuning_options(speed_level=3)
        pb = llvm.create_pass_builder(tm, pto)
        pb.getModulePassManager().run(mod, pb)
        self._optimized = mod
        return mod

    @property
    def optimized(self) -> str:
        return str(self._optimized or self._optimize())

    @property
    def asm(self) -> str:
        from .loader import target_machine
        return target_machine().emit_assembly(self._optimized or self._optimize())

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.run([arrays[name] for name, _ in self._in_specs])
        return {name: o for (name, _), o in zip(self._out_names, outs)}

    def exact(self, args: tuple) -> list[np.ndarray] | None:
        """The outputs for ``args`` when every one is an ndarray of exactly the built shape and
        dtype, else None (the caller takes the checked path).  Nothing is converted, and only
        arrays that are not C-contiguous are copied: ~0.7 us of Python around the native calls,
        where ``run`` costs 3-4 us -- as much as a small GEMV itself (64x1x1216: 4 us native,
        numpy 5 us in all)."""
        fast = self._fast
        if fast is None:
            fast = self._fast = self._exact_entry()
        return fast(args)

    def _exact_entry(self):
        """``exact``'s function, written out for this kernel's arity and steps (generic loops over
        the arguments cost a microsecond more than the checks themselves)."""
        if self._converts_inputs():
            return lambda args: None
        steps = self._planned_steps()
        env = dict(ndarray=np.ndarray, addr=_address, ptrs=self._ptrs, lock=self._lock, contiguous=np.ascontiguousarray)
        nin = len(self.k.inputs)
        xs = [f"x{i}" for i in range(nin)]
        lines = ["def fast(args):", f"    if len(args) != {nin}:", "        return None",
                 f"    {', '.join(xs)}{',' if nin == 1 else ''} = args"]
        for i, (t, (_, dt)) in enumerate(zip(self.k.inputs, self._in_specs)):
            shape = tuple(self.b.shapes[t.name])
            env[f"s{i}"], env[f"d{i}"], env[f"t{i}"] = shape, np.dtype(dt), np.empty(shape, dt).strides
            # strides other than the built ones: still C-contiguous where they belong to
            # extent-1 axes (a row sliced from a wider array), which no address uses; else
            # copied here (a GRU step's gate slices of the batched projection, batch > 1),
            # which the checked path would do too after ~10 us more of Python
            lines += [f"    if type(x{i}) is not ndarray or x{i}.shape != s{i} or "
                      f"(x{i}.dtype is not d{i} and x{i}.dtype != d{i}):", "        return None",
                      f"    if x{i}.strides != t{i} and not x{i}.flags.c_contiguous:",
                      f"        x{i} = contiguous(x{i})"]
        outs = []
        for j, ((shape, dt, alloc), (_, is_bool)) in enumerate(zip(self._out_specs, self._out_names)):
            env[f"os{j}"], env[f"od{j}"], env[f"alloc{j}"] = tuple(shape), np.dtype(dt), alloc
            lines.append(f"    o{j} = alloc{j}(os{j}, od{j})")
            outs.append(f"o{j}.astype(bool)" if is_bool else f"o{j}")
        lines.append("    with lock:")
        lines += [f"        ptrs[{i}] = addr(x{i})" for i in range(nin)]
        lines += [f"        ptrs[{nin + j}] = addr(o{j})" for j in range(len(outs))]
        for i, step in enumerate(steps):
            env[f"step{i}"] = step
            lines.append(f"        step{i}()")
        lines.append(f"    return [{', '.join(outs)}]")
        exec("\n".join(lines), env)
        return env["fast"]

    def _converts_inputs(self) -> bool:
        """Whether the checked path converts some input (bfloat16 rounding, truth values), so
        that no lean path may pass the caller's arrays through as they are."""
        return any(t.dtype in (BFLOAT16, BOOL) for t in self.k.inputs)

    def entry(self, fallback):
        """A Python builtin that runs this kernel from native code (``entry.py``) for calls of
        exactly the built inputs, handing every other call to ``fallback``; None where the
        kernel splits across threads or runs long (a call holds the GIL throughout), has
        inputs the checked path converts, or the interpreter's layout is not the expected one."""
        if self._converts_inputs() or any(b for _, b in self._out_names):
            return None
        if len(self._out_specs) > 16:  # the entry keeps its outputs in 16 stack slots
            return None
        from .entry import ENTRY_MAX_SECONDS, Entry
        splits = self._splits()
        if any(len(parts) > 1 for _, parts, _ in splits) or sum(sec for _, _, sec in splits) > ENTRY_MAX_SECONDS:
            return None
        table = (ctypes.c_void_p * len(self.k.inputs + self.k.outputs))()
        scratch: dict[int, np.ndarray] = {}
        with self._lock:
            planned = self._calls_planned(table, scratch, splits)
            self._contexts.append(scratch)
        ins = [(tuple(self.b.shapes[t.name]), dt) for t, (_, dt) in zip(self.k.inputs, self._in_specs)]
        outs = [(alloc, shape, dt) for shape, dt, alloc in self._out_specs]
        try:
            e = Entry(self.k.name, ins, outs, [(kind, fn, arg) for kind, fn, arg, _, _ in planned], table, fallback)
        except OSError:
            return None
        self._contexts.append(e)
        return e.call

    def run(self, inputs) -> list[np.ndarray]:
        """Inputs in the kernel's order -> its outputs in order (the lean entry: no dicts)."""
        bufs = [np.ascontiguousarray(x, dtype=dt) for x, (_, dt) in zip(inputs, self._in_specs)]
        outs = [alloc(shape, dtype=dt) for shape, dt, alloc in self._out_specs]
        steps = self._planned_steps()
        with self._lock:  # one call at a time: the buffer table and scratch are shared
            self._ptrs[:] = [_address(x) for x in bufs + outs]
            for step in steps:
                step()
        return [o.astype(bool) if is_bool else o for (_, is_bool), o in zip(self._out_names, outs)]

    def _planned_steps(self) -> list:
        """The native calls of a run, planned on first use (planning starts the thread pool)."""
        with self._lock:
            if self._steps is None:
                self._steps = self._plan_steps()
            return self._steps

    def _plan_steps(self) -> list:
        """Every native call of one run, decided once: how each statement splits across threads,
        with its pool context (records of buffer table, scratch, ranges) built ahead, so a run
        costs one ctypes call where the pool takes part (``NativePool.plan``), else one per
        statement, and nothing more in Python."""
        from functools import partial

        from .pool import native_pool
        planned = self._calls_planned(self._ptrs, self._scratch, self._splits())
        if any(kind == 1 and parts > 1 for kind, _, _, parts, _ in planned):
            return [native_pool().plan(planned)]  # the pool's workers take part: one native call
        # every call on this thread (one part, or none): no pool started, a call through each entry
        return [partial(ctypes.CFUNCTYPE(None, ctypes.c_void_p)(fn), ctx) if kind == 0
                else partial(ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(fn), ctx, 0)
                for kind, fn, ctx, parts, _ in planned if kind == 0 or parts]

    def _splits(self) -> list[tuple[_Call, list[tuple[int, ...]], float]]:
        """Per native call: the ranges of its parts (one per thread it runs on; none for an
        identity fill) and its estimated one-thread seconds -- decided without allocating
        anything, so ``entry`` can refuse a kernel before any scratch exists."""
        out = []
        for c in self.calls:
            if c.task is None:
                out.append((c, [], 0.0))
            elif c.reduce:
                k_parts = len(out[-1][1])
                if k_parts > 1:
                    out.append((c, [(k_parts,) + r for r in split_reduce(c.plan, self.threads)],
                                k_parts * c.plan.c_span() * 4 / 1e10))
            elif c.plan is not None:
                out.append((c, split_contraction(c.plan, self.threads), one_core_seconds(c.plan)))
            else:
                n = c.hi - c.lo
                k = min(self.threads, n) if c.work >= PARALLEL_MIN_WORK else 1
                step = -(-n // max(k, 1))
                out.append((c, [(a, min(c.hi, a + step)) for a in range(c.lo, c.hi, step)], c.work / 1e9))
        return out

    def _calls_planned(self, table, scratch: dict, splits) -> list[tuple[int, int, int, int, float]]:
        """(kind, function address, argument address, parts, one-thread seconds) per native call
        of ``splits``: kind 0 is ``fn(table)``, kind 1 ``task(ctx, part)`` for each part.
        ``table`` (the buffer table) and ``scratch`` (part -> packing buffer) are the caller's,
        so that the native entry's calls (``entry``) share nothing with the Python path's."""
        out = []
        for c, parts, seconds in splits:
            if c.task is None:
                out.append((0, ctypes.cast(c.f, ctypes.c_void_p).value, ctypes.addressof(table), 1, 0.0))
                continue
            # a record: buffer table, then the part's scratch (contractions) or 0, then its ranges;
            # a reduce's: the table, the scratch of every part of the split K before it, ranges
            if c.reduce:
                works = (ctypes.c_int64 * parts[0][0])(*(self._work(i, scratch) for i in range(parts[0][0])))
                self._contexts.append(works)
                records = [(ctypes.addressof(works),) + r for r in parts]
            else:
                records = [(self._work(i, scratch) if c.plan is not None else 0,) + r for i, r in enumerate(parts)]
            ctx = (ctypes.c_int64 * (RECORD * len(records)))()
            for i, r in enumerate(records):
                ctx[RECORD * i] = ctypes.addressof(table)
                for j, v in enumerate(r):
                    ctx[RECORD * i + 1 + j] = v
            self._contexts.append(ctx)
            out.append((1, c.task, ctypes.addressof(ctx), len(records), seconds))
        return out

    def _work(self, i: int, scratch: dict) -> int:
        """The address of part i's scratch (64-byte aligned, allocated once per kernel)."""
        buf = scratch.get(i)
        if buf is None:
            buf = scratch[i] = np.zeros(self.workspace + 16, dtype=np.float32)
        return (buf.ctypes.data + 63) // 64 * 64


@dataclass
class _Call:
    """One native entry point: ``f`` for an unsplittable one (an identity fill), else ``task``,
    its ``(ctx, part)`` entry, run on this thread or the pool; ``plan`` marks a contraction;
    lo/hi/work describe a range call."""
    f: object
    task: int | None = None
    plan: Contraction | None = None
    lo: int = 0
    hi: int = 0
    work: int = 0
    reduce: bool = False  # a split K's sums: follows its contraction's call, only when that split K


def split_contraction(p: Contraction, threads: int) -> list[tuple[int, ...]]:
    """(q_lo, q_hi, m_lo, m_hi, n_lo, n_hi, k_lo, k_hi, part) per thread: batches, rows or
    columns split, K whole; or with ``split_k``, K split in whole K blocks."""
    return [r[:6] + (klo, khi, i) for i, (r, (klo, khi)) in enumerate(_split_ranges(p, threads))]


def split_reduce(p: Contraction, threads: int) -> list[tuple[int, int, int, int]]:
    """(m_lo, m_hi, n_lo, n_hi) per thread for the sums after a split K: columns in whole vectors."""
    (mlo, mhi), (nlo, nhi) = p.dom[p.row], p.dom[p.vec]
    vl = p.blocking.vl
    per = -(-(-(-(nhi - nlo) // vl)) // threads) * vl
    return [(mlo, mhi, a, min(nhi, a + per)) for a in range(nlo, nhi, per)]


def _split_ranges(p: Contraction, threads: int) -> list[tuple[tuple[int, ...], tuple[int, int]]]:
    # flattened batch indices run over the batch variables, then the taps: a part always takes
    # whole groups of T taps (every tap of its C rows, in order: they accumulate into one C)
    T = p.tap_points()
    nb = prod(p.extent(v) for v in p.batch)
    (mlo, mhi), (nlo, nhi) = p.dom[p.row], p.dom[p.vec]
    klo, khi = p.dom[p.red]
    bl = p.blocking
    if one_core_seconds(p) < PARALLEL_MIN_SECONDS or threads <= 1:
        return [((0, nb * T, mlo, mhi, nlo, nhi), (klo, khi))]
    if bl.split_k:
        per = -(-(-(-(khi - klo) // bl.kc)) // threads) * bl.kc
        return [((0, nb, mlo, mhi, nlo, nhi), (a, min(khi, a + per))) for a in range(klo, khi, per)]
    if nb >= threads:
        step = -(-nb // threads)
        return [((q * T, min(nb, q + step) * T, mlo, mhi, nlo, nhi), (klo, khi)) for q in range(0, nb, step)]
    mt, nt = -(-(mhi - mlo) // bl.mr), -(-(nhi - nlo) // bl.nr)
    out = []
    for q in range(nb):
        # each thread packs the B block of its columns and reads the A rows of its rows: split
        # the longer side, so the part every thread touches whole is the smaller operand
        if p.form == "dot" or ((mhi - mlo >= nhi - nlo or nt < threads) and mt >= threads):  # dot: whole rows
            per = -(-mt // threads) * bl.mr
            out += [((q * T, (q + 1) * T, a, min(mhi, a + per), nlo, nhi), (klo, khi)) for a in range(mlo, mhi, per)]
        else:
            per = -(-nt // threads) * bl.nr
            out += [((q * T, (q + 1) * T, mlo, mhi, a, min(nhi, a + per)), (klo, khi)) for a in range(nlo, nhi, per)]
    return out


def _address_slow(x: np.ndarray) -> int:
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(x))  # ~0.6 us; x.ctypes.data ~2 us
    except (TypeError, ValueError):  # read-only or empty
        return x.ctypes.data


def _pick_address():
    """The data address of an ndarray: read from the object itself (``PyArrayObject.data``,
    the field ``PyArray_DATA`` reads, right after the object header: ~0.3 us) where a
    self-check on this interpreter and numpy confirms the layout, else through ctypes."""
    from_address = ctypes.c_void_p.from_address
    offset = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)  # ob_refcnt, ob_type
    probe = np.arange(12, dtype=np.float32).reshape(3, 4)
    views = (probe, probe[1:], probe[:, 1:], np.empty(0, np.float32))
    try:
        if all(from_address(id(v) + offset).value == v.ctypes.data for v in views[:3]):
            return lambda x: from_address(id(x) + offset).value or 0
    except (ValueError, OSError):
        pass
    return _address_slow


_address = _pick_address()


def _written_first(k: Kernel, b: Bound, name: str) -> bool:
    """Whether every element of output ``name`` is written before anything reads it: its first
    statement covers the whole tensor and either initialises it (``!``: an identity fill or a
    covering contraction) or assigns it without reading it.  Otherwise the buffer starts as
    zeros, the reference semantics of elements no statement writes."""
    for si, s in enumerate(k.stmts):
        reads = {e.tensor for e in walk(s.rhs) if isinstance(e, Access)}
        if s.tensor != name:
            if name in reads:
                return False
            continue
        dom = b.domain(si)
        full = all(dom.get(v) == (m, m + e) for v, m, e in zip(s.indices, b.mins[name], b.shapes[name]))
        return (full and not s.exists and len(s.indices) == len(b.shapes[name])
                and (s.init or (s.op == "=" and name not in reads)))
    return False


def row_groups(k: Kernel, b: Bound, sis: list[int]) -> list[list[int]]:
    """``sis`` (consecutive statements on the scalar path, in order) cut into runs that can share
    one loop over their first output index (softmax's max, exp, sum and quotient; layernorm's
    five statements): each has that index over the same range, and every access to a tensor
    the run writes indexes its first dimension by exactly the accessing statement's own first
    index, so row n of the run reads and writes row n alone, whatever the other statements do
    to other rows.  The members' identity fills (``!``) run before the run: a tensor's fill
    belongs to the first statement writing it, and TC refuses a read before that, so no
    earlier member can see the fill early.  Runs of one statement are left as they are."""
    def rows(si):  # the range of the statement's first output index
        s = k.stmts[si]
        return b.domain(si)[s.indices[0]] if s.indices else None

    def touches(si):  # tensor -> is every access to it in row si's own row
        s = k.stmts[si]
        row = s.indices[0]
        out = {s.tensor: True}
        for e in walk(s.rhs):
            if isinstance(e, Access):
                ok = bool(e.indices) and isinstance(e.indices[0], Var) and e.indices[0].name == row
                out[e.tensor] = out.get(e.tensor, True) and ok
        return out

    runs: list[list[int]] = []
    for si in sis:
        cur = runs[-1] if runs else None
        if cur is not None and cur[-1] == si - 1 and rows(si) is not None and rows(si) == rows(cur[0]):
            group = cur + [si]
            written = {k.stmts[j].tensor for j in group}
            seen = [touches(j) for j in group]
            if all(t.get(w, True) for t in seen for w in written):
                cur.append(si)
                continue
        runs.append([si])
    return runs


def _holding(d: DType):
    if d == BOOL:
        return np.uint8
    return d.np


def compile_cpu(k: Kernel, b: Bound, t, threads: int | None = None, vector: bool = True,
                blocking: dict | None = None, blockings: dict[int, dict] | None = None,
                group_rows: bool = True) -> NativeKernel:
    """Host code for the kernel on target ``t``: statements whose mapping is the target's
    broadcast-FMA (or dot-product) instruction become packed, register-blocked contractions
    (`contraction.py`); everything else the scalar loop nests above.  The plans are decided
    first; code is generated only when the on-disk cache does not hold this build.
    ``blocking`` overrides blocking parameters of every contraction, ``blockings`` those of
    single statements (a tuned schedule).  ``group_rows``: consecutive scalar statements over
    the same rows run as one loop over them (``native.row_groups``)."""
    import os

    from ...mapping import mappings_for_kernel
    threads = threads or os.cpu_count() or 1
    ms = mappings_for_kernel(k, t, bound=b) if vector else []
    plans = {}
    for si in range(len(k.stmts)):
        p = recognise(k, b, t, si, ms, threads) if vector else None
        if p is not None:
            changes = {**(blocking or {}), **((blockings or {}).get(si) or {})}
            plans[si] = p.with_blocking(**changes) if changes else p

    if any(p.form == "tile" for p in plans.values()):
        from compiler.host import request_amx
        request_amx()  # (granted when the target was parsed, but a target may come from the disk cache)

    # no epilogue where C is whole only after the last tap, or where the vector runs over several
    # of the kernel's variables (the epilogue's tile function loops over the kernel's own; a
    # padded plan's pixels are rows h of columns w, and it runs there after the compaction), or
    # where a split K's sums run it apart from the batch loops
    fused = {si: epilogue(k, b, p, ints=True) if not p.taps and not (p.merged or p.im2col)
             and not (p.batch and p.blocking.split_k) else [] for si, p in plans.items()}
    skip = {j for js in fused.values() for j in js}
    plans = {si: (replace(p, epilogue=tuple(fused[si])) if fused[si] else p) for si, p in plans.items()}

    scalar = [si for si in range(len(k.stmts)) if si not in plans and si not in skip]
    runs = {r[0]: r for r in (row_groups(k, b, scalar) if group_rows else [[si] for si in scalar])}

    def generate():
        from .contraction import emit as emit_contraction
        from .scalar import _Gen
        g = _Gen(k, b)
        for si in range(len(k.stmts)):
            p = plans.get(si)
            if si in skip:
                continue
            if p is None:
                if si not in runs:  # (a later member of a row group: generated with its first)
                    continue
                if len(runs[si]) > 1:
                    g.row_group(runs[si])
                else:
                    g.statement(si)
                continue
            if not covers_output(p, b, p.out_dom):  # otherwise its first K block stores without reading
                g.init_function(si)
            epi = None
            if p.epilogue:
                row, vec, extra = p.row, p.vec, p.batch
                if p.pad:  # over each padded row's columns w, h after the tile's bounds
                    vec, extra = p.pad[1], (p.pad[0], *p.batch)
                if p.rows:  # over runs of the innermost row variable, the outer ones after the bounds
                    row, extra = p.rows[0][-1], (*p.rows[0][:-1], *p.batch)
                epi = g.tile_function(f"s{si}_epilogue", list(p.epilogue), row, vec, extra, rows_inner=p.gathers_c())
            ws = emit_contraction(g.mod, p, {n: i for i, n in enumerate(g.names)}, epi)
            g.functions.append((f"s{si}", si, p, (0, ws)))
            if p.blocking.split_k:
                g.functions.append((f"s{si}_reduce", si, p, (0, 0)))
        return g.finish(), g.functions
    nk = NativeKernel(k, b, generate, build_key(k, b, list(plans.values()), vector) + ("" if group_rows else "\0apart"),
                      threads, list(plans.values()))
    nk.row_runs = [r for r in runs.values() if len(r) > 1]
    return nk


def build_key(k: Kernel, b: Bound, plans, vector: bool) -> str:
    """What determines a cpu build: the kernel, its sizes, the plans (blocking included) and
    the code generators' own source (so changing the backend invalidates cached objects)."""
    from compiler.cache import code_fingerprint
    from ir import printer
    return "\0".join(["cpu-build-v1", printer.kernel(k), repr(sorted(b.sizes.items())), repr(plans), str(vector),
                      code_fingerprint(GENERATORS).decode()])
