"""Scalar code for the host CPU: each statement as a loop nest in LLVM IR.

This is the cpu target's fallback path (``fallback = scalar`` in cpu.hw): every
statement becomes loops over its inferred domain (output indices outside,
reduction indices inside) around the statement's expression, exactly the
reference semantics (TC initialisation, floor division, bf16 rounding on store).
LLVM's -O3 pipeline for the host CPU vectorises what it can.  Statements the
cpu target's FMA instructions map to become packed, register-blocked contractions
instead (``contraction.py``), with elementwise statements after them fused in.
The module is compiled, cached and called by ``native.py``.
"""
from __future__ import annotations

from math import prod

from llvmlite import binding as llvm
from llvmlite import ir as L

from compiler.host import host_has_avx512
from ir import dtypes
from ir.bind import Bound
from ir.dtypes import BFLOAT16, BOOL, DType
from ir.errors import IsamapError
from ir.expr import Access, Binary, Call, Cast, Const, Expr, Select, Size, Unary, Var
from ir.kernel import Kernel

from .contraction import counted_loop
from .native import RECORD
from .plan import Contraction

I64 = L.IntType(64)

_LIBM = {  # builtin -> libm name (float variant gets an 'f' suffix)
    "exp": "exp", "exp2": "exp2", "expm1": "expm1", "log": "log", "log2": "log2", "log10": "log10",
    "log1p": "log1p", "sqrt": "sqrt", "cbrt": "cbrt", "sin": "sin", "cos": "cos", "tan": "tan",
    "asin": "asin", "acos": "acos", "atan": "atan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh",
    "asinh": "asinh", "acosh": "acosh", "atanh": "atanh", "fabs": "fabs", "floor": "floor", "ceil": "ceil",
    "trunc": "trunc", "erf": "erf", "erfc": "erfc", "lgamma": "lgamma", "tgamma": "tgamma",
    "atan2": "atan2", "copysign": "copysign", "fdim": "fdim", "fmax": "fmax", "fmin": "fmin",
    "fmod": "fmod", "hypot": "hypot", "nextafter": "nextafter", "pow": "pow", "remainder": "remainder",
    "round": "round",
}

# libm functions with an LLVM intrinsic of the same result (C's round, fmax and fmin included)
_INTRINSIC = {"sqrt": "sqrt", "fabs": "fabs", "floor": "floor", "ceil": "ceil", "trunc": "trunc",
              "round": "round", "copysign": "copysign", "fmax": "maxnum", "fmin": "minnum"}


def _float_suffix(d: DType) -> str | None:
    """An LLVM intrinsic's type suffix for the type a float dtype is held in (f32: bfloat16 too;
    f64), else None."""
    return {"float": "f32", "double": "f64"}.get(str(lltype(d))) if d.is_float else None


def lltype(d: DType):
    if d == BOOL:
        return L.IntType(1)
    if d.is_float:
        return L.DoubleType() if d.bits == 64 else L.FloatType()  # half/bf16 computed in float
    return L.IntType(d.bits)


def storage_type(d: DType):
    if d == BOOL:
        return L.IntType(8)
    if d.name == "float16":
        return L.HalfType()
    return lltype(d)


# The vector width LLVM's loop vectoriser may use in scalar-path functions (its tuning for
# Intel cores prefers 256 bits).  Both widths in one run on the 2-vCPU Xeon VM: softmax
# 256x1024 153 -> 125 us, 4096x1000 2.38 -> 1.94 ms, layernorm and depthwise convolution even.
# Ignored where the host has no AVX-512 (the cpu-avx2 target).  0: LLVM's own choice.
VECTOR_BITS = 512
# Float division may multiply by the divisor's reciprocal (``arcp``): a row statistic's division
# (softmax's e / s(n)) becomes one reciprocal per row, hoisted, and a multiplication per
# element, within an ulp of the quotient (softmax 256x1024 123 -> 106 us in one run; its error
# against the reference 4.3e-7 -> 4.6e-7, the exp's dominating).
ARCP = True
# exp's 2^n scaling as llvm.ldexp, which AVX-512 does in one instruction (vscalefps: overflow and
# gradual underflow exact) instead of two exponent-bit constructions and two multiplies:
# softmax 256x1024 146 -> 134 us, 4096x1000 2.39 -> 2.17 ms, results bit-identical; GRU and
# LSTM steps even.  None: where the host has AVX-512 (elsewhere LLVM would call ldexpf per lane)
LDEXP: bool | None = None


