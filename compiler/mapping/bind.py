"""Binding instruction variables to kernel variables, and the legality rules.

Given operand bindings from tree matching, search every assignment of
instruction variables to kernel variables (single, or fused runs of adjacent
tensor dimensions), then check each operand's access pattern: layout
(transposed reads), contiguity and windows (which need a gathering copy),
element types (conversions on the way in or out), and placement (a chain of
data-movement instructions between main memory and the operand's memory).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from math import prod

from ir import printer
from ir.expr import Access, Binary, Const, Expr, Var, accesses, evaluate_int, linear, vars_of
from ir.kernel import Kernel, Stmt
from ir.target import Instruction, Target

from ..routes import copy_path

from .model import Step, pitch_of


class Reject(Exception):
    def __init__(self, rule: str, text: str):
        super().__init__(f"{rule}: {text}")
        self.rule, self.text = rule, text


@dataclass
class Ctx:
    kernel: Kernel
    stmt: Stmt
    target: Target
    extents: dict[str, int] | None  # kernel var -> extent (when sizes are known)
    pitch: bool = True  # pitched pairs may be offered (``_pitch``; off where the output cannot take one)
    sizes: dict[str, int] | None = None  # the kernel's sizes, when known

    @property
    def vars(self) -> set[str]:
        return {r.var for r in self.stmt.domain}


def _covers(ctx: Ctx, v: str, r, dim) -> bool:
    """Whether variable ``v`` (range ``r`` in the statement) runs over the whole tensor
    dimension ``dim``: the same bounds as written, or, with the sizes known, the same numbers
    (a residual X(n, f, h, w) declared with sizes P, Q of its own beside O's H - R + 1)."""
    if r.lo == dim.min and printer.expr(r.hi) == printer.expr(_plus(dim.min, dim.extent)):
        return True
    if ctx.sizes is None or ctx.extents is None or v not in ctx.extents:
        return False
    try:
        return evaluate_int(dim.min, ctx.sizes) == evaluate_int(r.lo, ctx.sizes) and \
            evaluate_int(dim.extent, ctx.sizes) == ctx.extents[v]
    except (KeyError, ValueError, TypeError):
        return False


def _kernel_vars(e: Expr) -> list[str]:
    return vars_of(e)


def _runs(acc: Access) -> list[tuple[str, ...]]:
    """Fusable runs: consecutive dims indexed by plain, distinct variables."""
    plain = [i.name if isinstance(i, Var) else None for i in acc.indices]
    out = []
    for a in range(len(plain)):
        for b in range(a + 2, len(plain) + 1):
            run = plain[a:b]
            if None in run or len(set(run)) != len(run):
                break
            out.append(tuple(run))
    return out


def candidates(ctx: Ctx, instr: Instruction, ist: Stmt, ops: dict[str, Expr], out_expr: Expr, root: bool = True):
    """instr var -> list of candidate kernel-var tuples (roles respected: below the root, a
    temporary is indexed by every variable it uses, the statement's reduction variables too,
    so those play the role of free variables there)."""
    inner = instr_accesses(ist)
    red_i = set(ist.reduction_vars)
    red_k = set(ctx.stmt.reduction_vars) if root else set()
    bound = dict(ops)
    bound[instr.outputs[0].name] = out_expr
    cands: dict[str, list[tuple[str, ...]]] = {}
    for r in ist.domain:
        iv = r.var
        seen: list[tuple[str, ...]] = []
        for opname, ia in inner.items():
            if not any(isinstance(x, Var) and x.name == iv for x in ia.indices):
                continue
            e = bound.get(opname)
            if e is None:
                continue
            for kv in _kernel_vars(e):
                if (kv in red_k) == (iv in red_i) and (kv,) not in seen:
                    seen.append((kv,))
            if isinstance(e, Access):
                for run in _runs(e):
                    if all((v in red_k) == (iv in red_i) for v in run) and run not in seen:
                        seen.append(run)
        # the operands an instruction var indexes must be exactly those its kernel vars index
        sig_i = {o for o, ia in inner.items() if any(isinstance(x, Var) and x.name == iv for x in ia.indices)
                 and o in bound}
        cands[iv] = [t for t in seen if _signature(bound, t) == sig_i]
    return cands


def _signature(bound: dict[str, Expr], t: tuple[str, ...]) -> set[str]:
    return {o for o, e in bound.items() if any(v in vars_of(e) for v in t)}


def explain_empty(ctx: Ctx, instr: Instruction, ist: Stmt, ops: dict[str, Expr], out_expr: Expr,
                  cands, budget) -> str | None:
    """Why some instruction var cannot be bound at all (the summary rejection), or None."""
    inner = instr_accesses(ist)
    bound = dict(ops)
    bound[instr.outputs[0].name] = out_expr
    red_i = set(ist.reduction_vars)
    for r in ist.domain:
        iv = r.var
        if cands.get(iv) or budget[iv in red_i] > 0:
            continue
        sig_i = sorted(o for o, ia in inner.items() if o in bound and
                       any(isinstance(x, Var) and x.name == iv for x in ia.indices))
        tensors = [_name(bound[o]) for o in sig_i]
        role = "reduction" if iv in red_i else "parallel"
        kvs = {v for e in bound.values() for v in vars_of(e)}
        notes = []
        for v in sorted(kvs, key=lambda x: [r.var for r in ctx.stmt.domain].index(x)):
            sig = sorted(_signature(bound, (v,)))
            if sig != sig_i and len(sig) > len(sig_i):
                notes.append(f"{v} appears in {', '.join(_name(bound[o]) for o in sig)}")
        note = f" ({'; '.join(notes[:3])})" if notes else ""
        return (f"instruction var {iv} ({role}) appears in exactly {', '.join(sig_i)}; no {role} variable "
                f"of the statement indexes exactly {', '.join(tensors)}{note}")
    return None


def _name(e: Expr) -> str:
    return e.tensor if isinstance(e, Access) else _show(e)


def instr_accesses(ist: Stmt) -> dict[str, Access]:
    """An instruction body's access of each operand, its output included."""
    from ir.expr import walk
    out = {}
    for n in walk(ist.rhs):
        if isinstance(n, Access):
            out.setdefault(n.tensor, n)
    out[ist.tensor] = Access(ist.tensor, tuple(Var(v) for v in ist.indices))
    return out


def pad_budget(ctx: Ctx, ist: Stmt, node_vars: list[str], root: bool = True) -> dict[bool, int]:
    """How many instruction vars of each role (True: reduction) may be padded to extent 1.

    Only as many as the kernel expression lacks: a statement over fewer
    variables than the instruction has dimensions pads the rest, but an
    instruction dimension is never left idle while a kernel variable of the
    same role could fill it.
    """
    red_k = set(ctx.stmt.reduction_vars) if root else set()
    red_i = set(ist.reduction_vars)
    n_i = {True: len(red_i), False: len(ist.domain) - len(red_i)}
    n_k = {True: sum(v in red_k for v in node_vars), False: sum(v not in red_k for v in node_vars)}
    return {r: max(0, n_i[r] - n_k[r]) for r in (True, False)}


def assignments(cands: dict[str, list[tuple[str, ...]]], order: list[str], budget: dict[bool, int] | None = None,
                reduction: set[str] = frozenset()):
    """Disjoint assignments of instruction vars to candidate tuples (deterministic order).

    ``budget`` (from ``pad_budget``) allows that many padded vars per role."""
    budget = dict(budget or {True: 0, False: 0})

    def go(i, used, cur):
        if i == len(order):
            yield dict(cur)
            return
        iv = order[i]
        role = iv in reduction
        opts = list(cands.get(iv, []))
        if budget[role] > 0:
            opts.append(())
        for t in opts:
            if used & set(t):
                continue
            if not t:
                budget[role] -= 1
            cur[iv] = t
            yield from go(i + 1, used | set(t), cur)
            del cur[iv]
            if not t:
                budget[role] += 1
    yield from go(0, set(), {})


def check(ctx: Ctx, instr: Instruction, ist: Stmt, ops: dict[str, Expr], out_expr: Expr,
          f: dict[str, tuple[str, ...]], temp_dtypes: dict) -> tuple[list[str], list[str]]:
    """Raise Reject, or return (transforms, kernel vars used by the instruction)."""
    inner = instr_accesses(ist)
    bound = dict(ops)
    outname = instr.outputs[0].name
    bound[outname] = out_expr
    owner = {v: iv for iv, t in f.items() for v in t}
    transforms: list[str] = []
    for opname, ia in inner.items():
        e = bound.get(opname)
        if e is None:
            continue
        iop = instr.operand(opname)
        ivs = [x.name for x in ia.indices]
        kvs = _kernel_vars(e)
        for iv in ivs:
            for v in f.get(iv, ()):
                if v not in kvs:
                    raise Reject("access", f"operand {opname} varies along {iv}={v} but "
                                 f"{_show(e)} does not depend on {v}")
        for v in kvs:
            if v in owner and owner[v] not in ivs:
                raise Reject("access", f"{_show(e)} depends on {v}, bound to instruction var {owner[v]}, "
                             f"but operand {opname} has no {owner[v]} dimension")
        if e in temp_dtypes and opname != outname:
            dt, layout = temp_dtypes[e]
            if dt != iop.dtype.name:
                raise Reject("dtype", f"operand {opname} is {iop.dtype} but the temporary {_show(e)} is {dt}")
            mine = normal_layout(tuple(f.get(iv, ()) for iv in ivs))
            if mine != layout:
                raise Reject("layout", f"the temporary {_show(e)} was produced as "
                             f"{_layout_text(layout)} but operand {opname} would read it as {_layout_text(mine)}")
        if isinstance(e, Access) and e.indices:
            transforms += _layout(ctx, instr, opname, ia, e, f, opname == outname)
            transforms += _dtype_and_placement(ctx, instr, opname, e, opname == outname,
                                               any("gather" in t for t in transforms))
    try:
        transforms = _pitched_output(ctx, bound, outname, f, transforms)
    except _Unpitched:  # the same binding with the pair read as it is (a gathering copy)
        return check(replace(ctx, pitch=False), instr, ist, ops, out_expr, f, temp_dtypes)
    used = [v for t in f.values() for v in t]
    # reduction variables left as loops need an accumulating instruction
    red_loops = [v for v in ctx.stmt.reduction_vars if v not in used]
    if red_loops and ist.init:
        raise Reject("roles", f"reduction var {red_loops[0]} is a loop around {instr.name}, which overwrites "
                     f"{outname} instead of accumulating")
    return transforms, used


def _layout_text(layout) -> str:
    return "[" + ", ".join(var_text(t) for t in layout) + "]"


def normal_layout(layout: tuple) -> tuple:
    """A temporary's layout as the kernel variables along its dimensions, padded dimensions
    dropped: a temporary's buffer is laid out by the variables it holds (compiler.nest.Temp),
    so a tile written with a padded dimension (a 32x1 column) and one read without it (a
    32-vector) address the same elements."""
    out = tuple(t for t in layout if t != ())
    return out or tuple(layout[-1:])


def output_layout(ist: Stmt, f) -> tuple:
    return normal_layout(tuple(f.get(v, ()) for v in ist.indices))


def _show(e: Expr) -> str:
    return printer.expr(e)


def _layout(ctx: Ctx, instr, opname, ia: Access, e: Access, f, is_out) -> list[str]:
    """Transposition, fusion, windows and contiguity of one operand's tile."""
    out: list[str] = []
    lins = [linear(s) for s in e.indices]
    for d, sub in enumerate(e.indices):
        inner = accesses(sub)
        if inner:  # the address depends on data: no copy instruction reads a tensor to find it
            raise Reject("access", f"{e.tensor} subscript {_show(sub)} reads {inner[0].tensor}: a data-dependent "
                         f"address, which no copy instruction of {ctx.target.name} computes")
    first_dims = []
    gather = None
    for p, x in enumerate(ia.indices):
        t = f.get(x.name, ())
        dims = []
        for v in t:
            where = [d for d, lin in enumerate(lins) if lin is not None and lin.coef(v) != 0]
            nonaff = [d for d, lin in enumerate(lins) if lin is None and v in vars_of(e.indices[d])]
            if nonaff:
                gather = f"{e.tensor} subscript {_show(e.indices[nonaff[0]])} is not affine"
                continue
            if len(where) != 1:
                raise Reject("access", f"{v} indexes {len(where)} dimensions of {e.tensor}")
            d = where[0]
            if lins[d].coef(v) != 1:
                gather = f"{e.tensor} is read with stride {lins[d].coef(v)} along {v}"
            others = [u for u in lins[d].names() if u != v and u in ctx.vars]
            if any(u in {w for iv in (y.name for y in ia.indices) for w in f.get(iv, ())} for u in others):
                gather = f"im2col window: {e.tensor} subscript {_show(e.indices[d])} spans two instruction dims"
            dims.append(d)
        if len(t) > 1 and not is_out and (pitch := _pitch(ctx, e, t, dims, f)) is not None:
            out.append(f"{opname}: {e.tensor} ({','.join(t)}) read flat at pitch {pitch}")
        elif len(t) > 1:
            ok = dims == list(range(dims[0], dims[0] + len(dims))) and all(
                isinstance(e.indices[d], Var) for d in dims[1:]) and _offset_run(ctx, e, t[0], dims[0], f)
            if ok:
                for d in dims[1:]:
                    v = e.indices[d].name
                    r = ctx.stmt.range_of(v)
                    dim = ctx.kernel.dims(e.tensor)[d]
                    if _covers(ctx, v, r, dim):
                        continue
                    ok = False
            if not ok:
                gather = f"fusing ({','.join(t)}) of {e.tensor} is not contiguous"
            else:
                shift = "" if isinstance(e.indices[dims[0]], Var) else \
                    f" from {_show(e.indices[dims[0]])} on (one flat run)"
                out.append(f"{opname}: {e.tensor} dims ({','.join(t)}) fused{shift}")
        first_dims.append(min(dims) if dims else None)
    present = [d for d in first_dims if d is not None]
    transposed = present != sorted(present)
    if transposed:
        if opname not in instr.transpose:
            raise Reject("layout", f"binding {opname} to {e.tensor} needs a transposed "
                         f"{'write' if is_out else 'read'}, which {instr.name} does not allow for {opname}")
        out.append(f"{opname}: {e.tensor} {'written' if is_out else 'read'} transposed")
    # contiguity: the tensor's last dimension must be an instruction dimension's innermost var
    last = len(e.indices) - 1
    covered = set()
    for x in ia.indices:
        for v in f.get(x.name, ()):
            for d, lin in enumerate(lins):
                if lin is not None and lin.coef(v):
                    covered.add(d)
    if last not in covered and lins[last] is not None and any(
            n in ctx.vars for n in lins[last].names()) and gather is None and covered:
        gather = f"rows of {e.tensor} are strided: its last dimension is a loop, not a tile dimension"
    if gather:
        if is_out:
            g = [c for c in ctx.target.copy_instrs
                 if c.gather and c.inputs[0].memory == instr.operand(opname).memory]
            if not g:
                raise Reject("access", f"writing {e.tensor} would need a scatter ({gather}); no instruction "
                             f"provides one")
            out.append(f"{opname}: scatter {e.tensor} via {g[0].name} ({gather})")
            return out
        g = [c for c in ctx.target.copy_instrs if c.gather and c.outputs[0].memory == instr.operand(opname).memory]
        if not g:
            raise Reject("access", f"{gather}; it needs a gathering copy into "
                         f"{instr.operand(opname).memory}, and {ctx.target.name} has none")
        out.append(f"{opname}: gather {e.tensor} via {g[0].name} ({gather})")
    return out


def partner(sub: Expr, v: str) -> str | None:
    """y where a subscript is ``v + y`` (or ``y + v``) of two plain variables (a convolution's
    output position and filter tap), else None."""
    if isinstance(sub, Binary) and sub.op == "+" and isinstance(sub.a, Var) and isinstance(sub.b, Var):
        return sub.b.name if sub.a.name == v else sub.a.name if sub.b.name == v else None
    return None


def _offset_run(ctx: Ctx, e: Access, v: str, d: int, f) -> bool:
    """Whether the outermost dimension of a fused run may be read as ``v + y``: y a variable
    left as a loop (a filter tap of NHWC's ``I(n, h + r, w + s, c)``), so that the run (s, c)
    is still one flat stretch of memory, merely starting y rows further on."""
    sub = e.indices[d]
    if isinstance(sub, Var):
        return True
    y = partner(sub, v)
    bound_vars = {u for tt in f.values() for u in tt}
    return y is not None and y in ctx.vars and y not in bound_vars


class _Unpitched(Exception):
    """A pitched pair the rest of the binding cannot take: it is checked again without one."""


# an input's pitched read, as ``_layout`` writes it: "B: I (h,w) read flat at pitch 30"
_FLAT = re.compile(r"(\w+): \w+ \((\w+),(\w+)\) read flat at pitch (\d+)$")


def _pitched_output(ctx: Ctx, bound: dict, outname: str, f, transforms: list[str]) -> list[str]:
    """Where an input reads a fused (h, w) flat at pitch W (``_pitch``), the output's rows run
    at that pitch too: its (h, w) must be one contiguous fused run, and no other operand may
    read h or w (it would see the overlap columns as pixels)."""
    flat = {m.group(1): m.groups()[1:] for m in map(_FLAT.match, transforms) if m}
    if not flat:
        return transforms
    out = bound[outname]
    declared = {t.name for t in ctx.kernel.inputs + ctx.kernel.outputs}
    if not isinstance(out, Access) or out.tensor not in declared:  # a temporary's layout is its own
        raise _Unpitched
    if len(set(flat.values())) != 1:
        raise _Unpitched  # two inputs read different pairs or pitches
    h, w, pitch = next(iter(flat.values()))
    pair, pitch = f"{h},{w}", int(pitch)
    fused = f"{outname}: {out.tensor} dims ({pair}) fused"
    if fused not in transforms:
        raise _Unpitched  # the output is not one run along the pair
    readers = [o for o, e in bound.items() if o != outname and isinstance(e, Expr) and {h, w} & set(vars_of(e))]
    if any(o not in flat for o in readers):
        raise _Unpitched  # another operand reads the pair as it is
    over = pitch - ctx.extents[w]
    return [f"{outname}: {out.tensor} rows ({pair}) at pitch {pitch}, the {over} column{'s' * (over > 1)} "
            f"of overlap a row computed and not stored" if t == fused else t for t in transforms]


PITCHED = True  # pitched pairs (off: the mappings before them, for comparisons and tests)


def _pitch(ctx: Ctx, e: Access, t: tuple[str, ...], dims: list[int], f) -> int | None:
    """The row width W at which an input reads a fused pair (h, w) as one flat run: a
    convolution's ``I(.., h + r, w + s, ..)`` on adjacent dimensions, r and s loops, I's rows
    exactly the Wo + S - 1 columns the taps read.  Its tile is then the contiguous pixels
    p = h * W + w, each tap's block p + r * W + s further on -- plain copies, no gather --
    where the output's columns run over the whole input row (``check`` turns the output's
    fusion into rows at pitch W; the W - Wo columns of overlap are computed, never stored).
    Only with sizes known (the pitch is a number of the loop program)."""
    if not (PITCHED and ctx.pitch) or ctx.extents is None or len(t) != 2 or dims != [dims[0], dims[0] + 1]:
        return None
    bound_vars = {v for tt in f.values() for v in tt}
    taps = []
    for v, d in zip(t, dims):
        sub = e.indices[d]
        if isinstance(sub, Var):
            taps.append(None)
            continue
        y = partner(sub, v)
        if y is None or y in bound_vars or y not in ctx.stmt.reduction_vars:
            return None
        taps.append(y)
    h, w = t
    s = taps[1]
    if s is None and taps[0] is None:
        return None
    dim = ctx.kernel.dims(e.tensor)[dims[1]]
    wo = ctx.stmt.range_of(w)
    reads = wo.hi if s is None else _plus(_plus(wo.hi, ctx.stmt.range_of(s).hi), Const(-1))
    if printer.expr(reads) != printer.expr(_plus(dim.min, dim.extent)) or wo.lo != dim.min:
        return None
    pitch = ctx.extents[w] + (ctx.extents[s] - 1 if s is not None else 0)
    return pitch if pitch > ctx.extents[w] else None


def _plus(a, b):
    from ir.expr import Binary, simplify
    return simplify(Binary("+", a, b))


def _dtype_and_placement(ctx: Ctx, instr, opname, e: Access, is_out, gathered) -> list[str]:
    iop = instr.operand(opname)
    kdt = ctx.kernel.tensor(e.tensor).dtype
    t = ctx.target
    if is_out:
        path = copy_path(t, (iop.memory, iop.dtype.name), (t.main, kdt.name))
        if path is None:
            raise Reject("placement", f"no chain of data movement takes {iop.dtype} results from "
                         f"{iop.memory} to {kdt} in {t.main}")
    else:
        path = copy_path(t, (t.main, kdt.name), (iop.memory, iop.dtype.name))
        if path is None:
            raise Reject("dtype" if kdt != iop.dtype else "placement",
                         f"operand {opname} is {iop.dtype} in {iop.memory} but {e.tensor} is {kdt} in "
                         f"{t.main}, and no chain of data movement converts and brings it there")
    conv = [c for c in path if c.inputs[0].dtype != c.outputs[0].dtype]
    out = []
    if conv:
        out.append(f"{opname}: convert {e.tensor} {conv[0].inputs[0].dtype}->{conv[0].outputs[0].dtype} "
                   f"via {conv[0].name}")
    return out


def extents(ctx: Ctx, instr: Instruction, ist: Stmt, f, transforms=()) -> tuple[tuple[str, str], ...]:
    if ctx.extents is None:
        return ()
    ext = {**ctx.extents, **pitch_of(transforms)}  # a pitched pair runs over the input's whole rows
    out = []
    for r in ist.domain:
        e = evaluate_int(r.hi, {}) - evaluate_int(r.lo, {})
        t = f.get(r.var, ())
        n = prod(ext[v] for v in t) if t else 1
        if n == e:
            out.append((r.var, "exact"))
        elif n % e == 0:
            out.append((r.var, f"tiled x{n // e}"))
        else:
            out.append((r.var, f"padded {n}->{-(-n // e) * e}"))
    return tuple(out)


def var_text(t: tuple[str, ...]) -> str:
    if not t:
        return "1"
    return t[0] if len(t) == 1 else f"({','.join(t)})"


def make_step(instr, ops_text, f, transforms, ext, result, exprs=()) -> Step:
    return Step(instr.name, tuple(ops_text), tuple((iv, var_text(t)) for iv, t in f.items()),
                tuple(transforms), ext, result, tuple(exprs))
