"""Property tests: random kernels round-trip through print/parse; mutated sources fail cleanly."""
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import compiler
import ir.interp
import kernels
from compiler.checking import random_inputs
from ir import printer
from ir.bind import bind
from ir.errors import IsamapError
from ir.expr import Access, Binary, Call, Cast, Const, Select, Unary, Var, strip_types
from ir import dtypes

SIZES = ["M", "N", "K"]
VARS = {"M": "m", "N": "n", "K": "k"}


def _leaf(draw, pool, index, lo=0.0, hi=10.0):
    """A constant, or a read of one of ``pool``'s (name, dims) tensors, each dim indexed by ``index``."""
    name, dims = draw(st.sampled_from(pool))
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return Const(draw(st.integers(0, 9)))
    if choice == 1:
        return Const(draw(st.floats(lo, hi, allow_nan=False, width=32)))
    return Access(name, tuple(index(d) for d in dims))


def _tree(draw, leaf, depth, fns, ops, cast):
    """A random expression of ``depth`` levels at most over ``leaf()``."""
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return leaf()

    def sub():
        return _tree(draw, leaf, depth - 1, fns, ops, cast)
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return Unary("-", sub())
    if kind == 1:
        return Call(draw(st.sampled_from(fns)), (sub(),))
    if kind == 2:
        return Select(Binary(draw(st.sampled_from(["<", ">=", "=="])), sub(), sub()), sub(), sub())
    if kind == 3 and cast:
        return Cast(dtypes.FLOAT32, sub())
    return Binary(draw(st.sampled_from(ops)), sub(), sub())


@st.composite
def kernels_st(draw, max_dims=2):
    """A random valid kernel as (source text, expected RHS ASTs); tensors of 1..max_dims of M, N, K."""
    n_in = draw(st.integers(1, 3))
    inputs = []
    for i in range(n_in):
        dims = draw(st.lists(st.sampled_from(SIZES), min_size=1, max_size=max_dims, unique=True))
        inputs.append((f"T{i}", dims))
    stmts = []
    for j in range(draw(st.integers(1, 3))):
        lhs_dims = draw(st.sampled_from([d for _, d in inputs]))
        lhs = [VARS[d] for d in lhs_dims]
        reduce = draw(st.booleans())
        pool = [t for t in inputs if reduce or set(VARS[d] for d in t[1]) <= set(lhs)]
        if not pool:
            pool = [t for t in inputs if t[1] == lhs_dims] or [(inputs[0][0], inputs[0][1])]
            reduce = not set(VARS[d] for d in pool[0][1]) <= set(lhs)

        def leaf():
            return _leaf(draw, pool, lambda d: Var(VARS[d]))

        def tree(depth):
            return _tree(draw, leaf, depth, ["exp", "tanh", "fabs", "sigmoid", "relu"],
                         ["+", "-", "*", "/", "min", "max"], cast=True)

        rhs = tree(3)
        # make sure the statement mentions a real tensor so every index has a range
        anchor = next(t for t in inputs if t[1] == lhs_dims)
        rhs = Binary("+", rhs, Access(anchor[0], tuple(Var(VARS[d]) for d in anchor[1])))
        op = draw(st.sampled_from(["+=!", "max=!", "min=!"])) if reduce else "="
        stmts.append((f"O{j}", lhs, op, rhs))
    ins = ", ".join(f"float({', '.join(d)}) {n}" for n, d in inputs)
    outs = ", ".join(s[0] for s in stmts)
    body = "\n".join(f"    {o}({', '.join(l)}) {op} {printer.expr(r)}" for o, l, op, r in stmts)
    return f"def rnd({ins}) -> ({outs}) {{\n{body}\n}}\n", [s[3] for s in stmts]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernels_st())
