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
        from compiler.host import host_has_avx512
        return host_has_avx512()
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

    text = Path(path).read_bytes()
    entry = _cache_file(path, text)
    hit = _cached(entry)
    if hit is not None:
        deps, t = hit
    else:
        from compiler.frontend import parse
        _LOADING.append({})
        try:
            m = parse(path)
        finally:
            deps = _LOADING.pop()
        if len(m.targets) != 1:
            raise IsamapError(f"'{path}' must define exactly one target (found {len(m.targets)})", m.span)
        t = m.targets[0]
        _store(entry, t, deps)
    _DEPS[path] = {path: _digest(text), **deps}
    return replace(t, path=path)


# A checked target is kept on disk, pickled (~1 ms to load; parsing and checking cpu.hw takes
# 10-40 ms in a fresh process, the more when it is the process's first parse).  The key covers what
# the result depends on: the file's bytes, the code that parses and checks it, and the host
# facts that `cores = host`, `host_cache = N` and `requires = [..]` read; an entry also lists the files it was
# derived from (`target x : base`) with their digests, and counts only while they match.
_LOADING: list[dict] = []  # the dependencies of each target being parsed (derivations nest)
_DEPS: dict[str, dict] = {}  # path -> its own and its bases' digests, for targets derived from it


def _digest(data: bytes) -> str:
    from compiler.cache import digest
    return digest(data)


def _fingerprint() -> bytes:
    import os

    from compiler.cache import FRONT_END, code_fingerprint
    from compiler.host import host_cache_bytes, host_cache_ways, host_features
    return code_fingerprint(FRONT_END) + repr((os.cpu_count(), [(host_cache_bytes(level), host_cache_ways(level))
                                                             for level in (1, 2, 3)], sorted(host_features()))).encode()


def _cache_file(path: str, text: bytes) -> Path | None:
    """The entry of a file's text at its place (a relative base reference depends on it);
    None when caching is off or the cache folder cannot be made."""
    from compiler.cache import entry_file
    return entry_file("targets", lambda: _fingerprint() + str(Path(path).resolve()).encode() + b"\0" + text)


def _cached(entry: Path | None) -> tuple[dict, Target] | None:
    """(bases' digests, target) of a cache entry that is readable and whose bases are unchanged."""
    from compiler.cache import load_entry
    hit = load_entry(entry)
    try:
        deps, t = hit
        if not isinstance(t, Target) or any(_digest(Path(p).read_bytes()) != d for p, d in deps.items()):
            return None
    except (TypeError, ValueError, AttributeError, OSError):  # a miss, another shape, a base gone: parse
        return None
    return deps, t


def _store(entry: Path | None, t: Target, deps: dict) -> None:
    from compiler.cache import store_entry
    store_entry(entry, (deps, t))


def load(name_or_path: str) -> Target:
    p = resolve_path(name_or_path)
    t = _load(str(p), p.stat().st_mtime)
    for deps in _LOADING:  # a target being derived from this one depends on it and on its bases
        deps.update(_DEPS[str(p)])
    return t
