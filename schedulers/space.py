"""The schedule space: lowerable mappings per statement and the legality of tilings."""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from ir.bind import Bound
from ir.errors import IsamapError
from ir.kernel import Kernel
from ir.target import Target

from compiler.mapping import Mapping, mappings_for_statement
from compiler.nest import Nest, Unsupported, build_nests

from .base import NestSchedule


@dataclass
class Candidate:
    mapping: Mapping
    nests: list[Nest]


def candidates(k: Kernel, b: Bound, target: Target) -> list[list[Candidate]]:
    """Per statement, the legal mappings the lowering supports (deterministic order)."""
    out = []
    for si, s in enumerate(k.stmts):
        ms = mappings_for_statement(k, si, target, b)
        cands, why = [], []
        for m in ms:
            if not m.legal:
                why.append(m.reason)
                continue
            try:
                cands.append(Candidate(m, build_nests(k, b, target, m)))
            except Unsupported as e:
                why.append(f"{m.instruction}: {e}")
        if not cands:
            distinct = list(dict.fromkeys(why))
            raise IsamapError(f"no instruction of {target.name} can perform this statement",
                              s.span, notes=distinct[-4:] or ["no instruction matches"])
        out.append(cands)
    return out


def buffer_memories(target: Target, nest: Nest) -> dict[str, list[tuple[str, int]]]:
    """memory -> [(what, bytes per block)] for the on-chip tiles a nest keeps."""
    from compiler.routes import route_in, route_out
    out: dict[str, list[tuple[str, int]]] = {}
    for o in nest.operands:
        if o.tensor is None:
            continue
        out.setdefault(o.op.memory, []).append((o.name, o.op.bytes))
        hops = route_out(target, nest, o) if o.is_output else route_in(target, nest, o)
        for c in hops[:-1] if not o.is_output else hops[1:]:
            mem = c.outputs[0] if not o.is_output else c.inputs[0]
            out.setdefault(mem.memory, []).append((f"{o.name}@{mem.memory}", mem.bytes))
    return out


@dataclass
class Pipeline:
    """The software pipeline of a scheduled nest, per core: steps are tiles in loop order."""

    steps: int
    tiles: dict[str, int]  # axis -> tiles per core
    stride: dict[str, int]  # axis -> steps between increments of its tile index
    inner: dict[str, int]  # operand -> steps during which its tile stays the same
    slots: dict[str, int]  # operand -> tiles it keeps in flight


def pipeline(target: Target, nest: Nest, ns: NestSchedule) -> Pipeline:
    from math import ceil
    tiles = {}
    for a in nest.axes:
        tiles[a.name] = ceil(ceil(a.blocks / ns.parts(a.name)) / ns.tile(a.name))
    stride, acc = {}, 1
    for a in reversed(ns.order):
        stride[a] = acc
        acc *= tiles[a]
    steps = acc
    inner, slots = {}, {}
    d = max(0, ns.prefetch)
    for o in nest.operands:
        if o.tensor is None:
            continue
        # the tile changes when the innermost of its axes that has several tiles advances
        moving = [a for a in o.axes if tiles[a] > 1]
        lvl = max((ns.order.index(a) for a in moving), default=-1)
        inner[o.name] = stride[ns.order[lvl]] if lvl >= 0 else steps
        loads = steps // inner[o.name]
        # an output tile changing every step (elementwise nests) keeps as many in flight as the
        # inputs: a slot is free again only once its store has landed (the store's latency), so
        # two slots stalled each step on the store before last (softmax 64x1000 on sim-nnp
        # 11291 -> 9791 cycles); a GEMM's output changes every K loop, and keeps two
        slots[o.name] = min(loads, d // inner[o.name] + 2 if d else 1)
        if o.is_output and ns.out_slots:
            slots[o.name] = min(slots[o.name], ns.out_slots)
    return Pipeline(steps, tiles, stride, inner, slots)


def footprint(target: Target, nest: Nest, ns: NestSchedule) -> dict[str, int]:
    """Bytes each memory needs for this schedule (per core), pipeline slots included."""
    use: dict[str, int] = {}
    pl = pipeline(target, nest, ns)
    for o in nest.operands:
        if o.tensor is None or o.op.memory == target.main:
            continue
        blocks = prod(ns.tile(a) for a in o.axes)
        use[o.op.memory] = use.get(o.op.memory, 0) + pl.slots[o.name] * blocks * o.op.bytes
    from compiler.routes import route_in, route_out
    for o in nest.operands:  # staging slots of multi-hop routes: two tiles each
        if o.tensor is None:
            continue
        hops = route_out(target, nest, o) if o.is_output else route_in(target, nest, o)
        inter = [c.outputs[0] for c in hops[:-1]] if not o.is_output else [c.inputs[0] for c in hops[1:]]
        blocks = prod(ns.tile(a) for a in o.axes)
        elems = prod(o.op.shape) if o.op.shape else 1
        for m in inter:
            if m.memory != target.main:
                use[m.memory] = use.get(m.memory, 0) + 2 * blocks * elems * m.dtype.itemsize
    return use


def fits(target: Target, nest: Nest, ns: NestSchedule) -> str | None:
    for mem, need in footprint(target, nest, ns).items():
        cap = target.memory(mem).capacity
        if need > cap:
            return f"{mem} needs {need} bytes but holds {cap}"
    return None


def make_resident(target: Target, cands: list[list[Candidate]], sched, tensors) -> tuple:
    """Widen tiles so each listed input tensor is one tile per core (loaded once per run).

    Returns the new schedule and the tensors that became resident; a tensor stays
    streamed where its per-core slice does not fit on chip.  Together with the
    simulator's reuse of unchanged blocks across runs this keeps, e.g., recurrent
    weights on chip across the timesteps of an RNN."""
    from dataclasses import replace
    from math import ceil
    tensors = set(tensors)
    nests = list(sched.nests)
    resident: set[str] = set()
    for i, ns in enumerate(nests):
        c = cands[ns.statement][sched.mappings[ns.statement]]
        nest = c.nests[ns.step]
        for o in nest.inputs:
            if o.tensor not in tensors:
                continue
            tiles = dict(ns.tiles)
            for a in o.axes:
                tiles[a] = ceil(nest.axis(a).blocks / ns.parts(a))
            for pf in (ns.prefetch, 1, 0):
                cand = replace(ns, tiles=tuple(tiles.items()), prefetch=pf)
                if fits(target, nest, cand) is None:
                    nests[i] = ns = cand
                    resident.add(o.tensor)
                    break
    return replace(sched, nests=tuple(nests)), sorted(resident)