def _ldexp() -> bool:
    return host_has_avx512() if LDEXP is None else LDEXP


MAX_TAPS = 64  # reductions of at most this many points per output element run innermost
_FMA = True  # exp_f32 as fused multiply-adds (False: separate multiplies and adds, for A/B timing)


class _Gen:
    def __init__(self, k: Kernel, b: Bound):
        self.k, self.b = k, b
        self.mod = L.Module(name=k.name)
        self.mod.triple = llvm.get_process_triple()
        self.names = [t.name for t in k.inputs + k.outputs]
        self._scope_md = None  # per tensor: (its alias scope list, every other tensor's) (``_scoped``)
        self.vars: dict[str, L.Value] = {}
        self.functions: list[tuple[str, int, str | None, tuple[int, int]]] = []
        self._vec_opts = None  # the options of a vectorise-loop ID (vector_loop_md), made once
        self._vec_ids: list = []  # the loop IDs handed out, made self-referential in finish
        self.row = None  # in a row group: the current row, which a statement's outermost index takes

    def begin(self, name: str, ranged: bool):
        """A new function ``void name(i8** buffers[, i32 lo, i32 hi])``."""
        args = [L.PointerType(L.IntType(8)).as_pointer()] + ([L.IntType(32), L.IntType(32)] if ranged else [])
        self.fn = L.Function(self.mod, L.FunctionType(L.VoidType(), args), name=name)
        self.fn.args[0].add_attribute("noalias")
        self.bld = L.IRBuilder(self.fn.append_basic_block("entry"))
        self.ptr = {}
        for i, n in enumerate(self.names):
            raw = self.bld.load(self.bld.gep(self.fn.args[0], [L.Constant(L.IntType(32), i)]))
            dt = self.k.tensor(n).dtype
            self.ptr[n] = self.bld.bitcast(raw, storage_type(dt).as_pointer(), name=n)

    def end(self):
        self.bld.ret_void()

    # ---------------------------------------------------------------- helpers
    def const(self, v, d: DType):
        t = lltype(d)
        if d == BOOL:
            return L.Constant(t, int(bool(v)))
        return L.Constant(t, float(v) if d.is_float else int(v))

    def convert(self, v, src: DType, dst: DType):
        if src == dst or (lltype(src) == lltype(dst) and src.kind == dst.kind and src != BFLOAT16 and dst != BFLOAT16):
            return self.round_if_bf16(v, dst) if dst != src else v
        b, ts, td = self.bld, lltype(src), lltype(dst)
        if dst == BOOL:
            return b.fcmp_unordered("!=", v, L.Constant(ts, 0.0)) if src.is_float else \
                b.icmp_unsigned("!=", v, L.Constant(ts, 0))
        if src.is_float and dst.is_float:
            out = v if ts == td else (b.fpext(v, td) if src.bits < dst.bits or ts == L.FloatType() and td == L.DoubleType()
                                      else b.fptrunc(v, td))
            return self.round_if_bf16(out, dst)
        if src.is_float:
            return b.fptosi(v, td) if dst.kind == "i" else b.fptoui(v, td)
        if dst.is_float:
            out = b.uitofp(v, td) if src.kind in "ub" else b.sitofp(v, td)
            return self.round_if_bf16(out, dst)
        if ts.width == td.width:
            return v
        if ts.width > td.width:
            return b.trunc(v, td)
        return b.zext(v, td) if src.kind in "ub" else b.sext(v, td)

    def round_if_bf16(self, v, d: DType):
        if d != BFLOAT16:
            return v
        b = self.bld
        u = b.bitcast(v, L.IntType(32))
        lsb = b.and_(b.lshr(u, L.Constant(L.IntType(32), 16)), L.Constant(L.IntType(32), 1))
        r = b.add(b.add(u, L.Constant(L.IntType(32), 0x7FFF)), lsb)
        r = b.and_(r, L.Constant(L.IntType(32), 0xFFFF0000))
        rounded = b.bitcast(r, L.FloatType())
        isnan = b.fcmp_unordered("uno", v, v)
        return b.select(isnan, v, rounded)

    def libm(self, name: str, d: DType, n: int):
        if name in _INTRINSIC and _float_suffix(d):
            # the same function as an LLVM intrinsic: no errno, so LLVM hoists it out of loops
            # it does not vary in and vectorises it (layernorm's rsqrt(var(n) + eps) called
            # sqrtf per element: its last statement 431 -> 25 us at 256 x 1024)
            t = lltype(d)
            return self.intrinsic(f"llvm.{_INTRINSIC[name]}.{_float_suffix(d)}", t, [t] * n)
        fname = _LIBM[name] + ("" if d.bits == 64 else "f")
        f = self.mod.globals.get(fname)
        if f is None:
            t = lltype(d)
            f = L.Function(self.mod, L.FunctionType(t, [t] * n), name=fname)
        return f

    def addr(self, name: str, idx: list):
        shape, mins = self.b.shapes[name], self.b.mins[name]
        off = L.Constant(I64, 0)
        for d, (i, m) in enumerate(zip(idx, mins)):
            i64 = self.bld.sext(i, I64) if i.type.width < 64 else i
            off = self.bld.add(self.bld.mul(off, L.Constant(I64, shape[d])), self.bld.sub(i64, L.Constant(I64, m)))
        return self.bld.gep(self.ptr[name], [off])

    def _scoped(self, instr, name: str):
        """Tell LLVM that tensor ``name``'s accesses touch no other tensor (alias scopes): the
        runtime allocates every output itself and inputs are only read, so no two buffers a
        store could reach overlap; LLVM may then keep a row's statistic in a register across
        the output's stores instead of reloading it per element."""
        if self._scope_md is None:
            dom = self.mod.add_metadata([L.MetaDataString(self.mod, "isamap tensors")])
            scopes = {n: self.mod.add_metadata([L.MetaDataString(self.mod, f"tensor {n}"), dom]) for n in self.names}
            self._scope_md = {n: (self.mod.add_metadata([sc]),
                                  self.mod.add_metadata([o for m, o in scopes.items() if m != n]))
                              for n, sc in scopes.items()}
        own, others = self._scope_md[name]
        instr.set_metadata("alias.scope", own)
        if len(self.names) > 1:
            instr.set_metadata("noalias", others)
        return instr

    def load(self, name: str, idx: list):
        dt = self.k.tensor(name).dtype
        v = self._scoped(self.bld.load(self.addr(name, idx)), name)
        if dt == BOOL:
            return self.bld.trunc(v, L.IntType(1))
        if dt.name == "float16":
            return self.bld.fpext(v, L.FloatType())
        return v

    def store(self, name: str, idx: list, v):
        dt = self.k.tensor(name).dtype
        if dt == BOOL:
            v = self.bld.zext(v, L.IntType(8))
        elif dt.name == "float16":
            v = self.bld.fptrunc(v, L.HalfType())
        self._scoped(self.bld.store(v, self.addr(name, idx)), name)

    # ---------------------------------------------------------------- expressions
    def ev(self, e: Expr):
        b = self.bld
        if isinstance(e, Const):
            return self.const(e.value, e.dtype)
        if isinstance(e, Var):
            return self.vars[e.name]
        if isinstance(e, Size):
            return L.Constant(L.IntType(32), self.b.sizes[e.name])
        if isinstance(e, Access):
            idx = [self.convert(self.ev(i), i.dtype, dtypes.INT64) for i in e.indices]
            return self.load(e.tensor, idx)
        if isinstance(e, Cast):
            return self.convert(self.ev(e.x), e.x.dtype, e.to)
        if isinstance(e, Unary):
            x = self.ev(e.x)
            if e.op == "!":
                return b.not_(x)
            x = self.convert(x, e.x.dtype, e.dtype)
            return self.round_if_bf16(b.fneg(x) if e.dtype.is_float else b.neg(x), e.dtype)
        if isinstance(e, Binary):
            if e.op in ("&&", "||"):
                a, c = self.ev(e.a), self.ev(e.b)
                return b.and_(a, c) if e.op == "&&" else b.or_(a, c)
            cdt = e.dtype if e.dtype != BOOL else dtypes.promote(e.a.dtype, e.b.dtype)
            a = self.convert(self.ev(e.a), e.a.dtype, cdt)
            c = self.convert(self.ev(e.b), e.b.dtype, cdt)
            if e.op in ("<", ">", "<=", ">=", "==", "!="):
                if cdt.is_float:
                    return b.fcmp_ordered(e.op, a, c) if e.op != "!=" else b.fcmp_unordered(e.op, a, c)
                return (b.icmp_signed if cdt.kind == "i" else b.icmp_unsigned)(e.op, a, c)
            return self.round_if_bf16(self.arith(e.op, a, c, cdt), e.dtype)
        if isinstance(e, Select):
            c = self.ev(e.cond)
            a = self.convert(self.ev(e.a), e.a.dtype, e.dtype)
            d = self.convert(self.ev(e.b), e.b.dtype, e.dtype)
            return b.select(c, a, d)
        if isinstance(e, Call):
            args = [self.convert(self.ev(x), x.dtype, e.dtype) for x in e.args]
            t = lltype(e.dtype)
            if t == L.FloatType() and e.fn in ("exp", "sigmoid", "tanh"):
                return self.round_if_bf16(self.fast_f32(e.fn, args[0]), e.dtype)
            if e.fn == "sigmoid":
                ex = b.call(self.libm("exp", e.dtype, 1), [b.fneg(args[0])])
                return self.round_if_bf16(b.fdiv(L.Constant(t, 1.0), b.fadd(L.Constant(t, 1.0), ex)), e.dtype)
            if e.fn == "relu":
                return b.select(b.fcmp_ordered(">", args[0], L.Constant(t, 0.0)), args[0], L.Constant(t, 0.0))
            if e.fn == "rsqrt":
                return b.fdiv(L.Constant(t, 1.0), b.call(self.libm("sqrt", e.dtype, 1), args))
            if e.fn == "fma":
                return b.fadd(b.fmul(args[0], args[1]), args[2])
            if e.fn not in _LIBM:
                raise IsamapError(f"built-in '{e.fn}' is not supported by the cpu backend yet", e.span)
            return self.round_if_bf16(b.call(self.libm(e.fn, e.dtype, len(args)), args), e.dtype)
        raise IsamapError(f"cannot generate code for {type(e).__name__}", e.span)

    def exp_f32(self, x):
        """exp for float32 as straight-line arithmetic (Cephes expf: range reduction by ln 2,
        degree-6 polynomial, exponent bits built directly; ~1 ulp), so LLVM vectorises loops
        around it; a libm call per element would stay scalar."""
        b, f, i32 = self.bld, L.FloatType(), L.IntType(32)

        def c(v):
            return L.Constant(f, v)
        # beyond these exp is inf / 0 anyway; the clamp keeps n within two normal exponents
        x = b.select(b.fcmp_ordered(">", x, c(89.0)), c(89.0), x)
        x = b.select(b.fcmp_ordered("<", x, c(-104.0)), c(-104.0), x)  # NaN passes through
        n = b.call(self.intrinsic("llvm.rint.f32", f, [f]), [b.fmul(x, c(1.44269504088896341))])
        # multiply-adds as llvm.fmuladd: one FMA each where the host has them (the range
        # reduction's and the polynomial's 16 operations become 8; a fused step rounds once,
        # so results move within an ulp)
        if _FMA:
            fma = self.intrinsic("llvm.fmuladd.f32", f, [f, f, f])

            def madd(a, m, d):
                return b.call(fma, [a, m, d])
        else:
            def madd(a, m, d):
                return b.fadd(b.fmul(a, m), d)
        r = madd(n, c(2.12194440e-4), madd(n, c(-0.693359375), x))
        p = c(1.9875691500e-4)
        for k in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
            p = madd(p, r, c(k))
        p = b.fadd(madd(p, b.fmul(r, r), r), c(1.0))
        ni = b.fptosi(n, i32)
        if _ldexp():
            return b.call(self.intrinsic("llvm.ldexp.f32.i32", f, [f, i32]), [p, ni])
        # 2^n as 2^n1 * 2^n2 (n in [-150, 129]: overflow to inf and gradual underflow come out right)
        n1 = b.ashr(ni, L.Constant(i32, 1))
        n2 = b.sub(ni, n1)

        def pow2(k):
            return b.bitcast(b.shl(b.add(k, L.Constant(i32, 127)), L.Constant(i32, 23)), f)
        return b.fmul(b.fmul(p, pow2(n1)), pow2(n2))

    def fast_f32(self, fn: str, x):
        """exp, sigmoid and tanh on float32 from exp_f32 (vectorisable)."""
        b, f = self.bld, L.FloatType()
        one = L.Constant(f, 1.0)
        if fn == "exp":
            return self.exp_f32(x)
        if fn == "sigmoid":
            return b.fdiv(one, b.fadd(one, self.exp_f32(b.fneg(x))))
        # tanh: 1 - 2 / (exp(2x) + 1), and its odd Taylor series near 0 (no cancellation)
        big = b.fsub(one, b.fdiv(L.Constant(f, 2.0), b.fadd(self.exp_f32(b.fadd(x, x)), one)))
        x2 = b.fmul(x, x)
        small = L.Constant(f, -17.0 / 315.0)
        for k in (2.0 / 15.0, -1.0 / 3.0, 1.0):
            small = b.fadd(b.fmul(small, x2), L.Constant(f, k))
        small = b.fmul(small, x)
        ax = b.call(self.intrinsic("llvm.fabs.f32", f, [f]), [x])
        return b.select(b.fcmp_ordered("<", ax, L.Constant(f, 0.125)), small, big)

    def intrinsic(self, name: str, ret, args):
        fn = self.mod.globals.get(name)
        return fn or L.Function(self.mod, L.FunctionType(ret, args), name=name)

    def arith(self, op: str, a, c, d: DType):
        b = self.bld
        if d.is_float:
            if op == "min":
                return b.select(b.fcmp_ordered("<", a, c), a, c)
            if op == "max":
                return b.select(b.fcmp_ordered(">", a, c), a, c)
            out = {"+": b.fadd, "-": b.fsub, "*": b.fmul, "/": b.fdiv, "%": b.frem}[op](a, c)
            if op == "/" and ARCP:
                out.flags.append("arcp")
            return out
        signed = d.kind == "i"
        if op == "min":
            return b.select((b.icmp_signed if signed else b.icmp_unsigned)("<", a, c), a, c)
        if op == "max":
            return b.select((b.icmp_signed if signed else b.icmp_unsigned)(">", a, c), a, c)
        if op in ("+", "-", "*"):
            return {"+": b.add, "-": b.sub, "*": b.mul}[op](a, c)
        zero = L.Constant(a.type, 0)
        safe = b.select(b.icmp_unsigned("==", c, zero), L.Constant(a.type, 1), c)  # x / 0 -> 0, as numpy
        if not signed:
            q = b.udiv(a, safe) if op == "/" else b.urem(a, safe)
            return b.select(b.icmp_unsigned("==", c, zero), zero, q)
        q, r = b.sdiv(a, safe), b.srem(a, safe)
        adjust = b.and_(b.icmp_signed("!=", r, zero), b.icmp_signed("!=", b.icmp_signed("<", r, zero),
                                                                        b.icmp_signed("<", safe, zero)))
        if op == "/":  # floor division
            out = b.select(adjust, b.sub(q, L.Constant(a.type, 1)), q)
        else:  # remainder with the divisor's sign
            out = b.select(adjust, b.add(r, safe), r)
        return b.select(b.icmp_unsigned("==", c, zero), zero, out)

    # ---------------------------------------------------------------- statements
    def loop(self, var: str, lo, hi, body, vectorize: bool = False):
        """``for var in lo:hi`` (ints or i32 values), the body generated by ``body()``.

        ``vectorize``: ask LLVM to vectorise this loop and not to unroll it first.  A short
        constant trip count (a convolution's 28-wide output row) is otherwise unrolled whole
        before the loop vectoriser runs, its elements promoted to 28 scalar registers across
        the reduction loops around it, and nothing vectorises them."""
        def run(phi):
            self.vars[var] = phi
            body()
        counted_loop(self.fn, self.bld, L.IntType(32), lo, hi, 1, run, var,
                     loop_md=self.vector_loop_md() if vectorize else None)

    _VEC_MARK = "isamap.vectorize.loop"

    def vector_loop_md(self):
        """Loop metadata asking for vectorisation without unrolling.  A loop ID must be a
        distinct node that names itself, which llvmlite cannot build: the node is marked here
        and made self-referential as text in ``finish``."""
        if self._vec_opts is None:
            self._vec_opts = [self.mod.add_metadata([L.MetaDataString(self.mod, "llvm.loop.vectorize.enable"),
                                                     L.Constant(L.IntType(1), 1)]),
                              self.mod.add_metadata([L.MetaDataString(self.mod, "llvm.loop.unroll.disable")])]
        # one distinct ID per loop (llvmlite interns equal nodes: the mark carries a number)
        md = self.mod.add_metadata([L.MetaDataString(self.mod, f"{self._VEC_MARK}.{len(self._vec_ids)}")]
                                   + self._vec_opts)
        self._vec_ids.append(md)
        return md

    def init_function(self, si: int):
        """``s{i}_init``: the identity of the statement's reduction over the whole tensor (``!``)."""
        s = self.k.stmts[si]
        if not s.init:
            return
        from ir.interp import identity
        dt = self.k.tensor(s.tensor).dtype
        self.begin(f"s{si}_init", False)
        n = prod(self.b.shapes[s.tensor])
        v = identity(s.op, dt)
        # the identity in the tensor's storage type (a bool byte, a half)
        ident = L.Constant(storage_type(dt), int(bool(v)) if dt == BOOL else float(v) if dt.is_float else int(v))

        def fill():
            self.bld.store(ident, self.bld.gep(self.ptr[s.tensor], [self.bld.sext(self.vars["_f"], I64)]))
        self.loop("_f", 0, n, fill)
        self.end()
        self.functions.append((f"s{si}_init", si, None, (0, 0)))

    def statement(self, si: int):
        """Functions for one statement: ``s{i}_init`` (identity fill, if any) and ``s{i}`` over a
        range of its outermost index, so threads can split the outermost loop."""
        self.init_function(si)
        self.begin(f"s{si}", True)
        outer = self.statement_loops(si)
        self.end()
        dom = self.b.domain(si)
        self.functions.append((f"s{si}", si, outer, dom[outer] if outer else (0, 1)))

    def row_group(self, sis: list[int]):
        """Statements ``sis`` (a ``native.row_groups`` run) as one function over their shared first
        output index: per row, each statement in turn over the rest of its loops, so what one
        computes for a row is read back from L1 by the next, and the threads meet once instead
        of once per statement.  Their identity fills run first (``native.row_groups`` says why
        that is safe)."""
        for si in sis:
            self.init_function(si)
        name = f"g{sis[0]}_{sis[-1]}"
        self.begin(name, True)

        def rows():
            self.row = self.vars["_row"]
            for si in sis:
                self.statement_loops(si)
            self.row = None
        self.loop_range("_row", rows)
        self.end()
        first = self.k.stmts[sis[0]].indices[0]
        self.functions.append((name, sis[0], "_row", self.b.domain(sis[0])[first]))

    def statement_loops(self, si: int) -> str | None:
        """The loops of statement ``si`` in the current function; returns its outermost index (the
        one split across threads), bound to ``self.row`` instead of looped over when that is set."""
        s = self.k.stmts[si]
        dom = self.b.domain(si)
        dt = self.k.tensor(s.tensor).dtype
        lhs = list(s.indices)
        red = list(s.reduction_vars)
        # row-major output: the last output index innermost (unit stride, vectorisable), reductions
        # just outside it, the other output indices outermost (split across threads). The split
        # loop must be an output index: threads splitting a reduction would add into the same
        # elements at once (a one-index output such as a row sum keeps its index outermost)
        order = (lhs[:-1] + red + lhs[-1:]) if (red and len(lhs) > 1) else lhs + red
        common = dtypes.promote(dt, s.rhs.dtype)  # what a reduction step computes in
        # a register accumulator where the statement's steps are exact in the output's own type
        # (a half output rounds after every step in the reference; a bfloat16 one, held in
        # float32, sums in place and is rounded once complete: round_once)
        in_register = common == dt and (dt.is_int or dt.name in ("float32", "float64"))
        # short reductions (a convolution's filter taps) go innermost instead: LLVM unrolls them
        # whole, the unit-stride output loop around them becomes the innermost loop and is
        # vectorised, each output vector summed in a register and stored once (the order above
        # loads and stores the output row once per tap: depthwise 3x3 8x64x30x30 0.50 -> 0.23 ms)
        taps = bool(red) and len(lhs) > 1 and in_register and s.op != "=" and \
            prod(dom[v][1] - dom[v][0] for v in red) <= MAX_TAPS
        if taps:
            order = lhs + red
        outer = order[0] if lhs else None

        def lhs_idx():
            return [self.bld.sext(self.vars[v], I64) for v in lhs]

        def body():
            if s.op == "=":
                v = self.convert(self.ev(s.rhs), s.rhs.dtype, dt)
                self.store(s.tensor, lhs_idx(), v)
                return
            cur = self.convert(self.load(s.tensor, lhs_idx()), dt, common)
            v = self.convert(self.ev(s.rhs), s.rhs.dtype, common)
            self.store(s.tensor, lhs_idx(), self.convert(self.arith(s.op, cur, v, common), common, dt))

        def over(vs, leaf):
            """Loops over ``vs`` (the split one over this call's range), ``leaf()`` inside."""
            if not vs:
                leaf()
                return
            v = vs[0]
            if v == outer and self.row is not None:
                self.vars[v] = self.row
                over(vs[1:], leaf)
            elif v == outer:
                self.loop_range(v, lambda: over(vs[1:], leaf))
            else:
                lo, hi = dom[v]
                # the unit-stride output loop around the taps: vectorised, not unrolled
                vec = taps and v == lhs[-1] and leaf is reduce_in_register
                self.loop(v, lo, hi, lambda: over(vs[1:], leaf), vectorize=vec)

        def reduce_in_register():
            """The reductions innermost (a row sum, softmax's statistics): fold into a local
            that LLVM keeps in registers, stored once, instead of a load and a store of the
            output element per point (not left to LLVM's promotion of the element); a float
            sum or product may be reassociated (``reassoc``), so LLVM vectorises it."""
            entry = self.fn.entry_basic_block
            with self.bld.goto_block(entry):
                self.bld.position_at_start(entry)
                slot = self.bld.alloca(lltype(common))
            self.bld.store(self.convert(self.load(s.tensor, lhs_idx()), dt, common), slot)

            def fold():
                v = self.convert(self.ev(s.rhs), s.rhs.dtype, common)
                acc = self.bld.load(slot)
                suffix = _float_suffix(common)
                if suffix and s.op in ("max", "min"):
                    # llvm.maximum / minimum: NaN-propagating like numpy's maximum / minimum, and a
                    # reduction LLVM vectorises (the compare-and-select it replaces stayed scalar,
                    # one dependent step per element: softmax's row max 122 -> 18 us at 256 x 1024)
                    ty = lltype(common)
                    fn = self.intrinsic(f"llvm.{'maximum' if s.op == 'max' else 'minimum'}.{suffix}", ty, [ty, ty])
                    self.bld.store(self.bld.call(fn, [acc, v]), slot)
                    return
                out = self.arith(s.op, acc, v, common)
                if common.is_float and s.op in ("+", "*"):
                    out.flags.append("reassoc")
                self.bld.store(out, slot)

            over(red, fold)
            self.store(s.tensor, lhs_idx(), self.convert(self.bld.load(slot), common, dt))

        def round_once():
            """A bfloat16 tensor is held in float32: a reduction into it sums in float32 and is
            rounded to bfloat16 once it is complete, as the reference does (its elements never
            hold unrounded values afterwards): one element, run over this call's rows."""
            idx = lhs_idx()
            self.store(s.tensor, idx, self.round_if_bf16(self.load(s.tensor, idx), dt))

        if red and order == lhs + red and s.op != "=" and in_register:
            over(lhs, reduce_in_register)
        else:
            over(order, body)
        if dt == BFLOAT16 and s.op != "=" and red:
            over(lhs, round_once)
        return outer

    def tile_function(self, name: str, stmts: list[int], row: str, vec: str, extra: tuple[str, ...] = (),
                      rows_inner: bool = False):
        """``void name(i8** bufs, i64 m0, i64 mv, i64 n0, i64 nv, i64 extra...)``: the elementwise
        statements ``stmts`` over one output tile (row in [m0, m0+mv), vec in [n0, n0+nv), the
        ``extra`` variables - a contraction's batch loops - at the values given), element by
        element in order - a contraction's fused epilogue, run on the tile it just stored.
        ``rows_inner``: the loop over rows inside the one over vec (an output whose rows, not
        its vec, are contiguous: the inner loop is the one LLVM vectorises)."""
        i8pp = L.PointerType(L.IntType(8)).as_pointer()
        self.fn = L.Function(self.mod, L.FunctionType(L.VoidType(), [i8pp] + [I64] * (4 + len(extra))), name=name)
        self.fn.linkage = "internal"
        self.bld = L.IRBuilder(self.fn.append_basic_block("entry"))
        self.ptr = {}
        for i, n in enumerate(self.names):
            raw = self.bld.load(self.bld.gep(self.fn.args[0], [L.Constant(L.IntType(32), i)]))
            self.ptr[n] = self.bld.bitcast(raw, storage_type(self.k.tensor(n).dtype).as_pointer(), name=n)
        m0, mv, n0, nv = (self.bld.trunc(a, L.IntType(32)) for a in self.fn.args[1:5])
        for x, a in zip(extra, self.fn.args[5:]):
            self.vars[x] = self.bld.trunc(a, L.IntType(32))

        def body():
            for si in stmts:
                st = self.k.stmts[si]
                dt = self.k.tensor(st.tensor).dtype
                v = self.convert(self.ev(st.rhs), st.rhs.dtype, dt)
                self.store(st.tensor, [self.bld.sext(self.vars[x], I64) for x in st.indices], v)
        if rows_inner:
            self.loop(vec, n0, self.bld.add(n0, nv), lambda: self.loop(row, m0, self.bld.add(m0, mv), body, True))
        else:
            self.loop(row, m0, self.bld.add(m0, mv), lambda: self.loop(vec, n0, self.bld.add(n0, nv), body))
        self.bld.ret_void()
        return self.fn

    def loop_range(self, var: str, body):
        """The outermost loop, over [lo, hi) given by the function's arguments."""
        self.loop(var, self.fn.args[1], self.fn.args[2], body)

    def finish(self) -> str:
        """The module, with a ``{name}_task(ctx, part)`` entry for every splittable function: the
        native thread pool calls it with a context of ``RECORD`` x i64 records per part (buffers,
        workspace, then the function's range arguments)."""
        i8p = L.IntType(8).as_pointer()
        for name, si, outer, _ in self.functions:
            if outer is None and name.endswith("_init"):
                continue
            fn = self.mod.get_global(name)
            task = L.Function(self.mod, L.FunctionType(L.VoidType(), [i8p, I64]), name=f"{name}_task")
            b = L.IRBuilder(task.append_basic_block("entry"))
            rec = b.bitcast(task.args[0], I64.as_pointer())
            base = b.mul(task.args[1], L.Constant(I64, RECORD))

            def field(i):
                return b.load(b.gep(rec, [b.add(base, L.Constant(I64, i))]))
            args = [b.inttoptr(field(0), fn.args[0].type)]
            for i, a in enumerate(fn.args[1:]):
                v = field(i + 1) if isinstance(outer, Contraction) else field(i + 2)
                if isinstance(a.type, L.PointerType):
                    v = b.inttoptr(v, a.type)
                elif a.type != I64:
                    v = b.trunc(v, a.type)
                args.append(v)
            b.call(fn, args)
            b.ret_void()
        text = str(self.mod)
        if VECTOR_BITS:
            for name, _, outer, _ in self.functions:
                if isinstance(outer, Contraction):
                    continue
                at = text.find(f'define void @"{name}"(')
                assert at >= 0, name
                end = text.index("\n", at)
                text = text[:end] + " #900" + text[end:]
            text += f'\nattributes #900 = {{ "prefer-vector-width"="{VECTOR_BITS}" }}\n'
        for i, md in enumerate(self._vec_ids):
            ref = md.get_reference()
            mark = f'{ref} = !{{ !"{self._VEC_MARK}.{i}"'
            assert mark in text, mark
            text = text.replace(mark, f"{ref} = distinct !{{ {ref}", 1)
        return text
