"""Front end: source text -> checked ``ir.Module`` (parse, sema, range inference)."""
from __future__ import annotations

import os
from pathlib import Path

from ir.errors import IsamapError, Source
from ir.kernel import Module

from .parser import parse_file
from .sema import check_def


def read_source(path_or_text: str | os.PathLike, name: str | None = None) -> Source:
    """A path (``str`` without braces or a ``Path``) is read; anything else is source text."""
    if isinstance(path_or_text, os.PathLike) or (
            isinstance(path_or_text, str) and "{" not in path_or_text and "\n" not in path_or_text):
        p = Path(path_or_text)
        try:
            return Source(name or str(p), p.read_text())
        except FileNotFoundError:
            raise IsamapError(f"no such file: '{p}'") from None
        except IsADirectoryError:
            raise IsamapError(f"'{p}' is a directory, not a source file") from None
        except UnicodeDecodeError:
            raise IsamapError(f"'{p}' is not a UTF-8 text file") from None
    return Source(name or "<string>", str(path_or_text))


def parse_source(src: Source) -> Module:
    pf = parse_file(src)
    kernels = []
    seen = set()
    for raw in pf.defs:
        if raw.name in seen:
            raise IsamapError(f"kernel '{raw.name}' is defined twice", raw.span)
        seen.add(raw.name)
        kernels.append(check_def(raw))
    targets = ()
    if pf.targets:
        from compiler.targets import check_targets  # noqa: PLC0415 - only .hw files need it
        targets = tuple(check_targets(pf, src))
    return Module(tuple(kernels), targets, span=_file_span(src))


def parse(path_or_text: str | os.PathLike, name: str | None = None) -> Module:
    """Parse and check a TC source (a path or the text itself)."""
    return parse_source(read_source(path_or_text, name))


def _file_span(src: Source):
    from ir.errors import Span
    return Span(src, 1, 1)
