"""The LLVM backend for the host CPU (llvmlite JIT)."""
from .scalar import compile_scalar

__all__ = ["compile_scalar"]
