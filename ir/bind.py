"""Binding sizes: a kernel plus concrete size values gives numeric shapes and domains.

This is where "bad sizes" become located errors: a missing or unknown size, a
non-positive value, an empty inferred range, or a read that the sizes push out
of a tensor's bounds.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import IsamapError, Span
from .expr import Access, evaluate_int, linear, walk
from .kernel import Kernel, Stmt, memo
from .printer import expr as show


@dataclass(frozen=True)
class Bound:
    kernel: Kernel
    sizes: dict[str, int]
    shapes: dict[str, tuple[int, ...]]
    mins: dict[str, tuple[int, ...]]
    domains: tuple[dict[str, tuple[int, int]], ...]  # per statement: var -> [lo, hi)

    def domain(self, i: int) -> dict[str, tuple[int, int]]:
        return self.domains[i]

    def macs(self) -> int:
        """Multiply-accumulates of the kernel's +-reductions of products (FLOPs = 2 x this)."""
        return memo(self, "_macs", self._count_macs)

    def _count_macs(self) -> int:
        from math import prod

        from .expr import Binary
        total = 0
        for si, s in enumerate(self.kernel.stmts):
            if s.op == "+" and s.reduction_vars and any(isinstance(x, Binary) and x.op == "*" for x in walk(s.rhs)):
                total += prod(hi - lo for lo, hi in self.domains[si].values())
        return total


def bind(k: Kernel, sizes: dict[str, int], spans: dict[str, Span] | None = None,
         where: Span | None = None) -> Bound:
    spans = spans or {}
    for name, v in sizes.items():
        if name not in k.sizes:
            known = ", ".join(k.sizes) or "none"
            raise IsamapError(f"'{name}' is not a size of kernel '{k.name}' (its sizes: {known})",
                              spans.get(name, where))
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise IsamapError(f"size {name}={v!r} must be a positive integer", spans.get(name, where))
    missing = [s for s in k.sizes if s not in sizes]
    if missing:
        raise IsamapError(f"kernel '{k.name}' needs a value for size{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)} (e.g. --sizes {','.join(f'{m}=64' for m in missing)})",
                          where or k.span)
    env = dict(sizes)
    shapes, mins = {}, {}
    for name, dims in k.shapes:
        shapes[name] = tuple(evaluate_int(d.extent, env) for d in dims)
        mins[name] = tuple(evaluate_int(d.min, env) for d in dims)
    domains = []
    for s in k.stmts:
        dom = {}
        for r in s.domain:
            lo, hi = evaluate_int(r.lo, env), evaluate_int(r.hi, env)
            if hi <= lo:
                raise IsamapError(f"inferred an empty range for '{r.var}': {show(r.lo)}:{show(r.hi)} "
                                  f"is {lo}:{hi} with these sizes", r.span or s.span)
            dom[r.var] = (lo, hi)
        domains.append(dom)
        _check_lhs(k, s, dom, shapes, mins)
        _check_reads(k, s, dom, shapes, mins, env)
    return Bound(k, env, shapes, mins, tuple(domains))


def _check_lhs(k: Kernel, s: Stmt, dom, shapes, mins):
    for axis, v in enumerate(s.indices):
        lo, hi = dom[v]
        m, e = mins[s.tensor][axis], shapes[s.tensor][axis]
        if lo < m or hi > m + e:
            raise IsamapError(f"this statement writes {s.tensor} at {v} in {lo}:{hi}, outside its "
                              f"shape {m}:{m + e} set by its first definition", s.lhs_span or s.span)


def _check_reads(k: Kernel, s: Stmt, dom, shapes, mins, env):
    exprs = [s.rhs, *s.exists]
    for e in exprs:
        for a in walk(e):
            if not isinstance(a, Access):
                continue
            for axis, idx in enumerate(a.indices):
                lin = linear(idx)
                if lin is None or any(n not in dom and n not in k.sizes for n in lin.names()):
                    continue  # checked at run time (gathers)
                lo = hi = lin.const
                for n, c in lin.terms:
                    a0, b0 = (dom[n][0], dom[n][1] - 1) if n in dom else (env[n], env[n])
                    lo += min(c * a0, c * b0)
                    hi += max(c * a0, c * b0)
                m, ext = mins[a.tensor][axis], shapes[a.tensor][axis]
                if lo < m or hi >= m + ext:
                    raise IsamapError(
                        f"subscript {show(idx)} of {a.tensor} ranges over {lo}..{hi} but dimension "
                        f"{axis} of {a.tensor} holds {m}..{m + ext - 1}; constrain the indices with a "
                        f"where clause", idx.span or a.span or s.span)
