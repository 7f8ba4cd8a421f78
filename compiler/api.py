"""The Python API: ``compiler.build`` -> a callable kernel (numpy in, numpy out)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

import ir.interp
from ir import printer
from ir.bind import Bound, bind
from ir.errors import IsamapError
from ir.kernel import Kernel

from .frontend import parse

TARGETS = ("reference",)


def load_kernel(path_or_source, kernel: str | None = None) -> Kernel:
    if isinstance(path_or_source, Kernel):
        return path_or_source
    return parse(path_or_source).kernel(kernel)


@dataclass
class CompiledKernel:
    """A kernel specialised to sizes and a target.  Call it with numpy arrays."""

    kernel: Kernel
    target: str
    bound: Bound | None  # None: sizes are taken from the first call's arrays (reference only)
    report: dict = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int] | None:
        return None if self.bound is None else dict(self.bound.sizes)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.kernel.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.kernel.outputs]

    def _inputs(self, args, kwargs) -> dict[str, np.ndarray]:
        names = self.input_names
        if len(args) > len(names):
            raise IsamapError(f"kernel '{self.kernel.name}' takes {len(names)} inputs, {len(args)} given")
        inputs = dict(zip(names, args))
        for k, v in kwargs.items():
            if k in inputs:
                raise IsamapError(f"input '{k}' given twice")
            inputs[k] = v
        return inputs

    def run_all(self, *args, **kwargs) -> dict[str, np.ndarray]:
        """Every output by name."""
        inputs = self._inputs(args, kwargs)
        t0 = time.perf_counter()
        out = ir.interp.run(self.kernel, inputs, self.sizes)
        self.report["seconds"] = time.perf_counter() - t0
        return out

    def __call__(self, *args, **kwargs):
        out = self.run_all(*args, **kwargs)
        vals = [out[n] for n in self.output_names]
        return vals[0] if len(vals) == 1 else tuple(vals)

    def source(self, kind: str = "ir") -> str:
        if kind == "ir":
            return emit_ir(self.kernel, self.bound)
        if self.bound is None:
            raise IsamapError("pass sizes= to build() to get generated code")
        raise IsamapError(f"'{kind}' code is not available for target '{self.target}' "
                          f"(available: ir)")


def emit_ir(k: Kernel, b: Bound | None = None) -> str:
    """The checked kernel as TC, annotated with inferred shapes and domains."""
    lines = [f"# kernel {k.name}"]
    for t in k.inputs + k.outputs:
        dims = ", ".join(f"{printer.expr(d.extent)}" if printer.expr(d.min) == "0" else
                         f"{printer.expr(d.min)}:{printer.expr(d.min)} + {printer.expr(d.extent)}"
                         for d in k.dims(t.name))
        role = "input " if k.is_input(t.name) else "output"
        conc = f" = {list(b.shapes[t.name])}" if b else ""
        lines.append(f"#   {role} {t.name}: {t.dtype}[{dims}]{conc}")
    for i, s in enumerate(k.stmts):
        lines.append(f"#   S{i}: {s.tensor} over {printer.domain(s)}"
                     + ("" if not s.reduction_vars else f" (reduces {', '.join(s.reduction_vars)})"))
    return "\n".join(lines) + "\n" + printer.kernel(k)


def build(path_or_source, target: str = "reference", sizes: dict[str, int] | None = None,
          kernel: str | None = None, scheduler: str | None = None) -> CompiledKernel:
    """Parse, check and specialise a kernel for ``target`` and ``sizes``."""
    k = load_kernel(path_or_source, kernel)
    if target not in TARGETS:
        import hw_models
        t = hw_models.load(target)  # validates names and .hw files with located errors
        raise IsamapError(f"target '{t.name}' is described ({len(t.instrs)} instructions) but has no code "
                          f"generator yet: instruction mapping, scheduling and the sim/llvm/cuda backends "
                          f"are still being built; use --target reference")
    if sizes is None and target == "reference":
        return CompiledKernel(k, target, None, {"kernel": k.name, "target": target})
    b = bind(k, dict(sizes or {}))
    return CompiledKernel(k, target, b, {"kernel": k.name, "target": target, "sizes": dict(b.sizes)})
