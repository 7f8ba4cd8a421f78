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
from compiler.backends.cuda.runtime import compile_source, gpu_present
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
    r = subprocess.run(["nvcc", "-c", "-o", str(tmp_path / "all.o"), "-gencode", "arch=compute_80,code=sm_80",
                        "-gencode", "arch=compute_90,code=sm_90", str(cu)], capture_output=True, text=True)
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
