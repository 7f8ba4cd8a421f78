"""isamap: map tensor kernels onto accelerator instruction sets.

``compiler.build(path, target=..., sizes=...)`` returns a callable kernel;
``compiler.parse(path_or_text)`` returns the checked ``ir.Module``;
``compiler.mappings(path, target)`` every legal way each statement runs on the target.
"""
from ir.errors import IsamapError

from .api import CompiledKernel, build, emit_ir, load_kernel, mappings
from .frontend import parse

__version__ = "0.1.0"

__all__ = ["build", "parse", "mappings", "CompiledKernel", "IsamapError", "emit_ir", "load_kernel", "__version__"]
