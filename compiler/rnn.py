"""GRU sequences: the input projection batched over all timesteps, the recurrent part per step.

``gru_sequence`` runs T timesteps of ``kernels/gru_step.tc`` on one simulated machine
(a ``Session``), feeding each step's hidden state to the next, after one GEMM that
projects the inputs of every timestep at once.  With ``persistent=True`` the recurrent
weights are kept on chip across timesteps (a persistent RNN) when each core's slice
fits; otherwise they are reloaded every step.  ``gru_reference`` is the numpy GRU it is
checked against (cuDNN's formulation).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import kernels
from ir.dtypes import round_bf16  # noqa: F401 - re-exported for the harness

from .api import build


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@dataclass
class GruWeights:
    Wx: np.ndarray  # (I, 3H): input projection [r | z | n]
    Ur: np.ndarray
    Uz: np.ndarray
    Un: np.ndarray
    br: np.ndarray
    bz: np.ndarray
    bhn: np.ndarray


def random_gru(hidden: int, inputs: int, seed: int = 0) -> GruWeights:
    rng = np.random.default_rng(seed)
    s = 1 / np.sqrt(hidden)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(np.float32)
    return GruWeights(u(inputs, 3 * hidden), u(hidden, hidden), u(hidden, hidden), u(hidden, hidden),
                      u(hidden), u(hidden), u(hidden))


def gru_reference(x: np.ndarray, w: GruWeights, h0: np.ndarray, matmul_dtype: str | None = None) -> np.ndarray:
    """numpy GRU over x (T, N, I); ``matmul_dtype='bfloat16'`` rounds GEMM operands like a bf16 unit."""
    rd = round_bf16 if matmul_dtype == "bfloat16" else (lambda a: a)
    H = h0.shape[1]
    T, N, I = x.shape
    xp = (rd(x.reshape(T * N, I)) @ rd(w.Wx)).reshape(T, N, 3 * H)
    h = h0.astype(np.float32)
    for t in range(T):
        xr, xz, xn = xp[t, :, :H], xp[t, :, H:2 * H], xp[t, :, 2 * H:]
        r = sigmoid(xr + rd(h) @ rd(w.Ur) + w.br)
        z = sigmoid(xz + rd(h) @ rd(w.Uz) + w.bz)
        n = np.tanh(xn + r * (rd(h) @ rd(w.Un) + w.bhn))
        h = (1 - z) * n + z * h
    return h


@dataclass
class GruRun:
    h: np.ndarray
    projection_cycles: int
    step_cycles: int  # all T steps
    elided_loads: int
    resident: tuple
    seconds: float

    @property
    def cycles(self) -> int:
        return self.projection_cycles + self.step_cycles


def gru_sequence(target: str, x: np.ndarray, w: GruWeights, h0: np.ndarray, persistent: bool = True,
                 scheduler: str | None = None) -> GruRun:
    t0 = time.time()
    T, N, I = x.shape
    H = h0.shape[1]
    from .bench.gemm import gemm_source
    proj = build(gemm_source("float", "float", False, False), target=target, sizes=dict(M=T * N, N=3 * H, K=I),
                 scheduler=scheduler)
    xp = proj(A=x.reshape(T * N, I), B=w.Wx).reshape(T, N, 3 * H)
    step = build(kernels.path("gru_step"), target=target, sizes=dict(B=N, Hd=H), scheduler=scheduler,
                 persist=("Ur", "Uz", "Un") if persistent else ())
    sess = step.session()
    h = h0.astype(np.float32)
    for t in range(T):
        out = sess(XR=xp[t, :, :H], XZ=xp[t, :, H:2 * H], XN=xp[t, :, 2 * H:], Hp=h, Ur=w.Ur, Uz=w.Uz, Un=w.Un,
                   br=w.br, bz=w.bz, bhn=w.bhn)
        h = out["Ho"]
    return GruRun(h, proj.report["cycles"], sess.cycles(), sess.sim.elided, step.resident, time.time() - t0)
