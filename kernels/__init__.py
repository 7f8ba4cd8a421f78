"""The kernel library: TC sources shipped with isamap (``kernels/*.tc``)."""
from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).resolve().parent


def path(name: str) -> Path:
    """The path of a library kernel by name (``gemm`` or ``gemm.tc``)."""
    p = DIR / (name if name.endswith(".tc") else f"{name}.tc")
    if not p.exists():
        from ir.errors import IsamapError
        raise IsamapError(f"no library kernel '{name}' (have: {', '.join(names())})")
    return p


def names() -> list[str]:
    return sorted(p.stem for p in DIR.glob("*.tc"))
