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
    earlier: dict[int, list[Mapping]] = {}
    for si, s in enumerate(k.stmts):
        ms = earlier[si] = mappings_for_statement(k, si, target, b, earlier=earlier)
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


def _loop_shape(nest: Nest, ns: NestSchedule) -> tuple:
    """(tiles, stride, steps, inner) of a tiling: what its pipeline is before the prefetch
    distance and output slots are chosen.  The search asks this for one tiling several times
    running (the prefetch it fits, the memory it needs, its cost): the last answer is kept."""
    key = (ns.tiles, ns.order, ns.split)
    last = nest.__dict__.get("_loop_shape")
    if last is not None and last[0] == key:
        return last[1]
    tile_of, parts_of = ns.tile_of, ns.parts_of
    tiles = {}
    for a in nest.axes:
        per_core = -(-a.blocks // parts_of.get(a.name, 1))
        tiles[a.name] = -(-per_core // tile_of[a.name])
    stride, acc = {}, 1
    for a in reversed(ns.order):
        stride[a] = acc
        acc *= tiles[a]
    steps = acc
    position = {a: i for i, a in enumerate(ns.order)}
    inner = {}
    for o in nest.operands:
        if o.tensor is None:
            continue
        # the tile changes when the innermost of its axes that has several tiles advances
        lvl = max((position[a] for a in o.axes if tiles[a] > 1), default=-1)
        inner[o.name] = stride[ns.order[lvl]] if lvl >= 0 else steps
    out = (tiles, stride, steps, inner)
    nest.__dict__["_loop_shape"] = (key, out)
    return out


def pipeline(target: Target, nest: Nest, ns: NestSchedule) -> Pipeline:
    tiles, stride, steps, inner = _loop_shape(nest, ns)
    slots = {}
    d = max(0, ns.prefetch)
    for o in nest.operands:
        if o.tensor is None:
            continue
        loads = steps // inner[o.name]
        # an output tile changing every step (elementwise nests) keeps as many in flight as the
        # inputs: a slot is free again only once its store has landed (the store's latency), so
        # two slots stalled each step on the store before last (softmax 64x1000 on sim-nnp
        # 11291 -> 9791 cycles); a GEMM's output changes every K loop, and keeps two
        slots[o.name] = min(loads, d // inner[o.name] + 2 if d else 1)
        if o.is_output and ns.out_slots:
            slots[o.name] = min(slots[o.name], ns.out_slots)
    return Pipeline(steps, tiles, stride, inner, slots)  # shared with the memo: read-only


def loads_up_front(target: Target, nest: Nest, ns: NestSchedule, loads_per_tile, held=()) -> bool:
    """Whether the lowering loads the first ``prefetch`` steps' tiles before the step loop, step
    by step in the order they are needed (the load engines serve them in issue order, step 0's
    blocks first), rather than step 0's at their first use and only steps 1..d-1 up front: when
    there is something to prefetch beyond step 0 and that many loads leave the instruction
    window room for the first products.  ``loads_per_tile(operand)``: copies that bring one of
    its tiles on chip; ``held``: operands another nest keeps on chip for this one (not loaded)."""
    d = max(0, ns.prefetch)
    if d <= 1:
        return False
    pl = pipeline(target, nest, ns)
    return sum(-(-min(d, pl.steps) // pl.inner[o.name]) * loads_per_tile(o)
               for o in nest.inputs if o.op.memory != target.main and o.name not in held) <= target.window


def footprint(target: Target, nest: Nest, ns: NestSchedule, reserve: tuple[str, int] | None = None) -> dict[str, int]:
    """Bytes each memory needs for this schedule (per core), pipeline slots included;
    ``reserve``: (memory, bytes per block of the output tile) for a fused epilogue's slots."""
    use: dict[str, int] = {}
    if reserve is not None:
        use[reserve[0]] = reserve[1] * prod(ns.tile(a) for a in nest.output.axes)
    slots = pipeline(target, nest, ns).slots
    tile_of = ns.tile_of
    from .cost import moved_operands
    uses = moved_operands(target, nest)
    for u in uses:
        if u.memory is not None:
            use[u.memory] = use.get(u.memory, 0) + slots[u.name] * u.tile_blocks(tile_of) * u.block_bytes
    for u in uses:  # staging slots of multi-hop routes: two tiles each
        for mem, per_block in u.staging:
            use[mem] = use.get(mem, 0) + u.tile_blocks(tile_of) * per_block
    return use


def fits(target: Target, nest: Nest, ns: NestSchedule, reserve: tuple[str, int] | None = None) -> str | None:
    for mem, need in footprint(target, nest, ns, reserve).items():
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
