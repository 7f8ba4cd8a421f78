"""The on-disk cache every stage shares: one root, ``$ISAMAP_CACHE`` (default
``~/.cache/isamap``; ``off`` disables caching), a folder per kind of entry (``llvm``
object code, ``cuda`` libraries, parsed ``targets`` and ``kernels``, the ``schedules`` the
deterministic strategies chose), writes that readers never see half done (a file is written
beside its name and renamed over it), and a bound on its size (least recently used out)."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project: what code fingerprints are relative to
FRONT_END = ("ir", "compiler/frontend", "compiler/targets.py")  # the code that parses and checks sources


KINDS = ("llvm", "cuda", "targets", "kernels", "schedules")  # the folders of the cache root isamap writes


def cache_root() -> Path | None:
    """The cache root (``$ISAMAP_CACHE``, default ``~/.cache/isamap``); None when caching is off."""
    root = os.environ.get("ISAMAP_CACHE", str(Path.home() / ".cache" / "isamap"))
    return None if root == "off" else Path(root)


def cache_dir(kind: str) -> Path | None:
    """The folder for entries of ``kind``, created on first use; None when caching is off."""
    root = cache_root()
    if root is None:
        return None
    d = root / kind
    d.mkdir(parents=True, exist_ok=True)
    return d


def _entries(kind: str) -> list[Path]:
    """The files of one kind's folder (nothing is created)."""
    root = cache_root()
    d = root / kind if root is not None else None
    return [f for f in d.iterdir() if f.is_file()] if d is not None and d.is_dir() else []


def usage(kinds=KINDS) -> dict[str, tuple[int, int]]:
    """kind -> (files, bytes) held in the cache."""
    return {kind: (len(fs), sum(_size(f) for f in fs)) for kind, fs in ((k, _entries(k)) for k in kinds)}


def clear(kinds=KINDS) -> tuple[int, int]:
    """Remove the entries of ``kinds`` (only files isamap's folders hold; a process that has
    loaded a library keeps its mapping); returns (files, bytes) removed."""
    n = b = 0
    for kind in kinds:
        for f in _entries(kind):
            size = _size(f)
            try:
                f.unlink()
            except OSError:
                continue
            n, b = n + 1, b + size
    return n, b


def _size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:
        return 0


LIMIT = 2 << 30  # the cache root's default bound in bytes (ISAMAP_CACHE_SIZE overrides it)
TRIM_SECONDS = 3600  # writes check the bound at most this often (a check stats every entry: ~0.5 s at 60000)
RECENT_SECONDS = 600  # entries written or used this recently are never trimmed
STAMP = ".last-trim"  # in the cache root: when the bound was last checked


def limit() -> int | None:
    """The bound on the bytes the cache holds: ``$ISAMAP_CACHE_SIZE`` (MiB, or with a K, M or G
    suffix; 0: no bound), else 2 GiB.  A value that is not a size keeps the default."""
    raw = os.environ.get("ISAMAP_CACHE_SIZE", "").strip().upper()
    if not raw:
        return LIMIT
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(raw[-1:], None)
    try:
        n = float(raw[:-1] if scale else raw) * (scale or 1 << 20)
    except ValueError:
        return LIMIT
    return None if n <= 0 else int(n)


def touch(path: Path | None) -> None:
    """Mark an entry used now: the bound trims the least recently used entries first."""
    if path is None:
        return
    try:
        os.utime(path)
    except OSError:
        pass


def trim(bound: int | None = None) -> tuple[int, int]:
    """Remove the least recently used entries (oldest modification time: writes and ``touch``
    set it) until the cache holds at most three quarters of ``bound`` (default: :func:`limit`);
    nothing is removed while it holds no more than the bound, and never an entry written or used
    in the last RECENT_SECONDS (another process may be about to load it).  Returns (files,
    bytes) removed.  Every reader treats a missing entry (or a missing part of a several-file
    entry, as the llvm code's table and library) as a miss and builds it again."""
    import time
    bound = limit() if bound is None else bound
    if bound is None or cache_root() is None:
        return 0, 0
    files = []
    for kind in KINDS:
        for f in _entries(kind):
            try:
                st = f.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, f))
    total = sum(size for _, size, _ in files)
    if total <= bound:
        return 0, 0
    recent = time.time() - RECENT_SECONDS
    n = b = 0
    for mtime, size, f in sorted(files, key=lambda x: x[0]):
        if total <= bound * 3 // 4 or mtime >= recent:
            break
        try:
            f.unlink()
        except OSError:
            continue
        total, n, b = total - size, n + 1, b + size
    return n, b


def wrote_entry() -> None:
    """Keep the cache within its bound as entries are written: the first write an hour after
    the last check (any process's; the root's STAMP file says when) checks it."""
    import time
    root = cache_root()
    if root is None:
        return
    stamp = root / STAMP
    try:
        if time.time() - stamp.stat().st_mtime < TRIM_SECONDS:
            return
    except FileNotFoundError:
        pass
    except OSError:
        return
    try:
        stamp.touch()
        trim()
    except OSError:
        pass


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or keeps what it held: concurrent builds of the same
    entry (processes or threads) each write a file of their own and rename it over ``path``
    (the last rename wins; either file is whole)."""
    import threading
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    wrote_entry()


def entry_file(kind: str, key) -> Path | None:
    """The pickled entry of ``kind`` for the key ``key()`` (bytes, computed only when caching is
    on); None when caching is off or the folder or the key cannot be made."""
    try:
        d = cache_dir(kind)
        return d / f"{digest(key())}.pickle" if d is not None else None
    except (OSError, UnicodeError):
        return None


def load_entry(path: Path | None):
    """The object pickled at ``path``; None when there is none or it cannot be read (torn,
    written by another version): the caller computes it again."""
    import pickle
    if path is None:
        return None
    try:
        obj = pickle.loads(path.read_bytes())
    except Exception:  # noqa: BLE001 - any unreadable entry is a miss
        return None
    touch(path)
    return obj


def store_entry(path: Path | None, obj) -> None:
    """Pickle ``obj`` at ``path`` (atomically); a read-only cache stores nothing."""
    import pickle
    if path is None:
        return
    try:
        write_atomic(path, pickle.dumps(obj))
    except OSError:
        pass


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


@functools.lru_cache(maxsize=None)
def code_fingerprint(names: tuple[str, ...]) -> bytes:
    """A digest of the project's source under ``names`` (folders or files, relative to the
    project): an entry derived by that code is keyed by it, so changing the code invalidates it.
    Read once per process."""
    parts = []
    for name in names:
        p = ROOT / name
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.suffix in (".py", ".lark"):
                parts.append(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return digest(b"\0".join(parts)).encode()
