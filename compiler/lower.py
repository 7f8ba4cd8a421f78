"""Lowering: a Schedule over mapped nests -> an ``ir.loops`` program.

Each nest becomes a software pipeline per core.  Its tiles, taken in the
schedule's loop order, are numbered as steps ``s = 0 .. S-1``; at step ``s``
the program loads the input tiles of step ``s + d`` (``d`` = the prefetch
distance), runs the instruction on every block of tile ``s`` and stores the
output tile once its reduction is complete.  An operand is (re)loaded only at
steps where its tile changes, into one of the few slots it keeps in flight.
Every data movement is a chain of the target's copy instructions
(``compiler.routes``); an axis split across cores becomes a parallel loop.
Elementwise statements after a nest that work on its output blocks run inside
it, on each block before it is stored (``compiler.epilogue``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from math import ceil, prod

from ir.bind import Bound
from ir.errors import IsamapError
from ir.expr import Access, Binary, Const, Expr, Var, simplify, transform
from ir.kernel import Kernel
from ir.loops import Barrier, Buffer, Exec, Imm, Loop, Move, Program, Scratch, Slot, Tile, TileDim
from ir.target import Target

from schedulers.base import NestSchedule, Schedule
from schedulers.space import Candidate, fits, footprint, loads_up_front, pipeline

from . import rowgroup
from .epilogue import Epilogue, loaded_key, plan
from .mapping.bind import instr_accesses
from .nest import Nest, window_extent, window_extents, window_slot
from .routes import multicast_variant, route_in, route_load_output, route_out, stores_early
from .rowgroup import Group


def C(v: int) -> Const:
    return Const(int(v))


def add(a: Expr, b: Expr) -> Expr:
    return simplify(Binary("+", a, b))


def mul(a: Expr, b: Expr) -> Expr:
    return simplify(Binary("*", a, b))


def div(a: Expr, b: int) -> Expr:
    return simplify(Binary("/", a, C(b)))


def mod(a: Expr, b: int) -> Expr:
    return a if b == 0 else simplify(Binary("%", a, C(b)))


def _ident(name: str) -> str:
    return name.replace("(", "").replace(")", "").replace(",", "_")


class _NestLowering:
    def __init__(self, target: Target, nest: Nest, ns: NestSchedule, tag: str, resident=(),
                 epilogue: Epilogue | None = None, step_var: Var | None = None, core_var: Var | None = None,
                 group: str | None = None):
        self.t, self.n, self.ns, self.tag = target, nest, ns, tag
        self.epi = epilogue
        self.group = group or f"S{tag}"  # buffers of one group share no memory with each other
        # operands held by another nest of a row group (compiler.rowgroup): name -> (its
        # lowering, its operand); read from that nest's slots, never loaded here
        self.forward: dict[str, tuple[_NestLowering, object]] = {}
        self.store_output = True
        self.epi_helpers: dict[int, _NestLowering] = {}
        self.resident = set(resident)
        self.buffers: list[Buffer] = []
        self.bufname: dict[str, str] = {}
        self.split = dict(ns.split)
        self.P = ns.cores
        self.core = (core_var or Var(f"core{tag}")) if self.split else None
        self.pl = pipeline(target, nest, ns)
        self.step = step_var or Var(f"s{tag}")
        self.chunk = {a.name: ceil(a.blocks / ns.parts(a.name)) for a in nest.axes}
        self.pad = nest.pad  # outside the tensor, loaded blocks hold the reduction's identity
        # the core's coordinate along each split axis (row-major core grid)
        self.part: dict[str, Expr] = {}
        stride = 1
        for a, p in reversed(ns.split):
            self.part[a] = mod(div(self.core, stride), p)
            stride *= p

    # ---------------------------------------------------------------- indices at a step
    def tile_index(self, a: str, step: Expr) -> Expr:
        pl = self.pl
        return mod(div(step, pl.stride[a]), pl.tiles[a]) if pl.tiles[a] > 1 else C(0)

    def start(self, a: str, step: Expr) -> Expr:
        s = mul(self.tile_index(a, step), C(self.ns.tile(a)))
        if a in self.part:
            s = add(self.part_start(a, self.part[a]), s)
        return s

    def part_start(self, a: str, p: Expr) -> Expr:
        """Balanced contiguous chunks: the first B mod P parts get one extra block."""
        q, r = divmod(self.n.axis(a).blocks, self.ns.parts(a))
        return add(mul(p, C(q)), simplify(Binary("min", p, C(r))))

    def limit(self, a: str, o=None) -> Expr:
        """The end of this core's blocks along ``a``; for a window operand's X (``o``), one
        block further (the halo of the core's last block) while the window's rows go on."""
        blocks = self.n.axis(a).blocks
        end = self.part_start(a, add(self.part[a], C(1))) if a in self.part else C(blocks)
        if o is not None and o.window is not None and a == o.window[0]:
            rows = -(-window_extent(self.n, o) // self.n.axis(a).unit)
            end = simplify(Binary("min", add(end, C(o.halo)), C(rows)))
        return end

    def layout_index(self, o, a: str, inner: dict[str, Expr]) -> Expr:
        """A block's index along dimension ``a`` of the operand's tile layout: a merged pair's
        row h + r along H (R adds no dimension)."""
        if o.merged is not None and a in o.merged:
            h, r = o.merged
            return add(inner[h], inner[r]) if a == h else C(0)
        return inner[a]

    def slot_index(self, o, inner: dict[str, Expr], step: Expr) -> Expr:
        idx: Expr = C(0)
        tile_of = self.ns.tile_of
        for a in o.axes:
            idx = add(mul(idx, C(o.extent(a, tile_of))), self.layout_index(o, a, inner))
        nslots = self.pl.slots[o.name]
        if nslots > 1:
            which = mod(div(step, self.pl.inner[o.name]), nslots)
            idx = add(mul(which, C(o.tile_blocks(tile_of))), idx)
        return idx

    # ---------------------------------------------------------------- operands
    def buffer(self, name: str, op, slots: int, persistent: bool = False) -> str:
        b = Buffer(f"S{self.tag}.{name}", op.memory, op.dtype, op.shape or (1,), slots, True, persistent,
                   self.group)
        self.buffers.append(b)
        return b.name

    def tile_ref(self, o, blocks: dict[str, Expr]) -> Tile:
        inner = instr_accesses(self.n.instr.body.stmts[0])[o.name]
        dims = []
        for x in inner.indices:
            ax = next((a for a in self.n.axes if a.instr_var == x.name), None)
            if ax is None:
                dims.append(TileDim((), (), (), 0, None))
            elif o.window is not None and ax.name == o.window[0]:  # rows x + y for y = 0 on
                dims.append(TileDim(ax.vars, ax.lows, window_extents(self.n, o), ax.unit, blocks[ax.name]))
            else:
                dims.append(TileDim(ax.vars, ax.lows, ax.extents, ax.unit, blocks[ax.name], ax.real))
        at = tuple((ax.vars[0], add(blocks[ax.name], C(ax.lows[0]))) for ax in self.n.axes
                   if ax.instr_var is None and ax.name in o.axes)
        if o.window is not None:
            y = self.n.axis(o.window[1])
            at += ((y.vars[0], C(y.lows[0])),)
            if o.window_rows is not None:
                r = self.n.axis(o.window_rows[0])
                at += ((r.vars[0], C(r.lows[0])),)
        return Tile(o.tensor, o.access, tuple(dims), at, tuple(blocks[a] for a in o.axes))

    def stage(self, o, op, i: int) -> str:
        """Staging slots between two hops: the copy's memory and type, the operand's block shape."""
        key = f"{o.name}.stage{i}.{op.memory}"
        if key not in self.bufname:
            b = Buffer(f"S{self.tag}.{key}", op.memory, op.dtype, o.op.shape or (1,),
                       2 * o.tile_blocks(self.ns.tile_of), True, False, self.group)
            self.buffers.append(b)
            self.bufname[key] = b.name
        return self.bufname[key]

    def route_of(self, o, direction: str):
        return {"in": route_in, "load_out": route_load_output, "out": route_out}[direction](self.t, self.n, o)

    def loads_per_tile(self, o) -> int:
        """The copy instructions that bring one tile of input ``o`` on chip."""
        route = self.route_of(o, "in")
        return -(-o.tile_blocks(self.ns.tile_of) // self.batch(o, route)) * len(route)

    def batch(self, o, route) -> int:
        """Consecutive blocks of the innermost axis travel together when every hop allows it."""
        if not o.axes or (o.merged is not None and o.axes[-1] in o.merged):
            return 1
        return min([c.batch for c in route] + [o.extent(o.axes[-1], self.ns.tile_of)])

    def stage_index(self, o, inner: dict[str, Expr], step: Expr) -> Expr:
        """A block's slot among staging slots that hold two tiles in flight (by step parity)."""
        lin: Expr = C(0)
        for a in o.axes:
            lin = add(mul(lin, C(o.extent(a, self.ns.tile_of))), self.layout_index(o, a, inner))
        return add(mul(mod(step, 2), C(o.tile_blocks(self.ns.tile_of))), lin)

    def moves(self, o, step: Expr, direction: str, inner: dict[str, Expr], count: int, sub: Var,
              extra_guards=()) -> list:
        """The chain of moves for one block (or ``count`` consecutive blocks) of a tile."""
        n = self.n
        route = self.route_of(o, direction)
        blocks = {a: add(self.start(a, step), inner[a]) for a in o.axes}
        guards = tuple(extra_guards) + tuple((blocks[a], self.limit(a, o)) for a in o.axes
                                             if o.merged is None or a != o.merged[0])
        if o.merged is not None:  # rows h + r up to the tensor's last (those of a core's halo too)
            H, R = (self.n.axis(a) for a in o.merged)
            guards += ((add(blocks[H.name], blocks[R.name]), C(H.total + R.total - 1)),)
        if count > 1:  # a batch must not run past its tile when the tile is not a multiple of it
            last = o.axes[-1]
            guards += ((inner[last], C(o.extent(last, self.ns.tile_of))),)
        slot = Slot(self.bufname[o.name], self.slot_index(o, inner, step))
        tile = self.tile_ref(o, blocks)
        stage_idx = self.stage_index(o, inner, step)
        incoming = direction in ("in", "load_out")
        cur = tile if incoming else slot
        out = []
        for j, c in enumerate(route):
            if direction == "out" and self.epi is not None and j == self.epi.hop + 1:
                # the epilogue on the block after hop ``epi.hop`` (-1: where the producer computed
                # it), then every tensor the chain wrote takes the route's last hop, a store
                ops, finals = self.epilogue_ops(blocks, guards, cur, stage_idx, inner, step)
                out += ops
                out += [Move(route[-1].name, held, dst_tile if dst_tile is not None else tile, guards, False,
                             n.statement) for held, dst_tile in finals]
                break
            last = j == len(route) - 1
            if last:
                dst = slot if incoming else tile
            else:
                dst = Slot(self.stage(o, c.outputs[0], j), stage_idx)
            name, mc = c.name, False
            if direction == "in" and j == 0 and any(not o.spans(a) for a in self.split):
                m = multicast_variant(self.t, c)
                if m is not None:
                    name, mc = m.name, True
            out.append(Move(name, cur, dst, guards, mc, n.statement, count, sub.name if count > 1 else "",
                            self.pad if incoming else 0.0))
            cur = dst
        return out

    # ---------------------------------------------------------------- fused epilogue
    def epilogue_buffer(self, key: str, op) -> str:
        """Slots for an epilogue operand (a temporary, a bias block), indexed like the stage."""
        name = f"epi.{key}"
        if name not in self.bufname:
            tile_blocks = prod(self.ns.tile(a) for a in self.n.output.axes)
            b = Buffer(f"S{self.tag}.{name}", op.memory, op.dtype, op.shape or (1,), 2 * tile_blocks, True, False,
                       self.group)
            self.buffers.append(b)
            self.bufname[name] = b.name
        return self.bufname[name]

    def epilogue_bytes(self) -> int:
        """On-chip bytes the epilogue's own slots take (in the epilogue's memory)."""
        return prod(self.ns.tile(a) for a in self.n.output.axes) * self.epi.block_bytes()

    def epilogue_loads(self, step: Expr, extra_guards) -> list:
        """The epilogue's operands from main memory (a bias) for every block of the step's output
        tile, issued before the step's compute so their latency hides behind it rather than
        queueing behind the stores of the blocks before."""
        e, out = self.epi, self.n.output
        inner = {a: Var(f"{_ident(a)}_epi{self.tag}") for a in out.axes}
        blocks = {a: add(self.start(a, step), inner[a]) for a in out.axes}
        guards = tuple(extra_guards) + tuple((blocks[a], self.limit(a)) for a in out.axes)
        moves = []
        for cn in e.nests:
            m = e.axis_map[id(cn)]
            for o in cn.operands:
                if o.is_output or o.tensor is None or o.tensor in e.written or o.tensor.startswith("_S"):
                    continue
                dst = Slot(self.epilogue_buffer(loaded_key(cn, o), o.op), self.epilogue_index(cn, o, inner, step))
                # one copy per block it differs in (a bias by filter: not one per pixel block too)
                once = tuple((inner[a], C(1)) for a in out.axes if a not in self.epilogue_axes(cn, o))
                c = route_in(self.t, cn, o)[0]
                if (id(cn), o.name) in e.at_pitch:
                    tile = self.as_output_block(cn, o, blocks)
                else:
                    tile = self.epi_helper(cn).tile_ref(o, {a: blocks[m[a]] for a in o.axes})
                moves.append(Move(c.name, tile, dst, guards + once, False, cn.statement))
        body = tuple(moves)
        for a in reversed(out.axes):
            body = (Loop(inner[a].name, C(self.ns.tile(a)), body),)
        return list(body) if moves else []

    def as_output_block(self, cn: Nest, o, blocks: dict[str, Expr]) -> Tile:
        """The block of ``o``'s tensor at the producer's output block, addressed as that block is
        stored (pixels at the input's pitch, the overlap left out): ``o`` read in the fused
        nest's variables, renamed to the producer's."""
        m = self.epi.axis_map[id(cn)]
        names = {v: pv for a in cn.axes for v, pv in zip(a.vars, self.n.axis(m[a.name]).vars)}
        access = Access(o.tensor, tuple(transform(x, lambda y: Var(names[y.name]) if isinstance(y, Var) else None)
                                        for x in o.access.indices))
        return replace(self.tile_ref(self.n.output, blocks), tensor=o.tensor, access=access)

    def epilogue_axes(self, cn: Nest, o) -> set[str]:
        """The producer's output axes an operand the epilogue loads depends on."""
        if (id(cn), o.name) in self.epi.at_pitch:
            return set(self.n.output.axes)
        m = self.epi.axis_map[id(cn)]
        return {m[a] for a in o.axes}

    def epilogue_index(self, cn: Nest, o, inner: dict[str, Expr], step: Expr) -> Expr:
        """The slot of a loaded operand's block for the output block at ``inner``: the slot of
        the tile's first output block with the same blocks along the axes it depends on."""
        dep = self.epilogue_axes(cn, o)
        out = self.n.output
        return self.stage_index(out, {a: (inner[a] if a in dep else C(0)) for a in out.axes}, step)

    def epi_helper(self, cn: Nest) -> "_NestLowering":
        """A lowering of a fused nest with unit tiles: for the tile references of its operands."""
        helper = self.epi_helpers.get(id(cn))
        if helper is None:
            ones = NestSchedule(cn.statement, cn.step_index, tuple((a.name, 1) for a in cn.axes),
                                tuple(a.name for a in cn.axes), (), 0)
            helper = self.epi_helpers[id(cn)] = _NestLowering(self.t, cn, ones, f"{self.tag}e")
        return helper

    def epilogue_ops(self, blocks: dict[str, Expr], guards, slot: Slot, idx: Expr, inner: dict[str, Expr],
                     step: Expr) -> tuple[list, list]:
        """The fused statements' instructions on one output block held in ``slot``; returns them
        and, per tensor the chain writes, the slot holding its block and where it is stored
        (None: the producer's own tile)."""
        e = self.epi
        cur: dict[str, Slot] = {e.tensor: slot}
        tiles: dict[str, Tile | None] = {e.tensor: None}
        ops = []
        for cn in e.nests:
            operands, result = [], None
            m = e.axis_map[id(cn)]
            for o in cn.operands:
                if o.tensor is None:
                    operands.append((o.name, Imm(o.imm)))
                elif o.is_output:
                    dst = cur.get(o.tensor) or Slot(self.epilogue_buffer(o.tensor, o.op), idx)
                    result = (o.tensor, dst)
                    operands.append((o.name, dst))
                    if o.tensor in e.written and o.tensor not in tiles:
                        tiles[o.tensor] = self.epi_helper(cn).tile_ref(o, {a: blocks[m[a]] for a in o.axes})
                elif o.tensor in cur:
                    operands.append((o.name, cur[o.tensor]))
                else:  # from main memory: loaded at the start of the step (epilogue_loads)
                    operands.append((o.name, Slot(self.epilogue_buffer(loaded_key(cn, o), o.op),
                                                  self.epilogue_index(cn, o, inner, step))))
            ops.append(Exec(cn.instr.name, tuple(operands), guards, None, (), cn.statement))
            cur[result[0]] = result[1]
        return ops, [(cur[x], tiles[x]) for x in e.written]

    def spread_transfer(self, o, step: Expr, extra_guards, here: Expr, P: int) -> list | None:
        """``transfer`` of an input's tile as single copies among the P product iterations of a
        step (``here``: the one running), the q-th of its L copies at iteration q * P / L: a
        window's next tile (a whole row of pixels) issued in one burst ahead of the products
        holds the in-order window on its copies' latency; spread, the products go on between
        them.  None where it has more copies than the step has iterations."""
        count = self.batch(o, self.route_of(o, "in"))
        exts = [o.extent(a, self.ns.tile_of) for a in o.axes]
        if count > 1:
            exts[-1] = ceil(exts[-1] / count)
        L = prod(exts)
        if not o.axes or L > P:
            return None
        q = div(add(mul(here, C(L)), C(P - 1)), P)  # the first copy due at or after ``here``
        due = div(mul(q, C(P)), L)
        guards = tuple(extra_guards) + ((add(due, C(-1)), here), (here, add(due, C(1))), (q, C(L)))
        inner, rest = {}, q
        for a, e in zip(reversed(o.axes), reversed(exts)):
            inner[a] = mod(rest, e) if a != o.axes[0] else rest
            rest = div(rest, e)
        sub = Var(f"_jsp{o.name}{self.tag}")
        if count > 1:
            inner[o.axes[-1]] = add(mul(inner[o.axes[-1]], C(count)), sub)
        return self.moves(o, step, "in", inner, count, sub, guards)

    def transfer(self, o, step: Expr, direction: str, extra_guards=()) -> list:
        """Loops over one tile's blocks with the chain of moves in or out."""
        route = self.route_of(o, direction)
        inner = {a: Var(f"{_ident(a)}_{direction}{o.name}{self.tag}") for a in o.axes}
        count = self.batch(o, route)
        loop_var = dict(inner)
        sub = Var(f"_j{direction}{o.name}{self.tag}")
        exts = {a: o.extent(a, self.ns.tile_of) for a in o.axes}
        if count > 1:
            exts[o.axes[-1]] = ceil(exts[o.axes[-1]] / count)
        rot = self.rotation(o) if direction == "in" else None
        if rot is not None:
            # one loop over the tile's copies, each core starting its share of them in turn
            rank, group = rot
            copies = prod(exts.values())
            lin = Var(f"_r{o.name}{self.tag}")
            rest = mod(add(lin, mul(rank, C(-(-copies // group)))), copies)
            for a in reversed(o.axes):
                loop_var[a] = mod(rest, exts[a])
                rest = div(rest, exts[a])
            inner = dict(loop_var)
        if count > 1:
            if rot is None:
                loop_var[o.axes[-1]] = Var(f"{_ident(o.axes[-1])}_{direction}{o.name}{self.tag}")
            inner[o.axes[-1]] = add(mul(loop_var[o.axes[-1]], C(count)), sub)
        body = tuple(self.moves(o, step, direction, inner, count, sub, extra_guards))
        if rot is not None:
            return [Loop(lin.name, C(copies), body)]
        for a in reversed(o.axes):
            body = (Loop(loop_var[a].name, C(exts[a]), body),)
        return list(body)

    def rotation(self, o) -> tuple[Expr, int] | None:
        """(this core's rank, cores) among those that share a multicast tile loaded once: each
        issues the group's copies starting at its own share, so a copy is first issued (and its
        transfer paid) by one core and joined by the rest, and the group's engines split the
        tile instead of each moving all of it (a filter every core reads)."""
        if self.pl.inner.get(o.name) != self.pl.steps or o.name in self.forward:
            return None
        group = [(a, p) for a, p in self.ns.split if not o.spans(a)]
        route = self.route_of(o, "in")
        if not group or not route or multicast_variant(self.t, route[0]) is None:
            return None
        rank: Expr = C(0)
        for a, p in group:
            rank = add(mul(rank, C(p)), self.part[a])
        return rank, prod(p for _, p in group)

    # ---------------------------------------------------------------- the nest
    def lower(self) -> list:
        return self.around(*self.parts())

    def around(self, pro: list, body: list) -> list:
        """``pro``, then the loop over this nest's steps running ``body``, on each core."""
        top = pro + [Loop(self.step.name, C(self.pl.steps), tuple(body))]
        if self.split:
            top = [Loop(self.core.name, C(self.P), tuple(top), parallel=True)]
        return top

    def parts(self) -> tuple[list, list]:
        """What runs before the step loop (the first prefetches) and the body of one step."""
        n, ns, pl = self.n, self.ns, self.pl
        for o in n.operands:
            if o.tensor is not None and o.op.memory != self.t.main and o.name not in self.forward:
                self.bufname[o.name] = self.buffer(o.name, o.op, pl.slots[o.name] * o.tile_blocks(ns.tile_of),
                                                   o.tensor in self.resident and not o.is_output)
        out = n.output
        order = list(ns.order)
        lvl_out = max((order.index(a) for a in out.axes), default=-1)
        if any(order.index(a.name) <= lvl_out for a in n.axes if a.reduction):
            raise IsamapError("internal: reduction axes must be inside the output axes")
        d = max(0, ns.prefetch)
        S = pl.steps
        s = self.step

        def when_step(step: Expr, every: int, phase: int = 0) -> tuple:
            """Guard: ``step % every == phase`` written as ``phase - 1 < step % every < phase + 1``."""
            if every == 1:
                return ()
            m = mod(step, every)
            return ((C(phase - 1), m), (m, C(phase + 1)))

        pro = []
        body = []
        prefetch = []
        first = Var(f"_pro{self.tag}")  # the steps loaded before the step loop
        loaded = [o for o in n.inputs if o.op.memory != self.t.main and o.name not in self.forward]
        # the first d steps' tiles up front in the order they are needed, or step 0's at their
        # first use inside step 0 and steps 1..d-1 up front (schedulers.space.loads_up_front)
        in_order = loads_up_front(self.t, n, ns, self.loads_per_tile, self.forward)
        for o in n.inputs:
            if o not in loaded:
                continue  # read in place by the instruction itself (a copy out of main memory), or held
            every = pl.inner[o.name]
            if d == 0:
                body += self.transfer(o, s, "in", when_step(s, every))
                continue
            if in_order:
                pro += self.transfer(o, first, "in", when_step(first, every))
            else:
                prefetch.append((o, s, ((s, C(1)),) + when_step(s, every), False))
                if d > 1 and S > 1:
                    j = Var(f"p{o.name}{self.tag}")
                    one = add(j, C(1))
                    pro.append(Loop(j.name, C(min(d, S) - 1), tuple(self.transfer(o, one, "in",
                                                                                   when_step(one, every)))))
            ahead = add(s, C(d))
            prefetch.append((o, ahead, ((ahead, C(S)),) + when_step(ahead, every), True))
        if in_order:
            pro = [Loop(first.name, C(min(d, S)), tuple(pro))]
        every_out = pl.inner[out.name]
        if n.load_output:
            body += self.transfer(out, s, "load_out", when_step(s, every_out))
        if self.epi is not None:
            body += self.epilogue_loads(s, when_step(s, every_out, every_out - 1))
        last_step = when_step(s, every_out, every_out - 1)
        early = self.store_output and self.early_stores()
        body += self.compute(s, prefetch, last_step if early else None)
        if self.store_output and not early:
            body += self.transfer(out, s, "out", last_step)
        return pro, body

    def early_stores(self) -> bool:
        """``routes.stores_early`` for this lowering: a fused epilogue runs on single blocks."""
        out, pl = self.n.output, self.pl
        count = self.batch(out, self.route_of(out, "out"))
        tiles = pl.steps // pl.inner[out.name]  # output tiles a core computes
        return (self.epi is None or count == 1) and \
            stores_early(self.t, self.n, count, self.ns.tile_of, pl.slots[out.name], tiles)

    def stores_in_step(self, inner: dict[str, Expr], blocks: dict[str, Expr], step: Expr, phase) -> list:
        """The stores ``early_stores`` puts after a product: of its batch of output blocks (along
        the output's last axis) when this product is the last one of the batch's last block --
        the reduction at its last block, the block the batch's last or the tile's."""
        out, ns = self.n.output, self.ns
        route = self.route_of(out, "out")
        count = self.batch(out, route)
        done = list(phase)
        for a in self.n.axes:
            if a.reduction:
                final = add(simplify(Binary("min", add(self.start(a.name, step), C(ns.tile(a.name))),
                                            self.limit(a.name))), C(-1))
                done += [(add(final, C(-1)), blocks[a.name]), (blocks[a.name], add(final, C(1)))]
        if count == 1:
            return self.moves(out, step, "out", {a: inner[a] for a in out.axes}, 1, Var("_"), tuple(done))
        last = out.axes[-1]
        j = inner[last]
        tail = add(simplify(Binary("min", C(ns.tile(last)), add(self.limit(last), mul(self.start(last, step), C(-1))))),
                   C(-1))  # the tile's last block along it
        sub = Var(f"_jst{self.tag}")
        at = {a: inner[a] for a in out.axes}
        at[last] = add(mul(div(j, count), C(count)), sub)
        full = ((C(count - 2), mod(j, count)), (j, tail))  # a batch's last block, not the tile's
        end = ((add(tail, C(-1)), j), (j, add(tail, C(1))))  # the tile's last block
        return self.moves(out, step, "out", at, count, sub, tuple(done) + full) + \
            self.moves(out, step, "out", at, count, sub, tuple(done) + end)

    def compute(self, step: Expr, prefetch=(), store_phase=None) -> list:
        """The instruction on every block of the step's tile, with the prefetches spread among them.

        A block of step 0 is loaded at the first compute iteration that visits its coordinates
        (it is needed there).  A block of a later step can come at any iteration that visits its
        coordinates: the i-th of an operand's L blocks comes at the (i * P / L)-th of the P
        iterations over the axes it does not span, so each operand's loads are spread evenly
        over the step instead of in one burst at its start (a GEMM's B blocks all in the first
        row of C blocks: the instruction window fills with loads while the matrix unit waits,
        then the load engine idles for the rest of the step)."""
        n, ns = self.n, self.ns
        inner = {a.name: Var(f"{_ident(a.name)}_i{self.tag}") for a in n.axes}
        blocks = {a.name: add(self.start(a.name, step), inner[a.name]) for a in n.axes}
        guards = tuple((blocks[a.name], self.limit(a.name)) for a in n.axes)
        ops = []
        for o in n.operands:
            if o.tensor is None:
                ops.append((o.name, Imm(o.imm)))
            elif o.op.memory == self.t.main:
                ops.append((o.name, self.tile_ref(o, {a: blocks[a] for a in o.axes})))
            elif o.name in self.forward:
                owner, oo = self.forward[o.name]
                ops.append((o.name, Slot(owner.bufname[oo.name], owner.slot_index(oo, inner, step))))
            elif o.window is not None:  # tap y reads the rows y further on
                later, off = window_slot(n, o, blocks[o.window[1]],
                                         blocks[o.window_rows[0]] if o.window_rows else None)
                ops.append((o.name, Slot(self.bufname[o.name], add(self.slot_index(o, inner, step), later),
                                         off, o.window_dim)))
            else:
                ops.append((o.name, Slot(self.bufname[o.name], self.slot_index(o, inner, step))))
        first_instr, first = None, ()
        if n.identity_first:
            first_instr = n.init_instr.name
            first = tuple(blocks[a.name] for a in n.axes if a.reduction)
        # output blocks outer, reduction innermost: consecutive accumulations into one block pipeline
        # in the accumulator, and the reduction axis is the one tile loads are batched along
        order = [a.name for a in n.axes if not a.reduction] + [a.name for a in n.axes if a.reduction]
        loads = []
        # windows and merged rows hold more blocks than the iterations over them visit, and a
        # rotated multicast tile comes in its own order: each as one transfer ahead of the products
        before, now = [], []
        running, P = C(0), 1  # the product iteration running (loop order), of P a step
        for a in order:
            running, P = add(mul(running, C(ns.tile(a))), inner[a]), P * ns.tile(a)
        # a later step's window comes after this step's own tiles: step 0's first products wait
        # for its blocks only, not for the next whole window queued before them on the copy engine
        whole = any(spread and o.window is not None for o, _, _, spread in prefetch)
        for o, ahead, extra, spread in prefetch:
            if o.window is not None or o.merged is not None or self.rotation(o) is not None \
                    or (whole and not spread):
                spreads = spread and o.window is not None and self.rotation(o) is None
                moves = self.spread_transfer(o, ahead, extra, running, P) if spreads else None
                if moves is not None:
                    loads += moves
                    continue
                moves = self.transfer(o, ahead, "in", extra)
                if spread:
                    before += moves
                else:  # a window's first block needs the small tiles beside it: those first
                    now = now + moves if o.window is not None else moves + now
                continue
            route = self.route_of(o, "in")
            count = self.batch(o, route)
            at = dict((a, inner[a]) for a in o.axes)
            sub = Var(f"_jpf{o.name}{self.tag}")
            # a step-0 block at the first visit of the axes the operand does not span; a later
            # step's at the (i * P / L)-th iteration over those with several blocks (in loop order)
            others = [a for a in order if a not in o.axes and ns.tile(a) > 1] if spread else []
            once = [(inner[a.name], C(1)) for a in n.axes if a.name not in o.axes and a.name not in others]
            if count > 1:
                last = o.axes[-1]
                once.append((mod(inner[last], count), C(1)))
                at[last] = add(inner[last], sub)
            if others:
                lin, blocks_of = C(0), 1
                for a in (a for a in o.axes if ns.tile(a) > 1):
                    per = count if count > 1 and a == o.axes[-1] else 1  # a batch: one load per `count` blocks
                    lin = add(mul(lin, C(-(-ns.tile(a) // per))), div(inner[a], per))
                    blocks_of *= -(-ns.tile(a) // per)
                want = div(mul(lin, C(prod(ns.tile(a) for a in others))), blocks_of)
                here = C(0)
                for a in others:
                    here = add(mul(here, C(ns.tile(a))), inner[a])
                once += [(add(want, C(-1)), here), (here, add(want, C(1)))]
            loads += self.moves(o, ahead, "in", at, count, sub, tuple(once) + tuple(extra))  # cheap tests first
        body = tuple(loads) + (Exec(n.instr.name, tuple(ops), guards, first_instr, first, n.statement),)
        if store_phase is not None:
            body += tuple(self.stores_in_step(inner, blocks, step, store_phase))
        for a in reversed(order):
            body = (Loop(inner[a].name, C(ns.tile(a)), body),)
        return now + before + list(body)


def _with_epilogue(k: Kernel, target: Target, nl: _NestLowering, following: list, resident) -> _NestLowering | None:
    """The lowering of ``nl``'s nest with the statements after it fused in, when they can be
    (``compiler.epilogue``) and their on-chip slots fit beside the nest's own."""
    epi = plan(k, target, nl.n, following)
    if epi is None:
        return None
    fused = _NestLowering(target, nl.n, nl.ns, nl.tag, resident, epi)
    out = nl.n.output
    if fused.batch(out, fused.route_of(out, "out")) > 1:
        return None  # blocks stored in batches: the epilogue would need a loop inside the batch
    need = footprint(target, nl.n, nl.ns).get(epi.memory, 0) + fused.epilogue_bytes()
    if need > target.memory(epi.memory).capacity:
        return None
    return fused


def _lower_group(target: Target, g: Group, resident) -> tuple[list, list[Buffer]]:
    """A row group's nests as one loop over their row blocks per core (``compiler.rowgroup``,
    whose ``fits`` checked that their buffers fit together): each step runs every nest in turn,
    reading the operands another nest holds from its slots."""
    tag = f"{g.statements[0]}g"
    step, core = Var(f"s{tag}"), Var(f"core{tag}")
    lows: list[_NestLowering] = []
    pro, body = [], []
    for i, (nest, ns) in enumerate(zip(g.nests, g.schedules)):
        nl = _NestLowering(target, nest, ns, f"{nest.statement}_{nest.step_index}", resident, step_var=step,
                           core_var=core, group=f"G{tag}")
        nl.forward = {name: (lows[j], g.nests[j].operand(oname)) for name, (j, oname) in g.forward[i].items()}
        nl.store_output = g.stores[i]
        lows.append(nl)
        p, b = nl.parts()
        pro += p
        body += b
    return lows[0].around(pro, body), [buf for nl in lows for buf in nl.buffers]


@dataclass
class _Unit:
    """One nest's (or row group's) loop program and buffers, before barriers are placed."""
    statement: int
    nodes: list
    buffers: list[Buffer]
    stream: bool = False  # stream-K: its own phases and barriers inside
    name: str = ""  # for notes: S2, or S4.1 for a step of an instruction sequence


def _touches(nodes) -> tuple[set[str], set[str]]:
    """The main-memory tensors a loop program reads and writes."""
    reads, writes = set(), set()
    for n in nodes:
        if isinstance(n, Loop):
            r, w = _touches(n.body)
            reads |= r
            writes |= w
        elif isinstance(n, Move):
            if isinstance(n.src, Tile):
                reads.add(n.src.tensor)
            if isinstance(n.dst, Tile):
                writes.add(n.dst.tensor)
        elif isinstance(n, Exec):
            reads.update(ref.tensor for _, ref in n.operands if isinstance(ref, Tile))
    return reads, writes


def _phases(target: Target, units: list[_Unit], merge: bool, notes: list[str]) -> tuple[list, list[Buffer]]:
    """The units in order with a barrier after each phase: with ``merge``, a unit that touches
    nothing the phase so far wrote (nor writes what it read) joins it without a barrier, its
    buffers beside the phase's (placed apart: both are live at once) where they fit together.
    Independent statements then overlap: GRU's R and Z GEMMs load their weights back to back,
    rather than each waiting for the other's stores to land.  The vendor baseline (no fusion)
    keeps a barrier after every nest, as a library launches one kernel each."""
    from dataclasses import replace as _replace
    body: list = []
    buffers: list[Buffer] = []
    fixed: dict[str, int] = {}
    for u in units:
        for buf in u.buffers:
            if buf.persistent:
                fixed[buf.memory] = fixed.get(buf.memory, 0) + buf.slot_bytes * buf.slots
    phase: list[_Unit] = []
    reads: set[str] = set()
    writes: set[str] = set()

    def close():
        if not phase:
            return
        group = phase[0].buffers[0].group if len(phase) > 1 and phase[0].buffers else None
        for u in phase:
            buffers.extend(_replace(buf, group=group) if group and not buf.persistent else buf for buf in u.buffers)
        body.append(Barrier(phase[-1].statement))

    def fits(units_: list[_Unit]) -> bool:
        use = dict(fixed)
        for u in units_:
            for buf in u.buffers:
                if not buf.persistent:
                    use[buf.memory] = use.get(buf.memory, 0) + buf.slot_bytes * buf.slots
        return all(v <= target.memory(m).capacity for m, v in use.items())

    for u in units:
        r, w = _touches(u.nodes)
        joins = (merge and phase and not u.stream and not phase[-1].stream and not (r & writes)
                 and not (w & (reads | writes)) and fits(phase + [u]))
        if not joins:
            close()
            phase, reads, writes = [], set(), set()
        elif u.statement != phase[-1].statement:
            notes.append(f"{u.name}: runs beside {phase[-1].name} (no barrier: neither reads what the other "
                         f"writes)")
        phase.append(u)
        body += u.nodes
        reads |= r
        writes |= w
    close()
    return body, buffers


def lower(k: Kernel, b: Bound, target: Target, schedule: Schedule, cands: list[list[Candidate]],
          resident=()) -> Program:
    units: list[_Unit] = []  # what each nest (or row group) runs, in program order
    scratch, notes = [], []
    seen_scratch = set()

    def declare_temps(nest: Nest):  # the scratch tensors of a sequence's temporaries, once each
        for t in nest.temps:
            if t.name not in seen_scratch:
                seen_scratch.add(t.name)
                scratch.append(Scratch(t.name, t.dtype, t.shape, t.mins))
    fused_into: dict[int, int] = {}
    fused_steps: set[int] = set()  # nests of a sequence run on the blocks of an earlier step
    on_chip: set[str] = set()  # temporaries held only on chip (no scratch in main memory)
    grouped: dict[int, Group] = {}  # statement -> its row group
    if schedule.fuse and not any(ns.stream for ns in schedule.nests):
        # the row groups the schedule runs as such (rowgroup.apply gave their nests the group's tiles)
        chosen = [cs[schedule.mappings[si]].nests for si, cs in enumerate(cands)]
        for g in rowgroup.groups(k, target, chosen):
            if all(schedule.nest(ns.statement, ns.step) == ns for ns in g.schedules):
                grouped.update({sj: g for sj in g.statements})
    for si, cs in enumerate(cands):
        c = cs[schedule.mappings[si]]
        if si in grouped:
            g = grouped[si]
            others = ", ".join(f"S{x}" for x in g.statements if x != si)
            where = f"in a row group with {others}" if others else "its steps in a row group"
            notes.append(f"S{si}: {c.mapping.describe()}; {where}: one block of {', '.join(g.rows)} at a time "
                         f"per core, its intermediates on chip")
            for nest in c.nests:
                declare_temps(nest)
            if si == g.statements[-1]:
                gb, gbuf = _lower_group(target, g, resident)
                units.append(_Unit(si, gb, gbuf, name=f"S{g.statements[0]}-S{si}"))
                on_chip |= g.on_chip
            continue
        if si in fused_into:
            notes.append(f"S{si}: {c.mapping.describe()}; fused into S{fused_into[si]}: runs on each of its output "
                         f"blocks on chip")
            continue
        notes.append(f"S{si}: {c.mapping.describe()}")
        notes += [f"S{si}: {o.name}={o.tensor} is a sliding window along {o.window[0]}: one tile for every "
                  f"{o.window[1]}, which reads the block {o.window[1]}"
                  f"{f' x {o.window_stride}' if o.window_stride > 1 else ''}"
                  f"{f' + {o.window_rows[0]} x {o.window_rows[1]}' if o.window_rows else ''} "
                  f"{('rows', 'columns')[o.window_dim] if o.window_dim < 2 else 'elements'} further on"
                  for nest in c.nests
                  for o in nest.operands if o.window is not None]
        for nest in c.nests:
            declare_temps(nest)
            ns = schedule.nest(si, nest.step_index)
            why = fits(target, nest, ns)
            if why:
                raise IsamapError(f"schedule does not fit {target.name}: {why}", k.stmts[si].span)
            if id(nest) in fused_steps:
                continue
            nl = _NestLowering(target, nest, ns, f"{si}_{nest.step_index}", resident)
            if schedule.fuse and not ns.stream:  # stream-K keeps no epilogue
                # a step of a sequence takes the rest of it (its temporaries stay on chip), the
                # last step the statements after it
                rest = c.nests[c.nests.index(nest) + 1:]
                following = [[n] for n in rest] + [cs2[schedule.mappings[sj]].nests for sj, cs2 in
                                                   enumerate(cands) if sj > si]
                nl = _with_epilogue(k, target, nl, following, resident) or nl
                if nl.epi is not None:
                    fused_steps.update(id(n) for n in nl.epi.nests if n.statement == si)
                    on_chip.update(nl.epi.on_chip_temporaries)
                    fused_into.update({sj: si for sj in nl.epi.statements if sj != si})
            if ns.stream:
                from .streamk import Knobs, lower_stream
                sb, sc = lower_stream(nl, k, b, Knobs.of(ns.stream))
                units.append(_Unit(si, sb, nl.buffers, stream=True, name=f"S{si}"))
                scratch += sc
            else:
                units.append(_Unit(si, nl.lower(), nl.buffers,
                                   name=f"S{si}" + (f".{nest.step_index}" if len(c.nests) > 1 else "")))
    body, buffers = _phases(target, units, schedule.fuse, notes)
    scratch = [x for x in scratch if x.name not in on_chip]
    return Program(k.name, target.name, tuple(buffers), tuple(scratch), tuple(body), target.cores, tuple(notes))
