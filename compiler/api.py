"""The Python API: ``compiler.build`` -> a callable kernel (numpy in, numpy out)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

import ir.interp
from ir import printer
from ir.bind import Bound, bind
from ir.errors import IsamapError
from ir.kernel import Kernel

from .frontend import parse

REFERENCE = "reference"


def load_kernel(path_or_source, kernel: str | None = None) -> Kernel:
    if isinstance(path_or_source, Kernel):
        return path_or_source
    return parse(path_or_source).kernel(kernel)


def mappings(path_or_source, target, sizes: dict[str, int] | None = None, explain: bool = False,
             kernel: str | None = None) -> list:
    """Every legal mapping of each statement of a kernel onto ``target``'s instructions (with
    ``explain``, the rejected candidates and why), as ``isamap mappings`` lists them; with
    ``sizes``, each mapping's extents (exact, tiled, padded) too.  ``target`` is a name, a .hw
    path or an ``ir.Target``."""
    import hw_models
    from ir.target import Target

    from .mapping import mappings_for_kernel
    from .updates import as_mapped
    t = target if isinstance(target, Target) else hw_models.load(target)
    k = as_mapped(load_kernel(path_or_source, kernel), t)
    return mappings_for_kernel(k, t, explain=explain, bound=bind(k, sizes) if sizes else None)


@dataclass
class CompiledKernel:
    """A kernel specialised to sizes and a target.  Call it with numpy arrays."""

    kernel: Kernel
    target: str
    bound: Bound | None  # None: sizes are taken from the first call's arrays (reference only)
    report: dict = field(default_factory=dict)
    target_ir: object = None
    schedule: object = None
    program: object = None
    candidates: object = None
    last: object = None  # the last simulation result
    resident: tuple = ()  # inputs kept on chip across runs of a session
    native: object = None  # host code (llvm backend)
    gpu: object = None  # CUDA code (cuda backend)
    gpu_schedule: str = ""  # its launches, tilings and grids (--emit schedule)
    _call: object = field(default=None, repr=False, compare=False)  # host targets: what __call__ runs

    def __repr__(self) -> str:
        # the dataclass's own repr spells out the kernel, target and program IR: 100+ KiB at a
        # prompt.  One line says what it is; .report, .source(...) and .schedule say the rest
        sizes = ", ".join(f"{k}={v}" for k, v in (self.sizes or {}).items()) or "sizes from the first call"
        how = self.report.get("scheduler")
        cost = self.report.get("predicted_cycles")
        return (f"<CompiledKernel {self.kernel.name} on {self.target} ({sizes})"
                + (f": {how} schedule" if how else "") + (f", predicted {cost} cycles" if cost else "") + ">")

    @property
    def sizes(self) -> dict[str, int] | None:
        return None if self.bound is None else dict(self.bound.sizes)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.kernel.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.kernel.outputs]

    @property
    def precision(self) -> str | None:
        """The narrowest float type the compiled code computes in (for result checks): a 16-bit
        float the kernel itself computes or stores in (a bfloat16 product, a half output), or one
        the program's buffers hold (a bf16 matrix unit fed from fp32 tensors)."""
        names = {s.rhs.dtype.name for s in self.kernel.stmts} | {t.dtype.name for t in self.kernel.outputs}
        if self.program is not None:
            names |= {b.dtype.name for b in self.program.buffers}
        for p in ("float16", "bfloat16"):
            if p in names:
                return p
        return None

    def converted_inputs(self) -> dict[str, str]:
        """Inputs the program reads through a narrowing conversion (fp32 -> bf16 on the way to a
        bf16 matrix unit, say): tensor -> the type it is rounded to."""
        from ir.loops import Loop, Move, Tile
        out: dict[str, str] = {}
        if self.program is None:
            return out
        t = self.target_ir

        def visit(nodes):
            for n in nodes:
                if isinstance(n, Loop):
                    visit(n.body)
                elif isinstance(n, Move) and isinstance(n.src, Tile) and self.kernel.is_input(n.src.tensor):
                    dst = t.instr(n.instr).outputs[0].dtype
                    src = self.kernel.tensor(n.src.tensor).dtype
                    if dst.kind == "f" and src.kind == "f" and dst.itemsize < src.itemsize:
                        out[n.src.tensor] = dst.name
        visit(self.program.body)
        return out

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The reference interpreter's result on the inputs as the program sees them: tensors it
        converts to a narrower float (``converted_inputs``) rounded to that type first.  What is
        left between this and the program is accumulation order, not the chosen precision."""
        from ir.dtypes import round_bf16
        rounded = dict(inputs)
        for name, dt in self.converted_inputs().items():
            x = np.asarray(inputs[name], dtype=np.float32)
            rounded[name] = round_bf16(x) if dt == "bfloat16" else x.astype(np.float16).astype(np.float32)
        return ir.interp.run(self.kernel, rounded, self.sizes)

    def _inputs(self, args, kwargs) -> dict[str, np.ndarray]:
        names = self.input_names
        if len(args) > len(names):
            raise IsamapError(f"kernel '{self.kernel.name}' takes {len(names)} inputs, {len(args)} given")
        inputs = dict(zip(names, args))
        for k, v in kwargs.items():
            if k in inputs:
                raise IsamapError(f"input '{k}' given twice")
            inputs[k] = v
        return inputs

    def _expected(self) -> list[tuple[str, tuple, np.dtype]]:
        """(name, shape, dtype) of every input, as built (bfloat16 inputs: None, always converted)."""
        expect = self.__dict__.get("_expect")
        if expect is None:
            from ir.dtypes import BFLOAT16
            expect = self._expect = [(t.name, tuple(self.bound.shapes[t.name]),
                                      None if t.dtype == BFLOAT16 else np.dtype(t.dtype.np)) for t in self.kernel.inputs]
        return expect

    def _exact(self, inputs: dict) -> dict[str, np.ndarray] | None:
        """``inputs`` as they are when each is an array of exactly the built shape and dtype
        (nothing to infer, bind or convert: ~70 us saved per call, more than a small GEMM
        takes); None sends the call through the full checks."""
        names = [name for name, _, _ in self._expected()]
        if len(inputs) != len(names):
            return None
        return inputs if self._exact_args(tuple(inputs.get(n) for n in names)) else None

    def _exact_args(self, args: tuple) -> bool:
        """The same test for positional inputs (the lean path of ``__call__``)."""
        expect = self._expected()
        if len(args) != len(expect):
            return False
        for x, (_, shape, dt) in zip(args, expect):
            if type(x) is not np.ndarray or x.shape != shape or x.dtype != dt:
                return False
        return True

    def run_all(self, *args, trace: bool = False, stalls: bool = False, **kwargs) -> dict[str, np.ndarray]:
        """Every output by name.  On simulated targets ``trace`` keeps the timeline and
        ``stalls`` where the compute engine's time went (``report["stalls"]``)."""
        inputs = self._inputs(args, kwargs)
        t0 = time.perf_counter()
        if self.gpu is not None:
            _, arrays = ir.interp.prepare_inputs(self.kernel, inputs, self.sizes)
            out, sec = self.gpu(arrays)
            self.report["seconds"] = sec
            flops = 2 * self.bound.macs()
            if self.gpu.emulated:
                self.report["emulated"] = True  # host time of the CPU emulation: no GFLOP/s
                self.report["emulator_counters"] = self.gpu.last_counters
            elif flops and sec > 0:
                self.report["gflops"] = flops / sec / 1e9
            return out
        if self.native is not None:
            arrays = self._exact(inputs)
            if arrays is None:
                _, arrays = ir.interp.prepare_inputs(self.kernel, inputs, self.sizes)
            t0 = time.perf_counter()
            out = self.native(arrays)
            self.report["seconds"] = sec = time.perf_counter() - t0
            flops = 2 * self.bound.macs()
            if flops:
                self.report["gflops"] = flops / sec / 1e9 if sec > 0 else None
            return out
        if self.program is None:
            out = ir.interp.run(self.kernel, inputs, self.sizes)
            self.report["seconds"] = time.perf_counter() - t0
            return out
        from .backends.sim import simulate
        b, arrays = ir.interp.prepare_inputs(self.kernel, inputs, self.sizes)
        res = simulate(self.target_ir, self.program, self.kernel, b, arrays, trace=trace, stalls=stalls)
        self.last = res
        self.report.update(res.report())
        if res.stalls is not None:
            self.report["stalls"] = res.stalls
        self.report["simulation_seconds"] = time.perf_counter() - t0
        return res.outputs

    def session(self) -> "Session":
        """Run the kernel several times on one simulated machine (state carried over)."""
        if self.program is None:
            raise IsamapError("sessions need a simulated target")
        return Session(self)

    def __call__(self, *args, **kwargs):
        """The outputs (one array, or a tuple in the kernel's order).  On host targets a call
        with positional arrays of exactly the built shapes and dtypes goes straight to the
        native code (from a native entry for short kernels, ``backends/llvm/entry.py``;
        else a few microseconds of Python) and does not update ``report``; use ``run_all``
        for the timed, recorded call."""
        call = self._call
        if call is None:
            call = self._call = self._host_call() if self.native is not None else self._checked_call
        return call(*args, **kwargs)

    def _host_call(self):
        return self.native.entry(self._checked_call) or self._checked_call

    def _checked_call(self, *args, **kwargs):
        if self.native is not None and not kwargs:
            outs = self.native.exact(args)
            if outs is not None:
                return outs[0] if len(outs) == 1 else tuple(outs)
        out = self.run_all(*args, **kwargs)
        vals = [out[n] for n in self.output_names]
        return vals[0] if len(vals) == 1 else tuple(vals)

    def source(self, kind: str = "ir") -> str:
        if kind == "ir":
            return emit_ir(self.kernel, self.bound)
        if self.bound is None:
            raise IsamapError("pass sizes= to build() to get generated code")
        if self.gpu is not None and kind == "cuda":
            return self.gpu.src
        if self.gpu is not None and kind == "schedule":
            return self.gpu_schedule
        if self.native is not None and kind == "schedule":
            return native_schedule(self.native)
        if self.native is not None and kind in ("llvm", "asm"):
            return self.native.optimized if kind == "llvm" else self.native.asm
        if self.native is not None and kind == "mappings":
            from .mapping import mappings_for_kernel
            return "".join(m.describe() + "\n" for m in mappings_for_kernel(self.kernel, self.target_ir,
                                                                            bound=self.bound))
        if kind == "mappings" and self.target_ir is not None:
            from .mapping import mappings_for_kernel
            ms = mappings_for_kernel(self.kernel, self.target_ir, bound=self.bound)
            return "".join(m.describe() + "\n" for m in ms)
        if kind == "schedule" and self.schedule is not None:
            return self.schedule.describe()
        if kind == "loops" and self.program is not None:
            from ir.loops import show
            return show(self.program)
        if kind == "asm" and self.program is not None:
            from .backends.sim.simulate import Simulator
            arrays = {t.name: np.zeros(self.bound.shapes[t.name], dtype=t.dtype.np) for t in self.kernel.inputs}
            sim = Simulator(self.target_ir, self.program, self.kernel, self.bound, arrays, listing=True,
                            functional=False)
            sim.run()
            head = [f"; {self.kernel.name} on {self.target} ({self.schedule.strategy} schedule)"]
            head += [f"; buffer {b.name} @{b.memory}+0x{sim.addr[b.name]:x}: {b.slots} x {b.dtype}{list(b.block)}"
                     for b in self.program.buffers]
            return "\n".join(head + sim.format_listing()) + "\n"
        available = ["ir"] + (["mappings", "schedule", "loops", "asm"] if self.program is not None else []) + \
            (["mappings", "schedule", "llvm", "asm"] if self.native is not None else []) + \
            (["mappings", "schedule", "cuda"] if self.gpu is not None else [])
        raise IsamapError(f"'{kind}' is not available for target '{self.target}' (available: {', '.join(available)})")


