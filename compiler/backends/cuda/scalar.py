"""CUDA C for the cuda target's fallback path: one thread per output element.

Each statement becomes a kernel whose threads cover its output indices; a thread
runs the statement's reduction loops itself, starting from the element's current
value (after the identity fill of a ``!`` statement), so the result is the
reference semantics.  A host entry point ``isamap_run`` allocates device buffers,
copies inputs, launches the statements in order, times them with CUDA events and
copies the outputs back.  Contractions the target maps onto a matrix instruction are
tiled (``gemm.py``); consecutive elementwise statements share a kernel (``launch_order``).
"""
from __future__ import annotations

from dataclasses import replace
from math import prod

from ir import dtypes
from ir.bind import Bound
from ir.dtypes import BFLOAT16, BOOL, DType
from ir.errors import IsamapError
from ir.expr import Access, Binary, Call, Cast, Const, Expr, Select, Size, Unary, Var, accesses
from ir.kernel import Kernel

_CT = {"bool": "bool", "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t",
       "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t", "float16": "float",
       "bfloat16": "float", "float32": "float", "float64": "double"}

_MATH1 = set("acos acosh asin asinh atan atanh cbrt ceil cos cosh cospi erf erfc erfcinv erfcx erfinv exp exp10 "
             "exp2 expm1 fabs floor j0 j1 lgamma log log10 log1p log2 logb normcdf normcdfinv rcbrt round rsqrt "
             "sin sinh sinpi sqrt tan tanh tgamma trunc y0 y1 cyl_bessel_i0 cyl_bessel_i1".split())
_MATH2 = set("atan2 copysign fdim fdivide fmax fmin fmod hypot nextafter pow remainder rhypot".split())

PRELUDE = r"""#include <stdint.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
__device__ __forceinline__ float isamap_bf16(float x) {
    if (isnan(x)) return x;
    uint32_t u = __float_as_uint(x);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    return __uint_as_float(u);
}
template <typename T> __device__ __forceinline__ T isamap_div(T a, T b) {
    if (b == 0) return 0;
    T q = a / b, r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? q - 1 : q;
}
template <typename T> __device__ __forceinline__ T isamap_mod(T a, T b) {
    if (b == 0) return 0;
    T r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
"""


def cvar(name: str) -> str:
    """The C name of index variable ``name``: prefixed, so that no kernel's index can clash with
    the generated code's own names (the thread number ``t``, ``acc``, ``row``) or a C keyword."""
    return f"i_{name}"


def ctype(d: DType) -> str:
    """The C type a value of ``d`` is computed in (16-bit floats: float)."""
    return _CT[d.name]


def storage(d: DType) -> str:
    """The C type an element of a tensor of ``d`` is stored as in device memory."""
    return {"float16": "__half", "bfloat16": "__nv_bfloat16", "bool": "uint8_t"}.get(d.name) or ctype(d)


