"""Plans for the host CPU's contractions: which statements are GEMM-shaped on the target's
broadcast-FMA (or dot-product) instruction, their roles and strides (`Contraction`,
`recognise`), and the register and cache blocking chosen from the target's memories
(`Blocking.for_target`).  Plain data, no LLVM: a cached build decides its plans (they are
part of the cache key) without importing the code generator (`contraction.py`)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from math import gcd, prod

from ir.bind import Bound
from ir.dtypes import BFLOAT16, FLOAT32, INT8, INT16, INT32
from ir.expr import Access, Binary, Cast, Var
from ir.kernel import Kernel
from ir.target import Instruction, Target

from ..access import element_strides

def registers(t: Target, regmem: str, vl: int) -> int:
    """Vector registers in the register file ``regmem`` (its capacity over its row size)."""
    mem = t.memory(regmem)
    return mem.capacity // (mem.row_bytes or vl * 4)


def cache_levels(t: Target) -> list:
    """The target's caches, smallest first: memories other than main memory and the register
    file (the one memory with a row size)."""
    return sorted((x for x in t.memories if x.row_bytes is None and x.name != t.main), key=lambda x: x.capacity)


PACK_B_ROW_TILES = 16  # row tiles sharing each B panel from which packing B pays off
# a batch-invariant A up to this size (packed, per thread) is packed once per call (Contraction.prepacks_a):
# conv2d 32x512x9x9 * 512x3x3 (18.8 MB packed) 76.7 -> 34.5 ms against 4 MiB, torch 27.7, one process
PREPACK_BYTES = 32 << 20
TALL = 16  # a strided broadcast operand this many times longer than wide is turned round (_pick_orientation)
FEW_ROWS = 16  # rows one tile takes whole where B comes from memory (Blocking.for_target)
STRIDED_A_BYTES = 32 << 20  # an A(k, m) this big is packed (Blocking.for_target)
BIG_KC = 864  # longest K blocks of packed GEMMs on a big private L2 (Blocking.for_target)
BIG_L2 = 2 << 20  # a private L2 this big takes long in-place K blocks (Blocking.for_target)


@dataclass(frozen=True)
class Blocking:
    """Register and cache blocking: MR rows x NV vectors of VL lanes per micro-kernel call."""
    vl: int = 16
    mr: int = 14
    nv: int = 2
    kc: int = 256
    mc: int = 504
    nc: int = 4096
    pack_a: bool = False
    prefetch: int = 8  # k steps ahead that a strided A is prefetched (0: off)
    pack_b: bool = True
    split_k: bool = False  # threads take K ranges (partial sums added after) instead of N ranges
    stream: bool = False  # whole K blocks of a short M run as one loop over columns (B streamed in place)
    prefetch_c: bool = False  # each micro-kernel call prefetches its C tile before its k loop

    @property
    def nr(self) -> int:
        return self.nv * self.vl

    @staticmethod
    def for_target(t: Target, vl: int, regmem: str, m: int, n: int, k: int, threads: int,
                   a_contiguous: bool = True, b_contiguous: bool = True, a_row_stride: int = 0) -> "Blocking":
        """Default blocking from the target's register file and cache capacities.

        Registers: MR x NV accumulators beside NV vector loads and a broadcast; 2 vectors
        wide and 14 rows on 32 registers (6 x 2 on 16), fewer rows and more vectors when M
        is small (down to 1 x 16 for a GEMV-like M = 1).  Caches: one B micro-panel (KC x NR)
        fills L1 (two L1s when both operands are packed), the A block (MC x KC) half of L2,
        the B block (KC x NC) half of this thread's share of L3."""
        regs = registers(t, regmem, vl)
        vecs = -(-n // vl)
        nv = max(1, min(2, vecs))
        mr = max(1, min(14, (regs - nv - 1) // nv))
        prefetch = 8
        caches = cache_levels(t)
        l3 = caches[2].capacity if len(caches) > 2 else 0
        stream_kc = 0  # K block of a GEMV streaming B from main memory (0: K blocks fill L1)
        split_k = False
        if m < mr:  # short M: fewer rows, wider tiles
            mr = m
            nv = max(1, min(vecs, 8, (regs - 1) // (mr + 1)))
            if mr == 1:
                # a GEMV (a GRU step with batch 1): each B vector feeds one FMA, as a memory
                # operand, so 16 accumulators fit, and each k step reads a 1 KiB burst of a B
                # row that the hardware prefetcher follows; software prefetches would be one
                # instruction per line loaded.  Measured on a Zen 4 VM, 2 threads: the
                # 1024-hidden gru_step 181 -> ~145 us (8 vectors with prefetch -> 16 without)
                nv, prefetch = max(1, min(vecs, 16, regs // 2)), 0
            # batch 1-2 stream from a sixteenth of L3 on (2 MiB of B: hidden 725 up), the weights
            # still in cache: the threads' contiguous K halves outrun the 16 x 32 (or 2 x 128)
            # tiles' 32-64 row streams there now that the stream loop splits K (below).
            # Measured on a Zen 4 VM, 2 threads, both builds in one process, alternating
            # rounds, batch-1 gru_step: hidden 1024 132 -> 117 us, 134 -> 127, 165 -> 150;
            # 768 131 -> 116; batch 2, 1024: 186 -> 164; batch 4 (not taken) 204 -> 212; 512 even
            if l3 and (k * n * 4 > l3 // 4 or (mr <= 2 and k * n * 4 > l3 // 16)):
                # a B that comes from main memory (a quarter of the outer cache: the GRU
                # step's three recurrent matrices and the rest of the working set share it):
                # 8-16 rows of B at a time (`_stream_rows`), 2 vectors of each per tile (4
                # from 3 rows of A up), so each thread reads that many sequential streams in
                # short bursts (OpenBLAS's sgemv order); 32-64 rows of 0.5-1 KiB bursts were
                # more streams than the prefetchers follow.  Measured on a Zen 4 VM, 2
                # threads, the batch-1 gru_step against numpy's in the same run, 8 rows: hidden
                # 2816 5069 -> 3116 us (numpy 3054), 2048 3308 -> 1775 (1644), 1536 1904 ->
                # 903 (928); with the weights in cache (hidden 1024, 512) the 16 x 32 tiles
                # stay faster (152 vs 205 us, 44 vs 56).  Batch 2 and 4 (60 steps, with the
                # split K below): hidden 2816 260 -> 180 ms and 269 -> 167, 2048 x 4 146 -> 102
                # (numpy 426 for 2816 x 4).  The software prefetch stays for 2 rows up (2816 x
                # 4: 182 ms with it, 269 without); for one row it costs (268 -> 292)
                nv = max(1, min(vecs, 2 if mr <= 2 else 4, (regs - 1) // (mr + 1)))
                stream_kc = _stream_rows(caches[0] if caches else None, n * 4)
                if mr > 2:
                    # 3 rows of A up (4-vector tiles, 12-16 accumulators): 8 rows of B at a
                    # time, not 16.  Measured on a Zen 4 VM, 2 threads, gru_step builds of
                    # both in one process, 10-16 alternating rounds (a build identical to the
                    # default within 2%): batch 4, hidden 2816 3364 -> 2758 us, 2560 2736 ->
                    # 2160, 1536 585 -> 509; batch 3, 2816 2937 -> 2621; batch 8, 2816 5264 ->
                    # 3329 (4 rows 4185, 6 rows 3433).  Batch 1-2 keep 16 (2816 x 2: 1981 vs
                    # 2186 with 8; 1536 x 1: 414 vs 491)
                    stream_kc = min(stream_kc, 8)
                # and threads split K, not N: each streams one contiguous half of B rather
                # than both reading half of every row; the partial sums (one C each) are
                # added afterwards.  Measured in C on the same VM, 2 threads, three matrices
                # in turn, both splits interleaved over 300 calls: 2816^2 29.9 -> 39.9 GB/s
                # and 25.9 -> 28.2, 2048^2 30.3 -> 32.1, 1536^2 46.9 -> 54.8; batch-1 GRU
                # steps 314 -> 284 ms (2816), 112 -> 85 (2048)
                split_k = threads > 1
        elif m <= FEW_ROWS and l3 and k * n * 4 > l3 // 4 and m + 1 < regs:
            # a few rows more than a tile's over a B from memory (a tall TN GEMM turned round:
            # 16 rows of N, vectors along M): two row tiles two vectors wide, K blocks of 32
            # steps, the threads splitting K, each streaming its half of B once.  Measured on a
            # Sapphire-Rapids-class VM, 2 threads, builds in one process, ratio to numpy:
            # 1024x16x500000 TN 0.93 (8 x 3 tiles, K blocks of 256, N split) -> 1.87, 512x16x500000
            # 0.96 -> 1.24; one 16 x 1 tile 2.00 and 1.06, K blocks of 8 (the GEMV streams') and
            # of 128 slower
            mr, nv, stream_kc, split_k = -(-m // 2), min(2, vecs), 32, threads > 1
        else:  # rows per tile that leave little of the last tile empty (M = 32: 8 x 3, not 14 x 2 + 4)
            mr, nv = _row_tiles(m, vecs, regs, mr, nv)
        aliased = _rows_share_an_l1_set(caches, a_row_stride)
        l1 = caches[0].capacity if caches else 32 << 10
        l2 = caches[1].capacity if len(caches) > 1 else 16 * l1
        l3 = l3 or 8 * l2
        nr = nv * vl
        # A with a unit stride is read in place when few NR tiles reuse it: A(m, k) as MR
        # sequential streams, A(k, m) with software prefetch (each k step is a new line, soon a
        # new page, where the hardware prefetcher stops).  Packing costs a pass over A per NC
        # block: it pays off for wide B, and for an A with no unit stride (a gathered one)
        # wide B: each A panel serves many NR tiles; a gathered A (no unit stride) is packed once
        # two tiles share its panels, and read in place by one (a convolution's Wt(f, c, r, s) in
        # each tap's pass over 28 output columns: conv2d 8x64x30x30 * 128x3x3 7.7 -> 4.2 ms, 2
        # threads, builds of both in one process, alternating rounds); an A the batch loops share
        # is packed once per call instead (recognise, Contraction.prepacks_a)
        pack_a = (not a_contiguous and n > nr) or n > 4 * nr
        # A(k, m) (a TN GEMM) bigger than the cache it can stay in between calls: read in
        # place, each k step one line of a far-apart row, it comes from memory at a fraction
        # of the bandwidth; packed, it is read once along its rows.  Measured on a
        # Sapphire-Rapids-class VM (480 MiB L3 reported), 2 threads, builds of both in one
        # process, ratio to numpy in the same run: 7680x64x2560 (A 75 MiB) 0.69 -> 1.03,
        # 4096x64x4096 (64 MiB) 0.89 -> 1.27; below (2560x64x2560, 25 MiB: 1.26 -> 1.02,
        # 1760x64x1760 1.39 -> 1.16, 3072x16x1024 1.70 -> 0.67) in place is faster.  The
        # tiles and blocks stay those of an A read in place (set at the end): with the big
        # GEMMs' 6 x 4 tiles and long K blocks 7680x64x2560 ran at 0.80.  From two vectors of N
        # up: 6144x32x2048 0.85 -> 1.21, 4096x32x4096 1.05 -> 1.52 (same process), where one
        # vector was mixed (4096x16x4096 1.29 -> 1.75, but 6144x16x2048 1.64 -> 1.15)
        pack_tn = a_contiguous and not a_row_stride and m >= mr and m * k * 4 > STRIDED_A_BYTES and not pack_a \
            and vecs >= 2
        # aliased A rows are packed from four NR tiles up (a packed panel is one stream). Bench
        # harness on a Zen 4 VM, 2 threads, ratio to numpy in the same run: 4096x128x4096 0.83 ->
        # 0.99, 3072x128x1024 0.66 -> 0.96, but 2048x128x2048 0.93 -> 0.89 (its 16 MB A stays in
        # L3); with fewer NR tiles packing does not pay (N = 64 even, N = 32 slower)
        if aliased and n >= 4 * nr:
            pack_a = True
        if aliased and not pack_a and m >= mr > caches[0].ways - 1:
            # read in place: one stream fewer than the ways (B's panel keeps one). Measured, same
            # VM: 7 x 2 instead of 14 x 2 took 4096x64x4096 111 -> 195 GFLOP/s, 2048x64x2048
            # 105 -> 162, 4096x32x4096 135 -> 178; 7 x 1 for N = 16 4096^2 90 -> 120-144
            mr = caches[0].ways - 1
        # B is packed into NR-wide panels when many row tiles share them; with few (batch-sized
        # M: GRU/LSTM steps, M = 32..128) the pass over B costs more than the packed panels
        # save, and B is read in place with software prefetch (only a ragged last panel is
        # packed). Measured in one run, 2 threads: unpacked is 7-67% faster for M = 32, 35, 64
        # and 128 (N = 512..8457), packed 5-20% faster for M = 256, 512 and 1760 (N = 1500)
        pack_b = not b_contiguous or -(-m // mr) >= PACK_B_ROW_TILES
        if pack_a and pack_b and l2 >= BIG_L2 and vecs >= 4 and (regs - 5) // 4 >= 6:
            # both operands packed on a core with a big private L2: 6 x 4 vectors (24
            # accumulators; 10 loads per 24 FMAs against 14 x 2's 16 per 28), K blocks half as
            # long (the wider B micro-panel, L2-sized A blocks as before).  Measured on a
            # Sapphire-Rapids-class VM, 2 threads, builds of both in one process, 6 alternating
            # rounds, ratio to numpy (OpenBLAS) in the same run: 2048^3 0.99 -> 1.03, 1024x6000x2048
            # 0.92 -> 0.96, 3072x1500x2560 0.93 -> 0.95, 1024x1500x2560 0.90 -> 0.94, 4096^3
            # 0.79 -> 0.88, TN 2048x6000x1536 0.95 -> 1.03.  Not measured on smaller L2s (Zen 4),
            # which keep 14 x 2
            nv, mr = 4, (regs - 5) // 4
            nr = nv * vl
        # K blocks: a B micro-panel (KC x NR) fills L1; when both operands are packed (the
        # large, compute-bound GEMMs) twice that, streaming from L2.  What each K block costs
        # beyond its FMAs (every C tile read, added and written back once more, the
        # micro-kernel's set-up) halves; measured on a Zen 4 VM, ratio to OpenBLAS in the same
        # run, 1 thread: 1024x6000x2560 0.92-0.94 -> 0.97-1.00, 2048^3 0.99 -> 1.04 (kc 1024:
        # 1.06); 2 threads 7680x1500x2560 0.93 -> 1.00.  Narrow GEMMs (A read in place, or B
        # unpacked) were slower with it
        if not pack_b and not stream_kc and prefetch:
            # B read in place a K block at a time (batch-sized M): its rows fetched 16 k steps
            # ahead, not 8.  Measured on a Zen 4 VM, 2 threads, builds of both in one process,
            # 10 alternating rounds, gru_step at batch 32: hidden 2816 9873 -> 9330 us, 2048
            # 5531 -> 5041, 1536 2508 -> 2385, 1024 1137 -> 1100; 1024 x 64 even; GEMMs
            # 35x8457x2560 137.5 -> 144.0 GFLOP/s, 35x1500x2048 and 128x1500x1280 even.  The
            # stream loop (above) keeps 8: even there (2816 x 4: 2360 vs 2434 us)
            prefetch = 16
        panel = 2 * l1 if pack_a and pack_b else l1
        # the large GEMMs, both operands packed, C from memory: every K block reads, adds and
        # writes back all of C, each C tile's rows on other pages, and the micro-kernel loads
        # them only after its k loop.  Its tile is prefetched before the loop instead, and on a
        # big private L2 (6 x 4 vectors) K blocks are up to BIG_KC long (B's micro-panels stream
        # from L2): half as many passes over C.  Measured on a Sapphire-Rapids-class VM, 2
        # threads, builds of both in one process, alternating rounds, ratio to numpy (OpenBLAS)
        # in the same run: 2048x7000x2048 0.89 -> 0.98 (prefetch alone 0.89 -> 0.93),
        # 1760x7000x1760 0.91 -> 1.00, 5124x9124x2048 0.90 -> 0.96, 2560x7000x2560 0.89 ->
        # 0.96; 1024^3 (C stays in cache: no prefetch) even either way
        c_from_memory = pack_a and pack_b and m * n * 4 >= 4 * l2 * max(1, threads)
        if pack_a and pack_b and nv == 4 and l2 >= BIG_L2:
            panel = max(panel, BIG_KC * nr * 4)
        long_k = not pack_a and pack_b and not stream_kc and a_row_stride and l2 >= BIG_L2
        if long_k:
            # A(m, k) read in place beside packed B panels, on a core with a big private L2: K blocks
            # of an eighth of L2 per B panel (K whole up to 2048 for 32-wide panels) and an A
            # block of an eighth of L2, the panels streaming from L2.  Each micro-kernel call
            # then reads MR rows of A as K-block-long sequential runs (1-2 KiB runs at L1-sized
            # K blocks) and each C tile is read and written back a quarter as often.  Measured on
            # a Sapphire-Rapids-class VM (48 KiB L1, 2 MiB L2), 2 threads, alternating rounds
            # of both builds in one process: 1760x128x1760 332 -> 360 GFLOP/s, 2048x32x2048
            # 319 -> 360, 2560x64x2560 333 -> 367, 4096x64x4096 314 -> 361, 7680x64x2560 327
            # -> 371, 5124x16x2048 256 -> 279, 1760x16x1760 263 -> 274; with both operands
            # packed (1024^3, 2048^3) it was even or slower, B unpacked (35x1500x2048) 8% slower,
            # and A(k, m) in place (its K runs are rows, one line per k step) 3-7% slower.  On a
            # Zen 4 VM (1 MiB L2) twice the L1-sized K blocks were already slower for these GEMMs
            # (above), so smaller L2s keep them
            panel = l2 // 8
        kc = min(k, stream_kc) if stream_kc else max(16, min(k, panel // (nr * 4)))
        kc = -(-k // -(-k // kc))  # balanced K blocks
        mc = max(mr, ((l2 // (8 if long_k else 2)) // (kc * 4)) // mr * mr)
        mc = min(mc, -(-m // mr) * mr)
        share = l3 // max(1, threads) if any(x.shared for x in caches[2:3]) else l3
        nc = max(nr, min(-(-n // nr) * nr, ((share // 2) // (kc * 4)) // nr * nr))
        return Blocking(vl, mr, nv, kc, mc, nc, pack_a or pack_tn, prefetch, pack_b, split_k,
                        bool(stream_kc) and not pack_b, c_from_memory)


ROW_OFFSETS = 8  # rows a micro-kernel reads in place through their own offsets, at most (_by_rows)


def _by_rows(bl: Blocking, t: Target, m: int, n: int, k: int) -> Blocking:
    """The blocking of an A read in place through each row's offset (gathered rows, or k
    through the K table: ``_Emit.a_by_rows``): each of a tile's rows is a pointer the k loop
    keeps in a general register, so tiles of at most ROW_OFFSETS rows (6 x 4 vectors, 8 rows of
    narrower tiles; 14 rows spilled them: twice the time), and K blocks whose B panel fills a
    quarter of L2 (K whole up to 2048 for 64-wide panels on a 2 MiB L2: C, from memory at 58 x
    58, is passed over once).  Packed, the gather re-reads each input pixel R * S times and
    writes and reads back every element once more: measured on the 2-vCPU Xeon VM, 2 threads,
    builds of both in one process, NHWC conv2d packed -> in place: 8x64x30x30 * 128x3x3 2.75 ->
    2.48 ms, 8x128x58x58 * 128 24.0 -> 21.2 (20.5 with K whole), 16x256x16x16 * 256 10.8 ->
    10.2, 8x64x30x30 * 32 1.22 -> 0.65 (8 x 2; 6 x 2 0.73, 12 x 2 0.99)."""
    caches = cache_levels(t)
    l2 = caches[1].capacity if len(caches) > 1 else 1 << 20
    vecs = -(-n // bl.vl)
    nv = min(4, vecs)
    mr = max(1, min(m, 6 if nv == 4 else ROW_OFFSETS))
    nr = nv * bl.vl
    kc = max(16, min(k, (l2 // 4) // (nr * 4)))
    kc = -(-k // -(-k // kc))  # balanced K blocks
    mc = max(mr, (l2 // 2) // (kc * 4) // mr * mr)
    mc = min(mc, -(-m // mr) * mr)
    nc = max(nr, bl.nc // nr * nr)
    return replace(bl, mr=mr, nv=nv, kc=kc, mc=mc, nc=nc, pack_a=False, prefetch_c=False)


def _rows_share_an_l1_set(caches, row_stride: int) -> bool:
    """A's rows, read in place, lie a multiple of capacity / ways apart in L1 (4 KiB on an 8-way
    32 KiB L1: K = 1024, 2048, 4096 floats), so they all fall into one set: with more row
    streams than the set has ways they evict each other every k step."""
    way = caches[0].capacity // caches[0].ways if caches and caches[0].ways else 0
    return bool(way and row_stride and (row_stride * 4) % way == 0)


def _stream_rows(l1, row_bytes: int) -> int:
    """Rows of B a streaming GEMV reads at a time: 16, fewer where rows fall into the same L1
    set (rows ``period`` apart share one: a row a multiple of the way size long puts every row
    in one set), so no set holds more streams than it has ways.  Measured on a Zen 4 VM, 2
    threads, batch-1 GRU steps against numpy in the same run (8 -> 16 rows): hidden 1536 97
    -> 86 ms (numpy 105), 2816 231 -> 216 (262), 2560 241 -> 245 (249); hidden 2048 (8 KiB
    rows, one set, 8 ways) 111 -> 154 with 16 rows, 131 with 7, 8 best"""
    if l1 is None or not l1.ways:
        return 8
    way = l1.capacity // l1.ways
    period = way // gcd(row_bytes, way)
    return max(1, min(16, l1.ways * period))


def _row_tiles(m: int, vecs: int, regs: int, mr0: int, nv0: int) -> tuple[int, int]:
    """(MR, NV) for M rows: the least padding of the last row tile (within 2% of the best),
    then the most accumulators (at least 12, to cover the FMA latency), then the tallest."""
    options = []
    for mr in range(4, mr0 + 1):
        nv = max(1, min(vecs, 4, (regs - 1) // (mr + 1)))
        if mr * nv < 12 or mr * nv + nv + 1 > regs:
            continue
        waste = (-(-m // mr) * mr - m) / m
        options.append((waste, mr * nv, mr, nv))
    if not options:
        return mr0, nv0
    best = min(o[0] for o in options)
    _, _, mr, nv = max((o for o in options if o[0] <= best + 0.02), key=lambda o: (o[1], o[2]))
    return mr, nv


@dataclass(frozen=True)
class Contraction:
    """A statement recognised as a (batched) GEMM on the broadcast-FMA instruction."""
    stmt: int
    instr: str
    c: str  # output
    a: str  # broadcast (scalar) operand
    b: str  # vector operand
    batch: tuple[str, ...]
    row: str
    red: str
    vec: str
    dom: dict = field(default_factory=dict)  # var -> (lo, hi)
    strides: dict = field(default_factory=dict)  # tensor -> {var: stride}
    base: dict = field(default_factory=dict)  # tensor -> constant element offset
    init: bool = False
    blocking: Blocking = Blocking()
    form: str = "bcast"  # "bcast": broadcast-FMA micro-kernel; "dot": vectorised along the reduction
    epilogue: tuple[int, ...] = ()  # elementwise statements fused onto each finished output tile
    # reduction variables besides K, iterated outside the micro-kernel like batch loops but
    # accumulating into the same C (a convolution's filter taps: O += I(h + r, w + s) * Wt(r, s))
    taps: tuple[str, ...] = ()
    # padded rows (``_pad_rows``): the vector variable is a convolution's output rows and columns
    # run together along B's rows, (h, w, B's row length, C's rows, C's row length, C's stride
    # along the row variable); C's tiles go to a scratch C, compacted into C after the last tap
    pad: tuple = ()
    # rows run together with no padding (``_fuse_rows``): (h, w, C's rows, C's row length)
    merged: tuple = ()
    # every batch's output pixels as one vector variable (``_im2col``): (n, h, w, batches, C's
    # rows, C's row length, B's strides along n, h, w, C's along n and the row variable); B is
    # packed through the pixel's address, C's tiles go to a scratch C compacted after the last tap
    im2col: tuple = ()
    # the taps folded into K (``_fold_taps``): (the reduction variables, outermost first, their
    # extents, the strides along them of the operand the K table addresses, that operand); K
    # runs over all of them, that operand's row k at k's offset (``_Emit.k_table``: B read in
    # place or packed through it, A packed through it)
    kfold: tuple = ()
    # output rows run as one row variable (``_gather_rows``): (the variables, outermost first,
    # their extents, A's strides along them, C's); A's rows are read or packed through each
    # row's address unless A holds them one after another, and so are C's (a C stored element
    # by element, its vector strided)
    rows: tuple = ()
    # form "group": the instruction sums GROUP consecutive steps of K per lane (an integer dot
    # product: int8 or int16 operands as pairs of int16 into int32 lanes); the micro-kernel's k
    # loop runs over groups, the operands packed as words of GROUP elements (the last padded with
    # zeros).  ``dtypes``: A's, B's and C's element types (the pointers the code reads through)
    group: int = 1
    dtypes: tuple = ()
    # form "tile": the instruction multiplies 2-D tiles (AMX): (its rows, columns, and 32-bit
    # words of GROUP elements along K); the micro-kernel is a 2 x 2 block of them, K padded with
    # zero words to whole tiles
    tile: tuple = ()

    def extent(self, v: str) -> int:
        lo, hi = self.dom[v]
        return hi - lo

    def k_steps(self) -> tuple[int, int]:
        """The micro-kernel's k loop range: K's, or (form "group") its groups, counted from 0."""
        lo, hi = self.dom[self.red]
        if self.group == 1:
            return lo, hi
        steps = -(-(hi - lo) // self.group)
        return 0, (-(-steps // self.tile[2]) * self.tile[2] if self.tile else steps)

    def describe(self) -> str:
        bl = self.blocking
        if self.form == "dot":
            return (f"S{self.stmt}: {self.c} on {self.instr} (dot products along {self.red}, {bl.vl} lanes, summed "
                    f"across lanes at the end): {bl.mr} rows x all {self.extent(self.vec)} columns of {self.vec} per "
                    f"tile with {bl.mr * self.extent(self.vec)} accumulator registers; K blocks of {bl.kc}; "
                    f"{self.b} packed transposed per K block; {self.a} read in place"
                    + (f"; batch loops {', '.join(self.batch)}" if self.batch else "") + self._fused())
        if self.tile:
            rows, cols, words = self.tile
            head = (f"S{self.stmt}: {self.c} on {self.instr} ({rows} x {cols} tiles of {self.row} x {self.vec}, "
                    f"{words} words of {self.group} steps of {self.red} each): micro-kernel {bl.mr} x {bl.nr} "
                    f"({TILES} x {TILES} tiles in tile registers, {self.red} padded to whole tiles)")
        else:
            head = (f"S{self.stmt}: {self.c} on {self.instr} (vectorised along {self.vec}, {bl.vl} lanes"
                    + (f", each summing {self.group} steps of {self.red}: KC counts groups" if self.group > 1 else "")
                    + f"): micro-kernel {bl.mr} x {bl.nr} ({self.row} x {self.vec}) with {bl.mr * bl.nv} accumulator "
                    "registers")
        return (head + f"; blocks KC={bl.kc} ({self.red}), MC={bl.mc} ({self.row}), NC={bl.nc} ({self.vec}); "
                + (f"{self.b} packed into {bl.nr}-wide panels; " if bl.pack_b else "")
                + (f"{self.a} packed into {bl.mr}-tall panels" if bl.pack_a else f"{self.a} read in place")
                + (" once per call for every batch iteration" if self.prepacks_a() else "")
                + ("" if bl.pack_b else f"; {self.b} read in place")
                + (f"; batch loops {', '.join(self.batch)}" if self.batch else "")
                + (f"; taps {', '.join(self.taps)} (each a pass accumulating into C)" if self.taps else "")
                + (f"; output rows {self.pad[0]} run on in {self.b}'s rows of {self.pad[2]} (C's {self.pad[4]} columns "
                   f"and {self.pad[2] - self.pad[4]} of overlap each, compacted after the last tap)" if self.pad else "")
                + (f"; output rows {self.merged[0]} run together (one after another in every operand)"
                   if self.merged else "")
                + (f"; every {self.im2col[0]}'s output pixels as one vector ({self.b} packed through each "
                   f"pixel's address, C compacted after the last tap)" if self.im2col else "")
                + (f"; output rows {', '.join(self.rows[0])} run together as {self.row}"
                   + (f" ({self.a} {'packed' if bl.pack_a else 'read'} through each row's address)"
                      if self.gathers_a() else "") if self.rows else "")
                + (f"; taps folded into K = {self.red} ({self.kfold[3]} {'read' if self.reads_in_place(self.kfold[3]) else 'packed'}"
                   " through each k's offset)" if self.kfold else "")
                + (f"; {self.red} split across threads, partial sums added after" if bl.split_k else "")
                + (f"; each whole K block one pass along {self.vec} (B streamed)" if self.streams() else "")
                + ("; C tiles prefetched" if bl.prefetch_c else "")
                + self._fused())

    def streams(self) -> bool:
        """Whether whole K blocks of whole row tiles run as the stream loop (contraction.py,
        ``_Emit.stream``): B read in place, nothing packed per tile."""
        bl = self.blocking
        return (bl.stream and not bl.pack_b and self.form != "dot" and not self.taps and not self.kfold  # taps: passes
                and self.strides[self.c][self.vec] == 1)  # a strided C goes element by element

    def _fused(self) -> str:
        return f"; fused epilogue: {', '.join(f'S{j}' for j in self.epilogue)}" if self.epilogue else ""

    def with_blocking(self, **changes) -> "Contraction":
        """This contraction with some blocking parameters changed (tuning, tests); a B without
        unit stride along the vector variable stays packed, as vector loads need one."""
        bl = replace(self.blocking, **changes)
        if self.form in ("group", "tile"):  # both operands packed as words of GROUP elements; no stream loop
            bl = replace(bl, pack_a=True, pack_b=True, stream=False, split_k=False)
        if self.form == "tile":  # TILES x TILES tiles; K blocks of whole tiles, M and N blocks of whole tile blocks
            rows, cols, words = self.tile
            mr, nr = TILES * rows, TILES * cols
            bl = replace(bl, vl=cols, mr=mr, nv=TILES, kc=max(words, -(-bl.kc // words) * words), prefetch=0,
                         mc=max(mr, bl.mc // mr * mr), nc=max(nr, bl.nc // nr * nr))
        if self.strides[self.b][self.vec] != 1:
            bl = replace(bl, pack_b=True)
        if bl.split_k and not self.splits_k():
            bl = replace(bl, split_k=False)
        return replace(self, blocking=bl)

    def splits_k(self) -> bool:
        """Whether K may be split across threads: the broadcast form with no batch loops and an
        output whose offsets over the domain are non-negative (each partial sum is a private copy of C's span)."""
        return (self.form == "bcast" and not self.batch and not self.taps and self.base[self.c] >= 0 and not self.gathers_c()
                and all(self.strides[self.c][v] >= 0 and self.dom[v][0] >= 0 for v in (self.row, self.vec)))

    def tap_points(self) -> int:
        """Points of the taps (the passes over C per batch iteration; 1 without taps)."""
        return prod(self.extent(v) for v in self.taps)

    def prepacks_a(self) -> bool:
        """Whether each call packs A once for all its batch iterations (per tap, over its rows
        and K range) instead of once per batch iteration: A does not vary along the batch loops
        (a convolution's filter over n and h, a shared weight), and all of it fits PREPACK_BYTES.
        An im2col plan has no batch loop but passes over its filter once per column block."""
        bl = self.blocking
        if not bl.pack_a or self.form != "bcast" or any(self.strides[self.a][v] for v in self.batch):
            return False
        reused = prod(self.extent(v) for v in self.batch) > 1 or bool(self.im2col)
        return reused and self.prepack_floats() * 4 <= PREPACK_BYTES

    def prepack_floats(self) -> int:
        """Floats of a whole packed A: every tap's, its rows in MC blocks of MR-padded panels."""
        bl = self.blocking
        mcp = -(-bl.mc // bl.mr) * bl.mr
        return self.tap_points() * -(-self.extent(self.row) // bl.mc) * mcp * self.extent(self.red)

    @property
    def out_dom(self) -> dict:
        """The statement's domain as the kernel states it (a padded or merged plan's h and w restored)."""
        dom = self.dom
        if self.kfold:
            names, extents = self.kfold[:2]
            dom = {**{v: r for v, r in dom.items() if v != self.red}, **{v: (0, e) for v, e in zip(names, extents)}}
        if self.rows:
            names, extents = self.rows[:2]
            dom = {**{v: r for v, r in dom.items() if v != self.row}, **{v: (0, e) for v, e in zip(names, extents)}}
        if self.im2col:
            n, h, w, batches, rows, cols = self.im2col[:6]
            return {**{v: r for v, r in dom.items() if v != self.vec}, n: (0, batches), h: (0, rows), w: (0, cols)}
        if self.pad:
            h, w, _, rows, cols, _ = self.pad
        elif self.merged:
            h, w, rows, cols = self.merged
        else:
            return dom
        return {**{v: r for v, r in dom.items() if v != self.vec}, h: (0, rows), w: (0, cols)}

    def reads_in_place(self, operand: str) -> bool:
        """Whether the micro-kernel reads ``operand`` (A or B) where it lies, not packed."""
        return not (self.blocking.pack_a if operand == self.a else self.blocking.pack_b)

    def tables(self, operand: str) -> bool:
        """Whether the K table (the taps folded into K) addresses ``operand``'s rows along k."""
        return bool(self.kfold) and self.kfold[3] == operand

    def addresses_a(self) -> bool:
        """Whether A is addressed through each row's offset or the K table (gathered rows, or
        taps folded into K through A's table): read in place by rows (``_by_rows``) or packed."""
        return self.gathers_a() or self.tables(self.a)

    def gathers_a(self) -> bool:
        """Whether A's rows are read or packed through each row's address (``rows`` that A does
        not hold one after another: an NHWC convolution's pixels, W apart in I's rows but Wo in O's)."""
        return bool(self.rows) and not _one_after_another(self.rows[1], self.rows[2])

    def gathers_c(self) -> bool:
        """Whether C's rows are stored through each row's address (``rows`` that C does not hold
        one after another: an NCHW convolution's pixels over n, h, w vectorised along f)."""
        return bool(self.rows) and not _one_after_another(self.rows[1], self.rows[3])

    def scratch_floats(self) -> int:
        """Floats of a padded or im2col plan's scratch C: every row of C, each its columns."""
        return self.extent(self.row) * self.strides[self.c][self.row] if self.scratch_c else 0

    @property
    def scratch_c(self) -> bool:
        """Whether C's tiles go to a scratch C, compacted into C after the last tap."""
        return bool(self.pad or self.im2col)

    def c_span(self) -> int:
        """Elements from C's start to one past the last element the domain writes."""
        return self.base[self.c] + sum((self.dom[v][1] - 1) * self.strides[self.c][v] for v in (self.row, self.vec)) + 1

    def flops(self) -> int:
        """The statement's FLOPs (a padded plan computes more: ``pad``)."""
        return 2 * prod(hi - lo for lo, hi in self.out_dom.values())


def broadcast_fma(instr: Instruction) -> tuple[str, str, str, int] | None:
    """(scalar operand, vector operand, output, lanes) if the instruction's body is
    ``C(j) += A * B(j)`` in either operand order; None otherwise."""
    body = instr.body
    if len(body.stmts) != 1 or len(instr.outputs) != 1:
        return None
    s = body.stmts[0]
    if s.op != "+" or len(s.indices) != 1 or not isinstance(s.rhs, Binary) or s.rhs.op != "*":
        return None
    j = s.indices[0]
    x, y = s.rhs.a, s.rhs.b
    if not (isinstance(x, Access) and isinstance(y, Access)):
        return None
    for sc, ve in ((x, y), (y, x)):
        if not sc.indices and len(ve.indices) == 1 and isinstance(ve.indices[0], Var) and ve.indices[0].name == j:
            out = instr.outputs[0]
            if out.dtype != FLOAT32 or len(out.shape) != 1:
                return None
            return sc.tensor, ve.tensor, s.tensor, out.shape[0]
    return None


def grouped_dot(instr: Instruction) -> tuple[str, str, str, int, str, int] | None:
    """(scalar operand, vector operand, output, lanes, group variable, group size) if the
    instruction's body is ``C(j) += int32(A(g)) * int32(B(g, j))`` (either operand order, B(j,
    g) too) with an int32 output vector: each lane sums GROUP products of consecutive
    reduction steps, A's group broadcast to every lane (vpdpbusd on four bytes, vpdpwssd on
    pairs of int16)."""
    found = _product(instr, 1, (INT32,))
    if found is None:
        return None
    s, out, x, y = found
    j = s.indices[0]
    for sc, ve in ((x, y), (y, x)):
        if len(sc.indices) != 1 or not isinstance(sc.indices[0], Var) or len(ve.indices) != 2:
            continue
        g = sc.indices[0].name
        if not all(isinstance(e, Var) for e in ve.indices) or {e.name for e in ve.indices} != {g, j}:
            continue
        size = instr.operand(sc.tensor).shape[0]
        return sc.tensor, ve.tensor, s.tensor, out.shape[0], g, size
    return None


def _product(instr: Instruction, dims: int, types) -> tuple | None:
    """(statement, output operand, its two factors without their widening casts) of an
    instruction whose body is one ``+=`` of a product of two accesses into a ``dims``-D output
    of one of ``types`` (a grouped dot product's or a tile multiply's)."""
    body = instr.body
    if len(body.stmts) != 1 or len(instr.outputs) != 1:
        return None
    s, out = body.stmts[0], instr.outputs[0]
    if (s.op != "+" or len(s.indices) != dims or not isinstance(s.rhs, Binary) or s.rhs.op != "*"
            or out.dtype not in types or len(out.shape) != dims):
        return None
    x, y = (_uncast(e, out.dtype, GROUPED[out.dtype]) for e in (s.rhs.a, s.rhs.b))
    if not (isinstance(x, Access) and isinstance(y, Access)):
        return None
    return s, out, x, y


GROUPED = {INT32: (INT8, INT16), FLOAT32: (BFLOAT16,)}  # a grouped or tiled product's output -> its operands' types


def tile_mm(instr: Instruction) -> tuple[str, str, str, str, str, str, int] | None:
    """(A, B, C, i, j, k, elements per 32-bit word) if the instruction's body is a tile matrix
    multiply ``C(i, j) += int32(A(i, k)) * int32(B(k, j))`` on int8 operands (or ``float(..)``
    on bfloat16 ones into float32): AMX's tdpbssd and tdpbf16ps, whose B tile holds the k
    steps of each 32-bit word side by side (the backend packs B so)."""
    found = _product(instr, 2, GROUPED)
    if found is None:
        return None
    s, out, x, y = found
    i, j = s.indices
    if len(x.indices) != 2 or len(y.indices) != 2:
        return None
    if not all(isinstance(e, Var) for e in x.indices + y.indices):
        return None
    (ai, ak), (bk, bj) = (e.name for e in x.indices), (e.name for e in y.indices)
    if ai != i or bj != j or ak != bk or ak in (i, j):
        return None
    bits = instr.operand(x.tensor).dtype.bits
    if bits not in (8, 16) or instr.operand(y.tensor).dtype.bits != bits:
        return None
    return x.tensor, y.tensor, s.tensor, i, j, ak, 32 // bits


def _typed(k: Kernel, p: Contraction, form: str, group: int, **more) -> Contraction:
    """``p`` as a grouped or tile plan, with its operands' element types (what the code reads through)."""
    return replace(p, form=form, group=group, dtypes=tuple(k.tensor(n).dtype.name for n in (p.a, p.b, p.c)), **more)


def _uncast(e, to, sources):
    """``e`` without a widening cast to ``to`` from one of the ``sources`` types."""
    while isinstance(e, Cast) and e.to in (e.x.dtype, to) and e.x.dtype in sources:
        e = e.x
    return e


def recognise(k: Kernel, b: Bound, t: Target, si: int, mappings, threads: int) -> Contraction | None:
    """The statement as a Contraction when a legal broadcast-FMA mapping covers it and every
    operand is a float32 tensor indexed by plain variables; None sends it to the scalar path."""
    s = k.stmts[si]
    if s.op != "+" or not isinstance(s.rhs, Binary) or s.rhs.op != "*" or s.exists:
        return None
    plans = []
    for m in mappings:
        if m.statement != si or not m.legal or len(m.steps) != 1:
            continue
        step = m.steps[0]
        if step.pitch():  # pixels at an input's pitch: this backend pads rows its own way (_pad_rows)
            continue
        instr = t.instr(step.instruction)
        roles, grouped, tiled = broadcast_fma(instr), grouped_dot(instr), tile_mm(instr)
        if roles is None and grouped is None and tiled is None:
            continue
        if tiled is not None:
            sa, sb, sc, ti, tj, tk, g = tiled
            vl = instr.outputs[0].shape[1]  # (a tile's columns: the "lanes" of the orientation rules)
        else:
            sa, sb, sc, vl = roles or grouped[:4]
        ops = dict(step.operands)
        f = step.fused()
        jv = f.get(tiled[4] if tiled else s_j(instr), ())
        if len(jv) != 1:
            continue
        vec = jv[0]
        names = {ops.get(sa), ops.get(sb), ops.get(sc)}
        if None in names:
            continue
        if tiled is not None:  # rows, columns and K as the tile's i, j and k
            iv, kv = f.get(ti, ()), f.get(tk, ())
            plan = (_classify(k, b, si, ops[sa], ops[sb], ops[sc], vec, red=kv[0], out=instr.outputs[0].dtype)
                    if len(kv) == 1 and len(iv) == 1 else None)
            rows, cols = instr.outputs[0].shape
            words = instr.operand(sa).shape[1] // g
            if plan is not None and plan.row == iv[0]:  # (a convolution as one GEMM first: its taps in K)
                plan = _gather_rows(plan) or plan
                plan = _fold_taps(plan) or plan
                plan = plan if _tiles_pay(plan, k.tensor(plan.a).dtype, cols, words * g) else None
            else:
                plan = None
            plan = plan and _typed(k, plan, "tile", g, tile=(rows, cols, words))
        elif grouped is None:
            plan = _classify(k, b, si, ops[sa], ops[sb], ops[sc], vec)
        else:  # K is the variable the instruction's groups run along
            kv = f.get(grouped[4], ())
            plan = (_classify(k, b, si, ops[sa], ops[sb], ops[sc], vec, red=kv[0], out=instr.outputs[0].dtype)
                    if len(kv) == 1 else None)
            plan = plan and _typed(k, plan, "group", grouped[5])
        if plan is not None:
            plans.append((plan, instr, vl))
    if not plans:
        return None
    # (integer plans along any reduction the groups may run along: the longest first)
    plans.sort(key=lambda x: (-x[0].extent(x[0].red), x[0].form != "tile", -x[0].group))  # (more steps per instruction first)
    plan, instr, vl = _pick_orientation(plans)
    plan = _shaped(plan, vl)
    if _short_rows(plan, vl):
        plan, instr, vl = next(((q, i, v) for q, i, v in ((_shaped(x, v), i, v) for x, i, v in plans)
                                if _one_gemm(q, v)), (plan, instr, vl))
    sc = (broadcast_fma(instr) or grouped_dot(instr) or tile_mm(instr))[2]
    rows, cols = plan.extent(plan.row), plan.extent(plan.vec)
    red = plan.k_steps()[1] - plan.k_steps()[0]
    # (an A through its rows' offsets or the K table is blocked as one without a unit stride,
    # then as read in place by rows, below)
    a_contig = 1 in (plan.strides[plan.a][plan.row], plan.strides[plan.a][plan.red]) and not plan.addresses_a()
    b_contig = plan.strides[plan.b][plan.vec] == 1
    a_rows = plan.strides[plan.a][plan.row] if plan.strides[plan.a][plan.red] == 1 else 0
    if plan.form == "tile":
        return replace(plan, instr=instr.name, blocking=_tile_blocking(t, instr, plan, threads)).with_blocking()
    bl = Blocking.for_target(t, vl, instr.operand(sc).memory, rows, cols, red, threads, a_contig, b_contig,
                             a_rows)
    if plan.addresses_a() and plan.form == "bcast":
        # runs along k read in place through each row's address; A(k, m, ..) (a line per k step
        # and row) packed
        bl = _by_rows(bl, t, rows, cols, red) if plan.strides[plan.a][plan.red] == 1 else replace(bl, pack_a=True)
    if plan.scratch_c:
        # every tap passes over a column block's scratch C: blocks of it that stay in L2 (a
        # quarter), not all of a batch's output rows at once (128 x 3246 floats at 56 x 56)
        caches = cache_levels(t)
        l2 = caches[1].capacity if len(caches) > 1 else 1 << 20
        bl = replace(bl, nc=max(bl.nr, min(bl.nc, (l2 // 4) // (4 * rows) // bl.nr * bl.nr)))
    plan = replace(plan, instr=instr.name, blocking=bl).with_blocking()  # (split K only where allowed)
    if not plan.blocking.pack_a:
        # an A the batch loops share is packed once per call (prepacks_a), which pays even where
        # packing per batch iteration did not.  Builds of both in alternating processes, 2
        # threads, ratio to torch.conv2d in the same run: conv2d 8x64x30x30 * 128x64x3x3 0.69 ->
        # 0.86, pointwise 8x64x28x28 * 128x64 0.52 -> 0.44 ms (torch 0.55)
        packed = plan.with_blocking(pack_a=True)
        if packed.prepacks_a():
            plan = packed
    return plan if plan.taps or plan.kfold or plan.form != "bcast" else _as_dot(plan, t, mappings) or plan


def _tiles_pay(p: Contraction, a_type, cols: int, depth: int) -> bool:
    """Whether a product runs on tiles (``cols`` columns and ``depth`` steps of K each) rather
    than on vectors: it has no taps (a convolution's are folded into K first: ``_fold_taps``),
    a K of at least one tile, channels that fill whole tiles where the taps are folded (A is
    then packed a tile row at a time from each tap's run of channels; otherwise element by
    element), C's rows one after another, and (bfloat16) more than one tile of columns.  Taps
    are passes over C, each as deep as a convolution's channels, and a tile's C costs a load
    and a store per call where a vector micro-kernel's accumulators are registers:
    conv2d_nhwc_i8 8x64x30x30 * 128x3x3 1.81 ms on tiles with the taps as passes, 1.12 on
    vdot4_i8, 0.30 on tiles folded (0.63 on vdot4_i8 folded); with 20 channels 0.58 on tiles,
    0.27 on vdot4_i8.  A shallower K is padded with zeros to a whole tile: M=1024 N=512, int8
    K 32 0.052 ms on tiles against 0.036 on vdot4_i8, K 64 0.043 / 0.060; bfloat16 K 8 0.098 /
    0.046 (FMA), K 32 0.059 / 0.118 (Sapphire-Rapids-class VM, 2 threads)."""
    return (not p.taps and not p.gathers_c() and p.extent(p.red) >= depth
            and (not p.kfold or p.kfold[1][-1] % depth == 0)
            and not _one_tile_of_bfloat16(a_type, p.extent(p.vec), cols))


def _one_tile_of_bfloat16(a_type, columns: int, cols: int) -> bool:
    """Whether a bfloat16 product has at most one tile of columns, which it leaves to the FMA
    micro-kernel: this backend holds bfloat16 tensors as float32, so packing A for the tiles
    reads twice the bytes the tiles then load and writes them once more, which the columns of
    one tile do not repay, while the FMA micro-kernel reads A in place.  Measured on the
    Sapphire-Rapids-class VM, 2 threads, tiles against FMA: 1760x16x1760 0.41 / 0.37 ms,
    5124x16x2048 1.86 / 1.27, 512x8x500 0.037 / 0.030 (dot form); from 32 columns the tiles
    win (2048x32x2048 0.61 / 0.76, 2560x64x2560 1.15 / 2.41).  int8 keeps the tiles there too
    (1760x16x1760 0.19 / 0.20 on vdot4_i8, 5124x16x2048 0.48 / 0.57): it packs either way."""
    return a_type == BFLOAT16 and columns <= cols


TILES = 2  # a tile plan's micro-kernel: TILES x TILES tiles of C (with TILES of A and of B: 8 tile registers)


def _tile_blocking(t: Target, instr: Instruction, p: Contraction, threads: int) -> Blocking:
    """A tile plan's blocks: 2 x 2 tiles of C (4 of the 8 tile registers, 2 of A and 2 of B for
    each K step); K blocks whose A and B panels (MR and NR rows of KC words) fill two thirds of
    L1; A blocks of two panels, which stay in L1 while the B panels stream past them; a B block
    in half of this thread's share of L3.  Measured on the Sapphire-Rapids-class VM (48 KiB
    L1), 2 threads, against the first blocking (KC 96, MC in half of L2): KC 128 words and MC
    64 rows took bfloat16 2048^3 14.6 -> 8.97 ms (torch's, oneDNN on AMX, 8.0), 512^3 0.212 ->
    0.171, int8 2048^3 6.81 -> 4.00, 5124x16x2048 0.617 -> 0.529; each of KC 64-256, MC
    64-256 was slower on most of 2048^3, 512^3, 1760x128x1760, 5124x16x2048, 2560x64x2560."""
    rows, cols, words = p.tile
    mr, nr = TILES * rows, TILES * cols
    caches = cache_levels(t)
    cap = [c.capacity for c in caches] + [1 << 20] * (3 - len(caches))
    steps = p.k_steps()[1]
    kc = min(steps, max(words, (cap[0] * 2 // 3) // (4 * (mr + nr)) // words * words))
    mc = 2 * mr
    nc = max(nr, min(-(-p.extent(p.vec) // nr) * nr, (cap[2] // (2 * max(1, threads))) // (4 * kc) // nr * nr))
    return Blocking(vl=cols, mr=mr, nv=TILES, kc=kc, mc=mc, nc=nc, pack_a=True, prefetch=0, pack_b=True)


def _with_var(p: Contraction, gone: tuple[str, ...], v: str, extent: int, strides: dict[str, dict[str, int]],
              **changes) -> Contraction:
    """``p`` with the variables ``gone`` replaced by one variable ``v`` over [0, extent): the
    domain and every operand's strides lose them, and ``strides`` gives each operand's stride
    along ``v`` (and any stride it changes besides); dicts stay sorted, so cache keys are stable."""
    dom = {x: r for x, r in p.dom.items() if x not in gone}
    dom[v] = (0, extent)
    new = {}
    for name in (p.a, p.b, p.c):
        st = {x: y for x, y in p.strides[name].items() if x not in gone}
        st.update(strides[name])
        new[name] = dict(sorted(st.items()))
    return replace(p, dom=dict(sorted(dom.items())), strides=new, **changes)


def _fuse_rows(p: Contraction, nr: int) -> Contraction | None:
    """Output rows that every operand holds one after another (a pointwise convolution's
    ``O(n, f, h, w) +=! I(n, c, h, w) * Wt(f, c)``: h steps each tensor by w's extent times
    its w stride) run together as one vector variable over h * Wo points, the batch loop over
    h gone, where rows of Wo columns would leave part of their last tile empty (28 of 32 at
    28 x 28): nothing is computed twice, nothing is compacted.  The mapping pass offers such
    fused runs (its ``(h,w)`` binding), which this backend does not take as they come.  Not
    where h is the only batch loop: a plan with none may take a fused epilogue, whose tile
    function runs over the kernel's own variables."""
    if p.form != "bcast" or p.vec in p.taps or len(p.batch) < 2:
        return None
    w = p.vec
    wo = p.extent(w)
    if wo % nr == 0 or p.dom[w][0]:
        return None
    for h in p.batch:
        if p.dom[h][0] or p.strides[p.a][h] or p.strides[p.a][w]:
            continue
        if all(p.strides[t][h] == wo * p.strides[t][w] for t in (p.b, p.c)) and p.strides[p.c][w] == 1:
            break
    else:
        return None
    v = f"({h},{w})"
    return _with_var(p, (h, w), v, p.extent(h) * wo, {t: {v: p.strides[t][w]} for t in (p.a, p.b, p.c)},
                     vec=v, batch=tuple(x for x in p.batch if x != h), merged=(h, w, p.extent(h), wo))


def _gather_rows(p: Contraction) -> Contraction | None:
    """Output rows that C holds one after another (an NHWC convolution's pixels: ``O(n, h, w, f)
    +=! I(n, h + r, w + s, c) * Wt(r, s, c, f)`` vectorised along f, rows n, h, w each Wo * F,
    F apart) run as one row variable j over all of them, so the convolution is one GEMM of N *
    Ho * Wo rows instead of N * Ho GEMMs of Wo rows (or N * Ho * Wo of N rows) with the filter
    re-read for each.  A does not hold them one after another (I's rows are W long, C's Wo), so
    A is read (or packed) through each row's address, and nothing is computed twice (padded
    rows would compute W / Wo times the work: 16 / 14 at 16 x 16, squared with the h rows).
    Taken where B does not vary along them (C's rows share its panels) and they start at 0;
    where A holds them one after another too, it is read as before, with one stride.  Where C's
    vector is strided (stored element by element anyway), all of them run together, C's rows
    stored through their addresses too (``gathers_c``)."""
    if p.form == "dot" or p.im2col or p.pad or p.merged:
        return None
    sa, sb, sc = p.strides[p.a], p.strides[p.b], p.strides[p.c]
    cand = sorted((v for v in (p.row, *p.batch) if not sb[v] and sa[v] and sc[v] and not p.dom[v][0]),
                  key=lambda v: -sc[v])
    # the longest run that C holds one after another, from its innermost row variable out
    order = cand[-1:]
    for v in cand[-2::-1]:
        if sc[v] != sc[order[0]] * p.extent(order[0]):
            break
        order.insert(0, v)
    if sc[p.vec] != 1:  # C stored element by element: all of them, C's rows through their addresses too
        order = cand
    if len(order) < 2 or (sc[order[-1]] == 1 and sc[p.vec] == 1) or prod(p.extent(x) for x in order) <= p.extent(p.row):
        return None
    inner = order[-1]
    v = "(" + ",".join(order) + ")"
    # A's and C's stride along j: the innermost row's (A's is exact where it holds them one after another);
    # a row variable outside the run becomes a batch loop
    return _with_var(p, tuple(order), v, prod(p.extent(x) for x in order),
                     {p.a: {v: sa[inner]}, p.b: {v: 0}, p.c: {v: sc[inner]}}, row=v,
                     batch=tuple(x for x in (p.row, *p.batch) if x not in order),
                     rows=(tuple(order), tuple(p.extent(x) for x in order), tuple(sa[x] for x in order),
                           tuple(sc[x] for x in order)))


def _one_after_another(extents, strides) -> bool:
    """Whether variables (outermost first) of these extents and strides run through memory as one."""
    return all(outer == inner * e for outer, inner, e in zip(strides, strides[1:], extents[1:]))


def _dense(strides: dict[str, int], vs, p: Contraction) -> list[str] | None:
    """``vs`` outermost first if a tensor with ``strides`` holds them one after another (each
    variable's stride its inner neighbour's times that one's extent), else None."""
    order = sorted(vs, key=lambda v: -strides[v])
    return order if _one_after_another([p.extent(v) for v in order], [strides[v] for v in order]) else None


def _fold_taps(p: Contraction) -> Contraction | None:
    """The taps as part of K: a convolution's filter Wt(f, c, r, s) holds (c, r, s) one after
    another, so one reduction variable k = (c, r, s) runs through all of it with unit stride,
    and B's (I's) row k lies at k's offset (c's plane, the tap's r * W + s): the micro-kernel
    reads it in place through a table of the offsets, or B is packed through them.  Each
    micro-kernel call then sums C * R * S products per element (K blocks permitting) instead of
    a pass of C products per tap, each pass loading and storing C's tile, and a tap-less plan
    stores C once (no scratch accumulation across taps).  The other way round, where the vector
    operand holds them one after another (an NHWC convolution's filter Wt(r, s, c, f), k = (r,
    s, c) F apart) and A's rows are run together (``_gather_rows``), B is a plain matrix along
    k and A is read (or packed) through the table, element k of a row at k's channel and tap:
    ``kfold``'s last item names the operand that the table addresses."""
    vs = [p.red, *p.taps]
    if not p.taps or p.form == "dot" or any(p.dom[v][0] for v in vs):
        return None
    if p.form != "bcast" and not _dense(p.strides[p.b], vs, p):  # (grouped forms: B packed, A through the table)
        return None
    sa, sb = p.strides[p.a], p.strides[p.b]
    order = _dense(sa, vs, p)
    if order is not None and sa[order[-1]] == 1:
        v = "(" + ",".join(order) + ")"
        # B: no stride along k (its rows are at each k's offset: the K table)
        return _with_var(p, tuple(vs), v, prod(p.extent(x) for x in order), {p.a: {v: 1}, p.b: {v: 0}, p.c: {v: 0}},
                         red=v, taps=(), kfold=(tuple(order), tuple(p.extent(x) for x in order),
                                                tuple(sb[x] for x in order), p.b))
    order = _dense(sb, vs, p)
    if order is None or not p.rows:
        return None
    v = "(" + ",".join(order) + ")"
    # A: through the table (its stride along k, the innermost's, says whether runs are contiguous)
    return _with_var(p, tuple(vs), v, prod(p.extent(x) for x in order),
                     {p.a: {v: sa[order[-1]]}, p.b: {v: sb[order[-1]]}, p.c: {v: 0}},
                     red=v, taps=(), kfold=(tuple(order), tuple(p.extent(x) for x in order),
                                            tuple(sa[x] for x in order), p.a))


IM2COL_OVERLAP = 1.1  # input rows this much longer than output rows are not run on (_im2col) ...
IM2COL_ROWS = 256  # ... where C has this many rows to share each packed (gathered) element of B


def _im2col(p: Contraction, nr: int) -> Contraction | None:
    """Small images: ``_pad_rows`` computes W / Wo times the work (9 / 7 at 7 x 7, 16 / 14 at
    14 x 14).  Instead every batch's output pixels, Ho * Wo each, are one vector variable j
    over N * Ho * Wo, B packed through each pixel's address in I (n, its row and column, the
    tap's offset) rather than read along I's rows, and C's tiles go to a scratch C (C's
    pixels of each batch one after another), copied into C after the last tap: nothing is
    computed twice and one image's columns run on into the next's.  Packing B through the
    pixel map is a gather (~10% of the time at 32x512x9x9), paid back by C's rows: taken where
    I's rows are at least IM2COL_OVERLAP times C's and C has IM2COL_ROWS rows (and as
    ``_pad_rows``: taps, C from the identity, rows of at most two tiles, n and h the only
    batch loops).  Both plans in one process on the Xeon VM, 2 threads, padded rows / im2col:
    conv2d 32x512x9x9 * 512x3x3 1.09 (0.77 -> 0.84 of torch.conv2d's speed), 16x256x16x16 *
    256x3x3 1.02, 1x256x16x16 * 256x3x3 1.06; 8x64x9x9 * 64x3x3 0.86 (64 rows: not taken).
    Without taps (a pointwise convolution, whose rows ``_fuse_rows`` would run together), where
    an image's pixels leave a fifth of their last vector empty or more (49 at 7 x 7: 64 lanes)
    and C has twice IM2COL_ROWS rows (merged rows / im2col: 32x512x7x7 * 512 1.09, 64x1024x7x7
    * 1024 1.17, both then even with torch.conv2d; 8x256x7x7 * 256 0.88)."""
    if not p.init or p.form != "bcast" or p.vec in p.taps or len(p.batch) != 2:
        return None
    w = p.vec
    sb, sc, sa = p.strides[p.b], p.strides[p.c], p.strides[p.a]
    wo = p.extent(w)
    hs = [v for v in p.batch if sc[v] == wo * sc[w]]
    if not hs:
        return None
    h = hs[0]
    n = next(v for v in p.batch if v != h)
    ho = p.extent(h)
    if sb[w] != 1 or sc[w] != 1 or sa[h] or sa[w] or sa[n] or any(p.dom[v][0] for v in (n, h, w, p.row)):
        return None
    if wo > 2 * nr or sb[n] < sb[h] * ho or p.extent(p.row) < IM2COL_ROWS:
        return None
    vl = nr // 2
    if p.taps and sb[h] < wo * IM2COL_OVERLAP:
        return None
    if not p.taps and (-(-(ho * wo) // vl) * vl < 1.2 * ho * wo or p.extent(p.row) < 2 * IM2COL_ROWS):
        return None
    v = f"({n},{h},{w})"
    span = p.extent(n) * ho * wo
    cols = -(-span // 16) * 16  # the scratch's rows 64-byte aligned
    # B: no stride along j (it is packed through the pixel map); C: the scratch's rows
    return _with_var(p, (n, h, w), v, span, {p.a: {v: 0}, p.b: {v: 0}, p.c: {v: 1, p.row: cols}}, vec=v, batch=(),
                     im2col=(n, h, w, p.extent(n), ho, wo, sb[n], sb[h], sb[w], sc[n], sc[p.row]))


def _pad_rows(p: Contraction, nr: int) -> Contraction | None:
    """A convolution's output rows run together: ``O(n, f, h, w) +=! I(n, c, h + r, w + s) *
    Wt(f, c, r, s)`` vectorised along w leaves most of a tile's lanes idle when a row is short
    (14 of 16 lanes and one vector per tile at 14 x 14; 24 of 32 in a 56-wide row's second
    tile).  Computed over w up to I's row length instead, the pixel (h, w) lies at h * W + w in
    both I and a padded C, so one vector variable p = h * W + w runs through every row, B read
    along I's rows (each tap at its offset r * W + s), C's tiles whole; the W - Wo columns of
    overlap per row are computed and dropped when the padded C (a scratch) is compacted into C
    after the last tap.  Taken where a row's tiles would waste more lanes than the overlap
    costs (ceil(Wo / NR) * NR > W) and a row is at most two tiles (longer rows measured even
    or slower: 112 of 114 columns 4.3 -> 4.5-4.8 ms), and C starts from the identity (the
    scratch is never read before a tap stores it); the rows must be C's contiguous ones and
    B's unit-stride ones.  Measured on the 2-vCPU Xeon VM, 2 threads, both plans in one
    process, alternating rounds, ratio to torch.conv2d in the same run: 16x256x16x16 *
    256x3x3 0.68 -> 0.78, 8x64x30x30 * 128x3x3 0.88 -> 0.96, 8x128x58x58 * 128x3x3 0.78 ->
    0.81, 32x512x9x9 * 512x3x3 0.37 -> 0.82 (both with the filter packed once per call:
    PREPACK_BYTES; 0.09 before).  The scratch C's column blocks keep to a quarter of L2
    (``recognise``): every tap passes over them (56 x 56: 0.92 with blocks of all the rows)."""
    if not p.taps or not p.init or p.form != "bcast" or p.vec in p.taps:
        return None
    w = p.vec
    outer = [v for v in p.batch if p.strides[p.c][v] == p.extent(w) * p.strides[p.c][w]]
    if not outer:
        return None
    h = outer[0]
    sb, sc, sa = p.strides[p.b], p.strides[p.c], p.strides[p.a]
    wpad, wo, ho = sb[h], p.extent(w), p.extent(h)
    if sb[w] != 1 or sc[w] != 1 or sa[h] or sa[w] or wpad <= wo or p.dom[w][0] or p.dom[h][0]:
        return None
    if -(-wo // nr) * nr <= wpad or wo > 2 * nr or p.dom[p.row][0]:
        return None
    # p over [0, (Ho - 1) * W + Wo): B's reads end at I's last element, C's padded rows
    span = (ho - 1) * wpad + wo
    v = f"({h},{w})"
    cols = -(-span // 16) * 16  # the scratch's rows 64-byte aligned
    return _with_var(p, (h, w), v, span, {p.a: {v: 0}, p.b: {v: 1}, p.c: {v: 1, p.row: cols}}, vec=v,
                     batch=tuple(x for x in p.batch if x != h), pad=(h, w, wpad, ho, wo, sc[p.row]))


def _shaped(plan: Contraction, vl: int) -> Contraction:
    """The plan's pixels and taps rearranged where that pays: output columns as one vector
    (im2col, merged or padded rows), output rows as one row variable, the taps folded into K."""
    plan = _im2col(plan, 2 * vl) or _fuse_rows(plan, 2 * vl) or _pad_rows(plan, 2 * vl) or plan
    plan = _gather_rows(plan) or plan
    return _fold_taps(plan) or plan


ONE_GEMM_K = 256  # a convolution runs as one GEMM with C stored element by element from this deep (_one_gemm) ...
ONE_GEMM_VECTORS = 4  # ... and this many vectors of output channels


SHORT_ROW_WASTE = 0.05  # lanes of a row's last vector left empty from which a row is short (_short_rows)


def _short_rows(p: Contraction, vl: int) -> bool:
    """Whether a convolution's unit-stride plan (vectorised along its output rows) leaves lanes
    or loads to spare: its rows padded or gathered (im2col), leaving SHORT_ROW_WASTE of their
    vectors' lanes empty, or its input read with a stride along them (a strided convolution's
    B, packed through the stride).  Such a plan gives way to one GEMM over every output pixel
    (``_one_gemm``).  Kept: whole rows of whole vectors read in place (1x64x114x114, 112 wide:
    2.72 ms against 3.23 as one GEMM), and long ones (conv1d 4x128x1000 * 128x3, 998 wide:
    1.19 against 1.28); 8x256x200 * 256x5 (196 wide, 6% empty) 3.21 -> 3.08 as one GEMM."""
    ext = p.extent(p.vec)
    lanes = -(-ext // vl) * vl
    waste = (lanes - ext) / lanes
    return bool(p.pad or p.im2col) or bool(p.taps or p.kfold) and (
        p.strides[p.b][p.vec] != 1 or waste >= SHORT_ROW_WASTE)


def _one_gemm(p: Contraction, vl: int) -> bool:
    """Whether a convolution's plan is one GEMM over every output pixel: no batch loop, any taps
    folded into K through A's table, A's rows read in place through their addresses (runs
    along k; packed through them otherwise).  A convolution whose unit-stride plan has short
    rows (``_short_rows``) takes this one instead, even where C is then stored element by
    element (NCHW vectorised along f: each tile's C once, after all of K), where K is
    ONE_GEMM_K deep and F ONE_GEMM_VECTORS vectors wide, so the element stores stay a small
    part of a tile.  Measured on the 2-vCPU Xeon VM, 2 threads, builds of both in one process,
    alternating rounds, NCHW conv2d padded rows or im2col -> one GEMM: 16x256x16x16 * 256x3x3
    11.5 -> 10.3 ms (torch 11.0), 8x64x30x30 * 128 2.67 -> 2.62 (2.93), 8x128x58x58 * 128 22.3
    -> 21.1 (20.5), 32x512x9x9 * 512 23.5 -> 21.8 (23.1), 8x64x9x9 * 64 0.124 -> 0.088
    (0.159); not taken: 4x3x34x34 * 16 (K 27, one vector) 0.016 -> 0.110.  Stride-2
    convolutions (``I(n, c, 2 * h + r, 2 * w + s)``, B packed through the stride along w):
    8x128x57x57 * 256x3x3 14.6 -> 11.3 ms (torch 11.2), 8x256x29x29 * 512 17.5 -> 11.2 (11.1).
    A pointwise convolution's im2col (32x512x7x7 * 512) 2.68 -> 2.50 ms (torch 2.39), its I
    packed through each pixel's address (channels H * W apart).  A fused epilogue runs over
    each row block's runs of pixels (``_Emit.call_epilogue`` after the block's last K block),
    vectorised along them: conv2d_bias_relu 8x64x30x30 2.77 -> 2.75, 8x128x58x58 22.9 -> 22.0,
    16x256x16x16 12.1 -> 11.0 (run on each tile instead, along its strided f: 2.81 -> 2.91,
    20.0 -> 20.2, 11.2 -> 9.96)."""
    return (bool(p.rows) and not p.batch and not p.taps and (p.tables(p.a) or not p.kfold)
            and p.extent(p.red) >= ONE_GEMM_K and p.extent(p.vec) >= ONE_GEMM_VECTORS * vl)


def _pick_orientation(plans: list) -> tuple:
    """The vector along C's rows (unit stride: whole vector stores), unless another legal
    orientation runs it along a longer output index that its vector operand holds contiguously,
    and C's row is shorter than a vector or the broadcast operand is a tall strided matrix.
    A TN GEMM (C(m, n) +=! A(k, m) * B(k, n)) then takes 16 values of m at a time from A's rows
    with B(k, n) broadcast, C's tiles gathered and scattered once per K block: no lanes wasted
    on a narrow n, and A read along its rows instead of one line per k step.  Measured on a
    Sapphire-Rapids-class VM, 2 threads, ratio to numpy in the same run: 512x8x500000 0.72 ->
    1.37, 1024x8x500000 0.71 -> 1.46, 512x16x500000 0.82 -> 1.29; not taken where it lost or
    was even (4096x128x4096 0.89 -> 0.68, 1760x32x1760 1.55 -> 1.36, 1760x16x1760 1.70 -> 1.63)"""
    plans = sorted(plans, key=lambda x: x[0].strides[x[0].c][x[0].vec] != 1)  # stable: mapping order
    first, _, vl = plans[0]
    if first.strides[first.c][first.vec] != 1:
        return plans[0]
    narrow = first.extent(first.vec) < vl
    # tall: a broadcast operand A(k, m) read across its rows, much longer than wide and too big
    # to stay in cache (35x8457x1760 TN, A 246 KiB, kept the vector along n: 1.48 against 0.71)
    tall = first.strides[first.a][first.red] != 1 and first.extent(first.red) >= TALL * first.extent(first.row) \
        and first.extent(first.red) * first.extent(first.row) * 4 > STRIDED_A_BYTES
    if narrow or tall:
        for p, instr, lanes in plans[1:]:
            if p.extent(p.vec) >= lanes and p.strides[p.b][p.vec] == 1 and not p.taps:
                return p, instr, lanes
    return plans[0]



def dot_product(instr: Instruction) -> int | None:
    """Lanes of an instruction whose body is ``C +=! A(j) * B(j)`` (a scalar C): products along
    j accumulated, the form the backend keeps in vector registers and sums across lanes once."""
    body = instr.body
    if len(body.stmts) != 1 or len(instr.outputs) != 1 or instr.outputs[0].dtype != FLOAT32:
        return None
    s = body.stmts[0]
    if s.op != "+" or s.indices or not isinstance(s.rhs, Binary) or s.rhs.op != "*":
        return None
    x, y = s.rhs.a, s.rhs.b
    if not all(isinstance(e, Access) and len(e.indices) == 1 and isinstance(e.indices[0], Var) for e in (x, y)):
        return None
    if x.indices[0].name != y.indices[0].name:
        return None
    return instr.inputs[0].shape[0]


def _as_dot(p: Contraction, t: Target, mappings) -> Contraction | None:
    """The dot-product form when the broadcast form would waste most lanes (fewer output columns
    than half a vector) and A is contiguous along the reduction, if the target has a legal
    dot-product mapping of the statement along that reduction variable."""
    bl = p.blocking
    cols, red = p.extent(p.vec), p.extent(p.red)
    if cols * 2 > bl.vl or p.strides[p.a][p.red] != 1 or red < bl.vl:
        return None
    for m in mappings:
        if m.statement != p.stmt or not m.legal or len(m.steps) != 1:
            continue
        instr = t.instr(m.steps[0].instruction)
        lanes = dot_product(instr)
        if lanes is None or m.steps[0].fused().get(instr.body.stmts[0].rhs.a.indices[0].name) != (p.red,):
            continue
        mr = max(1, min(8, 24 // cols, p.extent(p.row)))
        caches = cache_levels(t)
        if _rows_share_an_l1_set(caches, p.strides[p.a][p.row]) and mr > caches[0].ways - 1 > 0:
            # one row stream fewer than the ways (the packed B^T keeps one), as for the broadcast
            # form.  Measured on a Zen 4 VM, 2 threads, tight loops, 8 -> 7 rows, three runs:
            # 1024x1x1024 35.4 / 34.4 / 34.9 -> 34.9 / 32.0 / 33.7 us, 3072x1x1024 94 / 91 / 91
            # -> 91 / 85 / 88, 2048x1x2048 127 / 132 / 133 -> 120 / 127 / 122; 1024x1x512 (rows
            # 2 KiB apart) unchanged
            mr = caches[0].ways - 1
        l2 = caches[1].capacity if len(caches) > 1 else 1 << 20
        fit = (l2 // 2) // (4 * cols)  # the packed B^T block keeps to half of L2
        kc = red if red <= fit else max(lanes, fit // lanes * lanes)
        kc = -(-red // -(-red // kc))  # balanced K blocks (one when the whole reduction fits)
        return replace(p, instr=instr.name, form="dot",
                       blocking=Blocking(lanes, mr, 1, kc, mr, cols, False, 0, True))
    return None


def s_j(instr: Instruction) -> str:
    return instr.body.stmts[0].indices[0]


def _classify(k: Kernel, b: Bound, si: int, a: str, bt: str, c: str, vec: str, red: str | None = None,
              out=FLOAT32) -> Contraction | None:
    """The statement as a Contraction with these roles: float32 (``red`` None: K the longest
    reduction), or for a grouped or tiled product with output type ``out`` (its operands of
    ``GROUPED[out]``: int8 or int16 into int32, bfloat16 into float32) along ``red``."""
    s = k.stmts[si]
    if s.tensor != c:
        return None
    acc = {c: [Var(v) for v in s.indices]}
    operands = GROUPED[out] if red is not None else (FLOAT32, BFLOAT16)
    for e in (s.rhs.a, s.rhs.b):
        # float(A(m, k)) on a float A, or on a bfloat16 A: this backend stores bfloat16 tensors
        # as float32 values already rounded to bfloat16 (``lltype``), so the widening is exact
        # and free (the target's fill_l1_cvt); int32(A(m, k)) on an int8 A for an integer plan
        e = _uncast(e, out, operands + (out,))
        if not isinstance(e, Access) or e.tensor not in (a, bt) or e.tensor in acc:
            return None
        acc[e.tensor] = list(e.indices)
    if set(acc) != {a, bt, c}:
        return None
    for name in acc:
        if k.tensor(name).dtype not in ((out,) if name == c else operands):
            return None
    found = element_strides(b, acc, affine=True)
    if found is None:
        return None
    strides, base, uses = found
    dom = b.domain(si)
    allv = set(dom)
    if uses[c] | uses[a] | uses[bt] != allv:
        return None
    rows = [v for v in s.indices if v in uses[a] and v not in uses[bt]]
    reds = [v for v in uses[a] & uses[bt] if v not in uses[c]]
    if vec not in uses[c] or vec not in uses[bt] or vec in uses[a]:
        return None
    # C's vector index may be strided (C's tiles then go element by element: _pick_orientation)
    if not rows or not reds or not strides[c][vec] or (allv - uses[c]) != set(reds):
        return None
    row = max(rows, key=lambda v: dom[v][1] - dom[v][0])  # the longest row variable is blocked
    # the longest reduction is the micro-kernel's K (or the one given); the others are taps (outer passes)
    if red is None:
        red = max(sorted(reds), key=lambda v: dom[v][1] - dom[v][0])
    elif red not in reds:
        return None
    taps = tuple(v for v in sorted(reds) if v != red)
    # every other output variable is a batch loop (a tensor it does not index has stride 0 along it)
    batch = tuple(v for v in s.indices if v not in (row, vec))
    for name in acc:
        strides[name] = {v: strides[name].get(v, 0) for v in sorted(allv)}  # sorted: cache keys stay stable
    return Contraction(si, "", c, a, bt, batch, row, red, vec, dict(dom), strides, base, s.init, taps=taps)
