"""The cuda backend's generated code, run on the host CPU's functional emulator (emu.h):
results against the reference interpreter for every kernel and every block tiling, and the
emulator itself (it must catch the bugs a GPU would show, and say what went wrong)."""
import ctypes
import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compiler
import hw_models
import ir.interp
import kernels
from compiler import cli
from compiler.backends.cuda import gemm as cuda_gemm
from compiler.backends.cuda.emulate import build_together, compile_emulated, compiler_exe, host_source
from compiler.backends.cuda.scalar import plans
from compiler.bench.gemm import gemm_source
from compiler.checking import compare, random_inputs
from ir.bind import bind
from schedulers.gpu_tiles import FMA_SHAPES, TC_SHAPES, GpuTiling

from helpers import sizes_for

pytestmark = pytest.mark.skipif(compiler_exe() is None, reason="no host C++ compiler")

T = hw_models.load("cuda")


def _results(ck, k, b, early: bool):
    """Whether the emulated kernel matches the interpreter, its asynchronous work (cp.async,
    wgmma, bulk tensor copies) taking effect as late as allowed or at once."""
    ck.lib.isamap_emu_early(int(early))
    try:
        ins = random_inputs(k, b, seed=sum(b.sizes.values()))
        out, _ = ck(ins)
        return compare(out, ir.interp.run(k, ins, b.sizes))[:2]
    finally:
        ck.lib.isamap_emu_early(0)


def _check(cases, modes=(False, True)):
    bad = []
    for (k, b, _, g), ck in zip(cases, build_together(cases)):
        for early in modes:
            ok, err = _results(ck, k, b, early)
            if not ok:
                bad.append((k.name, dict(b.sizes), g[0].tiling.describe() if g else "model's tiling", early, err))
    assert not bad, bad


def test_every_kernel_matches_the_interpreter():
    cases = []
    for name in kernels.names():
        k = compiler.parse(kernels.path(name)).kernel()
        for base in (8, 7, 1):
            cases.append((k, bind(k, sizes_for(k, base)), T, None))
    _check(cases, modes=(False,))


def test_split_products_with_shared_elementwise_launches():
    """Sizes where the recurrent products split the reduction, so the gate math runs as one
    separate pointwise kernel; and a statement reading another element after a fused group."""
    h100 = hw_models.load("cuda-h100")
    cases = []
    for name, sizes in (("gru_step", dict(B=1, Hd=1024)), ("lstm_cell", dict(B=4, I=8, Hd=1024)),
                        ("gru_cell", dict(B=3, I=50, Hd=300))):
        k = compiler.parse(kernels.path(name)).kernel()
        cases.append((k, bind(k, sizes), h100, None))
    rev = compiler.parse("def rev(float(N) A) -> (B, C, D) {\n    B(i) = A(i) * 2.0\n    C(i) = B(N - 1 - i) + 1.0\n"
                         "    D(i) = B(i) + C(i)\n}\n").kernel()
    cases.append((rev, bind(rev, dict(N=300)), T, None))
    _check(cases, modes=(False,))


def test_long_reductions_into_few_elements_take_a_block_each():
    """Row statistics over long rows (softmax's max and sum, layernorm's mean and variance), an
    integer and a float GEMV on the scalar path: a block of threads per output element."""
    from compiler.backends.cuda.scalar import _Gen
    cases = []
    for name, sizes in (("softmax", dict(N=5, D=999)), ("layernorm", dict(N=3, D=700)),
                        ("gemm_i8", dict(M=2, N=3, K=5000)), ("gemm", dict(M=2, N=1, K=3000))):
        k = compiler.parse(kernels.path(name)).kernel()
        b = bind(k, sizes)
        gen = _Gen(k, b, "")
        assert any(gen.block_reduction(i) for i in range(len(k.stmts)))
        cases.append((k, b, T, {}))  # {}: no tiled plans, every statement on the scalar path
    _check(cases, modes=(False,))


@pytest.mark.parametrize("lhs,sizes", [("C(b, n, m)", dict(B=1, M=1, N=4, K=91)),
                                       ("C(b, m, n)", dict(B=1, M=3, N=5, K=600)),
                                       ("C(b, m, n)", dict(B=2, M=20, N=33, K=64))])
