"""The cpu backend's packed, register-blocked contractions (compiler/backends/llvm/contraction.py)."""
from math import prod

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compiler
import hw_models
import ir.interp
import kernels
from compiler.backends.llvm import compile_cpu, native
from compiler.backends.llvm.native import split_contraction
from compiler.backends.llvm.plan import BIG_KC, Blocking, cache_levels
from compiler.checking import compare, random_inputs
from compiler.host import host_features
from ir.bind import bind
from ir.dtypes import BFLOAT16, round_bf16

from helpers import rnd

CPU = hw_models.load("cpu")
LAYOUTS = {"gemm": lambda A, B: A @ B, "gemm_tn": lambda A, B: A.T @ B, "gemm_nt": lambda A, B: A @ B.T}


def _gemm(name, M, N, K, threads=1, blocking=None, target=CPU):
    k = compiler.parse(kernels.path(name)).kernel()
    b = bind(k, dict(M=M, N=N, K=K))
    nk = compile_cpu(k, b, target, threads=threads, blocking=blocking)
    A, B = rnd(*b.shapes["A"], seed=1), rnd(*b.shapes["B"], seed=2)
    return nk, nk({"A": A, "B": B})["C"], LAYOUTS[name](A.astype(np.float64), B.astype(np.float64))


@pytest.mark.parametrize("tiles", [True, False])
@pytest.mark.parametrize("M,N,K,threads", [(1, 1, 1, 1), (13, 17, 19, 2), (64, 64, 64, 1), (200, 100, 131, 2)])
def test_bfloat16_operands_widened_to_float_are_a_contraction(M, N, K, threads, tiles):
    """``C +=! float(A) * float(B)`` on bfloat16 A and B: AMX tiles (tdp_bf16: tdpbf16ps, the
    operands packed as pairs of bfloat16, K padded to whole tiles) where the host has
    AMX-BF16; else the cpu target widens them on the way into L1 (its fill_l1_cvt), so the
    float micro-kernel runs it (the backend holds bfloat16 tensors as float32 values already
    rounded: the widening costs nothing); as exact as the float GEMM on the rounded inputs.
    It ran as scalar loops, 7x (FMA) and 24x (tiles) slower (512^3); a narrow one (16 columns
    or fewer) stays on the FMA micro-kernel, which reads A in place, and so does a K shallower
    than a tile (32 steps)."""
    target = CPU if tiles else BF16_FMA
    [p] = _checked("gemm_bf16", dict(M=M, N=N, K=K), threads, target=target).plans
    # (one tile of columns or fewer stays on the FMA micro-kernel: ``plan._one_tile_of_bfloat16``)
    assert (p.a, p.b, p.c) == ("A", "B", "C") and p.instr == (_first_on_host("tdp_bf16", "vfma_bcast")
                                                              if tiles and N > 16 and K >= 32 else "vfma_bcast")
    batched = "def bmm(bfloat16(Q, M, K) A, float(Q, K, N) B) -> (C) { C(q, m, n) +=! float(A(q, m, k)) * B(q, k, n) }"
    [p] = _checked(batched, dict(Q=3, M=M, K=K, N=N), threads, target=target).plans
    assert p.batch == ("q",) and p.instr == "vfma_bcast"  # (a float B: no tile instruction multiplies it)


@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (13, 17, 19), (64, 64, 64), (29, 100, 3), (200, 8, 31)])
def test_every_layout_is_a_contraction_and_correct(name, M, N, K):
    nk, out, ref = _gemm(name, M, N, K)
    assert [p.stmt for p in nk.plans] == [0]
    assert np.allclose(out, ref, atol=1e-4 * K, rtol=1e-4)


def test_blocking_follows_the_target():
    """Lanes, registers and cache blocks come from the .hw file: AVX2's 16 ymm registers give
    a 6 x 16 micro-kernel, AVX-512's 32 zmm registers a 14 x 32 one."""
    nk, out, ref = _gemm("gemm", 168, 100, 100)
    bl = nk.plans[0].blocking
    assert (bl.vl, bl.mr, bl.nr) == (16, 14, 32)
    avx2 = hw_models.load("cpu-avx2")
    nk2, out2, _ = _gemm("gemm", 168, 100, 100, target=avx2)
    bl2 = nk2.plans[0].blocking
    assert (bl2.vl, bl2.mr, bl2.nr) == (8, 6, 16)
    assert np.allclose(out2, ref, atol=1e-3)
    assert "14 x 32" in nk.plans[0].describe()


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(list(LAYOUTS)), M=st.integers(1, 60), N=st.integers(1, 70), K=st.integers(1, 50),
       mr=st.integers(1, 14), nv=st.integers(1, 3), kc=st.integers(1, 50), mcs=st.integers(1, 4),
       ncs=st.integers(1, 3), pack_a=st.booleans(), pack_b=st.booleans(), threads=st.integers(1, 3))
def test_any_blocking_and_thread_split_is_correct(name, M, N, K, mr, nv, kc, mcs, ncs, pack_a, pack_b, threads):
    """Tiles that do not divide the sizes, several K/M/N blocks, edge tiles, A and B packed or in place."""
    bl = dict(mr=mr, nv=nv, kc=kc, mc=mr * mcs, nc=16 * nv * ncs, pack_a=pack_a, pack_b=pack_b)
    nk, out, ref = _gemm(name, M, N, K, threads=threads, blocking=bl)
    assert np.allclose(out, ref, atol=1e-4 * K, rtol=1e-4), bl


def test_thread_split_covers_every_output_once():
    k = compiler.parse(kernels.path("batch_matmul")).kernel()
    for sizes, threads in [(dict(Bt=1, M=1000, N=16, K=300), 2), (dict(Bt=1, M=20, N=3000, K=300), 3),
                           (dict(Bt=5, M=40, N=40, K=800), 2)]:
        b = bind(k, sizes)
        nk = compile_cpu(k, b, CPU, threads=threads)
        p = nk.plans[0]
        parts = split_contraction(p, threads)
        assert len(parts) == threads
        cover = np.zeros((sizes["Bt"], sizes["M"], sizes["N"]), int)
        for q0, q1, m0, m1, n0, n1, k0, k1, _ in parts:
            assert (k0, k1) == p.dom[p.red]
            cover[q0:q1, m0:m1, n0:n1] += 1
        assert (cover == 1).all()


@pytest.mark.parametrize("name,count", [("batch_matmul", 1), ("mlp", 1), ("pointwise_conv2d", 1), ("gru_step", 3),
                                        ("lstm_cell", 0)])
def test_kernels_with_contractions(name, count):
    """GEMM-shaped statements of library kernels take the fast path; the rest stays scalar,
    and the whole kernel still matches the interpreter."""
    k = compiler.parse(kernels.path(name)).kernel()
    sizes = {s: 37 for s in k.sizes}
    ck = compiler.build(k, target="cpu", sizes=sizes)
    assert len(ck.native.plans) >= count
    ins = random_inputs(ck.kernel, ck.bound, seed=3)
    ok, err, per = compare(ck.run_all(**ins), ir.interp.run(k, ins, ck.sizes))
    assert ok, per


def test_scalar_scheduler_and_schedule_listing():
    ck = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=280, N=40, K=30))
    text = ck.source("schedule")
    assert "micro-kernel 14 x 32 (m x n)" in text and "B packed" in text  # 20 row tiles share B
    batch = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=32, N=300, K=30))
    assert "B read in place" in batch.source("schedule")  # 4 row tiles: packing B would not pay
    short = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=1, N=300, K=30))
    assert "micro-kernel 1 x 256" in short.source("schedule") and "B read in place" in short.source("schedule")  # GEMV: 16 vectors
    sc = compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=50, N=40, K=30), scheduler="scalar")
    assert sc.native.plans == [] and "scalar loops" in sc.source("schedule")
    with pytest.raises(compiler.IsamapError, match="takes --scheduler vector"):
        compiler.build(kernels.path("gemm"), target="cpu", sizes=dict(M=5, N=4, K=3), scheduler="cpsat")


def test_row_tiles_leave_little_padding():
    """M = 32 rows: 8-row tiles (4 of them, 24 accumulators) rather than 14 + 14 + 4."""
    bl = Blocking.for_target(CPU, 16, "zmm", 32, 2816, 2816, 2)
    assert (bl.mr, bl.nv) == (8, 3)
    assert Blocking.for_target(CPU, 16, "zmm", 1760, 128, 1760, 2).mr == 14


