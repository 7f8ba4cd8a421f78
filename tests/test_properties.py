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
            name, dims = draw(st.sampled_from(pool))
            choice = draw(st.integers(0, 4))
            if choice == 0:
                return Const(draw(st.integers(0, 9)))
            if choice == 1:
                return Const(draw(st.floats(0, 10, allow_nan=False, width=32)))
            return Access(name, tuple(Var(VARS[d]) for d in dims))

        def tree(depth):
            if depth == 0 or draw(st.integers(0, 3)) == 0:
                return leaf()
            kind = draw(st.integers(0, 5))
            if kind == 0:
                return Unary("-", tree(depth - 1))
            if kind == 1:
                return Call(draw(st.sampled_from(["exp", "tanh", "fabs", "sigmoid", "relu"])),
                            (tree(depth - 1),))
            if kind == 2:
                return Select(Binary(draw(st.sampled_from(["<", ">=", "=="])), tree(depth - 1),
                                     tree(depth - 1)), tree(depth - 1), tree(depth - 1))
            if kind == 3:
                return Cast(dtypes.FLOAT32, tree(depth - 1))
            return Binary(draw(st.sampled_from(["+", "-", "*", "/", "min", "max"])),
                          tree(depth - 1), tree(depth - 1))

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
