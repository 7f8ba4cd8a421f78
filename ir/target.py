"""Targets: memories, engines and instructions, in the same IR as kernels.

An instruction is a tiny kernel (``ir.Kernel``) whose operands have fixed
shapes and live in named memories; everything the compiler knows about a chip
is read from here, and every derived figure (peak MAC/cycle, bandwidths) is
computed from these objects, never typed twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from .dtypes import DType
from .errors import Span
from .expr import Binary, walk
from .kernel import Kernel, by_name, memo

_META = dict(compare=False, repr=False, hash=False)


@dataclass(frozen=True)
class Memory:
    name: str
    capacity: int  # bytes (per instance)
    bandwidth: float | None = None  # bytes/cycle (per instance)
    latency: int = 0
    shared: bool = False  # one instance for the whole chip instead of one per core
    banks: int = 1
    row_bytes: int | None = None
    holds: tuple[str, ...] = ()  # dtype names it may hold; empty: any
    ways: int = 0  # set associativity of a cache (0: not given); addresses capacity / ways apart share a set
    span: Span | None = field(default=None, **_META)

    def instances(self, cores: int) -> int:
        return 1 if self.shared else cores


@dataclass(frozen=True)
class Engine:
    name: str
    count: int = 1  # units per core (or per chip when shared)
    shared: bool = False
    span: Span | None = field(default=None, **_META)


@dataclass(frozen=True)
class Operand:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    memory: str
    is_output: bool

    @property
    def bytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Instruction:
    name: str
    operands: tuple[Operand, ...]
    body: Kernel  # the semantics: TC statements over the operands
    engine: str
    occupancy: int | None  # cycles the engine is busy; None: from bytes / port
    latency: int
    port: float | None = None  # bytes/cycle for data movement
    multicast: int = 1  # cores one transfer can deliver to
    transpose: tuple[str, ...] = ()  # operands that may be read transposed
    partial: bool = False  # tiles smaller than the shape are allowed (DMA)
    gather: bool = False  # reads any affine address pattern (im2col windows, element strides)
    batch: int = 1  # data movement: up to this many consecutive blocks per instruction
    props: tuple[tuple[str, object], ...] = ()
    span: Span | None = field(default=None, **_META)

    @property
    def inputs(self) -> tuple[Operand, ...]:
        return memo(self, "_inputs", lambda: tuple(o for o in self.operands if not o.is_output))

    @property
    def outputs(self) -> tuple[Operand, ...]:
        return memo(self, "_outputs", lambda: tuple(o for o in self.operands if o.is_output))

    def operand(self, name: str) -> Operand:
        return by_name(self.operands, name)

    @property
    def is_copy(self) -> bool:
        """Data movement: one elementwise statement from one memory into another (copies, conversions)."""
        return memo(self, "_is_copy", self._copy_test)

    def _copy_test(self) -> bool:
        if len(self.body.stmts) != 1 or len(self.inputs) != 1 or len(self.outputs) != 1:
            return False
        s = self.body.stmts[0]
        return s.op == "=" and not s.reduction_vars and self.inputs[0].memory != self.outputs[0].memory

    @property
    def macs(self) -> int:
        """Multiply-accumulates per issue (``+`` reductions of products)."""
        total = 0
        for s in self.body.stmts:
            if s.op == "+" and any(isinstance(n, Binary) and n.op == "*" for n in walk(s.rhs)):
                total += prod(_extent(r) for r in s.domain)
        return total

    def cycles(self, bytes_moved: int | None = None) -> int:
        if self.occupancy is not None:
            return self.occupancy
        b = self.outputs[0].bytes if bytes_moved is None else bytes_moved
        return max(1, -(-b // int(self.port)))


def _extent(r) -> int:
    from .expr import evaluate_int
    return evaluate_int(r.hi, {}) - evaluate_int(r.lo, {})


@dataclass(frozen=True)
class Target:
    name: str
    memories: tuple[Memory, ...]
    engines: tuple[Engine, ...]
    instrs: tuple[Instruction, ...]
    cores: int = 1
    window: int = 16
    main: str = ""  # the off-chip memory kernels' tensors live in
    props: tuple[tuple[str, object], ...] = ()
    path: str | None = field(default=None, compare=False)
    span: Span | None = field(default=None, **_META)

    def memory(self, name: str) -> Memory:
        return by_name(self.memories, name)

    def engine(self, name: str) -> Engine:
        return by_name(self.engines, name)

    def instr(self, name: str) -> Instruction:
        # a table, built once: the simulator and the scheduler ask for instructions by name per
        # executed instruction and per costed tiling (the first of a name, KeyError if none, as
        # by_name)
        return memo(self, "_instr_by_name", lambda: {i.name: i for i in reversed(self.instrs)})[name]

    def prop(self, name: str, default=None):
        return dict(self.props).get(name, default)

    def engine_units(self, name: str) -> int:
        e = self.engine(name)
        return e.count * (1 if e.shared else self.cores)

    @property
    def compute_instrs(self) -> tuple[Instruction, ...]:
        return memo(self, "_compute_instrs", lambda: tuple(i for i in self.instrs if not i.is_copy))

    @property
    def copy_instrs(self) -> tuple[Instruction, ...]:
        return memo(self, "_copy_instrs", lambda: tuple(i for i in self.instrs if i.is_copy))

    def links(self) -> set[tuple[str, str]]:
        """(from memory, to memory) pairs some data-movement instruction provides."""
        return {(i.inputs[0].memory, i.outputs[0].memory) for i in self.copy_instrs}

    def peak_macs_per_cycle(self, dtype: str | None = None) -> float:
        """Best MAC rate over compute instructions, per engine, summed over engine types."""
        best: dict[str, float] = {}
        for i in self.compute_instrs:
            if i.macs == 0:
                continue
            if dtype is not None and all(o.dtype.name != dtype for o in i.inputs):
                continue
            rate = i.macs / i.cycles() * self.engine_units(i.engine)
            best[i.engine] = max(best.get(i.engine, 0.0), rate)
        return max(best.values(), default=0.0)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "cores": self.cores,
            "peak_macs_per_cycle": self.peak_macs_per_cycle(),
            "main_memory": self.main,
            "memories": [{"name": m.name, "capacity_bytes": m.capacity, "instances": m.instances(self.cores),
                          "bandwidth_bytes_per_cycle": m.bandwidth, "latency_cycles": m.latency,
                          "shared": m.shared} for m in self.memories],
            "engines": [{"name": e.name, "units": self.engine_units(e.name)} for e in self.engines],
            "instructions": [{"name": i.name, "engine": i.engine, "kind": "copy" if i.is_copy else "compute",
                              "macs": i.macs, "occupancy": i.occupancy, "latency": i.latency,
                              "operands": {o.name: f"{o.dtype}{list(o.shape)}@{o.memory}" for o in i.operands}}
                             for i in self.instrs],
        }
