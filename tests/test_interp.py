"""The reference interpreter on TC features, each against a direct numpy formula."""
import time

import numpy as np
import pytest

import compiler
from helpers import rnd, run
from ir.errors import IsamapError


def test_gemm_512_is_fast_and_right():
    A, B = rnd(512, 512), rnd(512, 512, seed=1)
    t = time.perf_counter()
    C = run("def g(float(M,K) A, float(K,N) B) -> (C) { C(m,n) +=! A(m,k) * B(k,n) }", A=A, B=B)["C"]
    assert time.perf_counter() - t < 5  # generous: the point is "vectorised", not a benchmark
    np.testing.assert_allclose(C, A @ B, rtol=1e-4, atol=1e-4)


def test_gather_and_clamp():
    src = """def lut(float(J) B, int32(I) C) -> (A) { A(i) = B(max(min(C(i), J-1), 0)) }"""
    B = rnd(5)
    C = np.array([-3, 0, 2, 4, 9], np.int32)
    np.testing.assert_array_equal(run(src, B=B, C=C)["A"], B[np.clip(C, 0, 4)])


def test_embedding_bag():
    src = "def e(float(E, D) LUT, int32(B, L) I) -> (O) { O(b, d) +=! LUT(I(b, r_l), d) }"
    LUT = rnd(10, 3)
    I = np.array([[1, 2, 2], [0, 9, 3]], np.int32)
    np.testing.assert_allclose(run(src, LUT=LUT, I=I)["O"], LUT[I].sum(1), rtol=1e-6)


def test_gather_out_of_range_is_a_user_error():
    src = "def g(float(H) A, int32(L) I) -> (O) { O(l) = A(I(l)) }"
    with pytest.raises(IsamapError, match="out of range"):
        run(src, A=rnd(3), I=np.array([0, 5], np.int32))


def test_offsets_and_strides():
    B = rnd(10)
    out = run("def f(float(I) B) -> (O, P, Q) { O(i) = B(2*i) + B(2*i+1)  P(i) = B(10 - i)  "
              "Q(i) = B(i - 1) }", B=B)
    np.testing.assert_allclose(out["O"], B[0::2] + B[1::2])
    # P(i) for i in 1..10 holds B(10 - i): stored from its minimum index
    np.testing.assert_allclose(out["P"], B[::-1])
    np.testing.assert_allclose(out["Q"], B)


def test_where_range_creates_dimension_and_concat():
    src = "def c(float(M, N) A, float(M, N) B) -> (O) { O(n, i, m) = i == 0 ? A(m, n) : B(m, n) where i in 0:2 }"
    A, B = rnd(3, 4), rnd(3, 4, seed=1)
    np.testing.assert_array_equal(run(src, A=A, B=B)["O"], np.stack([A.T, B.T], 1))


def test_min_max_prod_reductions_and_identities():
    A = rnd(4, 6)
    out = run("def r(float(M, K) A) -> (mn, mx, pr) { mn(m) min=! A(m, k)  mx(m) max=! A(m, k)  "
              "pr(m) *=! A(m, k) }", A=A)
    np.testing.assert_allclose(out["mn"], A.min(1))
    np.testing.assert_allclose(out["mx"], A.max(1))
    np.testing.assert_allclose(out["pr"], A.prod(1), rtol=1e-5)


def test_maxpool_window():
    x = rnd(2, 3, 10, 10)
    src = ("def maxpool(float(B, C, H, W) input) -> (output) { output(b, c, h, w) max=! "
           "input(b, c, h * 2 + kh, w * 2 + kw) where kh in 0:2, kw in 0:2 }")
    ref = x.reshape(2, 3, 5, 2, 5, 2).max((3, 5))
    np.testing.assert_allclose(run(src, input=x)["output"], ref)


def test_int8_wraps_and_int32_accumulates():
    A = np.full((2, 40), 100, np.int8)
    B = np.full((40, 2), 2, np.int8)
    out = run("def q(int8(M,K) A, int8(K,N) B) -> (C, int32(M,N) D) { C(m,n) +=! A(m,k) * B(k,n) "
              "D(m,n) +=! int32(A(m,k)) * int32(B(k,n)) }", A=A, B=B)
    assert out["D"][0, 0] == 8000
    assert out["C"].dtype == np.int8 and out["C"][0, 0] == 64  # 8000 wrapped to int8


