"""Analytical cost model (Timeloop-style reuse analysis plus a software-pipeline model).

For one scheduled nest on the busiest core: a tile is reloaded each time an
outer loop over an axis it does not depend on advances; each step (one tile of
work) costs the most of its engines' busy time, its share of the shared
main-memory server, the load latency spread over the prefetch distance, and
the latency the instruction window can cover; the nest costs steps x step
time plus fill (first tiles in) and drain (last tile out).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil, prod

from ir.dtypes import BY_NAME
from ir.target import Target

from compiler import nest as layout
from compiler.nest import Nest, window_extent
from compiler.routes import multicast_variant, route_in, route_load_output, route_out, stores_early

from .base import NestSchedule
from .space import loads_up_front


def block_bytes(target: Target, nest: Nest, o, c) -> int:
    """Bytes one copy moves for one block: counted at the main-memory side when it touches it.

    There the tensor's own element size counts, as in the simulator: a gathering copy that
    stands in for a converting one (sim-tpu's bf16 ``ld_gather`` reading an fp32 tensor)
    moves the tensor's bytes, not its declared operand's."""
    elems = prod(o.op.shape) if o.op.shape else 1
    side = c.outputs[0] if c.outputs[0].memory == target.main else c.inputs[0]
    if side.memory == target.main and o.tensor is not None:
        return elems * BY_NAME[nest.tensor_dtype(o.tensor)].itemsize
    return elems * side.dtype.itemsize


def auto_prefetch(target: Target, nest: Nest, ns: NestSchedule) -> int:
    """The prefetch distance that hides the load latency behind compute (capped at 8)."""
    from .space import pipeline
    pl = pipeline(target, nest, ns)
    step_execs = prod(ns.tile(a.name) for a in nest.axes)
    compute = step_execs * nest.instr.cycles() / target.engine(nest.instr.engine).count
    lat = 0
    for o in moved_operands(target, nest):
        if not o.is_output:
            lat = max(lat, sum(h.copy.latency + h.copy.cycles(h.nbytes) for h in o.routes[0]))
    if compute <= 0 or pl.steps <= 1:
        return 1
    return max(1, min(8, ceil(lat / compute)))


@dataclass(frozen=True)
class _Hop:
    """One copy of an operand's route, with what its cost needs fixed for the nest."""

    copy: object  # the copy Instruction
    nbytes: int  # block_bytes of this hop
    units: int  # copies of its engine
    touches_main: bool
    multicast: bool  # an input hop with a multicasting variant


@dataclass(frozen=True)
class Moved:
    """An operand of a nest as the cost model and the footprint read it (a tensor's, not an
    immediate's), fixed for the nest."""

    name: str
    axes: tuple[str, ...]
    is_output: bool
    valid: float  # the tensor's part of the padded block grid of its tile
    routes: tuple[tuple[_Hop, ...], ...]  # outputs: the store route first, then the reload one
    memory: str | None  # its on-chip memory (None: it is read in main memory)
    block_bytes: int  # of its instruction operand
    staging: tuple[tuple[str, int], ...]  # (memory, bytes per block) of each multi-hop stage
    window: tuple[str, str] | None = None  # compiler.nest.OperandInfo.window
    merged: tuple[str, str] | None = None  # compiler.nest.OperandInfo.merged
    halo: int = 1  # compiler.nest.OperandInfo.halo
    window_rows: tuple[str, int] | None = None  # compiler.nest.OperandInfo.window_rows

    def extent(self, axis: str, tile_of: dict[str, int]) -> int:
        return layout.extent(self, axis, tile_of)

    def tile_blocks(self, tile_of: dict[str, int]) -> int:
        return layout.tile_blocks(self, tile_of)

    def spans(self, axis: str) -> bool:
        return layout.spans(self, axis)


def moved_operands(target: Target, nest: Nest) -> list[Moved]:
    """The nest's tensor operands and their routes, built once per nest and target (the search
    asks for them tens of thousands of times)."""
    return nest.derived("_moved_operands", target, lambda: _build_moved(target, nest))


def _build_moved(target: Target, nest: Nest) -> list[Moved]:
    out = []
    for o in nest.operands:
        if o.tensor is None:
            continue
        valid = prod(nest.axis(a).valid_total / (nest.axis(a).blocks * nest.axis(a).unit) for a in o.axes
                     if o.window is None or a != o.window[0])
        if o.window is not None:  # the rows of x + y, in the blocks of x plus the halo
            X = nest.axis(o.window[0])
            valid *= min(1.0, window_extent(nest, o) / ((X.blocks + o.halo) * X.unit))
        if o.is_output:
            routes = [route_out(target, nest, o)] + ([route_load_output(target, nest, o)] if nest.load_output else [])
        else:
            routes = [route_in(target, nest, o)]
        hops = tuple(tuple(_Hop(c, block_bytes(target, nest, o, c), target.engine(c.engine).count,
                                target.main in (c.inputs[0].memory, c.outputs[0].memory),
                                not o.is_output and multicast_variant(target, c) is not None)
                           for c in route) for route in routes)
        first = routes[0]
        inter = [c.outputs[0] for c in first[:-1]] if not o.is_output else [c.inputs[0] for c in first[1:]]
        elems = prod(o.op.shape) if o.op.shape else 1
        staging = tuple((m.memory, 2 * elems * m.dtype.itemsize) for m in inter if m.memory != target.main)
        out.append(Moved(o.name, tuple(o.axes), o.is_output, valid, hops,
                         None if o.op.memory == target.main else o.op.memory, o.op.bytes, staging, o.window,
                         o.merged, o.halo, o.window_rows))
    return out


def _first_batches(nest: Nest, o: Moved, tile_of: dict[str, int], tile_blocks: int, batch: int) -> float:
    """Copies of an input's first tile the first output block waits for: one, but a window's
    tile is one transfer whose blocks come a reduction loop (a filter row) at a time, and the
    first output block reads a block of every one of them."""
    if o.window is None:
        return 1.0
    X = o.window[0]
    red = prod(o.extent(a, tile_of) for a in o.axes if a != X and nest.axis(a).reduction
               and nest.axis(a).instr_var is None)
    return max(1.0, ((red - 1) * tile_blocks / red + batch) / batch)


def nest_cost(target: Target, nest: Nest, ns: NestSchedule) -> dict:
    from .space import pipeline
    pl = pipeline(target, nest, ns)
    axis = nest.axis
    active = prod(min(p, axis(a).blocks) for a, p in ns.split) if ns.split else 1
    S = pl.steps
    d = max(0, ns.prefetch)
    tile_of = ns.tile_of
    step_blocks = prod(tile_of[a.name] for a in nest.axes)
    units = target.engine(nest.instr.engine).count
    compute_step = step_blocks * nest.instr.cycles() / units
    busy: dict[str, float] = {nest.instr.engine: compute_step * S}
    instrs = step_blocks * S
    main_bytes = 0.0
    fill = 0.0
    drain = nest.instr.latency
    load_lat = 0.0
    first_occ = 0.0
    exposed = 0.0  # output stores the next tile waits for (a single output slot)
    loads_of: dict[str, int] = {}  # input -> copies that bring one of its tiles on chip
    once: dict[str, float] = {}  # engine -> occupancy of the tiles loaded once, at step 0
    for o in moved_operands(target, nest):
        tile_blocks = o.tile_blocks(tile_of)
        loads = S // pl.inner[o.name]
        # main memory serves every core's share, not the busiest core's times the cores: along a
        # split axis of this operand the cores' chunks add up to the axis, not parts x chunk
        spread = prod(axis(a).blocks / (min(p, axis(a).blocks) * ceil(axis(a).blocks / p))
                      for a, p in ns.split if a in o.axes)
        # a copy that moves partial blocks moves only the tensor's part of the padded block grid
        valid = o.valid
        last = o.axes[-1] if o.axes else None
        # the cores that read the same tiles of it; a tile loaded once comes by multicast with
        # the copies shared out among them (compiler.lower's rotation): each core's engine moves
        # its part and joins the others'
        group = prod(min(p, axis(a).blocks) for a, p in ns.split if not o.spans(a))
        rotated = not o.is_output and loads == 1 and group > 1 and bool(o.routes[0]) and o.routes[0][0].multicast
        for route in o.routes:
            batch = min([h.copy.batch for h in route] + [o.extent(last, tile_of) if last else 1])
            per_tile_instrs = ceil(tile_blocks / batch) if tile_blocks else 1
            chain_lat = 0.0
            for h in route:
                c, nbytes = h.copy, h.nbytes
                occ = c.cycles(nbytes * batch) if c.occupancy is None else c.occupancy * batch
                frac = valid if c.partial else 1.0
                moved = c.cycles(nbytes * batch * frac) if c.occupancy is None else occ
                if rotated and h is route[0]:
                    moved /= group
                busy[c.engine] = busy.get(c.engine, 0.0) + loads * per_tile_instrs * moved / h.units
                instrs += loads * per_tile_instrs
                chain_lat += c.latency + occ
                if h.touches_main:
                    share = group if h.multicast else 1
                    main_bytes += loads * tile_blocks * nbytes * frac * active * spread / share
            if o.is_output and route is o.routes[0]:
                store = per_tile_instrs * max(
                    (h.copy.cycles(h.nbytes * batch) if h.copy.occupancy is None else h.copy.occupancy)
                    for h in route)
                if stores_early(target, nest, batch, tile_of, pl.slots[o.name], loads):
                    # each block stored as the last step finishes it: the tile's store overlaps that step
                    store = max(store / per_tile_instrs, store - compute_step * (1 - batch / max(1, tile_blocks)))
                drain += chain_lat + store
                if pl.slots[o.name] == 1 and loads > 1 and d > 0:
                    # one output tile: the next tile's first step waits, block by block, for the
                    # stores of this one (issued after its last step), each block's store
                    # landing (tile - 1) x (store - compute) later than the one before
                    per_store = store / max(1, tile_blocks)
                    per_exec = nest.instr.cycles() / units
                    exposed += (loads - 1) * (nest.instr.latency + chain_lat
                                              + max(0.0, (tile_blocks - 1) * (per_store - per_exec)))
            elif not o.is_output and route:
                loads_of[o.name] = per_tile_instrs * len(route)
                first = route[0]
                if loads == 1 and S > 1:
                    occ = (first.copy.cycles(first.nbytes * batch * valid) if first.copy.occupancy is None
                           else first.copy.occupancy)
                    once[first.copy.engine] = (once.get(first.copy.engine, 0.0)
                                               + per_tile_instrs * occ / first.units / (group if rotated else 1))
                load_lat = max(load_lat, chain_lat)  # compute starts when its first blocks arrive
                first_occ += (first.copy.cycles(first.nbytes * batch)
                              if first.copy.occupancy is None else first.copy.occupancy) * _first_batches(
                    nest, o, tile_of, tile_blocks, batch)
    fill += load_lat + first_occ
    if load_lat and loads_up_front(target, nest, ns, lambda o: loads_of[o.name]):
        # the first steps' tiles are all issued before the first product, in the order they are
        # needed: step 0's transfer is the fill's, and the later steps' stream behind it
        fill -= first_occ
    mem = target.memory(target.main)
    hbm = main_bytes / mem.bandwidth if mem.bandwidth else 0.0
    # per step: engines, main memory, latency hidden by prefetching, latency the window can cover
    free = max([v / S for v in busy.values()] + [hbm / S])  # the step at its busiest resource's pace
    step = free
    if d == 0:  # one slot per operand: a step's loads wait for the previous step's compute, and its
        # compute for all of its loads (latency plus the whole transfer), one after the other
        moving = max((v / S for e, v in busy.items() if e != nest.instr.engine), default=0.0)
        step = max(step, compute_step + load_lat + moving)
    else:
        step = max(step, (load_lat + compute_step) / (d + 1))
    # in-order window: an instruction cannot issue before the one W places earlier has
    # completed, so the W instructions after a load must span its latency.  Loads farther
    # apart than W stall independently (latency minus the time W instructions take at the
    # unconstrained pace); denser ones chain, each W (plus part of the gap to the next load)
    # instructions costing a load latency.  The 3/4 is fitted on the simulator (quick GEMM
    # suite on sim-gemmini and sim-nnp: chosen schedules within 6%)
    load_instrs = (instrs - step_blocks * S) / S
    n_step = instrs / S
    W = target.window
    if load_instrs <= 0:
        window_step = compute_step
    elif n_step / load_instrs >= W:
        window_step = free + load_instrs * max(0.0, load_lat - W * free / n_step)
    else:
        window_step = max(free, n_step * load_lat / (W + 0.75 * n_step / load_instrs))
    step = max(step, window_step)
    cycles = S * step + fill + drain + exposed
    if once:
        # a tile loaded once (a filter) is all needed by the end of step 0: the steps after it
        # cannot take up its transfer, however fast the pace of the rest
        cycles = max(cycles, load_lat + max(once.values()) + (S - 1) * compute_step + drain + exposed)
    # what the window would cost if every load stalled it for its latency / W: loads issued in
    # bursts (all of a tile at its first use) come closer to this than the even spacing above
    pressure = S * load_instrs * load_lat / W
    return {"cycles": cycles, "step": step, "steps": S, "busy": busy, "main_bytes": main_bytes,
            "hbm_cycles": hbm, "fill": fill, "drain": drain, "window_step": window_step,
            "pressure": pressure}


def any_nest_cost(target: Target, nest: Nest, ns: NestSchedule) -> dict:
    """``nest_cost``, or the stream-K model for stream-K nests (same keys)."""
    if ns.stream:
        from compiler.streamk import Knobs, cost
        return cost(target, nest, Knobs.of(ns.stream))
    return nest_cost(target, nest, ns)


def schedule_cost(target: Target, nests: list[Nest], schedules: list[NestSchedule]) -> dict:
    total = 0.0
    parts = []
    for n, ns in zip(nests, schedules):
        c = any_nest_cost(target, n, ns)
        parts.append(c)
        total += c["cycles"]
    return {"cycles": total, "nests": parts}
