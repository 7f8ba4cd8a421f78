"""Search strategies over the analytical cost model: `analytical` (pruned grid) and `exhaustive`."""
from __future__ import annotations

import itertools
from dataclasses import replace
from math import ceil, prod

from ir.bind import Bound
from ir.kernel import Kernel
from ir.target import Target

from compiler import rowgroup
from compiler.epilogue import fused_statements, reserves
from compiler.nest import Nest

from .base import NestSchedule, Schedule, register
from .cost import auto_prefetch, nest_cost
from .space import candidates, fits, pipeline
from .vendor import default_order, vendor_nest


def _tile_choices(n: int, full: bool) -> list[int]:
    if full or n <= 12:
        return list(range(1, n + 1))
    vals = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, n}
    vals |= {ceil(n / d) for d in (2, 3, 4, 5, 6, 8)}
    vals |= {d for d in range(1, min(n, 64) + 1) if n % d == 0}  # even tiles: no ragged last one
    return sorted(v for v in vals if 1 <= v <= n)


def fitted(target: Target, nest: Nest, tiles: dict[str, int], order, split,
           reserve: tuple[str, int] | None = None) -> NestSchedule | None:
    """A schedule with these tiles and the deepest prefetch (up to the model's choice) that fits
    (with ``reserve``, `space.footprint`'s room for a fused epilogue, beside it)."""
    full = {a.name: 1 for a in nest.axes}
    full.update(tiles)
    ns = NestSchedule(nest.statement, nest.step_index, tuple(full.items()), tuple(order), split, 1)
    top = auto_prefetch(target, nest, ns)
    # double-buffered output first, then one output tile (its stores drain between tiles), then no
    # double buffering at all (the library's last resort)
    for out in (0, 1):
        d = top
        while d >= 1:
            cand = replace(ns, prefetch=d, out_slots=out)
            if fits(target, nest, cand, reserve) is None:
                return cand
            d //= 2
        if pipeline(target, nest, ns).slots.get(nest.output.name, 1) <= 1:
            break  # the output holds one tile anyway
    single = replace(ns, prefetch=0)
    return single if fits(target, nest, single, reserve) is None else None


def nothing_fits(target: Target, nest: Nest):
    """The user error for a request no tiling can satisfy: name the memory and the sizes."""
    from ir.errors import IsamapError
    smallest = NestSchedule(nest.statement, nest.step_index, tuple((a.name, 1) for a in nest.axes),
                            tuple(a.name for a in nest.axes), (), 0)
    why = fits(target, nest, smallest) or "no tiling fits"
    raise IsamapError(f"nothing fits on {target.name}: even single blocks of {nest.instr.name} exceed a "
                      f"memory ({why})", nest.span)


def core_grids(target: Target, nest: Nest) -> list[tuple]:
    """Ways to spread a nest over the cores: none, one parallel axis, or two or three (a full
    factoring; three for a convolution's channels, images and rows, none of which alone
    divides 24 cores evenly)."""
    grids: list = [()]
    if target.cores > 1:
        par = [a for a in nest.axes if not a.reduction and a.blocks > 1]
        P = target.cores
        grids += [((a.name, P),) for a in par]
        seen = set()
        for a, b in itertools.permutations(par, 2):
            for pa in range(2, P):
                pb = P // pa
                grid = ((a.name, pa), (b.name, pb))
                # the same grid written the other way round costs the same: the first is kept
                if pa * pb == P and pb >= 2 and pa <= a.blocks and pb <= b.blocks and frozenset(grid) not in seen:
                    seen.add(frozenset(grid))
                    grids.append(grid)
        if GRIDS3:  # each combination once, in nest-axis order: the row-major grid is the same work
            for a, b, c in itertools.combinations(par, 3):
                for pa in range(2, min(P, a.blocks) + 1):
                    for pb in range(2, min(P, b.blocks) + 1):
                        pc, rest = divmod(P, pa * pb)
                        if rest == 0 and 2 <= pc <= c.blocks:
                            grids.append(((a.name, pa), (b.name, pb), (c.name, pc)))
    return grids


GRIDS3 = True  # three-axis grids (off: the grids before they were added, for comparison)


TIE = 0.01  # modeled cycles this close count as a tie
MAX_TAPS = 16  # loop reductions this short may be tiled whole


