"""Loop nests: one mapped instruction step of a statement, ready to be scheduled and lowered.

A nest has *axes*: each instruction dimension bound to kernel variables (one,
or a fused run, whose flattened range is cut into blocks of the instruction's
extent), plus one axis per kernel variable left as a loop.  Every operand's
tile is the set of tensor elements its access reads at one block of its axes,
so plain tiles, transposed reads, strided rows, im2col windows and fused
pixels are all the same thing to the lowering; which copy instruction moves a
tile (a plain DMA or a gathering one) follows from the mapping's transforms.
Temporaries of multi-step mappings become scratch tensors in main memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from ir.bind import Bound
from ir.dtypes import DType
from ir.expr import Access, Binary, Const, Expr, Var, evaluate_int, simplify, vars_of
from ir.kernel import Kernel, memo
from ir.target import Instruction, Operand, Target

from compiler.mapping import Mapping, Step
from compiler.mapping.bind import instr_accesses, partner
from compiler.mapping.match import immediate


# sliding windows and merged rows for convolution taps (OperandInfo.window, .merged); off: a tile
# per tap, for comparison
WINDOWS = True


class Unsupported(Exception):
    """A legal mapping the lowering cannot express yet (schedulers skip it)."""


@dataclass
class Axis:
    name: str
    vars: tuple[str, ...]
    lows: tuple[int, ...]
    extents: tuple[int, ...]
    unit: int  # the instruction extent (1 for loop axes)
    instr_var: str | None
    reduction: bool
    # a pitched pair (``Step.pitch``): the vars' own extents, where ``extents`` run over an
    # input's whole rows; the positions past them (the overlap) are computed, never stored
    real: tuple[int, ...] = ()

    @property
    def total(self) -> int:
        return prod(self.extents)

    @property
    def valid_total(self) -> int:
        """Points of the axis that are the statement's own (the overlap of a pitched pair not)."""
        return prod(self.real) if self.real else self.total

    @property
    def blocks(self) -> int:
        return -(-self.total // self.unit)


@dataclass
class OperandInfo:
    name: str
    op: Operand
    tensor: str | None  # None: an immediate
    access: Access | None
    imm: Expr | None
    is_output: bool
    axes: list[str] = field(default_factory=list)  # nest axes its tile depends on
    gather: bool = False
    # (X, Y): a sliding window.  The operand reads ``x + y`` along dimension ``window_dim`` of
    # its block, X an instruction axis over x and Y a reduced loop axis over y (a convolution's
    # output column and filter tap).  Its tile is loaded once for every y, with one block more
    # along X (the halo), and each y reads the block ``y`` elements further on along that
    # dimension (``ir.loops.Slot.offset``), instead of a tile per tap that re-reads all but one
    # element of the last.  Y is then not in ``axes``.
    window: tuple[str, str] | None = None
    window_dim: int = 0
    # a window along a fused run (X = (s, c) of NHWC's ``I(n, h + r, w + s, c)``, Y = w): one y
    # further on is ``stride`` elements (a pixel of C channels) along X's flat range, and the
    # halo is however many blocks the whole of Y shifts it by (one for a tap window)
    window_stride: int = 1
    halo: int = 1
    along_run: bool = False  # such a window (``_run_window``), whatever its stride
    # (R, pitch): a pitched pair's window also shifted a row of pixels by a second tap (r of
    # ``I(.., h + r, w + s)``): R, like Y, is then not in ``axes``
    window_rows: tuple[str, int] | None = None
    # (H, R): two loop axes the operand reads only as ``h + r`` (a convolution's output row and
    # filter row).  Its tile holds each row h + r once, tile(H) + tile(R) - 1 blocks instead of
    # tile(H) x tile(R) (the layout's dimension H; R adds nothing to it), so neighbouring output
    # rows share the input rows they both read.
    merged: tuple[str, str] | None = None

    def spans(self, axis: str) -> bool:
        return spans(self, axis)

    def extent(self, axis: str, tile_of: dict[str, int]) -> int:
        return extent(self, axis, tile_of)

    def tile_blocks(self, tile_of: dict[str, int]) -> int:
        return tile_blocks(self, tile_of)

    @property
    def block_bytes(self) -> int:
        return self.op.bytes


# the layout of an operand's tile; shared with the cost model's ``Moved`` (same fields)
def spans(o, axis: str) -> bool:
    """Whether the operand's elements change along ``axis`` (a window's Y included)."""
    return axis in o.axes or (o.window is not None and axis == o.window[1]) or \
        (o.window_rows is not None and axis == o.window_rows[0])


def extent(o, axis: str, tile_of: dict[str, int]) -> int:
    """Blocks of its tile along ``axis`` of its layout: the schedule's tile, plus the halo of a
    window; a merged pair's rows along H, and nothing along R."""
    if o.merged is not None and axis in o.merged:
        h, r = o.merged
        return tile_of[h] + tile_of[r] - 1 if axis == h else 1
    return tile_of[axis] + (o.halo if o.window is not None and axis == o.window[0] else 0)


def tile_blocks(o, tile_of: dict[str, int]) -> int:
    """Blocks of one of its tiles."""
    return prod(extent(o, a, tile_of) for a in o.axes)


@dataclass
class Temp:
    name: str
    dtype: DType
    vars: tuple[str, ...]
    mins: tuple[int, ...]
    shape: tuple[int, ...]


@dataclass
class Nest:
    statement: int
    step_index: int
    step: Step
    instr: Instruction
    init_instr: Instruction | None
    axes: list[Axis]
    operands: list[OperandInfo]
    load_output: bool
    identity_first: bool
    temp_out: Temp | None = None
    temps: list[Temp] = field(default_factory=list)
    dtypes: dict[str, str] = field(default_factory=dict)  # tensor -> element type name in main memory
    span: object = None  # the statement's source location, for errors

    def tensor_dtype(self, name: str) -> str:
        return self.dtypes[name]

    def axis(self, name: str) -> Axis:
        # the scheduler's search asks this hundreds of thousands of times: an index, built once
        # (a nest's axes are fixed once it is built; `replace` makes a new nest and a new index)
        return memo(self, "_axis_index", lambda: {a.name: a for a in self.axes})[name]

    def derived(self, key: str, target: Target, build):
        """``build()``, computed once per nest and target: what the scheduler's search reads of
        a nest tens of thousands of times (its operands' routes and footprints)."""
        cached = self.__dict__.get(key)
        if cached is None or cached[0] is not target:
            cached = self.__dict__[key] = (target, build())
        return cached[1]

    def operand(self, name: str) -> OperandInfo:
        return next(o for o in self.operands if o.name == name)

    @property
    def pad(self) -> float:
        """What its loads put past a tensor's end: the identity of its instruction's reduction
        (0 for an assignment), so padding never changes a reduction."""
        return {"max": float("-inf"), "min": float("inf"), "*": 1.0}.get(self.instr.body.stmts[0].op, 0.0)

    @property
    def output(self) -> OperandInfo:
        return next(o for o in self.operands if o.is_output)

    @property
    def inputs(self) -> list[OperandInfo]:
        return [o for o in self.operands if not o.is_output and o.tensor is not None]

    @property
    def executions(self) -> int:
        return prod(a.blocks for a in self.axes)


    @property
    def reduction_axes(self) -> list[Axis]:
        return [a for a in self.axes if a.reduction]


def sibling_init(target: Target, instr: Instruction) -> Instruction | None:
    """The instruction computing the same expression but overwriting its output."""
    ist = instr.body.stmts[0]
    if ist.op == "=" or ist.init:
        return None
    sig = [(o.name, o.dtype, o.shape, o.memory, o.is_output) for o in instr.operands]
    for c in target.compute_instrs:
        if c is instr or len(c.body.stmts) != 1:
            continue
        if [(o.name, o.dtype, o.shape, o.memory, o.is_output) for o in c.operands] != sig:
            continue
        cs = c.body.stmts[0]
        if cs.rhs == ist.rhs and ((cs.op == ist.op and cs.init) or (cs.op == "=" and not ist.reduction_vars)):
            return c
    return None


def _sum_of_vars(e: Expr) -> tuple[str, str] | None:
    """(a, b) for a subscript ``a + b`` of two plain variables (a window's or merged rows')."""
    if isinstance(e, Binary) and e.op == "+" and isinstance(e.a, Var) and isinstance(e.b, Var):
        return e.a.name, e.b.name
    return None


def _tap_of(o: OperandInfo, x: str) -> str | None:
    """y where the operand reads x only as ``x + y`` (a convolution's output position and
    filter tap), else None."""
    subs = [e for e in o.access.indices if x in vars_of(e)]
    return partner(subs[0], x) if len(subs) == 1 else None


def _window(o: OperandInfo, inner: Access, axes: list[Axis], target: Target) -> tuple[tuple[str, str], int] | None:
    """((X, Y), dim) when operand ``o`` reads ``x + y`` along dimension ``dim`` of its block,
    with x an instruction axis and y a loop axis no longer than a block plus one.  A block's
    rows are consecutive addresses, so a block shifted along its first dimension is one address
    further on; along another, the tile keeps its blocks along X side by side (a row pitch of
    all of them) and a shifted block is the same pitch from a later address."""
    # a run's window first: it spares the reloads of a whole row of output columns
    for find in (lambda v: _run_window(o, v, axes, target), lambda v: _window_along(o, v, axes)):
        for dim, index in enumerate(inner.indices):
            if isinstance(index, Var) and (found := find(index.name)) is not None:
                return found, dim
    return None


# windows over a pitched pair's pixels (off: a tile per tap there, for comparison)
PITCHED_WINDOWS = True

# the most of an operand's memory a window along a fused run may hold (the whole of Y at once)
RUN_WINDOW_SHARE = 4


def _run_window(o: OperandInfo, instr_var: str, axes: list[Axis], target: Target) -> tuple[str, str] | None:
    """(X, Y) for a window along a fused run: X bound to (s, c) where the operand reads
    ``y + s`` along s and the rest of the run plainly, y a loop axis.  NHWC's input read with
    the taps of a filter row folded into the reduction (k = (s, c): three times the work of
    a matrix unit per instruction where C is half its depth) is then one tile of the pixels of
    a whole row, each output column y reading the run y pixels (y * C elements) further on,
    instead of a tile per column that re-reads S - 1 of every S pixels.  Only where the whole
    row's tile stays a modest share of the memory (it is loaded once for every y)."""
    X = next((a for a in axes if a.instr_var == instr_var), None)
    if X is None or len(X.vars) < 2 or X.unit <= 1 or X.real:
        return None
    s = X.vars[0]
    y = _tap_of(o, s)
    if y is None:
        return None
    Y = next((a for a in axes if a.vars == (y,) and a.instr_var is None), None)
    if Y is None or Y.total < 2 or sum(y in vars_of(i) for i in o.access.indices) != 1:
        return None
    stride = prod(X.extents[1:])
    halo = -(-(Y.total - 1) * stride // X.unit)
    if not _modest(o, X, halo, target):
        return None
    o.window_stride, o.halo, o.along_run = stride, halo, True
    return X.name, Y.name


def _window_along(o: OperandInfo, instr_var: str, axes: list[Axis]) -> tuple[str, str] | None:
    X = next((a for a in axes if a.instr_var == instr_var), None)
    # one var, or a pitched pair (h, w): pixels p = h * W + w, tap s reading p + s
    if X is None or X.unit <= 1 or not (len(X.vars) == 1 or (PITCHED_WINDOWS and len(X.vars) == 2 and X.real)):
        return None
    x = X.vars[-1]
    y = _tap_of(o, x)
    if y is None:
        return None
    # a reduced y (a filter tap): the nest's own loop, never one a fused epilogue or row group shares
    Y = next((a for a in axes if a.vars == (y,) and a.instr_var is None and a.reduction), None)
    if Y is None or not 2 <= Y.total <= X.unit + 1:
        return None
    if sum(y in vars_of(i) for i in o.access.indices) != 1:
        return None
    return X.name, Y.name


def _merged(o: OperandInfo, axes: list[Axis]) -> tuple[str, str] | None:
    """(H, R) when operand ``o`` reads loop axes h and a reduced r only as ``h + r``."""
    loops = {a.vars[0]: a for a in axes if a.instr_var is None and len(a.vars) == 1 and a.name in o.axes}
    for e in o.access.indices:
        pair = _sum_of_vars(e)
        if pair is None:
            continue
        for h, r in (pair, pair[::-1]):
            H, R = loops.get(h), loops.get(r)
            if H is None or R is None or H is R or not R.reduction or H.total < 2 or R.total < 2:
                continue
            if sum(v in vars_of(i) for i in o.access.indices for v in (h, r)) == 2:
                return H.name, R.name
    return None


def window_extent(nest: "Nest", o: OperandInfo) -> int:
    """Elements of a window operand along X: every x + y."""
    X, Y = (nest.axis(a) for a in o.window)
    rows = (nest.axis(o.window_rows[0]).total - 1) * o.window_rows[1] if o.window_rows else 0
    return X.total + (Y.total - 1) * o.window_stride + rows


def window_extents(nest: "Nest", o: OperandInfo) -> tuple[int, ...]:
    """``window_extent`` per variable of X: a fused run's first one (the tap) runs on over Y."""
    X, Y = (nest.axis(a) for a in o.window)
    if X.real and not o.along_run:  # a pitched pair's whole rows, the overlap columns too
        rows = nest.axis(o.window_rows[0]).total - 1 if o.window_rows else 0
        return (X.extents[0] + rows,) + X.extents[1:]
    return (X.extents[0] + Y.total - 1,) + X.extents[1:]


def window_slot(nest: "Nest", o: OperandInfo, y: Expr, r: Expr | None = None) -> tuple[Expr, Expr]:
    """(blocks, elements) further on along X at which loop value ``y`` (and ``r``, of
    ``window_rows``) reads the window: a tap window's offset is y elements into the block; a
    run's, y * stride elements, and a row shift's r * pitch more, whole blocks of them a
    later slot."""
    if not o.along_run and o.window_rows is None:
        return Const(0), y
    unit = nest.axis(o.window[0]).unit
    flat = simplify(Binary("*", y, Const(o.window_stride)))
    if o.window_rows is not None:
        flat = simplify(Binary("+", flat, Binary("*", r, Const(o.window_rows[1]))))
    return simplify(Binary("/", flat, Const(unit))), simplify(Binary("%", flat, Const(unit)))


def _window_rows(o: OperandInfo, X: Axis, Y: Axis, axes: list[Axis], target: Target) -> None:
    """Sets ``o.window_rows`` (R, W) and its halo where the window's X is a pitched pair (h, w)
    the operand reads as ``h + r``, r a reduced loop (a filter row): row r's pixels are r * W
    further on in the same tile, which then serves every tap of the filter, not one row of
    them.  Only while the tile stays a modest share of the memory (its halo grows by R - 1
    rows of pixels)."""
    if not (PITCHED_WINDOWS and len(X.vars) == 2 and X.real):
        return
    r = _tap_of(o, X.vars[0])
    if r is None:
        return
    R = next((a for a in axes if a.vars == (r,) and a.instr_var is None and a.reduction), None)
    if R is None or R.total < 2 or sum(r in vars_of(i) for i in o.access.indices) != 1:
        return
    pitch = X.extents[1]
    halo = -(-((R.total - 1) * pitch + Y.total - 1) // X.unit)
    if _modest(o, X, halo, target):
        o.window_rows, o.halo = (R.name, pitch), halo


def _modest(o: OperandInfo, X: Axis, halo: int, target: Target) -> bool:
    """Whether a window's tile along X with ``halo`` blocks more stays within
    1 / RUN_WINDOW_SHARE of the operand's memory."""
    return (X.blocks + halo) * o.op.bytes * RUN_WINDOW_SHARE <= target.memory(o.op.memory).capacity


def build_nests(k: Kernel, b: Bound, target: Target, mapping: Mapping) -> list[Nest]:
    si = mapping.statement
    s = k.stmts[si]
    dom = b.domain(si)
    order = [r.var for r in s.domain]
    temps: dict[str, Temp] = {}
    nests = []
    if not mapping.steps:
        raise Unsupported(f"'{mapping.candidate}' mappings are not lowered yet")
    for idx, step in enumerate(mapping.steps):
        instr = target.instr(step.instruction)
        ist = instr.body.stmts[0]
        fused = step.fused()
        ops: list[OperandInfo] = []
        used_vars: set[str] = set()
        for o in instr.operands:
            e = step.expr(o.name)
            text = dict(step.operands)[o.name]
            if e is None:
                raise Unsupported(f"operand {o.name} is not bound")
            if not o.shape and immediate(e):
                ops.append(OperandInfo(o.name, o, None, None, e, o.is_output))
                continue
            if text.startswith("%t"):
                if text not in temps:
                    tv = tuple(v for v in order if v in vars_of(e))
                    temps[text] = Temp(f"_S{si}_t{text[2:]}", o.dtype, tv, tuple(dom[v][0] for v in tv),
                                       tuple(dom[v][1] - dom[v][0] for v in tv))
                t = temps[text]
                acc = Access(t.name, tuple(Var(v) for v in t.vars), dtype=o.dtype)
            else:
                acc = e
            gather = any(t.startswith(f"{o.name}: gather") for t in step.transforms)
            if any(t.startswith(f"{o.name}: scatter") for t in step.transforms):
                # tiles are stored by plain block copies; a scattered output is the host's
                # (the llvm backend's transposed output tiles)
                raise Unsupported(f"{o.name} would be written by a scatter")
            used_vars.update(v for v in vars_of(acc) if v in dom)
            ops.append(OperandInfo(o.name, o, acc.tensor, acc, None, o.is_output, [], gather))
        out_op = next(o for o in ops if o.is_output)
        out_vars = set(vars_of(out_op.access)) if out_op.access is not None else set()
        red = {v for v in used_vars if v not in out_vars}  # reduced by this nest
        axes: list[Axis] = []
        bound_vars: set[str] = set()
        pitch = step.pitch()
        for r in ist.domain:
            t = fused.get(r.var, ())
            unit = evaluate_int(r.hi, {}) - evaluate_int(r.lo, {})
            if not t:
                continue
            bound_vars.update(t)
            own = tuple(dom[v][1] - dom[v][0] for v in t)
            ext = tuple(pitch.get(v, e) for v, e in zip(t, own))
            axes.append(Axis("(" + ",".join(t) + ")" if len(t) > 1 else t[0], t, tuple(dom[v][0] for v in t),
                             ext, unit, r.var, t[0] in red, own if ext != own else ()))
        for v in order:
            if v in used_vars and v not in bound_vars:
                axes.append(Axis(v, (v,), (dom[v][0],), (dom[v][1] - dom[v][0],), 1, None, v in red))
        for op in ops:
            if op.access is not None:
                vs = set(vars_of(op.access))
                op.axes = [a.name for a in axes if vs & set(a.vars)]
                if WINDOWS and not op.is_output and not op.gather and op.op.memory != target.main:
                    found = _window(op, instr_accesses(ist)[op.name], axes, target)
                    if found is not None:  # X innermost: the halo block is the next slot
                        op.window, op.window_dim = found
                        x, y = op.window
                        if not op.along_run:
                            _window_rows(op, *(next(a for a in axes if a.name == v) for v in (x, y)), axes, target)
                        op.axes = [a for a in op.axes if a not in (x, y) and
                                   (op.window_rows is None or a != op.window_rows[0])] + [x]
                    op.merged = _merged(op, axes)
        if ist.init and any(a.reduction and a.blocks > 1 for a in axes):
            raise Unsupported(f"{instr.name} overwrites its output, but the reduction spans several blocks")
        root = idx == len(mapping.steps) - 1
        init_instr = sibling_init(target, instr)
        identity_first = root and s.init and s.op != "=" and not ist.init
        load_output = root and s.op != "=" and not s.init
        if identity_first and init_instr is None:
            raise Unsupported(f"{instr.name} accumulates but the target has no overwriting form to start from")
        dts = {o.tensor: (k.tensor(o.tensor).dtype.name if not o.tensor.startswith("_S") else o.op.dtype.name)
               for o in ops if o.tensor is not None}
        nests.append(Nest(si, idx, step, instr, init_instr, axes, ops, load_output, identity_first,
                          temps.get(step.result) if not root else None, list(temps.values()), dts, s.span))
    return nests
