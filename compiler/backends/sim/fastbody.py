"""Instruction bodies the functional simulator runs tens of thousands of times, replayed.

A simulated GEMM executes one copy per block moved and one matrix multiply-accumulate per
block product; ``ir.interp`` works each of them out from the body's IR on every call (binding,
domains, the einsum factors and subscripts: ~190 us a call, most of a functional run). For
the two shapes that dominate -- a copy ``Y(i, j) = X(i, j)`` (or a converting one,
``Y(i, j) = bfloat16(X(i, j))``) and an accumulation of a product of two accesses,
``C(i, j) += float(A(i, k)) * float(B(k, j))`` -- the body is analysed once and each call
performs exactly the numpy operations ``ir.interp`` would, in the same order and on the same
views (so the results are bit-identical: ``tests/test_sim.py`` compares both on every such
instruction of every simulated target).  Any other body returns None: the caller interprets it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ir import dtypes
from ir.dtypes import BFLOAT16, BOOL
from ir.expr import Access, Binary, Cast, Const, Expr, Var
from ir.interp import _fix, identity
from ir.target import Instruction

Body = Callable[[dict, "np.ndarray | None"], np.ndarray]


def fast_body(instr: Instruction) -> Body | None:
    k = instr.body
    if len(k.stmts) != 1 or len(k.outputs) != 1:
        return None
    s = k.stmts[0]
    if s.where or s.exists or s.equiv is not None:
        return None
    shapes = {t.name: tuple(_const(d) for d in t.dims) if t.dims is not None else None for t in k.inputs + k.outputs}
    if any(v is None or any(x is None for x in v) for v in shapes.values()):
        return None
    dom = {}
    for r in s.domain:
        lo, hi = _const(r.lo), _const(r.hi)
        if lo != 0 or hi is None:
            return None
        dom[r.var] = hi
    out = k.outputs[0]
    if s.tensor != out.name or shapes[out.name] != tuple(dom[v] for v in s.indices):
        return None
    order = [r.var for r in s.domain]
    if s.op == "=":
        return _copy(s, out, shapes, dom, order)
    if s.op == "+" and s.reduction_vars and s.rhs.dtype not in (BOOL, BFLOAT16):
        return _product(s, out, shapes, dom, order)
    return None


def _const(e) -> int | None:
    return e.value if isinstance(e, Const) else None


def _view(e: Expr, shapes, dom, order):
    """A factor ``[cast(]T(v, ...)[)]`` with distinct plain variables spanning T whole: (its
    tensor, the transpose ``ir.interp`` reads it through, the cast's type or None, its axes in
    domain order), else None."""
    cast = None
    if isinstance(e, Cast):
        cast, e = e.dtype, e.x
    if not isinstance(e, Access) or not all(isinstance(i, Var) for i in e.indices):
        return None
    names = [i.name for i in e.indices]
    if len(set(names)) != len(names) or e.tensor not in shapes or shapes[e.tensor] != tuple(dom[v] for v in names):
        return None
    pos = {v: i for i, v in enumerate(order)}
    perm = sorted(range(len(names)), key=lambda i: pos[names[i]])
    return e.tensor, perm, cast, tuple(names[i] for i in perm)


def _copy(s, out, shapes, dom, order) -> Body | None:
    got = _view(s.rhs, shapes, dom, order)
    if got is None:
        return None
    name, perm, cast, axes = got
    if list(axes) != list(s.indices):
        return None  # a transposing copy: interpreted
    rdt, odt = s.rhs.dtype, out.dtype

    def run(arrays, initial):
        x = np.asarray(arrays[name]).transpose(perm) if perm else np.asarray(arrays[name])
        if cast is not None:
            x = _fix(x, cast)
        T = np.zeros(shapes[out.name], dtype=odt.np)
        T[...] = _fix(np.broadcast_to(_fix(x, rdt), T.shape), odt)
        return T
    return run


def _product(s, out, shapes, dom, order) -> Body | None:
    rhs = s.rhs
    if not (isinstance(rhs, Binary) and rhs.op == "*" and rhs.dtype == s.rhs.dtype):
        return None
    if any(isinstance(f, Binary) and f.op == "*" and f.dtype == rhs.dtype for f in (rhs.a, rhs.b)):
        return None  # more than two factors: interpreted
    views = [_view(f, shapes, dom, order) for f in (rhs.a, rhs.b)]
    if any(v is None for v in views):
        return None
    used = set(views[0][3]) | set(views[1][3])
    if any(v not in used for v in s.reduction_vars) or any(v not in used for v in s.indices):
        return None
    letters = {v: chr(ord("a") + i) for i, v in enumerate(order)}
    spec = ",".join("".join(letters[a] for a in v[3]) for v in views) + "->" + \
        "".join(letters[a] for a in s.indices)
    rdt, odt = rhs.dtype, out.dtype
    common = dtypes.promote(odt, rdt)
    shape = shapes[out.name]
    init = s.init
    ident = identity(s.op, odt) if init else None
    path: list = []  # the contraction order "greedy" finds, found once (the operands' shapes are fixed)

    def run(arrays, initial):
        if initial is not None and not init:
            T = _fix(np.array(initial, copy=True), odt).reshape(shape)
        else:
            T = np.zeros(shape, dtype=odt.np)
        if init:
            T[...] = ident
        ops = []
        for name, perm, cast, _ in views:
            x = np.asarray(arrays[name]).transpose(perm) if perm else np.asarray(arrays[name])
            if cast is not None:
                x = _fix(x, cast)
            ops.append(_fix(x, rdt))
        if not path:
            path.append(np.einsum_path(spec, *ops, optimize="greedy")[0])
        val = _fix(np.asarray(np.einsum(spec, *ops, optimize=path[0])).reshape(shape), rdt)
        T[...] = _fix(np.add(_fix(T, common), _fix(val, common)), odt)
        return T
    return run