class _Gen:
    def __init__(self, k: Kernel, b: Bound, prefix: str):
        self.k, self.b, self.prefix = k, b, prefix
        self.names = [t.name for t in k.inputs + k.outputs]

    def param(self, name: str) -> str:
        d = self.k.tensor(name).dtype
        const = "const " if self.k.is_input(name) else ""
        return f"{const}{storage(d)}* __restrict__ t_{name}"

    def addr(self, name: str, idx: list[str]) -> str:
        shape, mins = self.b.shapes[name], self.b.mins[name]
        off = "0"
        for d, (i, m) in enumerate(zip(idx, mins)):
            off = f"(({off}) * {shape[d]}LL + ((long long)({i}) - ({m}LL)))"
        return f"t_{name}[{off}]"

    def read(self, name: str, idx: list[str]) -> str:
        d = self.k.tensor(name).dtype
        a = self.addr(name, idx)
        if d.name == "float16":
            return f"__half2float({a})"
        if d == BFLOAT16:
            return f"__bfloat162float({a})"
        if d == BOOL:
            return f"(bool)({a})"
        return a

    def write(self, name: str, idx: list[str], v: str) -> str:
        d = self.k.tensor(name).dtype
        a = self.addr(name, idx)
        if d.name == "float16":
            return f"{a} = __float2half({v});"
        if d == BFLOAT16:
            return f"{a} = __float2bfloat16({v});"
        if d == BOOL:
            return f"{a} = (uint8_t)({v});"
        return f"{a} = {v};"

    def conv(self, v: str, src: DType, dst: DType) -> str:
        if src == dst:
            return v
        out = f"(({ctype(dst)})({v}))"
        return f"isamap_bf16({out})" if dst == BFLOAT16 else out

    def ev(self, e: Expr) -> str:
        if isinstance(e, Const):
            if e.dtype.is_float:
                return repr(float(e.value)) + ("" if e.dtype.bits == 64 else "f")
            return f"(({ctype(e.dtype)}){int(e.value)})"
        if isinstance(e, Var):
            return cvar(e.name)
        if isinstance(e, Size):
            return f"((int32_t){self.b.sizes[e.name]})"
        if isinstance(e, Access):
            return self.read(e.tensor, [self.conv(self.ev(i), i.dtype, dtypes.INT64) for i in e.indices])
        if isinstance(e, Cast):
            return self.conv(self.ev(e.x), e.x.dtype, e.to)
        if isinstance(e, Unary):
            x = self.ev(e.x)
            if e.op == "!":
                return f"(!{x})"
            out = f"(-{self.conv(x, e.x.dtype, e.dtype)})"
            return f"isamap_bf16{out}" if e.dtype == BFLOAT16 else out
        if isinstance(e, Binary):
            if e.op in ("&&", "||"):
                return f"({self.ev(e.a)} {e.op} {self.ev(e.b)})"
            cdt = e.dtype if e.dtype != BOOL else dtypes.promote(e.a.dtype, e.b.dtype)
            a, c = self.conv(self.ev(e.a), e.a.dtype, cdt), self.conv(self.ev(e.b), e.b.dtype, cdt)
            if e.op in ("<", ">", "<=", ">=", "==", "!="):
                return f"({a} {e.op} {c})"
            if e.op in ("min", "max"):
                cmp = "<" if e.op == "min" else ">"
                out = f"(({a}) {cmp} ({c}) ? ({a}) : ({c}))"
            elif e.op == "/" and cdt.is_int:
                out = f"isamap_div<{ctype(cdt)}>({a}, {c})"
            elif e.op == "%":
                out = f"isamap_mod<{ctype(cdt)}>({a}, {c})" if cdt.is_int else f"fmod({a}, {c})"
            else:
                out = f"({a} {e.op} {c})"
            return f"isamap_bf16({out})" if e.dtype == BFLOAT16 else out
        if isinstance(e, Select):
            return (f"({self.ev(e.cond)} ? {self.conv(self.ev(e.a), e.a.dtype, e.dtype)} : "
                    f"{self.conv(self.ev(e.b), e.b.dtype, e.dtype)})")
        if isinstance(e, Call):
            args = [self.conv(self.ev(x), x.dtype, e.dtype) for x in e.args]
            f = "" if e.dtype.bits == 64 else "f"
            if e.fn == "sigmoid":
                out = f"(1{'.0' if f == '' else '.0f'} / (1{'.0' if f == '' else '.0f'} + exp{f}(-{args[0]})))"
            elif e.fn == "relu":
                out = f"fmax{f}({args[0]}, 0)"
            elif e.fn in ("fma", "norm3d", "rnorm3d", "norm4d", "rnorm4d"):
                out = f"{e.fn}{f}({', '.join(args)})"
            elif e.fn in _MATH1 or e.fn in _MATH2:
                name = {"fdivide": "fdivide"}.get(e.fn, e.fn)
                out = f"{name}{f}({', '.join(args)})"
            else:
                raise IsamapError(f"built-in '{e.fn}' is not supported by the cuda backend yet", e.span)
            return f"isamap_bf16({out})" if e.dtype == BFLOAT16 else out
        raise IsamapError(f"cannot generate CUDA for {type(e).__name__}", e.span)

    def params(self) -> str:
        """The kernel parameter list: every tensor, inputs first."""
        return ", ".join(self.param(n) for n in self.names)

    def dargs(self) -> str:
        """The launch arguments: the device buffers ``d[i]`` cast to the parameters' types."""
        return ", ".join(f"({self.param(n).split('*')[0].strip()}*)d[{i}]" for i, n in enumerate(self.names))

    def init_kernel(self, si: int) -> tuple[str, list[str]]:
        """The identity fill of a ``!`` statement's whole output, and its launch line."""
        s = self.k.stmts[si]
        dt = self.k.tensor(s.tensor).dtype
        params = self.params()
        n = prod(self.b.shapes[s.tensor])
        lit = _identity_literal(s.op, dt)
        st = storage(dt)
        val = (f"__float2half({lit})" if dt.name == "float16" else f"__float2bfloat16({lit})" if dt == BFLOAT16
               else f"({st})({lit})")
        src = (f"__global__ void {self.prefix}s{si}_init({params}) {{\n"
               f"    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n"
               f"    if (t < {n}LL) t_{s.tensor}[t] = {val};\n}}\n")
        return src, [f"    {self.prefix}s{si}_init<<<{-(-n // 256)}, 256>>>({self.dargs()});"]

    def _element(self, si: int, per_block: bool = False) -> tuple[list[str], int, list[str]]:
        """Statement ``si``'s output indices, how many elements it has, and the kernel lines that
        give a thread its element (one thread per element, 1-D grid, surplus threads return; or
        ``per_block``: one block per element)."""
        dom = self.b.domain(si)
        lhs = list(self.k.stmts[si].indices)
        exts = [dom[v][1] - dom[v][0] for v in lhs]
        total = prod(exts)
        body = (["    long long t = blockIdx.x;"] if per_block else
                ["    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;", f"    if (t >= {total}LL) return;"])
        for v, e in reversed(list(zip(lhs, exts))):
            body.append(f"    int {cvar(v)} = (int)(t % {e}) + ({dom[v][0]}); t /= {e};")
        return [cvar(v) for v in lhs], total, body

    def block_reduction(self, si: int) -> bool:
        """Whether statement ``si`` is a reduction better run by a block per output element: few
        outputs (one thread each would leave the GPU nearly idle) over a long reduction."""
        s = self.k.stmts[si]
        if s.op == "=" or s.exists or not s.reduction_vars:
            return False
        dom = self.b.domain(si)
        outputs = prod(dom[v][1] - dom[v][0] for v in s.indices)
        length = prod(dom[v][1] - dom[v][0] for v in s.reduction_vars)
        return outputs < 8192 and length >= 256

    def reduction(self, si: int) -> tuple[str, str]:
        """The kernel and launch line of a block of 256 threads per output element: each folds
        every 256th point of the reduction domain into a partial (from the operator's identity),
        a tree in shared memory combines the partials, and thread 0 folds the result into the
        element (its value after any identity fill: the reference semantics, in another order
        of operations)."""
        s = self.k.stmts[si]
        dom = self.b.domain(si)
        dt = self.k.tensor(s.tensor).dtype
        common = dtypes.promote(dt, s.rhs.dtype)
        ct = ctype(common)
        lhs, total, body = self._element(si, per_block=True)
        lit = _identity_literal(s.op, common)
        red = list(s.reduction_vars)
        exts = [dom[v][1] - dom[v][0] for v in red]
        body += [f"    __shared__ {ct} part[256];", f"    {ct} acc = ({ct})({lit});",
                 f"    for (long long r = threadIdx.x; r < {prod(exts)}LL; r += 256) {{", "        long long q = r;"]
        for v, e in reversed(list(zip(red, exts))):
            body.append(f"        int {cvar(v)} = (int)(q % {e}) + ({dom[v][0]}); q /= {e};")
        val = self.conv(self.ev(s.rhs), s.rhs.dtype, common)
        body += [f"        acc = {_fold(s.op, 'acc', f'({val})')};", "    }",
                 "    part[threadIdx.x] = acc;", "    __syncthreads();",
                 "    for (int w = 128; w > 0; w >>= 1) {",
                 f"        if (threadIdx.x < w) part[threadIdx.x] = {_fold(s.op, 'part[threadIdx.x]', 'part[threadIdx.x + w]')};",
                 "        __syncthreads();", "    }",
                 f"    if (threadIdx.x == 0) {{ {ct} old = {self.conv(self.read(s.tensor, lhs), dt, common)};",
                 f"        {self.write(s.tensor, lhs, self.conv(_fold(s.op, 'old', 'part[0]'), common, dt))} }}"]
        return (f"__global__ void {self.prefix}s{si}({self.params()}) {{\n" + "\n".join(body) + "\n}\n",
                f"    {self.prefix}s{si}<<<{total}, 256>>>({self.dargs()});")

    def pointwise(self, sis: list[int]) -> tuple[str, list[str]]:
        """One kernel running the elementwise assignments ``sis`` (one domain, indexed alike;
        see ``launch_order``) one after another on each thread's element."""
        lhs, total, body = self._element(sis[0])
        for si in sis:
            s = self.k.stmts[si]
            dt = self.k.tensor(s.tensor).dtype
            body.append(f"    {self.write(s.tensor, lhs, self.conv(self.ev(s.rhs), s.rhs.dtype, dt))}  // S{si}")
        name = f"{self.prefix}s{'_'.join(map(str, sis))}"
        src = f"__global__ void {name}({self.params()}) {{\n" + "\n".join(body) + "\n}\n"
        return src, [f"    {name}<<<{max(1, -(-total // 256))}, 256>>>({self.dargs()});"]

    def statement(self, si: int) -> tuple[str, list[str]]:
        """The kernels of statement ``si`` (one thread per output element, or a block per element
        for a long reduction into few) and their launch lines."""
        s = self.k.stmts[si]
        dom = self.b.domain(si)
        dt = self.k.tensor(s.tensor).dtype
        params = self.params()
        src, launch = [], []
        if s.init:
            isrc, ilaunch = self.init_kernel(si)
            src.append(isrc)
            launch += ilaunch
        if self.block_reduction(si):
            ksrc, kline = self.reduction(si)
            return "".join(src) + ksrc, launch + [kline]
        red = list(s.reduction_vars)
        lhs, total, body = self._element(si)
        if s.op == "=":
            body.append("    " + self.write(s.tensor, lhs, self.conv(self.ev(s.rhs), s.rhs.dtype, dt)))
        else:
            common = dtypes.promote(dt, s.rhs.dtype)
            ct = ctype(common)
            body.append(f"    {ct} acc = {self.conv(self.read(s.tensor, lhs), dt, common)};")
            ind = "    "
            for v in red:
                lo, hi = dom[v]
                body.append(f"{ind}for (int {cvar(v)} = {lo}; {cvar(v)} < {hi}; ++{cvar(v)}) {{")
                ind += "    "
            val = self.conv(self.ev(s.rhs), s.rhs.dtype, common)
            upd = _fold(s.op, "acc", val)
            # a bfloat16 reduction sums in float and rounds once, at the store, as the reference does
            body.append(f"{ind}acc = {upd};")
            for _ in red:
                ind = ind[:-4]
                body.append(f"{ind}}}")
            body.append("    " + self.write(s.tensor, lhs, self.conv("acc", common, dt)))
        src.append(f"__global__ void {self.prefix}s{si}({params}) {{\n" + "\n".join(body) + "\n}\n")
        launch.append(f"    {self.prefix}s{si}<<<{max(1, -(-total // 256))}, 256>>>({self.dargs()});")
        return "".join(src), launch


