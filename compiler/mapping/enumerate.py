"""The mapping pass: direct mappings, elementwise covers, and explanations."""
from __future__ import annotations

from dataclasses import replace

from ir import printer
from ir.bind import Bound
from ir.expr import Access, Expr, Var, accesses, vars_of, walk
from ir.kernel import Kernel
from ir.target import Instruction, Target

from .bind import (Ctx, Reject, assignments, candidates, check, extents, make_step, normal_layout, output_layout,
                   explain_empty, pad_budget, var_text)
from .match import has_vars, match, size
from .model import Mapping, Step


def _ctx(k: Kernel, si: int, target: Target, bound: Bound | None) -> Ctx:
    ext = None
    if bound is not None:
        ext = {v: hi - lo for v, (lo, hi) in bound.domain(si).items()}
    return Ctx(k, k.stmts[si], target, ext, sizes=dict(bound.sizes) if bound is not None else None)


def _single(instr: Instruction) -> bool:
    return len(instr.body.stmts) == 1


def _op_rules(ctx: Ctx, instr: Instruction, root: bool) -> list[str]:
    """Raise Reject if the instruction's update rule cannot implement the statement's."""
    s, ist = ctx.stmt, instr.body.stmts[0]
    if not root:
        if ist.op != "=":
            raise Reject("operation", f"{instr.name} {_op(ist)} but a temporary is assigned")
        return []
    if ist.op != s.op:
        raise Reject("operation", f"the statement {_op(s)} but {instr.name} {_op(ist)}")
    out = []
    if s.op != "=":
        if ist.init and not s.init:
            raise Reject("operation", f"{instr.name} overwrites {ist.tensor} but the statement accumulates into "
                         f"existing values of {s.tensor}")
        if s.init and not ist.init:
            out.append(f"{ist.tensor}: starts from the identity of {s.op} (filled before the first reduction step)")
    return out


def _op(s) -> str:
    return "assigns" if s.op == "=" else f"reduces with {s.op}{'=!' if s.init else '='}"


def _lhs(s) -> Access:
    return Access(s.tensor, tuple(Var(v) for v in s.indices))


def direct(k: Kernel, si: int, instr: Instruction, target: Target, bound: Bound | None = None,
           explain: bool = False) -> list[Mapping]:
    """Every single-instruction mapping of statement ``si`` onto ``instr``."""
    ctx = _ctx(k, si, target, bound)
    s = ctx.stmt
    out: list[Mapping] = []
    seen: set = set()

    def reject(rule_text: str, ops: dict | None = None, f: dict | None = None):
        steps = ()
        if ops is not None:
            ops_text = tuple((o.name, _bind_text(ops.get(o.name, _lhs(s) if o.is_output else None)))
                             for o in instr.operands)
            steps = (Step(instr.name, ops_text, tuple((iv, var_text(t)) for iv, t in (f or {}).items())),)
        key = (rule_text, steps)
        if explain and key not in seen:
            seen.add(key)
            out.append(Mapping(si, steps, legal=False, reason=rule_text, candidate=instr.name))

    if not _single(instr):
        reject(f"shape: {instr.name} has {len(instr.body.stmts)} statements; only one-statement bodies are matched")
        return out
    ist = instr.body.stmts[0]
    try:
        pre = _op_rules(ctx, instr, True)
    except Reject as r:
        reject(str(r))
        return out
    binds = list(match(ist.rhs, s.rhs, {}, temps=False))
    if not binds:
        reject(f"operation tree: {instr.name} computes {printer.expr(ist.rhs)}, the statement "
               f"{printer.expr(s.rhs)}")
        return out
    legal_keys: set = set()
    for ops in binds:
        budget = pad_budget(ctx, ist, _fillers([r.var for r in s.domain], instr, ops))
        cands = candidates(ctx, instr, ist, ops, _lhs(s))
        why = explain_empty(ctx, instr, ist, ops, _lhs(s), cands, budget)
        if why:
            reject(f"roles: {why}", ops)
            continue
        if True:
            for f in assignments(cands, [r.var for r in ist.domain], budget, set(ist.reduction_vars)):
                try:
                    tr, used = check(ctx, instr, ist, ops, _lhs(s), f, {})
                except Reject as r:
                    reject(str(r), ops, f)
                    continue
                ops_text = [(o.name, _bind_text(ops.get(o.name, _lhs(s) if o.is_output else None)))
                            for o in instr.operands]
                exprs = [(o.name, ops.get(o.name, _lhs(s) if o.is_output else None)) for o in instr.operands]
                step = make_step(instr, ops_text, f, pre + tr, extents(ctx, instr, ist, f, tr), s.tensor, exprs)
                loops = tuple(r.var for r in s.domain if r.var not in used)
                m = Mapping(si, (step,), loops)
                key = (step.operands, step.vars, step.transforms)
                if key not in legal_keys:
                    legal_keys.add(key)
                    out.append(m)
    return out


