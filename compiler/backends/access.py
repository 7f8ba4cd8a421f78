"""What a contraction statement's accesses touch, shared by the backends' contraction
recognisers and code generators: each operand's element stride along every loop variable,
and whether the statement writes all of its output."""
from __future__ import annotations

from math import prod

from ir.bind import Bound
from ir.expr import Var, linear


def element_strides(b: Bound, acc: dict, affine: bool = False) -> tuple[dict, dict, dict] | None:
    """For ``{tensor: [index expressions]}``: ({tensor: {var: element stride}}, {tensor: constant
    element offset}, {tensor: set of vars it is indexed by}) of row-major storage, or None unless
    every index is a distinct plain variable -- or, with ``affine``, a sum of variables with
    non-negative coefficients and a constant (a convolution's ``I(h + r, w + s)``: h and r both
    step one row), each variable's strides over the dimensions it indexes added up."""
    strides, base = {}, {}
    for name, idx in acc.items():
        shape, mins = b.shapes[name], b.mins[name]
        st = [prod(shape[d + 1:]) for d in range(len(shape))]
        vs: dict[str, int] = {}
        off = 0
        for d, x in enumerate(idx):
            off -= mins[d] * st[d]
            if isinstance(x, Var) and x.name not in vs:
                vs[x.name] = st[d]
                continue
            lin = linear(x) if affine else None
            if lin is None:
                return None
            off += lin.const * st[d]
            for v, c in lin.terms:
                if v in b.sizes:
                    off += c * b.sizes[v] * st[d]
                elif c < 0:
                    return None
                else:
                    vs[v] = vs.get(v, 0) + c * st[d]
        strides[name], base[name] = vs, off
    return strides, base, {name: set(vs) for name, vs in strides.items()}


def covers_output(p, b: Bound, dom: dict | None = None) -> bool:
    """Whether an initialising contraction ``p`` (``stmt``, ``c``, ``init``, ``dom``) writes every
    element of its output, so the separate identity fill (a whole pass over C) can be skipped:
    the first write of each element stores instead of accumulating.  ``dom``: the statement's
    domain, where the plan's own has other variables (a cpu plan's ``out_dom``)."""
    if not p.init:
        return False
    shape, mins = b.shapes[p.c], b.mins[p.c]
    idx = b.kernel.stmts[p.stmt].indices
    dom = p.dom if dom is None else dom
    return all(dom[v] == (m, m + e) for v, m, e in zip(idx, mins, shape))


def check_in_place(k, backend: str) -> None:
    """Refuse a statement that reads its own output at other elements than the one it writes
    (``B(i) = B(N - 1 - i) + 1``): the reference reads every element's value from before the
    statement, but a backend that updates the tensor in place, loop by loop (llvm) or thread by
    thread (cuda), would read some elements it has already overwritten."""
    from ir.errors import IsamapError
    from ir.expr import accesses, reads_at
    from ir import printer
    for si, s in enumerate(k.stmts):
        own = tuple(s.indices)
        for a in accesses(s.rhs):
            if a.tensor == s.tensor and not reads_at(a, own):
                raise IsamapError(
                    f"statement S{si} reads {printer.expr(a)} while writing {s.tensor}({', '.join(own)}); the "
                    f"{backend} backend updates {s.tensor} in place and would read elements it has already "
                    f"written (the reference reads the values from before the statement): write the result "
                    f"to another output", a.span or s.span)