def _fold(op: str, acc: str, x: str) -> str:
    """C for folding ``x`` into ``acc`` with a reduction operator."""
    return {"+": f"{acc} + {x}", "*": f"{acc} * {x}", "min": f"(({x}) < {acc} ? ({x}) : {acc})",
            "max": f"(({x}) > {acc} ? ({x}) : {acc})"}[op]


def _identity_literal(op: str, d: DType) -> str:
    """C for the identity of a reduction operator in type ``d`` (what a ``!`` fills with)."""
    from ir.interp import identity
    ident = identity(op, d)
    return ("INFINITY" if ident == float("inf") else "-INFINITY" if ident == float("-inf") else
            repr(float(ident)) if d.is_float else str(int(ident)))


def launch_order(k: Kernel, b: Bound, found: dict) -> list[tuple[str, list[int]]]:
    """The kernels to launch, in order: ("gemm", [si]) for a tiled contraction (its fused
    epilogue included), ("pointwise", [si, ...]) for elementwise assignments run by one kernel,
    ("scalar", [si]) for the rest.

    Consecutive assignments over one domain, indexed alike, that read each other's results
    only at the element they write, share a kernel (one thread runs them all on its element,
    in program order); such a group waits past a contraction that neither reads what the
    group writes nor writes what it touches, so e.g. a GRU step's gate math after split-K
    products is one launch instead of four."""
    skip = {j for p in found.values() for j in p.epilogue}
    out: list[tuple[str, list[int]]] = []
    group: list[int] = []
    written: set[str] = set()
    touched: set[str] = set()
    away: set[str] = set()  # tensors the group reads at other elements than its own

    def flush():
        nonlocal group, written, touched, away
        if group:
            out.append(("pointwise" if len(group) > 1 else "scalar", group))
        group, written, touched, away = [], set(), set(), set()

    for si in range(len(k.stmts)):
        if si in skip:
            continue
        s = k.stmts[si]
        if si in found:
            p = found[si]
            uses = {p.c} | {x.tensor for x in accesses(s.rhs)}
            for j in p.epilogue:
                uses |= {k.stmts[j].tensor} | {x.tensor for x in accesses(k.stmts[j].rhs)}
            if uses & (written | touched):
                flush()
            out.append(("gemm", [si]))
            continue
        idx = tuple(s.indices)
        if s.op != "=" or s.reduction_vars or s.exists:
            flush()
            out.append(("scalar", [si]))
            continue
        reads = accesses(s.rhs)
        here = {x.tensor for x in reads if tuple(getattr(i, "name", None) for i in x.indices) == idx}
        far = {x.tensor for x in reads} - here
        first = k.stmts[group[0]] if group else None
        if group and (tuple(first.indices) != idx or b.domain(group[0]) != b.domain(si)
                      or far & written or s.tensor in away | far):
            flush()
        group.append(si)
        written.add(s.tensor)
        touched |= {x.tensor for x in reads} | {s.tensor}
        away |= far
    flush()
    return out


