"""The cpu target (llvm backend, scalar path) against the reference interpreter."""
import gc
import json
import types
from math import prod

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compiler
import hw_models
import ir.interp
import kernels
from compiler import cli
from compiler.checking import compare, random_inputs
from ir.bind import bind

from helpers import sizes_for


@pytest.mark.parametrize("base", [8, 7, 1])
@pytest.mark.parametrize("name", kernels.names())
def test_every_kernel_on_cpu(name, base):
    k = compiler.parse(kernels.path(name)).kernel()
    ck = compiler.build(k, target="cpu", sizes=sizes_for(k, base))
    ins = random_inputs(ck.kernel, ck.bound, seed=base)
    out = ck.run_all(**ins)
    ok, err, per = compare(out, ir.interp.run(k, ins, ck.sizes))
    assert ok, (name, base, per)


def test_cpu_semantics_float64_ints_gathers_and_bf16():
    src = """def f(double(N) A, int32(N) I, int8(N) Q, bfloat16(N) H, float(E, D) LUT, int32(B, L) J) -> (X, Y, Z, W, O) {
        X(i) = A(i) * 3.0 + exp(A(i))
        Y(i) = I(i) / 3 + I(i) % 3 + min(I(i), 2)
        Z(i) = Q(i) * Q(i)
        W(i) = H(i) * H(i)
        O(b, d) +=! LUT(J(b, r), d)
    }"""
    k = compiler.parse(src).kernel()
    b = bind(k, dict(N=9, E=10, D=3, B=2, L=4))
    ins = random_inputs(k, b)
    ins["I"] = np.array([-7, -3, -1, 0, 1, 2, 3, 7, 100], np.int32)
    ins["Q"] = np.array([100, -100, 20, 11, 12, 13, 1, 2, 3], np.int8)
    ck = compiler.build(k, target="cpu", sizes=b.sizes)
    out = ck.run_all(**ins)
    ref = ir.interp.run(k, ins, b.sizes)
    for n in ref:
        np.testing.assert_allclose(out[n], ref[n], rtol=1e-6, atol=1e-6, err_msg=n)
    assert out["X"].dtype == np.float64 and out["Z"].dtype == np.int8


@pytest.mark.parametrize("op", ["+=!", "max=!", "min=!"])
def test_half_and_bool_outputs_start_from_the_identity_in_their_storage_type(op):
    """A ``!`` reduction into a half tensor is filled with the identity stored as a half (the
    fill stored a float into a half buffer: LLVM refused to build, found by a random-GEMM fuzz)."""
    src = (f"def g(half(B, M, K) A, half(B, K, N) W) -> (C, D) {{\n"
           f"    C(b, n, m) {op} A(b, m, k) * W(b, k, n)\n    D(m) {op} A(0, m, k)\n}}\n")
    k = compiler.parse(src).kernel()
    b = bind(k, dict(B=2, M=3, N=4, K=5))
    ins = random_inputs(k, b)
    out = compiler.build(k, target="cpu", sizes=b.sizes).run_all(**ins)
    ok, err, per = compare(out, ir.interp.run(k, ins, b.sizes), "float16")
    assert ok and out["C"].dtype == np.float16, per


@pytest.mark.parametrize("lhs,sizes", [("C(b, n, m)", dict(B=1, M=1, N=1, K=11)),
                                       ("C(b, m, n)", dict(B=2, M=40, N=33, K=64)),
                                       ("C(b, m, n)", dict(B=1, M=1, N=1, K=300))])
def test_bfloat16_reductions_round_once_complete(lhs, sizes):
    """A bfloat16 output is held in float32: a reduction into it sums in float32 and is rounded
    once complete, as the reference does (the scalar path never rounded it: outputs held values
    no bfloat16 has, 1 ulp off the reference at K=64). The check's tolerance is bfloat16's."""
    src = f"def g(bfloat16(B, M, K) A, bfloat16(B, K, N) W) -> (C) {{\n    {lhs} +=! A(b, m, k) * W(b, k, n)\n}}\n"
    k = compiler.parse(src).kernel()
    b = bind(k, sizes)
    ins = random_inputs(k, b)
    ck = compiler.build(k, target="cpu", sizes=b.sizes)
    out = ck.run_all(**ins)["C"]
    assert not (out.view(np.uint32) & 0xFFFF).any()  # every element a bfloat16
    ref = ir.interp.run(k, ins, b.sizes)["C"]
    assert ck.precision == "bfloat16" and np.abs(out - ref).max() <= 2 ** -7 * np.abs(ref).max()


