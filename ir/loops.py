"""The loop program: what every backend consumes.

Loops over tile and block indices, explicit moves between memories (each a
data-movement instruction of the target), instruction executions on buffer
slots, and the buffers themselves.  Index arithmetic uses ``ir.expr``
expressions over loop variables.  ``show(program)`` prints it (``--emit loops``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .dtypes import DType
from .expr import Access, Expr
from .printer import expr as show_expr


@dataclass(frozen=True)
class Buffer:
    name: str
    memory: str
    dtype: DType
    block: tuple[int, ...]  # the shape of one slot (an instruction operand)
    slots: int
    per_core: bool = True
    persistent: bool = False  # keeps its contents for the whole program (resident tensors)
    group: str = ""  # buffers of one nest; nests run one after another and share memory

    @property
    def slot_bytes(self) -> int:
        n = 1
        for d in self.block:
            n *= d
        return n * self.dtype.itemsize


@dataclass(frozen=True)
class TileDim:
    """One dimension of an operand block: the kernel vars an instruction dim runs over."""

    vars: tuple[str, ...]
    lows: tuple[int, ...]
    extents: tuple[int, ...]
    unit: int  # elements per block along this dim (the instruction extent); 0: padded dim
    block: Expr | None  # block index along the axis (None for padded dims)
    # the vars' own extents where ``extents`` run further (a pitched pair: a convolution's
    # output columns over the input's whole rows): positions past them are holes, neither
    # read nor stored
    real: tuple[int, ...] = ()


@dataclass(frozen=True)
class Tile:
    """One block of a main-memory tensor, read or written through a kernel access."""

    tensor: str
    access: Access
    dims: tuple[TileDim, ...]  # one per instruction-operand dimension
    at: tuple[tuple[str, Expr], ...]  # values of the loop-axis kernel vars
    key: tuple[Expr, ...]  # identifies the block (dependencies, multicast)


@dataclass(frozen=True)
class Slot:
    """A block of an on-chip buffer.  With ``offset``, a sliding window: along dimension
    ``axis`` the block starts ``offset`` elements into slot ``index`` and runs on into slot
    ``index + 1`` (adjacent slots: along the first dimension one address further on, along
    another the same row pitch from a later address); convolution taps read their shifted
    input this way."""

    buffer: str
    index: Expr
    offset: Expr | None = None
    axis: int = 0  # the block dimension the window slides along


@dataclass(frozen=True)
class Imm:
    value: Expr


Ref = Union[Tile, Slot, Imm]


@dataclass(frozen=True)
class Move:
    instr: str
    src: Ref
    dst: Ref
    guards: tuple[tuple[Expr, Expr], ...] = ()  # execute only if every a < b
    multicast: bool = False
    statement: int = -1
    count: int = 1  # consecutive blocks moved by one instruction ...
    sub: str = ""  # ... with this variable running 0..count-1 in the refs and guards
    pad: float = 0.0  # value of block elements outside the tensor (the consumer's reduction identity)


@dataclass(frozen=True)
class Exec:
    instr: str
    operands: tuple[tuple[str, Ref], ...]
    guards: tuple[tuple[Expr, Expr], ...] = ()
    first_instr: str | None = None  # used instead when every ``first`` index is 0
    first: tuple[Expr, ...] = ()
    statement: int = -1


@dataclass(frozen=True)
class Loop:
    var: str
    extent: Expr
    body: tuple
    parallel: bool = False  # iterations run on different cores


@dataclass(frozen=True)
class Barrier:
    """All cores finish what came before (between statements)."""

    statement: int = -1


Node = Union[Loop, Move, Exec, Barrier]


@dataclass(frozen=True)
class Scratch:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    mins: tuple[int, ...]


@dataclass(frozen=True)
class Program:
    kernel: str
    target: str
    buffers: tuple[Buffer, ...]
    scratch: tuple[Scratch, ...]
    body: tuple
    cores: int = 1
    notes: tuple[str, ...] = field(default=())

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise KeyError(name)


def _ref(r) -> str:
    if isinstance(r, Slot):
        off = ""
        if r.offset is not None:
            off = f"+{show_expr(r.offset)} {('rows', 'cols')[r.axis] if r.axis < 2 else f'along dim {r.axis}'}"
        return f"{r.buffer}[{show_expr(r.index)}]{off}"
    if isinstance(r, Imm):
        return f"#{show_expr(r.value)}"
    dims = ", ".join(
        ("1" if d.unit == 0 else f"{'*'.join(d.vars)}{_holes(d)}@{show_expr(d.block)}x{d.unit}") for d in r.dims)
    at = "".join(f", {v}={show_expr(e)}" for v, e in r.at)
    return f"{r.tensor}<{dims}{at}>"


def _guards(g) -> str:
    return "" if not g else "  if " + " && ".join(f"{show_expr(a)} < {show_expr(b)}" for a, b in g)


def show(p: Program) -> str:
    out = [f"# loop program of {p.kernel} on {p.target} ({p.cores} core{'s' if p.cores != 1 else ''})"]
    for b in p.buffers:
        out.append(f"buffer {b.name} @{b.memory}: {b.slots} x {b.dtype}{list(b.block)}"
                   f"{' per core' if b.per_core else ''}")
    for s in p.scratch:
        out.append(f"scratch {s.name} @main: {s.dtype}{list(s.shape)}")
    out += [f"# {n}" for n in p.notes]

    def walk(nodes, ind):
        for n in nodes:
            pad = "  " * ind
            if isinstance(n, Loop):
                out.append(f"{pad}{'parallel ' if n.parallel else ''}for {n.var} in 0:{show_expr(n.extent)}:")
                walk(n.body, ind + 1)
            elif isinstance(n, Move):
                batch = f" x{n.count} ({n.sub})" if n.count > 1 else ""
                out.append(f"{pad}{n.instr}{' (multicast)' if n.multicast else ''}{batch} {_ref(n.src)} -> "
                           f"{_ref(n.dst)}{_guards(n.guards)}")
            elif isinstance(n, Exec):
                ops = ", ".join(f"{a}={_ref(r)}" for a, r in n.operands)
                first = ""
                if n.first_instr:
                    first = f"  [{n.first_instr} when {' == '.join(show_expr(f) for f in n.first)} == 0]"
                out.append(f"{pad}{n.instr}({ops}){first}{_guards(n.guards)}")
            elif isinstance(n, Barrier):
                out.append(f"{pad}barrier")
    walk(p.body, 0)
    return "\n".join(out) + "\n"


def _holes(d: TileDim) -> str:
    """A pitched dim's holes, as ``[28 of 30]``: the vars' own extents where they differ."""
    if not d.real:
        return ""
    return "[" + ",".join(f"{r} of {e}" for r, e in zip(d.real, d.extents) if r != e) + "]"
