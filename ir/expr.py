"""Expressions: index arithmetic, values, and the size expressions of ranges.

One node family serves all three uses, as in TC, where an index variable may
be used as a value and a value (a tensor read) may be used as an index.  Nodes
are frozen dataclasses; ``span`` is excluded from equality and hashing so that
structurally equal programs compare equal wherever they came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Union

from .dtypes import BOOL, FLOAT32, INT32, DType
from .errors import Span

_META = dict(compare=False, repr=False, hash=False)


@dataclass(frozen=True)
class Expr:
    dtype: DType | None = field(default=None, kw_only=True)
    span: Span | None = field(default=None, kw_only=True, **_META)

    def children(self) -> tuple["Expr", ...]:
        return ()

    def rebuild(self, kids: tuple["Expr", ...]) -> "Expr":
        return self


@dataclass(frozen=True)
class Const(Expr):
    value: Union[int, float, bool]


@dataclass(frozen=True)
class Var(Expr):
    """An index variable of a statement (int32 when used as a value)."""

    name: str


@dataclass(frozen=True)
class Size(Expr):
    """A size symbol of the kernel (int32)."""

    name: str


@dataclass(frozen=True)
class Name(Expr):
    """An identifier not yet resolved (parser output only; sema replaces it)."""

    name: str


@dataclass(frozen=True)
class Access(Expr):
    tensor: str
    indices: tuple[Expr, ...] = ()

    def children(self):
        return self.indices

    def rebuild(self, kids):
        return replace(self, indices=tuple(kids))


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # '-' or '!'
    x: Expr

    def children(self):
        return (self.x,)

    def rebuild(self, kids):
        return replace(self, x=kids[0])


ARITH = ("+", "-", "*", "/", "%", "min", "max")
COMPARE = ("<", ">", "<=", ">=", "==", "!=")
LOGIC = ("&&", "||")


@dataclass(frozen=True)
class Binary(Expr):
    op: str
    a: Expr
    b: Expr

    def children(self):
        return (self.a, self.b)

    def rebuild(self, kids):
        return replace(self, a=kids[0], b=kids[1])


@dataclass(frozen=True)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr

    def children(self):
        return (self.cond, self.a, self.b)

    def rebuild(self, kids):
        return replace(self, cond=kids[0], a=kids[1], b=kids[2])


@dataclass(frozen=True)
class Call(Expr):
    fn: str
    args: tuple[Expr, ...] = ()

    def children(self):
        return self.args

    def rebuild(self, kids):
        return replace(self, args=tuple(kids))


@dataclass(frozen=True)
class Cast(Expr):
    to: DType
    x: Expr

    def children(self):
        return (self.x,)

    def rebuild(self, kids):
        return replace(self, x=kids[0])


# --------------------------------------------------------------------------- traversal

def walk(e: Expr) -> Iterator[Expr]:
    """Pre-order traversal."""
    stack = [e]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children()))


def transform(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Bottom-up rewrite: ``fn`` returns a replacement or None to keep the node."""
    kids = e.children()
    if kids:
        new = tuple(transform(k, fn) for k in kids)
        if any(a is not b for a, b in zip(new, kids)):
            e = e.rebuild(new)
    r = fn(e)
    return e if r is None else r


def vars_of(e: Expr) -> list[str]:
    """Index variables in order of first occurrence."""
    seen: dict[str, None] = {}
    for n in walk(e):
        if isinstance(n, Var):
            seen.setdefault(n.name)
    return list(seen)


def accesses(e: Expr) -> list[Access]:
    return [n for n in walk(e) if isinstance(n, Access)]


def reads_at(a: Access, indices) -> bool:
    """Whether ``a`` reads exactly the element a statement writing at ``indices`` (variable
    names) writes: ``O(i, j)`` for ``O(i, j) = ...``, not ``O(j, i)`` or ``O(i + 1, j)``."""
    return len(a.indices) == len(indices) and all(isinstance(x, Var) and x.name == v
                                                  for x, v in zip(a.indices, indices))


def strip_types(e: Expr) -> Expr:
    return transform(e, lambda n: replace(n, dtype=None) if n.dtype is not None else None)


# --------------------------------------------------------------------------- affine forms

@dataclass(frozen=True)
class Linear:
    """``sum(coef * symbol) + const`` with integer coefficients."""

    terms: tuple[tuple[str, int], ...]
    const: int

    @staticmethod
    def make(terms: dict[str, int], const: int) -> "Linear":
        return Linear(tuple(sorted((k, v) for k, v in terms.items() if v != 0)), const)

    def coef(self, name: str) -> int:
        return dict(self.terms).get(name, 0)

    def names(self) -> list[str]:
        return [k for k, _ in self.terms]

    def __add__(self, o: "Linear") -> "Linear":
        t = dict(self.terms)
        for k, v in o.terms:
            t[k] = t.get(k, 0) + v
        return Linear.make(t, self.const + o.const)

    def scale(self, c: int) -> "Linear":
        return Linear.make({k: v * c for k, v in self.terms}, self.const * c)


def linear(e: Expr) -> Linear | None:
    """The affine form of an integer expression over Var/Size symbols, or None."""
    if isinstance(e, Const):
        if isinstance(e.value, bool) or not float(e.value).is_integer():
            return None
        return Linear((), int(e.value))
    if isinstance(e, (Var, Size)):
        return Linear(((e.name, 1),), 0)
    if isinstance(e, Unary) and e.op == "-":
        x = linear(e.x)
        return None if x is None else x.scale(-1)
    if isinstance(e, Binary) and e.op in ("+", "-", "*"):
        a, b = linear(e.a), linear(e.b)
        if a is None or b is None:
            return None
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a + b.scale(-1)
        if not a.terms:
            return b.scale(a.const)
        if not b.terms:
            return a.scale(b.const)
        return None
    if isinstance(e, Cast) and e.to.is_int:
        return linear(e.x)
    return None