def test_random_kernels_round_trip_and_run(case):
    src, rhss = case
    k = compiler.parse(src).kernel()
    assert [strip_types(s.rhs) for s in k.stmts] == rhss
    again = compiler.parse(printer.kernel(k)).kernel()
    assert again == k
    b = bind(k, {s: v for s, v in zip(SIZES, (3, 2, 4)) if s in k.sizes})
    outs = ir.interp.run(k, random_inputs(k, b), b.sizes)
    assert set(outs) == {t.name for t in k.outputs}


SOURCES = [kernels.path(n).read_text() for n in ("gemm", "conv2d", "softmax", "gru_cell")]
EDITS = st.sampled_from(list("(){},=+-*/!<>?:#@.$0123456789aZ_ \n") + ["+=!", "where", "def", "in", "float"])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SOURCES), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 3), EDITS),
                                          min_size=1, max_size=3))
def test_mutated_sources_raise_only_isamap_errors(src, edits):
    for pos, length, text in edits:
        pos %= len(src) + 1
        src = src[:pos] + text + src[pos + length:]
    try:
        m = compiler.parse(src, name="mut.tc")
        for k in m.kernels:
            b = bind(k, {s: 3 for s in k.sizes})
            ir.interp.run(k, random_inputs(k, b), b.sizes)
    except IsamapError as e:
        assert e.format().strip()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernels_st(max_dims=3), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40),
       st.sampled_from(["vendor", "analytical"]))
def test_random_kernels_compile_and_simulate_correctly_on_nnp(case, m, n, k, scheduler):
    """The compiler never emits a program the simulator refuses, and results match ir.interp."""
    src, _ = case
    kern = compiler.parse(src).kernel()
    sizes = {s: v for s, v in zip(SIZES, (m, n, k)) if s in kern.sizes}
    try:
        ck = compiler.build(kern, target="sim-nnp", sizes=sizes, scheduler=scheduler)
    except IsamapError as e:  # a statement no instruction covers: a clear, located refusal
        assert "no instruction of sim-nnp can perform this statement" in e.message and e.span is not None
        event("refused")
        return
    event("compiled and simulated")
    _matches_the_interpreter(ck, src, sizes)


def _matches_the_interpreter(ck, src, sizes):
    """The compiled kernel's outputs on random inputs agree with ir.interp (where the reference
    itself is finite: random expressions may divide by zero)."""
    from compiler.checking import compare
    ins = random_inputs(ck.kernel, ck.bound)
    out = ck.run_all(**ins)
    ref = ir.interp.run(ck.kernel, ins, ck.sizes)
    ok, err, per = compare(out, ref, ck.precision)
    finite = all(np.isfinite(r).all() for r in ref.values())
    assert ok or not finite, (src, sizes, per)


@pytest.mark.skipif(__import__("compiler.backends.cuda.emulate", fromlist=["x"]).compiler_exe() is None,
                    reason="no host C++ compiler")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernels_st(), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40))
def test_random_kernels_run_correctly_as_cuda_on_the_emulator(case, m, n, k):
    """The cuda backend's code for random kernels (one thread per element, shared elementwise
    launches, tiled FFMA contractions where a statement is one), run on the CPU emulator."""
    from compiler.backends.cuda.runtime import CudaKernel
    src, _ = case
    kern = compiler.parse(src).kernel()
    sizes = {s: v for s, v in zip(SIZES, (m, n, k)) if s in kern.sizes}
    ck = compiler.build(kern, target="cuda", sizes=sizes)
    ck.gpu = CudaKernel(ck.kernel, ck.bound, ck.gpu.src, emulate=True)
    _matches_the_interpreter(ck, src, sizes)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernels_st(max_dims=3), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40))
def test_random_kernels_run_correctly_on_the_cpu(case, m, n, k):
    """The llvm backend (vectorised elementwise loops, reductions, contractions found in random
    expressions) on random kernels of up to three dimensions."""
    src, _ = case
    kern = compiler.parse(src).kernel()
    sizes = {s: v for s, v in zip(SIZES, (m, n, k)) if s in kern.sizes}
    _matches_the_interpreter(compiler.build(kern, target="cpu", sizes=sizes), src, sizes)


