"""The numpy reference interpreter: the ground truth every backend is tested against.

Each expression is evaluated to an array over the statement variables it
depends on (a "named array": axes kept in the statement's variable order), so
evaluation is vectorised end to end: plain subscripts are views, affine and
gathered subscripts are fancy indexing, ``+=`` reductions of products go
through ``np.einsum`` (BLAS), other reductions materialise and reduce.  Large
iteration spaces are processed in chunks of the outermost output variable to
bound memory.
"""
from __future__ import annotations

from math import prod

import numpy as np

from . import dtypes
from .bind import Bound, bind
from .builtins import NUMPY
from .dtypes import BFLOAT16, BOOL, DType
from .errors import IsamapError, Span
from .expr import Access, Binary, Call, Cast, Const, Expr, Select, Size, Unary, Var, linear
from .kernel import Kernel, Stmt

CHUNK_ELEMENTS = 1 << 24

_BIN = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "min": np.minimum, "max": np.maximum,
    "<": np.less, ">": np.greater, "<=": np.less_equal, ">=": np.greater_equal,
    "==": np.equal, "!=": np.not_equal, "&&": np.logical_and, "||": np.logical_or,
}


def identity(op: str, dt: DType):
    return {"+": 0, "*": 1, "min": dtypes.max_value(dt), "max": dtypes.min_value(dt)}[op]


def _fix(x: np.ndarray, dt: DType) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != dt.np:
        x = x.astype(dt.np)
    if dt == BFLOAT16:
        x = dtypes.round_bf16(x)
    return x


def infer_sizes(k: Kernel, inputs: dict[str, np.ndarray]) -> dict[str, int]:
    """Size values read off the input arrays; inconsistencies are user errors."""
    sizes: dict[str, int] = {}
    origin: dict[str, str] = {}
    for t in k.inputs:
        if t.name not in inputs:
            continue
        a = np.asarray(inputs[t.name])
        if a.ndim != len(t.dims):
            raise IsamapError(f"input '{t.name}' must have {len(t.dims)} dimension"
                              f"{'s' if len(t.dims) != 1 else ''}, got an array of shape {a.shape}", t.span)
        for axis, (d, n) in enumerate(zip(t.dims, a.shape)):
            if isinstance(d, Size):
                if d.name in sizes and sizes[d.name] != n:
                    raise IsamapError(f"inconsistent size {d.name}: {sizes[d.name]} from "
                                      f"{origin[d.name]} but {n} from {t.name} (axis {axis})", t.span)
                sizes[d.name], origin[d.name] = int(n), f"{t.name} (axis {axis})"
            elif isinstance(d, Const) and d.value != n:
                raise IsamapError(f"input '{t.name}' axis {axis} must have {d.value} elements, got {n}",
                                  t.span)
    return sizes


def prepare_inputs(k: Kernel, inputs: dict[str, np.ndarray], sizes: dict[str, int] | None,
                   where: Span | None = None) -> tuple[Bound, dict[str, np.ndarray]]:
    names = [t.name for t in k.inputs]
    extra = [n for n in inputs if n not in names]
    if extra:
        raise IsamapError(f"kernel '{k.name}' has no input named '{extra[0]}' (inputs: {', '.join(names)})",
                          where)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise IsamapError(f"missing input{'s' if len(missing) > 1 else ''}: {', '.join(missing)}", where)
    got = infer_sizes(k, inputs)
    if sizes is not None:
        for n, v in got.items():
            if n in sizes and sizes[n] != v:
                raise IsamapError(f"the inputs give {n}={v} but the kernel was built for {n}={sizes[n]}",
                                  where)
        got = {**got, **sizes}
    b = bind(k, got, where=where)
    arrays = {}
    for t in k.inputs:
        a = np.asarray(inputs[t.name])
        if a.dtype.kind not in "biuf":
            raise IsamapError(f"input '{t.name}' has unsupported dtype {a.dtype}", where)
        arrays[t.name] = _fix(a, t.dtype)
    return b, arrays