def from_linear(lin: Linear, kinds: dict[str, type] | None = None) -> Expr:
    """Rebuild a canonical expression (symbols are Size unless ``kinds`` says Var)."""
    kinds = kinds or {}
    out: Expr | None = None
    for name, c in sorted(lin.terms, key=lambda t: t[1] < 0):
        sym = kinds.get(name, Size)(name, dtype=INT32)
        term = sym if abs(c) == 1 else Binary("*", Const(abs(c), dtype=INT32), sym, dtype=INT32)
        if out is None:
            out = term if c > 0 else Unary("-", term, dtype=INT32)
        else:
            out = Binary("+" if c > 0 else "-", out, term, dtype=INT32)
    if out is None:
        return Const(lin.const, dtype=INT32)
    if lin.const > 0:
        out = Binary("+", out, Const(lin.const, dtype=INT32), dtype=INT32)
    elif lin.const < 0:
        out = Binary("-", out, Const(-lin.const, dtype=INT32), dtype=INT32)
    return out


# --------------------------------------------------------------------------- size expressions

def size_const(v: int) -> Const:
    return Const(int(v), dtype=INT32)


def simplify(e: Expr) -> Expr:
    """Normalise an integer size expression (affine parts, constant folding).

    Enough algebra to print inferred shapes the way a person would write them:
    ``(I - 1) / 2 + 1`` becomes ``(I + 1) / 2``, ``min(X, X)`` becomes ``X``.
    """
    lin = linear(e)
    if lin is not None:
        return from_linear(lin)
    if not isinstance(e, Binary):
        kids = tuple(simplify(k) for k in e.children())
        return e.rebuild(kids) if kids else e
    a, b = simplify(e.a), simplify(e.b)
    if e.op in ("+", "-"):
        if isinstance(b, Const) and b.value == 0:
            return a
        if e.op == "+" and isinstance(a, Const) and a.value == 0:
            return b
        # floor(x / c) + k  ==  floor((x + k*c) / c)
        for q, k, sign in ((a, b, 1), (b, a, 1)) if e.op == "+" else ((a, b, -1),):
            if isinstance(q, Binary) and q.op == "/" and isinstance(q.b, Const) and q.b.value > 0:
                lk = linear(k)
                if lk is not None and not lk.terms:
                    num = simplify(Binary("+", q.a, size_const(sign * lk.const * int(q.b.value))))
                    return simplify(Binary("/", num, q.b))
        return Binary(e.op, a, b, dtype=INT32)
    if e.op in ("/", "%", "min", "max"):
        if isinstance(a, Const) and isinstance(b, Const):
            return size_const(_int_op(e.op, int(a.value), int(b.value)))
        if e.op in ("min", "max"):
            if a == b:
                return a
            d = _const_difference(a, b)
            if d is not None:
                pick_a = (d <= 0) == (e.op == "min")
                return a if pick_a else b
        if e.op == "/" and isinstance(b, Const) and b.value == 1:
            return a
        return Binary(e.op, a, b, dtype=INT32)
    return Binary(e.op, a, b, dtype=e.dtype)


def _const_difference(a: Expr, b: Expr) -> int | None:
    """``a - b`` when it is a known constant sign-wise (``a``, ``b`` affine or same-divisor floors)."""
    la, lb = linear(a), linear(b)
    if la is not None and lb is not None:
        d = la + lb.scale(-1)
        return None if d.terms else d.const
    if all(isinstance(x, Binary) and x.op == "/" and isinstance(x.b, Const) for x in (a, b)) \
            and a.b == b.b and int(a.b.value) > 0:
        d = _const_difference(a.a, b.a)
        if d is not None:  # floor is monotone: the sign of the difference carries over
            return (d > 0) - (d < 0)
    return None


def _int_op(op: str, a: int, b: int) -> int:
    if op == "/":
        return a // b if b else 0
    if op == "%":
        return a % b if b else 0
    if op == "min":
        return min(a, b)
    if op == "max":
        return max(a, b)
    raise ValueError(op)


def evaluate_int(e: Expr, env: dict[str, int]) -> int:
    """Evaluate a size expression with the size symbols bound (TC floor division)."""
    if isinstance(e, Const):
        return int(e.value)
    if isinstance(e, (Size, Var, Name)):
        return int(env[e.name])
    if isinstance(e, Unary) and e.op == "-":
        return -evaluate_int(e.x, env)
    if isinstance(e, Binary):
        a, b = evaluate_int(e.a, env), evaluate_int(e.b, env)
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        return _int_op(e.op, a, b)
    if isinstance(e, Cast):
        return evaluate_int(e.x, env)
    raise TypeError(f"not a size expression: {e!r}")


def ceil_div(x: Expr, a: int) -> Expr:
    return simplify(Binary("/", Binary("+", x, size_const(a - 1)), size_const(a)))


def floor_div(x: Expr, a: int) -> Expr:
    return simplify(Binary("/", x, size_const(a)))



__all__ = [
    "Expr", "Const", "Var", "Size", "Name", "Access", "Unary", "Binary", "Select",
    "Call", "Cast", "walk", "transform", "vars_of", "accesses", "Linear", "linear",
    "from_linear", "simplify", "evaluate_int", "ceil_div", "floor_div", "size_const",
    "ARITH", "COMPARE", "LOGIC", "BOOL", "FLOAT32", "INT32", "strip_types",
]
