"""Instruction mapping: every way a kernel statement can run on a target's instructions.

A mapping binds each instruction operand to kernel data (operation trees matched
modulo commutativity of ``+``, ``*``, ``min``, ``max``) and each instruction
variable to kernel variables (one, a fused run of adjacent dimensions, or none:
padded); the statement variables left over become loops around it.  Statements
no single instruction performs are covered by a sequence of instructions through
temporaries (elementwise vector code).  Every rejected candidate says which rule
failed: operation, operation tree, roles, access, layout, dtype, placement.
"""
from .enumerate import cover, direct, mappings_for_kernel, mappings_for_statement, unmappable
from .model import Mapping, Step

__all__ = ["Mapping", "Step", "direct", "cover", "mappings_for_kernel", "mappings_for_statement",
           "unmappable"]
