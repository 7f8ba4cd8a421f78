"""Thread-block tiling of a contraction on a GPU-style target (the cuda backend's schedule).

The levels come from the target: its compute instruction's shape (mma 16x8x16, or a warp of
FFMA lanes), the scratchpad (`smem`: capacity bounds tile x stages), the cores (SMs: how many
blocks run at once) and the per-core load port.  Among a small family of block/warp tiles and
split-K factors, the model below picks the fewest predicted cycles:

    cycles = waves * (resident * max(compute, load) + fill)

per block: compute = BM*BN*Kc / MACs-per-cycle-per-core, load = (BM+BN)*Kc*bytes / port,
fragments = BM*BN*(1/WM + 1/WN)*Kc*bytes / smem bandwidth (every warp reads its A and B
fragments from shared memory, every FFMA thread its TM + TN operands: what makes 64x64 warp
tiles and 8x8 thread tiles win on large shapes);
``resident`` blocks share a core, ``waves`` = blocks / (cores * resident) rounded up, ``fill``
the pipeline's start and the epilogue.  Split-K (several blocks per output tile, adding their
partial sums atomically) exists for the small-N shapes whose few tiles would leave most cores
idle.  Measured on a GPU it is a heuristic, not a promise; `tiling=` overrides it.
"""
from __future__ import annotations

from dataclasses import dataclass

FILL_CYCLES = 1500  # pipeline fill, epilogue and launch share per wave (order of magnitude: DRAM latency x 2-3)
MAX_SPLITS = 16


