"""Operation-tree matching of an instruction body against a kernel expression.

Matching is modulo commutativity of ``+``, ``*``, ``min`` and ``max``; casts on
either side are looked through (dtype legality is a separate rule).  An
instruction operand read binds to a kernel tensor read, to a scalar (for rank-0
operands: constants, sizes), or -- when temporaries are allowed -- to any
kernel subexpression, which another instruction must then compute.  A rank-0
operand may also read one element of a tensor per iteration of the loops
around the instruction (a broadcast).
"""
from __future__ import annotations

from typing import Iterator

from ir.expr import Access, Binary, Call, Cast, Const, Expr, Size, Unary, Var, walk

COMMUTATIVE = ("+", "*", "min", "max")


def strip(e: Expr) -> Expr:
    while isinstance(e, Cast):
        e = e.x
    return e


def has_vars(e: Expr) -> bool:
    return any(isinstance(n, Var) for n in walk(e))


def match(ie: Expr, ke: Expr, ops: dict[str, Expr], temps: bool) -> Iterator[dict[str, Expr]]:
    ie, ke = strip(ie), strip(ke)
    if isinstance(ie, Access):
        if not ie.indices:  # scalar operand: an immediate, or one tensor element per loop iteration
            if has_vars(ke) and not isinstance(ke, Access):
                return
        elif isinstance(ke, Access):
            if not ke.indices:
                return
        elif not temps or not has_vars(ke):
            return
        if ie.tensor in ops and ops[ie.tensor] != ke:
            return
        yield {**ops, ie.tensor: ke}
        return
    if isinstance(ie, Const):
        if isinstance(ke, Const) and not isinstance(ke.value, bool) and float(ke.value) == float(ie.value):
            yield ops
        return
    if isinstance(ie, (Var, Size)) or type(ie) is not type(ke):
        return
    if isinstance(ie, Binary):
        if ie.op != ke.op:
            return
        orders = [(ke.a, ke.b)] + ([(ke.b, ke.a)] if ie.op in COMMUTATIVE and ke.a != ke.b else [])
        for a, b in orders:
            for o1 in match(ie.a, a, ops, temps):
                yield from match(ie.b, b, o1, temps)
        return
    if isinstance(ie, Unary):
        if ie.op == ke.op:
            yield from match(ie.x, ke.x, ops, temps)
        return
    if isinstance(ie, Call):
        if ie.fn != ke.fn or len(ie.args) != len(ke.args):
            return

        def go(i, o):
            if i == len(ie.args):
                yield o
                return
            for o2 in match(ie.args[i], ke.args[i], o, temps):
                yield from go(i + 1, o2)
        yield from go(0, ops)


def size(e: Expr) -> int:
    return sum(1 for _ in walk(strip(e)))
