"""Enumeration and legality of statement -> instruction mappings."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ir import printer
from ir.expr import Access, Binary, Call, Cast, Const, Expr, Unary, Var, linear
from ir.kernel import Kernel, Stmt
from ir.target import Instruction, Target

_COMMUTATIVE = ("+", "*", "min", "max")


@dataclass(frozen=True)
class Mapping:
    statement: int
    instruction: str
    operands: tuple[tuple[str, str], ...] = ()  # instruction operand -> kernel tensor
    vars: tuple[tuple[str, str], ...] = ()  # instruction var -> kernel var expression
    transforms: tuple[str, ...] = ()
    loops: tuple[str, ...] = ()  # kernel vars left as loops around the instruction
    legal: bool = True
    reason: str = ""

    def to_json(self) -> dict:
        return {"statement": self.statement, "instruction": self.instruction,
                "operands": dict(self.operands), "vars": dict(self.vars),
                "transforms": list(self.transforms), "loops": list(self.loops),
                "legal": self.legal, "reason": self.reason}

    def describe(self) -> str:
        ops = ", ".join(f"{a}->{b}" for a, b in self.operands)
        vs = ", ".join(f"{a}={b}" for a, b in self.vars)
        head = f"S{self.statement} on {self.instruction}"
        if not self.legal:
            return f"{head}: REJECTED: {self.reason}" + (f" [{ops}]" if ops else "")
        tr = f"; transforms: {', '.join(self.transforms)}" if self.transforms else ""
        lp = f"; loops: {', '.join(self.loops)}" if self.loops else ""
        return f"{head}: operands {ops}; vars {vs}{lp}{tr}"


def _strip(e: Expr) -> Expr:
    while isinstance(e, Cast):
        e = e.x
    return e


def _match(ie: Expr, ke: Expr, ops: dict[str, Access]):
    """Yield operand bindings making instruction expression ``ie`` equal to kernel ``ke``."""
    ie, ke = _strip(ie), _strip(ke)
    if isinstance(ie, Access):
        if isinstance(ke, Access):
            if ie.tensor in ops and ops[ie.tensor] != ke:
                return
            yield {**ops, ie.tensor: ke}
        return
    if isinstance(ie, Const):
        if isinstance(ke, Const) and float(ke.value) == float(ie.value):
            yield ops
        return
    if type(ie) is not type(ke):
        return
    if isinstance(ie, Binary):
        if ie.op != ke.op:
            return
        orders = [(ke.a, ke.b)] + ([(ke.b, ke.a)] if ie.op in _COMMUTATIVE else [])
        for a, b in orders:
            for o1 in _match(ie.a, a, ops):
                yield from _match(ie.b, b, o1)
        return
    if isinstance(ie, Unary):
        if ie.op == ke.op:
            yield from _match(ie.x, ke.x, ops)
        return
    if isinstance(ie, Call):
        if ie.fn == ke.fn and len(ie.args) == len(ke.args):
            def go(i, o):
                if i == len(ie.args):
                    yield o
                    return
                for o2 in _match(ie.args[i], ke.args[i], o):
                    yield from go(i + 1, o2)
            yield from go(0, ops)
        return


def _tree_key(e: Expr) -> str:
    return printer.expr(_strip(e))


def enumerate_mappings(k: Kernel, si: int, instr: Instruction, target: Target,
                       explain: bool = False) -> list[Mapping]:
    s = k.stmts[si]
    out: list[Mapping] = []

    def reject(reason, operands=()):
        if explain:
            out.append(Mapping(si, instr.name, tuple(operands), legal=False, reason=reason))
        return out

    if len(instr.body.stmts) != 1:
        return reject(f"the instruction body has {len(instr.body.stmts)} statements; only one-statement "
                      f"bodies are matched")
    ist = instr.body.stmts[0]
    if ist.op != s.op:
        return reject(f"operation: the statement {'reduces with ' + s.op if s.op != '=' else 'assigns'} "
                      f"but the instruction {'reduces with ' + ist.op if ist.op != '=' else 'assigns'}")
    binds = list(_match(ist.rhs, s.rhs, {}))
    if not binds:
        return reject(f"operation tree: the instruction computes {_tree_key(ist.rhs)}, the statement "
                      f"{_tree_key(s.rhs)}")
    out_op = instr.outputs[0]
    seen: set = set()
    for ops in binds:
        ops = {**ops, out_op.name: Access(s.tensor, tuple(Var(v) for v in s.indices))}
        for m in _bind_dims(k, s, si, instr, ist, ops, target, explain):
            key = (m.operands, m.vars, m.transforms, m.legal, m.reason)
            if key not in seen:
                seen.add(key)
                out.append(m)
    return out


def _bind_dims(k, s: Stmt, si, instr: Instruction, ist: Stmt, ops: dict[str, Access], target, explain):
    operand_names = [o.name for o in instr.operands]
    opmap = tuple((n, ops[n].tensor) for n in operand_names if n in ops)
    # instruction access index vars per operand (instruction bodies use plain variables)
    inner = {a.tensor: a for a in _accesses(ist)}
    choices = []
    for n in operand_names:
        ia = inner.get(n)
        ka = ops.get(n)
        if ia is None or ka is None:
            continue
        rank_i, rank_k = len(ia.indices), len(ka.indices)
        if rank_i > rank_k:
            if explain:
                yield Mapping(si, instr.name, opmap, legal=False,
                              reason=f"rank: operand {n} has {rank_i} dimensions but {ka.tensor} has {rank_k}")
            return
        choices.append([(n, perm) for perm in itertools.permutations(range(rank_k), rank_i)])
    red_k = set(s.reduction_vars)
    red_i = set(ist.reduction_vars)
    for combo in itertools.product(*choices):
        binding: dict[str, str] = {}
        transforms: list[str] = []
        problem = None
        used_kvars: set[str] = set()
        for n, perm in combo:
            ia, ka = inner[n], ops[n]
            iop = instr.operand(n)
            if list(perm) != sorted(perm):
                if n in instr.transpose:
                    transforms.append(f"{n} read transposed ({ka.tensor})")
                else:
                    problem = (f"layout: binding {n} to {ka.tensor} needs a transposed read and the "
                               f"instruction does not allow one for {n}")
                    break
            for ipos, kpos in enumerate(perm):
                iv = ia.indices[ipos]
                ksub = ka.indices[kpos]
                ivn = iv.name if isinstance(iv, Var) else printer.expr(iv)
                kdesc = printer.expr(ksub)
                if ivn in binding and binding[ivn] != kdesc:
                    problem = (f"consistency: instruction var {ivn} would be both {binding[ivn]} and {kdesc}")
                    break
                binding[ivn] = kdesc
                lin = linear(ksub)
                if not isinstance(ksub, Var):
                    if lin is not None and len(lin.names()) > 1:
                        problem = (f"access: {ka.tensor} subscript {kdesc} bound to {n}'s var {ivn} needs an "
                                   f"im2col-style gather, and {target.name} has no gathering data movement")
                    else:
                        problem = (f"access: {ka.tensor} subscript {kdesc} is not a plain variable "
                                   f"(bound to {n}'s var {ivn}); it needs a gather")
                    break
                kv = ksub.name
                used_kvars.add(kv)
                if ivn in red_i and kv not in red_k:
                    problem = (f"roles: instruction var {ivn} is a reduction but is bound to {kv}, a parallel "
                               f"(output) index of the statement")
                    break
                if ivn not in red_i and kv in red_k:
                    problem = (f"roles: reduction var {kv} of the statement is bound to instruction var {ivn}, "
                               f"a parallel index of the instruction")
                    break
            if problem:
                break
            # element types
            kdt = k.tensor(ka.tensor).dtype
            if iop.dtype != kdt:
                conv = [c for c in target.copy_instrs if c.outputs[0].memory == iop.memory
                        and c.outputs[0].dtype == iop.dtype and c.inputs[0].dtype == kdt]
                if conv:
                    transforms.append(f"convert {ka.tensor} {kdt}->{iop.dtype} via {conv[0].name}")
                elif iop.is_output and kdt.is_float and iop.dtype.is_float and kdt.bits <= iop.dtype.bits:
                    pass
                else:
                    problem = (f"dtype: operand {n} is {iop.dtype} but {ka.tensor} is {kdt} and "
                               f"{target.name} has no converting copy into {iop.memory}")
                    break
        if problem is None:
            # a kernel var used by one operand dimension must not hide inside another operand's loop
            for n, perm in combo:
                ka = ops[n]
                rest = {ka.indices[i].name for i in range(len(ka.indices)) if i not in perm
                        and isinstance(ka.indices[i], Var)}
                clash = rest & used_kvars
                if clash:
                    v = sorted(clash)[0]
                    problem = (f"access: var {v} indexes {ka.tensor} outside the instruction's dimensions "
                               f"while it is bound to an instruction dimension elsewhere")
                    break
        if problem:
            if explain:
                yield Mapping(si, instr.name, opmap, tuple(sorted(binding.items())), legal=False,
                              reason=problem)
            continue
        loops = tuple(r.var for r in s.domain if r.var not in used_kvars)
        yield Mapping(si, instr.name, opmap, tuple(sorted(binding.items())), tuple(transforms), loops)


def _accesses(st: Stmt) -> list[Access]:
    from ir.expr import walk
    return [n for n in walk(st.rhs) if isinstance(n, Access)] + \
        [Access(st.tensor, tuple(Var(v) for v in st.indices))]


def mappings_for_kernel(k: Kernel, target: Target, explain: bool = False) -> list[Mapping]:
    out = []
    for si in range(len(k.stmts)):
        for ins in target.compute_instrs:
            out += enumerate_mappings(k, si, ins, target, explain)
    return out