def test_cpu_run_cli_and_emit(capsys):
    assert cli.main(["run", "kernels/gemm.tc", "--target", "cpu", "--sizes", "M=33,N=17,K=40", "--check",
                     "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["correct"] and r["seconds"] > 0 and r["gflops"] > 0
    assert r["first_call_seconds"] > 0 and r["timed_calls"] >= 1  # seconds: the median of the calls after the first
    assert cli.main(["compile", "kernels/gemm.tc", "--target", "cpu", "--sizes", "M=4,N=4,K=4",
                     "--emit", "llvm"]) == 0
    assert "define void @s0(" in capsys.readouterr().out
    assert cli.main(["compile", "kernels/gemm.tc", "--target", "cpu", "--sizes", "M=4,N=4,K=4",
                     "--emit", "asm"]) == 0
    assert "s0:" in capsys.readouterr().out


def test_corpus_on_cpu(corpus):
    from test_corpus import INVALID, SIZES, load
    for path in sorted(corpus.glob("*.tc")):
        if path.name in INVALID:
            continue
        k = load(path).kernel()
        b = bind(k, SIZES[k.name])
        ins = random_inputs(k, b)
        ck = compiler.build(k, target="cpu", sizes=b.sizes)
        ok, err, per = compare(ck.run_all(**ins), ir.interp.run(k, ins, b.sizes))
        assert ok, (path.name, per)


@pytest.mark.parametrize("link", ["on", "off"])
def test_object_cache_reuses_compiled_code(tmp_path, monkeypatch, link):
    """A second build loads the first one's machine code: a shared library where a C compiler
    links one, else object code through MCJIT (``ISAMAP_LINK=off``, or no compiler)."""
    from compiler.backends.llvm import loader
    if link == "on" and loader.linker() is None:
        pytest.skip("no C compiler to link shared libraries")
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path))
    monkeypatch.setenv("ISAMAP_LINK", link)
    a = np.random.default_rng(0).uniform(size=(40, 30)).astype(np.float32)
    b = np.random.default_rng(1).uniform(size=(30, 20)).astype(np.float32)
    first = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=40, N=20, K=30))
    second = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=40, N=20, K=30))
    assert not first.native.cached and second.native.cached
    assert second.report["loaded_as"] == ("shared library" if link == "on" else "mcjit")
    np.testing.assert_allclose(second(a, b), a @ b, rtol=1e-5)
    assert "define void @s0(" in second.source("llvm")  # regenerated on demand
    tables = list((tmp_path / "llvm").glob("*.json"))
    assert len(tables) == 1 and tables[0].with_suffix(".so" if link == "on" else ".o").exists()
    assert not list((tmp_path / "llvm").glob("*.tmp"))
    if link == "on":  # a damaged library is rebuilt, not loaded (a new file: the old one is still mapped)
        del first, second
        gc.collect()  # unloaded: dlopen would hand back a library still loaded under that name
        so = tables[0].with_suffix(".so")
        so.unlink()
        so.write_bytes(b"\x7fELF torn")
        third = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=40, N=20, K=30))
        assert not third.native.cached
        np.testing.assert_allclose(third(a, b), a @ b, rtol=1e-5)
    monkeypatch.setenv("ISAMAP_CACHE", "off")
    assert not compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=40, N=20, K=30)).native.cached