def _fillers(vs, instr: Instruction, ops: dict[str, Expr]) -> list[str]:
    """The kernel variables that could fill an instruction dimension: not those a scalar operand
    reads one element per iteration of (``+ bias(n)`` on ``X(i, j) + S``: ``n`` must stay a loop
    around the instruction, so a dimension it cannot fill may be padded instead)."""
    pinned: set[str] = set()
    for o in instr.inputs:
        e = ops.get(o.name)
        if not o.shape and isinstance(e, Access) and e.indices:
            own = set(vars_of(e))
            if own < set(vs):  # a broadcast; a read over every variable belongs in a tensor operand
                pinned |= own
    return [v for v in vs if v not in pinned]


def _bind_text(e: Expr | None) -> str:
    if e is None:
        return "?"
    if isinstance(e, Access) and (has_vars(e) or not e.indices):  # a tensor (rank 0: a scalar in memory)
        return e.tensor
    return f"imm:{printer.expr(e)}"


def cover(k: Kernel, si: int, target: Target, bound: Bound | None = None,
          layouts: tuple[tuple, ...] = ()) -> list[Mapping]:
    """Sequences of instructions computing the statement through temporaries (elementwise ops
    below the root; the root may reduce, e.g. a sum of exponentials): one per root instruction
    that works (say a reduction that overwrites its output and one that accumulates, which the
    scheduler needs when the reduction spans several blocks), or one illegal Mapping saying why.

    Top-down with backtracking: a consumer fixes its variable binding first, and
    each temporary operand must then be produced in exactly that layout.

    ``layouts`` (the statement's variables along each output dimension: `producer_layouts`)
    adds, for each root instruction, the sequence writing its output in each such layout too:
    an epilogue fuses into its producer only where its blocks are the producer's blocks
    (a convolution's bias and ReLU on the filter x pixel blocks of its matrix multiply).
    """
    ctx = _ctx(k, si, target, bound)
    s = ctx.stmt
    instrs = sorted((i for i in target.compute_instrs if _single(i)),
                    key=lambda i: (-size(i.body.stmts[0].rhs), target.instrs.index(i)))
    by_rank: dict[int, list[Instruction]] = {}  # instrs, those with outputs of that rank first
    memo: dict[tuple, list[Step] | None] = {}
    counter = [0]
    errors: list[Reject] = []
    tried: dict[Expr, bool] = {}  # subexpression -> whether some instruction's operation tree matched it
    op_fits = [False]  # whether any instruction has the statement's update rule (=, +=!, max=, ...)

    def go(node: Expr, root: bool, want: tuple | None, only: Instruction | None = None) -> list[Step] | None:
        key = (node, want, root, only and only.name)
        if key in memo:
            return memo[key]
        memo[key] = None  # no cycles
        matched = False
        if only:
            order = [only]
        elif want is None:
            order = instrs
        else:
            # a temporary the consumer reads with len(want) dimensions: instructions whose
            # output has that many first (a 32-vector form before a 32 x 32 one padding a
            # dimension: layernorm's rsqrt(var(n) + eps)), the order otherwise kept
            order = by_rank.get(len(want))
            if order is None:
                order = by_rank[len(want)] = sorted(instrs, key=lambda i: len(i.outputs[0].shape or ()) != len(want))
        for instr in order:
            ist = instr.body.stmts[0]
            if ist.reduction_vars and not root:
                continue
            try:
                pre = _op_rules(ctx, instr, root)
            except Reject as r:
                errors.append(r)
                continue
            if root:
                op_fits[0] = True
            out_expr = _lhs(s) if root else node
            for ops in match(ist.rhs, node, {}, temps=True):
                matched = True
                temps = {o.name: e for o, e in ((o, ops.get(o.name)) for o in instr.inputs)
                         if e is not None and not (isinstance(e, Access) and e.indices) and has_vars(e)}
                cands = candidates(ctx, instr, ist, ops, out_expr, root)
                budget = pad_budget(ctx, ist, [v for v in _fillers([r.var for r in s.domain] if root else
                                                                   vars_of(node), instr, ops)
                                               if v not in loops], root)
                if want is not None:  # the consumer fused variables: as many instruction dims stay idle
                    free = len(ist.domain) - len(ist.reduction_vars)
                    budget[False] = max(budget[False], free - len(want))
                bound_any = False
                for f in assignments(cands, [r.var for r in ist.domain], budget, set(ist.reduction_vars)):
                    bound_any = True
                    if want is not None and output_layout(ist, f) != want:
                        continue
                    try:
                        tr, _ = check(ctx, instr, ist, ops, out_expr, f, {})
                    except Reject as r:
                        errors.append(r)
                        continue
                    steps: list[Step] = []
                    texts = []
                    ok = True
                    inner = {a.tensor: a for a in walk(ist.rhs) if isinstance(a, Access)}
                    for o in instr.inputs:
                        e = ops.get(o.name)
                        if o.name in temps:
                            lay = normal_layout(tuple(f.get(x.name, ()) for x in inner[o.name].indices))
                            sub = go(e, False, lay)
                            if sub is None:
                                ok = False
                                break
                            steps += sub
                            texts.append((o.name, sub[-1].result))
                        else:
                            texts.append((o.name, _bind_text(e)))
                    if not ok:
                        continue
                    if root:
                        result = s.tensor
                    else:
                        counter[0] += 1
                        result = f"%t{counter[0]}"
                    exprs = [(o.name, ops.get(o.name)) for o in instr.inputs] + [(instr.outputs[0].name, out_expr)]
                    step = make_step(instr, texts + [(instr.outputs[0].name, result)], f, pre + tr,
                                     extents(ctx, instr, ist, f, tr), result, exprs)
                    memo[key] = steps + [step]
                    return memo[key]
                if not bound_any:
                    why = explain_empty(ctx, instr, ist, ops, out_expr, cands, budget) or (
                        f"no binding of its variables ({', '.join(r.var for r in ist.domain)}) to the statement's "
                        f"gives every operand the indices of the data bound to it ({printer.expr(node)})")
                    errors.append(Reject("roles", f"{instr.name}: {why}"))
        tried[node] = tried.get(node, False) or matched
        return None

    out = []
    loops: set[str] = set()
    # a broadcast read deep in the tree (tanh(C(m, n) + bias(m))) may need its variables as
    # loops around the whole sequence, every instruction leaving a dimension padded: tried only
    # where no sequence fills every dimension, so padded sequences never crowd out dense ones
    parallel = {r.var for r in s.domain} - set(s.reduction_vars)
    broadcast = {v for a in walk(s.rhs) if isinstance(a, Access) and a.indices
                 for own in [set(vars_of(a))] if own < parallel for v in own}
    for attempt in (set(), broadcast):
        if out or (attempt is broadcast and not broadcast):
            break
        loops = attempt
        memo.clear()
        for instr in instrs:
            for want in (None, *layouts):
                steps = go(s.rhs, True, want, instr)
                if steps is None:
                    continue
                steps = _renumber(steps)
                used = {v for st in steps for t in st.fused().values() for v in t}
                m = Mapping(si, tuple(steps), tuple(r.var for r in s.domain if r.var not in used))
                if m not in out:
                    out.append(m)
    if out:
        return out
    why = (_closest(errors, [e for e, m in tried.items() if not m], target) if op_fits[0] else
           Reject("operation", f"no instruction of {target.name} {_op(s)}"))
    return [Mapping(si, (), legal=False, reason=str(why), candidate="(any instruction sequence)")]


