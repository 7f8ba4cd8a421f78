"""Print IR back as TC source: ``parse(print_kernel(k)) == k``."""
from __future__ import annotations

from .dtypes import spell
from .expr import Access, Binary, Call, Cast, Const, Expr, Name, Select, Size, Unary, Var
from .kernel import Kernel, Module, Stmt

_PREC = {"||": 2, "&&": 3, "<": 4, ">": 4, "<=": 4, ">=": 4, "==": 4, "!=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}
_ATOM = 8


def prec(e: Expr) -> int:
    if isinstance(e, Select):
        return 1
    if isinstance(e, Binary) and e.op in _PREC:
        return _PREC[e.op]
    if isinstance(e, Unary):
        return 7
    if isinstance(e, Const) and _is_negative(e.value):
        return 7  # prints with a leading '-'
    return _ATOM


def _is_negative(v) -> bool:
    return not isinstance(v, bool) and v < 0


def _const(v) -> str:
    if isinstance(v, bool):
        return "(1 == 1)" if v else "(1 == 0)"
    if isinstance(v, int):
        return str(v)
    r = repr(float(v))
    if r in ("inf", "-inf", "nan"):
        raise ValueError(f"constant {r} has no TC spelling")
    return r


def expr(e: Expr, need: int = 0) -> str:
    s = _expr(e)
    return f"({s})" if prec(e) < need else s


def _expr(e: Expr) -> str:
    if isinstance(e, Const):
        return _const(e.value)
    if isinstance(e, (Var, Size, Name)):
        return e.name
    if isinstance(e, Access):
        if not e.indices:
            return e.tensor
        return f"{e.tensor}({', '.join(expr(i) for i in e.indices)})"
    if isinstance(e, Unary):
        return f"{e.op}{expr(e.x, 7)}"
    if isinstance(e, Binary):
        if e.op in ("min", "max"):
            return f"{e.op}({expr(e.a)}, {expr(e.b)})"
        p = _PREC[e.op]
        return f"{expr(e.a, p)} {e.op} {expr(e.b, p + 1)}"
    if isinstance(e, Select):
        return f"{expr(e.cond, 2)} ? {expr(e.a)} : {expr(e.b, 1)}"
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(expr(a) for a in e.args)})"
    if isinstance(e, Cast):
        return f"{spell(e.to)}({expr(e.x)})"
    raise TypeError(f"cannot print {type(e).__name__}")


def stmt(s: Stmt) -> str:
    lhs = s.tensor + (f"({', '.join(s.indices)})" if s.indices else "")
    out = f"{lhs} {s.op_text} {expr(s.rhs)}"
    if s.equiv is not None:
        out += f" <=> {expr(s.equiv)}"
    items = [f"{r.var} in {expr(r.lo)}:{expr(r.hi)}" for r in s.where]
    items += [f"exists {expr(x)}" for x in s.exists]
    if items:
        out += " where " + ", ".join(items)
    return out


def _decl(t, typed: bool) -> str:
    if not typed:
        return t.name
    dims = f"({', '.join(expr(d) for d in t.dims)})" if t.dims else ""
    return f"{spell(t.dtype)}{dims} {t.name}"


def kernel(k: Kernel) -> str:
    ins = ", ".join(_decl(t, True) for t in k.inputs)
    outs = ", ".join(_decl(t, t.annotated) for t in k.outputs)
    body = "".join(f"    {stmt(s)}\n" for s in k.stmts)
    return f"def {k.name}({ins}) -> ({outs}) {{\n{body}}}\n"


def module(m: Module) -> str:
    return "\n".join(kernel(k) for k in m.kernels)


def domain(s: Stmt) -> str:
    """The inferred iteration space of a statement, for ``--emit ir``."""
    return ", ".join(f"{r.var} in {expr(r.lo)}:{expr(r.hi)}" for r in s.domain)
