"""Fusion of elementwise statements into their producer's loop nest (accelerator targets).

TC writes a layer's epilogue as statements that update the producer's tensor in place::

    O(b, n) +=! I(b, k) * W(k, n)
    O(b, n) = fmax(O(b, n) + Bias(n), 0)

Run separately, the second statement reads every block of O back from main memory
and writes it again (through a scratch tensor for each intermediate).  Fused, its
instructions run on each output block of the first while the block is on chip: after
the hop of the output route that lands in the memory the epilogue's instructions read
(e.g. accumulator -> SRAM), before the store to main memory.  Other operands of the
epilogue (the bias) are loaded next to the block.

A statement is fused when everything about it is per output block: it assigns (`=`)
the producer's tensor, or another output of the same type, at the producer's indices;
it reads the tensors the chain holds on chip only at those indices; its instructions
take those blocks in the memory, element type and shape (same orientation) of an
intermediate hop of the producer's output route; its other operands come from main
memory in one copy each (outputs of earlier statements included: a barrier separated
them).  Every tensor the chain writes is stored once per block, after the epilogue.
(GRU: `Nc = tanh(XN + R * (HN + bhn))` and `Ho = (1 - Z) * Nc + Z * Hp` both run
on the blocks of `HN`.)

A producer with one hop out (a vector instruction's SRAM block, then a store) holds its
blocks where it computed them, and the epilogue runs right after the compute (``hop`` -1).
The steps of one statement's instruction sequence fuse the same way, one nest at a time
(`exp(I(n, d) - mx(n))`: vexp runs on vsub_col's block; its temporary never leaves the chip).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ir.expr import Var, accesses, reads_at
from ir.kernel import Kernel
from ir.target import Target

from .mapping.bind import instr_accesses
from .nest import Nest
from .routes import route_in, route_out


@dataclass
class Epilogue:
    """The consumer nests run on each output block of a producer nest."""

    tensor: str  # the producer's output, updated in place
    nests: list[Nest]
    axis_map: dict[int, dict[str, str]]  # id(consumer nest) -> consumer axis -> producer axis
    hop: int  # the epilogue runs after this hop of the producer's output route
    memory: str
    written: list[str]  # the producer's tensor and the fused statements' outputs, each stored once
    # (id(consumer nest), operand) loaded along pitched pixels: as the producer's output block is
    # stored, rows at the input's pitch with the overlap left out (a residual beside a bias)
    at_pitch: set = field(default_factory=set)

    @property
    def on_chip_temporaries(self) -> set[str]:
        """The temporaries the chain computes and never stores (they need no main memory)."""
        made = {self.tensor, *(n.output.tensor for n in self.nests)}
        return {t for t in made if t.startswith("_S") and t not in self.written}

    def block_bytes(self) -> int:
        """Bytes of the epilogue's own slots per block of the producer's output tile, in
        ``memory``: two slots (one block being stored while the next is computed) of each
        temporary and of each operand it loads (one per fused nest and operand)."""
        keys = {}
        for cn in self.nests:
            for o in cn.operands:
                if o.tensor is None or o.tensor == self.tensor:
                    continue
                on_chip = o.tensor in self.written or o.tensor.startswith("_S")
                keys[o.tensor if on_chip else loaded_key(cn, o)] = o.op.bytes  # as the lowering names them
        return 2 * sum(keys.values())

    @property
    def statements(self) -> list[int]:
        """The statements run on the producer's blocks (its own, where the rest of a sequence is)."""
        return sorted({n.statement for n in self.nests})


def loaded_key(cn: Nest, o) -> str:
    """The epilogue slots of an operand it loads from main memory: one set per fused nest and
    operand (two steps reading T1(m, k) and T1(m + 1, k + 1) shared one and read the wrong block)."""
    return f"{o.tensor}.{o.name}.{cn.statement}_{cn.step_index}"


