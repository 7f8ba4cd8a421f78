"""Text -> parse records, with every lark error turned into a located IsamapError."""
from __future__ import annotations

import functools

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ir import dtypes
from ir.errors import IsamapError, Source, Span
from ir.expr import Binary, Call, Cast, Const, Name, Select, Size, Unary
from ir.kernel import TensorDecl

from .ast import RawDef, RawStmt, WhereExists, WhereLet, WhereRange

RESERVED = frozenset(["def", "where", "in", "exists", "min", "max", *dtypes.BY_NAME])

_READABLE = {
    "NAME": "an identifier", "NUMBER": "a number", "INT": "an integer", "TYPE": "a type name",
    "ASSIGN": "'=' or a reduction operator ('+=!', 'max=', ...)", "CMPOP": "a comparison",
    "ADDOP": "'+' or '-'", "MULOP": "'*', '/' or '%'", "MINMAX": "'min' or 'max'",
    "STRING": "a string", "UNIT": "a unit", "$END": "end of input",
}


@functools.lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark.open("grammar.lark", rel_to=__file__, parser="lalr", propagate_positions=True,
                     maybe_placeholders=True, cache=True)


def _describe_terminal(lk: Lark, name: str) -> str:
    if name in _READABLE:
        return _READABLE[name]
    try:
        pat = lk.get_terminal(name).pattern
        if pat.type == "str":
            return f"'{pat.value}'"
    except KeyError:
        pass
    return name.lower()


def _token_text(tok: Token) -> str:
    if tok.type == "$END":
        return "end of input"
    return f"'{tok}'"


