"""Tiled CUDA for contraction statements: ``C(batch.., m, n) += A(.., m|k ..) * B(.., k|n ..)``.

A statement takes this path when the target maps it onto a matrix instruction: the mapping
pass's legal mappings name the instruction, and its operand shapes give the fragment (the
``mma_16816*`` family: 16-bit A and B, float32 accumulators; ``wgmma_64n*`` (a target that
declares Hopper's warpgroup MMA): 64 x 16 by 16 x N from swizzled shared memory; ``ffma*``:
float32 FFMA).  The
operands must be plain-variable accesses with one reduction variable, each contiguous along
one of its two matrix variables (any batch variables outside).  Tiles come from
``schedulers.gpu_tiles``; the code instantiates the building blocks of ``tiles.cuh`` and adds
what is specific to the statement: the batch offsets, the bounds, and the per-element store
(plain, accumulate, or atomic for split-K) followed by any fused elementwise epilogue.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from math import prod
from pathlib import Path

from ir.bind import Bound
from ir.dtypes import FLOAT32
from ir.expr import Access, Binary, Cast, Var
from ir.kernel import Kernel

from schedulers.gpu_tiles import GpuTiling, choose, choose_wgmma

from ..access import covers_output, element_strides
from .scalar import cvar

TILES_CUH = Path(__file__).with_name("tiles.cuh")
WGMMA_N = (64, 128, 256)  # wgmma.m64nNk16 widths the generated code can issue
_STORAGE = {"float16": "__half", "bfloat16": "__nv_bfloat16", "float32": "float"}


@dataclass(frozen=True)
class GemmPlan:
    stmt: int
    instr: str
    c: str
    a: str
    b: str
    row: str  # m
    col: str  # n
    red: str  # k
    batch: tuple[str, ...]
    dom: dict = field(default_factory=dict)
    strides: dict = field(default_factory=dict)  # tensor -> {var: element stride} (0: not indexed)
    base: dict = field(default_factory=dict)  # tensor -> constant element offset
    init: bool = False
    dtype: str = "float32"  # the operands' element type
    c_dtype: str = "float32"
    tiling: GpuTiling | None = None
    epilogue: tuple[int, ...] = ()
    wgmma: tuple[tuple[int, str], ...] = ()  # the target's warpgroup-MMA instructions for this dtype: (N, name)

    def extent(self, v: str) -> int:
        lo, hi = self.dom[v]
        return hi - lo

    def grid(self) -> tuple[int, int, int]:
        """Blocks along m, n and (batch x splits)."""
        tl = self.tiling
        return (-(-self.extent(self.row) // tl.bm), -(-self.extent(self.col) // tl.bn),
                prod(self.extent(v) for v in self.batch) * tl.splits)

    @property
    def a_kmajor(self) -> bool:
        return self.strides[self.a][self.red] == 1

    @property
    def b_kmajor(self) -> bool:
        return self.strides[self.b][self.red] == 1

    @property
    def instruction(self) -> str:
        """The matrix instruction the code issues: the warpgroup MMA when the tiling uses it."""
        if self.tiling is not None and self.tiling.wgmma:
            return next((name for n, name in self.wgmma if n == self.tiling.bn), f"wgmma m64n{self.tiling.bn}k16")
        return self.instr

    def describe(self) -> str:
        tl = self.tiling
        lay = (f"{self.a} {'k' if self.a_kmajor else 'm'}-contiguous, {self.b} "
               f"{'k' if self.b_kmajor else 'n'}-contiguous")
        return (f"S{self.stmt}: {self.c} on {self.instruction} ({self.row} x {self.col} over {self.red}"
                + (f", batch {', '.join(self.batch)}" if self.batch else "") + f"; {lay}): {tl.describe()}"
                + (f"; fused epilogue: {', '.join(f'S{j}' for j in self.epilogue)}" if self.epilogue else ""))


def _matrix_instr(t, name: str) -> tuple[str, str] | None:
    """('mma', dtype) for a 16x8x16 tensor-core instruction, ('ffma', 'float32') for a warp FMA."""
    ins = t.instr(name)
    s = ins.body.stmts[0] if len(ins.body.stmts) == 1 else None
    if s is None or s.op != "+" or len(ins.outputs) != 1:
        return None
    shapes = sorted(o.shape for o in ins.inputs)
    dts = {o.dtype.name for o in ins.inputs}
    half = len(dts) == 1 and dts <= {"float16", "bfloat16"} and ins.outputs[0].dtype.name == "float32"
    if len(s.indices) == 2 and shapes == [(16, 8), (16, 16)] and ins.outputs[0].shape == (16, 8) and half:
        return "mma", dts.pop()
    n = ins.outputs[0].shape[1] if len(ins.outputs[0].shape) == 2 else 0
    if (len(s.indices) == 2 and shapes == [(16, n), (64, 16)] and ins.outputs[0].shape == (64, n) and half
            and n in WGMMA_N):
        return "wgmma", dts.pop()
    if all(o.dtype.name == "float32" for o in ins.operands) and len(s.indices) == 1:
        return "ffma", "float32"
    return None


def _operand(e):
    while isinstance(e, Cast):
        e = e.x
    return e if isinstance(e, Access) else None


def recognise(k: Kernel, b: Bound, t, si: int, mappings) -> GemmPlan | None:
    """The statement as a GemmPlan, or None (it then runs on the scalar path)."""
    s = k.stmts[si]
    if s.op != "+" or s.exists or not isinstance(s.rhs, Binary) or s.rhs.op != "*":
        return None
    kinds, wgs = {}, {}
    for m in mappings:
        if m.statement == si and m.legal and len(m.steps) == 1:
            kind = _matrix_instr(t, m.steps[0].instruction)
            if kind is not None:
                kinds.setdefault(kind, m.steps[0].instruction)
                if kind[0] == "wgmma":
                    ins = t.instr(m.steps[0].instruction)
                    wgs.setdefault(kind[1], {})[ins.outputs[0].shape[1]] = ins.name
    xa, xb = _operand(s.rhs.a), _operand(s.rhs.b)
    if xa is None or xb is None or xa.tensor == xb.tensor or s.tensor in (xa.tensor, xb.tensor):
        return None
    dt_a, dt_b = k.tensor(xa.tensor).dtype.name, k.tensor(xb.tensor).dtype.name
    cdt = k.tensor(s.tensor).dtype.name
    if dt_a != dt_b or cdt not in _STORAGE:
        return None
    kind = ("mma", dt_a) if dt_a in ("float16", "bfloat16") else ("ffma", "float32") if dt_a == "float32" else None
    if kind not in kinds or (kind[0] == "ffma" and cdt != "float32"):
        return None
    acc = {s.tensor: [Var(v) for v in s.indices], xa.tensor: list(xa.indices), xb.tensor: list(xb.indices)}
    found = element_strides(b, acc)
    if found is None:
        return None
    strides, base, uses = found
    dom = b.domain(si)
    c, a, bt = s.tensor, xa.tensor, xb.tensor
    rows = [v for v in s.indices if v in uses[a] and v not in uses[bt]]
    cols = [v for v in s.indices if v in uses[bt] and v not in uses[a]]
    reds = [v for v in dom if v not in uses[c]]
    if len(rows) != 1 or len(cols) != 1 or len(reds) != 1 or not (reds[0] in uses[a] and reds[0] in uses[bt]):
        return None  # matrix-vector and other forms: scalar path
    row, col, red = rows[0], cols[0], reds[0]
    batch = tuple(v for v in s.indices if v not in (row, col))
    if (uses[a] | uses[bt]) - {row, col, red} - set(batch):
        return None
    for name in acc:
        strides[name] = {v: strides[name].get(v, 0) for v in sorted(dom)}
    if strides[a][red] != 1 and strides[a][row] != 1:
        return None
    if strides[bt][red] != 1 and strides[bt][col] != 1:
        return None
    return GemmPlan(si, kinds[kind], c, a, bt, row, col, red, batch, dict(dom), strides, base, s.init, dt_a, cdt,
                    wgmma=tuple(sorted(wgs.get(dt_a, {}).items())))


def with_tiling(p: GemmPlan, t, tiling: GpuTiling | None = None) -> GemmPlan:
    """The plan with its block tiling: ``tiling`` if given, else the model's choice."""
    if tiling is None and p.wgmma and _vector_width(p, p.a, 2) == 8 and _vector_width(p, p.b, 2) == 8:
        tiling = choose_wgmma(t, p.extent(p.row), p.extent(p.col), p.extent(p.red),
                              prod(p.extent(v) for v in p.batch), 2, [n for n, _ in p.wgmma], tma=not p.batch)
    if tiling is None:
        ins = t.instr(p.instr)
        macs = ins.macs / ins.cycles() * t.engine(ins.engine).count
        tc = p.dtype != "float32"
        tiling = choose(t, p.extent(p.row), p.extent(p.col), p.extent(p.red),
                        prod(p.extent(v) for v in p.batch), 2 if tc else 4, tc, p.c_dtype == "float32", macs)
    # a split tile's elements are final only after every split has added its part: no epilogue on it
    return replace(p, tiling=tiling, epilogue=p.epilogue if tiling.splits == 1 else ())


