"""Mapping records: what the mapping pass produces and every later stage reads."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

# the transform text of a pitched output (``bind._pitch``): "O: rows (h,w) at pitch 30 ..."
PITCH = re.compile(r"rows \((\w+),(\w+)\) at pitch (\d+)")


def pitch_of(transforms) -> dict[str, int]:
    """kernel var -> the extent it runs over inside a fused instruction dim, where that is an
    input's row width rather than its own range (read from the pitched output's transform)."""
    out = {}
    for t in transforms:
        m = PITCH.search(t)
        if m:
            out[m.group(2)] = int(m.group(3))
    return out


@dataclass(frozen=True)
class Step:
    """One instruction of a mapping: its operands bound to kernel data, its vars to kernel vars.

    An operand binding is a tensor name, ``%tN`` (a temporary computed by an
    earlier step of the same mapping) or ``imm:EXPR`` (a scalar such as a size
    or constant).  A var binding is a kernel variable, a fused tuple ``(h,w)``
    or ``1`` (the instruction dimension is padded: extent 1).
    """

    instruction: str
    operands: tuple[tuple[str, str], ...]
    vars: tuple[tuple[str, str], ...]
    transforms: tuple[str, ...] = ()
    extents: tuple[tuple[str, str], ...] = ()
    result: str = ""  # what it produces: a tensor name or %tN
    # operand -> the kernel expression it reads or writes (a tensor access, a temporary's
    # expression, a scalar); for lowering, not part of identity
    exprs: tuple = field(default=(), compare=False, repr=False)

    def expr(self, operand: str):
        return dict(self.exprs)[operand]

    def pitch(self) -> dict[str, int]:
        """``pitch_of`` its transforms (``bind._pitch``: a convolution's output columns computed
        over the input's whole rows, the overlap never stored)."""
        return pitch_of(self.transforms)

    def fused(self) -> dict[str, tuple[str, ...]]:
        """instruction var -> kernel vars (empty tuple: padded)."""
        out = {}
        for iv, kv in self.vars:
            if kv == "1":
                out[iv] = ()
            elif kv.startswith("("):
                out[iv] = tuple(kv[1:-1].split(","))
            else:
                out[iv] = (kv,)
        return out


@dataclass(frozen=True)
class Mapping:
    statement: int
    steps: tuple[Step, ...] = ()
    loops: tuple[str, ...] = ()
    legal: bool = True
    reason: str = ""
    candidate: str = ""  # the instruction(s) tried, for rejections

    @property
    def instruction(self) -> str:
        return "+".join(s.instruction for s in self.steps) if self.steps else self.candidate

    def _merged(self, attr: str) -> dict[str, str]:
        if len(self.steps) == 1:
            return dict(getattr(self.steps[0], attr))
        return {f"{i}:{s.instruction}.{a}": b for i, s in enumerate(self.steps) for a, b in getattr(s, attr)}

    @property
    def operands(self) -> dict[str, str]:
        return self._merged("operands")

    @property
    def vars(self) -> dict[str, str]:
        return self._merged("vars")

    @property
    def transforms(self) -> list[str]:
        return [t for s in self.steps for t in s.transforms]

    def to_json(self) -> dict:
        return {"statement": self.statement, "instruction": self.instruction, "operands": self.operands,
                "vars": self.vars, "transforms": self.transforms, "loops": list(self.loops),
                "extents": {a: b for s in self.steps for a, b in s.extents},
                "steps": [{"instruction": s.instruction, "operands": dict(s.operands), "vars": dict(s.vars),
                           "result": s.result} for s in self.steps],
                "legal": self.legal, "reason": self.reason}

    def describe(self) -> str:
        if not self.legal:
            ops = ", ".join(f"{a}={b}" for a, b in self.operands.items())
            vs = ", ".join(f"{a}={b}" for a, b in self.vars.items())
            what = f" [{ops}{'; ' + vs if vs else ''}]" if ops else ""
            return f"S{self.statement} on {self.instruction}{what}: REJECTED: {self.reason}"
        if not self.steps:
            lp = f": loops {', '.join(self.loops)}" if self.loops else ""
            return f"S{self.statement} on {self.candidate}{lp}"
        parts = []
        for s in self.steps:
            ops = ", ".join(f"{a}={b}" for a, b in s.operands)
            vs = ", ".join(f"{a}={b}" for a, b in s.vars)
            ext = f" extents {', '.join(f'{a}:{b}' for a, b in s.extents)}" if s.extents else ""
            tr = f" transforms [{'; '.join(s.transforms)}]" if s.transforms else ""
            res = f"{s.result} = " if len(self.steps) > 1 else ""
            parts.append(f"{res}{s.instruction}({ops}) vars {vs}{ext}{tr}")
        lp = f"; loops {', '.join(self.loops)}" if self.loops else ""
        return f"S{self.statement} on {self.instruction}: " + " ; ".join(parts) + lp
