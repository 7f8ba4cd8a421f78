"""Search strategies over the analytical cost model: `analytical` (pruned grid) and `exhaustive`."""
from __future__ import annotations

import itertools
from math import ceil

from ir.bind import Bound
from ir.kernel import Kernel
from ir.target import Target

from compiler.nest import Nest

from .base import NestSchedule, Schedule, register
from .cost import auto_prefetch, nest_cost
from .space import candidates, fits
from .vendor import default_order, vendor_nest


def _tile_choices(n: int, full: bool) -> list[int]:
    if full or n <= 12:
        return list(range(1, n + 1))
    vals = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, n}
    vals |= {ceil(n / d) for d in (2, 3, 4, 5, 6, 8)}
    return sorted(v for v in vals if 1 <= v <= n)


def best_nest(target: Target, nest: Nest, full: bool = False, limit: int = 60000) -> tuple[NestSchedule, dict]:
    par_bound = [a for a in nest.axes if a.instr_var is not None and not a.reduction]
    splits: list = [()]
    if target.cores > 1:
        par = [a for a in nest.axes if not a.reduction and a.blocks > 1]
        P = target.cores
        for a in par:
            splits.append(((a.name, P),))
        for a, b in itertools.permutations(par, 2):
            for pa in range(2, P):
                pb = P // pa
                if pa * pb == P and pb >= 2 and pa <= a.blocks and pb <= b.blocks:
                    splits.append(((a.name, pa), (b.name, pb)))
    best = vendor_nest(target, nest)
    best_cost = nest_cost(target, nest, best) if fits(target, nest, best) is None else None
    tunable = [a for a in nest.axes if a.instr_var is not None]
    evaluated = 0
    for split in splits:
        caps = {a.name: -(-a.blocks // dict(split).get(a.name, 1)) for a in nest.axes}
        choices = [_tile_choices(caps[a.name], full) for a in tunable]
        perms = list(itertools.permutations([a.name for a in par_bound])) or [()]
        for perm in perms:
            order = default_order(nest, list(perm))
            for combo in itertools.product(*choices):
                evaluated += 1
                if evaluated > limit:
                    break
                tiles = {a.name: 1 for a in nest.axes}
                tiles.update({a.name: t for a, t in zip(tunable, combo)})
                ns = NestSchedule(nest.statement, nest.step_index, tuple(tiles.items()), order, split, 1)
                d = auto_prefetch(target, nest, ns)
                while d > 1:
                    cand = NestSchedule(nest.statement, nest.step_index, ns.tiles, order, split, d)
                    if fits(target, nest, cand) is None:
                        ns = cand
                        break
                    d //= 2
                if fits(target, nest, ns) is not None:
                    continue
                c = nest_cost(target, nest, ns)
                if best_cost is None or c["cycles"] < best_cost["cycles"]:
                    best, best_cost = ns, c
    return best, best_cost or nest_cost(target, nest, best)


class _Search:
    name = "analytical"
    full = False

    def nest(self, target: Target, nest: Nest):
        return best_nest(target, nest, self.full)

    def schedule(self, kernel: Kernel, bound: Bound, target: Target, budget: int | None = None) -> list[Schedule]:
        per_stmt = candidates(kernel, bound, target)
        mappings, chosen, total = [], [], 0.0
        for cands in per_stmt:
            options = []
            for i, c in enumerate(cands):
                scheds = [self.nest(target, n) for n in c.nests]
                cyc = sum(cost["cycles"] for _, cost in scheds)
                options.append((cyc, i, [s for s, _ in scheds]))
            cyc, i, scheds = min(options, key=lambda o: (o[0], o[1]))
            mappings.append(i)
            chosen += scheds
            total += cyc
        return [Schedule(kernel.name, target.name, tuple(bound.sizes.items()), self.name, tuple(mappings),
                         tuple(chosen), {"cycles": round(total)})]


@register("analytical")
class Analytical(_Search):
    name = "analytical"


@register("exhaustive")
class Exhaustive(_Search):
    name = "exhaustive"
    full = True
