"""Stream-K: a contraction whose output rows do not divide over the cores.

With whole output blocks per core, 1760x128x1760 on sim-nnp's 24 cores leaves some
cores 10 of 32x32 blocks where the average is 9.2: the busiest core sets the time.
Here every core takes ``D = rows // cores`` whole output rows (a row: one block of
the long output axis times every block of the short one) and an equal share of
the leftover rows' *reduction steps*.  A leftover row is summed by several cores:
each ends in a *final* piece (its last steps) on a core of its own; the other
cores store partial sums to main memory, which the final core reads, sums and adds.

The order on a core is chosen so none of that waits:

* phase 1 walks the reduction axis once, in the order the resident operand (B of
  a GEMM, needed whole by every core) streams in; every core fetches it in the
  same chunks, so one multicast read serves them all.  At each step the core runs
  its first ``D - 1`` rows plus its pieces at their own steps and its last row at
  the others.  Pieces that feed a final piece end early (before the final steps
  begin), so their partial sums are in main memory long before they are needed;
* phase 2 runs the last row's remaining steps from the resident operand, while the
  other rows' results leave and the leftover rows are finished.

Only one row's blocks are stored after the last product.  Everything here is
plain loop-program IR (moves, executions), one straight-line section per core.
The layout's knobs (``Knobs``) live in the schedule; ``docs/scheduling.md`` has
the measurements.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from ir.expr import Binary, Expr, Var, evaluate_int, simplify
from ir.loops import Exec, Loop, Move, Scratch, Slot, Tile
from ir.target import Instruction, Target

from .routes import copy_path, multicast_variant


@dataclass(frozen=True)
class Knobs:
    """How a stream-K program is laid out; the scheduler times a few settings and keeps the
    fastest (``VARIANTS``).  Steps are steps of phase 1 (one reduction step of every row a
    core runs at once)."""

    ahead: int = 4  # a row-operand load is issued this many steps' time before its first use
    batch_a: int = 2  # steps of row-operand blocks per load after the ramp
    batch_b: int = 2  # steps of the resident operand per multicast after the ramp
    ramp: int = 12  # the first steps load their operands one step at a time
    store_delay: int = 5  # steps between reading a finished row out and storing it
    partial_delay: int = 4  # ... and for partial sums (another core waits for them)
    margin: int = 100  # cycles allowed for main memory's queue when timing a hand-over
    phase2_lead: int = 35  # phase 2's loads are spread over this many steps before it
    tail: int = 4  # steps at the very end computed block by block
    late_finals: int = 0  # 1: final pieces run in phase 2 instead of at their own steps

    def items(self) -> tuple[tuple[str, int], ...]:
        return tuple((f.name, getattr(self, f.name)) for f in fields(self))

    @staticmethod
    def of(items) -> "Knobs":
        return Knobs(**dict(items))


# the settings the scheduler tries (the machine model's window, latencies and shared
# bandwidth interact; a few layouts cover what it rewards)
VARIANTS = (Knobs(), Knobs(batch_a=4), Knobs(late_finals=1))


def nest_schedule(nest, kn: Knobs):
    """The schedule of ``nest`` as stream-K laid out as ``kn`` (tiles, order and split are the
    lowering's own business)."""
    from schedulers.base import NestSchedule
    return NestSchedule(nest.statement, nest.step_index, tuple((a.name, 1) for a in nest.axes),
                        tuple(a.name for a in nest.axes), (), 1, kn.items())


def _partials(cores: list["CorePlan"]) -> int:
    """Pieces of the most-split leftover row: its partial sums need that many less one
    scratch tensors."""
    return max(p.index for cp in cores for p in cp.pieces) + 1


def _b(op: str, a: Expr, b: Expr) -> Expr:
    return simplify(Binary(op, a, b))


@dataclass
class Piece:
    row: int
    k0: int
    k1: int
    index: int = 0  # its place among the row's pieces (partial sums go to scratch tensor #index)
    final: bool = False  # holds the row's last steps: adds the others' partials and stores the row


@dataclass
class CorePlan:
    rows: list[int]
    pieces: list[Piece] = field(default_factory=list)


def plan(Mb: int, Kb: int, P: int) -> list[CorePlan] | None:
    """Rows and leftover pieces per core; None when stream-K does not apply.

    Each of the ``L`` leftover rows ends in a *final* piece of about one core's share of
    steps, on a core of its own (the last ``L`` cores); the rows' earlier steps are spread
    over the other cores.  So a row's other pieces end by step ``Kb - F`` of phase 1,
    long before its final piece runs in phase 2, and the hand-over through main memory
    never waits."""
    D = Mb // P
    L = Mb - D * P
    if D < 1 or L == 0:
        return None
    F = min(Kb, max(1, round(L * Kb / P)))
    cores = [CorePlan([c * D + i for i in range(D)]) for c in range(P)]
    by_row: dict[int, list[Piece]] = {}
    head = Kb - F  # steps of each leftover row before its final piece
    U = L * head
    Q = P - L
    for c in range(Q):
        a, b = c * U // Q, (c + 1) * U // Q
        u = a
        while u < b:
            r, k = divmod(u, head)
            end = min(b, (r + 1) * head)
            p = Piece(D * P + r, k, k + end - u)
            cores[c].pieces.append(p)
            by_row.setdefault(p.row, []).append(p)
            u = end
    for i in range(L):
        p = Piece(D * P + i, head, Kb, final=True)
        cores[Q + i].pieces.append(p)
        by_row.setdefault(p.row, []).append(p)
    for ps in by_row.values():
        for i, p in enumerate(ps):
            p.index = i
    return cores


def combine_instr(t: Target, memory: str, dtype) -> Instruction | None:
    """An instruction computing ``Z(i, j) = X(i, j) + Y(i, j)`` on blocks of ``memory``."""
    for c in t.compute_instrs:
        if len(c.body.stmts) != 1 or len(c.inputs) != 2 or len(c.outputs) != 1:
            continue
        s = c.body.stmts[0]
        if s.op != "=" or s.reduction_vars or not isinstance(s.rhs, Binary) or s.rhs.op != "+":
            continue
        ops = c.operands
        if any(o.memory != memory or o.dtype != dtype or o.shape != ops[0].shape for o in ops):
            continue
        names = {getattr(s.rhs.a, "tensor", None), getattr(s.rhs.b, "tensor", None)}
        same = all(tuple(getattr(x, "name", None) for x in getattr(e, "indices", ())) == tuple(s.indices)
                   for e in (s.rhs.a, s.rhs.b))
        if names == {o.name for o in c.inputs} and same:
            return c
    return None


def applicable(t: Target, n, kn: Knobs | None = None) -> str | None:
    """Why stream-K cannot lower nest ``n`` on ``t`` laid out as ``kn`` (None: it can)."""
    out = n.output
    red = [a for a in n.axes if a.reduction]
    if t.cores < 2 or len(out.axes) != 2 or len(red) != 1 or len(n.axes) != 3:
        return "needs a multi-core target and a 2-D output with one reduction axis"
    if not n.identity_first or n.load_output or n.temp_out is not None:
        return "the output must start from the reduction's identity"
    if n.instr.body.stmts[0].op != "+":
        return "only sums are split across cores (partial results are added)"
    if any(o.tensor is None or o.op.memory == t.main for o in n.operands):
        return "every operand must be staged on chip"
    ma, na = _axes(n)
    ra = red[0].name
    ins = n.inputs
    if len(ins) != 2 or {frozenset(o.axes) for o in ins} != {frozenset((ma, ra)), frozenset((ra, na))}:
        return "needs one operand along (rows, reduction) and one along (reduction, columns)"
    from .routes import route_out
    chain = route_out(t, n, out)
    if len(chain) != 2:
        return "the output must leave through one staging memory"
    stage = chain[0].outputs[0]
    if combine_instr(t, stage.memory, stage.dtype) is None:
        return f"no instruction adds two {stage.dtype} blocks in {stage.memory}"
    if copy_path(t, (t.main, stage.dtype.name), (stage.memory, stage.dtype.name)) is None:
        return "partial sums cannot be read back"
    cores = plan(n.axis(ma).blocks, red[0].blocks, t.cores)
    if cores is None:
        return "the rows divide evenly over the cores (or there are fewer rows than cores)"
    need: dict[str, int] = {}
    for op, slots in _buffers(t, n, cores, kn or Knobs()).values():
        need[op.memory] = need.get(op.memory, 0) + slots * op.bytes
    for mem, used in need.items():
        if used > t.memory(mem).capacity:
            return f"its buffers need {used} bytes of {mem} ({t.memory(mem).capacity})"
    return None


def _axes(n) -> tuple[str, str]:
    """(rows, columns): the output axis with more blocks is split into rows."""
    a, b = n.output.axes
    return (a, b) if n.axis(a).blocks >= n.axis(b).blocks else (b, a)


@dataclass
class _Shape:
    """A stream-K nest's axes, extents in blocks and operands."""
    ma: str  # rows
    na: str  # columns
    ra: str  # reduction
    Mb: int
    Nb: int
    Kb: int
    A: object  # along (rows, reduction)
    B: object  # along (reduction, columns): resident on every core


def _shape(n) -> _Shape:
    ma, na = _axes(n)
    (red,) = [a for a in n.axes if a.reduction]
    A = next(o for o in n.inputs if set(o.axes) == {ma, red.name})
    B = next(o for o in n.inputs if set(o.axes) == {red.name, na})
    return _Shape(ma, na, red.name, n.axis(ma).blocks, n.axis(na).blocks, red.blocks, A, B)


def cost(t: Target, n, kn: Knobs | None = None) -> dict:
    """Modelled cycles of the stream-K program (the analytical model's view): the first
    operands' latency, then the busiest of the busiest core's matrix units, its load port
    and the shared main memory, then the last block out."""
    from .routes import route_in, route_out
    sh = _shape(n)
    Mb, Nb, Kb, A, B = sh.Mb, sh.Nb, sh.Kb, sh.A, sh.B
    cores = plan(Mb, Kb, t.cores)
    out = n.output
    ld_a, ld_b, st_c = route_in(t, n, A)[0], route_in(t, n, B)[0], route_out(t, n, out)
    mc_b = multicast_variant(t, ld_b) or ld_b
    a_bytes = A.op.bytes * ld_a.inputs[0].dtype.itemsize // A.op.dtype.itemsize
    b_bytes = B.op.bytes * ld_b.inputs[0].dtype.itemsize // B.op.dtype.itemsize
    c_bytes = st_c[0].outputs[0].bytes
    mm_t = n.instr.cycles() / t.engine(n.instr.engine).count
    units = [len(cp.rows) * Kb + sum(p.k1 - p.k0 for p in cp.pieces) for cp in cores]
    compute = max(units) * Nb * mm_t
    port = max(Kb * Nb * b_bytes / mc_b.port + u * a_bytes / ld_a.port for u in units)
    pieces = sum(1 for cp in cores for p in cp.pieces if not p.final)
    main = Mb * Kb * a_bytes + Kb * Nb * b_bytes + Mb * Nb * c_bytes + 2 * pieces * Nb * c_bytes
    hbm = main / t.memory(t.main).bandwidth if t.memory(t.main).bandwidth else 0.0
    fill = mc_b.latency + (b_bytes / mc_b.port) + a_bytes / ld_a.port
    drain = n.instr.latency + st_c[0].cycles(c_bytes) + st_c[0].latency + st_c[1].cycles(c_bytes) + st_c[1].latency
    steps = max(units)  # row-steps of the busiest core
    body = max(compute, port, hbm)
    return {"cycles": fill + body + drain, "step": body / steps, "steps": steps,
            "busy": {n.instr.engine: compute, ld_a.engine: port}, "main_bytes": main, "hbm_cycles": hbm,
            "fill": fill, "drain": drain, "window_step": 0.0, "pressure": 0.0}


def _buffers(t: Target, n, cores: list[CorePlan], kn: Knobs) -> dict[str, tuple]:
    """The on-chip buffers of a stream-K program: name -> (operand, slots)."""
    from .routes import route_in, route_out
    sh = _shape(n)
    Nb, Kb, A, B = sh.Nb, sh.Kb, sh.A, sh.B
    D = len(cores[0].rows)
    out = n.output
    stage = route_out(t, n, out)[0].outputs[0]
    cnt_a = max(1, min(kn.batch_a, route_in(t, n, A)[0].batch))
    acc = (D + max(len(cp.pieces) for cp in cores)) * Nb
    nparts = _partials(cores)
    return {A.name: (A.op, 4 * (D + 1) * max(cnt_a, kn.ahead + 1)),
            f"{A.name}.late": (A.op, max(1, max(sum(p.k1 - p.k0 for p in cp.pieces) for cp in cores))),
            B.name: (B.op, Kb * Nb),
            out.name: (out.op, acc),
            f"{out.name}.stage": (stage, 2 * acc),
            f"{out.name}.partial": (stage, max(1, nparts - 1) * Nb)}


def lower_stream(nl, k, b, kn: Knobs) -> tuple[list, list[Scratch]]:
    """The loop program of ``nl``'s nest (a ``compiler.lower._NestLowering``) as stream-K,
    laid out as ``kn`` says."""
    from .lower import C
    t, n = nl.t, nl.n
    out = n.output
    sh = _shape(n)
    ma, na, ra, Mb, Nb, Kb, A, B = sh.ma, sh.na, sh.ra, sh.Mb, sh.Nb, sh.Kb, sh.A, sh.B
    P = t.cores
    cores = plan(Mb, Kb, P)
    D = Mb // P
    ld_a = nl.route_of(A, "in")
    ld_b = nl.route_of(B, "in")
    st_c = nl.route_of(out, "out")
    stage_op = st_c[0].outputs[0]
    ld_p = copy_path(t, (t.main, stage_op.dtype.name), (stage_op.memory, stage_op.dtype.name))
    add_i = combine_instr(t, stage_op.memory, stage_op.dtype)
    mcb = multicast_variant(t, ld_b[0])
    nb_ld = Nb if ld_p[0].batch >= Nb else 1
    cnt_a = max(1, min(kn.batch_a, ld_a[0].batch))
    steps_b = max(1, min(kn.batch_b * Nb, ld_b[0].batch) // Nb)
    sizes = _buffers(t, n, cores, kn)
    bufs = {name: nl.buffer(name, op, slots) for name, (op, slots) in sizes.items()}
    abuf, a2buf, bbuf = bufs[A.name], bufs[f"{A.name}.late"], bufs[B.name]
    cbuf, sbuf, pbuf = bufs[out.name], bufs[f"{out.name}.stage"], bufs[f"{out.name}.partial"]
    ring_a, acc_slots = sizes[A.name][1], sizes[out.name][1]
    nparts = _partials(cores)
    ct = k.tensor(out.tensor)
    scratch = [Scratch(f"_SP{nl.tag}_{i}", ct.dtype, tuple(b.shapes[out.tensor]), tuple(b.mins[out.tensor]))
               for i in range(nparts - 1)]
    core = Var(f"core{nl.tag}")
    j = Var(f"_j{nl.tag}")
    jn = Var(f"_n{nl.tag}")
    S = n.statement

    # ---- pass 1: every core's steps, and when each is expected to run (to place the
    # partial-sum hand-overs where they will not wait)
    mm_t = n.instr.cycles() / t.engine(n.instr.engine).count
    lat = max(c.latency for c in ld_a)
    steps_of, est_of, last_of_core = [], [], []
    for cp in cores:
        rows = cp.rows
        # phase 1: the first D - 1 rows at every step, each piece at its own steps, the last
        # row at the others; phase 2: the last row at the pieces' steps (with ``late_finals``
        # the final pieces run first in phase 2 instead)
        sk: dict[int, list[int]] = {}
        for i, p in enumerate(cp.pieces):
            if not (kn.late_finals and p.final):
                for kk in range(p.k0, p.k1):
                    sk.setdefault(kk, []).append(i)
        steps: list[list[tuple]] = []  # per step: (row, reduction step, accumulator group)
        for kk in range(Kb):
            units = [(r, kk, i) for i, r in enumerate(rows[:-1])]
            units += [(cp.pieces[i].row, kk, D + i) for i in sk[kk]] if kk in sk else [(rows[-1], kk, D - 1)]
            steps.append(units)
        if kn.late_finals:
            for i, p in enumerate(cp.pieces):
                if p.final:
                    steps += [[(p.row, kk, D + i)] for kk in range(p.k0, p.k1)]
        steps += [[(rows[-1], kk, D - 1)] for kk in sorted(sk)]
        est, now = [], lat + 2 * (Nb + 1) * 16.0  # the first operands' latency, roughly
        for units in steps:
            est.append(now)
            now += len(units) * Nb * mm_t
        est.append(now)
        last_of: dict[int, int] = {}
        for si, units in enumerate(steps):
            for _, _, g in units:
                last_of[g] = si
        steps_of.append(steps)
        est_of.append(est)
        last_of_core.append(last_of)
    stored_at: dict[tuple[int, int], float] = {}  # (row, piece index) -> when its partial is in main memory
    for c, cp in enumerate(cores):
        for i, p in enumerate(cp.pieces):
            if not p.final:
                si = min(last_of_core[c][D + i] + 1 + kn.partial_delay + Nb, len(est_of[c]) - 1)
                stored_at[(p.row, p.index)] = est_of[c][si] + lat + kn.margin
    step_t = max(len(u) for u in steps_of[0]) * Nb * mm_t

    def step_at(est: list[float], time: float) -> int:
        return next((si for si, x in enumerate(est[:-1]) if x >= time), len(est) - 2)

    # ---- pass 2: one straight-line section per core
    sections = []
    for c, cp in enumerate(cores):
        steps, est, last_of = steps_of[c], est_of[c], last_of_core[c]
        nsteps = len(steps)
        rows = cp.rows
        first_step: dict[int, int] = {}
        for si, units in enumerate(steps):
            for _, _, g in units:
                first_step.setdefault(g, si)
        pre: dict[int, list] = {}  # step -> what goes before its products
        post: dict[int, list] = {}  # ... and after them

        def cap(si: int, full: int) -> int:
            return 1 if si < kn.ramp else full

        loads: list[tuple] = []  # (first use, kind, order, move or (phase-2 index, move))
        # the resident operand: the same chunks on every core in reduction order, so one
        # multicast serves all; the first chunk holds just the first product's block
        chunks = [1, Nb - 1] if Nb > 1 else [1]
        t0 = 0
        while t0 < Kb * Nb:
            w = min(chunks.pop(0) if chunks else cap(t0 // Nb, steps_b) * Nb, Kb * Nb - t0)
            lin = _b("+", C(t0), j)
            tile = nl.tile_ref(B, {ra: _b("/", lin, C(Nb)), na: _b("%", lin, C(Nb))})
            loads.append((t0 // Nb, 0, len(loads), Move((mcb or ld_b[0]).name, tile, Slot(bbuf, lin), (),
                                                          mcb is not None, S, w, j.name)))
            t0 += w
        # the row operand: blocks of consecutive rows over a few consecutive steps per load;
        # after the ramp the batch boundaries fall at different steps on different cores, so
        # their loads reach the shared main memory spread out rather than at once
        a_slot: dict[tuple[int, int], tuple[str, int]] = {}
        batches: list[list] = []  # [first step, rows, first reduction step, steps]
        for si, units in enumerate(steps):
            rws = tuple(sorted(r for r, _, _ in units))
            kk = units[0][1]
            cur = batches[-1] if batches else None
            if cur is not None and cur[1] == rws and cur[2] + cur[3] == kk and \
                    (cur[3] + 1) * len(rws) <= ld_a[0].batch:
                if cur[0] < kn.ramp:
                    full = cur[3] >= cap(cur[0], cnt_a)
                else:
                    full = (kk + c * cnt_a // min(P, cnt_a)) % cnt_a == 0
                if not full:
                    cur[3] += 1
                    continue
            batches.append([si, rws, kk, 1])
        nxt, nxt2, n2 = 0, 0, 0
        for si, rws, k0, ns in batches:
            runs, run = [], [rws[0]]
            for r in rws[1:]:
                if r == run[-1] + 1:
                    run.append(r)
                else:
                    runs.append(run)
                    run = [r]
            runs.append(run)
            for g_rows in runs:
                nr, cnt = len(g_rows), len(g_rows) * ns
                if si >= Kb:  # phase 2's blocks: slots of their own, loaded long before
                    buf, base = a2buf, nxt2
                    nxt2 += cnt
                else:
                    if nxt + cnt > ring_a:
                        nxt = 0
                    buf, base = abuf, nxt
                    nxt += cnt
                for x in range(cnt):
                    a_slot[(g_rows[0] + x % nr, k0 + x // nr)] = (buf, base + x)
                if cnt == 1:
                    blk = {ma: C(g_rows[0]), ra: C(k0)}
                elif nr > 1:
                    blk = {ma: _b("+", C(g_rows[0]), _b("%", j, C(nr))), ra: _b("+", C(k0), _b("/", j, C(nr)))}
                else:
                    blk = {ma: C(g_rows[0]), ra: _b("+", C(k0), j)}
                mv = Move(ld_a[0].name, nl.tile_ref(A, blk), Slot(buf, C(base) if cnt == 1 else _b("+", C(base), j)),
                          (), False, S, cnt, "" if cnt == 1 else j.name)
                if si >= Kb:
                    loads.append((si, 1, len(loads), (n2, mv)))
                    n2 += 1
                else:
                    loads.append((si, 1, len(loads), mv))
        first2 = max(0, Kb - kn.phase2_lead)
        gap2 = max(1, (Kb - 4 - first2) // max(1, n2))
        # by first use; for the first step the row blocks lead (the resident operand's first
        # block has the longer multicast latency but comes right after; measured the better
        # order on 1760x128x1760)
        loads.sort(key=lambda x: (x[0], -x[1] if x[0] == 0 else x[1], x[2]))
        for need, _, _, mv in loads:
            if isinstance(mv, tuple):  # phase 2's loads, spread evenly over the end of phase 1
                at = first2 + mv[0] * gap2
                mv = mv[1]
            else:  # ``ahead`` steps' time before use
                at = step_at(est, est[need] - kn.ahead * step_t) if need else 0
            pre.setdefault(min(at, need), []).append(mv)

        stage_next = [0]

        def to_stage(g: int) -> tuple[list, int]:
            """Accumulator group ``g`` read out into staging slots."""
            s0 = stage_next[0]
            stage_next[0] = (s0 + Nb) % (2 * acc_slots)
            return [Move(st_c[0].name, Slot(cbuf, C(g * Nb + x)), Slot(sbuf, C(s0 + x)), (), False, S)
                    for x in range(Nb)], s0

        def store(s0: int, r: int, tensor: str | None) -> list:
            moves = []
            for x in range(Nb):
                tile = nl.tile_ref(out, {ma: C(r), na: C(x)})
                moves.append(Move(st_c[1].name, Slot(sbuf, C(s0 + x)),
                                  replace(tile, tensor=tensor) if tensor else tile, (), False, S))
            return moves

        def add(acc: Slot, other: Slot) -> Exec:
            """acc = acc + other (the reduction's combine on two staged blocks)."""
            names = [o.name for o in add_i.inputs] + [add_i.outputs[0].name]
            return Exec(add_i.name, tuple(zip(names, (acc, other, acc))), (), None, (), S)

        def later(si: int, by: int) -> int:
            return min(si + by, nsteps - 1)

        # the last few steps of the core's last group run block by block, so its blocks
        # leave one after another instead of all after the last product
        g_last = steps[-1][-1][2]
        tail = 0
        while tail < min(kn.tail, nsteps) and all(g == g_last for _, _, g in steps[nsteps - 1 - tail]):
            tail += 1
        tail_out: list[list] = [[] for _ in range(Nb)]
        for g, si in last_of.items():
            rd, s0 = to_stage(g)
            p = cp.pieces[g - D] if g >= D else None
            if p is None or p.final:
                dst, delay = None, (kn.store_delay if p is None else 2)
            else:
                dst, delay = f"_SP{nl.tag}_{p.index}", kn.partial_delay
            sts = store(s0, rows[g] if p is None else p.row, dst)
            adds = [[] for _ in range(Nb)]
            s_fin = si
            if p is not None and p.final and p.index:
                # the partials the other cores stored, read once they are surely there and
                # summed while this core still computes; then one add per block
                s_ld = step_at(est, max(stored_at[(p.row, i)] for i in range(p.index)))
                if g == g_last and tail:
                    s_ld = max(0, min(s_ld, nsteps - tail - 1))
                for i in range(p.index):
                    if nb_ld > 1:
                        tile = replace(nl.tile_ref(out, {ma: C(p.row), na: j}), tensor=f"_SP{nl.tag}_{i}")
                        pre.setdefault(s_ld, []).append(Move(ld_p[0].name, tile, Slot(pbuf, _b("+", C(i * Nb), j)),
                                                             (), False, S, Nb, j.name))
                        continue
                    for x in range(Nb):
                        tile = replace(nl.tile_ref(out, {ma: C(p.row), na: C(x)}), tensor=f"_SP{nl.tag}_{i}")
                        pre.setdefault(s_ld, []).append(Move(ld_p[0].name, tile, Slot(pbuf, C(i * Nb + x)), (),
                                                             False, S))
                s_sum = step_at(est, est[s_ld] + lat + kn.margin)
                if g == g_last and tail:  # the sums must be complete before the block-by-block end
                    s_sum = max(0, min(s_sum, nsteps - tail - 1))
                post.setdefault(s_sum, []).extend(add(Slot(pbuf, C(x)), Slot(pbuf, C(i * Nb + x)))
                                                  for i in range(1, p.index) for x in range(Nb))
                adds = [[add(Slot(sbuf, C(s0 + x)), Slot(pbuf, C(x)))] for x in range(Nb)]
                s_fin = min(max(si, s_sum + 1), nsteps - 1)
            if g == g_last and tail:
                tail_out = [[rd[x]] + adds[x] + [sts[x]] for x in range(Nb)]
                continue
            post.setdefault(si, []).extend(rd)
            post.setdefault(s_fin, []).extend(a for x in range(Nb) for a in adds[x])
            # a store waits out main memory's latency in the window: some steps after the
            # read-out, one block a step
            for x, mv in enumerate(sts):
                post.setdefault(later(s_fin, delay + x), []).append(mv)

        def mm(r: int, kk: int, g: int, x: Expr, si: int) -> Exec:
            ops = []
            for o in n.operands:
                if o is A:
                    ops.append((o.name, Slot(a_slot[(r, kk)][0], C(a_slot[(r, kk)][1]))))
                elif o is B:
                    ops.append((o.name, Slot(bbuf, _b("+", C(kk * Nb), x))))
                else:
                    ops.append((o.name, Slot(cbuf, _b("+", C(g * Nb), x))))
            first = C(0) if first_step[g] == si else C(1)
            return Exec(n.instr.name, tuple(ops), (), n.init_instr.name if n.init_instr else None, (first,), S)

        body: list = []
        for si, units in enumerate(steps):
            if si < nsteps - tail:
                body += pre.get(si, [])
                body += [Loop(jn.name, C(Nb), (mm(r, kk, g, jn, si),)) for r, kk, g in units]
                body += post.get(si, [])
            elif si == nsteps - tail:
                for sj in range(si, nsteps):
                    body += pre.get(sj, [])
                for x in range(Nb):
                    body += [mm(r, kk, g, C(x), sj) for sj in range(si, nsteps) for r, kk, g in steps[sj]]
                    body += tail_out[x]
                for sj in range(si, nsteps):
                    body += post.get(sj, [])
        body = _unchain(body, t.window)
        on = _b("max", C(0), _b("-", C(1), _b("max", _b("-", core, C(c)), _b("-", C(c), core))))
        sections.append(Loop(f"_on{nl.tag}_{c}", on, tuple(body)))
    return [Loop(core.name, C(P), tuple(sections), parallel=True)], scratch


def _size(x) -> int:
    """Instructions a node issues (a loop of executions: one per iteration)."""
    if isinstance(x, Loop):
        return int(x.extent.value) * sum(_size(y) for y in x.body)
    return 1


def _far(x) -> bool:
    """A transfer to or from main memory: in flight for hundreds of cycles."""
    return isinstance(x, Move) and (isinstance(x.src, Tile) or isinstance(x.dst, Tile))


def _writes(x: Move) -> set:
    d = x.dst
    if not isinstance(d, Slot):
        return set()
    return {(d.buffer, evaluate_int(d.index, {x.sub: j} if x.sub else {})) for j in range(x.count)}


def _reads(x) -> set:
    """The slots a loop of executions reads."""
    out = set()
    for i in range(int(x.extent.value)):
        for e in x.body:
            for _, ref in e.operands:
                if isinstance(ref, Slot):
                    out.add((ref.buffer, evaluate_int(ref.index, {x.var: i})))
    return out


def _unchain(body: list, window: int) -> list:
    """Delay main-memory transfers so that none sits exactly ``window`` instructions after
    another: an instruction waits for the one ``window`` places before it to finish, and
    two such transfers in a row would wait out both latencies back to back."""
    out: list = []
    far_at: set[int] = set()
    at = 0
    held: list = []  # transfers waiting for a position that is not ``window`` after another

    def put(x):
        nonlocal at
        if _far(x):
            far_at.add(at)
        out.append(x)
        at += _size(x)

    for x in body:
        if _far(x):
            held.append(x)
        else:
            if held and (not isinstance(x, Loop) or _reads(x) & set().union(*(_writes(h) for h in held))):
                # never past what uses what they bring (or a read-out, an add they may follow)
                for h in held:
                    put(h)
                held = []
            put(x)
        while held and (at - window) not in far_at:
            put(held.pop(0))
    for h in held:
        put(h)
    return out
