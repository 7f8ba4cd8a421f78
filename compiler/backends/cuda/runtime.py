"""Build generated CUDA C with nvcc into a shared library and call it through ctypes."""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ir.dtypes import round_bf16
from ir.errors import IsamapError

ARCHS = ("80", "90")


def nvcc() -> str | None:
    return shutil.which("nvcc")


def cache_dir() -> Path:
    """Where built libraries go: the shared cache's ``cuda`` folder, or (``ISAMAP_CACHE=off``)
    a folder of this process's own, removed at exit."""
    from compiler.cache import cache_dir as shared
    d = shared("cuda")
    if d is None:
        d = _private_dir()
    return d


@functools.lru_cache(maxsize=1)
def _private_dir() -> Path:
    import atexit
    d = Path(tempfile.mkdtemp(prefix="isamap-cuda-"))
    atexit.register(shutil.rmtree, d, True)
    return d


@functools.lru_cache(maxsize=1)
def device_archs() -> tuple[str, ...]:
    """The compute capability of this machine's GPU ('90' on an H100), read with nvidia-smi, so a
    library built to run here is compiled once rather than for every architecture; ARCHS if unknown."""
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30)
        caps = sorted({line.strip().replace(".", "") for line in r.stdout.splitlines() if line.strip()})
        return tuple(caps) if r.returncode == 0 and caps and all(c.isdigit() for c in caps) else ARCHS
    except (OSError, subprocess.SubprocessError):
        return ARCHS


def gencode(arch: str) -> list[str]:
    """nvcc's flags for one architecture; sm_90 code is built as sm_90a (architecture-specific:
    what wgmma needs; it runs on H100/H200, the chips sm_90 names)."""
    a = f"{arch}a" if arch == "90" else arch
    return ["-gencode", f"arch=compute_{a},code=sm_{a}"]


def compile_source(src: str, shared: bool = True, archs=None, per_thread: bool = False) -> Path:
    """nvcc the source (cached by its hash); returns the .so (or .o) path.  ``archs`` defaults
    to this machine's GPU (every supported architecture where none is found); ``per_thread``:
    stream 0 is the calling thread's own stream (capturable into a CUDA graph)."""
    archs = archs or (device_archs() if gpu_present() else ARCHS)
    exe = nvcc()
    if exe is None:
        raise IsamapError("nvcc is not installed: the cuda backend can emit code (--emit cuda) but not build it")
    flags = ["-O3", "-lineinfo"] + (["--default-stream", "per-thread"] if per_thread else [])
    flags += ["--shared", "-Xcompiler", "-fPIC"] if shared else ["-c"]
    for a in archs:
        flags += gencode(a)
    return cached_build(exe, flags, src, "k.cu", ".so" if shared else ".o", "nvcc failed on generated code")


