"""Analytical cost model (Timeloop-style): reuse analysis -> bytes per link, busy cycles per engine.

cycles(nest) = max over engines (per core) and the shared main-memory server
of their busy time, plus fill (first tiles in) and drain (last tile out).
Tiles are reloaded each time an outer loop over an axis they do not depend on
advances; the axis split across cores divides the work of that axis.
"""
from __future__ import annotations

from math import ceil, prod

from ir.target import Target

from compiler.nest import Nest
from compiler.routes import multicast_variant, route_in, route_load_output, route_out

from .base import NestSchedule


def per_core_blocks(nest: Nest, ns: NestSchedule, axis: str, cores: int) -> int:
    """Blocks of ``axis`` on the busiest core: a split axis is cut into contiguous chunks."""
    b = nest.axis(axis).blocks
    return ceil(b / cores) if ns.split == axis else b


def _tiles(nest: Nest, ns: NestSchedule, axis: str, cores: int) -> float:
    """Number of tiles of ``axis`` one core walks."""
    return ceil(per_core_blocks(nest, ns, axis, cores) / ns.tile(axis))


def _loads(nest: Nest, ns: NestSchedule, axes: list[str], cores: int) -> float:
    """How many times a tile over ``axes`` is (re)loaded per core."""
    innermost = max((ns.order.index(a) for a in axes), default=-1)
    return prod(_tiles(nest, ns, a, cores) for a in ns.order[:innermost + 1]) if innermost >= 0 else 1


def nest_cost(target: Target, nest: Nest, ns: NestSchedule) -> dict:
    cores = target.cores if ns.split else 1
    active = cores
    if ns.split:
        active = min(cores, nest.axis(ns.split).blocks)
    busy: dict[str, float] = {}
    main_bytes = 0.0
    first_in = 0.0

    def add(engine: str, cycles: float):
        busy[engine] = busy.get(engine, 0.0) + cycles

    # compute: executions on this core, spread over the engine's units
    execs = prod(per_core_blocks(nest, ns, a.name, cores) for a in nest.axes)
    units = target.engine(nest.instr.engine).count
    add(nest.instr.engine, execs * nest.instr.cycles() / units)
    for o in nest.operands:
        if o.tensor is None:
            continue
        tile_blocks = prod(ns.tile(a) for a in o.axes)
        if o.is_output:
            n_tiles = prod(_tiles(nest, ns, a, cores) for a in o.axes)
            routes = [route_out(target, nest, o)]
            if nest.load_output:
                routes.append(route_load_output(target, nest, o))
            times = n_tiles
        else:
            routes = [route_in(target, nest, o)]
            times = _loads(nest, ns, o.axes, cores)
        blocks = times * tile_blocks
        for route in routes:
            for c in route:
                dst = c.outputs[0]
                nbytes = block_bytes(target, o, c)
                add(c.engine, blocks * c.cycles(nbytes) / target.engine(c.engine).count)
                touches_main = c.inputs[0].memory == target.main or dst.memory == target.main
                if touches_main:
                    shared = (not o.is_output and ns.split is not None and ns.split not in o.axes
                              and multicast_variant(target, c) is not None)
                    main_bytes += blocks * nbytes * (1 if shared else active)
                    if not o.is_output:
                        first_in = max(first_in, tile_blocks * c.cycles(nbytes) + c.latency)
    mem = target.memory(target.main)
    hbm = main_bytes / mem.bandwidth if mem.bandwidth else 0.0
    drain = 0.0
    for c in route_out(target, nest, nest.output):
        drain += c.latency + c.cycles(block_bytes(target, nest.output, c))
    drain += nest.instr.latency
    steady = max([hbm] + list(busy.values()))
    return {"cycles": steady + first_in + drain, "steady": steady, "busy": busy, "main_bytes": main_bytes,
            "hbm_cycles": hbm, "fill": first_in, "drain": drain, "executions": execs}


def block_bytes(target: Target, o, c) -> int:
    """Bytes one copy moves for one block: counted at the main-memory side when it touches it."""
    elems = prod(o.op.shape) if o.op.shape else 1
    side = c.outputs[0] if c.outputs[0].memory == target.main else c.inputs[0]
    return elems * side.dtype.itemsize


def schedule_cost(target: Target, nests: list[Nest], schedules: list[NestSchedule]) -> dict:
    total = 0.0
    parts = []
    for n, ns in zip(nests, schedules):
        c = nest_cost(target, n, ns)
        parts.append(c)
        total += c["cycles"]
    return {"cycles": total, "nests": parts}
