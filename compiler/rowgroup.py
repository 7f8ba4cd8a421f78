"""Row groups: consecutive statements over the same rows run together, a row block at a time,
their intermediates kept on chip (accelerator targets).

Softmax and layer normalisation are chains of statements that each reduce or rescale
whole rows::

    mx(n) max=! I(n, d)
    e(n, d) = exp(I(n, d) - mx(n))
    s(n) +=! e(n, d)
    O(n, d) = e(n, d) / s(n)

Run one statement at a time, with a barrier between them, every statement reads its
operands from main memory: I twice and e twice, each behind a main-memory round trip.
In a row group the cores split the rows (the axes every statement's output keeps) and
each core takes its row blocks one at a time: per row block, every statement runs over
all of its columns in turn, reading what an earlier one computed (or loaded) from the
slots it is held in.  Main memory sees I once and each output once.

What it takes (``plan``): every nest's axes agree, by name, with the same axes of the
other nests (variables, range, instruction extent); a tensor computed in the group is
read at the very blocks it was written (same access, same instruction dimensions, same
memory, element type and block shape) or the group stops before the reader; nothing in
the group writes a tensor an earlier member loaded from main memory or reads its own
old value (``+=``).  Padding: blocks past the end of a column axis hold whatever their
producer computed from its padded operands; a reduction over that axis needs them to
hold its identity, so the value of the padding is followed through each instruction
(``exp(-inf - mx) = 0``: softmax's sum over a padded row is exact) and a member whose
reduction would see anything else ends the group.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import prod

import numpy as np

from ir.bind import bind
from ir.expr import strip_types
from ir.interp import execute
from ir.kernel import Kernel
from ir.target import Target

from schedulers.base import NestSchedule, Schedule
from schedulers.cost import nest_cost

from .epilogue import _operand_dims
from .nest import Nest

SAMPLES = (np.float32(0.37), np.float32(-1.75), np.float32(2.5))  # values of operands that are not padded


@dataclass
class Group:
    statements: list[int]
    nests: list[Nest]
    schedules: list[NestSchedule]
    rows: list[str]  # the axes split across cores, one block of them per step
    # per nest (by position): operand name -> (position of the nest holding it, that nest's operand)
    forward: list[dict[str, tuple[int, str]]] = field(default_factory=list)
    stores: list[bool] = field(default_factory=list)  # per nest: does its output reach main memory

    @property
    def on_chip(self) -> set[str]:
        """Temporaries the group computes and never stores (they need no scratch)."""
        return {n.output.tensor for n, st in zip(self.nests, self.stores) if not st
                and n.output.tensor.startswith("_S")}


def _padded(nest: Nest) -> set[str]:
    return {a.name for a in nest.axes if a.total % a.unit}


def _output_pad(nest: Nest, pads: dict[str, float | None], padded: set[str]) -> float | None:
    """The value the nest's output takes past a padded axis's end, given its operands' padding
    there (None: not one constant).  Operands that do not span a padded axis take sample values."""
    ist = nest.instr.body.stmts[0]
    if ist.op != "=":
        return None
    out = nest.output
    bound = bind(nest.instr.body, {})
    seen = set()
    for sample in SAMPLES:
        arrays = {}
        for o in nest.operands:
            if o.is_output:
                continue
            shape = o.op.shape or ()
            if o.tensor is not None and set(o.axes) & padded:
                p = pads.get(o.name)
                if p is None or (o.op.dtype.kind in "iub" and not np.isfinite(p)):
                    return None  # (an integer block padded with an infinite identity: not followed)
                arrays[o.name] = np.full(shape, p, dtype=o.op.dtype.np)
            else:  # one value per row of the block (a column operand), or a scalar
                base = sample + np.arange(prod(shape) or 1, dtype=np.float32).reshape(shape or ()) * 0.01
                arrays[o.name] = base.astype(o.op.dtype.np)
        with np.errstate(all="ignore"):
            res = np.asarray(execute(bound, arrays)[out.name], dtype=np.float64)
        vals = np.unique(res)
        if len(vals) != 1 and not (np.isnan(res).all()):
            return None
        seen.add(float(vals[0]) if not np.isnan(vals[0]) else float("nan"))
    if len(seen) != 1:
        return None
    v = seen.pop()
    return None if v != v else v  # NaN: no identity of anything


def _same_block(a: Nest, ao, b: Nest, bo) -> bool:
    """Operand ``ao`` of nest ``a`` holds the very blocks operand ``bo`` of ``b`` reads."""
    return (ao.tensor == bo.tensor and strip_types(ao.access) == strip_types(bo.access)
            and not ao.gather and not bo.gather
            and (ao.op.memory, ao.op.dtype, tuple(ao.op.shape)) == (bo.op.memory, bo.op.dtype, tuple(bo.op.shape))
            and _operand_dims(a, ao.name) == _operand_dims(b, bo.name) and ao.axes == bo.axes)


def _try(k: Kernel, target: Target, nests: list[Nest]) -> Group | None:
    """The group of these nests (in program order), or None where it cannot run as one."""
    sig: dict[str, tuple] = {}
    for n in nests:
        if n.load_output or any(o.op.memory == target.main or o.gather or o.window for o in n.operands if o.tensor):
            return None
        for a in n.axes:
            s = (a.vars, a.lows, a.extents, a.unit)
            if sig.setdefault(a.name, s) != s:
                return None
    rows = [a.name for a in nests[0].axes if all(a.name in n.output.axes for n in nests)]
    if not rows:
        return None
    forward: list[dict[str, tuple[int, str]]] = []
    written: dict[str, tuple[int, str]] = {}  # tensor -> latest (nest position, output operand)
    loaded: dict[str, list[tuple[int, str]]] = {}  # tensor -> (nest, operand) that loaded it
    pads: dict[tuple[int, str], float | None] = {}  # (nest, operand) -> the value past a padded end
    for i, n in enumerate(nests):
        padded = _padded(n) - set(rows)  # rows are never reduced: their padding is never read
        own = n.pad  # what this nest's own loads put past a tensor's end
        fw: dict[str, tuple[int, str]] = {}
        red_padded = {a.name for a in n.axes if a.reduction} & padded
        op_pads: dict[str, float | None] = {}
        for o in n.inputs:
            if o.tensor in written:
                j, name = written[o.tensor]
                src = nests[j]
                so = src.operand(name)
                if not _same_block(src, so, n, o):
                    return None
                p = pads.get((j, name))
                if set(o.axes) & red_padded and p != own:
                    return None  # the reduction would take the producer's padding as data
                fw[o.name] = (j, name)
                op_pads[o.name] = p
                continue
            # from main memory: share an earlier member's load of the same blocks where its
            # padding suits this nest, else load it here
            for j, name in loaded.get(o.tensor, ()):
                if j == i:
                    continue  # this nest's own load: an operand has its own slots
                src = nests[j]
                so = src.operand(name)
                p = pads.get((j, name))
                if _same_block(src, so, n, o) and (not (set(o.axes) & red_padded) or p == own):
                    fw[o.name] = (j, name)
                    op_pads[o.name] = p
                    break
            else:
                loaded.setdefault(o.tensor, []).append((i, o.name))
                pads[(i, o.name)] = own
                op_pads[o.name] = own
        out = n.output
        if out.tensor in loaded or any(x.tensor == out.tensor and x.name not in fw for x in n.inputs):
            return None  # overwrites what an earlier member (or this one) reads from main memory
        pads[(i, out.name)] = _output_pad(n, op_pads, padded) if set(out.axes) & padded else 0.0
        written[out.tensor] = (i, out.name)
        forward.append(fw)
    return Group(sorted({n.statement for n in nests}), nests, [], rows, forward)


def _schedules(target: Target, g: Group) -> list[NestSchedule]:
    """One row block per step, every other axis whole; the row blocks split across the cores."""
    first = g.nests[0]
    split, left = [], target.cores
    for a in sorted(g.rows, key=lambda x: -first.axis(x).blocks):
        p = min(left, first.axis(a).blocks)
        if p > 1:
            split.append((a, p))
            left //= p
    split.sort(key=lambda x: g.rows.index(x[0]))
    out = []
    for n in g.nests:
        tiles = tuple((a.name, 1 if a.name in g.rows else a.blocks) for a in n.axes)
        order = ([a for a in g.rows] + [a.name for a in n.axes if a.name not in g.rows and not a.reduction]
                 + [a.name for a in n.axes if a.reduction])
        out.append(NestSchedule(n.statement, n.step_index, tiles, tuple(order), tuple(split), 1))
    return out


def fits(target: Target, g: Group) -> bool:
    """Whether the group's slots fit on chip together: every nest's own (``footprint``) but
    those of the operands it reads from another nest's slots."""
    from schedulers.space import footprint, pipeline
    use: dict[str, int] = {}
    for n, ns, fw in zip(g.nests, g.schedules, g.forward):
        pl = pipeline(target, n, ns)
        for mem, v in footprint(target, n, ns).items():
            use[mem] = use.get(mem, 0) + v
        for o in n.operands:
            if o.name in fw:
                use[o.op.memory] -= pl.slots[o.name] * o.tile_blocks(ns.tile_of) * o.op.bytes
    return all(v <= target.memory(m).capacity for m, v in use.items())


