"""Source positions and the one exception type for user mistakes.

Every user-facing error is an :class:`IsamapError`; the CLI prints it as
``file:line:col: error: message`` plus the source line and a caret, and exits 1.
Anything else escaping the compiler is an internal error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

@dataclass(frozen=True, eq=False)
class Source:
    """A named piece of text (a file, a ``--sizes`` string, an inline kernel)."""

    name: str
    text: str = field(repr=False)

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines() or [""]
        if 1 <= line <= len(lines):
            return lines[line - 1]
        return ""

    def position(self, offset: int) -> tuple[int, int]:
        offset = max(0, min(offset, len(self.text)))
        line = self.text.count("\n", 0, offset) + 1
        col = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return line, col

    def end(self) -> "Span":
        line, col = self.position(len(self.text.rstrip("\n")))
        return Span(self, line, col, line, col)

@dataclass(frozen=True, eq=False)
class Span:
    source: Source | None
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __repr__(self) -> str:
        name = self.source.name if self.source else "<unknown>"
        return f"{name}:{self.line}:{self.col}"

    def caret(self) -> str:
        if self.source is None:
            return ""
        text = self.source.line_text(self.line).expandtabs(1)
        width = 1
        if self.end_line == self.line and self.end_col and self.end_col > self.col:
            width = self.end_col - self.col
        width = max(1, min(width, max(1, len(text) - self.col + 1)))
        return f"{text}\n{' ' * (self.col - 1)}^{'~' * (width - 1)}"

class IsamapError(Exception):
    """A mistake in user input: located, printable, never a traceback."""

    def __init__(self, message: str, span: Span | None = None, notes: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.notes = list(notes or [])

    def format(self) -> str:
        if self.span is not None and self.span.source is not None:
            head = f"{self.span.source.name}:{self.span.line}:{self.span.col}: error: {self.message}"
            out = [head, self.span.caret()]
        else:
            out = [f"error: {self.message}"]
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(x for x in out if x)

    def __str__(self) -> str:
        return self.format()

def warning_text(message: str, span: Span | None) -> str:
    if span is not None and span.source is not None:
        return f"{span.source.name}:{span.line}:{span.col}: warning: {message}\n{span.caret()}"
    return f"warning: {message}"