# Which rejection explains a failed cover best: a binding that got as far as types and data
# movement says more than one in the wrong orientation (transposed reads are mostly the
# mirror-image candidates of a binding that failed for a real reason).
_RULE_RANK = {"dtype": 0, "placement": 0, "access": 1, "roles": 2, "layout": 3}


def _closest(errors: list[Reject], unmatched: list[Expr], target: Target) -> Reject:
    """The rejection to report: a type, placement or access problem of a binding that got that
    far; else the smallest subexpression nothing computes, on its own or as a sequence (what
    the user would have to change); else a binding's roles or layout."""
    informative = sorted((e for e in errors if e.rule in _RULE_RANK), key=lambda e: _RULE_RANK[e.rule])
    if informative and _RULE_RANK[informative[0].rule] <= 1:
        return informative[0]
    if unmatched:
        node = min(unmatched, key=size)
        return Reject("operation", f"no instruction of {target.name} computes {printer.expr(node)}, "
                      "alone or through temporaries")
    if informative:
        return informative[0]
    return errors[-1] if errors else Reject("operation", f"no instruction sequence of {target.name} fits")


def _renumber(steps: list[Step]) -> list[Step]:
    """Drop repeated temporaries (shared subexpressions) and number the rest %t1, %t2, ..."""
    seen: dict[str, str] = {}
    out = []
    for st in steps:
        if st.result in seen:
            continue
        new = st.result if not st.result.startswith("%t") else f"%t{len(seen) + 1}"
        if st.result.startswith("%t"):
            seen[st.result] = new
        ops = tuple((a, seen.get(b, b)) for a, b in st.operands)
        out.append(replace(st, operands=ops, result=new))
    return out