@st.composite
def chained_kernels_st(draw):
    """A random kernel whose statements also read earlier outputs (at shifted indices too),
    write permuted or reduced layouts, and update an earlier output (`+=`, `max=`, `=` reading
    itself): the shapes fusion, in-place updates and temporaries meet."""
    n_in = draw(st.integers(1, 3))
    tensors = []  # (name, dims)
    for i in range(n_in):
        dims = draw(st.lists(st.sampled_from(SIZES), min_size=0 if draw(st.integers(0, 9)) == 0 else 1,
                             max_size=3, unique=True))
        tensors.append((f"T{i}", dims))
    inputs = list(tensors)
    stmts = []
    outs = []
    for j in range(draw(st.integers(1, 4))):
        readable = [t for t in tensors if t[1]]
        if not readable:
            readable = tensors
        anchor = draw(st.sampled_from(readable))
        lhs_dims = list(anchor[1])
        if draw(st.booleans()):
            lhs_dims = draw(st.permutations(lhs_dims))
        if len(lhs_dims) > 1 and draw(st.integers(0, 3)) == 0:
            lhs_dims = lhs_dims[:-1]  # reduce one away
        lhs = [VARS[d] for d in lhs_dims]
        avail = set(anchor[1])
        pool = [t for t in tensors if set(t[1]) <= avail]

        def sub(d):
            v = Var(VARS[d])
            if draw(st.integers(0, 7)) == 0:
                return Binary("+", v, Const(1))
            return v

        def leaf():
            return _leaf(draw, pool, sub, 0.5, 4)

        def tree(depth):
            return _tree(draw, leaf, depth, ["exp", "tanh", "fabs", "sigmoid", "relu", "sqrt"],
                         ["+", "-", "*", "+", "*", "min", "max"], cast=False)

        whole = Access(anchor[0], tuple(Var(VARS[d]) for d in anchor[1]))  # every index gets a range
        rhs = Binary(draw(st.sampled_from(["+", "*"])), tree(3), whole)
        reduce = set(lhs_dims) != set(anchor[1])
        if reduce:
            op = draw(st.sampled_from(["+=!", "max=!", "min=!", "+=!"]))
        else:
            op = draw(st.sampled_from(["=", "=", "=", "+=!"]))
        name = f"O{j}"
        if outs and draw(st.integers(0, 4)) == 0:
            # an update of an earlier output with the same dims
            same = [o for o in outs if sorted(o[1]) == sorted(lhs_dims) and len(o[1]) == len(lhs_dims)]
            if same:
                o = draw(st.sampled_from(same))
                name = o[0]
                lhs = [VARS[d] for d in o[1]]
                lhs_dims = o[1]
                op = draw(st.sampled_from(["+=", "=", "max="])) if not reduce else draw(st.sampled_from(["+=", "max="]))
                if op == "=":
                    rhs = Binary("+", Access(name, tuple(Var(v) for v in lhs)), rhs)
        stmts.append((name, lhs, op, rhs))
        if name not in [o[0] for o in outs]:
            outs.append((name, lhs_dims))
            tensors.append((name, lhs_dims))
    ins = ", ".join(f"float({', '.join(d)}) {n}" if d else f"float {n}" for n, d in inputs)
    onames = ", ".join(o[0] for o in outs)
    body = "\n".join(f"    {o}({', '.join(l)}) {op} {printer.expr(r)}" for o, l, op, r in stmts)
    return f"def rnd({ins}) -> ({onames}) {{\n{body}\n}}\n"


def _build_or_refused(src, sizes, target):
    """The compiled kernel, or None where the target refuses with one of its documented
    reasons (no instruction performs a statement; an in-place read the cpu/cuda refuse)."""
    try:
        return compiler.build(src, target=target, sizes=sizes)
    except IsamapError as e:
        assert e.span is not None and ("no instruction of" in e.message or "in place" in e.message), e.message
        event("refused")
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chained_kernels_st(), st.integers(1, 40), st.integers(1, 40), st.integers(1, 40),
       st.sampled_from(["cpu", "sim-nnp"]))
