"""Parse-tree records that still need name resolution (sema turns them into IR)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ir.errors import Span
from ir.expr import Expr
from ir.kernel import TensorDecl


@dataclass
class WhereRange:
    var: str
    lo: Expr
    hi: Expr
    span: Span


@dataclass
class WhereLet:
    name: str
    value: Expr
    span: Span


@dataclass
class WhereExists:
    expr: Expr
    span: Span


@dataclass
class RawStmt:
    tensor: str
    indices: list[str] | None  # None: rank-0 written without parentheses
    op: str
    bang: bool
    rhs: Expr
    where: list = field(default_factory=list)
    equiv: Expr | None = None
    span: Span | None = None
    lhs_span: Span | None = None
    index_spans: list[Span] = field(default_factory=list)


@dataclass
class RawDef:
    name: str
    params: list[TensorDecl]
    rets: list[TensorDecl]
    stmts: list[RawStmt]
    span: Span