def test_bfloat16_reductions_round_once_complete(lhs, sizes):
    """A reduction into a bfloat16 tensor sums in float and rounds at the store, as the reference
    does (thread per element and block per element alike): it rounded after every step, 0.078
    off the reference at K=91, past bfloat16's tolerance."""
    from compiler.backends.cuda.runtime import CudaKernel
    src = f"def g(bfloat16(B, M, K) A, bfloat16(B, K, N) W) -> (C) {{\n    {lhs} +=! A(b, m, k) * W(b, k, n)\n}}\n"
    k = compiler.parse(src).kernel()
    b = bind(k, sizes)
    ck = compiler.build(k, target="cuda", sizes=b.sizes)
    ck.gpu = CudaKernel(ck.kernel, ck.bound, ck.gpu.src, emulate=True)
    ins = random_inputs(k, b)
    out = np.asarray(ck.run_all(**ins)["C"], np.float32)
    ref = ir.interp.run(k, ins, b.sizes)["C"]
    assert not (out.view(np.uint32) & 0xFFFF).any()
    assert np.abs(out - ref).max() <= 2 ** -7 * np.abs(ref).max()


def _gemm_case(it, a_t, b_t, m, n, k, tiling=None, target=None):
    """A GEMM as a build_together case: on ``target`` (default the A100-figure cuda target),
    with ``tiling`` or the model's."""
    target = target or T
    kern = compiler.parse(gemm_source(it, "float", a_t, b_t)).kernel()
    b = bind(kern, dict(M=m, N=n, K=k))
    (p,) = plans(kern, b, target).values()
    return kern, b, target, {0: cuda_gemm.with_tiling(p, target, tiling)}


def test_every_block_tiling_in_every_dtype_and_layout():
    """Each tile shape the model may pick, with 2-4 stages and split-K, on edges that leave
    remainders in every dimension (rows, columns and the reduction)."""
    rnd = random.Random(0)
    cases = []
    for it in ("half", "bfloat16", "float"):
        for a_t, b_t in itertools.product((False, True), repeat=2):
            for i, (bm, bn, wm, wn) in enumerate(TC_SHAPES if it != "float" else FMA_SHAPES):
                m = max(1, bm + rnd.choice([-3, 1, 5, bm + 1]))
                n = max(1, bn + rnd.choice([-1, 3, 7]))
                k = rnd.choice([47, 100, 257])
                tl = GpuTiling(bm, bn, 32 if it != "float" else 16, wm, wn, (2, 3, 4)[i % 3] if it != "float" else 2,
                               (1, 2, 3)[i % 3])
                cases.append(_gemm_case(it, a_t, b_t, m, n, k, tl))
    _check(cases)