def _operand_dims(nest: Nest, opname: str) -> list[str | None]:
    """The nest axis bound to each index of an instruction operand (None: not bound)."""
    inner = instr_accesses(nest.instr.body.stmts[0])[opname]
    out = []
    for x in inner.indices:
        ax = next((a for a in nest.axes if isinstance(x, Var) and a.instr_var == x.name), None)
        out.append(ax.name if ax is not None else None)
    return out


def _identity_reads(k: Kernel, si: int, tensor: str) -> bool:
    s = k.stmts[si]
    return all(reads_at(x, s.indices) for x in accesses(s.rhs) if x.tensor == tensor)


def plan(k: Kernel, target: Target, producer: Nest, consumers: list[list[Nest]]) -> Epilogue | None:
    """The longest run of ``consumers`` (groups of nests: a statement's, or one later step of
    the producer's own sequence) that fuses into ``producer``, a statement's root nest or a step
    of its instruction sequence. Temporaries stay on chip unless a nest left out reads them."""
    from ir.expr import Access, walk
    s = k.stmts[producer.statement]
    out = producer.output
    temp = f"_S{producer.statement}_"  # the statement's temporaries (a step of a sequence writes one)
    if not (out.tensor == s.tensor or out.tensor.startswith(temp)) \
            or any(a.reduction for a in producer.axes if a.name in out.axes) or out.gather:
        return None
    route = route_out(target, producer, out)
    # where a block is held before the route's last hop, a store: a staging memory, or (one hop)
    # the memory the producer computes it in, the epilogue then running right after the compute
    held = route[-2].outputs[0] if len(route) > 1 else out.op
    prod_dims = _operand_dims(producer, out.name)
    by_vars = {a.vars: a for a in producer.axes}
    producer_reads = {x.tensor for x in walk(s.rhs) if isinstance(x, Access)}
    fused: list[Nest] = []
    amap: dict[int, dict[str, str]] = {}
    written = [out.tensor]  # tensors the chain holds on chip, block by block
    loaded: set[str] = set()  # tensors the chain reads from main memory
    on_pitch = False  # whether a fused nest runs on pitched blocks
    at_pitch: set[tuple[int, str]] = set()  # (id(nest), operand) loaded as blocks of the pitched output
    for nests in consumers:
        si = nests[0].statement
        c = k.stmts[si]
        # a later step of the producer's own sequence writing a temporary: elementwise over the
        # statement's variables (a reducing step fails the axis check below)
        own_step = si == producer.statement and all(n.output.tensor.startswith(temp) for n in nests)
        if not own_step and (
                c.op != "=" or c.init or len(c.indices) != len(s.indices) or c.where or c.exists
                or k.is_input(c.tensor) or k.tensor(c.tensor).dtype != k.tensor(s.tensor).dtype
                or c.tensor in producer_reads or c.tensor in loaded
                or not all(_identity_reads(k, si, w) for w in written if not w.startswith("_S"))):
            break
        if si == producer.statement:  # consumer var -> producer var
            pos = {r.var: r.var for r in s.domain}
        else:
            pos = {v: s.indices[p] for p, v in enumerate(c.indices)}
        ok = True
        maps = {}
        reads: set[str] = set()
        group_out: set[str] = set()  # results of this group's earlier nests (a sequence's temporaries)
        for n in nests:
            m = {}
            pitched: set[str] = set()  # axes whose blocks are the producer's at an input's pitch
            for a in n.axes:
                pa = by_vars.get(tuple(pos.get(v, "") for v in a.vars))
                if a.reduction or pa is None or (pa.instr_var is None) != (a.instr_var is None):
                    ok = False
                    break
                if (pa.unit, pa.blocks, pa.lows, pa.extents) != (a.unit, a.blocks, a.lows, a.extents):
                    # the producer computes a pitched pair (rows of the output at the input's
                    # pitch, the overlap computed and not stored): the epilogue runs on those
                    # blocks as they are, so long as nothing it loads or stores is laid out by them
                    if not (pa.real and pa.real == a.extents and not a.real and (pa.unit, pa.lows) == (a.unit, a.lows)):
                        ok = False
                        break
                    pitched.add(a.name)
                m[a.name] = pa.name
            if not ok:
                break
            for o in n.operands:
                if o.tensor is None:
                    continue
                if pitched and o.is_output and o.tensor != out.tensor and not o.tensor.startswith("_S"):
                    ok = False  # stored in the statement's own dense layout
                    break
                if pitched and not o.is_output and o.tensor not in written and o.tensor not in group_out \
                        and set(o.axes) & pitched:
                    # loaded along the pitched pixels: only as a block of the output's own shape,
                    # orientation and variables (a residual X(n, f, h, w) read as O's block is
                    # stored: rows at the pitch, the overlap columns left out)
                    if tuple(o.op.shape) != tuple(held.shape) or o.window or \
                            [m.get(x) if x else None for x in _operand_dims(n, o.name)] != prod_dims or \
                            any(m.get(x) not in out.axes for x in o.axes):
                        ok = False
                        break
                    at_pitch.add((id(n), o.name))
                # on chip: what the chain (this group included) has computed, and every result;
                # a temporary computed outside the chain cannot come from main memory in an epilogue
                on_chip = o.is_output or o.tensor in written or o.tensor in group_out
                if not on_chip and (o.tensor.startswith("_S") or o.tensor == c.tensor):
                    ok = False  # nor the statement's own earlier value (D = D + C, D from before the chain)
                    break
                if on_chip:
                    if (o.op.memory, o.op.dtype, tuple(o.op.shape)) != (held.memory, held.dtype, tuple(held.shape)) \
                            or [m.get(x) if x else None for x in _operand_dims(n, o.name)] != prod_dims:
                        ok = False  # another memory, type, shape or orientation than the held block
                        break
                elif o.is_output or o.gather or len(route_in(target, n, o)) != 1 or o.op.memory == target.main:
                    ok = False
                    break
                else:
                    reads.add(o.tensor)
            if not ok:
                break
            maps[id(n)] = m
            group_out.add(n.output.tensor)
            on_pitch = on_pitch or bool(pitched)
        if not ok:
            break
        fused += nests
        amap.update(maps)
        loaded |= reads
        for n in nests:
            if n.output.tensor not in written:
                written.append(n.output.tensor)
    if not fused:
        return None
    # a temporary stays on chip unless a step left unfused reads it (then it is stored as well)
    ran = {id(n) for n in fused}
    needed = {o.tensor for nests in consumers for n in nests if id(n) not in ran
              for o in n.operands if o.tensor is not None and not o.is_output}
    written = [w for w in written if not w.startswith("_S") or w in needed]
    if on_pitch and written != [out.tensor]:
        return None  # a temporary to store from pitched blocks: no dense tile to store it by
    return Epilogue(out.tensor, fused, amap, len(route) - 2, held.memory, written, at_pitch)


def _plans(k: Kernel, target: Target, chosen: list[list[Nest]]):
    """(producer statement, its Epilogue) for each statement others fuse into, given each
    statement's nests: a statement fused into an earlier one produces for none."""
    done: set[int] = set()
    for si, nests in enumerate(chosen):
        if si in done or not nests:
            continue
        epi = plan(k, target, nests[-1], chosen[si + 1:])
        if epi is not None:
            done.update(epi.statements)
            yield si, epi


def reserves(k: Kernel, target: Target, chosen: list[list[Nest]]) -> dict[int, tuple[str, int]]:
    """Statement -> (memory, bytes per block of its output tile) its epilogue's slots take
    beside its own, for the statements others fuse into (their tiling must leave that room: the
    lowering runs the epilogue as a nest of its own where it does not)."""
    return {si: (epi.memory, epi.block_bytes()) for si, epi in _plans(k, target, chosen)}


def fused_statements(k: Kernel, target: Target, chosen: list[list[Nest]]) -> dict[int, int]:
    """Statement -> the producer it runs inside, given each statement's nests (the lowering
    also checks that the epilogue's slots fit; the search leaves them room, `reserves`)."""
    return {sj: si for si, epi in _plans(k, target, chosen) for sj in epi.statements}
