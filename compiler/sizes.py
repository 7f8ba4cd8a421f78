"""``--sizes M=64,N=48`` parsing with located errors."""
from __future__ import annotations

import re

from ir.errors import IsamapError, Source, Span

_ITEM = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([^,\s]*)\s*")


def parse_sizes(text: str | None) -> tuple[dict[str, int], dict[str, Span]]:
    if text is None or not text.strip():
        return {}, {}
    src = Source("--sizes", text)
    sizes: dict[str, int] = {}
    spans: dict[str, Span] = {}
    pos = 0
    for part in text.split(","):
        start = pos
        pos += len(part) + 1
        m = _ITEM.fullmatch(part)
        if not m:
            col = start + len(part) - len(part.lstrip()) + 1
            raise IsamapError(f"expected NAME=VALUE, got {part.strip()!r}",
                              Span(src, 1, col, 1, col + max(1, len(part.strip()))))
        name, val = m.group(1), m.group(2)
        ncol = start + m.start(1) + 1
        vcol = start + m.start(2) + 1
        if name in sizes:
            raise IsamapError(f"size '{name}' is given twice", Span(src, 1, ncol, 1, ncol + len(name)))
        try:
            v = int(val, 10)
        except ValueError:
            raise IsamapError(f"size {name} must be a positive integer, got {val!r}",
                              Span(src, 1, vcol, 1, vcol + max(1, len(val)))) from None
        if v < 1:
            raise IsamapError(f"size {name} must be a positive integer, got {v}",
                              Span(src, 1, vcol, 1, vcol + len(val)))
        sizes[name] = v
        spans[name] = Span(src, 1, ncol, 1, vcol + len(val))
    return sizes, spans
