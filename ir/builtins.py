"""Built-in functions: TC's CUDA math table plus isamap's ``sigmoid`` and ``relu``.

The arity table is shared by the checker and every backend; the numpy
implementations here define the reference semantics.
"""
from __future__ import annotations

import math

import numpy as np

ARITY: dict[str, int] = {}
for _n in ("acos acosh asin asinh atan atanh cbrt ceil cos cosh cospi cyl_bessel_i0 cyl_bessel_i1 "
           "erf erfc erfcinv erfcx erfinv exp exp10 exp2 expm1 fabs floor j0 j1 lgamma log log10 "
           "log1p log2 logb normcdf normcdfinv rcbrt round rsqrt sin sinh sinpi sqrt tan tanh "
           "tgamma trunc y0 y1 sigmoid relu").split():
    ARITY[_n] = 1
for _n in "atan2 copysign fdim fdivide fmax fmin fmod hypot nextafter pow remainder rhypot".split():
    ARITY[_n] = 2
for _n in "fma norm3d rnorm3d".split():
    ARITY[_n] = 3
for _n in "norm4d rnorm4d".split():
    ARITY[_n] = 4

EXTENSIONS = ("sigmoid", "relu")


def _scipy(name):
    def f(*xs):
        try:
            import scipy.special as sp  # optional
        except ImportError:  # pragma: no cover - scipy is usually present
            fn = getattr(math, name, None)
            if fn is None:
                raise NotImplementedError(name)
            return np.vectorize(fn, otypes=[xs[0].dtype])(*xs)
        return getattr(sp, name)(*xs)
    return f


def _sp(spname):
    def f(*xs):
        import scipy.special as sp
        return getattr(sp, spname)(*xs)
    return f


def _round(x):  # CUDA round(): halfway cases away from zero
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


NUMPY = {
    "acos": np.arccos, "acosh": np.arccosh, "asin": np.arcsin, "asinh": np.arcsinh,
    "atan": np.arctan, "atanh": np.arctanh, "cbrt": np.cbrt, "ceil": np.ceil, "cos": np.cos,
    "cosh": np.cosh, "cospi": lambda x: np.cos(np.pi * x), "erf": _scipy("erf"),
    "erfc": _scipy("erfc"), "erfcinv": lambda x: _sp("erfinv")(1 - x), "erfcx": _sp("erfcx"),
    "erfinv": _sp("erfinv"), "exp": np.exp, "exp10": lambda x: np.power(x.dtype.type(10), x),
    "exp2": np.exp2, "expm1": np.expm1, "fabs": np.abs, "floor": np.floor,
    "j0": _sp("j0"), "j1": _sp("j1"), "y0": _sp("y0"), "y1": _sp("y1"),
    "cyl_bessel_i0": _sp("i0"), "cyl_bessel_i1": _sp("i1"), "lgamma": _sp("gammaln"),
    "tgamma": _sp("gamma"), "log": np.log, "log10": np.log10, "log1p": np.log1p, "log2": np.log2,
    "logb": lambda x: np.floor(np.log2(np.abs(x))), "normcdf": _sp("ndtr"),
    "normcdfinv": _sp("ndtri"), "rcbrt": lambda x: 1 / np.cbrt(x), "round": _round,
    "rsqrt": lambda x: 1 / np.sqrt(x), "sin": np.sin, "sinh": np.sinh,
    "sinpi": lambda x: np.sin(np.pi * x), "sqrt": np.sqrt, "tan": np.tan, "tanh": np.tanh,
    "trunc": np.trunc, "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, x.dtype.type(0)),
    "atan2": np.arctan2, "copysign": np.copysign, "fdim": lambda a, b: np.maximum(a - b, 0),
    "fdivide": np.divide, "fmax": np.fmax, "fmin": np.fmin, "fmod": np.fmod, "hypot": np.hypot,
    "nextafter": np.nextafter, "pow": np.power, "remainder": np.remainder,
    "rhypot": lambda a, b: 1 / np.hypot(a, b), "fma": lambda a, b, c: a * b + c,
    "norm3d": lambda a, b, c: np.sqrt(a * a + b * b + c * c),
    "rnorm3d": lambda a, b, c: 1 / np.sqrt(a * a + b * b + c * c),
    "norm4d": lambda a, b, c, d: np.sqrt(a * a + b * b + c * c + d * d),
    "rnorm4d": lambda a, b, c, d: 1 / np.sqrt(a * a + b * b + c * c + d * d),
}
assert set(NUMPY) == set(ARITY), set(ARITY) ^ set(NUMPY)
