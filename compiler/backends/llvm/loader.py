"""Machine code for the host: LLVM modules compiled to object code, kept in the on-disk cache,
and loaded -- as shared libraries (dlopen) where a C compiler is there to link them, else
through LLVM's MCJIT.

Why shared libraries: a cached build then loads its code with one dlopen and needs no LLVM
at all.  Importing llvmlite's binding (the 60 MB LLVM library: 20-40 ms on the project's
VMs) and finalising an MCJIT engine (~8 ms for each of the kernel, the thread pool and the
native entry) were most of a cached build and its first call.  The cache key of an entry
is computed without LLVM too (``compiler.host.host_cpu``).  Where no C compiler is found
(``$CC``, else ``cc``), where linking fails or where the cache folder does not allow
executable mappings, the object code goes through MCJIT as before; ``ISAMAP_LINK=off``
asks for that path."""
from __future__ import annotations

import ctypes
import functools
import os
import threading
import weakref
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _init():
    from llvmlite import binding as llvm
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def target_machine(shared: bool = False):
    """A fresh target machine for the host CPU (an execution engine takes ownership of its
    own); ``shared``: position-independent code for a shared library."""
    from llvmlite import binding as llvm
    _init()
    target = llvm.Target.from_default_triple()
    more = dict(reloc="pic", codemodel="default") if shared else {}
    return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                        features=llvm.get_host_cpu_features().flatten(), opt=3, **more)


class Code:
    """Loaded machine code: the addresses of its symbols (functions and globals).  The code
    stays mapped while this object lives; whoever calls into it holds it."""
    how = ""

    def address(self, name: str) -> int:
        raise NotImplementedError


class _Engine(Code):
    how = "mcjit"

    def __init__(self, obj: bytes):
        from llvmlite import binding as llvm
        _init()
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine())
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()

    def address(self, name: str) -> int:
        addr = self.engine.get_function_address(name) or self.engine.get_global_value_address(name)
        if not addr:
            raise KeyError(name)
        return addr


class _Library(Code):
    how = "shared library"

    def __init__(self, path: Path, unload: bool = True):
        self.lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
        if unload:
            import _ctypes
            # unmapped when the last holder goes, as an MCJIT engine's code is (a tuning run
            # builds hundreds of variants in one process); not at exit, where native threads
            # may still be in code the process never unloads (the pool's)
            weakref.finalize(self, _ctypes.dlclose, self.lib._handle).atexit = False

    def address(self, name: str) -> int:
        try:
            return ctypes.addressof(ctypes.c_char.in_dll(self.lib, name))
        except ValueError:
            raise KeyError(name) from None


def linker() -> str | None:
    """The C compiler that links object code into shared libraries ($CC, else cc), or None
    (not installed, or ``ISAMAP_LINK=off``)."""
    if os.environ.get("ISAMAP_LINK", "").lower() in ("off", "0", "no"):
        return None
    import shutil
    return shutil.which(os.environ.get("CC") or "cc")


def cached(stem: Path | None, unload: bool = True) -> Code | None:
    """The code stored under ``stem`` by an earlier build (``stem.so``, else ``stem.o``), or
    None.  A library that does not load (damaged, or a folder mounted noexec) is skipped.
    ``unload``: unmap a library once nothing holds its Code (not for the process's own)."""
    if stem is None:
        return None
    from compiler.cache import touch
    so = stem.with_suffix(".so")
    if so.exists():
        touch(so)  # used now: the cache's bound trims it last
        try:
            return _Library(so, unload)
        except OSError:
            pass
    obj = stem.with_suffix(".o")
    if obj.exists():
        touch(obj)
        try:
            return _Engine(obj.read_bytes())
        except OSError:  # trimmed since: built again
            return None
    return None


def compile_module(mod, stem: Path | None, unload: bool = True) -> Code:
    """Machine code for an (optimised) llvmlite module, stored under ``stem`` when that is
    given: a shared library where :func:`linker` links one, else object code for MCJIT."""
    if stem is not None and linker():
        so = _link(target_machine(shared=True).emit_object(mod), stem)
        if so is not None:
            try:
                return _Library(so, unload)
            except OSError:
                pass
    obj = target_machine().emit_object(mod)
    if stem is not None:
        from compiler.cache import write_atomic
        write_atomic(stem.with_suffix(".o"), obj)
    return _Engine(obj)


def _link(obj: bytes, stem: Path) -> Path | None:
    """``stem.so`` linked from ``obj`` (written whole, then renamed into place, like every cache
    entry), or None where linking fails."""
    import subprocess
    tmp = f"{stem.name}.{os.getpid()}-{threading.get_ident()}"
    o, so = stem.with_name(f"{tmp}.o.tmp"), stem.with_name(f"{tmp}.so.tmp")
    try:
        o.write_bytes(obj)
        # -Bsymbolic: calls between the library's own functions never bind to another library's
        done = subprocess.run([linker(), "-shared", "-o", str(so), str(o), "-lm", "-lpthread", "-Wl,-Bsymbolic"],
                              capture_output=True)
        if done.returncode != 0:
            return None
        os.replace(so, stem.with_suffix(".so"))
        from compiler.cache import wrote_entry
        wrote_entry()
        return stem.with_suffix(".so")
    except OSError:
        return None
    finally:
        for f in (o, so):
            f.unlink(missing_ok=True)


def module_code(ir: str, kind: str) -> Code:
    """The machine code of a fixed LLVM IR module (the thread pool, the native entry): built
    once per host and llvmlite version, then loaded from the cache."""
    stem = cache_stem("\0".join([kind, ir]))
    code = cached(stem, unload=False)
    if code is not None:
        return code
    from llvmlite import binding as llvm
    _init()
    mod = llvm.parse_assembly(ir)
    mod.triple = llvm.get_process_triple()
    mod.verify()
    return compile_module(mod, stem, unload=False)


def cache_stem(build: str) -> Path | None:
    """Where the code of a build lives in the cache (``.so`` or ``.o`` appended): keyed by the
    build, the host CPU and its features, the llvmlite version and this module's source (how
    code is emitted and linked).  None when caching is off (``ISAMAP_CACHE=off``) or the cache
    folder cannot be made (the code is then built in memory every time)."""
    import llvmlite

    from compiler.cache import cache_dir, code_fingerprint, digest
    from compiler.host import host_cpu
    try:
        d = cache_dir("llvm")
    except OSError:
        return None
    if d is None:
        return None
    own = code_fingerprint(("compiler/backends/llvm/loader.py",)).decode()
    return d / digest("\0".join([build, host_cpu(), llvmlite.__version__, own]).encode())
