"""Semantic checks: name resolution, typing, TC's statement rules, range inference.

Input: the parser's records; output: checked, immutable ``ir.Kernel``s.  Every
rule that TC's ``sema.h`` enforces is an ``IsamapError`` here, located at the
offending token.
"""
from __future__ import annotations

from dataclasses import replace

from ir import dtypes
from ir.builtins import ARITY
from ir.dtypes import BOOL, INT32, DType
from ir.errors import IsamapError, Span, warning_text
from ir.expr import (Access, Binary, Call, Cast, Const, Expr, Name, Select, Size, Unary, Var,
                     simplify, size_const, walk)
from ir.kernel import Dim, Kernel, Range, Stmt, TensorDecl

from .ast import RawDef, RawStmt, WhereExists, WhereLet, WhereRange
from .inference import conditions, infer

_IDENTITY_OPS = ("+", "*", "min", "max")


def narrowing(src: DType, dst: DType) -> bool:
    if src == dst or src.kind == "b":
        return False
    if src.is_float and not dst.is_float:
        return True
    if src.is_float and dst.is_float:
        return src.bits > dst.bits
    if dst.is_float:
        return False
    return src.bits > dst.bits


class _DefChecker:
    def __init__(self, raw: RawDef):
        self.raw = raw
        self.tensors: dict[str, TensorDecl] = {}
        self.inputs: list[TensorDecl] = []
        self.outputs: list[TensorDecl] = []
        self.sizes: list[str] = []
        self.out_dtype: dict[str, DType] = {}
        self.shapes: dict[str, tuple[Dim, ...]] = {}
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ declarations
    def declare(self):
        for p in self.raw.params:
            self._declare(p)
            for d in p.dims:
                if isinstance(d, Size) and d.name not in self.sizes:
                    self.sizes.append(d.name)
            self.inputs.append(p)
            self.shapes[p.name] = tuple(Dim(size_const(0), d) for d in p.dims)
        for r in self.raw.rets:
            if r.name in self.tensors and self.tensors[r.name] in self.inputs:
                raise IsamapError(f"'{r.name}' is both an input and an output", r.span)
            self._declare(r)
            if r.dims:
                for d in r.dims:
                    if isinstance(d, Size) and d.name not in self.sizes:
                        raise IsamapError(f"size '{d.name}' of output '{r.name}' is not a dimension "
                                          f"of any input", d.span or r.span)
            self.outputs.append(r)
        for s in self.sizes:
            if s in self.tensors:
                raise IsamapError(f"'{s}' is used both as a size and as a tensor name",
                                  self.tensors[s].span)

    def _declare(self, t: TensorDecl):
        if t.name in ARITY:
            raise IsamapError(f"'{t.name}' is a built-in function and cannot be redefined", t.span)
        if t.name in self.tensors:
            raise IsamapError(f"tensor '{t.name}' is declared twice", t.span)
        self.tensors[t.name] = t

    # ------------------------------------------------------------------ expressions
    def resolve(self, e: Expr, st: "_StmtCtx") -> Expr:
        """Resolve names and compute element types, bottom-up."""
        if isinstance(e, Const):
            dt = dtypes.FLOAT32 if isinstance(e.value, float) else INT32
            return replace(e, dtype=dt)
        if isinstance(e, Name):
            n = e.name
            if n in st.lets:
                return st.lets[n]
            if n in self.sizes:
                return Size(n, dtype=INT32, span=e.span)
            if n in self.tensors:
                return self.read(n, (), e.span, st)
            if n in ARITY:
                raise IsamapError(f"built-in function '{n}' needs arguments", e.span)
            st.note_var(n, e.span)
            return Var(n, dtype=INT32, span=e.span)
        if isinstance(e, Call):
            n = e.fn
            if n in self.tensors:
                args = tuple(self.resolve(a, st) for a in e.args)
                for a in args:
                    if not a.dtype.is_int:
                        raise IsamapError(f"subscript of '{n}' must have an integral type, not {a.dtype}",
                                          a.span or e.span)
                return self.read(n, args, e.span, st)
            if n in ARITY:
                if len(e.args) != ARITY[n]:
                    raise IsamapError(f"built-in function '{n}' takes {ARITY[n]} argument"
                                      f"{'s' if ARITY[n] != 1 else ''}, {len(e.args)} given", e.span)
                args = tuple(self.resolve(a, st) for a in e.args)
                for a in args:
                    if a.dtype == BOOL:
                        raise IsamapError(f"argument of '{n}' must be a number, not bool", a.span or e.span)
                dt = dtypes.FLOAT64 if any(a.dtype == dtypes.FLOAT64 for a in args) else dtypes.FLOAT32
                return replace(e, args=args, dtype=dt)
            if n in st.lets or n in self.sizes:
                raise IsamapError(f"'{n}' is not a tensor or function and cannot be called", e.span)
            raise IsamapError(f"unknown tensor or function '{n}'", e.span)
        if isinstance(e, Unary):
            x = self.resolve(e.x, st)
            if e.op == "!":
                if x.dtype != BOOL:
                    raise IsamapError(f"operand of '!' must be bool, not {x.dtype}", e.span)
                return replace(e, x=x, dtype=BOOL)
            if x.dtype == BOOL:
                raise IsamapError("operand of unary '-' must be a number, not bool", e.span)
            return replace(e, x=x, dtype=x.dtype)
        if isinstance(e, Binary):
            a, b = self.resolve(e.a, st), self.resolve(e.b, st)
            if e.op in ("&&", "||"):
                for x in (a, b):
                    if x.dtype != BOOL:
                        raise IsamapError(f"operands of '{e.op}' must be bool, not {x.dtype}",
                                          x.span or e.span)
                return replace(e, a=a, b=b, dtype=BOOL)
            for x in (a, b):
                if x.dtype == BOOL and e.op not in ("==", "!="):
                    raise IsamapError(f"operand of '{e.op}' must be a number, not bool; "
                                      f"convert with a cast", x.span or e.span)
            if e.op in ("<", ">", "<=", ">=", "==", "!="):
                return replace(e, a=a, b=b, dtype=BOOL)
            return replace(e, a=a, b=b, dtype=dtypes.promote(a.dtype, b.dtype))
        if isinstance(e, Select):
            c = self.resolve(e.cond, st)
            if c.dtype != BOOL:
                raise IsamapError(f"condition of '?:' must be bool, not {c.dtype}", c.span or e.span)
            a, b = self.resolve(e.a, st), self.resolve(e.b, st)
            return replace(e, cond=c, a=a, b=b, dtype=dtypes.promote(a.dtype, b.dtype))
        if isinstance(e, Cast):
            x = self.resolve(e.x, st)
            return replace(e, x=x, dtype=e.to)
        raise IsamapError(f"unexpected {type(e).__name__} in an expression", e.span)

    def read(self, n: str, args: tuple[Expr, ...], span: Span | None, st: "_StmtCtx") -> Access:
        t = self.tensors[n]
        rank = self.rank_of(n)
        if rank is not None and rank != len(args):
            what = "used without subscripts" if not args else f"found {len(args)}"
            raise IsamapError(f"'{n}' has {rank} dimension{'s' if rank != 1 else ''}, "
                              f"expected {rank} subscript{'s' if rank != 1 else ''} but {what}", span)
        if t not in self.inputs and n not in self.out_dtype:
            raise IsamapError(f"output '{n}' is read before any statement writes it", span)
        acc = Access(n, args, dtype=self.dtype_of(n), span=span)
        st.reads.append(acc)
        return acc

    def rank_of(self, n: str) -> int | None:
        if n in self.shapes:
            return len(self.shapes[n])
        t = self.tensors[n]
        return t.rank

    def dtype_of(self, n: str) -> DType:
        t = self.tensors[n]
        if t in self.inputs:
            return t.dtype
        return self.out_dtype[n]

    def resolve_bound(self, e: Expr) -> Expr:
        for n in walk(e):
            if isinstance(n, Call) or (isinstance(n, Name) and n.name in self.tensors):
                raise IsamapError("tensor accesses and function calls cannot be used in a range bound",
                                  n.span or e.span)
            if isinstance(n, Name) and n.name not in self.sizes:
                raise IsamapError(f"'{n.name}' is not a size: range bounds may use only sizes and "
                                  f"constants (index variables are not allowed: TC iteration "
                                  f"domains are rectangular)", n.span or e.span)

        def conv(x: Expr) -> Expr:
            if isinstance(x, Name):
                return Size(x.name, dtype=INT32, span=x.span)
            if isinstance(x, Const):
                if not isinstance(x.value, int):
                    raise IsamapError("range bounds must be integers", x.span)
                return replace(x, dtype=INT32)
            kids = tuple(conv(k) for k in x.children())
            out = x.rebuild(kids) if kids else x
            if isinstance(out, Unary) and out.op == "!" or isinstance(out, Select) or \
                    isinstance(out, Binary) and out.op not in ("+", "-", "*", "/", "%", "min", "max"):
                raise IsamapError("range bounds must be integer arithmetic on sizes and constants", x.span)
            if isinstance(out, Cast) and not out.to.is_int:
                raise IsamapError("range bounds must be integers", x.span)
            return replace(out, dtype=INT32)
        return conv(e)

    # ------------------------------------------------------------------ statements
    def statement(self, rs: RawStmt) -> Stmt:
        n = rs.tensor
        if n not in self.tensors:
            raise IsamapError(f"'{n}' is not listed as an input or output of '{self.raw.name}'; "
                              f"temporary tensors are not supported: add it to the outputs",
                              rs.lhs_span)
        t = self.tensors[n]
        if t in self.inputs:
            raise IsamapError(f"'{n}' is an input; inputs are immutable", rs.lhs_span)
        idx = rs.indices or []
        for i, name in enumerate(idx):
            sp = rs.index_spans[i] if i < len(rs.index_spans) else rs.lhs_span
            if name in idx[:i]:
                raise IsamapError(f"index '{name}' is already used on the left-hand side", sp)
            if name in self.sizes or name in self.tensors or name in ARITY:
                raise IsamapError(f"'{name}' cannot be a left-hand-side index: it names a "
                                  f"{'size' if name in self.sizes else 'tensor or function'}", sp)
        rank = self.rank_of(n)
        if rank is not None and rank != len(idx):
            raise IsamapError(f"'{n}' has {rank} dimension{'s' if rank != 1 else ''} but is written "
                              f"with {len(idx)} index{'es' if len(idx) != 1 else ''}", rs.lhs_span)
        st = _StmtCtx(idx, rs)
        for i, name in enumerate(idx):
            st.note_var(name, rs.index_spans[i] if i < len(rs.index_spans) else rs.lhs_span)
        # where items: lets are inlined, ranges and exists are kept
        where_rng: dict[str, tuple[Expr, Expr]] = {}
        ranges: list[Range] = []
        for w in rs.where:
            if isinstance(w, WhereLet):
                if w.name in self.tensors or w.name in self.sizes or w.name in idx or w.name in ARITY:
                    raise IsamapError(f"let name '{w.name}' shadows an existing name", w.span)
                st.lets[w.name] = self.resolve(w.value, st)
        rhs = self.resolve(rs.rhs, st)
        exists = [self.resolve(w.expr, st) for w in rs.where if isinstance(w, WhereExists)]
        pending_ranges = [w for w in rs.where if isinstance(w, WhereRange)]
        equiv = None
        if rs.equiv is not None:
            args = tuple(self.resolve(a, st) for a in rs.equiv.args)
            equiv = replace(rs.equiv, args=args, dtype=rhs.dtype)
        for w in pending_ranges:
            if w.var in st.lets:
                raise IsamapError(f"undefined variable '{w.var}': a let name cannot be given a range",
                                  w.span)
            if w.var in self.sizes or w.var in self.tensors:
                raise IsamapError(f"'{w.var}' is not an index variable", w.span)
            if w.var in where_rng:
                raise IsamapError(f"the range of '{w.var}' is given twice; TC domains are rectangular",
                                  w.span)
            if w.var not in st.var_spans:
                raise IsamapError(f"'{w.var}' is given a range but is not used in the statement", w.span)
            lo, hi = self.resolve_bound(w.lo), self.resolve_bound(w.hi)
            where_rng[w.var] = (lo, hi)
            ranges.append(Range(w.var, lo, hi, w.span))
        order = list(idx) + [v for v in st.var_spans if v not in idx]
        red = [v for v in order if v not in idx]
        if red and rs.op == "=":
            v = red[0]
            raise IsamapError(f"this statement includes reduction variable '{v}' but does not "
                              f"specify a reduction; use e.g. '+=!'", st.var_spans[v] or rs.span)
        # element type of the written tensor
        first = n not in self.out_dtype
        if first:
            dt = t.dtype if t.annotated and t.dtype is not None else rhs.dtype
            if rs.op in ("+", "*") and dt == BOOL:
                dt = INT32
        else:
            dt = self.out_dtype[n]
        if narrowing(rhs.dtype, dt):
            raise IsamapError(f"attempting to assign type {rhs.dtype} to narrower type {dt} "
                              f"without an explicit cast", rs.rhs.span or rs.span)
        if first and rs.op != "=" and not rs.bang:
            self.warnings.append(warning_text(
                f"reduction into '{n}' without initialization: it starts from zero; consider "
                f"'{rs.op}=!'", rs.span))
        # range inference
        reads = [(a, self.shapes[a.tensor]) for a in _all_reads(rhs, exists)]
        conds = conditions(reads, set(order))
        fallback = {}
        if n in self.shapes:
            for v, d in zip(idx, self.shapes[n]):
                fallback[v] = (d.min, simplify(Binary("+", d.min, d.extent)))
        domain = infer(order, list(idx), where_rng, conds, fallback, st.var_spans, rs.span)
        if first:
            self.out_dtype[n] = dt
            self.shapes[n] = tuple(Dim(r.lo, simplify(Binary("-", r.hi, r.lo))) for r in domain[:len(idx)])
        init = rs.bang and first and rs.op in _IDENTITY_OPS
        return Stmt(n, tuple(idx), rs.op, rs.bang, rhs, tuple(ranges), tuple(exists), equiv, init,
                    domain, span=rs.span, lhs_span=rs.lhs_span)

    def run(self) -> Kernel:
        self.declare()
        stmts = tuple(self.statement(s) for s in self.raw.stmts)
        for o in self.outputs:
            if o.name not in self.out_dtype:
                raise IsamapError(f"output '{o.name}' is never written", o.span)
        outs = tuple(replace(o, dtype=self.out_dtype[o.name]) for o in self.outputs)
        shapes = tuple((t.name, self.shapes[t.name]) for t in self.inputs + self.outputs)
        return Kernel(self.raw.name, tuple(self.inputs), outs, stmts, tuple(self.sizes), shapes,
                      tuple(self.warnings), span=self.raw.span)


def _all_reads(rhs: Expr, exists: list[Expr]) -> list[Access]:
    out = []
    for e in [rhs, *exists]:
        out += [n for n in walk(e) if isinstance(n, Access)]
    return out


class _StmtCtx:
    def __init__(self, lhs: list[str], raw: RawStmt):
        self.lhs = lhs
        self.raw = raw
        self.lets: dict[str, Expr] = {}
        self.var_spans: dict[str, Span | None] = {}
        self.reads: list[Access] = []

    def note_var(self, name: str, span: Span | None):
        self.var_spans.setdefault(name, span)


def check_def(raw: RawDef) -> Kernel:
    return _DefChecker(raw).run()


