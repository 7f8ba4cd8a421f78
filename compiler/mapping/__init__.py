"""Instruction mapping: every way a kernel statement can run on an instruction.

A mapping binds each instruction operand to a tensor access of the statement
(operation trees matched modulo commutativity of ``+`` and ``*``) and each
instruction dimension to a tensor dimension; the statement variables left over
become loops around the instruction.  Every candidate that fails says which
rule failed.  (First version: single-statement instruction bodies, plain
variable subscripts; affine subscripts such as ``h + r`` need an im2col-style
gather, which is reported as a transform the target must provide.)
"""
from .enumerate import Mapping, enumerate_mappings, mappings_for_kernel

__all__ = ["Mapping", "enumerate_mappings", "mappings_for_kernel"]
