"""Build generated CUDA C with nvcc into a shared library and call it through ctypes."""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ir.errors import IsamapError

ARCHS = ("80", "90")


def nvcc() -> str | None:
    return shutil.which("nvcc")


def cache_dir() -> Path:
    d = Path(os.environ.get("ISAMAP_CACHE", Path.home() / ".cache" / "isamap")) / "cuda"
    d.mkdir(parents=True, exist_ok=True)
    return d


def compile_source(src: str, shared: bool = True, archs=ARCHS) -> Path:
    """nvcc the source (cached by its hash); returns the .so (or .o) path."""
    exe = nvcc()
    if exe is None:
        raise IsamapError("nvcc is not installed: the cuda backend can emit code (--emit cuda) but not build it")
    key = hashlib.sha256((src + repr(archs) + str(shared)).encode()).hexdigest()[:24]
    out = cache_dir() / (f"{key}.so" if shared else f"{key}.o")
    if out.exists():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / "k.cu"
        cu.write_text(src)
        target = Path(tmp) / out.name
        cmd = [exe, "-O3", "-o", str(target)]
        cmd += ["--shared", "-Xcompiler", "-fPIC"] if shared else ["-c"]
        for a in archs:
            cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        r = subprocess.run(cmd + [str(cu)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nvcc failed on generated code:\n{r.stderr[-4000:]}")
        os.replace(target, out)  # atomic: no partial cache entries
    return out


def gpu_present() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


class CudaKernel:
    def __init__(self, k, b, src: str):
        self.k, self.b, self.src = k, b, src
        self.lib = None

    def __call__(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        if not gpu_present():
            raise IsamapError("no NVIDIA GPU on this machine: the cuda target can be compiled "
                              "(--emit cuda) but not run here")
        if self.lib is None:
            self.lib = ctypes.CDLL(str(compile_source(self.src)))
            self.lib.isamap_run.restype = ctypes.c_int
        bufs = [np.ascontiguousarray(arrays[t.name], dtype=_holding(t.dtype)) for t in self.k.inputs]
        outs = [np.zeros(self.b.shapes[t.name], dtype=_holding(t.dtype)) for t in self.k.outputs]
        allb = bufs + outs
        ptrs = (ctypes.c_void_p * len(allb))(*[x.ctypes.data for x in allb])
        sizes = (ctypes.c_longlong * len(allb))(*[x.nbytes for x in allb])
        ms = ctypes.c_float(0)
        err = self.lib.isamap_run(ptrs, sizes, ctypes.byref(ms))
        if err:
            raise IsamapError(f"CUDA error {err} while running {self.k.name}")
        res = {t.name: (o.astype(bool) if t.dtype.kind == "b" else o) for t, o in zip(self.k.outputs, outs)}
        return res, ms.value / 1e3


def _holding(d):
    if d.kind == "b":
        return np.uint8
    return d.np
