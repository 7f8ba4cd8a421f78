"""`vendor`: a library-style fixed heuristic, Gemmini's tiled_matmul_auto applied generically.

From the target's IR only: half of each memory is the budget (double
buffering); the output tile starts square at floor(sqrt(output blocks that
fit)), the reduction tile gets the input memory split evenly between the
inputs; then each of J, I, K grows by one block while everything still fits.
Loops run i -> j -> k (reduction innermost); on multi-core targets the first
output axis is cut into contiguous per-core chunks (accelerators.md 1.4, 7.2).
"""
from __future__ import annotations

from math import isqrt

from ir.bind import Bound
from ir.kernel import Kernel
from ir.target import Target

from compiler.nest import Nest

from .base import NestSchedule, Schedule, register
from .cost import schedule_cost
from .space import candidates, fits


def default_order(nest: Nest, parallel_perm=None) -> tuple[str, ...]:
    loops_par = [a.name for a in nest.axes if a.instr_var is None and not a.reduction]
    bound_par = parallel_perm or [a.name for a in nest.axes if a.instr_var is not None and not a.reduction]
    loops_red = [a.name for a in nest.axes if a.instr_var is None and a.reduction]
    bound_red = [a.name for a in nest.axes if a.instr_var is not None and a.reduction]
    return tuple(loops_par + list(bound_par) + loops_red + bound_red)


def vendor_nest(target: Target, nest: Nest) -> NestSchedule:
    tiles = {a.name: 1 for a in nest.axes}
    par = [a for a in nest.axes if a.instr_var is not None and not a.reduction]
    red = [a for a in nest.axes if a.instr_var is not None and a.reduction]
    split = ((par[0].name, target.cores),) if target.cores > 1 and par and par[0].blocks > 1 else ()

    def cap(a):
        return -(-a.blocks // dict(split).get(a.name, 1))

    def mk(t):
        return NestSchedule(nest.statement, nest.step_index, tuple(t.items()), default_order(nest), split, 1)

    out = nest.output
    out_budget = target.memory(out.op.memory).capacity // 2 // max(1, out.op.bytes)
    if len(par) >= 2:
        s0 = max(1, isqrt(out_budget))
        for a in par[:2]:
            tiles[a.name] = min(s0, cap(a))
    elif par:
        tiles[par[0].name] = max(1, min(out_budget, cap(par[0])))
    if red and nest.inputs:
        a_in = nest.inputs[0]
        in_budget = target.memory(a_in.op.memory).capacity // 2 // max(1, a_in.op.bytes)
        ti = tiles[par[0].name] if par else 1
        tiles[red[0].name] = max(1, min(in_budget // max(1, len(nest.inputs)) // ti, cap(red[0])))
    while fits(target, nest, mk(tiles)) is not None and any(t > 1 for t in tiles.values()):
        big = max(tiles, key=tiles.get)  # shrink the largest until it fits
        tiles[big] -= 1
    if fits(target, nest, mk(tiles)) is not None:
        from dataclasses import replace
        single = replace(mk(tiles), prefetch=0)  # no double buffering: the library's last resort
        if fits(target, nest, single) is None:
            return single
        from .search import nothing_fits
        nothing_fits(target, nest)
    grow = ([par[1]] if len(par) > 1 else []) + par[:1] + red[:1]
    changed = True
    while changed:
        changed = False
        for a in grow:
            if tiles[a.name] >= cap(a):
                continue
            tiles[a.name] += 1
            if fits(target, nest, mk(tiles)) is None:
                changed = True
            else:
                tiles[a.name] -= 1
    return mk(tiles)


@register("vendor")
class Vendor:
    name = "vendor"

    def schedule(self, kernel: Kernel, bound: Bound, target: Target, budget: int | None = None) -> list[Schedule]:
        per_stmt = candidates(kernel, bound, target)
        mappings, nests = [], []
        for cands in per_stmt:
            # the library's choice: the first lowerable mapping (instruction order, no transposes first)
            c = cands[0]
            mappings.append(0)
            nests += [(n, vendor_nest(target, n)) for n in c.nests]
        cost = schedule_cost(target, [n for n, _ in nests], [s for _, s in nests])
        # a library runs each statement as its own kernel: no fusion of elementwise epilogues (with
        # its large output tiles, fused epilogues would also fill the instruction window at the end
        # of each tile: gru_step H=1024 B=1 on sim-nnp 141182 cycles unfused, 151570 fused)
        return [Schedule(kernel.name, target.name, tuple(bound.sizes.items()), self.name, tuple(mappings),
                         tuple(s for _, s in nests), {"cycles": round(cost["cycles"])}, fuse=False)]