def test_default_blocking_is_balanced():
    bl = Blocking.for_target(CPU, 16, "zmm", 1760, 128, 1760, 2)
    assert bl.kc * -(-1760 // bl.kc) - 1760 < -(-1760 // bl.kc)  # K blocks differ by at most one
    assert bl.mc % bl.mr == 0 and bl.nc % bl.nr == 0


def _with_caches(t, l1: int, l2: int):
    """``t`` with its two inner caches resized (the blocking rules of another host's caches)."""
    from dataclasses import replace
    inner = [m.name for m in cache_levels(t)[:2]]
    sizes = dict(zip(inner, (l1, l2)))
    return replace(t, memories=tuple(replace(m, capacity=sizes.get(m.name, m.capacity)) for m in t.memories))


def test_large_packed_gemms_take_longer_k_blocks_and_stay_correct():
    """Both operands packed: K blocks of a B micro-panel twice the L1 (the C tiles are read and
    written half as often), up to BIG_KC steps on a big L2, C tiles prefetched where C comes from
    memory; narrow GEMMs (A read in place) keep the L1-sized block where L2 is
    small, and take K blocks of an eighth of a big (2 MiB) L2, with an A block as big, where A's
    rows run along K."""
    for l1, l2 in ((32 << 10, 1 << 20), (48 << 10, 2 << 20)):  # Zen 4's caches, a recent Xeon's
        t = _with_caches(CPU, l1, l2)
        wide = Blocking.for_target(t, 16, "zmm", 2048, 2048, 2048, 2)
        narrow = Blocking.for_target(t, 16, "zmm", 2560, 64, 2560, 2, a_row_stride=2560)
        assert wide.pack_a and wide.pack_b and not narrow.pack_a and narrow.pack_b
        if l2 < (2 << 20):
            assert l1 < wide.kc * wide.nr * 4 <= 2 * l1
        else:  # 6 x 4 vectors with B's micro-panels streaming from L2: up to BIG_KC steps
            assert wide.nv == 4 and 2 * l1 < wide.kc * wide.nr * 4 and wide.kc <= BIG_KC
            assert wide.kc == -(-2048 // -(-2048 // BIG_KC)) and wide.mc * wide.kc * 4 <= l2 // 2  # balanced
        assert wide.prefetch_c  # C (16 MiB) comes from memory: its tiles are prefetched
        assert not Blocking.for_target(t, 16, "zmm", 512, 512, 2048, 2).prefetch_c  # 1 MiB of C
        if l2 < (2 << 20):
            assert narrow.kc * narrow.nr * 4 <= l1
        else:
            assert l1 < narrow.kc * narrow.nr * 4 <= l2 // 8 and narrow.mc * narrow.kc * 4 <= l2 // 8
            assert 2560 % narrow.kc == 0 and narrow.mc % narrow.mr == 0
        # A(k, m) read in place (gemm_tn: a new line of A every k step) keeps L1-sized blocks
        tn = Blocking.for_target(t, 16, "zmm", 2560, 64, 2560, 2, a_row_stride=0)
        assert not tn.pack_a and tn.kc * tn.nr * 4 <= l1
    nk, out, ref = _gemm("gemm", 233, 161, 1031, threads=2)  # ragged row, column and K blocks
    bl = nk.plans[0].blocking
    assert bl.pack_a and bl.pack_b and bl.kc > 256 and 1031 % bl.kc
    assert np.allclose(out, ref, atol=1e-4 * 1031, rtol=1e-4)
    # C tiles prefetched (past C's end on the edges: a hint, never a fault) and 6 x 4 tiles
    nk, out, ref = _gemm("gemm", 233, 161, 1031, threads=2, blocking=dict(prefetch_c=True, mr=6, nv=4, kc=500))
    assert nk.plans[0].blocking.prefetch_c and "C tiles prefetched" in nk.plans[0].describe()
    assert np.allclose(out, ref, atol=1e-4 * 1031, rtol=1e-4)
    # long in-place K blocks with ragged edges: M, N and K not multiples of the tiles and blocks
    nk, out, ref = _gemm("gemm", 233, 71, 2111, threads=2, target=_with_caches(CPU, 48 << 10, 2 << 20))
    bl = nk.plans[0].blocking
    assert not bl.pack_a and bl.pack_b and bl.kc > 1024 and 2111 % bl.kc
    assert np.allclose(out, ref, atol=1e-4 * 2111, rtol=1e-4)


def test_vectorisable_exp_sigmoid_tanh_are_accurate():
    """float32 exp/sigmoid/tanh are inline polynomials (so loops around them vectorise): within
    a few ulp of numpy over the whole range, with inf, NaN, overflow and underflow right."""
    src = """def f(float(N) X) -> (E, S, T) {
        E(i) = exp(X(i))
        S(i) = sigmoid(X(i))
        T(i) = tanh(X(i))
    }"""
    x = np.concatenate([np.linspace(-110, 100, 20001), [np.nan, np.inf, -np.inf, 0, 1e-30, -1e-8, 88.72, 88.73]])
    x = x.astype(np.float32)
    ck = compiler.build(src, target="cpu", sizes=dict(N=x.size))
    out = ck.run_all(X=x)
    ref = ir.interp.run(ck.kernel, {"X": x}, ck.sizes)
    for name, ulps in (("E", 4), ("S", 4), ("T", 8)):
        a, r = out[name].astype(np.float64), ref[name].astype(np.float64)
        assert np.array_equal(np.isnan(a), np.isnan(r)) and np.array_equal(np.isinf(a), np.isinf(r)), name
        ok = np.isfinite(r) & (np.abs(r) > 1e-37)
        a, r = a[ok], r[ok]
        assert (np.abs(a - r) <= ulps * 1.2e-7 * np.abs(r) + 1.2e-7 * (name != "E")).all(), name


@pytest.mark.parametrize("name", ["gemm", "gemm_nt"])
@pytest.mark.parametrize("M,N,K", [(1, 1, 16), (9, 1, 17), (37, 3, 45), (300, 2, 1000), (64, 7, 100), (5, 4, 2000)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_short_rows_use_the_dot_product_form(name, M, N, K, threads):
    """N much narrower than a vector: products along K in registers, summed across lanes
    (GEMV-like DeepBench rows), split across threads by rows."""
    nk, out, ref = _gemm(name, M, N, K, threads=threads, blocking=None)
    assert nk.plans[0].form == "dot" and "dot products along k" in nk.plans[0].describe()
    assert np.allclose(out, ref, atol=1e-4 * K, rtol=1e-4)
    nk, out, ref = _gemm(name, M, N, K, threads=threads, blocking=dict(kc=16))  # several K blocks
    assert np.allclose(out, ref, atol=1e-4 * K, rtol=1e-4)


def test_build_key_is_stable_across_processes():
    """The on-disk cache key must not depend on set/dict order (string hashing differs per process)."""
    import os
    import subprocess
    import sys
    code = ("import compiler, kernels, hw_models, hashlib\n"
            "from ir.bind import bind\n"
            "from compiler.backends.llvm.plan import recognise\n"
            "from compiler.backends.llvm.native import build_key\n"
            "from compiler.mapping import mappings_for_kernel\n"
            "k = compiler.parse(kernels.path('lstm_cell')).kernel(); b = bind(k, {s: 37 for s in k.sizes})\n"
            "t = hw_models.load('cpu'); ms = mappings_for_kernel(k, t, bound=b)\n"
            "ps = [p for p in (recognise(k, b, t, i, ms, 2) for i in range(len(k.stmts))) if p]\n"
            "print(hashlib.sha256(build_key(k, b, ps, True).encode()).hexdigest())\n")
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(seed))).stdout for seed in (1, 2, 3)}
    assert len(keys) == 1


def test_elementwise_statements_fuse_as_epilogues_only_when_tile_local():
    """Bias + activation (mlp) and the GRU gate math run on each finished output tile; a
    statement that reads the result at another element (a shift) stays a separate pass, and
    both give the interpreter's numbers."""
    mlp = compiler.build(kernels.path("mlp"), target="cpu", sizes=dict(B=40, K=30, N=50))
    assert mlp.native.plans[0].epilogue == (1,) and "S1: O fused into S0" in mlp.source("schedule")
    gru = compiler.build(kernels.path("gru_step"), target="cpu", sizes=dict(B=3, Hd=40))
    assert [p.epilogue for p in gru.native.plans] == [(1,), (3,), (5, 6)]
    src = """def f(float(M, K) A, float(K, N) B, float(N) Bias) -> (C, D) {
        C(m, n) +=! A(m, k) * B(k, n)
        D(m, n) = C(m, n) + Bias(n)
        C(m, n) = D(m, (n + 1) % N) * 2
    }"""
    ck = compiler.build(src, target="cpu", sizes=dict(M=33, K=20, N=40))
    assert ck.native.plans[0].epilogue == (1,)  # the shifted read of D ends the group
    for k in (mlp, gru, ck):
        ins = random_inputs(k.kernel, k.bound, seed=5)
        ok, err, per = compare(k.run_all(**ins), ir.interp.run(k.kernel, ins, k.sizes))
        assert ok, per


def test_an_a_with_no_unit_stride_is_packed_and_correct():
    """A(k, m, p) read with m and k both strided: the gathered packing path."""
    src = """def f(float(K, M, P) A, float(K, N) B) -> (C) {
        C(p, m, n) +=! A(k, m, p) * B(k, n)
    }"""
    ck = compiler.build(src, target="cpu", sizes=dict(K=19, M=23, P=3, N=37))
    assert ck.native.plans and ck.native.plans[0].blocking.pack_a
    ins = random_inputs(ck.kernel, ck.bound, seed=7)
    ok, err, per = compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins, ck.sizes))
    assert ok, per


def test_a_rows_4k_apart_are_packed_with_the_register_transpose():
    """K = 1024 floats: A's rows 4 KiB apart would share L1 sets read in place, so A is packed
    from four NR tiles up; the packing transposes 16 k steps at a time in registers (full
    panels) and copies the K tail and a short last panel element by element."""
    nk, out, ref = _gemm("gemm", 56, 128, 1024)
    assert nk.plans[0].blocking.pack_a
    assert np.allclose(out, ref, atol=1e-3, rtol=1e-4)
    assert not _gemm("gemm", 56, 64, 1024)[0].plans[0].blocking.pack_a  # two NR tiles: read in place
    for kc, mr in ((40, 14), (16, 16), (33, 5)):
        nk, out, ref = _gemm("gemm", 37, 70, 90, blocking=dict(pack_a=True, kc=kc, mr=mr, nv=1, mc=2 * mr))
        assert np.allclose(out, ref, atol=1e-3, rtol=1e-4), (kc, mr)