MAX_LAYOUTS = 8  # producer output layouts a cover tries besides its own first (a convolution has up to 6)


def producer_layouts(k: Kernel, si: int, target: Target, earlier: dict[int, list[Mapping]]) -> tuple[tuple, ...]:
    """The output layouts (statement ``si``'s variables along each instruction output
    dimension, as `output_layout` gives them) of the legal mappings in ``earlier`` (statement
    -> its mappings) of statements writing a tensor ``si`` reads or updates at plain variable
    indices: the layouts in which ``si`` could run on its producer's blocks."""
    c = k.stmts[si]
    reads = accesses(c.rhs) + [_lhs(c)]
    out: list[tuple] = []
    for sj, ms in sorted(earlier.items()):
        p = k.stmts[sj]
        for a in reads:
            if a.tensor != p.tensor or not all(isinstance(x, Var) for x in a.indices):
                continue
            to_c = {pv: x.name for pv, x in zip(p.indices, a.indices)}
            for m in ms:
                if not m.legal or not m.steps:
                    continue
                st = m.steps[-1]
                lay = output_layout(target.instr(st.instruction).body.stmts[0], st.fused())
                if all(v in to_c for t in lay for v in t):
                    layout = tuple(tuple(to_c[v] for v in t) for t in lay)
                    if layout not in out:
                        out.append(layout)
    return tuple(out[:MAX_LAYOUTS])


def mappings_for_statement(k: Kernel, si: int, target: Target, bound: Bound | None = None,
                           explain: bool = False, earlier: dict[int, list[Mapping]] | None = None) -> list[Mapping]:
    """Every mapping of statement ``si`` (with ``explain``, the rejected candidates too).
    ``earlier`` (statement -> its mappings, for the statements before ``si``) lets an
    elementwise sequence take its producers' output layouts (`producer_layouts`)."""
    out: list[Mapping] = []
    for ins in target.compute_instrs:
        out += direct(k, si, ins, target, bound, explain)
    s = k.stmts[si]
    copy_why: list[Mapping] = []
    if not any(m.legal for m in out) and s.op == "=" and isinstance(s.rhs, Access):
        # a pure copy (copy, transpose, broadcast): a data-movement instruction out of main memory
        # does it on its own, its result travelling back like any output
        for ins in target.copy_instrs:
            if ins.inputs[0].memory == target.main and ins.outputs[0].memory != target.main:
                tried = direct(k, si, ins, target, bound, True)
                out += [m for m in tried if m.legal or explain]
                copy_why += [m for m in tried if not m.legal]
    if not any(m.legal for m in out):
        ms = cover(k, si, target, bound, producer_layouts(k, si, target, earlier or {}))
        ranked = [m for m in copy_why if m.reason.split(":")[0] in _RULE_RANK]
        if not ms[0].legal and ranked:  # a copy that almost fits says more than "nothing computes it"
            best = min(ranked, key=lambda m: _RULE_RANK[m.reason.split(":")[0]])
            ms = [replace(ms[0], reason=f"{best.candidate}: {best.reason}")]
        scalar = not ms[0].legal and target.prop("fallback") == "scalar"
        if ms[0].legal or explain or not scalar:
            out += ms
        if scalar:
            loops = tuple(r.var for r in k.stmts[si].domain)
            out.append(Mapping(si, (), loops, True, "", candidate="(scalar code)"))
    return out


def mappings_for_kernel(k: Kernel, target: Target, explain: bool = False,
                        bound: Bound | None = None) -> list[Mapping]:
    out: list[Mapping] = []
    earlier: dict[int, list[Mapping]] = {}
    for si in range(len(k.stmts)):
        earlier[si] = mappings_for_statement(k, si, target, bound, explain, earlier)
        out += earlier[si]
    return out


def unmappable(ms: list[Mapping], k: Kernel) -> list[tuple[int, str]]:
    """Statements with no legal mapping, with the reason to report."""
    out = []
    for si in range(len(k.stmts)):
        mine = [m for m in ms if m.statement == si]
        if not any(m.legal for m in mine):
            reasons = [m.reason for m in mine if m.reason]
            out.append((si, reasons[-1] if reasons else "no instruction matches"))
    return out