class _Builder(Transformer):
    def __init__(self, source: Source):
        super().__init__(visit_tokens=False)
        self.src = source

    # -- helpers
    def sp(self, meta) -> Span:
        if isinstance(meta, Token):
            return Span(self.src, meta.line, meta.column, meta.end_line, meta.end_column)
        if getattr(meta, "empty", False):
            return Span(self.src, 1, 1)
        return Span(self.src, meta.line, meta.column, meta.end_line, meta.end_column)

    # -- expressions
    @v_args(meta=True)
    def number(self, meta, ch):
        t = str(ch[0])
        if "." in t or "e" in t or "E" in t:
            return Const(float(t), span=self.sp(meta))
        return Const(int(t), span=self.sp(meta))

    @v_args(meta=True)
    def name(self, meta, ch):
        return Name(str(ch[0]), span=self.sp(meta))

    @v_args(meta=True)
    def apply(self, meta, ch):
        args = tuple(a for a in ch[1:] if a is not None)
        return Call(str(ch[0]), args, span=self.sp(meta))  # sema decides call vs tensor read

    @v_args(meta=True)
    def cast(self, meta, ch):
        return Cast(dtypes.BY_NAME[str(ch[0])], ch[1], span=self.sp(meta))

    @v_args(meta=True)
    def minmax(self, meta, ch):
        return Binary(str(ch[0]), ch[1], ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def binop(self, meta, ch):
        return Binary(str(ch[1]), ch[0], ch[2], span=self.sp(meta))

    @v_args(meta=True)
    def lor(self, meta, ch):
        return Binary("||", ch[0], ch[1], span=self.sp(meta))

    @v_args(meta=True)
    def land(self, meta, ch):
        return Binary("&&", ch[0], ch[1], span=self.sp(meta))

    @v_args(meta=True)
    def neg(self, meta, ch):
        return Unary("-", ch[0], span=self.sp(meta))

    @v_args(meta=True)
    def not_(self, meta, ch):
        return Unary("!", ch[0], span=self.sp(meta))

    @v_args(meta=True)
    def select(self, meta, ch):
        return Select(ch[0], ch[1], ch[2], span=self.sp(meta))

    # -- statements
    @v_args(meta=True)
    def lhs(self, meta, ch):
        return [c for c in ch if c is not None]

    @v_args(meta=True)
    def equiv(self, meta, ch):
        return Call(str(ch[0]), tuple(a for a in ch[1:] if a is not None), span=self.sp(meta))

    @v_args(meta=True)
    def where(self, meta, ch):
        return list(ch)

    @v_args(meta=True)
    def where_range(self, meta, ch):
        return WhereRange(str(ch[0]), ch[1], ch[2], self.sp(meta))

    @v_args(meta=True)
    def where_let(self, meta, ch):
        return WhereLet(str(ch[0]), ch[1], self.sp(meta))

    @v_args(meta=True)
    def where_exists(self, meta, ch):
        return WhereExists(ch[0], self.sp(meta))

    @v_args(meta=True)
    def stmt(self, meta, ch):
        name, lhs, assign, rhs, equiv, where = ch
        a = str(assign)
        bang = a.endswith("!")
        op = a.rstrip("!")
        op = "=" if op == "=" else op[:-1]
        lhs_span = self.sp(name)
        return RawStmt(str(name), None if lhs is None else [str(t) for t in lhs], op, bang, rhs,
                       where or [], equiv, self.sp(meta), lhs_span,
                       [self.sp(t) for t in (lhs or [])])

    # -- declarations
    def dim_name(self, ch):
        return Size(str(ch[0]), dtype=dtypes.INT32, span=self.sp(ch[0]))

    def dim_int(self, ch):
        return Const(int(ch[0]), dtype=dtypes.INT32, span=self.sp(ch[0]))

    def dims(self, ch):
        return tuple(c for c in ch if c is not None)

    @v_args(meta=True)
    def param(self, meta, ch):
        ty, dims, name = ch
        return TensorDecl(str(name), dtypes.BY_NAME[str(ty)], dims or (), True, self.sp(name))

    @v_args(meta=True)
    def ret_plain(self, meta, ch):
        return TensorDecl(str(ch[0]), None, None, False, self.sp(ch[0]))

    @v_args(meta=True)
    def ret_typed(self, meta, ch):
        ty, dims, name = ch
        return TensorDecl(str(name), dtypes.BY_NAME[str(ty)], dims or (), True, self.sp(name))


class ParsedFile:
    """Defs and target blocks of one source, in order."""

    def __init__(self, source: Source, defs: list[RawDef], targets: list[Tree]):
        self.source = source
        self.defs = defs
        self.targets = targets


def parse_file(source: Source) -> ParsedFile:
    lk = _lark()
    try:
        tree = lk.parse(source.text)
    except UnexpectedInput as e:
        raise _syntax_error(lk, source, e) from None
    except RecursionError:
        raise IsamapError("expression nested too deeply", source.end()) from None
    defs: list[RawDef] = []
    targets: list[Tree] = []
    b = _Builder(source)
    for code in tree.find_pred(lambda t: t.data in ("def_", "stmt")):
        for tok in code.scan_values(lambda t: isinstance(t, Token) and t.type == "NAME"):
            if tok in RESERVED:
                raise IsamapError(f"'{tok}' is a reserved word", Span(source, tok.line, tok.column,
                                                                      tok.end_line, tok.end_column))
    for item in tree.children:
        if item.data == "def_":
            defs.append(_build_def(b, item))
        else:
            targets.append(item)
    return ParsedFile(source, defs, targets)


def _build_def(b: _Builder, item: Tree) -> RawDef:
    """Transform one def; params and rets are told apart by their tree positions."""
    try:
        name_tok = item.children[0]
        rest = item.children[1:]
        # children: NAME, param*, ret*, stmt*  (None placeholders for empty lists)
        params, rets, stmts = [], [], []
        for c in rest:
            if c is None:
                continue
            if c.data == "param":
                params.append(b.transform(c))
            elif c.data in ("ret_plain", "ret_typed"):
                rets.append(b.transform(c))
            else:
                stmts.append(b.transform(c))
    except VisitError as e:  # pragma: no cover - builder bugs surface as internal errors
        raise e.orig_exc from None
    except RecursionError:
        raise IsamapError("expression nested too deeply", b.sp(item.meta)) from None
    return RawDef(str(name_tok), params, rets, stmts, b.sp(item.meta))


def _syntax_error(lk: Lark, src: Source, e: UnexpectedInput) -> IsamapError:
    if isinstance(e, UnexpectedCharacters):
        ch = src.text[e.pos_in_stream] if 0 <= e.pos_in_stream < len(src.text) else "?"
        span = Span(src, e.line, e.column, e.line, e.column + 1)
        hint = ""
        if ch == "/" and src.text[e.pos_in_stream:e.pos_in_stream + 2] == "//":
            hint = " (comments start with '#')"
        return IsamapError(f"unexpected character {ch!r}{hint}", span)
    if isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type == "$END" or tok.line is None or tok.line < 0:
            span = src.end()
        else:
            span = Span(src, tok.line, tok.column, tok.end_line, tok.end_column)
        expected = sorted({_describe_terminal(lk, t) for t in e.expected})
        if len(expected) > 6:
            expected = expected[:6] + ["..."]
        msg = f"unexpected {_token_text(tok)}"
        if tok.type != "$END" and "//" in src.text[max(0, tok.start_pos - 1):tok.start_pos + 2]:
            msg += " (comments start with '#')"
        if tok.type == "TYPE" or tok.type in ("DEF", "WHERE", "IN", "EXISTS"):
            msg += f" ('{tok}' is a reserved word)"
        if expected:
            msg += f"; expected {', '.join(expected)}"
        return IsamapError(msg, span)
    if isinstance(e, UnexpectedEOF):
        return IsamapError("unexpected end of input", src.end())
    return IsamapError(str(e), src.end())