def plan(k: Kernel, target: Target, chosen: list[list[Nest]], start: int, pairs=()) -> Group | None:
    """The longest group of whole statements from ``start`` on (at least two, or one whose
    instruction sequence's steps read each other's results), each with its chosen nests, that
    takes both or neither of each (epilogue, producer) pair in ``pairs``.  Which outputs are
    stored: every kernel output's last value in the group and every temporary a statement
    after the group reads."""
    best = None
    nests: list[Nest] = []
    for si in range(start, len(chosen)):
        if not chosen[si]:
            break
        g = _try(k, target, nests + chosen[si])
        if g is None:
            break
        g.schedules = _schedules(target, g)
        if not fits(target, g):
            break
        nests = nests + chosen[si]
        whole = all((c in g.statements) == (p in g.statements) for c, p in pairs)
        if whole and any(g.forward) and (si > start or len(g.nests) > 1):
            best = g
    if best is None:
        return None
    after = {o.tensor for ns in chosen[best.statements[-1] + 1:] for n in ns for o in n.inputs}

    def overwritten(i: int, n: Nest) -> bool:  # a later member writes the same blocks again
        return any(_same_block(m, m.output, n, n.output) for m in best.nests[i + 1:])
    best.stores = [not overwritten(i, n) and (not n.output.tensor.startswith("_S") or n.output.tensor in after)
                   for i, n in enumerate(best.nests)]
    return best


