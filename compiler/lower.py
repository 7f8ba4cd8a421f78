"""Lowering: a Schedule over mapped nests -> an ``ir.loops`` program.

Per nest: a parallel loop over cores (if an axis is split), loops over tiles
in the schedule's order, tile loads hoisted to the innermost loop over an axis
the operand depends on (double-buffered), the output tile initialised and
stored around the reduction loops, and the instruction executed on every
block of the tile.  Every data movement is a chain of the target's copy
instructions (``compiler.routes``).
"""
from __future__ import annotations

from math import ceil, prod

from ir.bind import Bound
from ir.errors import IsamapError
from ir.expr import Binary, Const, Expr, Var, simplify
from ir.kernel import Kernel
from ir.loops import Barrier, Buffer, Exec, Imm, Loop, Move, Program, Scratch, Slot, Tile, TileDim
from ir.target import Target

from schedulers.base import NestSchedule, Schedule
from schedulers.space import Candidate, fits

from .nest import Nest
from .routes import multicast_variant, route_in, route_load_output, route_out


def C(v: int) -> Const:
    return Const(int(v))


def add(a: Expr, b: Expr) -> Expr:
    return simplify(Binary("+", a, b))


def mul(a: Expr, b: Expr) -> Expr:
    return simplify(Binary("*", a, b))


def _ident(name: str) -> str:
    return name.replace("(", "").replace(")", "").replace(",", "_")


