"""TC range inference: rounds of maximal intervals (tc2halide.cc / inference.rst).

Each tensor read ``T(..., sub_d, ...)`` with an affine subscript gives the
condition ``min_d <= sub_d <= min_d + extent_d - 1``.  In each round, every
unresolved variable that is the only unresolved one in some conditions gets the
largest interval satisfying all of them, with already-known variables ranging
over their whole interval; then the next round starts.  ``where`` ranges win.
"""
from __future__ import annotations

from dataclasses import dataclass

from ir.errors import IsamapError, Span
from ir.expr import Binary, Expr, Linear, ceil_div, floor_div, from_linear, linear, simplify, size_const
from ir.kernel import Dim, Range


@dataclass
class Condition:
    lin: Linear
    vars: frozenset[str]
    dim: Dim
    span: Span | None


def _add(a: Expr, b: Expr) -> Expr:
    return simplify(Binary("+", a, b))


def _sub(a: Expr, b: Expr) -> Expr:
    return simplify(Binary("-", a, b))


def _mul(c: int, e: Expr) -> Expr:
    return simplify(Binary("*", size_const(c), e))


def _max(a: Expr, b: Expr) -> Expr:
    return simplify(Binary("max", a, b))


def _min(a: Expr, b: Expr) -> Expr:
    return simplify(Binary("min", a, b))


def conditions(reads, all_vars: set[str]) -> list[Condition]:
    """``reads``: (access, dims) pairs for every tensor read of the statement."""
    out = []
    for acc, dims in reads:
        for idx, d in zip(acc.indices, dims):
            lin = linear(idx)
            if lin is None:
                continue  # gathers, %, ternaries: not invertible, not used (as in TC)
            vs = frozenset(n for n in lin.names() if n in all_vars)
            if vs:
                out.append(Condition(lin, vs, d, idx.span or acc.span))
    return out


def _interval(c: Condition, v: str, known: dict[str, tuple[Expr, Expr]], all_vars) -> tuple[Expr, Expr]:
    a = c.lin.coef(v)
    sizes = Linear.make({k: x for k, x in c.lin.terms if k not in all_vars}, c.lin.const)
    rest_min = rest_max = from_linear(sizes)
    for u, cu in c.lin.terms:
        if u == v or u not in all_vars:
            continue
        lo, hi = known[u]
        last = _sub(hi, size_const(1))
        lo_term, hi_term = (_mul(cu, lo), _mul(cu, last)) if cu > 0 else (_mul(cu, last), _mul(cu, lo))
        rest_min = _add(rest_min, lo_term)
        rest_max = _add(rest_max, hi_term)
    m = c.dim.min
    top = _sub(_add(c.dim.min, c.dim.extent), size_const(1))
    if a > 0:
        lo = ceil_div(_sub(m, rest_min), a)
        up = floor_div(_sub(top, rest_max), a)
    else:
        lo = ceil_div(_sub(rest_max, top), -a)
        up = floor_div(_sub(rest_min, m), -a)
    return lo, _add(up, size_const(1))


def infer(order: list[str], lhs: list[str], where: dict[str, tuple[Expr, Expr]],
          conds: list[Condition], fallback: dict[str, tuple[Expr, Expr]],
          var_spans: dict[str, Span | None], stmt_span: Span | None) -> tuple[Range, ...]:
    all_vars = set(order)
    known: dict[str, tuple[Expr, Expr]] = {v: (simplify(lo), simplify(hi)) for v, (lo, hi) in where.items()}
    unresolved = [v for v in order if v not in known]
    while unresolved:
        solved: dict[str, tuple[Expr, Expr]] = {}
        for v in unresolved:
            cs = [c for c in conds if c.vars - known.keys() == {v}]
            if not cs:
                continue
            lo, hi = _interval(cs[0], v, known, all_vars)
            for c in cs[1:]:
                lo2, hi2 = _interval(c, v, known, all_vars)
                lo, hi = _max(lo, lo2), _min(hi, hi2)
            solved[v] = (lo, hi)
        if not solved:
            break
        known.update(solved)
        unresolved = [v for v in unresolved if v not in solved]
    for v in list(unresolved):
        if v in fallback:
            known[v] = fallback[v]
            unresolved.remove(v)
    if unresolved:
        v = unresolved[0]
        span = var_spans.get(v) or stmt_span
        if v in lhs:
            raise IsamapError(f"could not infer the range of index '{v}': no tensor read bounds it "
                              f"on its own; add a where clause, e.g. 'where {v} in 0:N'", span)
        raise IsamapError(f"reduction index '{v}' is unconstrained: no tensor read bounds it on "
                          f"its own; add a where clause, e.g. 'where {v} in 0:N'", span)
    return tuple(Range(v, known[v][0], known[v][1], var_spans.get(v)) for v in order)
