"""The Scheduler interface: (kernel, target, sizes, mappings) -> ranked Schedules.

A Schedule fixes, for every statement, the mapping used and, for each of its
nests (one per instruction step), a tile size per axis (in blocks of the
instruction's extent, or iterations for loop axes), the order of the loops
over tiles (outermost first), the axis whose tiles are spread across cores,
and the prefetch distance of the software pipeline (tile loads run that many
steps ahead of compute; 1 is double buffering).  Schedules serialise to JSON
and replay exactly.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Callable, Protocol

from ir.bind import Bound
from ir.errors import IsamapError
from ir.kernel import Kernel
from ir.target import Target


@dataclass(frozen=True)
class NestSchedule:
    statement: int
    step: int
    tiles: tuple[tuple[str, int], ...]
    order: tuple[str, ...]
    split: tuple[tuple[str, int], ...] = ()  # (axis, parts): the core grid, row-major
    prefetch: int = 1  # loads run this many steps ahead of compute (1: double buffering)
    # stream-K (compiler.streamk): whole output rows per core plus an equal share of the
    # leftover rows' reduction steps; its layout knobs as (name, value) pairs, () when off
    stream: tuple[tuple[str, int], ...] = ()
    # output tiles in flight: 0 is the pipeline's choice (two for an output held over several
    # steps, so one drains while the next accumulates); 1 gives a GEMM's accumulator a tile twice
    # as big (more reuse of every loaded block) at the cost of each store's drain before the next
    out_slots: int = 0

    def tile(self, axis: str) -> int:
        return self.tile_of[axis]

    def parts(self, axis: str) -> int:
        return self.parts_of.get(axis, 1)

    # the search costs tens of thousands of schedules, each asking these many times
    @cached_property
    def tile_of(self) -> dict[str, int]:
        return dict(self.tiles)

    @cached_property
    def parts_of(self) -> dict[str, int]:
        return dict(self.split)

    @property
    def cores(self) -> int:
        n = 1
        for _, p in self.split:
            n *= p
        return n


@dataclass(frozen=True)
class Schedule:
    kernel: str
    target: str
    sizes: tuple[tuple[str, int], ...]
    strategy: str
    mappings: tuple[int, ...]  # per statement: index into its lowerable legal mappings
    nests: tuple[NestSchedule, ...]
    predicted: dict = field(default_factory=dict, compare=False, hash=False)
    # host targets (llvm backend): per statement, the register/cache blocking of its contraction
    # as sorted (parameter, value) pairs, and the thread count (0: one per core)
    host: tuple[tuple[int, tuple[tuple[str, object], ...]], ...] = ()
    threads: int = 0
    # accelerator targets: run elementwise statements that update a producer's output in place
    # on its output blocks while they are on chip (compiler.epilogue), wherever that is legal
    fuse: bool = True

    def blockings(self) -> dict[int, dict]:
        return {si: dict(items) for si, items in self.host}

    def nest(self, statement: int, step: int) -> NestSchedule:
        for n in self.nests:
            if n.statement == statement and n.step == step:
                return n
        raise KeyError((statement, step))

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Schedule":
        d = json.loads(text)
        nests = tuple(NestSchedule(n["statement"], n["step"], tuple(tuple(t) for t in n["tiles"]),
                                   tuple(n["order"]), tuple(tuple(x) for x in n["split"]), n["prefetch"],
                                   tuple(tuple(kv) for kv in n.get("stream", ())), n.get("out_slots", 0))
                      for n in d["nests"])
        host = tuple((int(si), tuple(tuple(kv) for kv in items)) for si, items in d.get("host", ()))
        return Schedule(d["kernel"], d["target"], tuple(tuple(s) for s in d["sizes"]), d["strategy"],
                        tuple(d["mappings"]), nests, d.get("predicted", {}), host, d.get("threads", 0),
                        d.get("fuse", True))

    def describe(self) -> str:
        lines = [f"# schedule of {self.kernel} on {self.target} ({self.strategy})"]
        for n in self.nests:
            tiles = ", ".join(f"{a}={t}" for a, t in n.tiles)
            lines.append(f"S{n.statement}.{n.step}: mapping #{self.mappings[n.statement]} tiles [{tiles}] "
                         f"order {' > '.join(n.order)}"
                         + (f" cores {' x '.join(f'{a}/{p}' for a, p in n.split)}" if n.split else "")
                         + f" prefetch {n.prefetch}" + (f" output slots {n.out_slots}" if n.out_slots else "")
                         + (" stream-K " + " ".join(f"{k}={v}" for k, v in n.stream) if n.stream else ""))
        for si, items in self.host:
            lines.append(f"S{si}: blocking " + " ".join(f"{k}={v}" for k, v in items))
        if self.threads:
            lines.append(f"threads {self.threads}")
        if not self.fuse:
            lines.append("no fusion")
        for k, v in self.predicted.items():
            lines.append(f"# predicted {k}: {v}")
        return "\n".join(lines) + "\n"


class Scheduler(Protocol):
    name: str

    def schedule(self, kernel: Kernel, bound: Bound, target: Target, budget: int | None = None) -> list[Schedule]:
        ...


REGISTRY: dict[str, Callable[[], Scheduler]] = {}
DEFAULT = "analytical"
# a progress bar on stderr for searches that run past a second (the CLI turns it on for
# `compile` and `run` on a terminal; the library stays silent)
PROGRESS = False


def register(name: str):
    def deco(factory):
        REGISTRY[name] = factory
        return factory
    return deco


def get(name: str | None) -> Scheduler:
    from . import cpsat, search, tune, vendor  # noqa: F401 - importing registers the strategies
    name = name or DEFAULT
    if name not in REGISTRY:
        raise IsamapError(f"unknown scheduler '{name}' (available: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]()
