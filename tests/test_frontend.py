"""Parser, checks, range inference and diagnostics."""
import re

import pytest

import compiler
import kernels
from ir import printer
from ir.errors import IsamapError


def err(src: str) -> IsamapError:
    with pytest.raises(IsamapError) as e:
        compiler.parse(src, name="k.tc")
    return e.value


@pytest.mark.parametrize("name", kernels.names())
def test_library_round_trips(name):
    m = compiler.parse(kernels.path(name))
    again = compiler.parse(printer.module(m))
    assert again.kernels == m.kernels


def test_round_trip_tricky_expressions():
    src = """def t(float(N) A, int32(N) I) -> (O, P) {
        O(i) = -A(i) * -(A(i) - 1) + (i < 2 && !(i == 3) || i >= 1 ? A(i) : 2.5e-3) - min(A(i), float(I(i)))
        P(i) = (A(i) > 0 ? 1 : 0) + (A(i) + 1) * (A(i) - -1) / fmax(A(i), 1) % 3 <=> foo(A(i))
    }"""
    m = compiler.parse(src)
    assert compiler.parse(printer.module(m)).kernels == m.kernels


@pytest.mark.parametrize("access,lo,hi", [
    ("B(10 - i)", "-I + 11", "11"),
    ("B(2 * i)", "0", "(I + 1) / 2"),
    ("B(2 * i) + B(2 * i + 1)", "0", "I / 2"),
    ("B(123 * i)", "0", "(I + 122) / 123"),
    ("B(i - 1)", "1", "I + 1"),
    ("B(i + 5)", "-5", "I - 5"),
])
def test_range_inference_table(access, lo, hi):
    k = compiler.parse(f"def f(float(I) B) -> (O) {{ O(i) = {access} }}").kernel()
    r = k.stmts[0].domain[0]
    assert (printer.expr(r.lo), printer.expr(r.hi)) == (lo, hi)


def test_stencil_rounds_and_where_wins():
    k = compiler.parse("def c(float(H) B, float(KS) K) -> (A, D) { A(i) +=! B(i + k) * K(k) "
                       "D(i) = B(i) where i in 0:3 }").kernel()
    assert printer.domain(k.stmts[0]) == "i in 0:H - KS + 1, k in 0:KS"
    assert printer.domain(k.stmts[1]) == "i in 0:3"


def test_several_defs_and_kernel_selection():
    m = compiler.parse("def a(float(N) X) -> (Y) { Y(i) = X(i) } def b(float(N) X) -> (Y) { Y(i) = X(i) }")
    assert [k.name for k in m.kernels] == ["a", "b"]
    with pytest.raises(IsamapError, match="several kernels"):
        m.kernel()
    assert m.kernel("b").name == "b"


def test_comments_whitespace_and_statement_boundaries():
    m = compiler.parse("def f(float(N) a) -> (b, c) { # comment\n c(i) = a(i) b(i) = c(i) # more\n }")
    assert len(m.kernel().stmts) == 2


def test_bang_initialises_only_first_definition():
    k = compiler.parse("def f(float(N,K) A) -> (O) { O(i) +=! A(i,k)  O(i) +=! A(i,k) }").kernel()
    assert [s.init for s in k.stmts] == [True, False]


ERRORS = [
    # (source, message regex, line, col)
    ("def f(float(N) A) -> (B) { B(i) = A(i) $ }", r"unexpected character '\$'", 1, 40),
    ("def f(float(N) A) -> (B) { B(i) = A(i) // x }", r"comments start with '#'", 1, 41),
    ("def f(float(N) A) -> (B) { B(i) = A(i) +  }", r"unexpected '}'", 1, 43),
    ("def f(float(N) A) -> (B) { B(i) = A(i)", r"unexpected end of input", 1, 39),
    ("def f(float(N) A) -> (B) { B(i) = Q(i) }", r"unknown tensor or function 'Q'", 1, 35),
    ("def f(float(N) A) -> (B) { B(i) = A(i, i) }", r"'A' has 1 dimension, expected 1 subscript but found 2", 1, 35),
    ("def f(float(N) A) -> (B) { A(i) = A(i) }", r"inputs are immutable", 1, 28),
    ("def f(float(N) A) -> (B) { B(i) = A(i, j) + 0 }", r"has 1 dimension", 1, 35),
    ("def f(float(N,M) A) -> (B) { B(i) = A(i,j) }", r"reduction variable 'j' but does not specify a reduction", 1, 41),
    ("def f(float(N) a) -> (b) { c(i) = a(i) b(i) = c(i) }", r"'c' is not listed as an input or output.*temporary", 1, 28),
    ("def f(float(N) A) -> (B) { B(i) = A(i + 0.5) }", r"integral type", 1, 37),
    ("def f(float(N) A) -> (B) { B(i) = exp(A(i), 1) }", r"'exp' takes 1 argument, 2 given", 1, 35),
    ("def f(float(N) exp) -> (B) { B(i) = 1 }", r"built-in function and cannot be redefined", 1, 16),
    ("def f(float(N) A) -> (B) { B(i, j) = A(i) }", r"could not infer the range of index 'j'.*where", 1, 33),
    ("def f(float(N) A) -> (B) { B(i) +=! A(i) * k }", r"reduction index 'k' is unconstrained", 1, 44),
    ("def f(float(N) A) -> (B) { B(i) = A(i) where i in 0:j }", r"'j' is not a size", 1, 53),
    ("def f(float(N) A) -> (B) { B(i) = A(i) where i in 0:A(0) }", r"tensor accesses", 1, 53),
    ("def f(float(N) A) -> (B) { B(i, i) = A(i) }", r"index 'i' is already used", 1, 33),
    ("def f(float(N) A) -> (B) { B(i) = A(i) > 0 ? 1.5 : A }", r"'A' has 1 dimension.*used without subscripts", 1, 52),
    ("def f(float(N) A) -> (B) { B(i) = A(i) ? 1 : 2 }", r"condition of '\?:' must be bool", 1, 35),
    ("def f(float(N) A) -> (int32(N) B) { B(i) = A(i) }", r"narrower type int32 without an explicit cast", 1, 44),
    ("def f(float(N) A) -> (B, C) { B(i) = A(i) }", r"output 'C' is never written", 1, 26),
    ("def f(float(N) A) -> (B) { B(i) = C(i) }", r"unknown tensor", 1, 35),
    ("def f(float(N) A) -> (B, C) { B(i) = C(i) C(i) = A(i) }", r"output 'C' is read before", 1, 38),
    ("def f(float(N) A, float(N) A) -> (B) { B(i) = A(i) }", r"declared twice", 1, 28),
    ("def f(float(N) A) -> (A) { A(i) = 1 }", r"both an input and an output", 1, 23),
    ("def f(float(N) A) -> (B) { B(i) = A(i) where i in 0:N, i in 0:2 }", r"given twice", 1, 56),
    ("def f(float(N) A) -> (B) { B(i) = A(i) } def f(float(N) A) -> (B) { B(i) = A(i) }", r"defined twice", 1, 42),
    ("def f(float(N) A) -> (B) { B(i) = int(A(i)) }", r"unknown tensor or function 'int'", 1, 35),
    ("def f(float(N) A) -> (B) { B(i) = A(i) where def = 3 }", r"'def' is a reserved word", 1, 46),
]