def test_random_chained_kernels_match_the_interpreter(src, m, n, k, target):
    """Kernels whose statements feed each other (the cases that found a lowering crash on a
    computed scalar operand and an epilogue reading a temporary it never held)."""
    kern = compiler.parse(src).kernel()
    sizes = {s: v for s, v in zip(SIZES, (m, n, k)) if s in kern.sizes}
    try:
        bind(kern, sizes)
    except IsamapError:  # a shifted read leaves an index an empty range at these sizes
        return
    ck = _build_or_refused(kern, sizes, target)
    if ck is not None:
        ins = random_inputs(ck.kernel, ck.bound)
        ref = ck.reference(ins) if ck.converted_inputs() else ir.interp.run(ck.kernel, ins, ck.sizes)
        from compiler.checking import compare
        ok, _, per = compare(ck.run_all(**ins), ref, ck.precision)
        assert ok or not all(np.isfinite(r).all() for r in ref.values()), (src, sizes, per)


@st.composite
def row_chains_st(draw):
    """Statements over rows m of (M, N) tensors, each reducing its columns into an (M) tensor
    or computing a new (M, N) one, from the inputs and earlier results: softmax-like chains
    that run as row groups on simulated targets (``compiler.rowgroup``)."""
    pool = [("X0", 2), ("X1", 2)]  # (name, rank): (m, n) or (m)
    stmts, outs = [], []
    for j in range(draw(st.integers(2, 5))):
        def leaf(rows_too=True):
            name, rank = draw(st.sampled_from([t for t in pool if rows_too or t[1] == 2]))
            return f"{name}(m, n)" if rank == 2 else f"{name}(m)"
        a = leaf(False)
        e = draw(st.sampled_from([
            a, f"{draw(st.sampled_from(['exp', 'tanh', 'sigmoid', 'fabs']))}({a})",
            f"{a} {draw(st.sampled_from(['+', '-', '*']))} {leaf()}", f"exp({a} - {leaf()})",
            f"{a} / {leaf()}", f"fmax({a}, {leaf()})"]))
        if draw(st.booleans()):
            stmts.append(f"    O{j}(m) {draw(st.sampled_from(['+=!', 'max=!']))} {e}")
            pool.append((f"O{j}", 1))
        else:
            stmts.append(f"    O{j}(m, n) = {e}")
            pool.append((f"O{j}", 2))
        outs.append(f"O{j}")
    return f"def rc(float(M, N) X0, float(M, N) X1) -> ({', '.join(outs)}) {{\n" + "\n".join(stmts) + "\n}\n"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_chains_st(), st.integers(1, 300), st.integers(1, 100), st.sampled_from(["sim-nnp", "sim-tpu"]))
def test_random_row_chains_match_the_interpreter(src, m, n, target):
    """Row groups keep intermediates on chip and follow the padding past a row's end (a sum
    over exp(x - max) is exact, a sum over x - max is refused); all must match the reference."""
    from compiler import rowgroup
    from compiler.backends.sim.simulate import simulate
    from compiler.checking import compare
    from compiler.lower import lower
    ck = _build_or_refused(src, dict(M=m, N=n), target)
    if ck is None:
        return
    ins = random_inputs(ck.kernel, ck.bound)
    ref = ir.interp.run(ck.kernel, ins, ck.sizes)
    ok, _, per = compare(ck.run_all(**ins), ref, ck.precision)
    assert ok or not all(np.isfinite(r).all() for r in ref.values()), (src, m, n, target, per)
    # every legal group, not only those the model expects to pay
    forced = rowgroup.apply(ck.kernel, ck.target_ir, ck.candidates, ck.schedule, force=True)
    prog = lower(ck.kernel, ck.bound, ck.target_ir, forced, ck.candidates)
    event(f"{sum('row group' in x for x in prog.notes)} statements in row groups when forced")
    _, arrays = ir.interp.prepare_inputs(ck.kernel, ins, ck.sizes)
    res = simulate(ck.target_ir, prog, ck.kernel, ck.bound, arrays)
    ok, _, per = compare({o.name: res.outputs[o.name] for o in ck.kernel.outputs}, ref, ck.precision)
    assert ok or not all(np.isfinite(r).all() for r in ref.values()), (src, m, n, target, "forced", per)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row_chains_st(), st.integers(1, 300), st.integers(1, 100))
