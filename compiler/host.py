"""Facts about the host machine that targets and caches read (Linux sysfs): light enough to
import on every cache lookup (no parser, no LLVM)."""
from __future__ import annotations


def host_cache_bytes(level: int) -> int | None:
    """Size of the host's level-``level`` data (or unified) cache, from Linux sysfs; None
    where that is not readable (other systems), so the .hw file's figure stands."""
    text = _host_cache_field(level, "size")
    if text is None:
        return None
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    try:
        return int(text.rstrip("KMG")) * mult
    except ValueError:
        return None


def host_cache_ways(level: int) -> int | None:
    """Set associativity of the host's level-``level`` data (or unified) cache (sysfs)."""
    text = _host_cache_field(level, "ways_of_associativity")
    return int(text) if text is not None and text.isdigit() and int(text) > 0 else None


def _host_cache_field(level: int, name: str) -> str | None:
    from pathlib import Path
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for d in sorted(root.glob("index*")):
            if int((d / "level").read_text()) == level and (d / "type").read_text().strip() in ("Data", "Unified"):
                return (d / name).read_text().strip()
    except (OSError, ValueError):
        return None
    return None