def run(k: Kernel, inputs: dict[str, np.ndarray], sizes: dict[str, int] | None = None,
        initial: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Execute ``k``; returns every output by name.  ``initial`` seeds outputs (default zeros)."""
    b, arrays = prepare_inputs(k, inputs, sizes)
    return execute(b, arrays, initial)


def execute(b: Bound, arrays: dict[str, np.ndarray], initial=None) -> dict[str, np.ndarray]:
    k = b.kernel
    env = dict(arrays)
    for t in k.outputs:
        if initial and t.name in initial:
            env[t.name] = _fix(np.array(initial[t.name], copy=True), t.dtype).reshape(b.shapes[t.name])
        else:
            env[t.name] = np.zeros(b.shapes[t.name], dtype=t.dtype.np)
    with np.errstate(all="ignore"):
        for i, s in enumerate(k.stmts):
            _Statement(b, s, b.domain(i), env).run()
    return {t.name: env[t.name] for t in k.outputs}


def _exact_in_doubles(spec: str, ops: list, terms: int) -> np.ndarray | None:
    """An integer product-sum computed in float64 (BLAS) where every partial sum is exact there
    (the largest |factor| product times the terms summed stays below 2^53), as int64, whose
    cast to the statement's type wraps as integer arithmetic does; None otherwise (and for
    floats).  numpy's integer einsum has no BLAS: an int8 GEMM of 1024^3 took ~6 s to check."""
    if not ops or any(o.dtype.kind not in "iu" or o.size == 0 for o in ops):
        return None
    bound = float(terms)
    for o in ops:
        bound *= max(abs(int(o.max())), abs(int(o.min())))
    if bound >= 2.0 ** 53:
        return None
    val = np.einsum(spec, *(o.astype(np.float64) for o in ops), optimize=len(ops) > 2 or "greedy")
    return np.rint(val).astype(np.int64)


