"""Scalar element types of the shared IR.

TC's type names (``float``, ``int32``, ...) map onto numpy dtypes; ``bfloat16``
has no numpy dtype, so values are held as float32 and rounded to bf16 on every
store (see ``ir.interp``).  Promotion follows TC's ``sema.h`` ``match_types``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, order=True)
class DType:
    name: str
    kind: str  # 'b' bool, 'u' unsigned, 'i' signed, 'f' float
    bits: int

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"DType({self.name})"

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def is_int(self) -> bool:
        return self.kind in "ui"

    @property
    def itemsize(self) -> int:
        return max(1, self.bits // 8)

    @property
    def np(self) -> np.dtype:
        """The numpy dtype used to hold values (bf16 is held in float32)."""
        return np.dtype(_NP[self.name])


BOOL = DType("bool", "b", 1)
UINT8 = DType("uint8", "u", 8)
UINT16 = DType("uint16", "u", 16)
UINT32 = DType("uint32", "u", 32)
UINT64 = DType("uint64", "u", 64)
INT8 = DType("int8", "i", 8)
INT16 = DType("int16", "i", 16)
INT32 = DType("int32", "i", 32)
INT64 = DType("int64", "i", 64)
FLOAT16 = DType("float16", "f", 16)
BFLOAT16 = DType("bfloat16", "f", 16)
FLOAT32 = DType("float32", "f", 32)
FLOAT64 = DType("float64", "f", 64)

_NP = {
    "bool": "bool", "uint8": "uint8", "uint16": "uint16", "uint32": "uint32",
    "uint64": "uint64", "int8": "int8", "int16": "int16", "int32": "int32",
    "int64": "int64", "float16": "float16", "bfloat16": "float32",
    "float32": "float32", "float64": "float64",
}

ALL = [BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64,
       FLOAT16, BFLOAT16, FLOAT32, FLOAT64]

# Spellings accepted in source.  ``float``/``double`` are TC's aliases; ``half``
# and ``bfloat16`` are isamap extensions for low-precision accelerators.
BY_NAME: dict[str, DType] = {d.name: d for d in ALL}
BY_NAME.update({"float": FLOAT32, "double": FLOAT64, "half": FLOAT16})

# The canonical spelling used by the printer.
CANONICAL = {FLOAT32: "float", FLOAT64: "double"}


def spell(d: DType) -> str:
    return CANONICAL.get(d, d.name)


def promote(a: DType, b: DType) -> DType:
    """TC's "wider type" rule for binary arithmetic, min/max and ternaries."""
    if a == b:
        return a
    if a.is_float or b.is_float:
        if a.is_float and b.is_float:
            if a.bits != b.bits:
                return a if a.bits > b.bits else b
            return FLOAT32  # float16 with bfloat16: neither holds the other
        return a if a.is_float else b
    if a.kind == "b":
        return b
    if b.kind == "b":
        return a
    if a.kind == "u" and b.kind == "u":
        return a if a.bits >= b.bits else b
    bits = max(a.bits, b.bits)
    return BY_NAME[f"int{bits}"]


def from_numpy(dt: np.dtype) -> DType:
    dt = np.dtype(dt)
    return BY_NAME[dt.name]


def max_value(d: DType):
    if d.is_float:
        return np.inf
    if d.kind == "b":
        return True
    return np.iinfo(d.np).max


def min_value(d: DType):
    if d.is_float:
        return -np.inf
    if d.kind == "b":
        return False
    return np.iinfo(d.np).min


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), kept in float32."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    u = a.view(np.uint32)
    nan = np.isnan(a)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000))
    out = r.view(np.float32).copy()
    out[nan] = np.nan
    return out
