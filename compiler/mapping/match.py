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

from ir.expr import Access, Binary, Call, Cast, Const, Expr, Select, Size, Unary, Var, walk

COMMUTATIVE = ("+", "*", "min", "max")


def strip(e: Expr) -> Expr:
    while isinstance(e, Cast):
        e = e.x
    return e


def has_vars(e: Expr) -> bool:
    return any(isinstance(n, Var) for n in walk(e))


def immediate(e: Expr) -> bool:
    """Whether ``e`` can be an instruction's immediate: a constant expression (sizes and
    literals), reading no variable and no tensor."""
    return not any(isinstance(n, (Var, Access)) for n in walk(e))


def _const(v, like: Expr) -> Const:
    return Const(float(v) if like.dtype is None or like.dtype.is_float else int(v), dtype=like.dtype)


def _is(e: Expr, v) -> bool:
    e = strip(e)
    return isinstance(e, Const) and not isinstance(e.value, bool) and float(e.value) == v


def spellings(ke: Expr) -> Iterator[Expr]:
    """``ke`` and the forms an instruction may spell it in: ``-x`` as ``0 - x`` or ``x * -1``,
    ``x - c`` as ``x + -c``,
    ``relu(x)`` as ``max(x, 0)``, ``max``/``min`` as ``fmax``/``fmin`` (and back), and the
    logistic function written out, ``1 / (1 + exp(-x))``, as ``sigmoid(x)``.  Only the top
    node is rewritten; the operands are the kernel's own subexpressions, so bindings stay
    the kernel's data."""
    yield ke
    if isinstance(ke, Unary) and ke.op == "-":
        yield Binary("-", _const(0, ke), ke.x, dtype=ke.dtype)
        yield Binary("*", ke.x, _const(-1, ke), dtype=ke.dtype)
    elif isinstance(ke, Call) and ke.fn == "relu":
        zero = _const(0, ke)
        yield Binary("max", ke.args[0], zero, dtype=ke.dtype)
        yield Call("fmax", (ke.args[0], zero), dtype=ke.dtype)
    elif isinstance(ke, Binary) and ke.op == "-" and isinstance(strip(ke.b), Const) \
            and not isinstance(strip(ke.b).value, bool):
        c = strip(ke.b)  # x - c is exactly x + (-c)
        yield Binary("+", ke.a, Const(-c.value, dtype=c.dtype), dtype=ke.dtype)
    elif isinstance(ke, Binary) and ke.op in ("max", "min"):
        yield Call("f" + ke.op, (ke.a, ke.b), dtype=ke.dtype)
    elif isinstance(ke, Call) and ke.fn in ("fmax", "fmin") and len(ke.args) == 2:
        yield Binary(ke.fn[1:], ke.args[0], ke.args[1], dtype=ke.dtype)
    elif isinstance(ke, Binary) and ke.op == "/" and _is(ke.a, 1):
        den = strip(ke.b)
        if isinstance(den, Binary) and den.op == "+":
            for one, e in ((den.a, den.b), (den.b, den.a)):
                e = strip(e)
                if _is(one, 1) and isinstance(e, Call) and e.fn == "exp":
                    neg = strip(e.args[0])
                    if isinstance(neg, Unary) and neg.op == "-":
                        yield Call("sigmoid", (neg.x,), dtype=ke.dtype)
                        return


def match(ie: Expr, ke: Expr, ops: dict[str, Expr], temps: bool) -> Iterator[dict[str, Expr]]:
    seen = []
    for alt in spellings(strip(ke)):
        for o in _match(ie, alt, ops, temps):
            if o not in seen:
                seen.append(o)
                yield o


def _match(ie: Expr, ke: Expr, ops: dict[str, Expr], temps: bool) -> Iterator[dict[str, Expr]]:
    ie, ke = strip(ie), strip(ke)
    if isinstance(ie, Access):
        if not ie.indices:  # scalar operand: an immediate, or one tensor element per loop iteration
            # an immediate is a constant expression; a tensor element is one read (the
            # lowering loads it): an expression over reads (-T0 of a rank-0 T0) is neither
            if not isinstance(ke, Access) and not immediate(ke):
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
    if isinstance(ie, Select):
        for o1 in _match(ie.cond, ke.cond, ops, temps):
            for o2 in _match(ie.a, ke.a, o1, temps):
                yield from _match(ie.b, ke.b, o2, temps)
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