def tap_axes(nest: Nest) -> list:
    """Short reduction loops outside the instruction (a convolution's filter taps): a tile steps
    them one at a time or takes them whole; whole, the operands that span them (the filter)
    stay on chip instead of being reloaded for every output tile."""
    return [a for a in nest.axes if a.instr_var is None and a.reduction and 1 < a.blocks <= MAX_TAPS]


MAX_ROWS = 4  # output rows a merged tile may hold (its input rows shared between them)


def row_axes(nest: Nest) -> list:
    """Loop axes an input reads only with a filter row added (``OperandInfo.merged``): a tile of
    several output rows holds each input row once, so the search tries a few of them."""
    names = {o.merged[0] for o in nest.inputs if o.merged is not None}
    return [a for a in nest.axes if a.name in names]


def slide_axes(nest: Nest) -> list:
    """Parallel loop axes a window slides along (``OperandInfo.along_run``: NHWC's output
    columns over a row of pixels): one column a step reloads the row's tile for every column;
    the whole row (or half) in one step loads it once."""
    names = {o.window[1] for o in nest.inputs if o.window is not None and o.along_run}
    return [a for a in nest.axes if a.name in names and not a.reduction and a.blocks > 1]


def reduction_axes(nest: Nest) -> list[str]:
    return [a.name for a in nest.axes if a.reduction and a.instr_var is not None]