@pytest.mark.parametrize("src,pattern,line,col", ERRORS)
def test_error_messages_are_located(src, pattern, line, col):
    e = err(src)
    assert re.search(pattern, e.message), e.message
    assert (e.span.line, e.span.col) == (line, col), e.format()
    text = e.format()
    assert text.startswith(f"k.tc:{line}:{col}: error: ")
    assert text.splitlines()[2].index("^") == col - 1


def test_warning_for_reduction_without_initialisation():
    k = compiler.parse("def f(float(N,K) A) -> (O) { O(i) += A(i,k) }").kernel()
    assert any("without initialization" in w for w in k.warnings)


def test_bad_sizes_are_located():
    from compiler.sizes import parse_sizes
    from ir.bind import bind
    k = compiler.parse(kernels.path("gemm")).kernel()
    for text, pattern, col in [("M=64,N=x", "positive integer", 8), ("M=64,,", "NAME=VALUE", 6),
                               ("M=0", "positive integer", 3), ("M=1,M=2", "twice", 5)]:
        with pytest.raises(IsamapError, match=pattern) as e:
            parse_sizes(text)
        assert e.value.span.col == col, (text, e.value.format())
    sizes, spans = parse_sizes("M=4,N=4,Z=3")
    with pytest.raises(IsamapError, match="'Z' is not a size") as e:
        bind(k, sizes, spans)
    assert e.value.span.col == 9
    with pytest.raises(IsamapError, match="needs a value for size K"):
        bind(k, {"M": 2, "N": 2})
    conv = compiler.parse(kernels.path("conv2d")).kernel()
    with pytest.raises(IsamapError, match="empty range for 'h'"):
        bind(conv, dict(N=1, C=1, H=2, W=5, F=1, R=3, S=3))


def test_checked_kernels_are_cached_on_disk_and_reparsed_when_damaged(tmp_path, monkeypatch):
    """A kernel file's checked module comes back from the disk cache equal to a parsed one
    (warnings included); a damaged entry is parsed again; a source with an error is never
    cached; ``ISAMAP_CACHE=off`` parses every time."""
    import compiler.frontend.parser as parser
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path))
    src = "def f(float(N) A) -> (B) {\n  B(i) = A(i) + A(i)\n  B(i) = A(i)\n}\n"
    first = compiler.parse(src, name="w.tc")
    entries = list((tmp_path / "kernels").glob("*.pickle"))
    assert len(entries) == 1
    real = parser.parse_file
    monkeypatch.setattr(parser, "parse_file", lambda *a: pytest.fail("parsed again"))
    again = compiler.parse(src, name="w.tc")
    assert printer.module(again) == printer.module(first) and again.kernel().warnings == first.kernel().warnings
    monkeypatch.setattr(parser, "parse_file", real)
    entries[0].write_bytes(b"not a pickle")
    assert printer.module(compiler.parse(src, name="w.tc")) == printer.module(first)
    for _ in range(2):  # an error: reported each time, nothing stored
        with pytest.raises(IsamapError):
            compiler.parse("def g(float(N) A) -> (B) {\n  B(i) = A(j\n}\n", name="bad.tc")
    assert len(list((tmp_path / "kernels").glob("*.pickle"))) == 1
    monkeypatch.setenv("ISAMAP_CACHE", "off")
    assert printer.module(compiler.parse(src, name="w.tc")) == printer.module(first)


def test_a_cached_parse_in_a_fresh_process_does_not_import_the_parser(tmp_path):
    import os
    import subprocess
    import sys
    code = ("import sys, compiler, kernels; compiler.parse(kernels.path('gemm')); "
            "print('lark' in sys.modules)")
    env = dict(os.environ, ISAMAP_CACHE=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                           cwd=str(kernels.path("gemm").parent.parent)).stdout.split() for _ in range(2)]
    assert runs == [["True"], ["False"]]
