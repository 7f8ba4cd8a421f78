"""Elementwise updates written as reductions, in assignment form, for instruction mapping.

``O(i, j) *= 2.0`` (no reduction variable: an update of each element, not a reduction) is
``O(i, j) = O(i, j) * 2.0``, and a first definition ``O(i) +=! x(i)`` is ``O(i) = x(i)`` (the
operator's identity combined with one value).  An accelerator's vector instructions assign, so
the mapping pass finds them only for the assignment form; the reference semantics are the same.
"""
from __future__ import annotations

from dataclasses import replace

from ir import dtypes
from ir.expr import Access, Binary, Var
from ir.kernel import Kernel, Stmt


def as_mapped(k: Kernel, t) -> Kernel:
    """The kernel that ``build`` maps for target ``t``: the assignment form for a simulated
    target (whose vector instructions assign), the kernel itself for the host and cuda backends
    (their code runs the update rules directly)."""
    return assignment_form(k) if t.prop("backend", "sim") == "sim" else k


def assignment_form(k: Kernel) -> Kernel:
    stmts = tuple(_assign(k, s) for s in k.stmts)
    return k if stmts == k.stmts else replace(k, stmts=stmts)


def _assign(k: Kernel, s: Stmt) -> Stmt:
    if s.op == "=" or s.reduction_vars or s.exists:
        return s
    if s.init:
        return replace(s, op="=", bang=False, init=False)
    dt = k.tensor(s.tensor).dtype
    own = Access(s.tensor, tuple(Var(v, dtype=dtypes.INT32) for v in s.indices), dtype=dt, span=s.lhs_span)
    rhs = Binary(s.op, own, s.rhs, dtype=dtypes.promote(dt, s.rhs.dtype), span=s.rhs.span)
    return replace(s, op="=", bang=False, rhs=rhs)