def schedule_text(k: Kernel, b: Bound, found: dict) -> str:
    """What the cuda backend decided (``--emit schedule``): each kernel launch in order, with
    the statements it runs and how its grid covers them."""
    from .gemm import store_mode
    g = _Gen(k, b, "")
    order = launch_order(k, b, found)
    out = [f"# {k.name}: {len(order)} kernel launch{'es' if len(order) != 1 else ''} in this order"]
    for n, (kind, sis) in enumerate(order, 1):
        names = ", ".join(f"S{si}" for si in sis)
        s = k.stmts[sis[0]]
        if kind == "gemm":
            p = found[sis[0]]
            gx, gy, gz = p.grid()
            tail = "" if p.tiling.persistent == 0 else f" (persistent: {min(p.tiling.persistent, gx * gy * gz)} blocks)"
            mode = store_mode(p, b) if p.init else "set"  # emit's fills: a memset before atomics, else an identity fill
            fill = {"atomic": "after zeroing the output (cudaMemsetAsync), ", "add": "after an identity fill, "}.get(mode, "")
            out.append(f"{n}. {fill}{p.describe()}; grid {gx} x {gy} x {gz}{tail}")
            continue
        if s.init:
            names = f"after an identity fill of {s.tensor}, {names}"
        dom = b.domain(sis[0])
        _, total, _ = g._element(sis[0])
        if kind == "pointwise":
            out.append(f"{n}. {names}: one kernel, one thread per element ({total} threads), the statements "
                       f"in order on each element")
        elif g.block_reduction(sis[0]):
            length = prod(dom[v][1] - dom[v][0] for v in s.reduction_vars)
            out.append(f"{n}. {names}: a block of 256 threads per output element ({total} blocks), each folding "
                       f"every 256th of {length} reduction points, then a shared-memory tree")
        else:
            red = f", a loop over {prod(dom[v][1] - dom[v][0] for v in s.reduction_vars)} reduction points" \
                if s.reduction_vars else ""
            out.append(f"{n}. {names}: one thread per output element ({total} threads){red}")
    return "\n".join(out) + "\n"


