"""Measured search: evolutionary mutation of schedules, ranked by a learned model, timed on the backend.

Seeds are the vendor and analytical schedules (and whatever the tuning
database already holds for the workload).  Each round mutates the best
measured schedules (tile sizes, core grid, loop order, prefetch), ranks the
mutants with a ridge model trained on every measurement so far (the
analytical model until there are enough), measures the most promising ones
on the simulator (timing only) in a local process pool -- or on Ray workers
-- and records every result in the database.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np

from ir.bind import Bound, bind
from ir.errors import IsamapError
from ir.kernel import Kernel
from ir.target import Target

from compiler.bench.progress import Progress

from .base import NestSchedule, Schedule, get, register
from .cost import auto_prefetch, schedule_cost
from .learned import features, make_model, spearman
from .search import tap_axes
from .space import candidates, fits


def measure(k: Kernel, b: Bound, t: Target, cands, sched: Schedule) -> float:
    from compiler import rowgroup
    from compiler.backends.sim.simulate import Simulator
    from compiler.lower import lower
    prog = lower(k, b, t, rowgroup.apply(k, t, cands, sched), cands)
    arrays = {x.name: np.zeros(b.shapes[x.name], dtype=x.dtype.np) for x in k.inputs}
    sim = Simulator(t, prog, k, b, arrays, functional=False)
    sim.run()
    cycles, _, _ = sim.timing()
    return float(cycles)


_SHARED: tuple | None = None  # what forked `measure_many` workers time schedules of


def _measure_shared(sched: Schedule) -> float:
    k, b, t, cands = _SHARED
    return measure(k, b, t, cands, sched)


def jobs() -> int:
    """Processes for timing schedules side by side: ISAMAP_JOBS, else the CPUs this process may use."""
    env = os.environ.get("ISAMAP_JOBS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise IsamapError(f"ISAMAP_JOBS={env!r}: expected a number of processes") from None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def measure_many(k: Kernel, b: Bound, t: Target, cands, scheds: list[Schedule]) -> list[float]:
    """`measure` for several schedules, in forked processes where there are CPUs to spare: the
    scheduler's finalists each take a second or more of simulation on a big convolution.
    Forked workers share the lowered candidates as they are (nothing is pickled but the
    schedules and the cycles); without fork (Windows, macOS' default) they run here in turn."""
    global _SHARED
    n = min(jobs(), len(scheds))
    if n > 1 and "fork" in multiprocessing.get_all_start_methods():
        _SHARED = (k, b, t, cands)
        try:
            with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) as pool:
                return list(pool.map(_measure_shared, scheds))
        finally:
            _SHARED = None
    return [measure(k, b, t, cands, s) for s in scheds]


def _remote_measure(args) -> tuple[float | None, str | None]:
    src, kname, tpath, sizes, sched_json = args
    try:
        import hw_models
        from compiler.frontend import parse
        k = parse(src).kernel(kname)
        t = hw_models.load(tpath)
        b = bind(k, sizes)
        return measure(k, b, t, candidates(k, b, t), Schedule.from_json(sched_json)), None
    except Exception as e:  # noqa: BLE001 - a failed candidate is a recorded error, not a crash
        return None, f"{type(e).__name__}: {e}"


def _nests(cands, sched: Schedule):
    out = []
    for si, cs in enumerate(cands):
        out += cs[sched.mappings[si]].nests
    return out


