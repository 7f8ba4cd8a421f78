"""Front end: source text -> checked ``ir.Module`` (parse, sema, range inference)."""
from __future__ import annotations

import os
from pathlib import Path

from ir.errors import IsamapError, Source
from ir.kernel import Module

from .sema import check_def

# A kernel file's checked module is kept on disk, pickled, keyed by its name and text and the
# code that parses and checks it: a later parse of the same text (a cached build in a fresh
# process) loads it in well under a millisecond and never imports the parser generator, where
# importing lark, loading its tables and building its lexers took ~30 ms of a ~60 ms build.


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
    from compiler.cache import load_entry, store_entry
    entry = _cache_entry(src)
    cached = load_entry(entry)
    if isinstance(cached, Module):
        return cached
    from .parser import parse_file
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
    m = Module(tuple(kernels), targets, span=_file_span(src))
    if not targets:  # target files have their own cache (hw_models), keyed by host facts too
        store_entry(entry, m)
    return m


def _cache_entry(src: Source) -> Path | None:
    from compiler.cache import FRONT_END, code_fingerprint, entry_file
    return entry_file("kernels", lambda: code_fingerprint(FRONT_END) + src.name.encode() + b"\0" + src.text.encode())


def parse(path_or_text: str | os.PathLike, name: str | None = None) -> Module:
    """Parse and check a TC source (a path or the text itself)."""
    return parse_source(read_source(path_or_text, name))


def _file_span(src: Source):
    from ir.errors import Span
    return Span(src, 1, 1)