def test_an_nt_b_is_packed_with_the_register_transpose():
    """B(n, k) (gemm_nt): whole panels are packed 16 k steps of 16 columns at a time through
    the register transpose, the K tail and a short last panel element by element; one to
    three vectors per panel, K blocks with and without a tail, and the AVX2 target's 8 lanes."""
    for nv, kc, N, K in ((2, 40, 70, 45), (1, 16, 35, 64), (3, 33, 100, 70), (2, 256, 64, 300)):
        nk, out, ref = _gemm("gemm_nt", 19, N, K, blocking=dict(nv=nv, kc=kc, nc=2 * 16 * nv, pack_b=True))
        assert np.allclose(out, ref, atol=1e-4 * K, rtol=1e-4), (nv, kc, N, K)
    nk, out, ref = _gemm("gemm_nt", 13, 40, 50, target=hw_models.load("cpu-avx2"), blocking=dict(kc=24, pack_b=True))
    assert nk.plans[0].blocking.vl == 8 and np.allclose(out, ref, atol=1e-3, rtol=1e-4)


def test_a_rows_in_one_l1_set_read_in_place_use_fewer_rows_than_ways():
    """K = 1024 floats with two NR tiles (N = 64): A stays in place, and the micro-kernel's
    rows, one stream each, number fewer than the L1's ways (from the .hw file, or the host's)."""
    l1 = next(m for m in CPU.memories if m.name == "l1")
    nk, out, ref = _gemm("gemm", 112, 64, 1024)
    bl = nk.plans[0].blocking
    assert np.allclose(out, ref, atol=1e-3, rtol=1e-4)
    assert not bl.pack_a
    if l1.ways and (1024 * 4) % (l1.capacity // l1.ways) == 0 and l1.ways - 1 < 14:
        assert bl.mr == l1.ways - 1
    assert _gemm("gemm", 112, 64, 1000)[0].plans[0].blocking.mr == 14  # rows in different sets


def test_dot_product_rows_in_one_l1_set_are_fewer_than_ways():
    """The dot-product form (a GEMV) reads A's rows in place too: rows 4 KiB apart take one
    row fewer than the L1's ways (with the ragged last tile of 7-row tiles over 100 rows)."""
    l1 = next(m for m in CPU.memories if m.name == "l1")
    nk, out, ref = _gemm("gemm", 100, 1, 1024, threads=2)
    bl = nk.plans[0].blocking
    assert nk.plans[0].form == "dot" and np.allclose(out, ref, atol=1e-3, rtol=1e-4)
    if l1.ways and (1024 * 4) % (l1.capacity // l1.ways) == 0 and l1.ways - 1 < 8:
        assert bl.mr == l1.ways - 1
    assert _gemm("gemm", 100, 1, 1000)[0].plans[0].blocking.mr == 8  # rows in different sets


def test_a_gemv_streaming_b_from_memory_reads_few_rows_at_a_time():
    """M = 1 with a B beyond a quarter of the outer cache: K blocks of 8-16 rows of 2-vector
    tiles (a few sequential streams per thread), K split across threads; so too at batch 1-2
    from a sixteenth of it (batch 4 not; past a quarter it streams 8 rows of 4-vector tiles); a B well inside the cache keeps the 16-vector,
    L1-sized blocks.  Ragged K blocks and column tiles stay correct."""
    l3 = max(m.capacity for m in CPU.memories if m.row_bytes is None and m.name != CPU.main)
    side = int((l3 / 16 / 4) ** 0.5)  # a B of l3 / 16
    small = Blocking.for_target(CPU, 16, "zmm", 1, side - 64, side - 64, 2)
    assert (small.mr, small.nv) == (1, 16) and small.kc >= 16 and not small.stream
    for m, streams in ((1, True), (2, True), (4, False)):
        mid = Blocking.for_target(CPU, 16, "zmm", m, side + 64, side + 64, 2)
        assert (mid.stream, mid.split_k) == (streams, streams)
    n = k = int((l3 / 4 / 4) ** 0.5) + 53  # just past a quarter of it, odd
    big = Blocking.for_target(CPU, 16, "zmm", 1, n, k, 2)
    assert (big.mr, big.nv) == (1, 2) and big.kc <= 16 and -(-k // big.kc) * big.kc - k < -(-k // big.kc)
    l1 = next(m for m in CPU.memories if m.name == "l1")
    if l1.ways:  # rows a multiple of the way size apart all share one L1 set: no more rows than ways
        assert Blocking.for_target(CPU, 16, "zmm", 1, l1.capacity // l1.ways, k, 2).kc <= l1.ways
    assert big.split_k and not Blocking.for_target(CPU, 16, "zmm", 1, n, k, 1).split_k
    four = Blocking.for_target(CPU, 16, "zmm", 4, n, k, 2)  # batch 4: 4 vectors a tile, K blocks of at most 8
    assert (four.mr, four.nv) == (4, 4) and four.kc == -(-k // -(-k // min(8, big.kc)))
    assert four.split_k and four.prefetch
    nk, out, ref = _gemm("gemm", 1, n, k, threads=2)
    assert nk.plans[0].blocking == big
    assert np.allclose(out, ref, atol=1e-4 * k, rtol=1e-4)


@pytest.mark.parametrize("rows,split", [(1, True), (2, False), (4, True)])
def test_the_stream_loop_computes_what_the_tile_loop_does(monkeypatch, rows, split):
    """Whole K blocks of a short M as one pass along the columns (``Blocking.stream``): bitwise
    the tile loop's results (the same sums in the same order), with ragged K blocks and
    columns left to the tile loop, the fused GRU gate math, a plain ``+=`` and split K."""
    monkeypatch.setattr(native, "PARALLEL_MIN_SECONDS", 0.0)  # split even these small ones
    force = dict(mr=rows, nv=2, kc=4, pack_b=False, split_k=split)
    cases = [("gru_step", dict(B=rows, Hd=77)), ("gemm", dict(M=rows, N=70, K=13))]
    for name, sizes in cases:
        k = compiler.parse(kernels.path(name)).kernel()
        b = bind(k, sizes)
        ins = random_inputs(k, b, seed=rows)
        on = compile_cpu(k, b, CPU, threads=2, blocking=dict(force, stream=True))
        off = compile_cpu(k, b, CPU, threads=2, blocking=dict(force, stream=False))
        assert on.plans[0].streams() and not off.plans[0].streams()
        assert "B streamed" in on.plans[0].describe()
        got, tiles = on(ins), off(ins)
        for out in got:
            assert np.array_equal(got[out], tiles[out]), (name, out)
        ok, err, per = compare(got, ir.interp.run(k, ins, b.sizes))
        assert ok, (name, per)


def test_a_split_k_adds_its_partial_sums_then_runs_the_epilogue(monkeypatch):
    """Threads split K (whole K blocks each, the last ragged), parts past the first sum into
    their scratch, and s{i}_reduce adds them and runs the fused epilogue: the batch-1 GRU step
    at an odd hidden size on 2 and 3 threads, a plain ``+=`` (C zero-filled first, part 0 adds
    to it) and forced split K blockings on small sizes."""
    l3 = max(m.capacity for m in CPU.memories if m.row_bytes is None and m.name != CPU.main)
    h = int((l3 / 4 / 4) ** 0.5) + 3
    k = compiler.parse(kernels.path("gru_step")).kernel()
    b = bind(k, dict(B=1, Hd=h))
    ins = random_inputs(k, b, seed=3)
    ref = ir.interp.run(k, ins, b.sizes)
    for threads in (2, 3):
        nk = compile_cpu(k, b, CPU, threads=threads)
        assert all(p.blocking.split_k and p.epilogue is not None or not p.epilogue for p in nk.plans)
        parts = split_contraction(nk.plans[0], threads)
        assert len(parts) == threads and parts[0][6] == 0 and parts[-1][7] == h
        assert all(a[7] == c[6] and (a[7] - a[6]) % nk.plans[0].blocking.kc == 0 for a, c in zip(parts, parts[1:]))
        ok, err, per = compare(nk(ins), ref)
        assert ok, (threads, per)
        from compiler.api import native_schedule
        text = native_schedule(nk)
        assert "split across threads, partial sums added after" in text and "once the threads' partial sums" in text
    src = """def f(float(M, K) A, float(K, N) B) -> (C) {
        C(m, n) += A(m, k) * B(k, n)
    }"""
    plain = compiler.parse(src).kernel()
    monkeypatch.setattr(native, "PARALLEL_MIN_SECONDS", 0.0)  # split even these small ones
    for M, N, K, bl in ((1, 37, 301, dict(split_k=True, kc=8, nv=2)), (3, 50, 64, dict(split_k=True, kc=5, nv=1)),
                        (1, 5, 3, dict(split_k=True, kc=1))):
        bb = bind(plain, dict(M=M, N=N, K=K))
        ins = random_inputs(plain, bb, seed=4)
        for threads in (1, 2, 3):
            nk = compile_cpu(plain, bb, CPU, threads=threads, blocking=bl)
            assert nk.plans[0].blocking.split_k
            assert len(split_contraction(nk.plans[0], threads)) == min(threads, -(-K // bl["kc"]))
            ok, err, per = compare(nk(ins), ir.interp.run(plain, ins, bb.sizes))
            assert ok, (M, N, K, threads, per)


def _checked(kernel, sizes, threads=1, blocking=None, seed=5, target=CPU):
    """``kernel`` (a library name or TC source) compiled for the cpu (or ``target``) at
    ``sizes``, its result checked against the interpreter's."""
    k = compiler.parse(kernels.path(kernel) if kernel in kernels.names() else kernel).kernel()
    b = bind(k, sizes)
    nk = compile_cpu(k, b, target, threads=threads, blocking=blocking)
    ins = random_inputs(k, b, seed=seed)
    # (bfloat16 inputs rounded, as the checked call of a compiled kernel rounds them)
    ins = {x.name: round_bf16(ins[x.name]) if x.dtype == BFLOAT16 else ins[x.name] for x in k.inputs}
    ok, err, per = compare(nk(ins), ir.interp.run(k, ins, b.sizes))
    assert ok, (sizes, threads, blocking, per)
    return nk


def _conv(sizes, threads=1, blocking=None, fold=True, kernel="conv2d"):
    """conv2d (or ``kernel``) at ``sizes``, checked against the interpreter; ``fold=False``: the
    filter taps as passes over C rather than folded into K (``plan._fold_taps``), the path
    other layouts take."""
    from compiler.backends.llvm import plan
    with pytest.MonkeyPatch.context() as mp:
        if not fold:
            mp.setattr(plan, "_fold_taps", lambda p: None)
        return _checked(kernel, sizes, threads, blocking)


def test_a_convolution_is_a_contraction_with_taps():
    """O(n, f, h, w) += I(n, c, h + r, w + s) * Wt(f, c, r, s): f x w tiles over K = c, the
    filter taps r, s as passes accumulating into O, Wt (the same for every n, h) packed once
    per call for every tap."""
    nk = _conv(dict(N=2, C=16, H=30, W=130, F=40, R=3, S=3), fold=False)  # 128-wide rows: whole tiles
    [p] = nk.plans
    assert (p.row, p.vec, p.red, p.batch, p.taps, p.pad) == ("f", "w", "c", ("n", "h"), ("r", "s"), ())
    assert p.blocking.pack_a and p.prepacks_a() and not p.epilogue
    assert "taps r, s" in p.describe() and "once per call" in p.describe()


@pytest.mark.parametrize("threads", [1, 2])
def test_the_taps_fold_into_k_where_the_filter_holds_them_one_after_another(threads):
    """Wt(f, c, r, s) holds (c, r, s) contiguously: K runs over all three (unit stride in A),
    B's row for k at its offset in I (its channel's plane, the tap's r * W + s): read in place
    through a constant table of the offsets (the micro-kernel loads each row's address from
    it), or packed a K block at a time through them; no taps are left, so C is stored once
    per tile, not once per tap."""
    sizes = dict(N=2, C=16, H=30, W=130, F=40, R=3, S=2)
    nk = _conv(sizes, threads)
    [p] = nk.plans
    assert (p.red, p.taps, p.dom["(c,r,s)"]) == ("(c,r,s)", (), (0, 16 * 3 * 2))
    assert p.kfold == (("c", "r", "s"), (16, 3, 2), (30 * 130, 130, 1), "I")  # the table addresses I (B)
    assert p.strides["Wt"]["(c,r,s)"] == 1 and p.flops() == 2 * prod(sizes.values()) // (30 * 130) * 28 * 129
    assert not p.blocking.pack_b and "taps folded into K = (c,r,s) (I read through each k's offset)" in p.describe()
    assert '@"s0_koffs" = internal constant [' in nk.llvm_ir
    packed = _conv(sizes, threads, dict(pack_b=True)).plans[0]
    assert "(I packed through each k's offset)" in packed.describe()


@pytest.mark.parametrize("sizes,padded", [
    (dict(N=2, C=16, H=16, W=16, F=40, R=3, S=3), True),  # 14-wide rows: one 16-lane vector of 32
    (dict(N=2, C=16, H=30, W=30, F=40, R=3, S=3), True),
    (dict(N=3, C=7, H=9, W=11, F=13, R=2, S=4), True),  # 8 of 11 columns, primes
    (dict(N=1, C=5, H=6, W=58, F=17, R=3, S=3), True),  # one batch: threads split rows or columns
    (dict(N=2, C=16, H=6, W=34, F=40, R=3, S=3), False),  # 32 columns: whole tiles already
    (dict(N=2, C=8, H=5, W=114, F=8, R=3, S=3), False),  # longer than two tiles
    (dict(N=2, C=8, H=5, W=9, F=8, R=1, S=1), False),  # no taps (pointwise: (h, w) fuse as they are)
])
@pytest.mark.parametrize("threads", [1, 2])
def test_short_convolution_rows_run_on_through_the_input_rows(sizes, padded, threads):
    """With rows shorter than the tiles, the vector variable is p = h * W + w over I's full rows
    (each tap's B at offset r * W + s, read along I's rows), C's tiles go to a scratch C with
    the same padded rows, and each column block is compacted into O after its last tap (the
    W - Wo columns of overlap per row dropped); the result is the reference's."""
    nk = _conv(sizes, threads)
    [p] = nk.plans
    assert bool(p.pad) == padded
    if padded:
        W, Wo, Ho = sizes["W"], sizes["W"] - sizes["S"] + 1, sizes["H"] - sizes["R"] + 1
        assert p.vec == "(h,w)" and p.batch == ("n",) and p.pad == ("h", "w", W, Ho, Wo, Ho * Wo)
        assert p.dom["(h,w)"] == (0, (Ho - 1) * W + Wo) and p.strides["I"]["(h,w)"] == 1
        assert p.flops() == 2 * prod(sizes[x] for x in "NFC") * Ho * Wo * sizes["R"] * sizes["S"]
        assert "run on in I's rows of" in p.describe()
        assert "s0_init" not in nk.llvm_ir  # the padded plan still covers O: no identity fill


@pytest.mark.parametrize("sizes,taken", [
    (dict(N=3, C=8, H=9, W=9, F=256, R=3, S=3), True),  # 7 of 9 columns: run on, 9 / 7 the work
    (dict(N=2, C=5, H=16, W=16, F=260, R=3, S=3), True),
    (dict(N=1, C=7, H=6, W=11, F=300, R=2, S=4), True),
    (dict(N=3, C=8, H=9, W=9, F=64, R=3, S=3), False),  # too few rows to pay for the gathered B
    (dict(N=2, C=8, H=9, W=32, F=256, R=3, S=3), False),  # 30 of 32 columns: padded rows
])
@pytest.mark.parametrize("threads", [1, 2])
def test_small_images_run_every_pixel_as_one_vector_variable(sizes, taken, threads):
    """Small images with many output channels: every batch's Ho * Wo pixels one after another
    as the vector variable (B packed through each pixel's address), C's tiles into a scratch
    C copied into O after the last tap; threads split C's rows or its columns, whose ranges
    cross from one image into the next."""
    nk = _conv(sizes, threads)
    [p] = nk.plans
    assert bool(p.im2col) == taken
    if taken:
        Ho, Wo = sizes["H"] - sizes["R"] + 1, sizes["W"] - sizes["S"] + 1
        assert p.vec == "(n,h,w)" and p.batch == () and p.dom["(n,h,w)"] == (0, sizes["N"] * Ho * Wo)
        assert p.blocking.pack_b and p.prepacks_a() and "output pixels as one vector" in p.describe()
        assert p.flops() == 2 * prod(sizes[x] for x in "NFCRS") * Ho * Wo


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 20), H=st.integers(2, 12), W=st.integers(2, 24), F=st.integers(1, 30),
       R=st.integers(1, 4), S=st.integers(2, 4), threads=st.integers(1, 3), mr=st.integers(1, 14),
       nv=st.integers(1, 4), kc=st.integers(1, 20), mcs=st.integers(1, 3), ncs=st.integers(1, 5),
       pack_a=st.booleans(), fold=st.booleans())
def test_im2col_convolutions_with_any_blocking_and_thread_split_are_correct(N, C, H, W, F, R, S, threads,
                                                                           mr, nv, kc, mcs, ncs, pack_a, fold):
    """The im2col plan for any number of rows (IM2COL_ROWS lowered), any tiles and column blocks
    (a block or a thread's part that starts or ends inside an image), packed or in-place A."""
    from compiler.backends.llvm import plan
    R, S = min(R, H), min(S, W)
    bl = dict(mr=mr, nv=nv, kc=kc, mc=mr * mcs, nc=16 * nv * ncs, pack_a=pack_a)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plan, "IM2COL_ROWS", 1)
        _conv(dict(N=N, C=C, H=H, W=W, F=F, R=R, S=S), threads, bl, fold)


POINTWISE = "def pw(float(N, C, H, W) I, float(F, C) Wt) -> (O) { O(n, f, h, w) +=! I(n, c, h, w) * Wt(f, c) }"


@pytest.mark.parametrize("src,sizes,merged", [
    (POINTWISE, dict(N=2, C=9, H=5, W=28, F=20), True),  # 28 of 32 columns per tile
    (POINTWISE, dict(N=1, C=3, H=7, W=7, F=5), True),
    (POINTWISE, dict(N=2, C=9, H=5, W=32, F=20), False),  # whole tiles already
    ("def pw3(float(C, H, W) I, float(F, C) Wt) -> (O) { O(f, h, w) +=! I(c, h, w) * Wt(f, c) }",
     dict(C=9, H=5, W=28, F=20), False),  # h the only batch loop: the plan may take an epilogue
    ("def sub(float(N, C, H, W) I, float(F, C) Wt) -> (O) { O(n, f, h, w) +=! I(n, c, h, w + 1) * Wt(f, c) "
     "where w in 0:W-1 }", dict(N=2, C=9, H=5, W=29, F=20), False),  # I's rows longer than O's
])
@pytest.mark.parametrize("threads", [1, 2])
def test_output_rows_every_operand_holds_one_after_another_run_together(src, sizes, merged, threads):
    """A pointwise convolution's h and w as one vector variable over h * W points (no padding,
    no compaction), where each row would leave part of its last tile empty."""
    k = compiler.parse(src).kernel()
    b = bind(k, sizes)
    ins = random_inputs(k, b, seed=3)
    nk = compile_cpu(k, b, CPU, threads=threads)
    [p] = nk.plans
    assert bool(p.merged) == merged
    if merged:
        assert p.vec == "(h,w)" and p.dom["(h,w)"] == (0, sizes["H"] * sizes["W"]) and p.batch == ("n",)
        assert p.flops() == 2 * prod(sizes.values()) and "run together" in p.describe()
    ok, _, per = compare(nk(ins), ir.interp.run(k, ins, b.sizes))
    assert ok, per


@pytest.mark.parametrize("sizes,kind", [(dict(N=3, C=5, H=7, W=7, F=520), "im2col"),  # 49 pixels: 64 lanes
                                         (dict(N=3, C=5, H=7, W=7, F=300), "merged"),  # too few rows for the gathers
                                         (dict(N=2, C=5, H=4, W=32, F=520), "plain")])  # whole vectors
@pytest.mark.parametrize("threads", [1, 2])
def test_a_pointwise_convolution_of_small_images_runs_every_pixel_as_one_vector(sizes, kind, threads):
    k = compiler.parse(POINTWISE).kernel()
    b = bind(k, sizes)
    ins = random_inputs(k, b, seed=7)
    nk = compile_cpu(k, b, CPU, threads=threads)
    [p] = nk.plans
    assert (bool(p.im2col), bool(p.merged)) == (kind == "im2col", kind == "merged")
    ok, _, per = compare(nk(ins), ir.interp.run(k, ins, b.sizes))
    assert ok, per


@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 20), H=st.integers(1, 9), W=st.integers(1, 40), F=st.integers(1, 30),
       threads=st.integers(1, 3), mr=st.integers(1, 14), nv=st.integers(1, 4), kc=st.integers(1, 20),
       ncs=st.integers(1, 5), pack_a=st.booleans(), pack_b=st.booleans())
def test_merged_rows_with_any_blocking_and_thread_split_are_correct(N, C, H, W, F, threads, mr, nv, kc, ncs,
                                                                   pack_a, pack_b):
    k = compiler.parse(POINTWISE).kernel()
    b = bind(k, dict(N=N, C=C, H=H, W=W, F=F))
    bl = dict(mr=mr, nv=nv, kc=kc, mc=mr * 2, nc=16 * nv * ncs, pack_a=pack_a, pack_b=pack_b)
    nk = compile_cpu(k, b, CPU, threads=threads, blocking=bl)
    ins = random_inputs(k, b, seed=kc)
    ok, _, per = compare(nk(ins), ir.interp.run(k, ins, b.sizes))
    assert ok, per


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 20), H=st.integers(2, 12), W=st.integers(2, 40), F=st.integers(1, 30),
       R=st.integers(1, 4), S=st.integers(2, 4), threads=st.integers(1, 3), mr=st.integers(1, 14),
       nv=st.integers(1, 4), kc=st.integers(1, 20), mcs=st.integers(1, 3), ncs=st.integers(1, 5),
       pack_a=st.booleans(), pack_b=st.booleans(), fold=st.booleans())