def cached_build(exe: str, flags: list[str], src: str, name: str, suffix: str, failure: str,
                 prefix: str = "") -> Path:
    """``exe flags -o OUT name`` on ``src`` written to a scratch folder, the result kept in the
    cache under the hash of everything that went in (a later call with the same input reuses it)."""
    key = hashlib.sha256("\0".join([src, exe] + flags).encode()).hexdigest()[:24]
    out = cache_dir() / f"{prefix}{key}{suffix}"
    from compiler.cache import touch, wrote_entry
    if out.exists():
        touch(out)
        return out
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_text(src)
        target = Path(tmp) / out.name
        r = subprocess.run([exe] + flags + ["-o", str(target), str(Path(tmp) / name)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{failure}:\n{r.stderr[-4000:]}")
        os.replace(target, out)  # atomic: no partial cache entries
    wrote_entry()
    return out


def gpu_present() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def emulating() -> bool:
    """Whether cuda kernels run on the host's functional emulator (``ISAMAP_CUDA=emulate``,
    or ``isamap run --emulate``) instead of a GPU."""
    return os.environ.get("ISAMAP_CUDA", "").lower() == "emulate"


class CudaKernel:
    def __init__(self, k, b, src: str, emulate: bool | None = None, prefix: str = ""):
        self.k, self.b, self.src = k, b, src
        self.emulate = emulate
        self.prefix = prefix  # of the entry points (several kernels built as one library)
        self.lib = None
        self._entries = None
        self.last_counters: dict[str, int] = {}  # emulated: what the last call did (``counters``)

    @property
    def emulated(self) -> bool:
        return emulating() if self.emulate is None else self.emulate

    def _load(self):
        if self.lib is None:
            if self.emulated:
                from .emulate import compile_emulated
                self.lib = ctypes.CDLL(str(compile_emulated(self.src)))
                self.lib.isamap_emu_error.restype = ctypes.c_char_p
            elif not gpu_present():
                raise IsamapError("no NVIDIA GPU on this machine: the cuda target can be compiled "
                                  "(--emit cuda) but not run here; ISAMAP_CUDA=emulate (isamap run "
                                  "--emulate) runs it on the CPU's functional emulator instead")
            else:
                self.lib = ctypes.CDLL(str(compile_source(self.src)))
        if self._entries is None:
            run, tim = getattr(self.lib, f"{self.prefix}isamap_run"), getattr(self.lib, f"{self.prefix}isamap_time")
            run.restype = tim.restype = ctypes.c_int
            self._entries = run, tim
        return self._entries

    COUNTERS = ("blocks", "barriers", "ldmatrix", "ldmatrix_matrices", "ldmatrix_wavefronts", "mma_sync", "wgmma",
                "cp_async_bytes", "tma_bytes")

    def counters(self) -> dict[str, int]:
        """What the emulated code did since the last call (instructions by kind, bytes copied into
        shared memory, ldmatrix wavefronts: one per 8x8 matrix without bank conflicts), then zeroed."""
        out = (ctypes.c_longlong * 16)()
        n = self.lib.isamap_emu_counters(out)
        return dict(zip(self.COUNTERS, out[:n]))

    def _error(self, err: int) -> str:
        if self.emulated:
            return f"emulator: {self.lib.isamap_emu_error().decode()}"
        return _error_name(err)

    def _buffers(self, arrays):
        bufs = [to_device_layout(arrays[t.name], t.dtype) for t in self.k.inputs]
        outs = [np.zeros(self.b.shapes[t.name], dtype=_holding(t.dtype)) for t in self.k.outputs]
        allb = bufs + outs
        ptrs = (ctypes.c_void_p * len(allb))(*[x.ctypes.data for x in allb])
        sizes = (ctypes.c_longlong * len(allb))(*[x.nbytes for x in allb])
        return outs, ptrs, sizes, allb  # allb: keeps converted inputs alive while the pointers are used

    def _results(self, outs):
        return {t.name: from_device_layout(o, t.dtype) for t, o in zip(self.k.outputs, outs)}

    def __call__(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """Outputs and the device time of one launch sequence (copies excluded)."""
        run, _ = self._load()
        outs, ptrs, sizes, _keep = self._buffers(arrays)
        ms = ctypes.c_float(0)
        if self.emulated:
            self.counters()  # zeroed: last_counters covers this call alone
        err = run(ptrs, sizes, ctypes.byref(ms))
        if err:
            raise IsamapError(f"CUDA error {err} ({self._error(err)}) while running {self.k.name}")
        if self.emulated:
            self.last_counters = self.counters()
        return self._results(outs), ms.value / 1e3

    def time(self, arrays: dict[str, np.ndarray], reps: int = 20, inner: int = 10) -> tuple[dict, list[float]]:
        """Outputs and ``reps`` device times in seconds, each the mean of ``inner`` back-to-back
        launch sequences on device-resident buffers (CUDA events; one warm-up excluded)."""
        _, tim = self._load()
        outs, ptrs, sizes, _keep = self._buffers(arrays)
        ms = (ctypes.c_float * reps)()
        err = tim(ptrs, sizes, reps, inner, ms)
        if err:
            raise IsamapError(f"CUDA error {err} ({self._error(err)}) while timing {self.k.name}")
        return self._results(outs), [x / 1e3 for x in ms]


def _error_name(code: int) -> str:
    if code in (2, 3):
        return {2: "device allocation failed", 3: "host-to-device copy failed"}[code]
    try:
        rt = ctypes.CDLL("libcudart.so")
        rt.cudaGetErrorString.restype = ctypes.c_char_p
        return rt.cudaGetErrorString(code).decode()
    except OSError:
        return "see cudaError_t"


def _holding(d):
    """The numpy type of the device's storage: bool as bytes, bfloat16 as its 16 bits."""
    if d.kind == "b":
        return np.uint8
    if d.name == "bfloat16":
        return np.uint16
    return d.np


def to_device_layout(x, d) -> np.ndarray:
    if d.name == "bfloat16":  # float32 holding -> bfloat16 bits, rounded to nearest even
        return (round_bf16(x).view(np.uint32) >> 16).astype(np.uint16)
    return np.ascontiguousarray(x, dtype=_holding(d))


def from_device_layout(o: np.ndarray, d) -> np.ndarray:
    if d.kind == "b":
        return o.astype(bool)
    if d.name == "bfloat16":
        return (o.astype(np.uint32) << 16).view(np.float32)
    return o
