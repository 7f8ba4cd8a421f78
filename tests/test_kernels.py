"""Every library kernel against an independent numpy formula, on divisible, prime and size-1 shapes."""
import numpy as np
import pytest

import compiler
import kernels
from helpers import rnd, sigmoid

SHAPES = ["divisible", "prime", "tiny"]


def build(name, **sizes):
    return compiler.build(kernels.path(name), target="reference", sizes=sizes)


def close(a, b, tol=1e-4):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def conv_ref(I, W):
    N, C, H, Wd = I.shape
    F, _, R, S = W.shape
    out = np.zeros((N, F, H - R + 1, Wd - S + 1), np.float64)
    for r in range(R):
        for s in range(S):
            out += np.einsum("nchw,fc->nfhw", I[:, :, r:r + H - R + 1, s:s + Wd - S + 1], W[:, :, r, s])
    return out


def dw_ref(I, W):
    N, C, H, Wd = I.shape
    _, R, S = W.shape
    out = np.zeros((N, C, H - R + 1, Wd - S + 1), np.float64)
    for r in range(R):
        for s in range(S):
            out += I[:, :, r:r + H - R + 1, s:s + Wd - S + 1] * W[None, :, r, s, None, None]
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_family(shape):
    M, N, K = {"divisible": (64, 48, 32), "prime": (13, 7, 11), "tiny": (1, 1, 1)}[shape]
    A, B = rnd(M, K), rnd(K, N, seed=1)
    close(build("gemm", M=M, N=N, K=K)(A, B), A @ B)
    close(build("gemm_tn", M=M, N=N, K=K)(np.ascontiguousarray(A.T), B), A @ B)
    close(build("gemm_nt", M=M, N=N, K=K)(A, np.ascontiguousarray(B.T)), A @ B)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_matmul(shape):
    Bt, M, N, K = {"divisible": (4, 16, 8, 32), "prime": (3, 5, 7, 11), "tiny": (1, 1, 1, 1)}[shape]
    X, Y = rnd(Bt, M, K), rnd(Bt, K, N, seed=2)
    close(build("batch_matmul", Bt=Bt, M=M, N=N, K=K)(X, Y), X @ Y)


@pytest.mark.parametrize("shape", SHAPES)
def test_convolutions(shape):
    N, C, H, W, F, R, S = {"divisible": (2, 4, 8, 8, 8, 3, 3), "prime": (1, 3, 7, 11, 5, 3, 2),
                           "tiny": (1, 1, 1, 1, 1, 1, 1)}[shape]
    I, Wt = rnd(N, C, H, W), rnd(F, C, R, S, seed=3)
    close(build("conv2d", N=N, C=C, H=H, W=W, F=F, R=R, S=S)(I, Wt), conv_ref(I, Wt))
    DW, PW = rnd(C, R, S, seed=4), rnd(F, C, seed=5)
    close(build("depthwise_conv2d", N=N, C=C, H=H, W=W, R=R, S=S)(I, DW), dw_ref(I, DW))
    close(build("pointwise_conv2d", N=N, C=C, H=H, W=W, F=F)(I, PW), np.einsum("nchw,fc->nfhw", I, PW))
    Bias = rnd(F, seed=6)
    close(build("conv2d_bias_relu", N=N, C=C, H=H, W=W, F=F, R=R, S=S)(I, Wt, Bias),
          np.maximum(conv_ref(I, Wt) + Bias[None, :, None, None], 0))
    I_nhwc, W_rscf = np.ascontiguousarray(I.transpose(0, 2, 3, 1)), np.ascontiguousarray(Wt.transpose(2, 3, 1, 0))
    close(build("conv2d_nhwc_bias_relu", N=N, C=C, H=H, W=W, F=F, R=R, S=S)(I_nhwc, W_rscf, Bias),
          np.maximum(conv_ref(I, Wt) + Bias[None, :, None, None], 0).transpose(0, 2, 3, 1))
    O, D = build("depthwise_separable_conv2d", N=N, C=C, H=H, W=W, F=F, R=R, S=S)(I, DW, PW)
    close(D, dw_ref(I, DW))
    close(O, np.einsum("nchw,fc->nfhw", dw_ref(I, DW), PW))


