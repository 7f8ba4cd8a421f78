"""Random inputs and result comparison for ``run --check`` and the test-suite."""
from __future__ import annotations

import numpy as np

from ir.bind import Bound
from ir.expr import Access, walk
from ir.kernel import Kernel


def index_tensors(k: Kernel, b: Bound) -> dict[str, int]:
    """Inputs used as subscripts (gathers) -> an exclusive upper bound for their values."""
    out: dict[str, int] = {}
    for s in k.stmts:
        for e in [s.rhs, *s.exists]:
            for a in walk(e):
                if not isinstance(a, Access):
                    continue
                for axis, idx in enumerate(a.indices):
                    if isinstance(idx, Access) and k.is_input(idx.tensor):
                        hi = b.mins[a.tensor][axis] + b.shapes[a.tensor][axis]
                        out[idx.tensor] = min(out.get(idx.tensor, hi), hi)
                    else:
                        for n in walk(idx):
                            if isinstance(n, Access) and k.is_input(n.tensor):
                                out.setdefault(n.tensor, b.shapes[a.tensor][axis])
    return out


def random_inputs(k: Kernel, b: Bound, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = index_tensors(k, b)
    arrays = {}
    for t in k.inputs:
        shape = b.shapes[t.name]
        dt = t.dtype
        if t.name in idx:
            arrays[t.name] = rng.integers(0, max(1, idx[t.name]), size=shape).astype(dt.np)
        elif dt.kind == "b":
            arrays[t.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif dt.kind == "u":
            arrays[t.name] = rng.integers(0, 4, size=shape).astype(dt.np)
        elif dt.kind == "i":
            arrays[t.name] = rng.integers(-4, 5, size=shape).astype(dt.np)
        else:
            arrays[t.name] = rng.uniform(-1, 1, size=shape).astype(dt.np)
    return arrays


def tolerance(dtype: np.dtype, ref: np.ndarray, precision: str | None = None) -> float:
    """Absolute tolerance: relative to the largest reference value, by the lowest float width used.

    ``precision`` names the narrowest float type the compiled code computes in
    (a bf16 matrix unit fed from fp32 tensors, say); integers are exact.
    """
    dt = np.dtype(dtype)
    finite = ref[np.isfinite(ref)] if dt.kind == "f" else ref  # an overflowed element does not make the rest exact
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    if dt.kind != "f":
        return 0.0
    rel = {2: 2e-2, 4: 1e-3, 8: 1e-9}[dt.itemsize]
    if precision in ("bfloat16", "float16"):
        rel = max(rel, 2e-2)
    return rel * scale


def compare(got: dict[str, np.ndarray], ref: dict[str, np.ndarray],
            precision: str | None = None) -> tuple[bool, float, dict]:
    """(all correct, max abs error, per-output details)."""
    ok, worst, per = True, 0.0, {}
    for name, r in ref.items():
        g = np.asarray(got[name])
        if g.shape != r.shape:
            per[name] = {"correct": False, "max_abs_error": None, "error": f"shape {g.shape} != {r.shape}"}
            ok = False
            continue
        with np.errstate(invalid="ignore"):  # inf - inf: a NaN difference, reported as such below
            if r.dtype.kind == "f":
                same = (np.isnan(r) & np.isnan(g)) | (g == r)  # NaN where the reference is, equal infinities
                diff = np.where(same, 0.0, np.abs(g.astype(np.float64) - r.astype(np.float64)))
            else:
                diff = np.abs(g.astype(np.int64) - r.astype(np.int64)).astype(np.float64)
        if diff.size and np.isnan(diff).any():
            err = float("nan")
        else:
            err = float(diff.max()) if diff.size else 0.0
        tol = tolerance(r.dtype, r, precision)
        good = bool(err <= tol)
        per[name] = {"correct": good, "max_abs_error": err, "tolerance": tol}
        ok &= good
        worst = max(worst, err) if err == err else float("nan")
    return ok, worst, per