def test_an_unusable_cache_folder_builds_in_memory(tmp_path):
    """A cache root that cannot hold folders (here: under a file) caches nothing and still
    builds and runs, the thread pool and native entry included (fresh process: both are
    built once per process)."""
    import os
    import subprocess
    import sys
    (tmp_path / "file").write_text("")
    code = ("import numpy as np, compiler, kernels\n"
            "for m, n, k in ((300, 200, 100), (8, 1, 16)):\n"
            "    ck = compiler.build(kernels.path('gemm'), target='cpu', sizes=dict(M=m, N=n, K=k))\n"
            "    assert (ck(np.ones((m, k), np.float32), np.ones((k, n), np.float32)) == k).all()\n"
            "print(ck.report['cached'], ck.report['loaded_as'])")
    env = dict(os.environ, ISAMAP_CACHE=str(tmp_path / "file" / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=str(kernels.path("gemm").parent.parent))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "mcjit"]


def test_a_cached_build_in_a_fresh_process_runs_without_llvm(tmp_path):
    """Where builds are linked into shared libraries, a cached build and its calls (threaded
    and on the native entry) load them with dlopen: LLVM's library is never imported."""
    import os
    import subprocess
    import sys

    from compiler.backends.llvm import loader
    if loader.linker() is None:
        pytest.skip("no C compiler to link shared libraries")
    code = ("import sys, numpy as np, compiler, kernels\n"
            "for m, n, k in ((300, 200, 100), (8, 1, 16)):\n"
            "    ck = compiler.build(kernels.path('gemm'), target='cpu', sizes=dict(M=m, N=n, K=k))\n"
            "    a, b = np.ones((m, k), np.float32), np.ones((k, n), np.float32)\n"
            "    assert (ck(a, b) == k).all() and (ck(a, b) == k).all()\n"
            "print(ck.native.cached, 'llvmlite.binding' in sys.modules)")
    env = dict(os.environ, ISAMAP_CACHE=str(tmp_path))
    env.pop("ISAMAP_LINK", None)
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                           cwd=str(kernels.path("gemm").parent.parent)).stdout.split() for _ in range(2)]
    assert runs == [["False", "True"], ["True", "False"]]


def test_outputs_start_as_zeros_unless_written_first():
    """Output buffers skip the zero fill only when the code writes every element before
    anything reads it; partial writes and plain accumulation keep the reference's zeros."""
    from compiler.backends.llvm.native import _written_first
    src = """def f(float(N) X, float(M, N) A) -> (Y, S, P, Q) {
        Y(i) +=! A(i, j) * X(j)
        S(i) += X(i)
        P(i) = X(i) where i in 0:3
        Q(i) = Y(i) + 1.0
    }"""
    k = compiler.parse(src).kernel()
    b = bind(k, dict(N=5, M=4))
    assert [_written_first(k, b, n) for n in ("Y", "S", "Q")] == [True, False, True]
    ck = compiler.build(k, target="cpu", sizes=dict(N=5, M=4))
    ins = random_inputs(k, b, seed=3)
    for _ in range(3):  # fresh buffers often reuse freed memory: garbage must never show
        junk = [np.full((64, 64), 7.0, np.float32) for _ in range(4)]
        del junk
        ok, _, per = compare(ck.run_all(**ins), ir.interp.run(k, ins, ck.sizes))
        assert ok, per


