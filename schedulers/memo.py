"""Schedules remembered across runs, in the shared on-disk cache (``schedules`` kind).

The analytical search and its simulated finalists take seconds on big mapspaces (a 3x3
convolution on sim-nnp: 24 mappings, tens of thousands of tilings, five simulations), and
they give the same answer every time for the same kernel, sizes, target and code. The
deterministic strategies' answers are therefore kept, keyed by all four: the kernel and the
target as their full IR, and the project's code (any change to it is a different key), so an
entry can never outlive what made it.  Strategies that measure or learn (``tuned``) are not
kept: their own tuning database is their memory.
"""
from __future__ import annotations

from ir.bind import Bound
from ir.kernel import Kernel
from ir.target import Target

from . import base

KEPT = ("analytical", "exhaustive", "vendor", "cpsat")  # pure functions of their inputs and the code
CODE = ("ir", "compiler", "schedulers")  # what a schedule's choice can depend on


def schedule(kernel: Kernel, bound: Bound, target: Target, name: str | None) -> tuple[base.Schedule, bool]:
    """The strategy's first schedule, and whether it came from the cache."""
    strategy = base.get(name)
    if strategy.name not in KEPT:
        return strategy.schedule(kernel, bound, target)[0], False
    from compiler.cache import code_fingerprint, entry_file, load_entry, store_entry

    def key() -> bytes:
        # the mapping switches (tests and comparisons turn them off) change the candidates
        import compiler.mapping.bind
        import compiler.nest
        import compiler.routes
        switches = repr((compiler.nest.WINDOWS, compiler.nest.PITCHED_WINDOWS, compiler.mapping.bind.PITCHED,
                         compiler.routes.EARLY_STORES)).encode()
        return b"\0".join([b"schedule", code_fingerprint(CODE), strategy.name.encode(), repr(kernel).encode(),
                           repr(sorted(bound.sizes.items())).encode(), repr(target).encode(), switches])
    path = entry_file("schedules", key)
    text = load_entry(path)
    if isinstance(text, str):
        try:
            return base.Schedule.from_json(text), True
        except (ValueError, KeyError, TypeError, IndexError):
            pass  # an entry from another layout: computed again and replaced
    sched = strategy.schedule(kernel, bound, target)[0]
    store_entry(path, sched.to_json())
    return sched, False
