"""`cpsat`: OR-tools CP-SAT enumerates every tiling that fits the memories, the model ranks them.

Per nest and per core grid / loop order: integer tile variables (padding
allowed: a tile need not divide its axis), one product variable per operand
tile, and a capacity constraint per memory (single-buffered, a necessary condition;
the exact pipelined footprint is checked per solution).  CP-SAT
lists all solutions (``enumerate_all_solutions``); the analytical cost model
picks the best.  The vendor schedule is always a candidate, so ``cpsat`` is
never worse than ``vendor`` in modeled cycles.
"""
from __future__ import annotations

import itertools

from ir.target import Target

from compiler.nest import Nest

from .base import NestSchedule, register
from .cost import nest_cost
from .search import _Search, core_grids, fitted
from .space import fits
from .vendor import default_order, vendor_nest

MAX_SOLUTIONS = 4000


def _feasible_tilings(target: Target, nest: Nest, caps: dict[str, int], tunable: list[str]) -> list[dict]:
    from ortools.sat.python import cp_model  # imported lazily: it takes most of a second
    m = cp_model.CpModel()
    t = {a: m.new_int_var(1, caps[a], a) for a in tunable}
    use: dict[str, list] = {}
    for o in nest.operands:
        if o.tensor is None:
            continue
        axes = [a for a in o.axes if a in t]
        if not axes:
            continue
        cur = t[axes[0]]
        bound = caps[axes[0]]
        for a in axes[1:]:
            bound *= caps[a]
            nxt = m.new_int_var(1, bound, f"p_{o.name}_{a}")
            m.add_multiplication_equality(nxt, [cur, t[a]])
            cur = nxt
        use.setdefault(o.op.memory, []).append((cur, o.op.bytes))  # necessary; fits() is exact
    for mem, terms in use.items():
        m.add(sum(v * b for v, b in terms) <= target.memory(mem).capacity)

    class Collect(cp_model.CpSolverSolutionCallback):
        def __init__(self):
            super().__init__()
            self.sols = []

        def on_solution_callback(self):
            self.sols.append({a: self.value(v) for a, v in t.items()})
            if len(self.sols) >= MAX_SOLUTIONS:
                self.stop_search()

    s = cp_model.CpSolver()
    s.parameters.enumerate_all_solutions = True
    s.parameters.num_workers = 1
    s.parameters.random_seed = 0
    s.parameters.max_time_in_seconds = 5.0
    cb = Collect()
    s.solve(m, cb)
    return cb.sols


def cpsat_nest(target: Target, nest: Nest, reserve: tuple[str, int] | None = None) -> tuple[NestSchedule, dict]:
    """The cheapest of the tilings the solver finds feasible; with ``reserve`` (a fused
    epilogue's room, `space.footprint`), only those that leave it (the library schedule where
    none does)."""
    best = vendor_nest(target, nest)
    best_cost = nest_cost(target, nest, best)
    roomy = reserve is None or fits(target, nest, best, reserve) is None
    tunable = [a.name for a in nest.axes if a.instr_var is not None]
    splits = core_grids(target, nest)
    perms = list(itertools.permutations([a.name for a in nest.axes
                                         if a.instr_var is not None and not a.reduction])) or [()]
    for split in splits:
        caps = {a.name: -(-a.blocks // dict(split).get(a.name, 1)) for a in nest.axes}
        sols = _feasible_tilings(target, nest, caps, tunable)
        for perm in perms:
            order = default_order(nest, list(perm))
            for sol in sols:
                ns = fitted(target, nest, sol, order, split, reserve)
                if ns is None:
                    continue
                c = nest_cost(target, nest, ns)
                if c["cycles"] < best_cost["cycles"] or not roomy:
                    best, best_cost, roomy = ns, c, True
    return best, best_cost


@register("cpsat")
class CpSat(_Search):
    name = "cpsat"

    def nest(self, target, nest, incumbent=None, reserve=None):
        return cpsat_nest(target, nest, reserve)  # the solver proves its own optimum; no bound is needed