def _vector_width(p: GemmPlan, name: str, itemsize: int) -> int:
    """Elements per cp.async chunk of the operand (8, 4 or 2 16-bit elements: 16, 8 or 4 bytes;
    1: plain loads): the widest whose multiple its row stride, its batch strides and its constant
    offset all are, so that every chunk is aligned."""
    st = p.strides[name]
    contig = p.red if st[p.red] == 1 else (p.row if name == p.a else p.col)
    off = p.base[name] + sum(st[v] * p.dom[v][0] for v in (p.row, p.col, p.red))
    for w in (16 // itemsize, 8 // itemsize, 4 // itemsize):
        if w > 1 and off % w == 0 and all(st[v] % w == 0 for v in st if v != contig):
            return w
    return 1


def store_mode(p: GemmPlan, b: Bound) -> str:
    """How the product reaches C: "atomic" (split-K partial sums added into C, zeroed first when
    the statement starts from the identity), "set" (every element of C written once) or "add"
    (into C's current values, after any identity fill)."""
    return "atomic" if p.tiling.splits > 1 else ("set" if covers_output(p, b) else "add")


def emit(g, p: GemmPlan) -> tuple[str, list[str], int]:
    """(CUDA source, launch lines, dynamic shared bytes) of the plan's kernel ``s<i>``; ``g`` is
    the scalar generator (parameters, addressing and expressions for the store and epilogue)."""
    k, b = g.k, g.b
    tl = p.tiling
    si = p.stmt
    T = _STORAGE[p.dtype]
    cdt = k.tensor(p.c).dtype
    params = g.params()
    args = ", ".join(f"t_{n}" for n in g.names)
    M, N, K = p.extent(p.row), p.extent(p.col), p.extent(p.red)
    splits = tl.splits
    kc = -(-K // splits)
    kc = -(-kc // tl.bk) * tl.bk
    mode = store_mode(p, b)
    lines = [f"__device__ __forceinline__ void {g.prefix}s{si}_store({params}, int row, int col, long long z, float v) {{",
             f"    int {cvar(p.row)} = row + ({p.dom[p.row][0]}); int {cvar(p.col)} = col + ({p.dom[p.col][0]});"]
    for v in reversed(p.batch):
        e = p.extent(v)
        lines.append(f"    int {cvar(v)} = (int)(z % {e}) + ({p.dom[v][0]}); z /= {e};")
    idx = [cvar(v) for v in k.stmts[si].indices]
    addr = g.addr(p.c, idx)
    if mode == "atomic":
        lines.append(f"    atomicAdd(&{addr}, v);")
    elif mode == "set":
        lines.append("    " + g.write(p.c, idx, g.conv("v", FLOAT32, cdt)))
    else:
        lines.append("    " + g.write(p.c, idx, g.conv(f"({g.conv(g.read(p.c, idx), cdt, FLOAT32)} + v)", FLOAT32, cdt)))
    for j in p.epilogue:
        s = k.stmts[j]
        dt = k.tensor(s.tensor).dtype
        lines.append("    " + g.write(s.tensor, [cvar(v) for v in s.indices], g.conv(g.ev(s.rhs), s.rhs.dtype, dt)))
    lines.append("}")
    store = "\n".join(lines) + "\n"

    def ptr(name: str) -> str:
        st = p.strides[name]
        off = p.base[name] + sum(st[v] * p.dom[v][0] for v in (p.row, p.col, p.red))
        return f"t_{name} + ({off}LL) + off_{name}"

    batch_code = [f"    long long off_{p.a} = 0, off_{p.b} = 0;"] + (["    { long long q = zb;"] if p.batch else [])
    for v in reversed(p.batch):
        e = p.extent(v)
        batch_code.append(f"      long long {cvar(v)} = q % {e} + ({p.dom[v][0]}); q /= {e};")
        batch_code.append(f"      off_{p.a} += {p.strides[p.a][v]}LL * {cvar(v)}; off_{p.b} += {p.strides[p.b][v]}LL * {cvar(v)};")
    batch_code += ["    }"] if p.batch else []
    lda = _ld(p, p.a, p.row)
    ldb = _ld(p, p.b, p.col)
    va, vb = _vector_width(p, p.a, 2), _vector_width(p, p.b, 2)
    ak, bkm = p.a_kmajor, p.b_kmajor
    tc = tl.tensor_cores
    if tl.wgmma:
        tile = (f"isamap::{'WsTile' if tl.tma else 'WgTile'}<{T}, {tl.bm}, {tl.bn}, {tl.stages}, {_b(ak)}, "
                f"{_b(bkm)}>")
        smem = tl.smem_bytes(2)
        acc_decl = "float acc[Tile::ACC];"
        acc_zero = "    for (int i = 0; i < Tile::ACC; ++i) acc[i] = 0.0f;"
        cast = "isamap_smem"
        epi = ("    const int wg = threadIdx.x >> 7, w = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;" if not tl.tma
               else "    const int w = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;  // wg: the consumer")
        epi += f"""
#pragma unroll
    for (int i = 0; i < {tl.bn // 8}; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {{
        int r = m0 + wg * 64 + w * 16 + (lane >> 2) + (e >> 1) * 8, c = n0 + i * 8 + (lane & 3) * 2 + (e & 1);
        if (r < {M} && c < {N}) {g.prefix}s{si}_store({args}, r, c, zb, acc[i * 4 + e]);
    }}"""
    elif tc:
        tile = (f"isamap::TcTile<{T}, {tl.bm}, {tl.bn}, {tl.bk}, {tl.wm}, {tl.wn}, {tl.stages}, "
                f"{_b(ak)}, {_b(bkm)}, {va}, {vb}>")
        smem = tl.smem_bytes(2, ak, bkm)
        acc_decl = "float acc[Tile::MI][Tile::NI][4];"
        acc_zero = ("    for (int i = 0; i < Tile::MI; ++i) for (int j = 0; j < Tile::NI; ++j) "
                    "for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;")
        cast = f"({T}*)isamap_smem"
        epi = f"""    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp / Tile::WARPS_N) * {tl.wm}, wn = (warp % Tile::WARPS_N) * {tl.wn};
#pragma unroll
    for (int mi = 0; mi < Tile::MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < Tile::NI; ++ni)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int e = 0; e < 2; ++e) {{
        int r = m0 + wm + mi * 16 + (lane >> 2) + h * 8, c = n0 + wn + ni * 8 + (lane & 3) * 2 + e;
        if (r < {M} && c < {N}) {g.prefix}s{si}_store({args}, r, c, zb, acc[mi][ni][h * 2 + e]);
    }}"""
    else:
        tile = f"isamap::FmaTile<{tl.bm}, {tl.bn}, {tl.bk}, {tl.wm}, {tl.wn}, {_b(ak)}, {_b(bkm)}>"
        smem = tl.smem_bytes(4)
        acc_decl = f"float acc[{tl.wm}][{tl.wn}];"
        acc_zero = (f"    for (int i = 0; i < {tl.wm}; ++i) for (int j = 0; j < {tl.wn}; ++j) acc[i][j] = 0.0f;")
        cast = "(float*)isamap_smem"
        epi = f"""    const int tm = (threadIdx.x / {tl.bn // tl.wn}) * {tl.wm}, tn = (threadIdx.x % {tl.bn // tl.wn}) * {tl.wn};
#pragma unroll
    for (int i = 0; i < {tl.wm}; ++i)
#pragma unroll
    for (int j = 0; j < {tl.wn}; ++j) {{
        int r = m0 + tm + i, c = n0 + tn + j;
        if (r < {M} && c < {N}) {g.prefix}s{si}_store({args}, r, c, zb, acc[i][j]);
    }}"""
    mt, ntl, nz = p.grid()
    grid = f"dim3({mt}, {ntl}, {nz})"
    if tl.tma:  # the operands reach the kernel as tensor maps, made by the host launch below
        assert splits == 1 and not p.batch, "the TMA path covers one unbatched, unsplit product"
        params += ", const __grid_constant__ CUtensorMap tm_a, const __grid_constant__ CUtensorMap tm_b"
        grid = f"dim3({min(mt * ntl, tl.persistent) if tl.persistent else mt * ntl}, 1, 1)"
    head = f"""__global__ void __launch_bounds__({tl.threads}{', 1' if tl.tma else ''}) {g.prefix}s{si}({params}) {{
    extern __shared__ __align__(16) unsigned char isamap_smem[];
    using Tile = {tile};
    static_assert(Tile::SMEM == {smem}, "shared-memory size of the launch");
"""
    if tl.tma:
        body = f"""    const long long zb = 0;
    Tile::run_tiles(&tm_a, &tm_b, 0, {K}, {mt}, {ntl}, isamap_smem,
                    [&](int m0, int n0, float (&acc)[Tile::ACC], int wg) {{
{epi}
    }});
}}
"""
    else:
        body = f"""    const long long zb = blockIdx.z / {splits};
    const int split = blockIdx.z % {splits};
{chr(10).join(batch_code)}
    const int m0 = blockIdx.x * {tl.bm}, n0 = blockIdx.y * {tl.bn};
    const int k0 = split * {kc}, k1 = min({K}, k0 + {kc});
    {acc_decl}
{acc_zero}
    Tile::run(acc, (const {T}*)({ptr(p.a)}), (const {T}*)({ptr(p.b)}), {lda}LL, {ldb}LL, {M}, {N}, k0, k1,
              m0, n0, {cast});
{epi}
}}
"""
    src = store + head + body
    launch = []
    if mode == "atomic" and p.init:
        ci = g.names.index(p.c)
        launch.append(f"    cudaMemsetAsync(d[{ci}], 0, {prod(b.shapes[p.c]) * cdt.itemsize}LL);")
    elif p.init and mode != "set":
        isrc, ilaunch = g.init_kernel(si)
        src = isrc + src
        launch += ilaunch
    launch.append(f"    {{ static bool attr = false; if (!attr) {{ cudaFuncSetAttribute({g.prefix}s{si}, "
                  f"cudaFuncAttributeMaxDynamicSharedMemorySize, {smem}); attr = true; }} }}")
    if tl.tma:
        bf16 = _b(p.dtype == "bfloat16")
        maps = []
        for name, own, kmaj, box in ((p.a, p.row, ak, tl.bm), (p.b, p.col, bkm, tl.bn)):
            st = p.strides[name]
            off = p.base[name] + sum(st[v] * p.dom[v][0] for v in (p.row, p.col, p.red))
            cols, rows = (K, p.extent(own)) if kmaj else (p.extent(own), K)
            maps.append(f"isamap::tensor_map(&tm{len(maps)}, {bf16}, (const char*)d[{g.names.index(name)}] + "
                        f"{2 * off}LL, {cols}, {rows}, {_ld(p, name, own)}, 64, {box if kmaj else 64})")
        launch.append(f"    {{ CUtensorMap tm0, tm1; int e = {maps[0]};")
        launch.append(f"      if (!e) e = {maps[1]};")
        launch.append("      if (e) return e;")
        launch.append(f"      {g.prefix}s{si}<<<{grid}, {tl.threads}, {smem}>>>({g.dargs()}, tm0, tm1); }}")
    else:
        launch.append(f"    {g.prefix}s{si}<<<{grid}, {tl.threads}, {smem}>>>({g.dargs()});")
    return src, launch, smem

def _ld(p: GemmPlan, name: str, own: str) -> int:
    """Element distance between consecutive rows of the operand's (own x red) matrix as stored."""
    st = p.strides[name]
    return st[own] if st[p.red] == 1 else st[p.red]


def _b(x: bool) -> str:
    return "true" if x else "false"


@functools.lru_cache(maxsize=1)
def _wgmma_specialisations() -> str:
    """``isamap::Wgmma<N, T, TA, TB>::run``: the inline PTX of wgmma.m64nNk16 (N / 2 float
    accumulators a thread; TA / TB: operand read MN-major), compiled only for sm_90a."""
    out = ["#ifndef ISAMAP_EMU", "namespace isamap {"]
    for n in WGMMA_N:
        regs = n // 2
        for T, ptx in (("__half", "f16"), ("__nv_bfloat16", "bf16")):
            dl = ", ".join(f"%{i}" for i in range(regs))
            outs = ", ".join(f'"+f"(d[{i}])' for i in range(regs))
            out.append(f"""template <int TA, int TB> struct Wgmma<{n}, {T}, TA, TB> {{
    __device__ __forceinline__ static void run(float (&d)[{regs}], unsigned long long da, unsigned long long db,
                                               int scale) {{
#ifdef __CUDA_ARCH_FEAT_SM90_ALL
        asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{regs + 2}, 0;\\n"
                     "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ptx}.{ptx} {{{dl}}}, %{regs}, %{regs + 1}, p, 1, 1, "
                     "%{regs + 3}, %{regs + 4};\\n}}\\n"
                     : {outs}
                     : "l"(da), "l"(db), "r"(scale), "n"(TA), "n"(TB));
#endif
    }}
}};""")
    out += ["}  // namespace isamap", "#endif", ""]
    return "\n".join(out)


def tiles_header() -> str:
    return TILES_CUH.read_text() + _wgmma_specialisations()

