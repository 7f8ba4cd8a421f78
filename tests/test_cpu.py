"""The cpu target (llvm backend, scalar path) against the reference interpreter."""
import json

import numpy as np
import pytest

import compiler
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


def test_cpu_run_cli_and_emit(capsys):
    assert cli.main(["run", "kernels/gemm.tc", "--target", "cpu", "--sizes", "M=33,N=17,K=40", "--check",
                     "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["correct"] and r["seconds"] > 0 and r["gflops"] > 0
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


def test_object_cache_reuses_compiled_code(tmp_path, monkeypatch):
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path))
    a = np.random.default_rng(0).uniform(size=(40, 30)).astype(np.float32)
    b = np.random.default_rng(1).uniform(size=(30, 20)).astype(np.float32)
    first = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=40, N=20, K=30))
    second = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=40, N=20, K=30))
    assert not first.native.cached and second.native.cached
    np.testing.assert_allclose(second(a, b), a @ b, rtol=1e-5)
    assert "define void @s0(" in second.source("llvm")  # regenerated on demand
    assert len(list((tmp_path / "llvm").glob("*.o"))) == 1
    monkeypatch.setenv("ISAMAP_CACHE", "off")
    assert not compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=40, N=20, K=30)).native.cached