def test_exact_inputs_take_the_fast_path_and_others_are_still_checked():
    ck = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=9, N=5, K=7))
    rng = np.random.default_rng(0)
    A = rng.standard_normal((9, 7)).astype(np.float32)
    B = rng.standard_normal((7, 5)).astype(np.float32)
    want = A @ B
    assert ck._exact({"A": A, "B": B}) is not None
    assert ck.native.exact((A, B)) is not None  # positional, C-contiguous: no copy, no checks beyond these
    np.testing.assert_allclose(ck(A, B), want, rtol=1e-5, atol=1e-5)
    At = np.asfortranarray(A)  # right shape and dtype, not contiguous: copied by the call
    assert ck._exact({"A": At, "B": B}) is not None
    np.testing.assert_allclose(ck.native.exact((At, B))[0], want, rtol=1e-5, atol=1e-5)  # copied there
    np.testing.assert_allclose(ck(At, B), want, rtol=1e-5, atol=1e-5)
    wide = np.zeros((9, 11), np.float32)
    wide[:, :7] = A  # a strided view of the right shape
    np.testing.assert_allclose(ck.native.exact((wide[:, :7], B))[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ck(wide[:, :7], B), want, rtol=1e-5, atol=1e-5)
    assert ck.native.exact((A.astype(np.float64), B)) is None and ck.native.exact((A.tolist(), B)) is None
    assert ck.native.exact((A,)) is None and ck.native.exact((A, B, B)) is None
    row = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=1, N=5, K=7))
    both = np.zeros((1, 14), np.float32)
    both[0, 7:] = A[0]  # a row sliced from a wider array: other strides, still contiguous
    assert both[:, 7:].strides != (28, 4) and row.native.exact((both[:, 7:], B)) is not None
    np.testing.assert_allclose(row(both[:, 7:], B), want[:1], rtol=1e-5, atol=1e-5)
    bf = compiler.build(kernels.path("gemm_bf16"), target="cpu", sizes=dict(M=9, N=5, K=7))
    assert bf.native.exact((A, B)) is None  # bfloat16 inputs are always rounded by the checked path
    np.testing.assert_allclose(bf(A, B), want, rtol=2e-2, atol=5e-2)
    A64 = A.astype(np.float64)  # another dtype: converted by the full path
    assert ck._exact({"A": A64, "B": B}) is None
    np.testing.assert_allclose(ck(A64, B), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(compiler.IsamapError, match="built for"):
        ck(A[:8], B)
    ro = A.copy()
    ro.flags.writeable = False  # read-only buffers take the slow address path
    np.testing.assert_allclose(ck(ro, B), want, rtol=1e-5, atol=1e-5)


def test_buffer_addresses_match_numpy():
    from compiler.backends.llvm.native import _address, _address_slow
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    for x in (base, base[2:], np.ascontiguousarray(base[:, 3:]), np.zeros(7, np.float64)):
        assert _address(x) == _address_slow(x) == x.ctypes.data


def test_lean_call_matches_run_all_for_every_output():
    ck = compiler.build(kernels.path("mlp"), target="cpu", sizes=sizes_for(compiler.parse(kernels.path("mlp")).kernel(), 7))
    ins = random_inputs(ck.kernel, ck.bound, seed=5)
    args = [ins[n] for n in ck.input_names]
    assert ck._exact_args(tuple(args)) and ck.native.exact(tuple(args)) is not None
    lean = ck(*args)
    full = ck.run_all(**ins)
    lean = lean if isinstance(lean, tuple) else (lean,)
    for name, got in zip(ck.output_names, lean):
        np.testing.assert_array_equal(got, full[name])


def test_persist_is_refused_on_host_targets():
    with pytest.raises(compiler.IsamapError, match="persist"):
        compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=4, N=4, K=4), persist=("A",))


def _entry_of(ck):
    ck._call = None
    ck(*[np.zeros(ck.bound.shapes[t.name], t.dtype.np) for t in ck.kernel.inputs])  # makes the entry
    return ck._call


@pytest.mark.parametrize("name", kernels.names())
def test_native_entry_matches_the_checked_call_on_every_kernel(name):
    k = compiler.parse(kernels.path(name)).kernel()
    ck = compiler.build(k, target="cpu", sizes=sizes_for(k, 5))
    call = _entry_of(ck)
    if any(t.dtype.name == "bfloat16" for t in k.inputs):
        assert call == ck._checked_call  # inputs the checked path rounds: no entry
    else:
        assert isinstance(call, types.BuiltinFunctionType), call
    ins = random_inputs(k, ck.bound, seed=11)
    args = [ins[n] for n in ck.input_names]
    got = ck(*args)
    got = got if isinstance(got, tuple) else (got,)
    full = ck.run_all(**ins)
    assert len(got) == len(ck.output_names)
    for n, g in zip(ck.output_names, got):
        np.testing.assert_array_equal(g, full[n])


