"""TC's own kernels (../shared/data/tc_corpus): accepted, run, or rejected as TC rejects them."""

import numpy as np
import pytest

import compiler
import ir.interp
from compiler.checking import random_inputs
from ir.bind import bind
from ir.errors import IsamapError

SIZES = {  # example sizes from INDEX.md, shrunk to keep the suite fast
    "matmul": dict(M=3, K=4, N=5), "matmul_bw": dict(M=3, K=4, N=5), "mv": dict(R=4, C=3),
    "tmm": dict(M=8, N=16, K=4), "batch_matmul": dict(B=3, N=4, M=5, K=6),
    "convolution": dict(N=2, C=4, F=4, H=7, W=7, KH=3, KW=3),
    "group_convolution": dict(N=2, G=2, C=4, F=4, H=6, W=6, KH=3, KW=3),
    "small_mobilenet": dict(C1=4, C2=5, H=6, W=6, KH1=3, KW1=3),
    "masked_convolve": dict(B=2, C=3, F=4, H=5, W=5, K=1), "concat": dict(M=4, N=3),
    "indexing": dict(H=3, W=4, L=2), "transpose": dict(N=2, C=3, H=4, W=5), "copy2d": dict(M=3, N=4),
    "_1LUT": dict(B=4, D=8, L1=5, E1=20), "add": dict(N=10), "relu": dict(B=4, M=6),
    "sigmoid": dict(N=2, C=3, H=4, W=4), "Tanh": dict(M=7), "cast": dict(M=2, N=4),
    "softmax": dict(N=3, D=5), "layernorm": dict(T=2, B=3, C=8), "mlp1": dict(B=4, M=6, N=5),
    "maxpool": dict(B=2, C=3, H=10, W=10),
}
INVALID = {
    "invalid_triangular_where.tc": r"range bounds may use only sizes",
    "invalid_temporary.tc": r"not listed as an input or output.*temporary",
    "invalid_missing_reduction_op.tc": r"does not specify a reduction",
    # TC's inference.rst example indexes with a float tensor; TC's sema rejects it as we do
    "lut_clamped.tc": r"must have an integral type",
}


def load(path):
    text = path.read_text()
    if "{sH}" in text:  # TEMPLATE: Python str.format with the test's constants
        text = text.format(sH=1, sW=1, kH=2, kW=2)
    return compiler.parse(text, name=path.name)


def test_every_corpus_kernel(corpus):
    seen = 0
    for path in sorted(corpus.glob("*.tc")):
        if path.name in INVALID:
            with pytest.raises(IsamapError, match=INVALID[path.name]):
                load(path)
            continue
        k = load(path).kernel()
        b = bind(k, SIZES[k.name])
        outs = ir.interp.run(k, random_inputs(k, b), b.sizes)
        for name, v in outs.items():
            assert v.shape == b.shapes[name]
        seen += 1
    assert seen >= 20


def _run(corpus, file, sizes, **inputs):
    k = load(corpus / file).kernel()
    return ir.interp.run(k, inputs, sizes)


