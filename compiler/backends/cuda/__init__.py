"""The CUDA backend: CUDA C built by nvcc, launched through a small ctypes host library."""
from .scalar import cuda_source

__all__ = ["cuda_source"]