def test_native_entry_hands_everything_else_to_the_checked_path():
    ck = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=9, N=5, K=7))
    assert isinstance(_entry_of(ck), types.BuiltinFunctionType)
    rng = np.random.default_rng(1)
    A = rng.standard_normal((9, 7)).astype(np.float32)
    B = rng.standard_normal((7, 5)).astype(np.float32)
    want = ck._checked_call(A, B)
    np.testing.assert_allclose(want, A @ B, rtol=1e-5, atol=1e-5)
    wide = np.zeros((9, 11), np.float32)
    wide[:, :7] = A
    for args, kw in [((A, B), {}), ((np.asfortranarray(A), B), {}), ((wide[:, :7], B), {}),
                     ((A.astype(np.float64), B), {}), ((A.tolist(), B), {}), ((), dict(A=A, B=B)),
                     ((A,), dict(B=B)), ((A.byteswap().view(A.dtype.newbyteorder()), B), {})]:
        np.testing.assert_allclose(ck(*args, **kw), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(compiler.IsamapError, match="built for"):
        ck(A[:8], B)
    with pytest.raises(compiler.IsamapError):
        ck(A)
    with pytest.raises(compiler.IsamapError):
        ck(A, B, B)


def test_native_entry_takes_rows_of_wider_arrays():
    """An extent-1 axis's stride is never used, so a row sliced from a wider array (a GRU
    step's slice of the batched projection) is taken as it is, and computed right."""
    ck = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=1, N=5, K=7))
    assert isinstance(_entry_of(ck), types.BuiltinFunctionType)
    rng = np.random.default_rng(4)
    big = rng.standard_normal((4, 3, 9)).astype(np.float32)
    B = rng.standard_normal((7, 5)).astype(np.float32)
    for row in (big[2, 1:2, :7], big[1:2, 0, :7], big[3, 2:3, 2:]):
        assert row.shape == (1, 7) and row.strides != (28, 4)
        np.testing.assert_allclose(ck(row, B), row @ B, rtol=1e-5, atol=1e-5)


def test_native_entry_keeps_reference_counts():
    import sys
    ck = compiler.build(kernels.path("layernorm"), target="cpu", sizes=dict(N=6, D=10))
    assert isinstance(_entry_of(ck), types.BuiltinFunctionType)
    ins = [np.ones(ck.bound.shapes[n], np.float32) for n in ck.input_names]
    before = [sys.getrefcount(x) for x in ins]
    for _ in range(1000):
        outs = ck(*ins)
    assert [sys.getrefcount(x) for x in ins] == before
    assert isinstance(outs, tuple) and len(outs) == 3
    fresh = (np.zeros(3, np.float32), np.zeros(3, np.float32))
    assert [sys.getrefcount(outs[i]) for i in range(3)] == [sys.getrefcount(fresh[0])] * 3  # held by the tuple only


def test_long_or_threaded_kernels_take_the_python_path():
    ck = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=512, N=512, K=512))
    assert _entry_of(ck) == ck._checked_call


