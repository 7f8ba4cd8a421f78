"""Built-in targets, each described by one ``.hw`` file in this folder, and the loader.

``load(name_or_path)`` accepts a built-in name (``sim-nnp``) or a path to any
``.hw`` file; nothing here knows what a target contains.
"""
from __future__ import annotations

import functools
from pathlib import Path

from ir.errors import IsamapError
from ir.target import Target

DIR = Path(__file__).resolve().parent
REFERENCE = "reference"  # the numpy interpreter: a target with no .hw file


def builtin_names() -> list[str]:
    return sorted(p.stem for p in DIR.glob("*.hw"))


def _host_has_avx512() -> bool:
    try:
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # noqa: BLE001 - no llvmlite / unknown CPU: assume the safe variant
        return False


def resolve_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if name_or_path.endswith(".hw") or "/" in name_or_path or p.exists():
        if not p.exists():
            raise IsamapError(f"no such target file: '{name_or_path}'")
        return p
    if name_or_path == "cpu" and not _host_has_avx512():
        name_or_path = "cpu-avx2"
    q = DIR / f"{name_or_path}.hw"
    if not q.exists():
        raise IsamapError(f"unknown target '{name_or_path}' (built-in: {', '.join([REFERENCE] + builtin_names())}; "
                          f"or give a path to a .hw file)")
    return q


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime: float) -> Target:
    from dataclasses import replace

    from compiler.frontend import parse
    m = parse(path)
    if len(m.targets) != 1:
        raise IsamapError(f"'{path}' must define exactly one target (found {len(m.targets)})", m.span)
    return replace(m.targets[0], path=path)


def load(name_or_path: str) -> Target:
    p = resolve_path(name_or_path)
    return _load(str(p), p.stat().st_mtime)