def groups(k: Kernel, target: Target, chosen: list[list[Nest]], fused: dict[int, int] | None = None) -> list[Group]:
    """The row groups of a kernel with these nests per statement, in program order.  A statement
    fused into another's nest as its epilogue runs there (no round trip at all): a group takes
    such a pair whole or not at all (layernorm's mean and mean / D go together).  ``fused``:
    ``epilogue.fused_statements`` of ``chosen``, where the caller has it already."""
    if fused is None:
        from .epilogue import fused_statements
        fused = fused_statements(k, target, chosen)
    out, si = [], 0
    while si < len(chosen):
        g = plan(k, target, chosen, si, fused.items())
        if g is None:
            si += 1
            continue
        out.append(g)
        si = g.statements[-1] + 1
    return out


def estimate(target: Target, g: Group) -> float:
    """Cycles of the group by the analytical model (``schedulers.cost``): its nests interleave
    step by step, so each resource's busy time adds up across them (forwarded operands move
    nothing), the busiest one paces the steps, and the first loads and the last stores are
    waited for once.  Run apart, each statement pays its own fill and drain and keeps every
    core busy; a group keeps only as many cores as it has row blocks, which loses to that for
    few, long rows (softmax 64 x 4000 on sim-nnp: 31557 cycles grouped, 19615 apart)."""
    busy: dict[str, float] = {}
    hbm = 0.0
    costs = []
    for n, ns, fw in zip(g.nests, g.schedules, g.forward):
        own = replace(n, operands=[o for o in n.operands if o.name not in fw])
        c = nest_cost(target, own, ns)
        costs.append(c)
        for e, v in c["busy"].items():
            busy[e] = busy.get(e, 0.0) + v
        hbm += c["hbm_cycles"]
    return max(max(busy.values(), default=0.0), hbm) + costs[0]["fill"] + costs[-1]["drain"]


def apply(k: Kernel, target: Target, cands, sched: Schedule, force: bool = False) -> Schedule:
    """``sched`` with the nests of each row group the model expects to be faster (``force``:
    of every legal one) scheduled as the group runs them (the lowering groups exactly the nests
    scheduled so); unchanged without fusion or with stream-K."""
    if not sched.fuse or any(ns.stream for ns in sched.nests) or not sched.nests:
        return sched
    chosen = [cs[sched.mappings[si]].nests for si, cs in enumerate(cands)]
    from .epilogue import fused_statements
    fused = fused_statements(k, target, chosen)

    def apart(g: Group) -> float:  # an epilogue runs in its producer's nest: only the producer costs
        return sum(nest_cost(target, n, sched.nest(n.statement, n.step_index))["cycles"] for n in g.nests
                   if n.statement not in fused)
    found = [g for g in groups(k, target, chosen, fused) if force or estimate(target, g) < apart(g)]
    new = {(ns.statement, ns.step): ns for g in found for ns in g.schedules}
    if not new:
        return sched
    # the cost model's figure was for the statements run apart; a simulated one (search.py
    # verifies through tune.measure, which groups too) still stands
    predicted = {key: v for key, v in sched.predicted.items() if key != "cycles"}
    predicted["row groups"] = " ".join("S" + "-S".join(map(str, (g.statements[0], g.statements[-1])))
                                       for g in found)
    return replace(sched, nests=tuple(new.get((ns.statement, ns.step), ns) for ns in sched.nests),
                   predicted=predicted)