def test_padded_convolutions_with_any_blocking_and_thread_split_are_correct(N, C, H, W, F, R, S, threads, mr, nv, kc,
                                                                           mcs, ncs, pack_a, pack_b, fold):
    """Column blocks of any width (the compaction of a block that ends inside an output row, or
    inside the overlap), any tiles, both packings, threads over batches, rows or columns."""
    R, S = min(R, H), min(S, W)
    bl = dict(mr=mr, nv=nv, kc=kc, mc=mr * mcs, nc=16 * nv * ncs, pack_a=pack_a, pack_b=pack_b)
    _conv(dict(N=N, C=C, H=H, W=W, F=F, R=R, S=S), threads, bl, fold)


CONV_RESIDUAL = """def conv_residual(float(N, C, H, W) I, float(F, C, R, S) Wt, float(N, F, P, Q) X) -> (O) {
    O(n, f, h, w) +=! I(n, c, h + r, w + s) * Wt(f, c, r, s)
    O(n, f, h, w) = fmax(O(n, f, h, w) + X(n, f, h, w), 0)
}
"""
BATCHED_RELU = """def bmm_relu(float(Q, M, K) A, float(Q, K, N) B) -> (C) {
    C(q, m, n) +=! A(q, m, k) * B(q, k, n)
    C(q, m, n) = fmax(C(q, m, n), 0)
}
"""


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["conv2d_bias_relu", "residual", "batched"]), N=st.integers(1, 3), C=st.integers(1, 20),
       H=st.integers(2, 12), W=st.integers(2, 40), F=st.integers(1, 30), R=st.integers(1, 4), S=st.integers(1, 4),
       threads=st.integers(1, 3), mr=st.integers(1, 14), nv=st.integers(1, 4), kc=st.integers(1, 20),
       mcs=st.integers(1, 3), ncs=st.integers(1, 5), pack_a=st.booleans(), pack_b=st.booleans())
