"""Emission and simulation of a loop program on a simulated target.

Walking the loop program yields the flat instruction stream (per core, with
addresses in every memory).  Each instruction is executed functionally as it
is emitted -- its effect is its IR body run by ``ir.interp`` on the operand
blocks -- and is given explicit dependencies (read/write of the same buffer
slot or tensor block; a barrier between statements).  The timing model then
replays the stream (accelerators.md 7.0): in-order issue per engine,
occupancy and latency, a bounded window per core, one shared main-memory
server served in issue order, multicast transfers charged once.
"""
from __future__ import annotations

import bisect
import heapq
from collections import deque
from dataclasses import dataclass, field
from math import prod

import numpy as np

from ir.bind import bind
from ir.errors import IsamapError
from ir.expr import Binary, Const, Expr, Size, Unary, Var
from ir.interp import _fix, execute
from ir.loops import Barrier, Exec, Imm, Loop, Move, Program, Slot, Tile
from ir.target import Instruction, Target

from .fastbody import fast_body
from .fastexpr import compile_expr, compile_guards


class SimError(IsamapError):
    pass


@dataclass
class Inst:
    id: int
    core: int
    instr: str
    engine: str
    occupancy: int
    latency: int
    main_bytes: int
    mc_key: tuple | None
    deps: list[int]
    statement: int
    operands: list  # (role, memory, address, shape/desc) for the listing
    kind: str = "instr"
    chained: list = field(default_factory=list)  # accumulations into the same block: wait for issue only


@dataclass
class SimResult:
    outputs: dict[str, np.ndarray]
    cycles: int
    busy: dict[str, int]
    link_bytes: dict[str, int]
    instructions: int
    macs: int
    peak: float
    roofline_cycles: int
    utilization: float
    trace_events: list = field(default_factory=list)
    listing: list = field(default_factory=list)
    stalls: dict | None = None  # ``stall_breakdown``, when asked for

    def report(self) -> dict:
        return {"cycles": self.cycles, "utilization": self.utilization, "roofline_cycles": self.roofline_cycles,
                "of_roofline": self.roofline_cycles / self.cycles if self.cycles else 0.0,
                "instructions": self.instructions, "macs": self.macs, "engine_busy": self.busy,
                "bytes": self.link_bytes}


PLAIN_TILES = True  # blocks of plain accesses as tensor slices (False: index arrays, for comparison)


class _Executor:
    """Runs one instruction's IR body on operand blocks (cached binding)."""

    def __init__(self, instr: Instruction):
        self.instr = instr
        self.bound = bind(instr.body, {})
        self.out = instr.outputs[0].name
        self.fast = fast_body(instr)  # copies and block products, replayed (fastbody.py)

    def __call__(self, arrays: dict[str, np.ndarray], initial: np.ndarray | None) -> np.ndarray:
        if self.fast is not None:
            with np.errstate(all="ignore"):
                return self.fast(arrays, initial)
        return self.interpret(arrays, initial)

    def interpret(self, arrays: dict[str, np.ndarray], initial: np.ndarray | None) -> np.ndarray:
        init = {self.out: initial} if initial is not None else None
        res = execute(self.bound, arrays, init)
        return res[self.out]


def _unholed(flat: np.ndarray, d) -> np.ndarray:
    """Which flat positions of a pitched tile dim are the statement's own points: every var
    within its real extent (``TileDim.real``)."""
    ok = np.ones(flat.shape, dtype=bool)
    for e, r in zip(reversed(d.extents), reversed(d.real)):
        ok &= flat % e < r
        flat = flat // e
    return ok


