"""The LLVM backend for the host CPU (llvmlite; code loaded as shared libraries or through MCJIT)."""
from .native import compile_cpu

__all__ = ["compile_cpu"]