def test_epilogues_of_batched_and_padded_plans_under_any_blocking(kind, N, C, H, W, F, R, S, threads, mr, nv, kc,
                                                                  mcs, ncs, pack_a, pack_b):
    """A layer's bias and ReLU (or a residual) fused into a convolution with batch loops: on a
    padded plan, run on each output row's part as the scratch C is compacted (any column block,
    ending inside a row or its overlap); on a batched GEMM, on each tile with the batch
    variables passed; any tiles, packings and thread split."""
    R, S = min(R, H), min(S, W)
    bl = dict(mr=mr, nv=nv, kc=kc, mc=mr * mcs, nc=16 * nv * ncs, pack_a=pack_a, pack_b=pack_b)
    if kind == "batched":
        nk = _checked(BATCHED_RELU, dict(Q=N, M=F, K=C, N=W), threads, bl, seed=kc)
    else:
        sizes = dict(N=N, C=C, H=H, W=W, F=F, R=R, S=S)
        if kind == "residual":
            sizes.update(P=H - R + 1, Q=W - S + 1)
        nk = _conv(sizes, threads, bl, kernel=CONV_RESIDUAL if kind == "residual" else kind)
    [p] = nk.plans
    assert p.epilogue == (1,) or p.merged or p.im2col, p.describe()  # (plans that run it apart)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_nhwc_convolution_is_one_gemm_over_every_output_pixel(threads):
    """O(n, h, w, f) +=! I(n, h + r, w + s, c) * Wt(r, s, c, f) vectorised along f: O holds its
    pixels one after another, F apart, so every output pixel is a row of one GEMM; I's rows
    (W long, O's Wo) are packed through each pixel's address, and the filter's (r, s, c) order
    folds the taps into K.  I is read in place through each tile row's address and the K table
    (or, with ``pack_a``, packed through them).  No batch loop, nothing computed twice."""
    sizes = dict(N=2, C=32, H=8, W=9, F=40, R=3, S=2)
    [p] = _conv(sizes, threads, kernel="conv2d_nhwc").plans
    Ho, Wo = 6, 8
    assert (p.row, p.vec, p.red, p.batch, p.taps) == ("(n,h,w)", "f", "(r,s,c)", (), ())
    assert p.rows == (("n", "h", "w"), (2, Ho, Wo), (8 * 9 * 32, 9 * 32, 32), (Ho * Wo * 40, Wo * 40, 40))
    assert p.gathers_a() and not p.gathers_c()
    assert p.kfold == (("r", "s", "c"), (3, 2, 32), (9 * 32, 32, 1), "I") and p.tables("I") and not p.tables("Wt")
    assert not p.blocking.pack_a and p.blocking.mr <= 8 and p.dom["(n,h,w)"] == (0, 2 * Ho * Wo)
    assert p.flops() == 2 * prod(sizes[x] for x in "NFCRS") * Ho * Wo
    assert "(I read through each row's address)" in p.describe()
    packed = _conv(sizes, threads, dict(pack_a=True), kernel="conv2d_nhwc").plans[0]
    assert "(I packed through each row's address)" in packed.describe()


@pytest.mark.parametrize("kernel", ["conv2d", "conv2d_bias_relu"])
def test_an_nchw_convolution_with_short_rows_is_one_gemm_along_its_channels(kernel):
    """NCHW with output rows shorter than the unit-stride orientation's tiles (padded rows or
    im2col there), K deep and F wide: vectorised along f instead, every output pixel a row of
    one GEMM, I read in place through each tile row's address and the K table of (c, r, s), O's
    rows stored through their addresses (element by element: its f is strided); a fused bias
    and ReLU runs over each row block's runs of pixels."""
    sizes = dict(N=2, C=32, H=10, W=10, F=64, R=3, S=3)  # K = 288, F = 4 vectors
    [p] = _conv(sizes, 2, kernel=kernel).plans
    assert p.epilogue == ((1,) if kernel == "conv2d_bias_relu" else ())
    assert (p.row, p.vec, p.red, p.batch, p.taps) == ("(n,h,w)", "f", "(c,r,s)", (), ())
    assert p.gathers_a() and p.gathers_c() and p.tables("I") and not p.blocking.pack_a
    assert p.rows == (("n", "h", "w"), (2, 8, 8), (32 * 100, 10, 1), (64 * 64, 8, 1))
    assert p.strides["O"]["f"] == 64 and not p.splits_k()


STRIDED = """def s2(float(N, C, H, W) I, float(F, C, R, S) Wt) -> (O) {
    O(n, f, h, w) +=! I(n, c, 2 * h + r, 2 * w + s) * Wt(f, c, r, s) where h in 0:(H - R) / 2 + 1, w in 0:(W - S) / 2 + 1
}
"""
CONV1D = """def c1(float(N, C, L) I, float(F, C, S) Wt) -> (O) {
    O(n, f, l) +=! I(n, c, l + s) * Wt(f, c, s) where l in 0:L - S + 1
}
"""