class _Statement:
    def __init__(self, b: Bound, s: Stmt, dom: dict[str, tuple[int, int]], env):
        self.b, self.s, self.dom, self.env = b, s, dom, env
        self.order = [r.var for r in s.domain]
        self.pos = {v: i for i, v in enumerate(self.order)}

    # ---------------------------------------------------------------- driver
    def run(self):
        s = self.s
        T = self.env[s.tensor]
        dt = self.b.kernel.tensor(s.tensor).dtype
        if s.init:
            T[...] = identity(s.op, dt)
        factors = self._einsum_factors()
        est = self._estimate(factors)
        lhs = list(s.indices)
        if lhs and est > CHUNK_ELEMENTS:
            v = lhs[0]
            lo, hi = self.dom[v]
            n = max(1, min(hi - lo, -(-est // CHUNK_ELEMENTS)))
            step = -(-(hi - lo) // n)
            for c in range(lo, hi, step):
                sub = _Statement(self.b, s, {**self.dom, v: (c, min(hi, c + step))}, self.env)
                sub._apply(T, dt, factors)
        else:
            self._apply(T, dt, factors)

    def _estimate(self, factors) -> int:
        ext = {v: hi - lo for v, (lo, hi) in self.dom.items()}
        if factors is not None:
            return max((prod(ext[v] for v in _vars(f)) for f in factors), default=1)
        return prod(ext[v] for v in _vars(self.s.rhs)) if _vars(self.s.rhs) else 1

    def _apply(self, T: np.ndarray, dt: DType, factors):
        s = self.s
        mins = self.b.mins[s.tensor]
        region_idx = tuple(slice(self.dom[v][0] - m, self.dom[v][1] - m) for v, m in zip(s.indices, mins))
        region = T[region_idx + (Ellipsis,)]
        if factors is not None:
            axes, val = self._einsum(factors)
        else:
            axes, val = self.ev(s.rhs)
            red = [v for v in s.reduction_vars]
            if red:
                axes, val = self._reduce(axes, val, red, s.rhs.dtype)
        val = _fix(self._align(axes, val, list(s.indices)), s.rhs.dtype)
        val = np.broadcast_to(val, region.shape)
        if s.op == "=":
            region[...] = _fix(val, dt)
        else:
            cur = region
            fn = {"+": np.add, "*": np.multiply, "min": np.minimum, "max": np.maximum}[s.op]
            common = dtypes.promote(dt, s.rhs.dtype)
            region[...] = _fix(fn(_fix(cur, common), _fix(val, common)), dt)

    def _reduce(self, axes, val, red, dt: DType):
        op = self.s.op
        present = [v for v in red if v in axes]
        if present:
            ax = tuple(axes.index(v) for v in present)
            if op == "+":
                val = np.add.reduce(val, axis=ax, dtype=val.dtype)
            elif op == "*":
                val = np.multiply.reduce(val, axis=ax, dtype=val.dtype)
            elif op == "min":
                val = np.minimum.reduce(val, axis=ax)
            else:
                val = np.maximum.reduce(val, axis=ax)
            axes = tuple(a for a in axes if a not in present)
        for v in red:  # reduction variables the value does not depend on
            if v in present:
                continue
            n = self.dom[v][1] - self.dom[v][0]
            if op == "+":
                val = _fix(val * np.asarray(n, dtype=val.dtype), dt)
            elif op == "*":
                val = _fix(val ** np.asarray(n, dtype=val.dtype), dt)
        return axes, val

    # ---------------------------------------------------------------- einsum path
    def _einsum_factors(self):
        s = self.s
        if s.op != "+" or not s.reduction_vars or s.rhs.dtype == BOOL or s.rhs.dtype == BFLOAT16:
            return None
        facs: list[Expr] = []

        def flat(e: Expr):
            if isinstance(e, Binary) and e.op == "*" and e.dtype == s.rhs.dtype:
                flat(e.a)
                flat(e.b)
            else:
                facs.append(e)
        flat(s.rhs)
        if len(facs) < 2:
            return None
        return facs

    def _einsum(self, factors):
        dt = self.s.rhs.dtype
        letters = {v: chr(ord("a") + i) if i < 26 else chr(ord("A") + i - 26)
                   for i, v in enumerate(self.order)}
        ops, subs = [], []
        used = set()
        for f in factors:
            axes, val = self.ev(f)
            ops.append(_fix(val, dt))
            subs.append("".join(letters[a] for a in axes))
            used.update(axes)
        out_axes = tuple(v for v in self.s.indices if v in used)
        spec = ",".join(subs) + "->" + "".join(letters[a] for a in out_axes)
        val = _exact_in_doubles(spec, ops, prod(self.dom[v][1] - self.dom[v][0] for v in self.s.reduction_vars
                                                if v in used))
        if val is None:
            val = np.einsum(spec, *ops, optimize=len(ops) > 2 or "greedy")
        for v in self.s.reduction_vars:
            if v not in used:
                val = val * np.asarray(self.dom[v][1] - self.dom[v][0], dtype=val.dtype)
        return out_axes, np.asarray(val)

    # ---------------------------------------------------------------- expressions
    def _align(self, axes, val, target) -> np.ndarray:
        shape = [val.shape[axes.index(t)] if t in axes else 1 for t in target]
        return np.asarray(val).reshape(shape)

    def _union(self, *axes_lists):
        u = set()
        for a in axes_lists:
            u.update(a)
        return tuple(sorted(u, key=self.pos.__getitem__))

    def ev(self, e: Expr):
        if isinstance(e, Const):
            return (), np.asarray(e.value, dtype=e.dtype.np)
        if isinstance(e, Size):
            return (), np.asarray(self.b.sizes[e.name], dtype=np.int32)
        if isinstance(e, Var):
            lo, hi = self.dom[e.name]
            return (e.name,), np.arange(lo, hi, dtype=np.int32)
        if isinstance(e, Access):
            return self._access(e)
        if isinstance(e, Unary):
            axes, x = self.ev(e.x)
            return axes, (np.logical_not(x) if e.op == "!" else _fix(-_fix(x, e.dtype), e.dtype))
        if isinstance(e, Binary):
            (aa, a), (ab, bb) = self.ev(e.a), self.ev(e.b)
            u = self._union(aa, ab)
            a, bb = self._align(aa, a, u), self._align(ab, bb, u)
            if e.op in ("&&", "||"):
                return u, _BIN[e.op](a, bb)
            cdt = e.dtype if e.dtype != BOOL else dtypes.promote(e.a.dtype, e.b.dtype)
            a, bb = _fix(a, cdt), _fix(bb, cdt)
            if e.op == "/":
                r = np.floor_divide(a, bb) if cdt.is_int else np.true_divide(a, bb)
            elif e.op == "%":
                r = np.mod(a, bb) if cdt.is_int else np.fmod(a, bb)
            else:
                r = _BIN[e.op](a, bb)
            return u, _fix(r, e.dtype)
        if isinstance(e, Select):
            (ac, c), (aa, a), (ab, bb) = self.ev(e.cond), self.ev(e.a), self.ev(e.b)
            u = self._union(ac, aa, ab)
            r = np.where(self._align(ac, c, u), _fix(self._align(aa, a, u), e.dtype),
                         _fix(self._align(ab, bb, u), e.dtype))
            return u, _fix(r, e.dtype)
        if isinstance(e, Call):
            evs = [self.ev(a) for a in e.args]
            u = self._union(*[ax for ax, _ in evs])
            args = [_fix(self._align(ax, v, u), e.dtype) for ax, v in evs]
            try:
                r = NUMPY[e.fn](*args)
            except (ImportError, AttributeError):
                raise IsamapError(f"built-in '{e.fn}' needs scipy in the reference interpreter",
                                  e.span) from None
            return u, _fix(r, e.dtype)
        if isinstance(e, Cast):
            axes, x = self.ev(e.x)
            return axes, _fix(x, e.dtype)
        raise TypeError(f"cannot evaluate {type(e).__name__}")

    def _access(self, e: Access):
        T = self.env[e.tensor]
        mins = self.b.mins[e.tensor]
        if not e.indices:
            return (), T[...]
        # fast path: distinct plain variables and constant subscripts -> a view
        plain, seen = True, set()
        for idx in e.indices:
            lin = linear(idx)
            if isinstance(idx, Var) and idx.name not in seen:
                seen.add(idx.name)
            elif not (lin is not None and all(n in self.b.sizes for n in lin.names())):
                plain = False
                break
        if plain:
            sl, axes = [], []
            for idx, m in zip(e.indices, mins):
                if isinstance(idx, Var):
                    lo, hi = self.dom[idx.name]
                    sl.append(slice(lo - m, hi - m))
                    axes.append(idx.name)
                else:
                    sl.append(_eval_const(idx, self.b.sizes) - m)
            view = T[tuple(sl)]
            perm = sorted(range(len(axes)), key=lambda i: self.pos[axes[i]])
            return tuple(axes[i] for i in perm), view.transpose(perm) if perm else view
        evs = [self.ev(i) for i in e.indices]
        u = self._union(*[ax for ax, _ in evs])
        idxs = []
        for axis, ((ax, v), m) in enumerate(zip(evs, mins)):
            v = self._align(ax, v, u).astype(np.int64) - m
            n = T.shape[axis]
            if v.size and (v.min() < 0 or v.max() >= n):
                bad = int(v.min() + m) if v.min() < 0 else int(v.max() + m)
                raise IsamapError(f"index {bad} out of range reading {e.tensor} (axis {axis} holds "
                                  f"{m}..{m + n - 1})", e.span)
            idxs.append(v)
        return u, T[tuple(idxs)]


def _eval_const(idx: Expr, sizes) -> int:
    lin = linear(idx)
    return lin.const + sum(c * sizes[n] for n, c in lin.terms)


def _vars(e: Expr) -> set[str]:
    from .expr import walk
    return {n.name for n in walk(e) if isinstance(n, Var)}




class _ConstantEvaluator(_Statement):
    """Evaluates expressions without variables or tensor reads (immediates, folded constants)."""

    def __init__(self, sizes: dict[str, int]):  # noqa: D107 - no statement, no domain
        from types import SimpleNamespace
        self.b = SimpleNamespace(sizes=sizes)
        self.dom, self.pos, self.env = {}, {}, {}


def eval_constant(e: Expr, sizes: dict[str, int]):
    """The value of a variable-free expression, with the reference semantics (types, builtins)."""
    with np.errstate(all="ignore"):
        _, v = _ConstantEvaluator(sizes).ev(e)
    return np.asarray(v)[()]
