"""Index expressions compiled to Python functions (the emitter evaluates millions of them)."""
from __future__ import annotations

from functools import lru_cache

from ir.expr import Binary, Const, Expr, Size, Unary, Var


def _src(e: Expr) -> str:
    if isinstance(e, Const):
        return repr(e.value)
    if isinstance(e, (Var, Size)):
        return f"env[{e.name!r}]"
    if isinstance(e, Unary) and e.op == "-":
        return f"(-{_src(e.x)})"
    if isinstance(e, Binary):
        a, b = _src(e.a), _src(e.b)
        if e.op == "min":
            return f"min({a}, {b})"
        if e.op == "max":
            return f"max({a}, {b})"
        op = {"/": "//"}.get(e.op, e.op)
        return f"({a} {op} {b})"
    raise TypeError(f"not an index expression: {e!r}")


@lru_cache(maxsize=None)
def compile_expr(e: Expr):
    if isinstance(e, Const):
        v = e.value
        return lambda env: v
    if isinstance(e, Var):
        n = e.name
        return lambda env: env[n]
    return eval(f"lambda env: {_src(e)}")  # noqa: S307 - generated from our own IR


def compile_guards(guards) -> object:
    """``all(a < b for a, b in guards)`` as one function, evaluated left to right."""
    if not guards:
        return lambda env: True
    body = " and ".join(f"({_src(a)} < {_src(b)})" for a, b in guards)
    return eval(f"lambda env: {body}")  # noqa: S307 - generated from our own IR