@pytest.mark.parametrize("src,sizes,one", [
    (STRIDED, dict(N=2, C=32, H=15, W=15, F=64, R=3, S=3), True),  # I strided along w: B packed through the stride
    (CONV1D, dict(N=2, C=128, L=40, F=64, S=3), True),  # 38 of 48 lanes
    (CONV1D, dict(N=2, C=128, L=162, F=64, S=3), False),  # 160 wide: whole vectors read in place
])
def test_a_convolution_whose_rows_waste_lanes_or_loads_is_one_gemm(src, sizes, one):
    """Beyond padded and im2col plans: a strided convolution, or rows leaving SHORT_ROW_WASTE of
    their last vector empty, run as one GEMM along the output channels; whole rows of whole
    vectors read in place keep the unit-stride plan."""
    [p] = _checked(src, sizes, 2).plans
    assert (p.vec == "f" and bool(p.rows) and not p.batch) == one, p.describe()


LINEAR3 = """def linear3(float(B, T, K) X, float(K, N) W) -> (Y) {
    Y(b, t, n) +=! X(b, t, k) * W(k, n)
    Y(b, t, n) = fmax(Y(b, t, n), 0)
}
"""


def test_rows_every_operand_holds_one_after_another_run_together_in_place():
    """A linear layer over (batch, time) rows: X and Y both hold them one after another, so they
    run as one row variable with one stride, X read in place (no gather), the ReLU fused."""
    [p] = _checked(LINEAR3, dict(B=3, T=5, K=40, N=33)).plans
    assert p.row == "(b,t)" and p.rows == (("b", "t"), (3, 5), (5 * 40, 40), (5 * 33, 33)) and not p.gathers_a()
    assert p.epilogue == (1,) and p.strides["X"]["(b,t)"] == 40


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["conv2d_nhwc", "conv2d_nhwc_bias_relu", "linear3", "conv2d", "conv2d_bias_relu",
                             "pointwise_conv2d"]),
       N=st.integers(1, 3),
       C=st.sampled_from([1, 2, 3, 5, 7, 13, 16, 20, 32, 48]), H=st.integers(1, 9), W=st.integers(1, 12),
       F=st.integers(1, 40), R=st.integers(1, 3), S=st.integers(1, 3), threads=st.integers(1, 3),
       mr=st.integers(1, 14), nv=st.integers(1, 4), kc=st.sampled_from([1, 3, 7, 16, 20, 32, 48]),
       mcs=st.integers(1, 3), ncs=st.integers(1, 3), pack_a=st.booleans(), pack_b=st.booleans(),
       split_k=st.booleans(), fold=st.booleans())
def test_rows_run_together_under_any_blocking(kind, N, C, H, W, F, R, S, threads, mr, nv, kc, mcs, ncs, pack_a,
                                              pack_b, split_k, fold):
    """Gathered rows (an NHWC convolution, with and without its bias and ReLU fused, the taps
    folded into K or as passes; NCHW and pointwise ones along f, C's rows stored through their
    addresses, A read or packed through each row's)
    and rows in place (LINEAR3): any tiles, K blocks (whole vectors
    of one tap's channels or not: the packing's vector and element paths), column blocks,
    thread split and split K, A packed or read in place through each row's address; the epilogue
    runs on each run of a tile's rows within an image row."""
    R, S = min(R, H), min(S, W)
    bl = dict(mr=mr, nv=nv, kc=kc, mc=mr * mcs, nc=16 * nv * ncs, pack_a=pack_a, pack_b=pack_b, split_k=split_k)
    from compiler.backends.llvm import plan
    if kind == "linear3":
        nk = _checked(LINEAR3, dict(B=N, T=H, K=C, N=F), threads, bl, seed=kc)
    else:
        with pytest.MonkeyPatch.context() as mp:  # NCHW: one GEMM wherever the rows are short or im2col'd
            for knob in ("ONE_GEMM_K", "ONE_GEMM_VECTORS", "IM2COL_ROWS"):
                mp.setattr(plan, knob, 0)
            sizes = dict(N=N, C=C, H=H, W=W, F=F, **({} if kind.startswith("pointwise") else dict(R=R, S=S)))
            nk = _conv(sizes, threads, bl, fold, kernel=kind)
    [p] = nk.plans
    if kind.endswith("relu") and not (p.taps or p.im2col or p.merged):  # (plans that run it apart)
        assert p.epilogue == (1,), p.describe()


@settings(max_examples=20, deadline=None)
@given(threads=st.integers(1, 3), mr=st.integers(1, 9), mcs=st.integers(1, 4), mc_extra=st.integers(0, 5),
       kc=st.integers(1, 40), split_k=st.booleans(), shared=st.booleans())
def test_an_a_shared_by_the_batch_loops_is_packed_once_under_any_blocking(threads, mr, mcs, mc_extra, kc,
                                                                          split_k, shared):
    """The whole packed A (every tap, the call's rows in MC blocks, its K range) is addressed
    right for any MC (a multiple of MR or not), K blocks, thread split and split K."""
    bl = dict(mr=mr, nv=1, kc=kc, mc=mr * mcs + mc_extra, pack_a=True, split_k=split_k)
    if shared:  # one weight for every batch: C(q, m, n) +=! A(m, k) * B(q, k, n)
        src = "def f(float(M, K) A, float(Q, K, N) B) -> (C) { C(q, m, n) +=! A(m, k) * B(q, k, n) }"
        k = compiler.parse(src).kernel()
        b = bind(k, dict(M=23, K=37, Q=3, N=20))
        nk = compile_cpu(k, b, CPU, threads=threads, blocking=bl)
        ins = random_inputs(k, b, seed=kc)
        ok, err, per = compare(nk(ins), ir.interp.run(k, ins, b.sizes))
        assert ok, per
    else:
        nk = _conv(dict(N=2, C=13, H=7, W=21, F=19, R=2, S=3), threads, bl)
    assert nk.plans[0].prepacks_a()


def test_affine_indices_have_summed_strides():
    from compiler.backends.access import element_strides
    k = compiler.parse(kernels.path("conv2d")).kernel()
    b = bind(k, dict(N=2, C=3, H=9, W=8, F=4, R=2, S=3))
    s = k.stmts[0]
    acc = {"I": list(s.rhs.a.indices), "Wt": list(s.rhs.b.indices)}
    assert element_strides(b, acc) is None  # plain variables only, unless asked
    strides, base, uses = element_strides(b, acc, affine=True)
    assert strides["I"] == {"n": 3 * 9 * 8, "c": 9 * 8, "h": 8, "r": 8, "w": 1, "s": 1}
    assert base["I"] == 0 and uses["I"] == {"n", "c", "h", "r", "w", "s"}
    shifted = compiler.parse("""def f(float(N) A) -> (B) { B(i) +=! A(2 * i + j + 1) where i in 0:3, j in 0:2 }""").kernel()
    bs = bind(shifted, dict(N=9))
    st2, base2, _ = element_strides(bs, {"A": list(shifted.stmts[0].rhs.indices)}, affine=True)
    assert st2["A"] == {"i": 2, "j": 1} and base2["A"] == 1


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 20), H=st.integers(1, 12), W=st.integers(1, 40), F=st.integers(1, 30),
       R=st.integers(1, 4), S=st.integers(1, 4), threads=st.integers(1, 3), mr=st.integers(1, 14),
       nv=st.integers(1, 3), kc=st.integers(1, 20), pack_a=st.booleans(), pack_b=st.booleans(), fold=st.booleans())
def test_convolutions_with_any_blocking_and_thread_split_are_correct(N, C, H, W, F, R, S, threads, mr, nv, kc,
                                                                    pack_a, pack_b, fold):
    R, S = min(R, H), min(S, W)
    bl = dict(mr=mr, nv=nv, kc=kc, mc=mr * 2, nc=16 * nv, pack_a=pack_a, pack_b=pack_b)
    _conv(dict(N=N, C=C, H=H, W=W, F=F, R=R, S=S), threads, bl, fold)


def test_taps_stay_together_when_threads_split():
    """Every part takes whole groups of taps (they accumulate into the same rows of C), over
    batches when there are enough of them, else over rows or columns."""
    for sizes in (dict(N=4, C=64, H=20, W=64, F=64, R=3, S=3), dict(N=1, C=256, H=3, W=200, F=256, R=3, S=3)):
        p = _conv(sizes, threads=2, fold=False).plans[0]
        T = sizes["R"] * sizes["S"]
        parts = split_contraction(p, 2)
        assert len(parts) == 2
        assert all(q0 % T == 0 and q1 % T == 0 and q1 > q0 for q0, q1, *_ in parts)


@settings(max_examples=25, deadline=None)
@given(M=st.integers(16, 130), N=st.integers(1, 15), K=st.integers(1, 90), threads=st.integers(1, 3),
       mr=st.integers(1, 9), nv=st.integers(1, 3), kc=st.integers(1, 40), pack_a=st.booleans(),
       pack_b=st.booleans())
def test_a_narrow_tn_gemm_runs_its_vector_along_m_and_is_correct(M, N, K, threads, mr, nv, kc, pack_a, pack_b):
    """C(m, n) +=! A(k, m) * B(k, n) with N below a vector: 16 values of m at a time from A's
    rows, C's tiles gathered and scattered element by element, under any blocking."""
    nk, out, ref = _gemm("gemm_tn", M, N, K, threads)
    p = nk.plans[0]
    assert (p.vec, p.row, p.a, p.b) == ("m", "n", "B", "A") and p.strides["C"]["m"] == N and not p.streams()
    assert np.allclose(out, ref, atol=1e-4 * K, rtol=1e-4)
    bl = dict(mr=mr, nv=nv, kc=kc, mc=mr * 2, nc=16 * nv * 3, pack_a=pack_a, pack_b=pack_b)
    nk, out, ref = _gemm("gemm_tn", M, N, K, threads, blocking=bl)
    assert np.allclose(out, ref, atol=1e-4 * K, rtol=1e-4), bl


