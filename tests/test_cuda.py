"""The cuda target: generated CUDA C compiles with nvcc for sm_80/sm_90; runs where a GPU exists."""
import shutil
import subprocess

import numpy as np
import pytest

import compiler
import hw_models
import ir.interp
import kernels
from compiler import cli
from compiler.backends.cuda import cuda_source
from compiler.backends.cuda.runtime import compile_source, gencode, gpu_present
from compiler.backends.cuda.gemm import tiles_header
from compiler.backends.cuda.scalar import PRELUDE
from compiler.checking import compare, random_inputs
from ir.bind import bind

from helpers import sizes_for

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


@needs_nvcc
def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path):
    parts = [PRELUDE, tiles_header()]
    t = hw_models.load("cuda")
    for name in kernels.names():
        k = compiler.parse(kernels.path(name)).kernel()
        parts.append(cuda_source(k, bind(k, sizes_for(k, 7)), prefix=f"{name}_", prelude=False, t=t))
    cu = tmp_path / "all.cu"
    cu.write_text("\n".join(parts))
    r = subprocess.run(["nvcc", "-c", "-o", str(tmp_path / "all.o")] + gencode("80") + gencode("90") + [str(cu)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@needs_nvcc
def test_block_reductions_compile(tmp_path):
    parts = [PRELUDE, tiles_header()]
    for name, sizes in (("softmax", dict(N=5, D=999)), ("layernorm", dict(N=3, D=700)), ("gemm_i8", dict(M=2, N=3, K=5000))):
        k = compiler.parse(kernels.path(name)).kernel()
        src = cuda_source(k, bind(k, sizes), prefix=f"{name}_", prelude=False, t=hw_models.load("cuda"))
        assert "__shared__" in src and "part[threadIdx.x + w]" in src
        parts.append(src)
    cu = tmp_path / "red.cu"
    cu.write_text("\n".join(parts))
    r = subprocess.run(["nvcc", "-c", "-o", str(tmp_path / "red.o")] + gencode("80") + [str(cu)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@needs_nvcc
def test_host_library_links(tmp_path, monkeypatch):
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path))
    k = compiler.parse(kernels.path("gemm")).kernel()
    so = compile_source(cuda_source(k, bind(k, dict(M=8, N=8, K=8))), archs=("80",))
    assert so.exists() and so.suffix == ".so"


def test_emit_cuda_anywhere(capsys):
    assert cli.main(["compile", "kernels/gemm.tc", "--target", "cuda", "--sizes", "M=4,N=4,K=4",
                     "--emit", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "isamap::FmaTile<" in out and " s0(" in out and 'extern "C" int isamap_run' in out


@pytest.mark.skipif(gpu_present(), reason="a GPU is present")
def test_running_without_a_gpu_is_a_clear_error():
    ck = compiler.build(kernels.path("gemm"), target="cuda", sizes=dict(M=4, N=4, K=4))
    with pytest.raises(compiler.IsamapError, match="no NVIDIA GPU"):
        ck(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("name", kernels.names())
def test_every_kernel_on_the_gpu(name):
    k = compiler.parse(kernels.path(name)).kernel()
    for base in (8, 7, 1):
        ck = compiler.build(k, target="cuda", sizes=sizes_for(k, base))
        ins = random_inputs(ck.kernel, ck.bound, seed=base)
        ok, err, per = compare(ck.run_all(**ins), ir.interp.run(k, ins, ck.sizes))
        assert ok, (name, base, per)


def _plans(src_or_name, sizes, target="cuda"):
    from compiler.backends.cuda.scalar import plans
    k = compiler.parse(kernels.path(src_or_name) if src_or_name in kernels.names() else src_or_name).kernel()
    return plans(k, bind(k, sizes), hw_models.load(target))


@pytest.mark.parametrize("it,instr", [("half", "mma_16816"), ("bfloat16", "mma_16816_bf16"), ("float", "ffma_bcast")])
@pytest.mark.parametrize("a_t,b_t", [(False, False), (True, False), (False, True), (True, True)])
def test_contractions_map_to_the_matrix_instruction_in_every_layout(it, instr, a_t, b_t):
    from compiler.bench.gemm import gemm_source
    (p,) = _plans(gemm_source(it, "float", a_t, b_t), dict(M=100, N=37, K=24)).values()
    assert p.instr == instr and (p.row, p.col, p.red) == ("m", "n", "k")
    assert p.a_kmajor == (not a_t) and p.b_kmajor == b_t
    assert p.tiling.tensor_cores == (it != "float")


def test_integer_gemms_and_reductions_without_products_stay_scalar():
    assert _plans("gemm_i8", dict(M=16, N=16, K=16)) == {}
    assert _plans("softmax", {s: 9 for s in compiler.parse(kernels.path("softmax")).kernel().sizes}) == {}


def test_gate_math_rides_on_the_recurrent_gemms_unless_split():
    ps = _plans("gru_step", dict(B=64, Hd=256))
    assert sorted(ps) == [0, 2, 4]
    for si, p in ps.items():
        assert p.epilogue == (() if p.tiling.splits > 1 else {0: (1,), 2: (3,), 4: (5, 6)}[si])


def test_copy_width_follows_the_alignment_of_each_operand():
    from compiler.backends.cuda.gemm import _vector_width
    from compiler.bench.gemm import gemm_source
    src = gemm_source("half", "float", False, False)
    for n, width in ((2048, 8), (9124, 4), (5482, 2), (7133, 1)):
        (p,) = _plans(src, dict(M=64, N=n, K=64)).values()
        assert _vector_width(p, p.b, 2) == width  # B(k, n): its row stride is N


def test_tiling_model_splits_the_reduction_only_where_cores_would_idle():
    from compiler.bench.gemm import gemm_source
    src = gemm_source("half", "float", False, False)
    (small,) = _plans(src, dict(M=1760, N=16, K=1760)).values()
    (big,) = _plans(src, dict(M=4096, N=4096, K=4096)).values()
    assert small.tiling.splits > 1 and big.tiling.splits == 1
    assert (big.tiling.wm, big.tiling.wn) == (64, 64)
    smem = hw_models.load("cuda").memory("smem").capacity
    assert big.tiling.smem_bytes(2, True, False) <= smem


@needs_nvcc
def test_tiled_variants_compile(tmp_path):
    """Every dtype x layout with awkward sizes (remainders, unaligned rows, split-K), one nvcc run."""
    from compiler.backends.cuda.gemm import with_tiling
    from compiler.backends.cuda.scalar import plans
    from compiler.bench.gemm import gemm_source
    from schedulers.gpu_tiles import GpuTiling
    t, h100 = hw_models.load("cuda"), hw_models.load("cuda-h100-wgmma")
    parts = [PRELUDE, tiles_header()]
    i = 0
    for it in ("half", "bfloat16", "float"):
        for a_t in (False, True):
            for b_t in (False, True):
                for m, n, k in ((7, 5, 3), (1760, 16, 1760), (129, 131, 257)):
                    kern = compiler.parse(gemm_source(it, "float", a_t, b_t)).kernel()
                    parts.append(cuda_source(kern, bind(kern, dict(M=m, N=n, K=k)), prefix=f"v{i}_", prelude=False, t=t))
                    i += 1
                if it != "float":  # Hopper's wgmma path (cuda-h100-wgmma), aligned and ragged
                    for m, n, k in ((4096, 4096, 4096), (2000, 1032, 520)):
                        kern = compiler.parse(gemm_source(it, "float", a_t, b_t)).kernel()
                        b = bind(kern, dict(M=m, N=n, K=k))
                        assert _plans(gemm_source(it, "float", a_t, b_t), dict(M=m, N=n, K=k),
                                      "cuda-h100-wgmma")[0].tiling.wgmma
                        parts.append(cuda_source(kern, b, prefix=f"v{i}_", prelude=False, t=h100))
                        i += 1
                    (p,) = plans(kern, b, h100).values()  # and the wgmma tile every thread feeds
                    p = with_tiling(p, h100, GpuTiling(128, 128, 64, 64, 128, 4, 1, 0.0, True, False))
                    parts.append(cuda_source(kern, b, prefix=f"v{i}_", prelude=False, t=h100, gemm={0: p}))
                    i += 1
    cu = tmp_path / "variants.cu"
    cu.write_text("\n".join(parts))
    r = subprocess.run(["nvcc", "-c", "-o", str(tmp_path / "v.o")] + gencode("90") + [str(cu)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 9000), n=st.integers(1, 9000), k=st.integers(1, 600000), batch=st.integers(1, 8),
       tc=st.booleans(), target=st.sampled_from(["cuda", "cuda-h100", "cuda-h100-wgmma"]))
def test_every_tiling_the_model_picks_is_launchable(m, n, k, batch, tc, target):
    """Whatever the shape: the blocks tile the output, the splits cover the reduction in
    BK-aligned chunks (so 16-byte copies stay aligned), and the block fits the SM."""
    from schedulers.gpu_tiles import choose
    t = hw_models.load(target)
    tl = choose(t, m, n, k, batch, 2 if tc else 4, tc, True, 1024.0 if tc else 128.0)
    assert tl.tensor_cores == tc and tl.bm % tl.wm == 0 and tl.bn % tl.wn == 0
    assert 1 <= tl.threads <= 1024
    assert tl.smem_bytes(2 if tc else 4) <= t.memory("smem").capacity
    kc = -(-(-(-k // tl.splits)) // tl.bk) * tl.bk
    assert kc % tl.bk == 0 and kc * tl.splits >= k and (tl.splits - 1) * kc < k  # no split is empty
    assert batch * tl.splits <= 65535  # gridDim.z


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 9000), n=st.integers(1, 9000), k=st.integers(1, 60000), batch=st.integers(1, 8),
       tma=st.booleans())
def test_every_wgmma_tiling_the_model_picks_is_launchable(m, n, k, batch, tma):
    from schedulers.gpu_tiles import choose_wgmma
    t = hw_models.load("cuda-h100-wgmma")
    tl = choose_wgmma(t, m, n, k, batch, 2, [128, 256], tma)
    if tl is None:
        return
    assert tl.wgmma and tl.tma == tma and tl.bm in (64, 128) and tl.bn in (128, 256) and tl.bn <= max(n, 64)
    assert tl.persistent == (t.cores if tma else 0)
    assert tl.bk == 64 and tl.stages >= 3 and tl.splits == 1
    assert tl.threads == (tl.bm // 64 + tma) * 128 <= 1024
    assert tl.smem_bytes(2) <= t.memory("smem").capacity
    assert -(-m // tl.bm) * -(-n // tl.bn) * batch >= t.cores // 2


def test_elementwise_statements_share_a_launch():
    """A GRU step whose products are split: the gate math waits past the independent products
    and runs as one kernel; unsplit, it rides on the products; a statement that reads another
    thread's element starts a new kernel."""
    from compiler.backends.cuda.scalar import launch_order, plans
    k = compiler.parse(kernels.path("gru_step")).kernel()
    t = hw_models.load("cuda-h100")
    b = bind(k, dict(B=1, Hd=1024))
    found = plans(k, b, t)
    assert all(p.tiling.splits > 1 for p in found.values())
    assert launch_order(k, b, found) == [("gemm", [0]), ("gemm", [2]), ("gemm", [4]), ("pointwise", [1, 3, 5, 6])]
    b = bind(k, dict(B=4096, Hd=1024))
    assert launch_order(k, b, plans(k, b, hw_models.load("cuda"))) == [("gemm", [0]), ("gemm", [2]), ("gemm", [4])]
    rev = compiler.parse("def rev(float(N) A) -> (B, C, D) {\n    B(i) = A(i) * 2.0\n    C(i) = B(N - 1 - i) + 1.0\n"
                         "    D(i) = B(i) + C(i)\n}\n").kernel()
    assert launch_order(rev, bind(rev, dict(N=10)), {}) == [("scalar", [0]), ("pointwise", [1, 2])]


@needs_nvcc
def test_the_gru_sequence_library_builds(tmp_path, monkeypatch):
    from compiler.bench.gru import cuda_sequence_source
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path))
    so = compile_source(cuda_sequence_source(hw_models.load("cuda-h100"), 64, 2, 3), archs=("90",), per_thread=True)
    assert so.exists()


def test_emit_schedule_lists_the_launches(capsys):
    """--emit schedule on a cuda target: every launch in order, its tiling and grid, and the
    fills before it; --emit mappings shows what the mapping pass offered."""
    from compiler import cli
    assert cli.main(["compile", "kernels/gru_step.tc", "--target", "cuda-h100", "--sizes", "B=1,Hd=1024",
                     "--emit", "schedule"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# gru_step: 4 kernel launches in this order" and len(lines) == 5
    assert all("after zeroing the output" in ln and "split-K" in ln and "grid" in ln for ln in lines[1:4])
    assert lines[4] == "4. S1, S3, S5, S6: one kernel, one thread per element (1024 threads), the statements in order on each element"
    ck = compiler.build(kernels.path("softmax"), target="cuda", sizes=dict(N=4, D=1000))
    assert "after an identity fill of mx, S0: a block of 256 threads per output element" in ck.source("schedule")
    assert "S0 on (scalar code)" in ck.source("mappings")