class Simulator:
    def __init__(self, target: Target, program: Program, kernel, bound, inputs: dict[str, np.ndarray],
                 listing: bool = False, functional: bool = True):
        self.t, self.p, self.k, self.b = target, program, kernel, bound
        self.functional = functional
        self.want_listing = listing
        self.listing: list[str] = []
        self.execs: dict[str, _Executor] = {}
        self.insts: list[Inst] = []
        self.link_bytes: dict[str, int] = {}
        # main memory: kernel tensors and scratch tensors
        self.tensors: dict[str, np.ndarray] = {}
        self.mins: dict[str, tuple[int, ...]] = {}
        for name, arr in inputs.items():
            self.tensors[name] = arr
            self.mins[name] = bound.mins[name]
        for o in kernel.outputs:
            self.tensors[o.name] = np.zeros(bound.shapes[o.name], dtype=o.dtype.np)
            self.mins[o.name] = bound.mins[o.name]
        for s in program.scratch:
            self.tensors[s.name] = np.zeros(s.shape, dtype=s.dtype.np)
            self.mins[s.name] = s.mins
        self.tensor_dtype = {n: (kernel.tensor(n).dtype if not n.startswith("_S") else
                                 next(s.dtype for s in program.scratch if s.name == n)) for n in self.tensors}
        # on-chip buffers: per core, allocated in their memory
        self.slots: dict[tuple[int, str], np.ndarray] = {}
        self.written: dict[tuple[int, str], np.ndarray] = {}
        self.addr: dict[str, int] = {}
        # persistent buffers first, for the whole program; then each nest's buffers, reusing
        # the same addresses from one nest to the next (nests run one after another)
        fixed: dict[str, int] = {}
        used: dict[str, int] = {}
        for buf in program.buffers:
            if buf.persistent:
                fixed[buf.memory] = self._place(buf, fixed.get(buf.memory, 0))
        group = None
        for buf in program.buffers:
            if buf.persistent:
                continue
            if buf.group != group:
                group, cur = buf.group, dict(fixed)
            cur[buf.memory] = self._place(buf, cur.get(buf.memory, 0))
            for m, v in cur.items():
                used[m] = max(used.get(m, 0), v)
        self.used = used
        # dependency tracking
        self.last_write: dict = {}
        self.readers: dict = {}
        self.barrier_id: int | None = None
        self.env: dict = dict(bound.sizes)
        # per timed instruction, when a list: (id, unit, issue, occupancy, bound, culprit):
        # what its issue waited for and on which instruction (``stall_breakdown``)
        self.record: list | None = None
        self.mc_seen: dict = {}
        self._fns: dict[int, object] = {}
        self._plans: dict[int, object] = {}  # tile node -> its plain-slice plan (_plain_plan)
        # persistence across runs: which tensor block each slot holds (tensor, block, version)
        self.persist: set[str] = set()
        self.slot_tag: dict = {}
        self.version: dict[str, int] = {}
        self.elided = 0
        self.accumulator: dict[int, bool] = {}  # exec instructions (may chain accumulations)

    def _place(self, buf, base: int) -> int:
        mem = self.t.memory(buf.memory)
        size = buf.slot_bytes * buf.slots
        if base + size > mem.capacity:
            raise SimError(f"buffer {buf.name} ({size} bytes at {base}) exceeds memory {buf.memory} "
                           f"({mem.capacity} bytes)")
        self.addr[buf.name] = base
        return base + size

    def _fn(self, e: Expr):
        """The compiled form of an index expression, cached by identity (hashing trees is slow)."""
        f = self._fns.get(id(e))
        if f is None:
            f = self._fns[id(e)] = compile_expr(e)
        return f

    # ------------------------------------------------------------------ emission
    def run(self):
        self.walk(self.p.body, core=0)

    def run_again(self, inputs: dict[str, np.ndarray]):
        """Run the program once more on new inputs, continuing the same machine state.

        On-chip buffers keep their contents, so loads of a ``persist`` tensor's block into a
        slot that still holds it (and the tensor has not changed) are skipped: weights stay
        resident across invocations (a persistent RNN)."""
        for name, arr in inputs.items():
            t = self.k.tensor(name)
            new = _fix(np.asarray(arr), t.dtype).reshape(self.b.shapes[name])
            if name in self.tensors and np.array_equal(self.tensors[name], new):
                continue  # unchanged: blocks loaded from it are still valid
            self.tensors[name] = new
            self.version[name] = self.version.get(name, 0) + 1
        self.run()

    def walk(self, nodes, core: int):
        env = self.env
        for n in nodes:
            if isinstance(n, Loop):
                ext = self._fn(n.extent)(env)
                for i in range(ext):
                    env[n.var] = i
                    self.walk(n.body, i if n.parallel else core)
                env.pop(n.var, None)
            elif isinstance(n, Move):
                if n.count > 1:
                    env[n.sub] = 0  # the first block decides for the whole batch but its edge
                if self._guard(n.guards):
                    self.move(n, core)
            elif isinstance(n, Exec):
                if self._guard(n.guards):
                    self.exec(n, core)
            elif isinstance(n, Barrier):
                self.barrier(n)

    def _guard(self, guards) -> bool:
        f = self._fns.get(id(guards))
        if f is None:
            f = self._fns[id(guards)] = compile_guards(guards)
        return f(self.env)

    def _new(self, core, instr: Instruction, nbytes: int, touches_main: bool, mc_key, deps, stmt, ops) -> Inst:
        occ = instr.occupancy if instr.occupancy is not None else instr.cycles(max(1, nbytes))
        inst = Inst(len(self.insts), core, instr.name, instr.engine, occ, instr.latency,
                    nbytes if touches_main else 0, mc_key,
                    deps + ([self.barrier_id] if self.barrier_id is not None else []), stmt, ops)
        self.insts.append(inst)
        return inst

    def _dep_read(self, key, deps):
        w = self.last_write.get(key)
        if w is not None:
            deps.append(w)

    def _dep_write(self, key, deps):
        w = self.last_write.get(key)
        if w is not None:
            deps.append(w)
        deps.extend(self.readers.get(key, ()))

    def _note(self, inst: Inst, reads, writes):
        for k in reads:
            self.readers.setdefault(k, []).append(inst.id)
        for k in writes:
            self.last_write[k] = inst.id
            self.readers[k] = []

    def slot(self, core: int, s: Slot):
        buf = self.p.buffer(s.buffer)
        key = (core, s.buffer)
        if key not in self.slots:
            self.slots[key] = np.zeros((buf.slots, *buf.block), dtype=buf.dtype.np)
            self.written[key] = np.zeros(buf.slots, dtype=bool)
        idx = self._fn(s.index)(self.env)
        if not 0 <= idx < buf.slots:
            raise SimError(f"slot {idx} outside buffer {buf.name} ({buf.slots} slots)")
        return buf, key, idx

    # -- tiles of main-memory tensors
    def tile_index(self, tile: Tile, shape: tuple[int, ...]):
        env = self.env
        nd = len(tile.dims)
        vals: dict[str, np.ndarray] = {}
        valid = np.ones(shape, dtype=bool)
        for q, d in enumerate(tile.dims):
            ext = shape[q] if q < len(shape) else 1
            bshape = [1] * nd
            bshape[q] = ext
            if d.unit == 0:
                m = np.arange(ext) == 0
                valid &= m.reshape(bshape)
                continue
            b = self._fn(d.block)(env)
            flat = b * d.unit + np.arange(ext)
            valid &= (flat < prod(d.extents)).reshape(bshape)
            if d.real:  # a pitched pair's holes: the overlap columns
                valid &= _unholed(flat, d).reshape(bshape)
            for v, lo, e in zip(reversed(d.vars), reversed(d.lows), reversed(d.extents)):
                vals[v] = (flat % e + lo).reshape(bshape)
                flat = flat // e
        for v, e in tile.at:
            vals[v] = self._fn(e)(env)
        mins = self.mins[tile.tensor]
        T = self.tensors[tile.tensor]
        xs = []
        for axis, sub in enumerate(tile.access.indices):
            x = np.broadcast_to(np.asarray(_np_eval(sub, vals, self.b.sizes)), shape) - mins[axis]
            if np.any(valid & ((x < 0) | (x >= T.shape[axis]))):
                raise SimError(f"instruction {len(self.insts)} addresses {tile.tensor} outside its bounds "
                               f"(axis {axis})")
            xs.append(x)
        return tuple(np.where(valid, x, 0) for x in xs), valid

    def tile_read(self, tile: Tile, shape: tuple[int, ...]):
        """(values, valid) of a block of a main-memory tensor: the elements at the valid
        positions (anything elsewhere) and the mask of those positions."""
        plan = self._plain_plan(tile, shape) if PLAIN_TILES else None
        if plan is None:
            idx, valid = self.tile_index(tile, shape)
            return self.tensors[tile.tensor][idx], valid
        T = self.tensors[tile.tensor]
        counts, index, order = self._plain_region(tile, shape, plan, T)
        region = T[index].transpose(sorted(range(len(order)), key=order.__getitem__)).reshape(counts)
        values = np.zeros(shape, dtype=T.dtype)
        valid = np.zeros(shape, dtype=bool)
        box = tuple(slice(0, c) for c in counts)
        values[box] = region
        valid[box] = True
        return values, valid

    def tile_write(self, tile: Tile, shape: tuple[int, ...], out: np.ndarray) -> int:
        """Store a block's valid elements into its main-memory tensor; returns how many."""
        T = self.tensors[tile.tensor]
        plan = self._plain_plan(tile, shape) if PLAIN_TILES else None
        if plan is None:
            idx, dvalid = self.tile_index(tile, shape)
            vals = _fix(np.broadcast_to(out.reshape(shape), dvalid.shape), self.tensor_dtype[tile.tensor])
            if T.ndim:
                T[tuple(i[dvalid] for i in idx)] = vals[dvalid]
            else:  # a rank-0 tensor: the block's one valid element
                T[()] = vals[dvalid][0]
            return int(dvalid.sum())
        counts, index, order = self._plain_region(tile, shape, plan, T)
        vals = _fix(out.reshape(shape)[tuple(slice(0, c) for c in counts)], self.tensor_dtype[tile.tensor])
        ranked = sorted(order)
        T[index] = vals.reshape([counts[q] for q in ranked]).transpose([ranked.index(q) for q in order])
        return prod(counts)

    def _plain_plan(self, tile: Tile, shape: tuple[int, ...]):
        """For a block whose access reads every tensor axis through a plain variable -- one tile
        dimension's only variable, each at most once, or a loop variable (a GEMM operand's
        block; not an im2col window or fused pixels) -- per tensor axis ("dim", tile dim) or
        ("at", value expression), so ``tile_read`` / ``tile_write`` take it as one slice of the
        tensor instead of an index array per element.  None otherwise.  Kept per tile node."""
        got = self._plans.get(id(tile), False)
        if got is not False:
            return got
        plan = None
        dims = {d.vars[0]: q for q, d in enumerate(tile.dims) if d.unit and len(d.vars) == 1}
        if tile.access.indices and len(tile.dims) == len(shape) and \
                all(not d.unit or len(d.vars) == 1 for d in tile.dims):
            at, used, axes = dict(tile.at), set(), []
            for e in tile.access.indices:
                if isinstance(e, Var) and e.name in dims and e.name not in used:
                    used.add(e.name)
                    axes.append(("dim", dims[e.name]))
                elif isinstance(e, Var) and e.name in at:
                    axes.append(("at", at[e.name]))
                else:
                    break
            else:
                if used == set(dims):
                    plan = tuple(axes)
        self._plans[id(tile)] = plan
        return plan

    def _plain_region(self, tile: Tile, shape, plan, T):
        """(valid extent along each tile dim, the tensor index of the block's valid part, the
        tile dim of each sliced tensor axis in tensor order) for a ``_plain_plan`` block."""
        env = self.env
        counts, starts = [], []
        for q, d in enumerate(tile.dims):
            if not d.unit:
                counts.append(min(shape[q], 1))
                starts.append(0)
                continue
            start = self._fn(d.block)(env) * d.unit
            counts.append(max(0, min(shape[q], d.extents[0] - start)))
            starts.append(start + d.lows[0])
        mins = self.mins[tile.tensor]
        index, order = [], []
        empty = 0 in counts
        for axis, p in enumerate(plan):
            if p[0] == "dim":
                q = p[1]
                lo = starts[q] - mins[axis]
                if not empty and (lo < 0 or lo + counts[q] > T.shape[axis]):
                    raise SimError(f"instruction {len(self.insts)} addresses {tile.tensor} outside its bounds "
                                   f"(axis {axis})")
                index.append(slice(lo, lo + counts[q]))
                order.append(q)
            else:
                i = self._fn(p[1])(env) - mins[axis]
                if not empty and not 0 <= i < T.shape[axis]:
                    raise SimError(f"instruction {len(self.insts)} addresses {tile.tensor} outside its bounds "
                                   f"(axis {axis})")
                index.append(min(max(i, 0), T.shape[axis] - 1) if empty else i)
        return counts, tuple(index), order

    def tile_valid(self, tile: Tile, shape: tuple[int, ...]) -> int:
        """How many elements of the block ``tile_index`` would keep (the in-bounds part of a
        remainder block), without building the index arrays: what a timing-only run needs."""
        if len(tile.dims) != len(shape):
            return int(self.tile_index(tile, shape)[1].sum())
        count = 1
        for ext, d in zip(shape, tile.dims):
            if d.unit == 0:
                count *= min(ext, 1)
                continue
            start = self._fn(d.block)(self.env) * d.unit
            if d.real:
                flat = np.arange(start, min(start + ext, prod(d.extents)))
                count *= int(np.count_nonzero(_unholed(flat, d)))
                continue
            count *= max(0, min(ext, prod(d.extents) - start))
        return count

    def move(self, n: Move, core: int):
        """One data-movement instruction: one block, or ``count`` consecutive blocks."""
        instr = self.t.instr(n.instr)
        src_op, dst_op = instr.inputs[0], instr.outputs[0]
        deps: list[int] = []
        reads, writes, ops = [], [], []
        total = 0
        mc = None
        for j in range(n.count):
            if n.sub:
                self.env[n.sub] = j
                if not self._guard(n.guards):
                    continue
            got = self._move_block(n, instr, core)
            if got is None:  # already resident in its slot
                continue
            nbytes, key_r, key_w, mck, op_r, op_w = got
            total += nbytes
            self._dep_read(key_r, deps)
            self._dep_write(key_w, deps)
            reads.append(key_r)
            writes.append(key_w)
            if not ops:
                ops = [op_r, op_w]
            if mck is not None:
                mc = mc + (mck,) if mc else ("mc", core, mck)
        if n.sub:
            self.env.pop(n.sub, None)
        if not reads:
            return
        if n.count > 1 and len(reads) > 1:
            ops = [(r, m, a, f"{w} x{len(reads)}") for r, m, a, w in ops]
        link = f"{src_op.memory}->{dst_op.memory}"
        self.link_bytes[link] = self.link_bytes.get(link, 0) + total
        touches = self.t.main in (src_op.memory, dst_op.memory)
        if mc is not None:
            # the n-th time a core fetches these blocks joins the n-th multicast of them
            blocks = mc[2:]
            nth = self.mc_seen.get((blocks, core), 0)
            self.mc_seen[(blocks, core)] = nth + 1
            mc = (blocks, nth)
        inst = self._new(core, instr, total, touches, mc, deps, n.statement, ops)
        self._note(inst, reads, writes)

    def _move_block(self, n: Move, instr: Instruction, core: int):
        src_op = instr.inputs[0]
        other = n.dst if isinstance(n.dst, Slot) else n.src
        shape = self.p.buffer(other.buffer).block  # the operand block being moved
        mck = None
        tag = None
        if isinstance(n.src, Tile) and n.src.tensor in self.persist and isinstance(n.dst, Slot):
            bkey = tuple(self._fn(e)(self.env) for e in n.src.key)
            tag = (n.src.tensor, bkey, self.version.get(n.src.tensor, 0))
            dbuf, dkey0, di = self.slot(core, n.dst)
            if self.slot_tag.get((dkey0, di)) == tag and self.written[dkey0][di]:
                self.elided += 1
                return None
        if isinstance(n.src, Tile) and not self.functional:
            data = None
            key = ("T", n.src.tensor, tuple(self._fn(e)(self.env) for e in n.src.key))
            nbytes = self.tile_valid(n.src, shape) * self.tensor_dtype[n.src.tensor].itemsize
            mck = key if n.multicast else None
            op_r = ("src", self.t.main, n.src.tensor, key[2])
        elif isinstance(n.src, Tile):
            values, valid = self.tile_read(n.src, shape)
            pad = n.pad
            if np.isinf(pad) and src_op.dtype.kind in "iub":
                info = np.iinfo(src_op.dtype.np) if src_op.dtype.kind != "b" else None
                pad = (info.min if pad < 0 else info.max) if info else (pad > 0)
            data = np.where(valid, values, pad).astype(src_op.dtype.np)
            key = ("T", n.src.tensor, tuple(self._fn(e)(self.env) for e in n.src.key))
            nbytes = int(valid.sum()) * self.tensor_dtype[n.src.tensor].itemsize
            mck = key if n.multicast else None
            op_r = ("src", self.t.main, n.src.tensor, key[2])
        else:
            buf, skey, si = self.slot(core, n.src)
            if not self.written[skey][si]:
                raise SimError(f"instruction {len(self.insts)} ({n.instr}, statement S{n.statement}) reads "
                               f"slot {si} of {buf.name}, which was never written")
            data = self.slots[skey][si] if self.functional else None
            key = ("S", skey, si)
            nbytes = prod(shape) * src_op.dtype.itemsize
            op_r = ("src", buf.memory, self.addr[buf.name] + si * buf.slot_bytes, buf.name)
        if self.functional:
            ex = self.execs.get(n.instr) or self.execs.setdefault(n.instr, _Executor(instr))
            out = _run_padded(ex, src_op, np.asarray(data).reshape(shape), shape)
        if isinstance(n.dst, Tile):
            if self.functional:
                valid_n = self.tile_write(n.dst, shape, out)
            else:
                valid_n = self.tile_valid(n.dst, shape)
            dkey = ("T", n.dst.tensor, tuple(self._fn(e)(self.env) for e in n.dst.key))
            nbytes = valid_n * self.tensor_dtype[n.dst.tensor].itemsize
            op_w = ("dst", self.t.main, n.dst.tensor, dkey[2])
        else:
            buf, dkey0, di = self.slot(core, n.dst)
            if self.functional:
                self.slots[dkey0][di] = out.reshape(buf.block)
            self.written[dkey0][di] = True
            self.slot_tag[(dkey0, di)] = tag
            dkey = ("S", dkey0, di)
            op_w = ("dst", buf.memory, self.addr[buf.name] + di * buf.slot_bytes, buf.name)
        if isinstance(n.dst, Tile):
            self.version[n.dst.tensor] = self.version.get(n.dst.tensor, 0) + 1
        return nbytes, key, dkey, mck, op_r, op_w

    def exec(self, n: Exec, core: int):
        name = n.instr
        if n.first_instr and all(self._fn(e)(self.env) == 0 for e in n.first):
            name = n.first_instr
        instr = self.t.instr(name)
        functional = self.functional  # a timing-only run (the scheduler's) builds no operand data
        deps: list[int] = []
        reads, writes = [], []
        arrays = {}
        ops = []
        out_name = instr.outputs[0].name
        out_ref = None
        main_read = 0
        for opname, ref in n.operands:
            if isinstance(ref, Imm):
                v = _scalar(ref.value, self.b.sizes)
                if functional:
                    arrays[opname] = np.asarray(v, dtype=instr.operand(opname).dtype.np)
                ops.append((opname, "imm", v, None))
                continue
            if isinstance(ref, Tile):  # an operand read in place from main memory
                op = instr.operand(opname)
                if functional:
                    values, valid = self.tile_read(ref, op.shape or (1,))
                    arrays[opname] = np.where(valid, values, 0).astype(op.dtype.np).reshape(op.shape)
                    count = int(valid.sum())
                else:
                    count = self.tile_valid(ref, op.shape or (1,))
                main_read += count * self.tensor_dtype[ref.tensor].itemsize
                key = ("T", ref.tensor, tuple(self._fn(e)(self.env) for e in ref.key))
                self._dep_read(key, deps)
                reads.append(key)
                ops.append((opname, self.t.main, ref.tensor, key[2]))
                continue
            buf, skey, si = self.slot(core, ref)
            key = ("S", skey, si)
            if opname == out_name:
                out_ref = (buf, skey, si, key)
                continue
            if not self.written[skey][si]:
                raise SimError(f"instruction {len(self.insts)} ({name}, statement S{n.statement}) reads operand "
                               f"{opname} from slot {si} of {buf.name}, which was never written")
            off = self._fn(ref.offset)(self.env) if ref.offset is not None else 0
            ax = ref.axis
            if off:  # a sliding window: off.. of this slot along ``ax``, then the next slot's start
                if not 0 < off <= buf.block[ax] or si + 1 >= buf.slots:
                    raise SimError(f"window of {off} from slot {si} of {buf.name} runs past the buffer")
                nxt = ("S", skey, si + 1)
                if functional:
                    # elements of a next block that was never loaded lie past the tensor: they
                    # only reach outputs past its end, which are never stored
                    both = np.concatenate([self.slots[skey][si], self.slots[skey][si + 1]], axis=ax)
                    arrays[opname] = np.take(both, range(off, off + buf.block[ax]), axis=ax).reshape(
                        instr.operand(opname).shape)
                if self.written[skey][si + 1]:
                    self._dep_read(nxt, deps)
                    reads.append(nxt)
            elif functional:
                arrays[opname] = self.slots[skey][si].reshape(instr.operand(opname).shape)
            self._dep_read(key, deps)
            reads.append(key)
            step = (buf.slot_bytes // prod(buf.block[:ref.axis + 1])) if off else 0  # bytes per element along ax
            ops.append((opname, buf.memory, self.addr[buf.name] + si * buf.slot_bytes + off * step, buf.name))
        buf, skey, si, key = out_ref
        ist = instr.body.stmts[0]
        accumulates = ist.op != "=" and not ist.init
        chained = []
        if accumulates:
            if not self.written[skey][si]:
                raise SimError(f"instruction {len(self.insts)} ({name}, statement S{n.statement}) accumulates "
                               f"into slot {si} of {buf.name}, which was never written")
            w = self.last_write.get(key)
            if w is not None and self.insts[w].engine == instr.engine and self.insts[w].kind == "instr" \
                    and self.insts[w].operands and self.accumulator.get(w):
                # back-to-back accumulation into one block pipelines in the accumulator: it waits
                # for the previous one to issue, not to finish
                chained.append(w)
                self.readers.setdefault(key, [])
            else:
                self._dep_read(key, deps)
        self.slot_tag.pop((skey, si), None)
        if self.functional:
            initial = self.slots[skey][si].reshape(instr.outputs[0].shape or ()) if accumulates else None
            ex = self.execs.get(name) or self.execs.setdefault(name, _Executor(instr))
            res = ex(arrays, initial)
            self.slots[skey][si] = np.asarray(res).reshape(buf.block)
        self.written[skey][si] = True
        if chained:
            deps.extend(self.readers.get(key, ()))  # WAR on other readers still applies
        else:
            self._dep_write(key, deps)
        writes.append(key)
        ops.append((out_name, buf.memory, self.addr[buf.name] + si * buf.slot_bytes, buf.name))
        inst = self._new(core, instr, main_read, main_read > 0, None, deps, n.statement, ops)
        inst.chained = chained
        self.accumulator[inst.id] = True
        self._note(inst, reads, writes)

    def barrier(self, n: Barrier):
        start = 0 if self.barrier_id is None else self.barrier_id + 1
        deps = list(range(start, len(self.insts)))
        inst = Inst(len(self.insts), -1, "barrier", "", 0, 0, 0, None, deps, n.statement, [], "barrier")
        self.insts.append(inst)
        self.barrier_id = inst.id
        self.last_write.clear()
        self.readers.clear()

    # ------------------------------------------------------------------ timing
    def timing(self, trace: bool = False):
        t = self.t
        done = [0] * len(self.insts)
        issued = [0.0] * len(self.insts)
        processed = [False] * len(self.insts)
        unit_free: dict[tuple, list[float]] = {}
        last_issue: dict[tuple, float] = {}
        window: dict[int, deque] = {}
        hbm = t.memory(t.main)
        server = SharedServer()
        mc_done: dict = {}
        busy: dict[str, float] = {}
        events = []
        # split the stream into segments between barriers
        segs, cur = [], []
        for inst in self.insts:
            if inst.kind == "barrier":
                segs.append((cur, inst))
                cur = []
            else:
                cur.append(inst)
        if cur:
            segs.append((cur, None))
        for seg, bar in segs:
            queues: dict[int, deque] = {}
            for inst in seg:
                queues.setdefault(inst.core, deque()).append(inst)
            heap = []

            def tentative(inst):
                dep_t = max((done[d] for d in inst.deps), default=0)
                if inst.chained:
                    dep_t = max(dep_t, max(issued[d] + 1 for d in inst.chained))
                ek = (inst.core if not t.engine(inst.engine).shared else -1, inst.engine)
                units = unit_free.setdefault(ek, [0.0] * t.engine(inst.engine).count)
                w = window.setdefault(inst.core, deque())
                win_t = w[0][0] if len(w) >= t.window else 0.0
                terms = (dep_t, min(units), last_issue.get(ek, 0.0), win_t)
                return max(terms), ek, units, w, terms

            waiting: dict[int, list[int]] = {}  # instruction -> cores whose next instruction needs it

            def push(c):
                """Queue core c by its next instruction's issue time, or park it until a
                dependency on another core's instruction that is not timed yet is: cores are
                timed in step, so an instruction may depend on one whose time is unknown."""
                head = queues[c][0]
                pending = next((d for d in head.deps if not processed[d]), None)
                if pending is not None:
                    waiting.setdefault(pending, []).append(c)
                else:
                    heapq.heappush(heap, (tentative(head)[0], c))

            for c in queues:
                push(c)
            while heap:
                _, c = heapq.heappop(heap)
                q = queues[c]
                inst = q.popleft()
                issue, ek, units, w, terms = tentative(inst)
                u = units.index(min(units))
                occ = inst.occupancy
                # another core's copy is bringing these blocks: this core's engine only waits
                # for them, which land on every core when that copy completes (at once, for a
                # core that joins after that)
                joins = inst.mc_key is not None and inst.mc_key in mc_done
                if joins:
                    occ = 0
                end = issue + occ
                if inst.main_bytes and hbm.bandwidth and not joins:
                    end = max(end, server.reserve(issue, inst.main_bytes / hbm.bandwidth))
                if self.record is not None:
                    bound = ("deps", "engine", "in-order", "window")[terms.index(max(terms))]
                    culprit = None
                    if bound == "deps":
                        culprit = max(list(inst.deps) + list(inst.chained or ()), default=None,
                                      key=lambda d: done[d] if d in inst.deps else issued[d] + 1)
                    elif bound == "window":
                        culprit = w[0][1]
                    self.record.append((inst.id, u, issue, occ, bound, culprit))
                units[u] = issue + occ
                last_issue[ek] = issue
                issued[inst.id] = issue
                fin = max(issue, mc_done[inst.mc_key]) if joins else end + inst.latency
                if inst.mc_key is not None and not joins:
                    mc_done[inst.mc_key] = fin
                done[inst.id] = fin
                processed[inst.id] = True
                busy[inst.engine] = busy.get(inst.engine, 0.0) + occ
                w.append((fin, inst.id))
                if len(w) > t.window:
                    w.popleft()
                if trace:
                    events.append({"name": inst.instr, "ph": "X", "ts": issue, "dur": max(occ, 1),
                                   "pid": max(inst.core, 0), "tid": f"{inst.engine}{u}",
                                   "args": {"S": inst.statement, "done": fin}})
                if q:
                    push(c)
                for c2 in waiting.pop(inst.id, ()):
                    push(c2)
            if any(queues.values()):
                raise SimError("internal: instructions of different cores wait on each other")
            if bar is not None:
                done[bar.id] = max((done[d] for d in bar.deps), default=0)
                processed[bar.id] = True
        total = max(done, default=0)
        return int(np.ceil(total)), {k: int(v) for k, v in busy.items()}, events

    def barrier_of(self, inst: Inst) -> int | None:
        for d in inst.deps:
            if self.insts[d].kind == "barrier":
                return d
        return None

    def format_listing(self) -> list[str]:
        lines = []
        cur_stmt = None
        for inst in self.insts:
            if inst.kind == "barrier":
                lines.append(f"        barrier                                   ; #{inst.id} all cores")
                continue
            if inst.statement != cur_stmt:
                cur_stmt = inst.statement
                src = self.k.stmts[cur_stmt]
                from ir import printer
                lines.append(f"; S{cur_stmt}: {printer.stmt(src)}")
            ops = []
            for role, mem, addr, what in inst.operands:
                if mem == "imm":
                    ops.append(f"{role}=#{addr}")
                elif mem == self.t.main:
                    ops.append(f"{role}={mem}:{addr}{list(what) if isinstance(what, tuple) else what}")
                else:
                    ops.append(f"{role}={mem}:0x{addr:x}")
            waits = sorted(set(d for d in inst.deps if d != self.barrier_of(inst)) | set(inst.chained))
            dep = f"   ; #{inst.id}" + (f" after {', '.join(f'#{d}' for d in waits[-4:])}" if waits else "")
            lines.append(f"c{inst.core:<3d} {inst.instr:<12s} {', '.join(ops)}{dep}")
        return lines


def stall_breakdown(sim: "Simulator", cycles: int) -> dict:
    """Where the compute engine's time went (the one running multiply-accumulates, else the
    busiest non-copy engine), per core: busy, fill (before its first
    instruction), waiting for an operand (by the producing instruction), the window full
    behind an instruction, issue order, and drain (after its last).  Needs ``sim.record``
    filled by ``timing``; units of a multi-unit engine count as fractions of it."""
    t = sim.t
    insts = sim.insts
    names = {i.instr for i in insts if i.kind != "barrier"}
    compute = {x for x in names if t.instr(x).macs > 0}
    if not compute:  # no multiply-accumulates (softmax, elementwise): the busiest compute engine
        occ: dict[str, float] = {}
        for i in insts:
            if i.kind != "barrier" and not t.instr(i.instr).is_copy:
                occ[i.engine] = occ.get(i.engine, 0.0) + i.occupancy
        top = max(occ, key=occ.get, default=None)
        compute = {x for x in names if not t.instr(x).is_copy and t.instr(x).engine == top}
    per_core: dict[int, dict] = {}
    by_unit: dict[tuple, list] = {}
    for iid, u, issue, occ, bound, culprit in sim.record:
        inst = insts[iid]
        if inst.instr in compute:
            by_unit.setdefault((inst.core, inst.engine, u), []).append((issue, occ, bound, culprit))
    for (core, engine, _), xs in by_unit.items():
        n = t.engine(engine).count
        d = per_core.setdefault(core, {"engine": engine})
        xs.sort()
        at = 0.0
        for k, (issue, occ, bound, culprit) in enumerate(xs):
            gap = issue - at
            if gap > 0:
                if k == 0:
                    why = "fill"
                elif bound == "deps" and culprit is not None:
                    why = f"waiting for {insts[culprit].instr}"
                elif bound == "window" and culprit is not None:
                    why = f"window full behind {insts[culprit].instr}"
                else:
                    why = "issue order"
                d[why] = d.get(why, 0.0) + gap / n
            d["busy"] = d.get("busy", 0.0) + occ / n
            at = max(at, issue + occ)
        d["drain"] = d.get("drain", 0.0) + max(0.0, cycles - at) / n
    out = {c: {k: (round(v) if isinstance(v, float) else v) for k, v in d.items()} for c, d in sorted(per_core.items())}
    # every core's causes add up to the run: the slowest is the one its compute ends latest on
    slowest = min(per_core, key=lambda c: per_core[c]["drain"], default=None)
    return {"per_core": out, "slowest_core": slowest}


class SharedServer:
    """The chip-wide main-memory server: bandwidth booked in busy intervals.

    Cores are timed in step, one instruction at a time, so a core can book a transfer
    issued *earlier* than one another core booked already (its loads run ahead of its
    compute).  Served in issue order, such a transfer must not queue behind the later
    one: it takes the idle time the server had from its issue on, and only where that
    runs out waits for the booked intervals.  Bandwidth is never exceeded."""

    HORIZON = 50000.0  # bookings this far behind the newest are forgotten

    def __init__(self):
        self.starts: list[float] = []
        self.ends: list[float] = []

    def reserve(self, t: float, need: float) -> float:
        """Book ``need`` cycles of service from ``t`` on; returns when the last is served."""
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(ends, t)
        cur, pieces = t, []
        while need > 1e-12:
            if i < len(starts) and starts[i] <= cur:
                cur = max(cur, ends[i])
                i += 1
                continue
            gap = (starts[i] if i < len(starts) else float("inf")) - cur
            take = min(need, gap)
            pieces.append((cur, cur + take))
            cur += take
            need -= take
        for s, e in pieces:
            j = bisect.bisect_left(starts, s)
            # merge with the neighbours it touches
            if j > 0 and ends[j - 1] >= s - 1e-9:
                j -= 1
                s = starts[j]
                e = max(e, ends[j])
                del starts[j], ends[j]
            while j < len(starts) and starts[j] <= e + 1e-9:
                e = max(e, ends[j])
                del starts[j], ends[j]
            starts.insert(j, s)
            ends.insert(j, e)
        if len(starts) > 4096:
            keep = bisect.bisect_left(ends, ends[-1] - self.HORIZON)
            del starts[:keep], ends[:keep]
        return cur


def _run_padded(ex: _Executor, src_op, block: np.ndarray, shape) -> np.ndarray:
    """Run a copy's body on a block that may be smaller than (or of lower rank than) its operand."""
    full = src_op.shape or ()
    if tuple(shape) == tuple(full):
        return ex({src_op.name: block}, None)
    lead = len(full) - len(shape)
    if lead < 0 or any(a > b for a, b in zip(shape, full[lead:])):
        raise SimError(f"a block of shape {list(shape)} does not fit the copy operand {list(full)}")
    pad = np.zeros(full, dtype=block.dtype)
    view = (0,) * lead + tuple(slice(0, d) for d in shape)
    pad[view] = block
    return ex({src_op.name: pad}, None)[view]


def _np_eval(e: Expr, vals: dict, sizes: dict):
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        return vals[e.name]
    if isinstance(e, Size):
        return sizes[e.name]
    if isinstance(e, Unary) and e.op == "-":
        return -_np_eval(e.x, vals, sizes)
    if isinstance(e, Binary):
        a, b = _np_eval(e.a, vals, sizes), _np_eval(e.b, vals, sizes)
        return {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.floor_divide, "%": np.mod,
                "min": np.minimum, "max": np.maximum}[e.op](a, b)
    raise SimError(f"subscript {e!r} cannot be evaluated by a DMA engine")


def _scalar(e: Expr, sizes):
    """The value of an immediate operand (folded with the reference semantics)."""
    from ir.interp import eval_constant
    return eval_constant(e, sizes)


def simulate(target: Target, program: Program, kernel, bound, inputs: dict[str, np.ndarray],
             listing: bool = False, trace: bool = False, functional: bool = True,
             stalls: bool = False) -> SimResult:
    sim = Simulator(target, program, kernel, bound, inputs, listing, functional)
    with np.errstate(all="ignore"):
        sim.run()
    if stalls:
        sim.record = []
    cycles, busy, events = sim.timing(trace)
    macs = bound.macs()
    peak = target.peak_macs_per_cycle()
    mem = target.memory(target.main)
    compulsory = sum(a.size * kernel.tensor(n).dtype.itemsize for n, a in inputs.items())
    compulsory += sum(prod(bound.shapes[o.name]) * o.dtype.itemsize for o in kernel.outputs)
    roof = max(int(np.ceil(macs / peak)) if peak else 0, int(np.ceil(compulsory / mem.bandwidth)) if mem.bandwidth else 0)
    outs = {o.name: sim.tensors[o.name] for o in kernel.outputs}
    util = macs / (peak * cycles) if peak and cycles else 0.0
    return SimResult(outs, cycles, busy, sim.link_bytes, sum(1 for i in sim.insts if i.kind != "barrier"), macs,
                     peak, roof, util, events, sim.format_listing() if listing else [],
                     stall_breakdown(sim, cycles) if stalls else None)