def native_schedule(native) -> str:
    """What the cpu backend decided per statement: micro-kernel, blocking, packing, threads."""
    k = native.k
    out = [f"# {k.name}: host code, {native.threads} threads"]
    plans = {p.stmt: p for p in native.plans}
    fused = {j: p.stmt for p in native.plans for j in p.epilogue}
    grouped = {si: r for r in native.row_runs for si in r}
    for si in range(len(k.stmts)):
        if si in grouped:
            r = grouped[si]
            if si == r[0]:
                row = k.stmts[si].indices[0]
                out.append(f"S{r[0]}-S{r[-1]}: {', '.join(k.stmts[j].tensor for j in r)} as one row loop over {row} "
                           f"(split across threads; per row each statement's scalar loops in turn, LLVM -O3 "
                           f"vectorises the innermost ones)")
            continue
        if si in fused:
            pf = plans[fused[si]]
            when = ("on each column range once the threads' partial sums are added" if pf.blocking.split_k
                    else "on each output row's part as the padded C is compacted" if pf.scratch_c
                    else "on each output tile as soon as its last K block is stored")
            out.append(f"S{si}: {k.stmts[si].tensor} fused into S{fused[si]}: run {when}")
            continue
        out.append(plans[si].describe() if si in plans else
                   f"S{si}: {k.stmts[si].tensor} as scalar loops (output indices outermost, split across threads; "
                   f"LLVM -O3 vectorises the innermost loop)")
    return "\n".join(out) + "\n"