def test_random_row_chains_match_the_interpreter_as_cpu_row_loops(src, m, n):
    """On cpu the same chains run as one loop over rows m (``native.row_groups``), split across
    two threads where they are large enough; each row's statements in turn must still give
    the reference's result."""
    import hw_models
    from compiler.backends.llvm import compile_cpu
    from compiler.checking import compare
    k = compiler.parse(src).kernel()
    b = bind(k, dict(M=m, N=n))
    ins = random_inputs(k, b)
    nk = compile_cpu(k, b, hw_models.load("cpu"), threads=2)
    event(f"{sum(len(r) for r in nk.row_runs)} of {len(k.stmts)} statements in a row loop")
    ref = ir.interp.run(k, ins, b.sizes)
    ok, _, per = compare(nk(dict(ins)), ref)
    assert ok or not all(np.isfinite(r).all() for r in ref.values()), (src, m, n, per)


def random_nest_schedule(data, nest, si: int):
    """Any tile of each axis, order of the free axes (reductions innermost), core split of one
    free axis (or none) and prefetch."""
    from schedulers.base import NestSchedule
    tiles = tuple((a.name, data.draw(st.integers(1, a.blocks))) for a in nest.axes)
    order = tuple(data.draw(st.permutations([a.name for a in nest.axes if not a.reduction]))) + \
        tuple(a.name for a in nest.axes if a.reduction)
    free = [a for a in nest.axes if not a.reduction and a.blocks > 1]
    split = ()
    if free and data.draw(st.booleans()):
        a = data.draw(st.sampled_from(free))
        split = ((a.name, data.draw(st.integers(2, min(a.blocks, 4)))),)
    return NestSchedule(si, 0, tiles, order, split, data.draw(st.integers(0, 3)))


def check_under_random_schedule(data, ck, found, what):
    """One of ``found`` (index, candidate) of a one-statement kernel, lowered under any
    schedule that fits (``random_nest_schedule``) and simulated against the reference."""
    from dataclasses import replace

    from compiler.checking import compare
    from compiler.lower import lower
    from schedulers.space import fits
    idx, cand = data.draw(st.sampled_from(found))
    nest = cand.nests[0]
    ns = random_nest_schedule(data, nest, 0)
    if fits(ck.target_ir, nest, ns) is not None:
        event("does not fit")
        return
    sched = replace(ck.schedule, mappings=(idx,), nests=(ns,))
    ck.program = lower(ck.kernel, ck.bound, ck.target_ir, sched, ck.candidates)
    ins = random_inputs(ck.kernel, ck.bound)
    ok, _, per = compare(ck.run_all(**ins), ck.reference(ins), ck.precision)
    assert ok, (what, ns, per)