def mutate(rng: random.Random, t: Target, cands, sched: Schedule) -> Schedule | None:
    nests = _nests(cands, sched)
    i = rng.randrange(len(nests))
    n, ns = nests[i], sched.nests[i]
    tiles = dict(ns.tiles)
    kind = rng.choice(["tile", "tile", "tile", "split", "order", "prefetch", "output"])
    split, order, pf, out = ns.split, ns.order, ns.prefetch, ns.out_slots
    if kind == "tile":
        taps = [x.name for x in tap_axes(n)]
        a = rng.choice([x.name for x in n.axes if x.instr_var is not None] + taps or [x.name for x in n.axes])
        cap = -(-n.axis(a).blocks // ns.parts(a))
        if a in taps:  # a filter's taps: one at a time or all in each tile (search.best_nest)
            tiles[a] = 1 if tiles[a] > 1 else cap
        else:
            tiles[a] = max(1, min(cap, rng.choice([tiles[a] * 2, tiles[a] // 2, tiles[a] + 1, tiles[a] - 1, cap])))
    elif kind == "split" and t.cores > 1:
        par = [a for a in n.axes if not a.reduction and a.blocks > 1]
        if par:
            a = rng.choice(par)
            others = [b for b in par if b.name != a.name]
            if others and rng.random() < 0.6:
                b = rng.choice(others)
                divs = [d for d in range(2, t.cores) if t.cores % d == 0 and d <= a.blocks
                        and t.cores // d <= b.blocks]
                if divs:
                    d = rng.choice(divs)
                    split = ((a.name, d), (b.name, t.cores // d))
                else:
                    split = ((a.name, t.cores),)
            else:
                split = ((a.name, t.cores),)
        for a, p in split:
            tiles[a] = max(1, min(tiles[a], -(-n.axis(a).blocks // p)))
    elif kind == "order":
        par = [x for x in order if not n.axis(x).reduction and n.axis(x).instr_var is not None]
        if len(par) > 1:
            rng.shuffle(par)
            from .vendor import default_order
            order = default_order(n, par)
    elif kind == "output":  # one output tile in flight, or the pipeline's default
        out = 0 if out else 1
    else:
        pf = max(1, min(8, pf + rng.choice([-1, 1, 2])))
    new = NestSchedule(ns.statement, ns.step, tuple(tiles.items()), order, split, pf, out_slots=out)
    if kind != "prefetch":
        new = replace(new, prefetch=auto_prefetch(t, n, new))
    while fits(t, n, new) is not None and new.prefetch > 1:
        new = replace(new, prefetch=new.prefetch // 2)
    if fits(t, n, new) is not None and kind != "output" and not out:
        new = replace(new, out_slots=1)  # bigger tiles with one output tile in flight
    if fits(t, n, new) is not None:
        return None
    nests_s = list(sched.nests)
    nests_s[i] = new
    return replace(sched, nests=tuple(nests_s), strategy="tuned")


class _Pool:
    def __init__(self, workers):
        self.ray = None
        self.pool = None
        if isinstance(workers, str) and workers.startswith("ray://"):
            try:
                import ray  # optional extra
            except ImportError:
                raise IsamapError("--workers ray://... needs Ray: pip install 'isamap[ray]'") from None
            ray.init(address=workers, ignore_reinit_error=True)
            self.ray = ray
            self.remote = ray.remote(_remote_measure)
        else:
            n = int(workers or 1)
            self.n = n
            if n > 1:
                self.pool = ProcessPoolExecutor(n)

    def map(self, args: list) -> list:
        if self.ray is not None:
            return self.ray.get([self.remote.remote(a) for a in args])
        if self.pool is not None:
            return list(self.pool.map(_remote_measure, args))
        return [_remote_measure(a) for a in args]

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()


def tune(k: Kernel, b: Bound, t: Target, trials: int = 16, db=None, workers=1, progress: bool = True,
         seed: int = 0) -> tuple[Schedule, dict]:
    from ir import printer
    from .db import workload_key
    rng = random.Random(seed)
    cands = candidates(k, b, t)
    wl = workload_key(k, b.sizes, t)
    src = printer.kernel(k)
    measured: dict[str, tuple[Schedule, float]] = {}
    if db is not None:
        for r in db.records(wl):
            if r.error is None and r.cycles is not None:
                measured[r.schedule.to_json()] = (r.schedule, r.cycles)
    seeds = [get("vendor").schedule(k, b, t)[0], get("analytical").schedule(k, b, t)[0]]
    pool = _Pool(workers)
    batch = max(1, getattr(pool, "n", 4))
    preds, actual = [], []
    history: list = []  # best measured cycles after each measurement
    done = 0
    t0 = time.time()
    bar = Progress(f"tune {k.name} on {t.name}", trials, progress)

    def run(scheds: list[Schedule], predicted: list[float] | None):
        nonlocal done
        args = [(src, k.name, t.path or t.name, dict(b.sizes), s.to_json()) for s in scheds]
        for i, (s, (cyc, err)) in enumerate(zip(scheds, pool.map(args))):
            done += 1
            if db is not None:
                db.add(wl, k, t, dict(b.sizes), s, cycles=cyc, error=err)
            if err is None:
                measured[s.to_json()] = (s, cyc)
            history.append(min((c for _, c in measured.values()), default=None))
            if err is None:
                if predicted is not None:
                    preds.append(predicted[i])
                    actual.append(cyc)
            best = min((c for _, c in measured.values()), default=float("nan"))
            bar.step(f"best {best:.0f} cycles")

    try:
        todo = [s for s in seeds if s.to_json() not in measured][:max(0, trials)]
        run(todo, None)
        while done < trials:
            ranked = sorted(measured.values(), key=lambda x: x[1])[:3]
            pool_c = {}
            for _ in range(64):
                parent = rng.choice(ranked)[0]
                m = mutate(rng, t, cands, parent)
                if m is not None and m.to_json() not in measured:
                    pool_c[m.to_json()] = m
            if not pool_c:
                break
            cand_list = list(pool_c.values())
            X = np.array([features(t, _nests(cands, s), s) for s in cand_list])
            if len(measured) >= 6:
                hist = list(measured.values())
                Xh = np.array([features(t, _nests(cands, s), s) for s, _ in hist])
                model = make_model().fit(Xh, np.log([c for _, c in hist]))
                score = np.exp(model.predict(X))
            else:
                score = np.array([schedule_cost(t, _nests(cands, s), list(s.nests))["cycles"] for s in cand_list])
            order = np.argsort(score)[:min(batch, trials - done)]
            run([cand_list[i] for i in order], [float(score[i]) for i in order])
    finally:
        pool.close()
        bar.close()
    best_s, best_c = min(measured.values(), key=lambda x: x[1])
    stats = {"trials": done, "best_cycles": best_c, "seconds": time.time() - t0,
             "vendor_cycles": measured.get(seeds[0].to_json(), (None, None))[1],
             "analytical_cycles": measured.get(seeds[1].to_json(), (None, None))[1],
             "spearman": spearman(preds, actual) if len(preds) >= 3 else None, "history": history}
    return replace(best_s, predicted={"cycles": best_c}), stats


@register("tuned")
class Tuned:
    """Best measured schedule from the tuning database, or a short measured search."""

    name = "tuned"
    trials = 12

    def schedule(self, kernel: Kernel, bound: Bound, target: Target, budget: int | None = None) -> list[Schedule]:
        from .db import TuningDB, default_path, workload_key
        path = default_path()
        db = TuningDB(path) if path else None
        if db is not None:
            r = db.best(workload_key(kernel, bound.sizes, target))
            if r is not None:
                return [r.schedule]
        s, _ = tune(kernel, bound, target, budget or self.trials, db, progress=False)
        return [s]
