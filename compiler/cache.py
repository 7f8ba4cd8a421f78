"""The on-disk cache every stage shares: one root, ``$ISAMAP_CACHE`` (default
``~/.cache/isamap``; ``off`` disables caching), a folder per kind of entry (``llvm``
object code, ``cuda`` libraries, parsed ``targets``), and writes that readers never see
half done (a file is written beside its name and renamed over it)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path | None:
    """The folder for entries of ``kind``, created on first use; None when caching is off."""
    root = os.environ.get("ISAMAP_CACHE", str(Path.home() / ".cache" / "isamap"))
    if root == "off":
        return None
    d = Path(root) / kind
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole or keeps what it held: concurrent builds of the same
    entry (processes or threads) each write a file of their own and rename it over ``path``
    (the last rename wins; either file is whole)."""
    import threading
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