CONV1D = {
    "xs": "def c1(float(N, C, W) I, float(F, C, S) K) -> (O) {\n    O(n, f, w) +=! I(n, c, w + s) * K(f, c, s)\n}\n",
    "sx": "def c1(float(N, C, W) I, float(F, C, S) K) -> (O) {\n    O(n, f, w) +=! I(n, c, s + w) * K(f, c, s)\n}\n",
    "2d": "def c2(float(N, C, H, W) I, float(F, C, R, S) K) -> (O) {\n"
          "    O(n, f, h, w) +=! I(n, c, h + r, w + s) * K(f, c, r, s)\n}\n",
    "dw2d": "def c2(float(N, C, H, W) I, float(C, R, S) K) -> (O) {\n"
            "    O(n, c, h, w) +=! I(n, c, h + r, w + s) * K(c, r, s)\n}\n",
    "dw": "def c1(float(N, C, W) I, float(C, S) K) -> (O) {\n    O(n, c, w) +=! I(n, c, w + s) * K(c, s)\n}\n",
    "bias": "def c1(float(N, C, W) I, float(F, C, S) K, float(F) B) -> (O, P) {\n"
            "    O(n, f, w) +=! I(n, c, w + s) * K(f, c, s)\n    P(n, f, w) = O(n, f, w) + B(f)\n}\n",
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CONV1D)), st.integers(1, 2), st.integers(1, 40), st.integers(1, 90),
       st.integers(1, 40), st.integers(1, 34), st.data())
def test_sliding_window_convolutions_match_the_interpreter_under_any_schedule(kind, N, C, W, F, S, data):
    """Convolutions on sim-nnp through the mappings whose input is a sliding window
    (``OperandInfo.window``; 2-D ones also share input rows between output rows,
    ``OperandInfo.merged``), any tile of each axis, loop order, prefetch and core split."""
    from dataclasses import replace

    from compiler.checking import compare
    from compiler.lower import lower
    from schedulers.space import fits
    S = min(S, W)
    kern = compiler.parse(CONV1D[kind]).kernel()
    sizes = {k: v for k, v in dict(N=N, C=C, W=W, F=F, S=S).items() if k in kern.sizes}
    if "H" in kern.sizes:
        sizes["R"] = data.draw(st.integers(1, 4))
        sizes["H"] = data.draw(st.integers(sizes["R"], 9))
        sizes["C"] = min(C, 8)
    ck = compiler.build(kern, target="sim-nnp", sizes=sizes)
    si = 0
    found = [(i, c) for i, c in enumerate(ck.candidates[si]) if any(o.window for o in c.nests[0].operands)]
    event(f"window mapping: {bool(found)}")
    if not found:
        assert S == 1 or S > 33  # a window spans at most two blocks
        return
    idx, cand = data.draw(st.sampled_from(found))
    nest = cand.nests[0]
    event(f"window along dim {next(o.window_dim for o in nest.operands if o.window)}")
    event(f"rows merged: {any(o.merged for o in nest.operands)}")
    ns = random_nest_schedule(data, nest, si)
    if fits(ck.target_ir, nest, ns) is not None:
        event("does not fit")
        return
    mappings = list(ck.schedule.mappings)
    mappings[si] = idx
    sched = replace(ck.schedule, mappings=tuple(mappings), nests=tuple(
        ns if n.statement == si else n for n in ck.schedule.nests))
    ck.program = lower(ck.kernel, ck.bound, ck.target_ir, sched, ck.candidates)
    ins = random_inputs(ck.kernel, ck.bound)
    ok, _, per = compare(ck.run_all(**ins), ck.reference(ins), ck.precision)  # the reference on bf16 inputs
    assert ok, (kind, sizes, ns, per)


PITCHED = {
    "nchw": "def c2(float(N, C, H, W) I, float(F, C, R, S) K) -> (O) {\n"
            "    O(n, f, h, w) +=! I(n, c, h + r, w + s) * K(f, c, r, s)\n}\n",
    "nhwc": "def c2(float(N, H, W, C) I, float(R, S, C, F) K) -> (O) {\n"
            "    O(n, h, w, f) +=! I(n, h + r, w + s, c) * K(r, s, c, f)\n}\n",
    "dw2d": "def c2(float(N, C, H, W) I, float(C, R, S) K) -> (O) {\n"
            "    O(n, c, h, w) +=! I(n, c, h + r, w + s) * K(c, r, s)\n}\n",
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(PITCHED)), st.sampled_from(["sim-nnp", "sim-tpu"]), st.integers(1, 2),
       st.integers(1, 9), st.integers(1, 12), st.integers(1, 40), st.integers(1, 9), st.data())
