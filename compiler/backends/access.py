"""Element strides of plain-variable tensor accesses (shared by the backends' contraction
recognisers: both need each operand's stride along every loop variable)."""
from __future__ import annotations

from math import prod

from ir.bind import Bound
from ir.expr import Var


def element_strides(b: Bound, acc: dict) -> tuple[dict, dict, dict] | None:
    """For ``{tensor: [index expressions]}``: ({tensor: {var: element stride}}, {tensor: constant
    element offset}, {tensor: set of vars it is indexed by}) of row-major storage, or None unless
    every index is a distinct plain variable."""
    strides, base = {}, {}
    for name, idx in acc.items():
        shape, mins = b.shapes[name], b.mins[name]
        st = [prod(shape[d + 1:]) for d in range(len(shape))]
        vs: dict[str, int] = {}
        off = 0
        for d, x in enumerate(idx):
            if not isinstance(x, Var) or x.name in vs:
                return None
            vs[x.name] = st[d]
            off -= mins[d] * st[d]
        strides[name], base[name] = vs, off
    return strides, base, {name: set(vs) for name, vs in strides.items()}
