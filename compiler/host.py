"""Facts about the host machine that targets and caches read (Linux sysfs and /proc): light
enough to import on every cache lookup (no parser, no LLVM)."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """Vendor, family, model, name and feature flags of the first processor (Linux
    /proc/cpuinfo: what LLVM's host CPU name and features derive from); empty elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                if key.strip() in ("vendor_id", "cpu family", "model", "model name", "flags"):
                    fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields if "flags" in fields else {}


@functools.lru_cache(maxsize=1)
def _llvm_host() -> tuple[str, str]:
    """LLVM's host CPU name and features (other systems: importing LLVM costs ~20-40 ms)."""
    from llvmlite import binding as llvm
    llvm.initialize_native_target()
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


@functools.lru_cache(maxsize=1)
def host_cpu() -> str:
    """The host CPU's identity for cache keys of machine code (every build's key asks for it)."""
    info = _cpuinfo()
    if info:
        return "\n".join(f"{k}={v}" for k, v in sorted(info.items()))
    return "llvm\n" + "\n".join(_llvm_host())


@functools.lru_cache(maxsize=1)
def host_features() -> frozenset[str]:
    """The host CPU's features, named as /proc/cpuinfo's flags and LLVM's features both spell
    them once '_' and '-' are dropped (avx512_vnni, avx512vnni: avx512vnni; amx-int8: amxint8)."""
    info = _cpuinfo()
    names = info["flags"].split() if info else [f[1:] for f in _llvm_host()[1].split(",") if f.startswith("+")]
    found = frozenset(feature_name(n) for n in names)
    if any(n.startswith("amx") for n in found) and not request_amx():
        found = frozenset(n for n in found if not n.startswith("amx"))  # the OS keeps AMX's tiles off
    return found


@functools.lru_cache(maxsize=1)
def request_amx() -> bool:
    """Ask Linux for this process's permission to use AMX tile data (arch_prctl
    ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA: without it the first tile instruction is a
    SIGILL); whether it was granted.  Process-wide, idempotent; False on other systems."""
    import ctypes
    import platform
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    except (OSError, AttributeError):
        return False


def feature_name(name: str) -> str:
    """A CPU feature's name as ``host_features`` spells it."""
    return name.lower().replace("_", "").replace("-", "")


def host_has_avx512() -> bool:
    """Whether the host runs AVX-512 (foundation) code: the cpu target's default variant."""
    return "avx512f" in host_features()


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
