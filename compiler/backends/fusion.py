"""Which elementwise statements can ride along on a contraction's output tiles (shared by the
host and GPU backends: both run them on each finished tile instead of as separate passes)."""
from __future__ import annotations

from ir.bind import Bound
from ir.expr import Access, walk
from ir.kernel import Kernel


def epilogue(k: Kernel, b: Bound, p, ints: bool = False) -> list[int]:
    """The statements right after contraction ``p`` that can run on each output tile as soon as
    it is final (a fused epilogue: bias, activation, gate math): assignments over exactly the
    contraction's output domain, indexed like its output, that read the contraction's result
    and each other's results only at the element they write (so a tile needs nothing from
    other tiles), and that the scalar path would otherwise run as separate passes.  Float
    outputs, and (``ints``: a backend whose tile functions take them, the cpu's) int32 and
    int64 ones."""
    types = ("float32", "float64") + (("int32", "int64") if ints else ())
    s0 = k.stmts[p.stmt]
    out_idx = tuple(s0.indices)
    dom = b.domain(p.stmt)
    dom0 = {v: dom[v] for v in out_idx}
    written = {p.c}
    read_elsewhere: set[str] = set()  # tensors the group reads away from the element it writes
    group: list[int] = []
    for j in range(p.stmt + 1, len(k.stmts)):
        s = k.stmts[j]
        if s.op != "=" or s.reduction_vars or s.exists or tuple(s.indices) != out_idx or b.domain(j) != dom0:
            break
        if k.tensor(s.tensor).dtype.name not in types or s.tensor in (p.a, p.b):
            break
        reads = [e for e in walk(s.rhs) if isinstance(e, Access)]
        here = {e.tensor for e in reads if tuple(getattr(x, "name", None) for x in e.indices) == out_idx}
        away = {e.tensor for e in reads} - here
        if away & written or s.tensor in read_elsewhere | away:
            break  # would need another tile's element, or overwrite one that is still to be read
        if s.tensor in here and s.tensor not in written:
            break  # reads the old value of a tensor that the unfused program overwrites in a later pass
        group.append(j)
        written.add(s.tensor)
        read_elsewhere |= away
    return group