def test_threaded_statements_run_as_one_native_drive_from_several_threads():
    """A kernel whose statements the pool's workers share (the batch-1 GRU step, K split, three
    contractions and their sums) runs as one ``pool_drive`` call; two such kernels called from
    four Python threads at once still each get their own sums (the drive holds the pool)."""
    from concurrent.futures import ThreadPoolExecutor
    cks = [compiler.build(kernels.path("gru_step"), target="cpu", sizes=dict(B=1, Hd=h)) for h in (1024, 1100)]
    cases = []
    for ck in cks:
        ins = random_inputs(ck.kernel, ck.bound, seed=5)
        assert any(len(parts) > 1 for _, parts, _ in ck.native._splits())  # the workers take part
        assert len(ck.native._planned_steps()) == 1
        cases.append((ck, [ins[t.name] for t in ck.kernel.inputs], ir.interp.run(ck.kernel, ins, ck.sizes)["Ho"]))

    def work(i):
        ck, args, want = cases[i % 2]
        return [(ck(*args)[-1], want) for _ in range(20)]

    with ThreadPoolExecutor(4) as ex:
        for outs in ex.map(work, range(8)):
            for got, want in outs:
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_native_entry_and_checked_path_from_several_threads():
    from concurrent.futures import ThreadPoolExecutor
    ck = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=33, N=17, K=29))
    rng = np.random.default_rng(2)
    A = rng.standard_normal((33, 29)).astype(np.float32)
    B = rng.standard_normal((29, 17)).astype(np.float32)
    want = A @ B
    At = np.asfortranarray(A)  # checked path (copies) interleaved with entry calls

    def work(i):
        return [ck(A if (i + j) % 2 else At, B) for j in range(200)]

    with ThreadPoolExecutor(4) as ex:
        for outs in ex.map(work, range(8)):
            for o in outs:
                np.testing.assert_allclose(o, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("src,sizes", [
    ("def rows(float(M, N, K) T0, float(M) T1) -> (O1) { O1(m) +=! T0(m, n, k) + T1(m) }", dict(M=27, N=32, K=38)),
    (None, dict(N=64, D=1000)),  # kernels/softmax: row max and row sum
    ("def tot(float(M, N) A) -> (S) { S(i) +=! A(m, n) where i in 0:1 }", dict(M=300, N=200)),
])
def test_reductions_split_across_threads_only_by_output_rows(src, sizes):
    """Above the parallel threshold the scalar path splits its outermost loop across threads;
    for a one-index output (row sums, softmax's statistics) that loop must be the output index,
    not a reduction (two threads adding into one element at once lost updates: found by the
    random-kernel test, softmax N=64,D=1000 was off by ~100)."""
    from compiler.backends.llvm import compile_cpu
    from compiler.backends.llvm.native import PARALLEL_MIN_WORK
    k = compiler.parse(src if src else kernels.path("softmax").read_text()).kernel()
    b = bind(k, sizes)
    assert prod(b.sizes.values()) >= PARALLEL_MIN_WORK
    ins = random_inputs(k, b)
    out = compile_cpu(k, b, hw_models.load("cpu"), threads=2)(dict(ins))
    ok, _, per = compare(out, ir.interp.run(k, ins, b.sizes))
    assert ok, per


COLUMN_SUM = ("def cs(float(N, D) I) -> (A, S, B) {\n    A(n, d) = I(n, d) * 2.0\n    S(d) +=! A(n, d)\n"
              "    B(n, d) = A(n, d) + S(d)\n}\n")
SHIFTED = "def sh(float(N, D) I) -> (A, B) {\n    A(n, d) = I(n, d) * 2.0\n    B(n, d) = A(n, d) + A(0, d)\n}\n"


@pytest.mark.parametrize("src,runs", [
    (None, [[0, 1, 2, 3]]),  # kernels/softmax: max, exp, sum, quotient per row
    ("layernorm", [[0, 1, 2, 3, 4]]),
    (COLUMN_SUM, []),  # S is indexed by columns: its row loop would be d, and B reads all of S
    (SHIFTED, []),  # B reads row 0 of A from every row
    ("def two(float(N, D) I, float(D, N) J) -> (A, B) {\n    A(n, d) = exp(I(n, d))\n"
     "    B(d, n) = J(d, n) + 1.0\n}\n", []),  # rows of different ranges (N != D)
])
@pytest.mark.parametrize("sizes", [dict(N=1, D=1), dict(N=7, D=13), dict(N=13, D=13), dict(N=300, D=257)])
def test_scalar_statements_over_the_same_rows_run_as_one_row_loop(src, runs, sizes):
    """Consecutive scalar statements whose every access to what they write stays in the
    accessing statement's own row share one loop over rows (one thread split, each row's
    intermediates read back from L1); anything reading another row keeps them apart.  Either
    way the result is the reference's, on one thread and split across two."""
    from compiler.backends.llvm import compile_cpu
    text = kernels.path(src or "softmax").read_text() if src in (None, "layernorm") else src
    k = compiler.parse(text).kernel()
    if "two" in text and sizes["N"] == sizes["D"]:
        runs = [[0, 1]]  # the same range: nothing reads across rows
    b = bind(k, sizes)
    ins = random_inputs(k, b)
    ref = ir.interp.run(k, ins, b.sizes)
    for threads in (1, 2):
        nk = compile_cpu(k, b, hw_models.load("cpu"), threads=threads)
        assert nk.row_runs == runs
        ok, _, per = compare(nk(dict(ins)), ref)
        assert ok, (threads, per)
    if runs:
        text = compiler.api.native_schedule(nk)
        assert f"S{runs[0][0]}-S{runs[0][-1]}: " in text and "one row loop over n" in text


@pytest.mark.parametrize("sizes", [dict(B=1, K=1, N=1), dict(B=37, K=19, N=101), dict(B=300, K=64, N=257)])
def test_a_softmax_after_a_contraction_runs_as_one_row_loop_after_it(sizes):
    """Attention-like: a GEMM, then softmax over its rows. The contraction runs first (no
    statement of the softmax is its epilogue: the max reduction comes first), then the four
    softmax statements as one row loop reading the GEMM's rows."""
    from compiler.backends.llvm import compile_cpu
    src = ("def attn(float(B, K) X, float(K, N) W) -> (H, mx, e, s, O) {\n    H(b, n) +=! X(b, k) * W(k, n)\n"
           "    mx(b) max=! H(b, n)\n    e(b, n) = exp(H(b, n) - mx(b))\n    s(b) +=! e(b, n)\n"
           "    O(b, n) = e(b, n) / s(b)\n}\n")
    k = compiler.parse(src).kernel()
    b = bind(k, sizes)
    ins = random_inputs(k, b)
    ref = ir.interp.run(k, ins, b.sizes)
    for threads in (1, 2):
        nk = compile_cpu(k, b, hw_models.load("cpu"), threads=threads)
        assert [p.stmt for p in nk.plans] == [0] and not nk.plans[0].epilogue and nk.row_runs == [[1, 2, 3, 4]]
        ok, _, per = compare(nk(dict(ins)), ref)
        assert ok, (threads, per)


def test_a_statement_reading_its_own_output_elsewhere_is_refused_where_it_would_be_wrong(capsys):
    """B(i) = B(N - 1 - i) + 1: the reference reads the old B everywhere; the cpu and cuda
    backends update B in place, so they refuse (located), and sim-nnp (which stages blocks
    first) runs it."""
    src = "def rev(float(N) A) -> (B) {\n    B(i) = A(i) * 2.0\n    B(i) = B(N - 1 - i) + 1.0\n}\n"
    for target in ("cpu", "cuda"):
        with pytest.raises(compiler.IsamapError, match=r"reads B\(N - 1 - i\) while writing B\(i\)") as e:
            compiler.build(src, target=target, sizes=dict(N=10))
        assert e.value.span.line == 3 and e.value.span.col == 12
    ck = compiler.build(src, target="sim-nnp", sizes=dict(N=10))
    ins = random_inputs(ck.kernel, ck.bound)
    assert compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins, ck.sizes), ck.precision)[0]