def test_pitched_convolutions_match_the_interpreter_under_any_schedule(kind, target, N, C, H, W, F, data):
    """Output columns over the input's whole rows (``bind._pitch``): any kernel size, tile of
    each axis, loop order, prefetch and core split, on both targets; the overlap columns
    computed and never stored."""
    R, S = data.draw(st.integers(1, H)), data.draw(st.integers(1, W))
    kern = compiler.parse(PITCHED[kind]).kernel()
    sizes = {k: v for k, v in dict(N=N, C=C, H=H, W=W, F=F, R=R, S=S).items() if k in kern.sizes}
    ck = compiler.build(kern, target=target, sizes=sizes)
    found = [(i, c) for i, c in enumerate(ck.candidates[0]) if c.nests[0].step.pitch()]
    event(f"pitched mapping: {bool(found)}")
    if not found:
        assert S == 1  # the pair is then the output's own rows
        return
    check_under_random_schedule(data, ck, found, (kind, target, sizes))


RUN_WINDOWS = {
    "nhwc": "def c2(float(N, H, W, C) I, float(R, S, C, F) K) -> (O) {\n"
            "    O(n, h, w, f) +=! I(n, h + r, w + s, c) * K(r, s, c, f)\n}\n",
    "nwc": "def c1(float(N, W, C) I, float(S, C, F) K) -> (O) {\n    O(n, w, f) +=! I(n, w + s, c) * K(s, c, f)\n}\n",
}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(RUN_WINDOWS)), st.sampled_from(["sim-nnp", "sim-tpu", "sim-gemmini-fp32"]),
       st.integers(1, 2), st.integers(1, 70), st.integers(1, 6), st.integers(1, 40), st.data())
def test_tap_folded_convolutions_match_the_interpreter_under_any_schedule(kind, target, N, C, W, F, data):
    """NHWC convolutions with a filter row's taps folded into the reduction, k = (s, c), the
    input one tile of whole rows that each output column reads y * C elements further on
    (``nest._run_window``): any channel count (a block boundary inside a pixel or not), kernel
    size, tile of each axis, loop order, prefetch and core split (w too: each core its rows)."""
    S = data.draw(st.integers(2, W)) if W > 1 else 1
    kern = compiler.parse(RUN_WINDOWS[kind]).kernel()
    sizes = {k: v for k, v in dict(N=N, C=C, W=W, F=F, S=S, H=data.draw(st.integers(1, 4)), R=1).items()
             if k in kern.sizes}
    ck = compiler.build(kern, target=target, sizes=sizes)
    found = [(i, c) for i, c in enumerate(ck.candidates[0])
             if any(o.window and o.along_run for o in c.nests[0].operands)]
    event(f"run window: {bool(found)}")
    if not found:
        assert W - S + 1 == 1  # one output column: nothing to slide along
        return
    check_under_random_schedule(data, ck, found, (kind, target, sizes))


EPILOGUES = {
    "nchw_bias_relu": ("def c2(float(N, C, H, W) I, float(F, C, R, S) K, float(F) B) -> (O) {\n"
                       "    O(n, f, h, w) +=! I(n, c, h + r, w + s) * K(f, c, r, s)\n"
                       "    O(n, f, h, w) = fmax(O(n, f, h, w) + B(f), 0)\n}\n", True),
    "nhwc_bias_relu": ("def c2(float(N, H, W, C) I, float(R, S, C, F) K, float(F) B) -> (O) {\n"
                       "    O(n, h, w, f) +=! I(n, h + r, w + s, c) * K(r, s, c, f)\n"
                       "    O(n, h, w, f) = fmax(O(n, h, w, f) + B(f), 0)\n}\n", True),
    # a residual read at the pixels: loaded as the output's block is stored (rows at the pitch)
    "nchw_residual": ("def c2(float(N, C, H, W) I, float(F, C, R, S) K, float(N, F, P, Q) X) -> (O) {\n"
                      "    O(n, f, h, w) +=! I(n, c, h + r, w + s) * K(f, c, r, s)\n"
                      "    O(n, f, h, w) = O(n, f, h, w) + X(n, f, h, w)\n}\n", True),
    # a residual read transposed (w, h): no block of the output's layout, never fused there
    "nchw_residual_t": ("def c2(float(N, C, H, W) I, float(F, C, R, S) K, float(N, F, Q, P) X) -> (O) {\n"
                        "    O(n, f, h, w) +=! I(n, c, h + r, w + s) * K(f, c, r, s)\n"
                        "    O(n, f, h, w) = O(n, f, h, w) + X(n, f, w, h)\n}\n", False),
}


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(EPILOGUES)), st.sampled_from(["sim-nnp", "sim-tpu"]), st.integers(1, 2),
       st.integers(1, 9), st.integers(2, 10), st.integers(2, 36), st.integers(1, 9), st.data())
