"""Build the cuda backend's generated CUDA C for the host CPU's functional emulator (``emu.h``).

A machine without a GPU can then check what the generated code computes, not only that nvcc
accepts it: every CUDA thread is a fiber, warp-collective PTX (ldmatrix, mma.sync) and
cp.async follow the PTX ISA's semantics, and misuse (shared-memory bounds and alignment,
deadlocks, launch limits) is reported as a CUDA error with a message.  The generated source is
the one nvcc builds; three CUDA-only spellings are rewritten for the host compiler: the CUDA
headers (emu.h stands in for them), ``extern __shared__`` (the block's dynamic shared memory)
and ``kernel<<<grid, block, smem>>>(args)`` launches.  Emulated times are host times.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from ir.errors import IsamapError

EMU_H = Path(__file__).with_name("emu.h")

_INCLUDE = re.compile(r"^\s*#include\s*<cuda[\w.]*>.*$", re.M)
_EXTERN_SMEM = re.compile(r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([\w ]+?)\s+(\w+)\s*\[\s*\]\s*;")
_LAUNCH = re.compile(r"\b(\w+)\s*<<<(.*?)>>>\s*\(")


def host_source(src: str) -> str:
    """The generated CUDA C as C++ for the emulator (emu.h is included in front by the build)."""
    src = _INCLUDE.sub("", src)
    src = _EXTERN_SMEM.sub(lambda m: f"{m.group(1)}* {m.group(2)} = ({m.group(1)}*)isamap_emu::st().smem;", src)
    return _LAUNCH.sub(lambda m: f"isamap_emu::launch({m.group(1)}, {m.group(2)})(", src)


def compiler_exe() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def compile_emulated(src: str) -> Path:
    """The emulator's shared library for the generated source (cached by its hash)."""
    exe = compiler_exe()
    if exe is None:
        raise IsamapError("the CUDA emulator needs a host C++ compiler (g++ or clang++; or set CXX)")
    from .runtime import cached_build
    extra = os.environ.get("ISAMAP_EMU_FLAGS", "").split()  # e.g. -fsanitize=address (LD_PRELOAD libasan)
    flags = ["-std=c++17", "-O1", "-shared", "-fPIC", "-w", "-include", str(EMU_H)] + extra
    # emu.h's text is part of the key: a changed emulator rebuilds
    return cached_build(exe, flags, host_source(src) + "\n// " + hashlib.sha256(EMU_H.read_bytes()).hexdigest(),
                        "k.cc", ".so", "the host compiler failed on the emulated CUDA source", prefix="emu-")


def build_together(cases) -> list:
    """Emulated CudaKernels for several ``(kernel, bound, target, gemm plans or None)`` cases,
    sharing one library: one host-compiler run (the slow part) instead of one per case."""
    import ctypes

    from .gemm import tiles_header
    from .runtime import CudaKernel
    from .scalar import PRELUDE, cuda_source
    parts = [PRELUDE, tiles_header()]
    for i, (k, b, t, gemm) in enumerate(cases):
        parts.append(cuda_source(k, b, prefix=f"c{i}_", prelude=False, t=t, gemm=gemm))
    src = "\n".join(parts)
    lib = ctypes.CDLL(str(compile_emulated(src)))
    lib.isamap_emu_error.restype = ctypes.c_char_p
    out = []
    for i, (k, b, _, _) in enumerate(cases):
        ck = CudaKernel(k, b, src, emulate=True, prefix=f"c{i}_")
        ck.lib = lib
        out.append(ck)
    return out