def test_the_tiles_shared_memory_layout_is_free_of_ldmatrix_bank_conflicts():
    """Rows padded to an odd number of 16-byte units put the eight rows of every ldmatrix matrix
    in distinct bank groups, for every tile shape in every layout (the emulator's counters found
    2-way conflicts in 8-column slabs padded to 16); and the counters count what the tile does."""
    cases = [_gemm_case("half", a_t, b_t, 100, 72, 96, GpuTiling(bm, bn, 32, wm, wn, 3))
             for a_t, b_t in itertools.product((False, True), repeat=2) for bm, bn, wm, wn in TC_SHAPES]
    for (k, b, _, g), ck in zip(cases, build_together(cases)):
        ck(random_inputs(k, b))
        c = ck.last_counters
        tl = g[0].tiling
        blocks = -(-100 // tl.bm) * -(-72 // tl.bn)
        assert c["blocks"] == blocks and c["ldmatrix_matrices"] > 0
        assert c["ldmatrix_wavefronts"] == c["ldmatrix_matrices"], (tl.describe(), c)
        assert c["mma_sync"] == blocks * (tl.bm // 16) * (tl.bn // 8) * (96 // 16)  # every warp, every k16 step


@settings(max_examples=6, deadline=None)
@given(it=st.sampled_from(["half", "bfloat16", "float"]), a_t=st.booleans(), b_t=st.booleans(),
       m=st.integers(1, 300), n=st.integers(1, 300), k=st.integers(1, 700))
def test_the_models_tiling_on_random_shapes(it, a_t, b_t, m, n, k):
    _check([_gemm_case(it, a_t, b_t, m, n, k)])


MUTATIONS = {  # a bug the tiled path could have -> it must change the result
    "stage read before its copies land": ("cp_wait<STAGES - 2>();", ""),
    "no barrier before a stage is refilled": ("cp_wait<STAGES - 2>();\n            __syncthreads();",
                                              "cp_wait<STAGES - 2>();"),
    "A fragment rows and columns swapped": ("(m + r + (j & 1) * 8) * A_C + kk + (j >> 1) * 8",
                                            "(m + r + (j >> 1) * 8) * A_C + kk + (j & 1) * 8"),
    "B fragments of two n tiles mixed": ("bf[ni][0] = q[0]; bf[ni][1] = q[1]; bf[ni + 1][0] = q[2]",
                                         "bf[ni][0] = q[0]; bf[ni][1] = q[2]; bf[ni + 1][0] = q[1]"),
}


@pytest.mark.parametrize("what", MUTATIONS)
def test_the_emulator_catches_a_broken_tile(what, monkeypatch):
    old, new = MUTATIONS[what]
    text = cuda_gemm.tiles_header()
    assert old in text
    monkeypatch.setattr(cuda_gemm, "tiles_header", lambda: text.replace(old, new, 1))
    case = _gemm_case("half", False, False, 130, 70, 200, GpuTiling(128, 64, 32, 64, 32, 3))
    (ck,) = build_together([case])
    assert not all(_results(ck, case[0], case[1], early)[0] for early in (False, True))


def _fault(body: str) -> str:
    """Run ``body`` (CUDA C with a kernel launched from ``go``) on the emulator: the error message."""
    lib = ctypes.CDLL(str(compile_emulated(host_source(body))))
    lib.isamap_emu_error.restype = ctypes.c_char_p
    assert lib.go() != 0
    return lib.isamap_emu_error().decode()


def test_lanes_waiting_on_each_other_are_a_deadlock():
    msg = _fault("""__global__ void k() { float c[4] = {0, 0, 0, 0}; unsigned a[4] = {0, 0, 0, 0};
    if (threadIdx.x % 32 == 0) __syncthreads(); else isamap::mma16816(c, a, 0u, 0u, __half()); }
extern "C" int go() { k<<<1, 64>>>(); return cudaGetLastError(); }""")
    assert "deadlock" in msg


def test_misaligned_ldmatrix_and_launch_limits():
    ld = _fault("""__global__ void k() { extern __shared__ __align__(16) unsigned char sm[]; unsigned r[4];
    isamap::ldsm_x4(r, sm + 8 * (threadIdx.x % 2)); }
extern "C" int go() { k<<<1, 32, 1024>>>(); return cudaGetLastError(); }""")
    assert "ldmatrix" in ld and "aligned" in ld
    big = _fault("""__global__ void k() {}
extern "C" int go() { k<<<1, 32, 64 * 1024>>>(); return cudaGetLastError(); }""")
    assert "cudaFuncSetAttribute" in big
    part = _fault("""__global__ void k() { float c[4] = {0, 0, 0, 0}; unsigned a[4] = {0, 0, 0, 0};
    isamap::mma16816(c, a, 0u, 0u, __half()); }
extern "C" int go() { k<<<1, 48>>>(); return cudaGetLastError(); }""")
    assert "partial warp" in part


def test_a_tensor_map_of_unaligned_rows_is_refused():
    case = _wgmma_case("half", False, False, 128, 300, 128, _wg(128, 256, 3, True))  # B's rows: 600 bytes apart
    (ck,) = build_together([case])
    with pytest.raises(compiler.IsamapError, match="cuTensorMapEncodeTiled"):
        _results(ck, case[0], case[1], False)


def test_cp_async_from_outside_device_memory():
    msg = _fault("""__global__ void k(const __half* g) { extern __shared__ __align__(16) unsigned char sm[];
    isamap::cp_async<16>(sm, g + 64, true); isamap::cp_commit(); isamap::cp_wait<0>(); }
extern "C" int go() { void* d; cudaMalloc(&d, 128); k<<<1, 32, 256>>>((const __half*)d); return cudaGetLastError(); }""")
    assert "cp.async" in msg and "outside" in msg


def test_run_emulate_from_the_command_line(capsys, monkeypatch):
    monkeypatch.setenv("ISAMAP_CUDA", "")  # --emulate sets it: restored after the test
    assert cli.main(["run", "kernels/gemm_bf16.tc", "--target", "cuda", "--sizes", "M=100,N=37,K=24", "--check",
                     "--emulate"]) == 0
    out = capsys.readouterr().out
    assert "emulated on the CPU" in out and "PASS" in out and "1.00 shared-memory wavefronts" in out
    assert cli.main(["run", "kernels/gemm.tc", "--target", "cpu", "--sizes", "M=4,N=4,K=4", "--emulate"]) == 1
    assert "not one" in capsys.readouterr().err


H100 = hw_models.load("cuda-h100-wgmma")


def _wg(bm, bn, stages, tma=False, persistent=0):
    return GpuTiling(bm, bn, 64, 64, bn, stages, 1, 0.0, True, tma, persistent)


def _wgmma_case(it, a_t, b_t, m, n, k, tiling):
    return _gemm_case(it, a_t, b_t, m, n, k, tiling, H100)


def test_wgmma_tiles_in_every_dtype_and_layout():
    """Hopper's warpgroup MMA on 128-byte-swizzled slabs (K-major and MN-major operands), with
    edges in every dimension, 3-5 ring stages and N of 64, 128 and 256."""
    cases = []
    for it in ("half", "bfloat16"):
        for a_t, b_t in itertools.product((False, True), repeat=2):
            for (m, n, k), tl in (((128, 128, 64), _wg(128, 128, 3)), ((200, 136, 200), _wg(128, 128, 4)),
                                  ((64, 64, 296), _wg(64, 64, 5)), ((72, 256, 136), _wg(64, 256, 3)),
                                  ((128, 128, 64), _wg(128, 128, 2, True)), ((200, 136, 520), _wg(128, 128, 3, True)),
                                  ((64, 256, 296), _wg(64, 256, 4, True)), ((136, 296, 200), _wg(128, 256, 4, True)),
                                  # persistent: blocks walk several tiles, the ring running on across them
                                  ((296, 520, 200), _wg(128, 128, 3, True, 2)), ((256, 512, 136), _wg(128, 256, 2, True, 3)),
                                  ((200, 136, 72), _wg(64, 128, 4, True, 5))):
                cases.append(_wgmma_case(it, a_t, b_t, m, n, k, tl))
    assert all(c[3][0].instruction.startswith("wgmma") for c in cases)
    _check(cases)


def test_batched_wgmma():
    """The cp.async wgmma tile with a batch index (the warp-specialised one takes no batch)."""
    cases = []
    kern = compiler.parse("def bmm(bfloat16(Bt, M, K) X, bfloat16(Bt, N, K) Y) -> (Z) {\n"
                          "    Z(b, m, n) +=! float(X(b, m, k)) * float(Y(b, n, k))\n}\n").kernel()
    for sizes, tl in ((dict(Bt=3, M=136, N=128, K=136), _wg(128, 128, 3)),
                      (dict(Bt=2, M=64, N=200, K=72), _wg(64, 256, 4))):
        b = bind(kern, sizes)
        (p,) = plans(kern, b, H100).values()
        cases.append((kern, b, H100, {0: cuda_gemm.with_tiling(p, H100, tl)}))
    _check(cases)


WGMMA_MUTATIONS = {  # (broken tile, the shape it runs on): every thread copying, then warp-specialised
    "a slab refilled while a wgmma group still reads it": ("wg_wait<1>();\n        }", "wg_wait<2>();\n        }", False),
    "K-major chunks stored unswizzled": ("r * 128 + ((c ^ (r & 7)) << 4)", "r * 128 + (c << 4)", False),
    "copies not waited for before the barrier": ("cp_wait<STAGES - 3>();", "cp_wait<STAGES - 2>();", False),
    "a slot released before its wgmma group retires": ("wg_wait<1>();  // the group", "wg_wait<2>();  // the group",
                                                       True),
    "consumers not waiting for the copies": ("mbar_wait(&full[s], (g / STAGES) & 1);", "", True),
    "the producer not waiting for a free slot": ("if (g >= STAGES) mbar_wait(&empty[s]",
                                                 "if (g < 0) mbar_wait(&empty[s]", True),
    "the wrong phase awaited": ("mbar_wait(&full[s], (g / STAGES) & 1);",
                                "mbar_wait(&full[s], ((g / STAGES) & 1) ^ 1);", True),
    "a tile's last slot never released": ("if (ktiles > 0 && tid % 128 == 0) mbar_arrive", "if (false) mbar_arrive",
                                          True),
    "the ring restarting at every tile": ("    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {\n",
                                          "    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {\n"
                                          "        g = 0;\n", True),
}


@pytest.mark.parametrize("what", WGMMA_MUTATIONS)
def test_the_emulator_catches_a_broken_wgmma_tile(what, monkeypatch):
    old, new, ws = WGMMA_MUTATIONS[what]
    text = cuda_gemm.tiles_header()
    assert text.count(old) == 1
    monkeypatch.setattr(cuda_gemm, "tiles_header", lambda: text.replace(old, new, 1))
    case = (_wgmma_case("half", True, False, 256, 512, 640, _wg(128, 256, 3, True, 2)) if ws else
            _wgmma_case("half", False, False, 128, 128, 320, _wg(128, 128, 3)))
    (ck,) = build_together([case])
    results = []
    for early in (False, True):
        try:
            results.append(_results(ck, case[0], case[1], early)[0])
        except compiler.IsamapError as e:  # a deadlock, or a barrier misused
            results.append(False)
            assert "emulator" in str(e)
    assert not all(results)


def test_the_model_takes_wgmma_only_where_it_fits():
    def plan(t, m, n, k, it="half", bt=False):
        kern = compiler.parse(gemm_source(it, "float", False, bt)).kernel()
        (p,) = plans(kern, bind(kern, dict(M=m, N=n, K=k)), t).values()
        return p
    big = plan(H100, 4096, 4096, 4096)
    assert big.instruction == "wgmma_64n256" and big.tiling.tma and big.tiling.threads == 384
    assert big.tiling.persistent == H100.cores  # one block per SM walks the 512 tiles
    assert big.tiling.smem_bytes(2) <= next(x.capacity for x in H100.memories if x.name == "smem")
    assert plan(H100, 4096, 4096, 4096, "bfloat16", True).instruction == "wgmma_64n256_bf16"
    assert plan(H100, 2048, 1024, 512).instruction == "wgmma_64n128"  # 128 x 256 tiles would idle SMs
    bmm = compiler.parse("def bmm(half(Bt, M, K) X, half(Bt, K, N) Y) -> (Z) {\n"
                         "    Z(b, m, n) +=! float(X(b, m, k)) * float(Y(b, k, n))\n}\n").kernel()
    (p,) = plans(bmm, bind(bmm, dict(Bt=4, M=1024, N=1024, K=1024)), H100).values()
    assert p.tiling.wgmma and not p.tiling.tma  # batched: every thread copies (no 3-D tensor maps yet)
    assert not plan(H100, 1760, 16, 1760).tiling.wgmma  # small N: mma.sync with split-K
    assert not plan(H100, 4096, 4096, 4095, bt=True).tiling.wgmma  # rows not 16-byte aligned
    assert not plan(T, 4096, 4096, 4096).tiling.wgmma  # the A100 target has no wgmma


def test_the_gru_sequence_driver_with_its_cuda_graph():
    """The cuda GRU benchmark's library (projection GEMMs, then the steps captured once into a
    CUDA graph and replayed) against the numpy GRU."""
    from compiler.bench.gru import cuda_sequence_source
    from compiler.rnn import gru_reference, random_gru
    for H, N, T in ((64, 1, 5), (40, 3, 4)):
        lib = ctypes.CDLL(str(compile_emulated(cuda_sequence_source(hw_models.load("cuda-h100"), H, N, T))))
        w = random_gru(H, H, seed=1)
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (T, N, H)).astype(np.float32)
        h0 = rng.uniform(-1, 1, (N, H)).astype(np.float32)
        host = [np.ascontiguousarray(a, dtype=np.float32) for a in
                (x.reshape(T * N, H), w.Wx[:, :H], w.Wx[:, H:2 * H], w.Wx[:, 2 * H:], w.Ur, w.Uz, w.Un, w.br, w.bz,
                 w.bhn, h0)]
        fp = ctypes.POINTER(ctypes.c_float)
        ptrs = (fp * len(host))(*[a.ctypes.data_as(fp) for a in host])
        ms = (ctypes.c_float * 3)()
        h = np.empty((N, H), np.float32)
        assert lib.gru_time(ptrs, 3, ms, h.ctypes.data_as(fp)) == 0
        assert np.abs(h - gru_reference(x, w, h0)).max() < 1e-5


def test_index_names_cannot_clash_with_generated_names():
    """Kernel indices named like the generated code's own variables (the thread number t, acc,
    the GEMM store's row/col/z/v, a loop's q) or C keywords: every index is renamed in C."""
    src = """def clash(float(M, K) A, float(K, N) B, float(M) bias, float(Bt, M, K) X, float(Bt, K, N) Y) -> (C, D, E, F) {
    C(row, col) +=! A(row, v) * B(v, col)
    D(t, acc) = C(t, acc) + bias(t)
    E(z) +=! A(z, q)
    F(int, row, char) +=! X(int, row, auto) * Y(int, auto, char)
}
"""
    k = compiler.parse(src).kernel()
    cases = [(k, bind(k, dict(M=m, N=n, K=kk, Bt=2)), T, None) for m, n, kk in ((5, 7, 300), (40, 33, 20))]
    _check(cases, modes=(False,))