def test_epilogues_on_pitched_blocks_match_the_interpreter_under_any_schedule(kind, target, N, C, H, W, F, data):
    """A convolution computing its pixels at the input's pitch with an elementwise statement
    after it: a bias and ReLU run on the pitched blocks as they are (``epilogue.plan``; the
    overlap columns they also compute are never stored), and a residual is loaded at the pitch,
    as the output is stored (``Epilogue.at_pitch``), under any tiling of the convolution; a
    residual read transposed runs as its own nest."""
    from dataclasses import replace

    from compiler.checking import compare
    from compiler.epilogue import plan
    from compiler.lower import lower
    from schedulers.space import fits
    src, fuses = EPILOGUES[kind]
    R, S = data.draw(st.integers(1, H)), data.draw(st.integers(2, W))
    sizes = dict(N=N, C=C, H=H, W=W, F=F, R=R, S=S)
    if "residual" in kind:
        sizes.update(P=H - R + 1, Q=W - S + 1)  # (the transposed one reads X(n, f, w, h): Q x P)
    ck = compiler.build(compiler.parse(src).kernel(), target=target, sizes=sizes)
    t = ck.target_ir
    pitched = [(i, c) for i, c in enumerate(ck.candidates[0]) if c.nests[0].step.pitch()]
    if not pitched:
        event("no pitched mapping")
        return
    idx, cand = data.draw(st.sampled_from(pitched))
    onto = [j for j, c in enumerate(ck.candidates[1]) if plan(ck.kernel, t, cand.nests[0], [c.nests])]
    assert fuses or not onto, (kind, sizes)  # (a bias fuses where an epilogue mapping has the
    # convolution's orientation: not onto pixels x filters of NCHW, O read transposed)
    event(f"epilogue fuses: {bool(onto)}")
    j = data.draw(st.sampled_from(onto)) if onto else ck.schedule.mappings[1]
    ns = random_nest_schedule(data, cand.nests[0], 0)
    if fits(t, cand.nests[0], ns) is not None:
        event("does not fit")
        return
    from compiler.epilogue import reserves
    reserve = reserves(ck.kernel, t, [cand.nests, ck.candidates[1][j].nests]).get(0)
    if onto and reserve is not None and fits(t, cand.nests[0], ns, reserve) is not None:
        event("fits, but not with the epilogue's slots beside it")  # (the epilogue then runs apart)
        return
    from schedulers.search import best_nest
    rest = tuple(best_nest(t, n)[0] for n in ck.candidates[1][j].nests)
    sched = replace(ck.schedule, mappings=(idx, j), nests=(ns,) + rest)
    ck.program = lower(ck.kernel, ck.bound, t, sched, ck.candidates)
    assert any("fused into S0" in n for n in ck.program.notes) == bool(onto)
    ins = random_inputs(ck.kernel, ck.bound)
    ok, _, per = compare(ck.run_all(**ins), ck.reference(ins), ck.precision)
    assert ok, (kind, target, sizes, ns, per)
