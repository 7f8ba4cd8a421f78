"""A learned cost model: schedule features -> log(measured cycles).

Features are the analytical model's components (per-step engine time, fill,
drain, main-memory time, window bound) and the schedule's knobs (log tile
sizes, cores used, prefetch).  Trained on the tuning database's records, the
model corrects the analytical model where the simulator disagrees.  With
scikit-learn installed (the optional ``learn`` extra) it is a small gradient-
boosted tree ensemble, which can follow the model's non-linear errors (a
prefetch distance that stops helping, a core grid that leaves units idle);
without it, ridge regression in numpy.  ``ISAMAP_LEARNED=ridge|gbt`` forces one.
"""
from __future__ import annotations

import math

import numpy as np

from ir.target import Target

from .base import Schedule
from .cost import any_nest_cost


def features(target: Target, nests, schedule: Schedule) -> np.ndarray:
    f = [1.0]
    tot = {"cycles": 0.0, "step": 0.0, "fill": 0.0, "drain": 0.0, "hbm_cycles": 0.0, "window_step": 0.0,
           "steps": 0.0}
    tiles = 0.0
    cores = 0.0
    pref = 0.0
    single = 0.0  # nests with one output tile in flight
    for n, ns in zip(nests, schedule.nests):
        c = any_nest_cost(target, n, ns)
        for key in tot:
            tot[key] += c[key]
        tiles += sum(math.log2(t) for _, t in ns.tiles)
        cores += math.log2(max(1, ns.cores))
        pref += ns.prefetch
        single += ns.out_slots == 1
    f += [math.log1p(tot[k]) for k in ("cycles", "fill", "drain", "hbm_cycles")]
    f += [math.log1p(tot["step"] * tot["steps"]), math.log1p(tot["window_step"] * tot["steps"])]
    f += [tiles, cores, pref, single]
    return np.asarray(f)


class Ridge:
    def __init__(self, alpha: float = 1e-2):
        self.alpha = alpha
        self.w = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> "Ridge":
        X = np.asarray(X, float)
        A = X.T @ X + self.alpha * np.eye(X.shape[1])
        self.w = np.linalg.solve(A, X.T @ np.asarray(y, float))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, float) @ self.w


def make_model(kind: str | None = None):
    """A fresh regressor with ``fit(X, y)`` / ``predict(X)``: gradient-boosted trees when
    scikit-learn is installed, else ridge regression."""
    import os
    kind = kind or os.environ.get("ISAMAP_LEARNED") or ("gbt" if _has_sklearn() else "ridge")
    if kind == "ridge":
        return Ridge()
    if kind != "gbt":
        from ir.errors import IsamapError
        raise IsamapError(f"ISAMAP_LEARNED takes 'ridge' or 'gbt', not {kind!r}")
    if not _has_sklearn():
        from ir.errors import IsamapError
        raise IsamapError("the gradient-boosted model needs scikit-learn: pip install 'isamap[learn]'")
    from sklearn.ensemble import GradientBoostingRegressor
    return GradientBoostingRegressor(n_estimators=150, max_depth=2, learning_rate=0.1, subsample=1.0,
                                     random_state=0)


def _has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401 - optional extra
    except ImportError:
        return False
    return True


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3:
        return float("nan")
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