def plans(k: Kernel, b: Bound, t=None) -> dict:
    """Statement -> GemmPlan for the statements the target maps onto a matrix instruction
    (with their block tiling and fused epilogues); the rest run one thread per element."""
    if t is None:
        return {}
    from ...mapping import mappings_for_kernel
    from ..fusion import epilogue
    from .gemm import recognise, with_tiling
    ms = mappings_for_kernel(k, t, bound=b)
    out = {}
    for si in range(len(k.stmts)):
        p = recognise(k, b, t, si, ms)
        if p is not None:
            p = with_tiling(replace(p, epilogue=tuple(epilogue(k, b, p))), t)
            if p.grid()[1] <= 65535 and p.grid()[2] <= 65535:  # CUDA's limits on gridDim.y and .z
                out[si] = p
    return out


def cuda_source(k: Kernel, b: Bound, prefix: str = "", prelude: bool = True, t=None, gemm: dict | None = None) -> str:
    """CUDA C for the kernel, with ``extern "C"`` entry points ``<prefix>isamap_launch`` (device
    buffers), ``<prefix>isamap_run`` (host buffers: copies, launches, times, copies back) and
    ``<prefix>isamap_time`` (the same, timing ``reps`` x ``inner`` launches).  With a target
    ``t``, statements it maps onto a matrix instruction become tiled kernels (``gemm.py``);
    ``gemm`` gives those plans directly instead."""
    from .gemm import emit as emit_gemm
    from .gemm import tiles_header
    g = _Gen(k, b, prefix)
    found = plans(k, b, t) if gemm is None else gemm
    parts, launches = [], []
    for kind, sis in launch_order(k, b, found):
        if kind == "gemm":
            src, ln, _ = emit_gemm(g, found[sis[0]])
        elif kind == "pointwise":
            src, ln = g.pointwise(sis)
        else:
            src, ln = g.statement(sis[0])
        parts.append(src)
        launches += ln
    n_in, n_all = len(k.inputs), len(g.names)
    host = f"""
extern "C" int {prefix}isamap_launch(void** d) {{
{chr(10).join(launches)}
    return (int)cudaGetLastError();
}}

static int {prefix}isamap_setup(void** h, const long long* bytes, void** d) {{
    for (int i = 0; i < {n_all}; ++i) {{
        if (cudaMalloc(&d[i], bytes[i] ? bytes[i] : 1) != cudaSuccess) return 2;
        if (i < {n_in}) {{ if (cudaMemcpy(d[i], h[i], bytes[i], cudaMemcpyHostToDevice) != cudaSuccess) return 3; }}
        else cudaMemset(d[i], 0, bytes[i]);
    }}
    return 0;
}}

static int {prefix}isamap_finish(void** h, const long long* bytes, void** d, int err) {{
    if (!err) err = (int)cudaDeviceSynchronize();
    for (int i = {n_in}; i < {n_all} && !err; ++i)
        err = (int)cudaMemcpy(h[i], d[i], bytes[i], cudaMemcpyDeviceToHost);
    for (int i = 0; i < {n_all}; ++i) cudaFree(d[i]);
    return err;
}}

extern "C" int {prefix}isamap_run(void** h, const long long* bytes, float* ms) {{
    void* d[{n_all}];
    int err = {prefix}isamap_setup(h, bytes, d);
    if (err) return err;
    cudaEvent_t a, z;
    cudaEventCreate(&a); cudaEventCreate(&z);
    cudaEventRecord(a);
    err = {prefix}isamap_launch(d);
    cudaEventRecord(z);
    cudaEventSynchronize(z);
    cudaEventElapsedTime(ms, a, z);
    cudaEventDestroy(a); cudaEventDestroy(z);
    return {prefix}isamap_finish(h, bytes, d, err);
}}

// One warm-up launch, then reps timed blocks of inner launches each: ms[r] = block time / inner.
extern "C" int {prefix}isamap_time(void** h, const long long* bytes, int reps, int inner, float* ms) {{
    void* d[{n_all}];
    int err = {prefix}isamap_setup(h, bytes, d);
    if (err) return err;
    err = {prefix}isamap_launch(d);
    cudaEvent_t a, z;
    cudaEventCreate(&a); cudaEventCreate(&z);
    for (int r = 0; r < reps && !err; ++r) {{
        cudaEventRecord(a);
        for (int i = 0; i < inner && !err; ++i) err = {prefix}isamap_launch(d);
        cudaEventRecord(z);
        cudaEventSynchronize(z);
        cudaEventElapsedTime(&ms[r], a, z);
        ms[r] /= inner;
    }}
    cudaEventDestroy(a); cudaEventDestroy(z);
    return {prefix}isamap_finish(h, bytes, d, err);
}}
"""
    how = "tiled contractions + one thread per element elsewhere" if found else "one thread per output element"
    head = f"// {k.name}: generated by isamap ({how})\n"
    hdr = tiles_header() if (prelude and found) else ""
    return head + (PRELUDE if prelude else "") + hdr + "\n".join(parts) + host
