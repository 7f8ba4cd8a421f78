"""Kernels: tensor declarations, statements, and the checked, range-inferred def.

A :class:`Kernel` is what the front end produces after semantic checks and
range inference.  Derived facts (element types, iteration domains, tensor
shapes) are stored on the nodes so every later stage reads them instead of
recomputing them; they are deterministic functions of the source, so
structural equality still means "the same program".
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .dtypes import DType
from .errors import IsamapError, Span
from .expr import Expr, Size, evaluate_int

_META = dict(compare=False, repr=False, hash=False)


def memo(obj, key: str, compute):
    """A derived value of an immutable IR node, computed once (the scheduler asks for
    ``copy_instrs`` in its innermost loops, a compiled kernel for ``macs`` on every call).
    Stored in the instance dict directly, as the dataclasses are frozen; not a field, so
    equality and hashing are unaffected."""
    d = obj.__dict__
    if key not in d:
        d[key] = compute()
    return d[key]


def by_name(items, name: str):
    """The item whose ``.name`` is ``name`` (KeyError if none)."""
    for it in items:
        if it.name == name:
            return it
    raise KeyError(name)

# Reduction operators as written: '=' is plain assignment.
OPS = ("=", "+", "*", "min", "max")


@dataclass(frozen=True)
class Range:
    """``var in lo:hi`` (half open); bounds are size expressions."""

    var: str
    lo: Expr
    hi: Expr
    span: Span | None = field(default=None, **_META)


@dataclass(frozen=True)
class Dim:
    """One dimension of a tensor: indices ``min .. min+extent-1`` are valid."""

    min: Expr
    extent: Expr


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dtype: DType | None
    dims: tuple[Expr, ...] | None  # as written (Size or Const); None: not annotated
    annotated: bool = True  # False for an output written as a bare name
    span: Span | None = field(default=None, **_META)

    @property
    def rank(self) -> int | None:
        return None if self.dims is None else len(self.dims)


@dataclass(frozen=True)
class Stmt:
    tensor: str
    indices: tuple[str, ...]
    op: str  # one of OPS
    bang: bool  # written with '!'
    rhs: Expr
    where: tuple[Range, ...] = ()
    exists: tuple[Expr, ...] = ()
    equiv: Expr | None = None  # the '<=>' annotation; no semantic effect
    # derived by sema:
    init: bool = False  # tensor is initialised with the op's identity first
    domain: tuple[Range, ...] = ()  # LHS indices, then reduction indices
    span: Span | None = field(default=None, **_META)
    lhs_span: Span | None = field(default=None, **_META)

    @property
    def reduction_vars(self) -> tuple[str, ...]:
        return tuple(r.var for r in self.domain if r.var not in self.indices)

    @property
    def is_reduction(self) -> bool:
        return bool(self.reduction_vars)

    def range_of(self, var: str) -> Range:
        for r in self.domain:
            if r.var == var:
                return r
        raise KeyError(var)

    @property
    def op_text(self) -> str:
        if self.op == "=":
            return "="
        return f"{self.op}={'!' if self.bang else ''}"


@dataclass(frozen=True)
class Kernel:
    name: str
    inputs: tuple[TensorDecl, ...]
    outputs: tuple[TensorDecl, ...]
    stmts: tuple[Stmt, ...]
    # derived by sema:
    sizes: tuple[str, ...] = ()  # size symbols in order of first appearance
    shapes: tuple[tuple[str, tuple[Dim, ...]], ...] = ()
    warnings: tuple[str, ...] = field(default=(), **_META)
    span: Span | None = field(default=None, **_META)

    def tensor(self, name: str) -> TensorDecl:
        return by_name(self.inputs + self.outputs, name)

    def dims(self, name: str) -> tuple[Dim, ...]:
        return dict(self.shapes)[name]

    def is_input(self, name: str) -> bool:
        return any(t.name == name for t in self.inputs)

    def concrete_shape(self, name: str, sizes: dict[str, int]) -> tuple[int, ...]:
        return tuple(evaluate_int(d.extent, sizes) for d in self.dims(name))


@dataclass(frozen=True)
class Module:
    """Everything in one source file: defs (and, later, targets)."""

    kernels: tuple[Kernel, ...]
    targets: tuple = ()
    span: Span | None = field(default=None, **_META)

    def kernel(self, name: str | None = None) -> Kernel:
        if name is None:
            if len(self.kernels) == 1:
                return self.kernels[0]
            names = ", ".join(k.name for k in self.kernels) or "none"
            if not self.kernels:
                raise IsamapError("the file defines no kernel (no 'def')", self.span)
            raise IsamapError(f"the file defines several kernels ({names}); pick one with --kernel NAME",
                              self.span)
        for k in self.kernels:
            if k.name == name:
                return k
        names = ", ".join(k.name for k in self.kernels) or "none"
        raise IsamapError(f"no kernel named '{name}' (defined: {names})", self.span)


def size_symbols(dims: tuple[Expr, ...]) -> list[str]:
    return [d.name for d in dims if isinstance(d, Size)]
