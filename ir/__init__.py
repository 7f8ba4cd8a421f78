"""The shared IR of isamap: kernels and targets in one representation.

``ir.interp`` executes any kernel with numpy and is the ground truth for every
backend.
"""
from . import dtypes
from .bind import Bound, bind
from .dtypes import DType
from .errors import IsamapError, Source, Span
from .expr import Access, Binary, Call, Cast, Const, Expr, Select, Size, Unary, Var
from .kernel import Dim, Kernel, Module, Range, Stmt, TensorDecl

__all__ = ["dtypes", "DType", "IsamapError", "Source", "Span", "Expr", "Const", "Var", "Size",
           "Access", "Unary", "Binary", "Select", "Call", "Cast", "Kernel", "Module", "Stmt",
           "TensorDecl", "Range", "Dim", "Bound", "bind"]
