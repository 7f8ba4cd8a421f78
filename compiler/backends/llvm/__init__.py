"""The LLVM backend for the host CPU (llvmlite JIT)."""
from .scalar import compile_cpu

__all__ = ["compile_cpu"]
