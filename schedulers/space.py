"""The schedule space: lowerable mappings per statement and the legality of tilings."""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from ir.bind import Bound
from ir.errors import IsamapError
from ir.kernel import Kernel
from ir.target import Target

from compiler.mapping import Mapping, mappings_for_statement
from compiler.nest import Nest, Unsupported, build_nests

from .base import NestSchedule


@dataclass
class Candidate:
    mapping: Mapping
    nests: list[Nest]


def candidates(k: Kernel, b: Bound, target: Target) -> list[list[Candidate]]:
    """Per statement, the legal mappings the lowering supports (deterministic order)."""
    out = []
    for si, s in enumerate(k.stmts):
        ms = mappings_for_statement(k, si, target, b)
        cands, why = [], []
        for m in ms:
            if not m.legal:
                why.append(m.reason)
                continue
            try:
                cands.append(Candidate(m, build_nests(k, b, target, m)))
            except Unsupported as e:
                why.append(f"{m.instruction}: {e}")
        if not cands:
            reason = why[-1] if why else "no instruction matches"
            raise IsamapError(f"no instruction of {target.name} can perform this statement: {reason}",
                              s.span)
        out.append(cands)
    return out


def buffer_memories(target: Target, nest: Nest) -> dict[str, list[tuple[str, int]]]:
    """memory -> [(what, bytes per block)] for the on-chip tiles a nest keeps."""
    from compiler.routes import route_in, route_out
    out: dict[str, list[tuple[str, int]]] = {}
    for o in nest.operands:
        if o.tensor is None:
            continue
        out.setdefault(o.op.memory, []).append((o.name, o.op.bytes))
        hops = route_out(target, nest, o) if o.is_output else route_in(target, nest, o)
        for c in hops[:-1] if not o.is_output else hops[1:]:
            mem = c.outputs[0] if not o.is_output else c.inputs[0]
            out.setdefault(mem.memory, []).append((f"{o.name}@{mem.memory}", mem.bytes))
    return out


def footprint(target: Target, nest: Nest, ns: NestSchedule) -> dict[str, int]:
    """Bytes each memory needs for this schedule (per core), double buffering included."""
    use: dict[str, int] = {}
    mult = 2 if ns.double_buffer else 1
    for o in nest.operands:
        if o.tensor is None:
            continue
        blocks = prod(ns.tile(a) for a in o.axes)
        use[o.op.memory] = use.get(o.op.memory, 0) + mult * blocks * o.op.bytes
    from compiler.routes import route_in, route_out
    for o in nest.operands:  # staging slots of multi-hop routes: one block each, double-buffered
        if o.tensor is None:
            continue
        hops = route_out(target, nest, o) if o.is_output else route_in(target, nest, o)
        inter = [c.outputs[0] for c in hops[:-1]] if not o.is_output else [c.inputs[0] for c in hops[1:]]
        for m in inter:
            if m.memory != target.main:
                use[m.memory] = use.get(m.memory, 0) + 2 * m.bytes
    return use


def fits(target: Target, nest: Nest, ns: NestSchedule) -> str | None:
    for mem, need in footprint(target, nest, ns).items():
        cap = target.memory(mem).capacity
        if need > cap:
            return f"{mem} needs {need} bytes but holds {cap}"
    return None