def emit_ir(k: Kernel, b: Bound | None = None) -> str:
    """The checked kernel as TC, annotated with inferred shapes and domains."""
    lines = [f"# kernel {k.name}"]
    for t in k.inputs + k.outputs:
        dims = ", ".join(f"{printer.expr(d.extent)}" if printer.expr(d.min) == "0" else
                         f"{printer.expr(d.min)}:{printer.expr(d.min)} + {printer.expr(d.extent)}"
                         for d in k.dims(t.name))
        role = "input " if k.is_input(t.name) else "output"
        conc = f" = {list(b.shapes[t.name])}" if b else ""
        lines.append(f"#   {role} {t.name}: {t.dtype}[{dims}]{conc}")
    for i, s in enumerate(k.stmts):
        lines.append(f"#   S{i}: {s.tensor} over {printer.domain(s)}"
                     + ("" if not s.reduction_vars else f" (reduces {', '.join(s.reduction_vars)})"))
    return "\n".join(lines) + "\n" + printer.kernel(k)


def build(path_or_source, target: str = REFERENCE, sizes: dict[str, int] | None = None,
          kernel: str | None = None, scheduler: str | None = None, db: str | None = None,
          persist: tuple[str, ...] = ()) -> CompiledKernel:
    """Parse, check, map, schedule and lower a kernel for ``target`` and ``sizes``.

    ``persist`` names inputs to keep on chip: each becomes one tile per core, and
    when the kernel is run repeatedly (``CompiledKernel.session``) unchanged blocks are
    not loaded again."""
    k = load_kernel(path_or_source, kernel)
    if target == REFERENCE:
        if sizes is None:
            return CompiledKernel(k, target, None, {"kernel": k.name, "target": target})
        b = bind(k, dict(sizes))
        return CompiledKernel(k, target, b, {"kernel": k.name, "target": target, "sizes": dict(b.sizes)})
    import hw_models
    t = hw_models.load(target)
    backend = t.prop("backend", "sim")
    b = bind(k, dict(sizes or {}))
    if persist and backend != "sim":
        raise IsamapError(f"persist= keeps inputs in the on-chip memories of simulated targets; {t.name} "
                          f"(the {backend} backend) has none to pin them in: leave it out")
    if backend in ("llvm", "cuda"):
        from .backends.access import check_in_place
        check_in_place(k, backend)
    if backend == "llvm":
        from .backends.llvm import compile_cpu
        if scheduler not in (None, "vector", "scalar"):
            raise IsamapError(f"target '{t.name}' takes --scheduler vector (the default: blocking from its "
                              f"registers and caches) or scalar (plain loop nests), not '{scheduler}'")
        t0 = time.perf_counter()
        tuned = None
        if scheduler is None:  # the blocking measured best on this machine, if it was tuned
            from schedulers.db import TuningDB, default_path, workload_key
            path = db or default_path()
            rec = TuningDB(path).best(workload_key(k, b.sizes, t)) if path else None
            tuned = rec.schedule if rec is not None and rec.schedule.host else None
        native = compile_cpu(k, b, t, vector=scheduler != "scalar", threads=(tuned.threads or None) if tuned else None,
                             blockings=tuned.blockings() if tuned else None)
        code = "; ".join(f"S{p.stmt}: {p.blocking.mr}x{p.blocking.nr if p.form == 'bcast' else p.extent(p.vec)} "
                         f"{p.instr}" + (f" + epilogue {','.join(f'S{j}' for j in p.epilogue)}" if p.epilogue else "")
                         for p in native.plans)
        covered = len(native.plans) + sum(len(p.epilogue) for p in native.plans)
        rep = {"kernel": k.name, "target": t.name, "sizes": dict(b.sizes),
               "code": code + ("; other statements: " if code and covered < len(k.stmts) else "")
               + ("scalar loops (llvm -O3)" if covered < len(k.stmts) else ""),
               "scheduler": f"database ({tuned.strategy})" if tuned else (scheduler or "vector"),
               "compile_seconds": time.perf_counter() - t0, "cached": native.cached,
               "loaded_as": native.code.how}  # "shared library" (dlopen) or "mcjit"
        ck = CompiledKernel(k, t.name, b, rep, t)
        ck.native = native
        return ck
    if backend == "cuda":
        from .backends.cuda import cuda_source
        from .backends.cuda.runtime import CudaKernel
        from .backends.cuda.scalar import plans, schedule_text
        if scheduler not in (None, "tiled", "scalar"):
            raise IsamapError(f"target '{t.name}' takes --scheduler tiled (the default: thread-block tiles "
                              f"from its memories and matrix instructions) or scalar (one thread per element), "
                              f"not '{scheduler}'")
        t0 = time.perf_counter()
        gemm = plans(k, b, t) if scheduler != "scalar" else {}
        src = cuda_source(k, b, t=t, gemm=gemm)
        code = "; ".join(p.describe() for p in gemm.values())
        covered = len(gemm) + sum(len(p.epilogue) for p in gemm.values())
        if covered < len(k.stmts):
            code += ("; other statements: " if code else "") + "one thread per output element"
        rep = {"kernel": k.name, "target": t.name, "sizes": dict(b.sizes), "code": code,
               "scheduler": scheduler or "tiled", "compile_seconds": time.perf_counter() - t0}
        ck = CompiledKernel(k, t.name, b, rep, t)
        ck.gpu = CudaKernel(k, b, src)
        ck.gpu_schedule = schedule_text(k, b, gemm)
        return ck
    if backend != "sim":
        raise IsamapError(f"target '{t.name}' uses the {backend} backend, which is not built yet; "
                          f"use a simulated target (sim-nnp, sim-gemmini, ...), cpu, or --target reference")
    from schedulers.space import candidates

    from .lower import lower
    from .updates import as_mapped
    mapped = as_mapped(k, t)  # vector instructions assign: O(i) *= 2 is O(i) = O(i) * 2
    if mapped is not k:
        k, b = mapped, bind(mapped, dict(b.sizes))
    t0 = time.perf_counter()
    cands = candidates(k, b, t)
    sched = None
    from schedulers.db import TuningDB, default_path, workload_key
    path = db or (default_path() if scheduler is None else None)
    if path:  # reuse the best measured schedule of this workload
        rec = TuningDB(path).best(workload_key(k, b.sizes, t))
        if rec is not None:
            from dataclasses import replace
            sched = replace(rec.schedule, strategy=f"database ({rec.schedule.strategy})")
    remembered = False
    if sched is None:
        from schedulers import memo
        sched, remembered = memo.schedule(k, b, t, scheduler)
    from . import rowgroup
    sched = rowgroup.apply(k, t, cands, sched)
    resident = []
    if persist:
        from schedulers.space import make_resident
        for name in persist:
            if name not in {x.name for x in k.inputs}:
                raise IsamapError(f"'{name}' is not an input of kernel '{k.name}'")
        sched, resident = make_resident(t, cands, sched, persist)
    program = lower(k, b, t, sched, cands, resident)
    rep = {"kernel": k.name, "target": t.name, "sizes": dict(b.sizes), "scheduler": sched.strategy,
           "predicted_cycles": sched.predicted.get("cycles"), "compile_seconds": time.perf_counter() - t0,
           "schedule_cached": remembered}
    if persist:
        rep["resident"] = resident
    ck = CompiledKernel(k, t.name, b, rep, t, sched, program, cands)
    ck.resident = tuple(resident)
    return ck


class Session:
    """Repeated runs of one compiled kernel on one simulated machine: on-chip buffers keep
    their contents between runs, so resident inputs are loaded once."""

    def __init__(self, ck: CompiledKernel):
        self.ck = ck
        self.sim = None
        self.runs = 0

    def __call__(self, **inputs) -> dict[str, np.ndarray]:
        from .backends.sim.simulate import Simulator
        ck = self.ck
        if self.sim is None:
            b, arrays = ir.interp.prepare_inputs(ck.kernel, inputs, ck.sizes)
            self.sim = Simulator(ck.target_ir, ck.program, ck.kernel, b, arrays)
            self.sim.persist = set(ck.resident)
            with np.errstate(all="ignore"):
                self.sim.run()
        else:
            with np.errstate(all="ignore"):
                self.sim.run_again(inputs)
        self.runs += 1
        return {o.name: self.sim.tensors[o.name].copy() for o in ck.kernel.outputs}

    def cycles(self) -> int:
        cycles, _, _ = self.sim.timing()
        return cycles