def test_integer_products_summed_in_doubles_wrap_like_integers():
    """Integer product-sums go through BLAS in float64 where every partial sum is exact there,
    then wrap to the statement's type as integer arithmetic does; past 2^53 the integer path."""
    rng = np.random.default_rng(0)
    A, B = rng.integers(-128, 128, (33, 70)).astype(np.int8), rng.integers(-128, 128, (70, 20)).astype(np.int8)
    src = "def q(int8(M,K) A, int8(K,N) B) -> (int32(M,N) D) { D(m,n) +=! int32(A(m,k)) * int32(B(k,n)) }"
    assert np.array_equal(run(src, A=A, B=B)["D"], A.astype(np.int64) @ B.astype(np.int64))
    big = "def q(int32(M,K) A, int32(K,N) B) -> (int32(M,N) D) { D(m,n) +=! A(m,k) * B(k,n) }"
    A32 = np.full((2, 3), 2 ** 30 + 7, np.int32)  # products past 2^53: the exact integer einsum
    D = run(big, A=A32, B=A32.T.copy())["D"]
    assert D[0, 0] == np.int32(((3 * (2 ** 30 + 7) ** 2) + 2 ** 31) % 2 ** 32 - 2 ** 31)
    K = (1 << 31) // 16384 + 6  # -128 x -128 summed past int32's range: wraps
    D = run(src, A=np.full((1, K), -128, np.int8), B=np.full((K, 1), -128, np.int8))["D"]
    assert D[0, 0] == np.int32(16384 * K - (1 << 32))


def test_bfloat16_rounds():
    x = np.array([1.0 + 2 ** -9, 3.14159], np.float32)
    out = run("def b(bfloat16(N) X) -> (Y) { Y(i) = X(i) * 1.0 }", X=x)["Y"]
    assert out[0] == 1.0 and abs(out[1] - 3.140625) < 1e-7


def test_integer_division_rounds_down_and_mod_nonnegative():
    out = run("def d(int32(N) A) -> (Q, R) { Q(i) = A(i) / 3  R(i) = A(i) % 3 }",
              A=np.array([-7, 7], np.int32))
    assert list(out["Q"]) == [-3, 2] and list(out["R"]) == [2, 1]


def test_in_place_epilogue_and_scalar_input():
    A = rnd(3, 4)
    out = run("def c(float(M,N) A, int32 four) -> (int32(M,N) output) { output(m,n) = int32(A(m,n) + four) }",
              A=A, four=np.array(4, np.int32))
    np.testing.assert_array_equal(out["output"], (A + 4).astype(np.int32))


def test_rank0_reduction_and_size_as_value():
    A = rnd(5)
    out = run("def s(float(N) A) -> (C, D) { C +=! A(r)  D(i) = A(i) + N }", A=A)
    np.testing.assert_allclose(out["C"], A.sum(), rtol=1e-6)
    np.testing.assert_allclose(out["D"], A + 5)


def test_fill_with_exists():
    out = run("def f(float(N) A) -> (B) { B(i) = 3.5 where exists A(i) }", A=rnd(4))
    np.testing.assert_array_equal(out["B"], np.full(4, 3.5, np.float32))


def test_chunked_evaluation_matches(monkeypatch):
    import ir.interp as interp
    monkeypatch.setattr(interp, "CHUNK_ELEMENTS", 64)
    A = rnd(20, 9)
    out = run("def s(float(M, K) A) -> (O) { O(m) max=! A(m, k) + 1 }", A=A)
    np.testing.assert_allclose(out["O"], A.max(1) + 1)


def test_shape_mismatch_is_a_user_error():
    k = compiler.build("def g(float(M,K) A, float(K,N) B) -> (C) { C(m,n) +=! A(m,k) * B(k,n) }")
    with pytest.raises(IsamapError, match="inconsistent size K"):
        k(rnd(2, 3), rnd(4, 2))
    with pytest.raises(IsamapError, match="missing input"):
        k(rnd(2, 3))