@pytest.mark.parametrize("shape", SHAPES)
def test_mlp_softmax_layernorm(shape):
    B, K, N = {"divisible": (8, 16, 32), "prime": (3, 7, 5), "tiny": (1, 1, 1)}[shape]
    I, W, b = rnd(B, K), rnd(K, N, seed=6), rnd(N, seed=7)
    close(build("mlp", B=B, K=K, N=N)(I, W, b), np.maximum(I @ W + b, 0))
    O, mx, e, s = build("softmax", N=B, D=N)(I @ W)
    x = (I @ W).astype(np.float64)
    ref = np.exp(x - x.max(1, keepdims=True))
    close(O, ref / ref.sum(1, keepdims=True))
    close(mx, x.max(1))
    g, be = rnd(N, seed=8), rnd(N, seed=9)
    O, mean, var = build("layernorm", N=B, D=N)(x.astype(np.float32), g, be)
    mu, v = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    close(O, (x - mu) / np.sqrt(v + 1e-5) * g + be, 1e-3)
    close(mean, mu[:, 0])
    close(var, v[:, 0])


def gru_ref(X, H, Wr, Wz, Wn, Ur, Uz, Un, br, bz, bxn, bhn):
    r = sigmoid(X @ Wr + H @ Ur + br)
    z = sigmoid(X @ Wz + H @ Uz + bz)
    n = np.tanh(X @ Wn + bxn + r * (H @ Un + bhn))
    return (1 - z) * n + z * H


@pytest.mark.parametrize("shape", SHAPES)
def test_gru_cell(shape):
    B, I, Hd = {"divisible": (4, 16, 32), "prime": (3, 5, 7), "tiny": (1, 1, 1)}[shape]
    args = [rnd(B, I), rnd(B, Hd, seed=1)] + [rnd(I, Hd, seed=s) for s in (2, 3, 4)] + \
           [rnd(Hd, Hd, seed=s) for s in (5, 6, 7)] + [rnd(Hd, seed=s) for s in (8, 9, 10, 11)]
    outs = build("gru_cell", B=B, I=I, Hd=Hd)(*args)
    close(outs[-1], gru_ref(*[a.astype(np.float64) for a in args]))


@pytest.mark.parametrize("shape", SHAPES)
def test_lstm_cell(shape):
    B, I, Hd = {"divisible": (4, 16, 32), "prime": (3, 5, 7), "tiny": (1, 1, 1)}[shape]
    X, H, C = rnd(B, I), rnd(B, Hd, seed=1), rnd(B, Hd, seed=2)
    W = [rnd(I, Hd, seed=s) for s in (3, 4, 5, 6)]
    U = [rnd(Hd, Hd, seed=s) for s in (7, 8, 9, 10)]
    b = [rnd(Hd, seed=s) for s in (11, 12, 13, 14)]
    outs = build("lstm_cell", B=B, I=I, Hd=Hd)(X, H, C, *W, *U, *b)
    i = sigmoid(X @ W[0] + H @ U[0] + b[0])
    f = sigmoid(X @ W[1] + H @ U[1] + b[1])
    g = np.tanh(X @ W[2] + H @ U[2] + b[2])
    o = sigmoid(X @ W[3] + H @ U[3] + b[3])
    c = f * C + i * g
    close(outs[-2], c)
    close(outs[-1], o * np.tanh(c))


def test_library_is_complete():
    want = {"gemm", "gemm_tn", "gemm_nt", "batch_matmul", "conv2d", "depthwise_conv2d",
            "pointwise_conv2d", "depthwise_separable_conv2d", "gru_cell", "lstm_cell", "mlp",
            "softmax", "layernorm"}
    assert want <= set(kernels.names())