@pytest.mark.parametrize("M,N,K,threads,vec", [
    (512, 8, 5000, 2, "m"),   # B from memory: K split across threads, partial sums added
    (40, 24, 220000, 2, "m"),  # a tall A (K >= 16 M, 35 MB) read along its rows
    (40, 24, 600, 1, "n"),    # not tall enough: the vector along n, whole-vector stores
    (35, 100, 1760, 2, "n"),  # tall but small (a 35 x 8457 TN row's A stays in cache)
    (64, 16, 64, 2, "n"),     # a full vector along n: unchanged
])
def test_tn_orientation_follows_n_and_the_height_of_a(M, N, K, threads, vec):
    nk, out, ref = _gemm("gemm_tn", M, N, K, threads)
    assert nk.plans[0].vec == vec, nk.plans[0].describe()
    assert np.allclose(out, ref, atol=1e-4 * K, rtol=1e-4)


def test_a_transposed_output_tile_runs_its_fused_epilogue():
    src = """def f(float(K, M) A, float(K, N) B, float(N) bias) -> (C, D) {
        C(m, n) +=! A(k, m) * B(k, n)
        D(m, n) = fmax(C(m, n) + bias(n), 0.0)
    }"""
    k = compiler.parse(src).kernel()
    ck = compiler.build(k, target="cpu", sizes=dict(M=53, N=5, K=77))
    assert ck.native.plans[0].vec == "m"
    ins = random_inputs(ck.kernel, ck.bound, seed=3)
    ok, err, per = compare(ck.run_all(**ins), ir.interp.run(k, ins, ck.sizes))
    assert ok, per