@pytest.mark.parametrize("dtype", ["float", "double"])
def test_intrinsic_math_and_max_reductions_match_numpy_at_the_edges(dtype):
    """sqrt, fabs, floor, ceil, trunc, round, copysign, fmax, fmin go through LLVM intrinsics (so
    loops around them vectorise) and max / min reductions through llvm.maximum / minimum: the
    same results as libm and numpy on negative zeros, halves, infinities and NaN, and a NaN in a
    row makes its max and min NaN as numpy's maximum.reduce does."""
    src = f"""def f({dtype}(N, D) A, {dtype}(N, D) B) -> (S, F, C, T, R, Y, X, M, mx, mn) {{
        S(n, d) = sqrt(fabs(A(n, d)))
        F(n, d) = floor(A(n, d))
        C(n, d) = ceil(A(n, d))
        T(n, d) = trunc(A(n, d))
        R(n, d) = round(A(n, d))
        Y(n, d) = copysign(A(n, d), B(n, d))
        X(n, d) = fmax(A(n, d), B(n, d))
        M(n, d) = fmin(A(n, d), B(n, d))
        mx(n) max=! A(n, d)
        mn(n) min=! A(n, d)
    }}"""
    vals = [-0.0, 0.0, 0.5, -0.5, 1.5, -2.5, 2.4999, np.inf, -np.inf, 3.0, -7.25, 1e-30]
    D = len(vals)
    A = np.array([vals, vals[::-1], [np.nan] + vals[1:], np.linspace(-40, 40, D)], dtype=np.float32 if dtype == "float" else np.float64)
    B = np.roll(A, 3, axis=1)
    B[3, 2] = np.nan
    ck = compiler.build(src, target="cpu", sizes=dict(N=4, D=D))
    out = ck.run_all(A=A, B=B)
    ref = ir.interp.run(ck.kernel, {"A": A, "B": B}, ck.sizes)
    for name, r in ref.items():
        np.testing.assert_array_equal(out[name], r, err_msg=name)
    assert np.isnan(out["mx"][2]) and np.isnan(out["mn"][2])
    np.testing.assert_array_equal(out["mx"][[0, 1, 3]], np.max(A[[0, 1, 3]], axis=1))


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 37),
       r=st.integers(1, 4), s=st.integers(1, 4), op=st.sampled_from(["+=!", "max=!", "+="]))