@dataclass(frozen=True)
class GpuTiling:
    bm: int
    bn: int
    bk: int
    wm: int  # warp tile (tensor cores) or thread tile (tm) for FFMA
    wn: int
    stages: int
    splits: int = 1
    predicted: float = 0.0
    wgmma: bool = False  # Hopper warpgroup MMA: wm = 64 rows per warpgroup, wn = bn, bk = 64
    tma: bool = False  # with wgmma: warp-specialised, a producer warpgroup feeding the ring with TMA copies
    persistent: int = 0  # with tma: at most this many blocks, each taking every gridDim-th output tile (0: one each)

    @property
    def threads(self) -> int:
        if self.wgmma:
            return (self.bm // 64 + self.tma) * 128
        return (self.bm // self.wm) * (self.bn // self.wn) * (32 if self.tensor_cores else 1)

    @property
    def tensor_cores(self) -> bool:
        return self.wm % 16 == 0 and self.wn % 8 == 0 and self.bk % 16 == 0

    def smem_bytes(self, itemsize: int, a_kmajor: bool | None = None, b_kmajor: bool | None = None) -> int:
        """Shared memory of the block: a ring of padded A and B slabs (tiles.cuh's layout: rows
        along the operand's contiguous dimension, padded to an odd number of 16-byte units);
        unknown layouts: the larger."""
        if self.wgmma:  # swizzled slabs, no padding; + 1 KiB to align the first to the swizzle period
            return self.stages * (self.bm + self.bn) * self.bk * itemsize + 1024 + 256 * self.tma  # + mbarriers
        if not self.tensor_cores:
            return 2 * self.bk * (self.bm + self.bn) * 4

        def padded(cols: int) -> int:  # tiles.cuh's padded(): an odd number of 16-byte units a row
            return cols if (cols // 8) % 2 else cols + 8

        def slab(rows: int, kmajor: bool | None) -> int:
            km, other = rows * padded(self.bk), self.bk * padded(rows)
            return km if kmajor else other if kmajor is not None else max(km, other)
        return self.stages * (slab(self.bm, a_kmajor) + slab(self.bn, b_kmajor)) * itemsize

    def describe(self) -> str:
        kind = (f"a TMA producer warpgroup and {self.bm // 64} consumer warpgroups of wgmma m64n{self.bn}k16, "
                f"{self.stages}-stage mbarrier ring of 128-byte-swizzled slabs" if self.tma else
                f"warpgroup tiles 64x{self.bn} of wgmma m64n{self.bn}k16 on 128-byte-swizzled slabs, "
                f"{self.stages}-stage cp.async ring" if self.wgmma else
                f"warp tiles {self.wm}x{self.wn} of mma 16x8x16, {self.stages}-stage cp.async ring"
                if self.tensor_cores else f"thread tiles {self.wm}x{self.wn} FFMA, double-buffered")
        split = f", split-K x{self.splits} (atomic float adds)" if self.splits > 1 else ""
        split += f", persistent over at most {self.persistent} blocks" if self.persistent else ""
        return f"blocks {self.bm}x{self.bn}x{self.bk} ({self.threads} threads), {kind}{split}"


TC_SHAPES = [  # (bm, bn, wm, wn)
    (128, 128, 64, 64), (128, 64, 64, 32), (64, 128, 32, 64),
    (64, 64, 32, 32), (128, 32, 32, 32), (64, 32, 32, 16), (128, 16, 32, 16), (64, 16, 16, 16),
    (32, 32, 16, 16), (32, 16, 16, 16), (16, 16, 16, 16), (16, 8, 16, 8), (64, 8, 16, 8), (128, 8, 32, 8),
]
FMA_SHAPES = [(128, 128, 8, 8), (64, 64, 4, 4), (64, 32, 4, 4), (32, 64, 4, 4), (32, 32, 2, 2), (64, 16, 4, 2),
              (16, 64, 2, 4)]


def smem_capacity(t) -> int:
    """Shared memory one block may use on target ``t`` (its ``smem`` memory; 48 KiB without one)."""
    return next((x.capacity for x in t.memories if x.name == "smem"), 48 * 1024)


def choose(t, m: int, n: int, k: int, batch: int, itemsize: int, tensor_cores: bool, can_split: bool,
           macs_per_cycle: float) -> GpuTiling:
    """The predicted-fastest tiling of an (m x k) by (k x n) product, ``batch`` times."""
    cores = max(1, t.cores)
    mems = {x.name: x for x in t.memories}
    smem = mems.get("smem")
    cap = smem_capacity(t)
    port = max((i.port or 0) for i in t.copy_instrs) or 64.0
    smem_bw = smem.bandwidth if smem is not None and smem.bandwidth else 128.0
    l2_bw = mems["l2"].bandwidth if "l2" in mems and mems["l2"].bandwidth else cores * port
    main_bw = mems[t.main].bandwidth if t.main in mems and mems[t.main].bandwidth else l2_bw
    best = None
    shapes = TC_SHAPES if tensor_cores else FMA_SHAPES
    for bm, bn, wm, wn in shapes:
        for stages in ((3, 4) if tensor_cores else (2,)):
            bk = 32 if tensor_cores else 16
            tl = GpuTiling(bm, bn, bk, wm, wn, stages)
            need = tl.smem_bytes(itemsize)
            if need > cap or tl.threads > 1024:
                continue
            resident = max(1, min(cap // need, 2048 // tl.threads, 16))
            if not tensor_cores:  # an 8x8 FFMA thread tile holds 64 accumulators: registers bound residency
                # (a thread: its accumulators, one k-step's operands, ~24 for addresses and loops; the
                # tensor-core choices stay those measured on an H100 without this term, docs/cuda.md)
                regs = wm * wn + 2 * (wm + wn) + 24
                resident = max(1, min(resident, 65536 // (tl.threads * regs)))
            tiles = -(-m // bm) * -(-n // bn) * batch
            for splits in range(1, (MAX_SPLITS if can_split else 1) + 1):
                kc = -(-k // splits)
                kc = -(-kc // bk) * bk
                if splits > 1 and (kc < 4 * bk or (splits - 1) * kc >= k or tiles >= cores * resident):
                    break  # split-K only where the output tiles leave cores idle
                blocks = tiles * splits
                waves = -(-blocks // (cores * resident))
                per = max(bm * bn * kc / macs_per_cycle, (bm + bn) * kc * itemsize / port)  # padded tiles cost whole
                # every warp (mma) or thread (FFMA) reads its A and B fragments from shared memory
                per = max(per, bm * bn * (1 / wm + 1 / wn) * kc * itemsize / smem_bw)
                # split-K: every split adds its partial tile into C in L2 (read + write), after a zero fill
                atomics = (splits * m * n * batch * 8 / l2_bw + m * n * batch * 4 / main_bw) if splits > 1 else 0
                cycles = waves * (min(resident, -(-blocks // cores)) * per + FILL_CYCLES) + atomics
                key = (cycles, -bm * bn, stages)
                if best is None or key < best[0]:
                    best = (key, GpuTiling(bm, bn, bk, wm, wn, stages, splits, cycles))
    assert best is not None
    return best[1]


def choose_wgmma(t, m: int, n: int, k: int, batch: int, itemsize: int, widths, tma: bool = True) -> GpuTiling | None:
    """A warpgroup-MMA tiling, or None where the output tiles would leave SMs idle or the
    problem is smaller than one instruction (the mma.sync path, with split-K, does better).

    The first of 128 x widest N, 128 x narrower, 64 x ... (N among the target's instruction
    widths that ``n`` fills) with at least half as many tiles as SMs; BK = 64; as many ring
    stages as fit (at most 5, at least 3).  With ``tma`` (an unbatched product): the
    warp-specialised kernel, a producer warpgroup feeding the ring with bulk tensor copies, one
    block per SM walking the output tiles (the structure of the fastest published Hopper
    GEMMs); otherwise every thread copies with cp.async.  Not yet tuned on a GPU:
    scripts/gpu_check.py --sweep times the alternatives."""
    fits = [w for w in sorted(widths) if w % 64 == 0 and w <= max(n, 64)]
    if not fits or m < 64 or n < 64 or k < 64:
        return None
    cap = smem_capacity(t)
    shapes = sorted(((bm, bn) for bm in (128, 64) for bn in fits), key=lambda s: (s[0] < 128, -s[1]))
    for bm, bn in shapes:  # 128 x widest first: two consumer warpgroups, the most reuse per byte
        if bm > max(m, 64) or -(-m // bm) * -(-n // bn) * batch < max(1, t.cores) // 2:
            continue
        for stages in (5, 4, 3):
            tl = GpuTiling(bm, bn, 64, 64, bn, stages, 1, 0.0, True, tma, t.cores if tma else 0)
            if tl.smem_bytes(itemsize) <= cap:
                return tl
    return None