def test_a_tn_a_beyond_the_cache_is_packed_with_the_in_place_tiles():
    """A(k, m) of more than STRIDED_A_BYTES is packed (read once along its rows, not a line
    per k step from memory), keeping the tiles and blocks of an A read in place."""
    from compiler.backends.llvm.plan import STRIDED_A_BYTES
    t = _with_caches(CPU, 48 << 10, 2 << 20)
    small = Blocking.for_target(t, 16, "zmm", 2560, 64, 2560, 2, a_row_stride=0)
    big = Blocking.for_target(t, 16, "zmm", 7680, 64, 2560, 2, a_row_stride=0)
    assert 2560 * 2560 * 4 < STRIDED_A_BYTES < 7680 * 2560 * 4
    assert not small.pack_a and big.pack_a and (big.mr, big.nv, big.kc) == (small.mr, small.nv, small.kc)
    nk, out, ref = _gemm("gemm_tn", 4100, 21, 2100, threads=2)  # 34 MB of A; ragged tiles
    assert nk.plans[0].blocking.pack_a and nk.plans[0].vec == "n"
    assert np.allclose(out, ref, atol=1e-4 * 2100, rtol=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_few_rows_over_a_b_from_memory_take_two_tiles_and_split_k(threads):
    """15 rows (a narrow TN GEMM turned round) over a B bigger than a quarter of L3: two row
    tiles two vectors wide, K blocks of 32, the threads splitting K; correct with ragged edges."""
    from dataclasses import replace
    l3 = cache_levels(CPU)[2].name
    small_l3 = replace(CPU, memories=tuple(replace(m, capacity=1 << 20) if m.name == l3 else m for m in CPU.memories))
    bl = Blocking.for_target(small_l3, 16, "zmm", 15, 150, 3000, 2)
    assert (bl.mr, bl.nv, bl.kc, bl.split_k) == (8, 2, 32, True)
    nk, out, ref = _gemm("gemm_tn", 150, 15, 3001, threads, target=small_l3)  # N < 16: turned round
    p = nk.plans[0]
    assert p.vec == "m" and (p.blocking.mr, p.blocking.nv, p.blocking.split_k) == (8, 2, threads > 1)
    assert np.allclose(out, ref, atol=1e-4 * 3001, rtol=1e-4)


@pytest.mark.parametrize("N,widths", [(100, [2, 1]), (96, [2]), (120, [2]), (111, [2, 1])])
def test_the_ragged_last_tile_takes_a_micro_kernel_only_as_wide_as_it_needs(N, widths):
    """N = 100 in 32-wide tiles: three whole tiles and 4 columns, which take a one-vector
    micro-kernel (no FMAs on lanes past C's end), as do 111's last 15; 96 has no ragged tile,
    and 120's last 24 columns need both vectors."""
    import re
    k = compiler.parse(kernels.path("gemm")).kernel()
    b = bind(k, dict(M=64, N=N, K=64))
    nk = compile_cpu(k, b, CPU, blocking=dict(nv=2, pack_a=True, pack_b=True))
    text = nk.llvm_ir
    defs = re.findall(r'define internal void @"(s0_micro_\d+)"', text)
    fmas = [text.split(f'@"{d}"(float* noalias')[1].split("\n}\n")[0].count('@"llvm.fma.v16f32"') for d in defs]
    mr = nk.plans[0].blocking.mr
    assert sorted(fmas, reverse=True) == [mr * w for w in widths]
    ins = random_inputs(k, b, seed=N)
    ok, _, per = compare(nk(ins), ir.interp.run(k, ins, b.sizes))
    assert ok, per


# ---- integer contractions (int8 operands, int32 C) on vdot2_i16

INT_LAYOUTS = {  # name -> (A's indices, B's indices, numpy reference on int64)
    "nn": ("A(m, k)", "B(k, n)", "(M, K)", "(K, N)", lambda A, B: A @ B),
    "tn": ("A(k, m)", "B(k, n)", "(K, M)", "(K, N)", lambda A, B: A.T @ B),
    "nt": ("A(m, k)", "B(n, k)", "(M, K)", "(N, K)", lambda A, B: A @ B.T),
}


def _cpu_without(*instrs: str):
    """The cpu target with these instructions left out (the variant of a host without them)."""
    import tempfile
    from pathlib import Path
    lines, out, skip = hw_models.resolve_path("cpu").read_text().splitlines(), [], False
    for line in lines:
        if any(line.strip().startswith(f"instr {i}(") for i in instrs):
            skip = True
            continue
        if skip:  # (the body's line)
            skip = False
            continue
        out.append(line)
    path = Path(tempfile.mkdtemp()) / f"cpu-no-{'-'.join(instrs)}.hw"
    path.write_text("\n".join(out) + "\n")
    return hw_models.load(str(path))


# the integer instructions: AMX tiles (tdpbssd, on hosts with AMX-INT8), fours of bytes
# (vpdpbusd, AVX512-VNNI) and pairs of int16 (vpmaddwd: every AVX-512 host); the targets of
# hosts without the first, and without the first two
INT_TARGETS = {"tiles": CPU, "fours": _cpu_without("tdp_i8"), "pairs": _cpu_without("tdp_i8", "vdot4_i8"),
               "avx2": hw_models.load("cpu-avx2")}  # (8 lanes: vpmaddwd on ymm, from its .hw file alone)
HAS = {"tdp_i8": {"amxtile", "amxint8"}, "vdot4_i8": {"avx512vnni"}, "tdp_bf16": {"amxtile", "amxbf16"}}


def _first_on_host(*instrs: str) -> str:
    """The first of these instructions the host runs (the last is the fallback every host has)."""
    return next(i for i in instrs if HAS.get(i, set()) <= host_features())


BF16_FMA = _cpu_without("tdp_bf16")
INT_EXPECTED = {"tiles": ("tdp_i8", "vdot4_i8", "vdot2_i16"), "fours": ("vdot4_i8", "vdot2_i16"), "pairs": ("vdot2_i16",),
                "avx2": ("vdot2_i16",)}


def _int_gemm(layout, M, N, K, threads=1, blocking=None, seed=0, lo=-128, hi=128, target="tiles"):
    """An int8 GEMM of ``layout`` compiled for the cpu, run on int8 values over [lo, hi), and
    the exact int64 product wrapped to int32 (the kernel's int32 sums wrap alike)."""
    a, bb, sa, sb, ref = INT_LAYOUTS[layout]
    src = (f"def g(int8{sa} A, int8{sb} B) -> (int32(M, N) C) {{ C(m, n) +=! int32({a}) * int32({bb}) }}")
    k = compiler.parse(src).kernel()
    b = bind(k, dict(M=M, N=N, K=K))
    nk = compile_cpu(k, b, INT_TARGETS[target], threads=threads, blocking=blocking)
    rng = np.random.default_rng(seed)
    A = rng.integers(lo, hi, b.shapes["A"]).astype(np.int8)
    B = rng.integers(lo, hi, b.shapes["B"]).astype(np.int8)
    return nk, nk({"A": A, "B": B})["C"], ref(A.astype(np.int64), B.astype(np.int64)).astype(np.int32)


@pytest.mark.parametrize("target", list(INT_TARGETS))
@pytest.mark.parametrize("layout", list(INT_LAYOUTS))
@pytest.mark.parametrize("M,N,K,threads", [(1, 1, 1, 1), (13, 17, 19, 2), (64, 64, 64, 1), (29, 100, 3, 2),
                                           (200, 8, 31, 1), (7, 33, 2, 2), (97, 130, 257, 2)])
def test_an_int8_gemm_runs_on_the_integer_dot_product(target, layout, M, N, K, threads):
    """``C +=! int32(A) * int32(B)`` on int8 A and B: the cpu target's tdp_i8 (AMX tiles:
    tdpbssd) where the host has AMX-INT8, else vdot4_i8 (four byte products per int32 lane:
    vpdpbusd, A's bytes offset to unsigned and each B panel's column sums correcting it) where
    it has AVX512-VNNI, else vdot2_i16 (a pair of int16 products: vpmaddwd) after the operands
    are widened into L1 (its fill_l1_i16); both operands packed as words of a group of k
    steps, K in groups (the last padded with zeros; to whole tiles for tdp_i8), exact in every
    layout and size.  It ran as scalar loops, 12-60x slower."""
    nk, out, ref = _int_gemm(layout, M, N, K, threads, target=target)
    assert out.dtype == np.int32 and np.array_equal(out, ref)
    if target == "avx2" and layout == "tn":  # (cpu-avx2.hw has no gathering copy into L1 for A(k, m): scalar)
        assert not nk.plans
        return
    [p] = nk.plans
    # (an output row narrower than a vector may turn the plan round onto another instruction; a
    # K shallower than a tile stays on vectors: ``plan._tiles_pay``)
    chain = tuple(i for i in INT_EXPECTED[target] if K >= 64 or i != "tdp_i8")
    assert p.instr == _first_on_host(*chain) or N < 16 and p.instr in chain
    g = 2 if p.instr == "vdot2_i16" else 4
    assert (p.form, p.group, p.dtypes) == ("tile" if p.instr == "tdp_i8" else "group", g, ("int8", "int8", "int32"))
    steps = -(-K // g)
    if p.form == "tile":
        assert p.tile == (16, 16, 16) and p.k_steps() == (0, -(-steps // 16) * 16) and "16 x 16 tiles" in p.describe()
    else:
        assert p.k_steps() == (0, steps) and f"each summing {g} steps of k" in p.describe()
    assert out.dtype == np.int32 and np.array_equal(out, ref)


@pytest.mark.parametrize("target", list(INT_TARGETS))
def test_extreme_int8_values_and_int32_sums_that_wrap(target):
    """-128 * -128 products (a pair's sum needs 16 bits and a sign: 32768; A's -128 is 0 when
    offset to unsigned) and sums past int32's range, which wrap as the reference's do."""
    for lo, hi in ((-128, -127), (127, 128), (-128, 128)):
        nk, out, ref = _int_gemm("nn", 3, 20, 9, lo=lo, hi=hi, target=target)
        assert np.array_equal(out, ref)
    K = (1 << 31) // 16384 + 6  # all -128: 16384 K passes 2^31
    nk, out, ref = _int_gemm("nn", 2, 16, K, threads=2, lo=-128, hi=-127, target=target)
    assert np.array_equal(out, ref) and out[0, 0] == np.int32(np.int64(16384 * K) - (1 << 32))


@settings(max_examples=25, deadline=None)
@given(layout=st.sampled_from(list(INT_LAYOUTS)), M=st.integers(1, 60), N=st.integers(1, 70), K=st.integers(1, 80),
       mr=st.integers(1, 14), nv=st.integers(1, 3), kc=st.integers(1, 50), mcs=st.integers(1, 4),
       ncs=st.integers(1, 3), threads=st.integers(1, 3), seed=st.integers(0, 99),
       target=st.sampled_from([t for t in INT_TARGETS if t != "avx2"]))
def test_integer_contraction_under_any_blocking(layout, M, N, K, mr, nv, kc, mcs, ncs, threads, seed, target):
    """K blocks of any number of pairs (an odd K's last block ending in a padded step), edge
    tiles, several row and column blocks, the vector packing paths and the element ones."""
    bl = dict(mr=mr, nv=nv, kc=kc, mc=mr * mcs, nc=16 * nv * ncs)
    nk, out, ref = _int_gemm(layout, M, N, K, threads, bl, seed, target=target)
    assert nk.plans[0].blocking.pack_a and nk.plans[0].blocking.pack_b  # (always packed: into words)
    assert np.array_equal(out, ref), bl


@pytest.mark.parametrize("kernel,sizes,threads", [
    ("conv2d_nhwc_i8", dict(N=2, H=9, W=7, C=19, R=3, S=2, F=33), 2),
    ("conv2d_nhwc_i8_bias_relu", dict(N=1, H=6, W=6, C=64, R=3, S=3, F=16), 1),
    ("def bmm(int8(Q, M, K) A, int8(Q, K, N) B) -> (int32(Q, M, N) C) "
     "{ C(q, m, n) +=! int32(A(q, m, k)) * int32(B(q, k, n)) }", dict(Q=3, M=10, K=21, N=40), 2),
    ("def acc(int8(M, K) A, int8(K, N) B, int32(M, N) C0) -> (int32(M, N) C) "
     "{ C(m, n) = C0(m, n)\n C(m, n) += int32(A(m, k)) * int32(B(k, n)) }", dict(M=20, N=24, K=5), 2)])
def test_integer_convolutions_batches_and_accumulation(kernel, sizes, threads):
    """Taps as passes over C (the channels the pairs), batch loops, a C added to (``+=``) and a
    scalar epilogue after an integer contraction, against the interpreter."""
    nk = _checked(kernel, sizes, threads)
    assert nk.plans[0].form in ("group", "tile") and nk.plans[0].red in ("c", "k", "(r,s,c)")


@settings(max_examples=20, deadline=None)
@given(kernel=st.sampled_from(["conv2d_nhwc_i8", "conv2d_nhwc_i8_bias_relu"]), n=st.integers(1, 3),
       r=st.integers(1, 3), s=st.sampled_from([1, 3]), h=st.integers(0, 9), w=st.integers(0, 9),
       c=st.sampled_from([1, 3, 16, 19, 64, 70]), f=st.sampled_from([1, 16, 33, 64]),
       target=st.sampled_from(["tiles", "fours", "pairs"]), threads=st.integers(1, 3),
       blocking=st.sampled_from([None, dict(kc=16, mc=32, nc=32), dict(kc=4, mc=64, nc=64), dict(kc=64, mc=96, nc=32)]))
def test_int8_convolutions_as_one_gemm_under_any_blocking(kernel, n, r, s, h, w, c, f, target, threads, blocking):
    """An NHWC int8 convolution as one GEMM (every output pixel a row, packed through its
    address; the taps folded into K, packed through the K table) on tiles, fours or pairs:
    channels that fill whole vectors or tiles take the vector packing, others element by
    element (a group of K steps may span two taps), any blocking, the epilogue fused."""
    sizes = dict(N=n, H=h + r, W=w + s, C=c, R=r, S=s, F=f)
    nk = _checked(kernel, sizes, threads, blocking, target=INT_TARGETS[target])
    assert nk.plans[0].form in ("group", "tile")


def test_an_int8_convolution_runs_as_one_gemm_on_tiles_where_its_channels_fill_them():
    nk = _checked("conv2d_nhwc_i8_bias_relu", dict(N=2, H=8, W=9, C=64, R=3, S=3, F=32))
    p = nk.plans[0]
    assert p.rows and p.kfold and not p.taps and p.epilogue == (1,)
    assert p.instr == _first_on_host("tdp_i8", "vdot4_i8", "vdot2_i16")
    nk = _checked("conv2d_nhwc_i8", dict(N=2, H=8, W=9, C=20, R=3, S=3, F=32))  # (20 channels: vectors)
    assert nk.plans[0].instr != "tdp_i8" and nk.plans[0].kfold


BF16 = {  # bfloat16 GEMMs in every layout, batched, with an epilogue (fused on the tiles)
    "tn": ("def g(bfloat16(K, M) A, bfloat16(K, N) B) -> (C) { C(m, n) +=! float(A(k, m)) * float(B(k, n)) }",
           dict(M=37, N=50, K=70)),
    "nt": ("def g(bfloat16(M, K) A, bfloat16(N, K) B) -> (C) { C(m, n) +=! float(A(m, k)) * float(B(n, k)) }",
           dict(M=64, N=33, K=33)),
    "bmm": ("def g(bfloat16(Q, M, K) A, bfloat16(Q, K, N) B) -> (C) { C(q, m, n) +=! float(A(q, m, k)) * float(B(q, k, n)) }",
            dict(Q=3, M=20, N=40, K=45)),
    "layer": ("def g(bfloat16(M, K) A, bfloat16(K, N) B, float(N) Bias) -> (C) {\n"
              "  C(m, n) +=! float(A(m, k)) * float(B(k, n))\n  C(m, n) = fmax(C(m, n) + Bias(n), 0)\n}",
              dict(M=70, N=96, K=100)),
}


@pytest.mark.parametrize("name", list(BF16))
@pytest.mark.parametrize("threads", [1, 2])
def test_bfloat16_tiles_in_every_layout_batched_and_with_an_epilogue(name, threads):
    """A and B packed from any layout (A's rows as words along K, B's K pairs side by side),
    batch loops over the tile driver, and a bias + ReLU fused onto each finished 32 x 32 block."""
    src, sizes = BF16[name]
    nk = _checked(src, sizes, threads)
    p = nk.plans[0]
    assert p.instr == _first_on_host("tdp_bf16", "vfma_bcast")
    if name == "layer":
        assert p.epilogue == (1,)


@settings(max_examples=15, deadline=None)
@given(M=st.integers(1, 80), N=st.integers(1, 80), K=st.integers(1, 90), kc=st.integers(1, 80),
       mcs=st.integers(1, 3), ncs=st.integers(1, 3), threads=st.integers(1, 3), seed=st.integers(0, 99))
def test_bfloat16_tiles_under_any_blocking(M, N, K, kc, mcs, ncs, threads, seed):
    """K blocks of whole tiles (any KC rounds up to one), edge blocks, several A and B blocks."""
    nk = _checked("gemm_bf16", dict(M=M, N=N, K=K), threads, dict(kc=kc, mc=32 * mcs, nc=32 * ncs), seed)
    if nk.plans[0].form == "tile":
        assert nk.plans[0].blocking.kc % 16 == 0 and nk.plans[0].blocking.mr == 32
