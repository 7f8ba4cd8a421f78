"""Routes: the chain of data-movement instructions between main memory and an operand's memory."""
from __future__ import annotations

from collections import deque
from math import prod

from ir.errors import IsamapError
from ir.target import Instruction, Target


def copy_path(t: Target, src: tuple[str, str], dst: tuple[str, str], gather: bool = False) -> list[Instruction] | None:
    """The shortest chain of plain copy instructions from (memory, dtype) to (memory, dtype).

    With ``gather``, the hop out of main memory is replaced by a gathering copy."""
    return _path(t, src, dst, gather)


def _path(t: Target, src: tuple[str, str], dst: tuple[str, str], gather: bool) -> list[Instruction] | None:
    if src == dst:
        return []
    prev = {src: None}
    q = deque([src])
    while q:
        cur = q.popleft()
        for c in t.copy_instrs:
            if c.multicast > 1 or c.gather:
                continue
            a, b = c.inputs[0], c.outputs[0]
            if (a.memory, a.dtype.name) != cur:
                continue
            nxt = (b.memory, b.dtype.name)
            if nxt in prev:
                continue
            prev[nxt] = (cur, c)
            if nxt == dst:
                chain = []
                n = nxt
                while prev[n] is not None:
                    n, ci = prev[n]
                    chain.append(ci)
                chain.reverse()
                if gather:  # the hop out of main memory must be able to gather
                    g = [c for c in t.copy_instrs if c.gather and (c.inputs[0].memory, c.outputs[0].memory) ==
                         (chain[0].inputs[0].memory, chain[0].outputs[0].memory)
                         and c.outputs[0].dtype == chain[0].outputs[0].dtype]
                    if not g:
                        g = [c for c in t.copy_instrs if c.gather and c.outputs[0].memory == chain[0].outputs[0].memory]
                    if not g:
                        return None
                    chain[0] = g[0]
                return chain
            q.append(nxt)
    return None


def route_in(t: Target, nest, o) -> list[Instruction]:
    return _cached(t, (t.main, _tensor_dtype(nest, o)), (o.op.memory, o.op.dtype.name), o.gather)


def route_out(t: Target, nest, o) -> list[Instruction]:
    return _cached(t, (o.op.memory, o.op.dtype.name), (t.main, _tensor_dtype(nest, o)), False)


EARLY_STORES = True  # output blocks stored as they are finished (off: after their tile's last step)


def stores_early(t: Target, nest, count: int, tile_of: dict[str, int], slots: int = 2, tiles: int = 1) -> bool:
    """Whether a nest's output blocks are stored as each is finished, among the products of
    its tile's last step, rather than all after them (``compiler.lower``): the store of a tile
    of many blocks (a row of a convolution's output columns) then overlaps the step instead of
    draining after it.  Only where that store takes half a step or more (a shorter one is
    hidden behind the next step anyway, and stores among the products cost the window
    slots), and where the in-order window allows: the instruction W places after a store
    issues once the store is done (its block's last product, then every hop's latency and
    transfer of ``count`` blocks), so W products must take at least that long.  Not with one
    output tile in flight (``slots``) and more to come (``tiles`` a core): the next tile's
    products would wait in the window behind stores of blocks they overwrite
    (sim-gemmini-fp32 1760x128x1760: 1.62M -> 2.25M cycles)."""
    out = nest.output
    if not (EARLY_STORES and out.axes and out.merged is None and out.window is None and (slots > 1 or tiles <= 1)):
        return False
    route = route_out(t, nest, out)
    per_instr = nest.instr.cycles() / t.engine(nest.instr.engine).count
    done = nest.instr.latency + sum(c.latency + c.cycles(count * c.outputs[0].bytes) for c in route)
    blocks = prod(out.extent(a, tile_of) for a in out.axes)
    store = -(-blocks // count) * max((c.cycles(count * c.outputs[0].bytes) for c in route), default=0)
    step = prod(tile_of[a.name] for a in nest.axes) * per_instr
    return t.window * per_instr >= done and 2 * store >= step


def route_load_output(t: Target, nest, o) -> list[Instruction]:
    return _cached(t, (t.main, _tensor_dtype(nest, o)), (o.op.memory, o.op.dtype.name), False)


def _tensor_dtype(nest, o) -> str:
    return nest.tensor_dtype(o.tensor)


_CACHE: dict = {}


def _cached(t, src, dst, gather):
    key = (id(t), src, dst, gather)
    if key not in _CACHE:
        p = _path(t, src, dst, gather)
        if p is None:
            raise IsamapError(f"{t.name}: no data movement from {src[1]} in {src[0]} to {dst[1]} in {dst[0]}")
        _CACHE[key] = p
    return _CACHE[key]


def multicast_variant(t: Target, c: Instruction) -> Instruction | None:
    """A copy with ``c``'s operands that delivers to several cores at once; it must gather
    wherever ``c`` gathers (an im2col window is no job for a plain tile DMA)."""
    for m in t.copy_instrs:
        if m.multicast > 1 and (m.gather or not c.gather) and [(o.memory, o.dtype, o.shape) for o in m.operands] == \
                [(o.memory, o.dtype, o.shape) for o in c.operands]:
            return m
    return None


__all__ = ["route_in", "route_out", "route_load_output", "multicast_variant", "copy_path"]