def test_corpus_numbers(corpus):
    rng = np.random.default_rng(0)
    I = rng.uniform(-1, 1, (2, 3, 10, 10)).astype(np.float32)
    out = _run(corpus, "maxpool.tc", None, input=I)["output"]
    ref = np.maximum.reduce([I[:, :, a:a + 9, b:b + 9] for a in (0, 1) for b in (0, 1)])
    np.testing.assert_allclose(out, ref)
    x = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
    idx = np.array([2, 0], np.int32)
    np.testing.assert_array_equal(_run(corpus, "indexing.tc", None, input=x, index=idx)["output"], x[idx])
    A = np.full((2, 4), 1.5, np.float32)
    np.testing.assert_array_equal(_run(corpus, "cast.tc", None, A=A, four=np.int32(4))["output"],
                                  np.full((2, 4), 5, np.int32))
    A, B = rng.uniform(size=(8, 4)).astype(np.float32), rng.uniform(size=(16, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(corpus, "tmm.tc", None, A=A, B=B)["C"], A @ B.T, rtol=1e-5)
    I = rng.uniform(size=(2, 3, 5, 5)).astype(np.float32)
    W = rng.uniform(size=(4, 3, 1, 1)).astype(np.float32)
    M = rng.integers(0, 2, (4, 3)).astype(np.uint8)
    out = _run(corpus, "masked_convolve.tc", None, Input=I, Weights=W, Mask=M)["Output"]
    ref = np.maximum(0, np.einsum("bchw,fc->bfhw", I, W[:, :, 0, 0] * (M != 0)))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    T = rng.uniform(size=(2, 3, 8)).astype(np.float32)
    out = _run(corpus, "layernorm.tc", None, I=T)
    c = T - T.mean(-1, keepdims=True)
    np.testing.assert_allclose(out["O"], c / (1 / np.sqrt((c * c).sum(-1, keepdims=True) / 8)), rtol=1e-4)


def test_corpus_round_trips(corpus):
    from ir import printer
    for path in sorted(corpus.glob("*.tc")):
        if path.name in INVALID:
            continue
        m = load(path)
        assert compiler.parse(printer.module(m)).kernels == m.kernels, path.name


# What sim-nnp cannot run, and the rule that says why (its vector unit is float-only, selects
# on `C > 0` only and has no transposing copy; its DMA engines compute affine addresses only).
NNP_REFUSES = {
    "cast": "placement: no chain of data movement takes float32 results from sram to int32",
    "concat": "operation: no instruction of sim-nnp computes i == 0 ? A(m, n) : B(m, n)",
    "_1LUT": "access: LUT1 subscript I1(b, r_l1) reads I1: a data-dependent address",
    "indexing": "ld: access: input subscript index(l) reads index: a data-dependent address",
    "masked_convolve": "access: writing Output would need a scatter",
    "transpose": "ld: access: rows of I are strided",
}


def _corpus_kernels(corpus):
    for path in sorted(corpus.glob("*.tc")):
        if path.name not in INVALID:
            k = load(path).kernel()
            yield k, SIZES[k.name]


def test_every_corpus_kernel_on_the_cpu_and_sim_nnp(corpus):
    """Each compiled kernel equals the reference interpreter, or the compiler refuses it with a
    located error whose note names the rule (checked for sim-nnp's known refusals)."""
    from compiler.checking import compare
    refused = {}
    for k, sizes in _corpus_kernels(corpus):
        for target in ("cpu", "sim-nnp"):
            try:
                ck = compiler.build(k, target=target, sizes=sizes)
            except IsamapError as e:
                assert e.span is not None and e.notes, (k.name, target, e.format())
                refused[(k.name, target)] = e.notes[0]
                continue
            ins = random_inputs(ck.kernel, ck.bound)
            ok, err, per = compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins, ck.sizes), ck.precision)
            assert ok, (k.name, target, per)
    assert {name for name, _ in refused} == set(NNP_REFUSES) and all(t == "sim-nnp" for _, t in refused)
    for name, why in NNP_REFUSES.items():
        assert refused[(name, "sim-nnp")].startswith(why), (name, refused[(name, "sim-nnp")])


def test_every_corpus_kernel_as_cuda_on_the_emulator(corpus):
    from compiler.backends.cuda.emulate import build_together, compiler_exe
    from compiler.checking import compare
    import hw_models
    if compiler_exe() is None:
        pytest.skip("no host C++ compiler")
    cuda = hw_models.load("cuda")
    cases = [(k, bind(k, sizes), cuda, None) for k, sizes in _corpus_kernels(corpus)]
    bad = []
    for (k, b, _, _), ck in zip(cases, build_together(cases)):
        ins = random_inputs(k, b)
        out, _ = ck(ins)
        ok, err = compare(out, ir.interp.run(k, ins, b.sizes))[:2]
        if not ok:
            bad.append((k.name, err))
    assert not bad, bad