def test_short_reductions_run_innermost_around_a_vectorised_output_row(n, c, h, w, r, s, op):
    """Filter taps (at most MAX_TAPS points per output) are summed innermost in a register with
    the output row vectorised around them; any width, any tap count, any reduction, and a
    statement that adds to what an earlier one wrote, against the reference."""
    src = f"""def dw(float(N, C, H, W) I, float(C, R, S) Wt) -> (O) {{
        O(n, c, h, w) = I(n, c, h, w)
        O(n, c, h, w) {op} I(n, c, h + r, w + s) * Wt(c, r, s) where h in 0:H-R+1, w in 0:W-S+1
    }}""" if op == "+=" else f"""def dw(float(N, C, H, W) I, float(C, R, S) Wt) -> (O) {{
        O(n, c, h, w) {op} I(n, c, h + r, w + s) * Wt(c, r, s)
    }}"""
    k = compiler.parse(src).kernel()
    sizes = dict(N=n, C=c, H=h + r - 1, W=w + s - 1, R=r, S=s)
    ck = compiler.build(k, target="cpu", sizes=sizes)
    ins = random_inputs(ck.kernel, ck.bound, seed=w)
    ok, err, per = compare(ck.run_all(**ins), ir.interp.run(k, ins, ck.sizes))
    assert ok, per


def test_the_output_row_around_filter_taps_carries_a_vectorise_loop_hint():
    ck = compiler.build(kernels.path("depthwise_conv2d"), target="cpu",
                        sizes=dict(N=1, C=2, H=6, W=30, R=3, S=3))
    text = ck.native.llvm_ir
    assert "isamap.vectorize" not in text  # every marked node was made a loop ID
    ids = [line for line in text.splitlines() if "distinct" in line]
    assert len(ids) == 1 and ids[0].startswith(ids[0].split(" ")[0] + " = distinct !{ " + ids[0].split(" ")[0])
    assert '"llvm.loop.vectorize.enable", i1 1' in text and '"llvm.loop.unroll.disable"' in text
    assert "<8 x float>" in ck.native.optimized or "<16 x float>" in ck.native.optimized


def test_scalar_functions_may_use_wide_vectors_and_divide_by_a_hoisted_reciprocal():
    """Softmax's row loop: every scalar-path function asks for 512-bit vectors (LLVM's Intel
    tuning stops at 256), and e / s(n) may become a multiplication by 1 / s(n), computed once
    per row outside the column loop (``scalar.VECTOR_BITS``, ``scalar.ARCP``)."""
    from compiler.backends.llvm import scalar
    ck = compiler.build(kernels.path("softmax"), target="cpu", sizes=dict(N=4, D=64))
    text = ck.native.llvm_ir
    defines = [line for line in text.splitlines() if line.startswith("define void")]
    assert defines and all(line.endswith("#900") for line in defines if "_task" not in line)
    assert f'attributes #900 = {{ "prefer-vector-width"="{scalar.VECTOR_BITS}" }}' in text
    assert "fdiv arcp float" in text
    fn = ck.native.optimized.split("define void @g0_3(")[1].split("\n}\n")[0]
    assert "fdiv arcp <" not in fn and "fmul arcp <" in fn  # the division left the vector loop
    if scalar._ldexp():  # exp's 2^n scaling: one vscalefps per vector on AVX-512 hosts
        assert "llvm.ldexp.v16f32" in fn and "vscalefps" in ck.native.asm