def family(split, tiles: dict[str, int], red: list[str]) -> tuple:
    """The schedules `verify` times at most one of: a core grid (the same grid written in
    another axis order is the same family) and a regime of reduction tiles."""
    return tuple(sorted(split)), tuple(min(tiles.get(a, 1), 16) // 4 for a in red)


def best_nest(target: Target, nest: Nest, full: bool = False, limit: int = 60000,
              keep: list | None = None, prune: bool = True,
              incumbent: float | None = None, reserve: tuple[str, int] | None = None) -> tuple[NestSchedule, dict]:
    """The model's best schedule for one nest; ``keep`` collects (cycles, schedule) of the
    fitting ones that can matter (all of them with ``prune`` off).

    ``incumbent``: the modeled cycles of another mapping of the same statement, already
    found.  A tiling whose compute alone costs more cannot make this mapping the one chosen,
    so it is neither costed nor kept: the search then returns this mapping's true best only
    where that beats the incumbent (a convolution's 24 mappings share one; 2-3x faster).
    ``reserve``: room a fused epilogue needs beside the nest (`space.footprint`)."""
    par_bound = [a for a in nest.axes if a.instr_var is not None and not a.reduction]
    splits = core_grids(target, nest)
    best = vendor_nest(target, nest)
    best_cost = nest_cost(target, nest, best) if fits(target, nest, best, reserve) is None else None
    tunable = [a for a in nest.axes if a.instr_var is not None]
    taps = tap_axes(nest)
    rows = row_axes(nest)
    slides = slide_axes(nest)
    names = [a.name for a in tunable + taps + rows + slides]
    red = reduction_axes(nest)
    per_exec = nest.instr.cycles() / target.engine(nest.instr.engine).count
    # what `verify` may still pick from ``keep``: each family's best, among the three best
    # families; a tiling whose compute alone costs more than that and than the near-ties of
    # the best cannot matter, and is skipped before it is fitted and costed (the choice is
    # exactly the one the full grid gives, in a fraction of the time on big mapspaces)
    fam_best: dict = {}
    third = float("inf")
    evaluated = outdone = 0
    costed: list = []
    for split in splits:
        caps = {a.name: -(-a.blocks // dict(split).get(a.name, 1)) for a in nest.axes}
        choices = [_tile_choices(caps[a.name], full) for a in tunable] + [[1, a.blocks] for a in taps] + \
            [list(range(1, min(caps[a.name], MAX_ROWS) + 1)) for a in rows] + \
            [sorted({1, -(-caps[a.name] // 2), caps[a.name]}) for a in slides]
        fixed = prod(caps[a.name] for a in nest.axes if a.name not in names)
        perms = list(itertools.permutations([a.name for a in par_bound])) or [()]
        for perm in perms:
            order = default_order(nest, list(perm))
            for combo in itertools.product(*choices):
                evaluated += 1
                if evaluated > limit:
                    break
                tiles = dict(zip(names, combo))
                # the busiest core's compute: steps x blocks a step, the reduction's last latency
                floor = fixed * prod(ceil(caps[a] / t) * t for a, t in tiles.items()) * per_exec \
                    + nest.instr.latency
                if prune and incumbent is not None and floor > incumbent * (1 + TIE):
                    outdone += 1
                    continue
                if prune and best_cost is not None and floor > best_cost["cycles"] * (1 + TIE):
                    if keep is None:
                        continue
                    fam = family(split, tiles, red)
                    if floor > min(third, fam_best.get(fam, float("inf"))):
                        continue
                ns = fitted(target, nest, tiles, order, split, reserve)
                if ns is None:
                    continue
                c = nest_cost(target, nest, ns)
                costed.append((c, ns))
                if keep is not None:
                    keep.append((c["cycles"], ns))
                    fam = family(split, tiles, red)
                    if c["cycles"] < fam_best.get(fam, float("inf")):
                        fam_best[fam] = c["cycles"]
                        if len(fam_best) >= VERIFY_FINALISTS:
                            third = sorted(fam_best.values())[VERIFY_FINALISTS - 1]
                if best_cost is None or c["cycles"] < best_cost["cycles"]:
                    best, best_cost = ns, c
    if best_cost is None:
        if outdone:  # every tiling that fits lost to the incumbent's compute
            return best, {"cycles": float("inf"), "pressure": 0.0}
        nothing_fits(target, nest)
    # near-ties (within the model's error) go to the schedule that stresses the window least
    near = [(c, ns) for c, ns in costed if c["cycles"] <= best_cost["cycles"] * (1 + TIE)]
    if near:
        best_cost, best = min(near, key=lambda x: (x[0]["pressure"], x[0]["cycles"]))
    return best, best_cost


PROGRESS_AFTER = 1.0  # seconds of search before its progress bar shows (quick compiles show none)
VERIFY_INSTRUCTIONS = 30000  # simulate the finalists when a single-nest kernel is at most this big
VERIFY_FINALISTS = 3


class _Search:
    name = "analytical"
    full = False

    def __init__(self):
        self._kept: dict[int, list] = {}  # id(nest) -> every fitting schedule with its cost

    def nest(self, target: Target, nest: Nest, incumbent: float | None = None,
             reserve: tuple[str, int] | None = None):
        keep: list = []
        out = best_nest(target, nest, self.full, keep=keep, incumbent=incumbent, reserve=reserve)
        self._kept[id(nest)] = keep  # verify picks its finalists here
        return out

    def schedule(self, kernel: Kernel, bound: Bound, target: Target, budget: int | None = None) -> list[Schedule]:
        from compiler.bench.progress import Progress

        from . import base
        per_stmt = candidates(kernel, bound, target)
        self._kept.clear()
        # one step a mapping searched, and one for timing the finalists on the simulator (about as
        # long as the search, where there is such a step)
        maps = sum(map(len, per_stmt))
        timed = len(per_stmt) == 1 and any(len(c.nests) == 1 and c.nests[0].executions <= VERIFY_INSTRUCTIONS
                                           for c in per_stmt[0])
        bar = Progress(f"scheduling {kernel.name} on {target.name}", maps + 1, base.PROGRESS,
                       [1.0] * maps + [maps if timed else 0.1], after=PROGRESS_AFTER)
        options: list[list[tuple[float, list]]] = []  # per statement, per mapping: (cycles, nest schedules)
        for cands in per_stmt:
            opts = []
            for c in cands:
                # one statement: the cheapest mapping is the choice, and the best found so far
                # bounds the others' search (with several, fusion weighs each mapping whole)
                best = min((o[0] for o in opts), default=None) if len(per_stmt) == 1 else None
                scheds = [self.nest(target, n, best if len(c.nests) == 1 else None) for n in c.nests]
                opts.append((sum(cost["cycles"] for _, cost in scheds), [s for s, _ in scheds]))
                bar.step("timing the finalists" if bar.done + 2 == bar.total else "searching tilings")
            options.append(opts)

        totals: dict[tuple, tuple[float, dict[int, int]]] = {}

        def total(maps: list[int]) -> tuple[float, dict[int, int]]:
            key = tuple(maps)
            if key not in totals:
                totals[key] = _total(maps)
            return totals[key]

        def _total(maps: list[int]) -> tuple[float, dict[int, int]]:
            # statements fused into their producer run on its blocks on chip: their own nests'
            # main-memory round trips are gone (their vector work overlaps the producer's
            # pipeline); a row group costs its estimate where that is less than its members'
            chosen = [cs[m].nests for cs, m in zip(per_stmt, maps)]
            fused = fused_statements(kernel, target, chosen)
            cost = {si: options[si][m][0] for si, m in enumerate(maps) if si not in fused}
            out = sum(cost.values())
            if len(per_stmt) > 1:
                for g in rowgroup.groups(kernel, target, chosen, fused):
                    members = sum(cost.get(si, 0.0) for si in g.statements)
                    out -= max(0.0, members - rowgroup.estimate(target, g))
            return out, fused
        mappings = [min(range(len(o)), key=lambda i: (o[i][0], i)) for o in options]
        # each statement's cheapest mapping alone may keep it from fusing (a 32-vector form of
        # E(m, n) = C(m, n) / 4 at M = 1, looping over m): one pass over the statements, each
        # taking the mapping that makes the whole kernel cheapest with the others as they are
        for si, o in enumerate(options):
            if len(o) > 1:
                mappings[si] = min(range(len(o)), key=lambda i: (total(mappings[:si] + [i] + mappings[si + 1:])[0], i))
        completions = _completions(options, mappings, total)
        best_total = min([(total(mappings)[0], mappings)] + [(c, m) for _, m, c, _ in completions], key=lambda x: x[0])
        mappings = list(best_total[1])
        # a producer's tiling must leave its fused epilogue room (the lowering otherwise runs the
        # epilogue apart): where the one chosen alone does not, the producer is searched again
        chosen_nests = [per_stmt[si][m].nests for si, m in enumerate(mappings)]
        for si, reserve in reserves(kernel, target, chosen_nests).items():
            cyc, scheds = options[si][mappings[si]]
            n = chosen_nests[si][-1]
            if fits(target, n, scheds[-1], reserve) is not None:
                ns, cost = self.nest(target, n, reserve=reserve)
                options[si][mappings[si]] = (cyc - nest_cost(target, n, scheds[-1])["cycles"] + cost["cycles"],
                                             scheds[:-1] + [ns])
                totals.clear()
        total_cycles, fused = total(mappings)
        sched = Schedule(kernel.name, target.name, tuple(bound.sizes.items()), self.name, tuple(mappings),
                         _nests_of(options, mappings), {"cycles": round(total_cycles)})
        try:
            return [self.verify(kernel, bound, target, per_stmt, sched, fused, options, completions)]
        finally:
            bar.step()
            bar.close()

    def verify(self, kernel, bound, target, per_stmt, sched: Schedule, fused: dict[int, int],
               options: list | None = None, completions: list | None = None) -> Schedule:
        """For small single-nest kernels, let the simulator pick among the model's finalists and vendor.

        The analytical model ranks thousands of schedules in milliseconds but can be off by
        tens of percent; timing the few best on the backend makes the choice never worse than
        the library heuristic in measured cycles (where the model puts that within
        ``VERIFY_SPREAD`` of the best: beyond, it is not worth seconds of simulation).
        Statements fused into their producer (an mlp's bias and activation; ``fused``:
        statement -> its producer) do not count as nests of their own.  ``options`` (per
        statement, per mapping: modeled cycles and nest schedules) adds the runner-up mapping
        (with ``completions``, `_completions`: the other statements' mappings that go with it)."""
        nests = [n for si, cs in enumerate(per_stmt) if si not in fused for n in cs[sched.mappings[si]].nests]
        if len(nests) != 1 or nests[0].executions > VERIFY_INSTRUCTIONS:
            return sched
        from dataclasses import replace

        from .tune import measure_many
        nest = nests[0]
        others = [n for n in sched.nests if (n.statement, n.step) != (nest.statement, nest.step_index)]

        def with_nest(ns: NestSchedule, base: Schedule = sched) -> Schedule:
            return replace(base, nests=tuple(sorted(others + [ns], key=lambda n: (n.statement, n.step))))
        keep = self._kept.get(id(nest))
        if keep is None:
            keep = []
            best_nest(target, nest, self.full, keep=keep)
        finalists = model_finalists(nest, keep)
        seen = set(finalists)
        v = vendor_nest(target, nest)
        if v not in seen and fits(target, nest, v) is None:
            finalists.append(v)
        # stream-K (whole rows per core plus an even share of the leftover rows' reduction)
        # where the rows do not divide over the cores: a few layouts, timed like the rest
        from compiler import streamk
        for kn in streamk.VARIANTS:
            if streamk.applicable(target, nest, kn) is None:
                finalists.append(streamk.nest_schedule(nest, kn))
        from .cost import any_nest_cost
        modeled = [any_nest_cost(target, nest, ns)["cycles"] for ns in finalists]
        cands = [with_nest(ns) for ns in finalists]
        nest_of = {c: nest for c in cands}
        # the runner-up mapping's best too: the model can misjudge one mapping against another
        # (sim-nnp's conv2d with its pixels at the input's pitch, modeled below the windowed
        # mapping, simulated 17% slower)
        for maps, n2, c2 in _runners_up(options, per_stmt, sched, nest, completions or []):
            alt = replace(sched, mappings=maps, nests=_nests_of(options, maps))
            cands.append(alt)
            modeled.append(c2)
            nest_of[alt] = n2
        cands = plausible(cands, modeled)
        timed = list(zip(measure_many(kernel, bound, target, per_stmt, cands), cands))
        if not timed:
            return sched
        cyc, best = min(timed, key=lambda x: x[0])
        # the model's window term is least reliable for the reduction tile (how many loads a step
        # issues): time the winner with shorter reduction tiles too
        nest = nest_of[best]
        ns = best.nest(nest.statement, nest.step_index)
        red = reduction_axes(nest)
        alts = _shorter_reductions(target, nest, ns, red) if not ns.stream else []
        alts = [with_nest(alt, best) for alt in plausible(alts, [nest_cost(target, nest, a)["cycles"] for a in alts],
                                                          any_nest_cost(target, nest, ns)["cycles"])]
        for c, cand in zip(measure_many(kernel, bound, target, per_stmt, alts), alts):
            timed.append((c, cand))
            if c < cyc:
                cyc, best = c, cand
        # the model's cycles of what was picked (it may not be the model's own first choice)
        old = sched.nest(nests[0].statement, nests[0].step_index)
        picked = best.nest(nest.statement, nest.step_index)
        model = sched.predicted["cycles"] - any_nest_cost(target, nests[0], old)["cycles"] + \
            any_nest_cost(target, nest, picked)["cycles"]
        return replace(best, predicted={**sched.predicted, "cycles": round(model), "simulated": cyc,
                                        "verified": len(timed)})


def _nests_of(options, maps) -> tuple[NestSchedule, ...]:
    """The nest schedules of each statement's mapping in ``maps`` (``options``: per statement,
    per mapping, its modeled cycles and nest schedules)."""
    return tuple(ns for si, m in enumerate(maps) for ns in options[si][m][1])


def _completions(options, mappings: list[int], total) -> list[tuple[int, tuple[int, ...], float, dict]]:
    """For each statement and each of its mappings: (statement, the whole kernel's mappings with
    that one, its kernel cycles, the statements fused and where), the statements after it each
    taking in turn the mapping that makes the kernel cheapest.  A producer's mapping that only
    pays off with its consumer's matching layout (a convolution whose filter x pixel blocks the
    bias and ReLU fuse into) is weighed with that layout, which one pass over the statements as
    they are may never try."""
    if len(options) < 2:
        return []
    out = []
    for si, o in enumerate(options):
        if len(o) < 2 or si == len(options) - 1:
            continue
        for i in range(len(o)):
            maps = mappings[:si] + [i] + mappings[si + 1:]
            for sj in range(si + 1, len(options)):
                if len(options[sj]) > 1:
                    maps[sj] = min(range(len(options[sj])), key=lambda j: (total(maps[:sj] + [j] + maps[sj + 1:])[0], j))
            out.append((si, tuple(maps), *total(maps)))
    return out


def _runners_up(options, per_stmt, sched: Schedule, nest: Nest, completions: list) -> list[tuple]:
    """(the kernel's mappings, the nest to time, modeled cycles) of the RUNNERS_UP next-cheapest
    mappings of the statement of ``nest``, the one nest ``verify`` times (its epilogues fused):
    one statement's other mappings, or the `completions` of that statement's."""
    if options is None:
        return []
    sv = nest.statement
    if len(per_stmt) == 1:
        alts = [((i,), o[0]) for i, o in enumerate(options[0])]
        fused_of: dict = {(i,): {} for i in range(len(options[0]))}
    else:  # the rest must fuse into it, leaving one nest to time
        alts = [(maps, cyc) for si, maps, cyc, _ in completions if si == sv]
        fused_of = {maps: fused for si, maps, _, fused in completions if si == sv}
    chosen = sched.mappings[sv]
    # a mapping modeled at exactly the chosen one's cycles is its mirror (A and B swapped,
    # C transposed) or a symmetric twin (a convolution's h and w): the next costs up are
    # the runners-up, one mapping per cost
    seen = {next((c for m, c in alts if m[sv] == chosen), None)}
    out = []
    for maps, cyc in sorted(alts, key=lambda x: (x[1], x[0])):
        if cyc in seen or cyc == float("inf") or maps[sv] == chosen:
            continue
        seen.add(cyc)
        cand = per_stmt[sv][maps[sv]]
        if len(cand.nests) == 1 and cand.nests[0].executions <= VERIFY_INSTRUCTIONS \
                and len(fused_of.get(maps, ())) == len(per_stmt) - 1:
            out.append((tuple(maps), cand.nests[0], cyc))
        if len(out) == RUNNERS_UP:
            break
    return out


# other mappings whose best schedule `verify` times (the model misjudges mappings: sim-gemmini-
# fp32's NHWC conv 8x30x30x64 * 3x3x64x128 times its third mapping 5% faster than its first, but
# at 129024 executions it is past VERIFY_INSTRUCTIONS and not verified at all)
RUNNERS_UP = 1


VERIFY_SPREAD = 2.0  # finalists the model puts this far behind the best are not timed


def plausible(schedules: list, modeled: list[float], best: float | None = None) -> list:
    """The schedules whose modeled cycles are within ``VERIFY_SPREAD`` of the best (``best``, or
    the least of ``modeled``).  Measured on the quick GEMM suite and convolutions on three
    targets, no schedule the model put over 1.1x behind ever timed fastest, while the library's
    schedule for a convolution (14-130x slower, 2-6 s to simulate) was half the compile."""
    if not modeled:
        return []
    floor = min(modeled) if best is None else best
    return [s for s, m in zip(schedules, modeled) if m <= floor * VERIFY_SPREAD]


def model_finalists(nest: Nest, keep: list) -> list[NestSchedule]:
    """The model's best of each family (core grid, reduction tiling regime), best first, up to
    VERIFY_FINALISTS: so one systematic model error cannot hide every good schedule."""
    finalists, seen, families = [], set(), set()
    red = reduction_axes(nest)
    for _, ns in sorted(keep, key=lambda x: x[0]):
        fam = family(ns.split, ns.tile_of, red)
        if ns in seen or fam in families:
            continue
        seen.add(ns)
        families.add(fam)
        finalists.append(ns)
        if len(finalists) >= VERIFY_FINALISTS:
            break
    return finalists


def _shorter_reductions(target: Target, nest: Nest, ns: NestSchedule, red: list[str]) -> list[NestSchedule]:
    """Up to two variants of ``ns`` with a shorter reduction tile: about half, and the next
    tile below that divides the axis evenly (no ragged last step)."""
    out: list[NestSchedule] = []
    for a in red[:1]:
        t, blocks = ns.tile(a), nest.axis(a).blocks
        for v in (ceil(t / 2), next((d for d in range(t - 1, 0, -1) if blocks % d == 0), None)):
            if not v or v >= t:
                continue
            tiles = tuple((x, v if x == a else n) for x, n in ns.tiles)
            alt = fitted(target, nest, dict(tiles), ns.order, ns.split)
            if alt is not None and alt != ns and alt not in out:
                out.append(alt)
    return out


@register("analytical")
class Analytical(_Search):
    name = "analytical"


@register("exhaustive")
class Exhaustive(_Search):
    name = "exhaustive"
    full = True