class _NestLowering:
    def __init__(self, target: Target, nest: Nest, ns: NestSchedule, tag: str):
        self.t, self.n, self.ns, self.tag = target, nest, ns, tag
        self.buffers: list[Buffer] = []
        self.order = list(ns.order)
        self.split = ns.split
        self.P = target.cores if ns.split else 1
        self.core = Var(f"core{tag}") if self.split else None
        self.chunk = {}
        for a in nest.axes:
            self.chunk[a.name] = ceil(a.blocks / self.P) if a.name == self.split else a.blocks

    # ---------------------------------------------------------------- indices
    def o(self, a: str) -> Var:
        return Var(f"{_ident(a)}_o{self.tag}")

    def start(self, a: str) -> Expr:
        s = mul(self.o(a), C(self.ns.tile(a)))
        if a == self.split:
            s = add(mul(self.core, C(self.chunk[a])), s)
        return s

    def limit(self, a: str) -> Expr:
        blocks = self.n.axis(a).blocks
        if a == self.split:
            return simplify(Binary("min", C(blocks), mul(add(self.core, C(1)), C(self.chunk[a]))))
        return C(blocks)

    def level(self, axes: list[str]) -> int:
        return max((self.order.index(a) for a in axes), default=-1)

    def counter(self, level: int) -> Expr:
        """Linear count of the outer iterations up to ``level`` (for double-buffer parity)."""
        ctr: Expr = C(0)
        for a in self.order[:level + 1]:
            ctr = add(mul(ctr, C(ceil(self.chunk[a] / self.ns.tile(a)))), self.o(a))
        return ctr

    # ---------------------------------------------------------------- operands
    def buffer(self, name: str, op, slots: int) -> str:
        b = Buffer(f"S{self.tag}.{name}", op.memory, op.dtype, op.shape or (1,), slots)
        self.buffers.append(b)
        return b.name

    def tile_ref(self, o, blocks: dict[str, Expr]) -> Tile:
        inner = {x.tensor: x for x in _accesses(self.n.instr.body.stmts[0])}[o.name]
        dims = []
        for x in inner.indices:
            ax = next((a for a in self.n.axes if a.instr_var == x.name), None)
            if ax is None:
                dims.append(TileDim((), (), (), 0, None))
            else:
                dims.append(TileDim(ax.vars, ax.lows, ax.extents, ax.unit, blocks[ax.name]))
        at = tuple((ax.vars[0], add(blocks[ax.name], C(ax.lows[0]))) for ax in self.n.axes
                   if ax.instr_var is None and ax.name in o.axes)
        return Tile(o.tensor, o.access, tuple(dims), at, tuple(blocks[a] for a in o.axes))

    def slot_index(self, o, inner: dict[str, Expr], parity: Expr | None) -> Expr:
        idx: Expr = C(0)
        for a in o.axes:
            idx = add(mul(idx, C(self.ns.tile(a))), inner[a])
        if parity is not None:
            idx = add(mul(parity, C(prod(self.ns.tile(a) for a in o.axes))), idx)
        return idx

    def transfer(self, o, level: int, direction: str) -> list:
        """Loops over the tile's blocks with the chain of moves in or out."""
        n = self.n
        tile_blocks = prod(self.ns.tile(a) for a in o.axes)
        db = self.ns.double_buffer
        parity = simplify(Binary("%", self.counter(level), C(2))) if db and level >= 0 else None
        if direction == "in":
            route = route_in(self.t, n, o)
        elif direction == "load_out":
            route = route_load_output(self.t, n, o)
        else:
            route = route_out(self.t, n, o)
        inner = {a: Var(f"{_ident(a)}_{direction}{o.name}{self.tag}") for a in o.axes}
        blocks = {a: add(self.start(a), inner[a]) for a in o.axes}
        guards = tuple((blocks[a], self.limit(a)) for a in o.axes)
        slot = Slot(self.bufname[o.name], self.slot_index(o, inner, parity))
        tile = self.tile_ref(o, blocks)
        # successive staged blocks alternate between the two staging slots
        stage_idx = simplify(Binary("%", add(mul(self.counter(level), C(tile_blocks)),
                                            self.slot_index(o, inner, None)), C(2)))
        moves = []
        stage_i = 0
        hops = list(route)
        cur = tile if direction in ("in", "load_out") else slot
        for j, c in enumerate(hops):
            last = j == len(hops) - 1
            if direction in ("in", "load_out"):
                if last:
                    dst = slot
                else:
                    dst = Slot(self.stage(o, c.outputs[0], stage_i), stage_idx)
                    stage_i += 1
            else:
                if last:
                    dst = tile
                else:
                    dst = Slot(self.stage(o, c.outputs[0], stage_i), stage_idx)
                    stage_i += 1
            name, mc = c.name, False
            if direction == "in" and j == 0 and self.split and self.split not in o.axes:
                m = multicast_variant(self.t, c)
                if m is not None:
                    name, mc = m.name, True
            moves.append(Move(name, cur, dst, guards, mc, n.statement))
            cur = dst
        body = tuple(moves)
        for a in reversed(o.axes):
            body = (Loop(inner[a].name, C(self.ns.tile(a)), body),)
        return list(body)

    def stage(self, o, op, i: int) -> str:
        key = f"{o.name}.stage{i}.{op.memory}"
        if key not in self.bufname:
            self.bufname[key] = self.buffer(key, op, 2)
        return self.bufname[key]

    # ---------------------------------------------------------------- the nest
    def lower(self) -> list:
        n, ns = self.n, self.ns
        db = 2 if ns.double_buffer else 1
        self.bufname = {}
        for o in n.operands:
            if o.tensor is None:
                continue
            self.bufname[o.name] = self.buffer(o.name, o.op, db * prod(ns.tile(a) for a in o.axes))
        out = n.output
        lvl_out = self.level(out.axes)
        red_levels = [self.order.index(a.name) for a in n.axes if a.reduction]
        if red_levels and min(red_levels) <= lvl_out:
            raise IsamapError("internal: reduction axes must be inside the output axes")
        by_level: dict[int, list] = {}
        for o in n.inputs:
            by_level.setdefault(self.level(o.axes), []).append(o)

        def build(level: int) -> list:
            if level == len(self.order):
                return self.compute()
            a = self.order[level]
            body = []
            for o in by_level.get(level, []):
                body += self.transfer(o, level, "in")
            if level == lvl_out and n.load_output:
                body += self.transfer(out, level, "load_out")
            body += build(level + 1)
            if level == lvl_out:
                body += self.transfer(out, level, "out")
            ext = ceil(self.chunk[a] / ns.tile(a))
            return [Loop(self.o(a).name, C(ext), tuple(body))]

        top = []
        for o in by_level.get(-1, []):
            top += self.transfer(o, -1, "in")
        if lvl_out == -1 and n.load_output:
            top += self.transfer(out, -1, "load_out")
        top += build(0)
        if lvl_out == -1:
            top += self.transfer(out, -1, "out")
        if self.split:
            top = [Loop(self.core.name, C(self.P), tuple(top), parallel=True)]
        return top

    def compute(self) -> list:
        n, ns = self.n, self.ns
        inner = {a.name: Var(f"{_ident(a.name)}_i{self.tag}") for a in n.axes}
        blocks = {a.name: add(self.start(a.name), inner[a.name]) for a in n.axes}
        guards = tuple((blocks[a.name], self.limit(a.name)) for a in n.axes)
        ops = []
        for o in n.operands:
            if o.tensor is None:
                ops.append((o.name, Imm(o.imm)))
                continue
            lvl = self.level(o.axes)
            parity = simplify(Binary("%", self.counter(lvl), C(2))) if ns.double_buffer and lvl >= 0 else None
            ops.append((o.name, Slot(self.bufname[o.name], self.slot_index(o, inner, parity))))
        first_instr, first = None, ()
        if n.identity_first:
            first_instr = n.init_instr.name
            first = tuple(blocks[a.name] for a in n.axes if a.reduction)
        body = (Exec(n.instr.name, tuple(ops), guards, first_instr, first, n.statement),)
        order = [a.name for a in n.axes if a.reduction] + [a.name for a in n.axes if not a.reduction]
        for a in reversed(order):
            body = (Loop(inner[a].name, C(ns.tile(a)), body),)
        return list(body)


def _accesses(ist):
    from ir.expr import Access, walk
    out = [x for x in walk(ist.rhs) if isinstance(x, Access)]
    out.append(Access(ist.tensor, tuple(Var(v) for v in ist.indices)))
    return out


def lower(k: Kernel, b: Bound, target: Target, schedule: Schedule, cands: list[list[Candidate]]) -> Program:
    body, buffers, scratch, notes = [], [], [], []
    seen_scratch = set()
    for si, cs in enumerate(cands):
        c = cs[schedule.mappings[si]]
        notes.append(f"S{si}: {c.mapping.describe()}")
        for nest in c.nests:
            for t in nest.temps:
                if t.name not in seen_scratch:
                    seen_scratch.add(t.name)
                    scratch.append(Scratch(t.name, t.dtype, t.shape, t.mins))
            ns = schedule.nest(si, nest.step_index)
            why = fits(target, nest, ns)
            if why:
                raise IsamapError(f"schedule does not fit {target.name}: {why}", k.stmts[si].span)
            nl = _NestLowering(target, nest, ns, f"{si}_{nest.step_index}")
            body += nl.lower()
            body.append(Barrier(si))
            buffers += nl.buffers
    return Program(k.name, target.name, tuple(buffers), tuple(scratch), tuple(body), target.cores, tuple(notes))
