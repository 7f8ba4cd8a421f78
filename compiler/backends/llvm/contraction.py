"""Register-blocked, packed, cache-tiled contractions for the host CPU (BLIS-style).

A statement ``C(.., n) +=(!) A(..) * B(.., n)`` whose chosen mapping is the target's
broadcast-FMA instruction (``C(j) += A * B(j)``: one scalar, one vector of ``VL``
lanes) is generated as the classic five-loop GEMM around a micro-kernel:

    for jc in N step NC          B block (KC x NC) lives in the outer cache
      for pc in K step KC        pack B[pc:pc+KC, jc:jc+NC] into NR-wide panels
        for ic in M step MC      pack A[ic:ic+MC, pc:pc+KC] into MR-tall panels (A block in L2)
          for jr in NC step NR   one B panel (KC x NR) in L1
            for ir in MC step MR micro-kernel: MR x NV accumulator vectors in registers

Everything chip-specific comes from the target IR: the vector length is the
instruction's extent, the register count is the register memory's capacity over
its row, KC/MC/NC follow the capacities of the cache levels (`Blocking.for_target`, plan.py).
The instruction's body fixes the roles: the kernel variable bound to the
instruction's ``j`` is vectorised (unit stride in C), the variables in C and the
broadcast operand are the register-blocked rows, the reduction variable is the
packed K, variables in all three are batch loops.  Packing makes every layout of A
and B (gemm, gemm_tn, gemm_nt, ...) look the same to the micro-kernel, zero-padded
to whole panels, so tails cost only a masked copy-out of the edge tiles.
"""
from __future__ import annotations

from math import prod

from llvmlite import ir as L

from .plan import Contraction

I64 = L.IntType(64)
I32 = L.IntType(32)
F32 = L.FloatType()


def _c(v: int):
    return L.Constant(I64, v)


def counted_loop(fn: L.Function, b: L.IRBuilder, ty, lo, hi, step: int, body, name: str, loop_md=None):
    """``for (v = lo; v < hi; v += step) body(v)`` in ``fn`` at the builder's position; lo/hi are
    values of type ``ty`` or ints; ``loop_md``, ``llvm.loop`` metadata for its back edge.  Shared
    by the contraction and scalar generators."""
    lo = L.Constant(ty, lo) if isinstance(lo, int) else lo
    hi = L.Constant(ty, hi) if isinstance(hi, int) else hi
    pre = b.block
    head = fn.append_basic_block(f"{name}.head")
    blk = fn.append_basic_block(f"{name}.body")
    done = fn.append_basic_block(f"{name}.done")
    b.branch(head)
    b.position_at_end(head)
    phi = b.phi(ty, name=name)
    phi.add_incoming(lo, pre)
    b.cbranch(b.icmp_signed("<", phi, hi), blk, done)
    b.position_at_end(blk)
    body(phi)
    phi.add_incoming(b.add(phi, L.Constant(ty, step)), b.block)
    br = b.branch(head)
    if loop_md is not None:
        br.set_metadata("llvm.loop", loop_md)
    b.position_at_end(done)


# ------------------------------------------------------------------------------ code generation

class _Emit:
    """LLVM IR for one Contraction: pack_a, pack_b, micro-kernels and the driver ``s{i}``."""

    et = F32  # the element type of C and of the accumulators' lanes

    def __init__(self, mod: L.Module, p: Contraction):
        self.mod, self.p, self.bl = mod, p, p.blocking
        self.vt = L.VectorType(self.et, self.bl.vl)
        fma = mod.globals.get(f"llvm.fma.v{self.bl.vl}f32")
        ft = L.VectorType(F32, self.bl.vl)
        self.fma = fma or L.Function(mod, L.FunctionType(ft, [ft] * 3), name=f"llvm.fma.v{self.bl.vl}f32")
        self.pre = f"s{p.stmt}"
        self.micros: dict[tuple, L.Function] = {}
        self.epilogue = None
        self.epi_args: list = []  # the batch variables' values, passed to the epilogue after the tile

    # ---- helpers
    def func(self, name: str, args, internal: bool = True):
        fn = L.Function(self.mod, L.FunctionType(L.VoidType(), args), name=f"{self.pre}_{name}")
        if internal:
            fn.linkage = "internal"
        for a in fn.args:
            if isinstance(a.type, L.PointerType):
                a.add_attribute("noalias")
        self.fn = fn
        self.bld = L.IRBuilder(fn.append_basic_block("entry"))
        return fn

    def loop(self, lo, hi, step: int, body, name="i"):
        """for (v = lo; v < hi; v += step) body(v); lo/hi are i64 values or ints."""
        counted_loop(self.fn, self.bld, I64, lo, hi, step, body, name)

    def if_(self, cond, then, other=None):
        b = self.bld
        if other is None:
            with b.if_then(cond):
                then()
        else:
            with b.if_else(cond) as (t, o):
                with t:
                    then()
                with o:
                    other()

    def min(self, x, y):
        return self.bld.select(self.bld.icmp_signed("<", x, y), x, y)

    def at(self, ptr, off):
        return self.bld.gep(ptr, [off if not isinstance(off, int) else _c(off)])

    def vload(self, ptr):
        return self.bld.load(self.bld.bitcast(ptr, self.vt.as_pointer()), align=4)

    def vstore(self, v, ptr):
        self.bld.store(v, self.bld.bitcast(ptr, self.vt.as_pointer()), align=4)

    def transpose(self, rows: list) -> list:
        """The VL x VL transpose of VL row vectors: log2(VL) rounds, each swapping the
        off-diagonal h x h blocks of every 2h x 2h block with two-source shuffles."""
        b, n = self.bld, len(rows)
        h = n // 2
        while h >= 1:
            new = list(rows)
            for i in range(n):
                if (i // h) % 2:
                    continue
                lo, hi = [], []
                for p in range(n // (2 * h)):
                    lo += [2 * p * h + t for t in range(h)] + [n + 2 * p * h + t for t in range(h)]
                    hi += [(2 * p + 1) * h + t for t in range(h)] + [n + (2 * p + 1) * h + t for t in range(h)]
                x, y = rows[i], rows[i + h]
                new[i] = b.shuffle_vector(x, y, L.Constant(L.VectorType(I32, n), lo))
                new[i + h] = b.shuffle_vector(x, y, L.Constant(L.VectorType(I32, n), hi))
            rows, h = new, h // 2
        return rows

    def store_transposed(self, rows: list, dst, stride: int):
        """Store the VL x VL transpose of ``rows`` (zero vectors appended up to VL): column t at
        dst + t * stride floats (packing: A's panels, stride MR, and an NT B's, stride NR)."""
        zero = L.Constant(self.vt, None)
        for t, col in enumerate(self.transpose(rows + [zero] * (self.bl.vl - len(rows)))):
            self.vstore(col, self.at(dst, t * stride))

    # ---- driver pieces
    def entry(self, ptrs_of):
        """Start ``void s{i}(i8** bufs, float* work, i64 q_lo, q_hi, m_lo, m_hi, n_lo, n_hi, k_lo, k_hi,
        part)`` and load the operand pointers; returns the arguments after ``bufs``."""
        p = self.p
        fp = F32.as_pointer()
        fn = L.Function(self.mod, L.FunctionType(L.VoidType(), [L.PointerType(L.IntType(8)).as_pointer(), fp]
                                                  + [I64] * 9), name=self.pre)
        self.fn = fn
        self.bld = b = L.IRBuilder(fn.append_basic_block("entry"))
        self.bufs = fn.args[0]
        self.ptr = {}
        for name in (p.a, p.b, p.c):
            raw = b.load(b.gep(fn.args[0], [L.Constant(I32, ptrs_of[name])]))
            self.ptr[name] = b.bitcast(raw, fp)
        return fn.args[1:]

    def finish_tile(self, pc, kc, khi: int, m0, mv, n0, nv, whole=None):
        """After the last K block of a tile: its fused epilogue, while the tile is in L1 (not
        where ``whole`` is false: a part of a split K, whose epilogue runs after the sums)."""
        if self.epilogue is None or self.p.scratch_c or self.p.gathers_c():
            return  # (a scratch C's: after its compaction; a C gathered by rows: per block of them)
        self.if_(self.last_block(pc, kc, khi, whole), lambda: self.call_epilogue(self.bufs, m0, mv, n0, nv, self.epi_args))

    def call_epilogue(self, bufs, m0, mv, n0, nv, extra):
        """The fused epilogue on rows [m0, m0 + mv) x columns [n0, n0 + nv) of C, ``extra`` (the
        batch variables' values) after the bounds.  Where rows run together (``rows``), the tile
        function runs over the innermost row variable: one call per run of it in the tile, the
        outer row variables' values (decoded from the run) before ``extra``."""
        p, b = self.p, self.bld
        if not p.rows:
            b.call(self.epilogue, [bufs, m0, mv, n0, nv, *extra])
            return
        extents = p.rows[1]

        def run(q, start, lo, hi):
            outer = self.digits(q, extents[:-1])
            self.if_(b.icmp_signed("<", lo, hi),
                     lambda: b.call(self.epilogue, [bufs, lo, b.sub(hi, lo), n0, nv, *outer, *extra]))
        self.runs(m0, b.add(m0, mv), extents[-1], extents[-1], run)

    def last_block(self, pc, kc, khi: int, whole=None):
        """Whether the K block at pc (kc long) is the last one, and (``whole``) the part holds all of K."""
        b = self.bld
        last = b.icmp_signed("==", b.add(pc, kc), _c(khi))
        return b.and_(last, whole) if whole is not None else last

    def scalar(self, ptr):
        """The broadcast operand's element at ``ptr`` (a packed panel or A in place)."""
        return self.bld.load(ptr)

    def mac(self, a, bv, acc):
        """acc + a * bv: one instruction's worth of products added to an accumulator vector."""
        return self.bld.call(self.fma, [a, bv, acc])

    def add(self, x, y):
        """Sums (of C's values: scalars or vectors of ``et``)."""
        return self.bld.fadd(x, y)

    def b_steps(self, kc):
        """Word rows of a packed B panel of a K block of kc steps (an int or an i64): kc, or one
        more where the panel carries a row of its columns' sums (``_EmitGroups``)."""
        return kc

    def acc_init(self, bp, kc, nvec: int) -> list:
        """The accumulators' start for a tile with the B panel at bp: zero."""
        return [L.Constant(self.vt, None)] * nvec

    def splat(self, x):
        """The scalar x in every lane (a broadcast)."""
        b = self.bld
        v = b.insert_element(L.Constant(self.vt, L.Undefined), x, L.Constant(I32, 0))
        return b.shuffle_vector(v, L.Constant(self.vt, L.Undefined), L.Constant(L.VectorType(I32, self.bl.vl), [0] * self.bl.vl))

    def digits(self, q, extents) -> list:
        """The values (i64) of variables of these extents, outermost first, at flattened index q."""
        b, out, rest = self.bld, [], q
        for d in range(len(extents)):
            inner = prod(extents[d + 1:])
            out.append(b.sdiv(rest, _c(inner)))
            rest = b.srem(rest, _c(inner))
        return out

    def decode(self, q) -> list[tuple[str, object]]:
        """(variable, value) of the batch variables, then the taps, at flattened batch index q."""
        p, b = self.p, self.bld
        loops = p.batch + p.taps
        return [(v, b.add(x, _c(p.dom[v][0]))) for v, x in zip(loops, self.digits(q, [p.extent(v) for v in loops]))]

    def operands(self, q):
        """A, B and C at flattened batch index q (``decode``d, the strides applied: C's along a
        tap is 0)."""
        p, b = self.p, self.bld
        base = {n: _c(p.base[n]) for n in (p.a, p.b, p.c)}
        for v, idx in self.decode(q):
            for n in base:
                base[n] = b.add(base[n], b.mul(idx, _c(p.strides[n][v])))
        return tuple(self.at(self.ptr[n], base[n]) for n in (p.a, p.b, p.c))

    def batch_values(self, q) -> list:
        """The batch variables' values (i64) at flattened batch index q, in ``p.batch`` order."""
        return [idx for v, idx in self.decode(q) if v in self.p.batch]

    def runs(self, n_lo, n_hi, period: int, length: int, body):
        """For each run of scratch columns [n_lo, n_hi) (a padded plan's output rows, ``period``
        apart in the scratch, ``length`` of each kept): ``body(q, start, lo, hi)``, run q starting
        at scratch column ``start``, its columns [lo, hi) within the range (possibly none)."""
        b = self.bld

        def run(q):
            start = b.mul(q, _c(period))
            lo = b.select(b.icmp_signed("<", n_lo, start), _c(0), b.sub(n_lo, start))
            body(q, start, lo, self.min(_c(length), b.sub(n_hi, start)))
        self.loop(b.sdiv(n_lo, _c(period)), b.add(b.sdiv(b.sub(n_hi, _c(1)), _c(period)), _c(1)), 1, run, "q")

    def padded_epilogue(self, m_lo, m_hi, n_lo, n_hi):
        """The fused epilogue on what a padded plan's compaction just wrote: scratch columns
        [n_lo, n_hi) are parts of output rows h (W apart in the scratch), each row's part one
        call over its columns w, with h and the batch variables after the tile's bounds."""
        p, b = self.p, self.bld
        h, _, period, _, wo, _ = p.pad
        h0 = p.dom[h][0] if h in p.dom else 0

        def run(q, start, lo, hi):
            self.if_(b.icmp_signed("<", lo, hi), lambda: b.call(
                self.epilogue, [self.bufs, m_lo, b.sub(m_hi, m_lo), lo, b.sub(hi, lo), b.add(q, _c(h0)), *self.epi_args]))
        self.runs(n_lo, n_hi, period, wo, run)

    # ---- packing
    def pad_panel(self, dst, start, rows, width: int, filled):
        """Zero elements [filled, width) of each of ``rows`` rows of a panel at dst + start (the
        padding of a ragged last panel, so the micro-kernel always computes whole tiles)."""
        b = self.bld

        def row(r):
            base = b.add(start, b.mul(r, _c(width)))
            self.loop(filled, width, 1, lambda j: b.store(L.Constant(F32, 0.0), self.at(dst, b.add(base, j))), "pad")
        self.loop(0, rows, 1, row, "padrow")

    def pack_b(self):
        """pack_b(Bp, B, jc, nc, pc, kc): Bp[p][kk][j] = B[pc+kk, jc+p*NR+j] (0 past nc)."""
        p, bl = self.p, self.bl
        fp = F32.as_pointer()
        fn = self.func("pack_b", [fp, fp, I64, I64, I64, I64])
        bp, src, jc, nc, pc, kc = fn.args
        sk, sn = p.strides[p.b][p.red], p.strides[p.b][p.vec]
        b = self.bld
        offs = b.alloca(I64, size=bl.nr, name="offs") if p.im2col else None

        table = self.k_table() if p.tables(p.b) else None

        def k_offset(k):
            """B's offset of reduction step k: k * its stride, or, with the taps folded into K,
            the offset of k's channel and tap (the K table's entry)."""
            return b.load(b.gep(table, [_c(0), k])) if table is not None else b.mul(k, _c(sk))

        def panel(q):
            nv = self.min(_c(bl.nr), b.sub(nc, q))
            dst0 = b.mul(q, kc)  # panel q/NR starts at (q/NR)*kc*NR = q*kc
            self.pad_panel(bp, dst0, kc, bl.nr, nv)
            if p.im2col:
                # column j is output pixel j: batch j / (Ho Wo), row and column within it; its
                # offset in B (the tap's is in src) once per panel, then the panel row by row
                _, _, _, _, ho, wo, s_n, s_h, s_w, _, _ = p.im2col

                def offset(j):
                    x = b.add(jc, b.add(q, j))
                    img, pix = b.sdiv(x, _c(ho * wo)), b.srem(x, _c(ho * wo))
                    o = b.add(b.mul(img, _c(s_n)), b.add(b.mul(b.sdiv(pix, _c(wo)), _c(s_h)),
                                                         b.mul(b.srem(pix, _c(wo)), _c(s_w))))
                    b.store(o, b.gep(offs, [j]))
                self.loop(0, nv, 1, offset, "j")

                def krow(kk):
                    drow = b.add(dst0, b.mul(kk, _c(bl.nr)))
                    base = k_offset(b.add(pc, kk))

                    def copy(j):
                        v = b.load(self.at(src, b.add(b.load(b.gep(offs, [j])), base)))
                        b.store(v, self.at(bp, b.add(drow, j)))
                    self.loop(0, nv, 1, copy, "j")
                self.loop(0, kc, 1, krow, "kk")
                return
            if sk == 1 and sn != 1:
                # B(n, k) (an NT GEMM): read along k, one column of the panel at a time
                def start(j):  # column j of the panel, at k = pc
                    return b.add(b.mul(pc, _c(sk)), b.mul(b.add(jc, b.add(q, j)), _c(sn)))

                def columns(k0, j_hi):
                    def column(j):
                        scol = start(j)

                        def copy(kk):
                            v = b.load(self.at(src, b.add(scol, kk)))
                            b.store(v, self.at(bp, b.add(dst0, b.add(b.mul(kk, _c(bl.nr)), j))))
                        self.loop(k0, kc, 1, copy, "kk")
                    self.loop(0, j_hi, 1, column, "j")
                if bl.vl & (bl.vl - 1):
                    columns(_c(0), nv)
                    return
                # a whole panel: VL k steps of VL columns at a time, transposed in registers
                # (the element copies above ran at ~1 float a cycle)
                kv = b.mul(b.sdiv(kc, _c(bl.vl)), _c(bl.vl))

                def vector():
                    def block(kk):
                        for g in range(bl.nv):
                            rows = [self.vload(self.at(src, b.add(start(_c(g * bl.vl + j)), kk))) for j in range(bl.vl)]
                            self.store_transposed(rows, self.at(bp, b.add(dst0, b.add(b.mul(kk, _c(bl.nr)), _c(g * bl.vl)))),
                                                  bl.nr)
                    self.loop(0, kv, bl.vl, block, "kk")
                    columns(kv, _c(bl.nr))
                self.if_(b.icmp_signed("==", nv, _c(bl.nr)), vector, lambda: columns(_c(0), nv))
                return

            def rows(width):
                def krow(kk):
                    srow = b.add(k_offset(b.add(pc, kk)), b.mul(b.add(jc, q), _c(sn)))
                    drow = b.add(dst0, b.mul(kk, _c(bl.nr)))

                    def copy(j):
                        v = b.load(self.at(src, b.add(srow, b.mul(j, _c(sn)))))
                        b.store(v, self.at(bp, b.add(drow, j)))
                    self.loop(0, width, 1, copy, "j")
                return lambda: self.loop(0, kc, 1, krow, "kk")
            # a whole panel's rows as constant-length copies (inline vector moves); with the
            # width a run-time value LLVM made each 128-byte row a call to memcpy (8% of a
            # 512x48000x2560 GEMM's time in perf)
            self.if_(b.icmp_signed("==", nv, _c(bl.nr)), rows(_c(bl.nr)), rows(nv))
        self.loop(0, nc, bl.nr, panel, "q")
        b.ret_void()

    def pack_a(self):
        """pack_a(Ap, A, ic, mc, pc, kc): Ap[p][kk][i] = A[ic+p*MR+i, pc+kk] (0 past mc)."""
        p, bl = self.p, self.bl
        fp = F32.as_pointer()
        fn = self.func("pack_a", [fp, fp, I64, I64, I64, I64])
        ap, src, ic, mc, pc, kc = fn.args
        sm, sk = p.strides[p.a][p.row], p.strides[p.a][p.red]
        by_k = sm == 1 and not p.gathers_a() and not p.tables(p.a)
        b = self.bld
        table = self.k_table() if p.tables(p.a) else None

        def a_k(k):
            """A's offset of reduction step k: k * its stride, or the K table's entry."""
            return b.load(b.gep(table, [_c(0), k])) if table is not None else b.mul(k, _c(sk))

        def panel(q):
            mv = self.min(_c(bl.mr), b.sub(mc, q))
            dst0 = b.mul(q, kc)
            self.pad_panel(ap, dst0, kc, bl.mr, mv)
            if by_k:
                return  # copied by the block pass below

            def rows_from(k0, i_hi):
                def row(i):  # one row of the panel, along k (contiguous when sk == 1)
                    srow = self.a_row(b.add(ic, b.add(q, i)))

                    def copy(kk):
                        v = b.load(self.at(src, b.add(srow, a_k(b.add(pc, kk)))))
                        b.store(v, self.at(ap, b.add(dst0, b.add(b.mul(kk, _c(bl.mr)), i))))
                    self.loop(k0, kc, 1, copy, "kk")
                self.loop(0, i_hi, 1, row, "i")

            # (through the K table: VL steps from a multiple of VL are one run where runs are whole vectors)
            runs = table is None or (bl.kc % bl.vl == 0 and p.kfold[1][-1] % bl.vl == 0)
            if sk != 1 or bl.mr > bl.vl or bl.vl & (bl.vl - 1) or not runs:
                rows_from(0, mv)
                return
            # rows contiguous along k: each row's K block copied to a staging area (a row at a
            # time: MR rows 16 KiB apart read side by side fight over the same L1 sets), then
            # VL k steps of the MR rows at a time transposed in registers (a scalar transpose
            # ran at a quarter of the micro-kernel's speed, so packing did not pay where it is
            # needed: K = 4096, whose A streams read in place thrash the same way)
            kv = b.mul(b.sdiv(kc, _c(bl.vl)), _c(bl.vl))
            tmp = self.at(ap, _c(self.pack_a_floats()))
            ts = bl.kc + bl.vl  # staged row stride: rows 16 floats apart from a power of two

            def vector():
                def stage_row(i):
                    srow = self.a_row(b.add(ic, b.add(q, i)))
                    drow = b.mul(i, _c(ts))
                    self.loop(0, kv, bl.vl, lambda kk: self.vstore(self.vload(self.at(src, b.add(srow, a_k(b.add(pc, kk))))),
                                                                   self.at(tmp, b.add(drow, kk))), "kk")
                self.loop(0, bl.mr, 1, stage_row, "i")

                def block(kk):
                    rows = [self.vload(self.at(tmp, b.add(_c(i * ts), kk))) for i in range(bl.mr)]
                    # MR floats of each column count; the rest is overwritten by the next column
                    self.store_transposed(rows, self.at(ap, b.add(dst0, b.mul(kk, _c(bl.mr)))), bl.mr)
                self.loop(0, kv, bl.vl, block, "kk")
                rows_from(kv, _c(bl.mr))
            self.if_(b.icmp_signed("==", mv, _c(bl.mr)), vector, lambda: rows_from(0, mv))

        if by_k:
            # columns of A are contiguous in m (A(k, m)): one pass along each k row of the whole
            # block, so the reads stream through pages instead of jumping a row of A per element
            def krow_block(kk):
                srow = b.add(b.mul(b.add(pc, kk), _c(sk)), ic)

                def chunk(q):
                    mv = self.min(_c(bl.mr), b.sub(mc, q))
                    s0, d0 = b.add(srow, q), b.add(b.mul(q, kc), b.mul(kk, _c(bl.mr)))

                    def copy(i):
                        b.store(b.load(self.at(src, b.add(s0, i))), self.at(ap, b.add(d0, i)))
                    # whole chunks with a constant length: inline moves, not a memcpy call each
                    self.if_(b.icmp_signed("==", mv, _c(bl.mr)), lambda: self.loop(0, _c(bl.mr), 1, copy, "i"),
                             lambda: self.loop(0, mv, 1, copy, "i"))
                self.loop(0, mc, bl.mr, chunk, "q")
            self.loop(0, kc, 1, krow_block, "kk")
        self.loop(0, mc, bl.mr, panel, "q")
        b.ret_void()

    def a_row(self, m):
        """A's offset of row m: m times its stride, or, where A's rows are gathered (``rows``),
        the sum of each row variable's value (decoded from m) times A's stride along it."""
        p = self.p
        return self.row_offset(m, p.rows[2]) if p.gathers_a() else self.bld.mul(m, _c(p.strides[p.a][p.row]))

    def tile_rows(self, arr, m0, mv, offset_of):
        """Fill ``arr`` (MR i64) with ``offset_of`` each of a tile's rows m0 + i; rows past mv
        repeat the last (the micro-kernel computes whole tiles: their sums are never stored)."""
        b, last = self.bld, self.bld.sub(mv, _c(1))
        for i in range(self.bl.mr):
            b.store(offset_of(b.add(m0, self.min(_c(i), last))), b.gep(arr, [_c(i)]))

    def c_row(self, m):
        """C's offset of row m (``a_row`` for C)."""
        p = self.p
        return self.row_offset(m, p.rows[3]) if p.gathers_c() else self.bld.mul(m, _c(p.strides[p.c][p.row]))

    def row_offset(self, m, strides):
        """The offset of row m of run-together rows (``rows``) in a tensor with ``strides`` along them."""
        b, off = self.bld, _c(0)
        for x, st in zip(self.digits(m, self.p.rows[1]), strides):
            off = b.add(off, b.mul(x, _c(st)))
        return off

    def prefetch(self, ptr, write: bool = False):
        """A data prefetch of the line holding ``ptr`` into every cache level (a hint: never a
        fault, past a tensor's end too)."""
        f = self.mod.globals.get("llvm.prefetch.p0") or L.Function(
            self.mod, L.FunctionType(L.VoidType(), [L.IntType(8).as_pointer(), I32, I32, I32]), name="llvm.prefetch.p0")
        addr = self.bld.bitcast(ptr, L.IntType(8).as_pointer())
        self.bld.call(f, [addr, L.Constant(I32, int(write)), L.Constant(I32, 3), L.Constant(I32, 1)])

    # ---- micro-kernel
    def micro(self, a_rs: int, a_ks: int, b_ks: int, nvec: int | None = None):
        """micro(a, b, c, kc, mv, nv, accumulate): C[0:mv, 0:nv] (+)= A-panel x B-panel, with
        MR x NVEC accumulators carried in registers through the k loop (a do-while: kc >= 1).
        A element (i, k) is at a + i*a_rs + k*a_ks, B lanes of step k at b + k*b_ks: one
        variant per layout (packed panels or the tensors in place) and width (NV vectors, or
        fewer for a last tile that needs fewer: ``call_micro``), generated on demand."""
        nvec = nvec or self.bl.nv
        key = (a_rs, a_ks, b_ks, nvec)
        if key not in self.micros:
            outer = self.fn, self.bld  # generated on demand, in the middle of the driver
            self.micros[key] = self._micro(f"micro_{len(self.micros)}", a_rs, a_ks, b_ks, nvec)
            self.fn, self.bld = outer
        return self.micros[key]

    def call_micro(self, a_rs: int, a_ks: int, b_ks: int, args: list):
        """The micro-kernel call for a tile of ``args``' nv columns (and, with ``b_ks`` 0, the K
        table's entry of the call's first k last): NV vectors wide, or, for the
        ragged last tile of C's columns, as few as that tile needs (222 columns of a padded 14 x
        14 convolution in 64-wide tiles are 3 tiles and 30 columns: two vectors, not four), so
        no FMAs go to lanes past C's end.  Column blocks and thread parts start at multiples of
        NR, so that tile's width is known here; any narrower tile also takes it.  Both plans in
        one process on the Xeon VM, 2 threads, two runs: conv2d 16x256x16x16 * 256x3x3 16.3 ->
        14.7 ms and 15.6 -> 14.5, pointwise 16x256x14x14 1.74 -> 1.48 and 1.75 -> 1.44, GEMM
        1760x100x1760 2.39 -> 2.23 and 2.57 -> 2.30, 2048x1500x2048 43.6 -> 41.6 and 44.8 -> 42.2."""
        b, bl, p = self.bld, self.bl, self.p
        rem = p.extent(p.vec) % bl.nr
        edge = -(-rem // bl.vl)
        full = self.micro(a_rs, a_ks, b_ks)
        if not rem or edge >= bl.nv:
            b.call(full, args)
            return
        self.if_(b.icmp_signed("<=", args[5], _c(edge * bl.vl)), lambda: b.call(self.micro(a_rs, a_ks, b_ks, edge), args),
                 lambda: b.call(full, args))

    def add_scratch(self, c, tmp, mv, nv, accum, c_at):
        """An edge tile from the scratch tile ``tmp`` (NR wide) into C, element by element: rows
        [0, mv) at ``c_at(i)``, columns [0, nv) at C's stride along the vector, added to what C
        holds where ``accum``."""
        p, b, nr = self.p, self.bld, self.bl.nr
        cvs = p.strides[p.c][p.vec]

        def row(i):
            def col(j):
                ptr = self.at(c, b.add(c_at(i), b.mul(j, _c(cvs)) if cvs != 1 else j))
                t = b.load(self.at(tmp, b.add(b.mul(i, _c(nr)), j)))
                b.store(b.select(accum, self.add(t, b.load(ptr)), t), ptr)
            self.loop(0, nv, 1, col, "ej")
        self.loop(0, mv, 1, row, "ei")

    def a_by_rows(self) -> bool:
        """Whether A is read in place through each row's offset (``_micro`` with a_rs -1): A
        gathered or through the K table, not packed."""
        p = self.p
        return not self.bl.pack_a and p.form == "bcast" and p.addresses_a()

    def _micro(self, name: str, a_rs: int, a_ks: int, b_ks: int, nvec: int):
        p, bl = self.p, self.bl
        fp = F32.as_pointer()
        table = b_ks == 0  # B in place with the taps folded into K: row k of B at b + tbl[k]
        # a_rs -1: A's rows in place at offsets from an array of MR, k at k * a_ks or (a_ks 0)
        # at the offsets in A's K table
        by_rows, a_table = a_rs < 0, a_rs < 0 and a_ks == 0
        c_rows = p.gathers_c()  # C's rows at the offsets in an array of MR
        fn = self.func(name, [fp, fp, self.et.as_pointer(), I64, I64, I64, L.IntType(1)] + ([I64.as_pointer()] if table else [])
                       + ([I64.as_pointer()] if by_rows else []) + ([I64.as_pointer()] if a_table else [])
                       + ([I64.as_pointer()] if c_rows else []))
        if nvec == bl.nv:  # the narrower ones are for last tiles only: calls, not copies
            fn.attributes.add("alwaysinline")
        a, bp, c, kc, mv, nv, accum = fn.args[:7]
        tbl = fn.args[7] if table else None
        b = self.bld
        if by_rows:
            rows_arg = fn.args[7 + table]
            atbl = fn.args[8 + table] if a_table else None
            a_rows = [self.at(a, b.load(b.gep(rows_arg, [_c(i)]))) for i in range(bl.mr)]
        tmp = b.alloca(self.et, size=bl.mr * bl.nr, name="tile")  # edge tiles go through it (entry block: no stack growth)
        crs, cvs = p.strides[p.c][p.row], p.strides[p.c][p.vec]
        c_offs = fn.args[-1] if c_rows else None

        def c_at(i):
            """C's offset of the tile's row i (a Python int or an i64)."""
            if c_offs is not None:
                return b.load(b.gep(c_offs, [i if not isinstance(i, int) else _c(i)]))
            return i * crs if isinstance(i, int) else b.mul(i, _c(crs))
        if bl.prefetch_c and cvs == 1 and not c_rows:
            # the C tile this call adds to, on its way while the k loop runs (a C from memory)
            for i in range(bl.mr):
                for line in range(0, nvec * bl.vl * 4, 64):
                    self.prefetch(self.at(c, i * crs + line // 4), write=True)
        start = self.acc_init(bp, kc, nvec)
        entry = b.block
        body = fn.append_basic_block("k.body")
        out = fn.append_basic_block("k.done")
        b.branch(body)
        b.position_at_end(body)
        k = b.phi(I64, name="k")
        ap = b.phi(fp, name="ap")
        bpp = b.phi(fp, name="bp")
        accs = [[b.phi(self.vt, name=f"acc{i}_{v}") for v in range(nvec)] for i in range(bl.mr)]
        k.add_incoming(_c(0), entry)
        ap.add_incoming(a, entry)
        bpp.add_incoming(bp, entry)
        for row in accs:
            for x, x0 in zip(row, start):
                x.add_incoming(x0, entry)
        brow = self.at(bp, b.load(b.gep(tbl, [k]))) if table else bpp
        bv = [self.vload(self.at(brow, v * bl.vl)) for v in range(nvec)]
        if bl.prefetch and (table or (b_ks != bl.nr and b_ks * 4 >= 64)):
            # B read in place: each k step is another row of B (another page for wide B); through
            # the K table, the row PREFETCH steps on (the table runs that many entries past K)
            ahead = (self.at(bp, b.load(b.gep(tbl, [b.add(k, _c(bl.prefetch))]))) if table
                     else self.at(bpp, bl.prefetch * b_ks))
            for line in range(0, nvec * bl.vl * 4, 64):
                self.prefetch(self.at(ahead, line // 4))
        if a_ks * 4 >= 64 and bl.prefetch and not by_rows:
            # each k step of A starts a new cache line (and soon a new page, where the hardware
            # prefetcher stops): fetch the A elements of step k + prefetch ahead of time
            for off in sorted({0, (bl.mr - 1) * a_rs}):
                self.prefetch(self.at(ap, bl.prefetch * a_ks + off))
        new = []
        if by_rows:
            ak = b.load(b.gep(atbl, [k])) if a_table else b.mul(k, _c(a_ks))
        for i in range(bl.mr):
            sv = self.splat(self.scalar(self.at(a_rows[i], ak) if by_rows else self.at(ap, i * a_rs)))
            new.append([self.mac(sv, bv[v], accs[i][v]) for v in range(nvec)])
        k2 = b.add(k, _c(1))
        ap2 = self.at(ap, a_ks)
        bp2 = self.at(bpp, b_ks)
        k.add_incoming(k2, body)
        ap.add_incoming(ap2, body)
        bpp.add_incoming(bp2, body)
        for i in range(bl.mr):
            for v in range(nvec):
                accs[i][v].add_incoming(new[i][v], body)
        b.cbranch(b.icmp_signed("<", k2, kc), body, out)
        b.position_at_end(out)
        full = b.and_(b.icmp_signed("==", mv, _c(bl.mr)), b.icmp_signed("==", nv, _c(nvec * bl.vl)))
        if cvs != 1:  # C's vector index is not its unit-stride one: every tile element by element
            full = L.Constant(L.IntType(1), 0)

        def store_full():
            for i in range(bl.mr):
                for v in range(nvec):
                    ptr = self.at(c, b.add(c_at(i), _c(v * bl.vl)) if c_rows else i * crs + v * bl.vl)
                    val = new[i][v]
                    cur = self.vload(ptr)
                    val = b.select(accum, self.add(val, cur), val)
                    self.vstore(val, ptr)

        def store_edge():
            for i in range(bl.mr):
                for v in range(nvec):
                    self.vstore(new[i][v], self.at(tmp, i * bl.nr + v * bl.vl))

            self.add_scratch(c, tmp, mv, nv, accum, c_at)
        self.if_(full, store_full, store_edge)
        b.ret_void()
        return fn

    # ---- driver
    def driver(self, ptrs_of):
        """``void s{i}(i8** bufs, float* work, i64 q_lo, q_hi, m_lo, m_hi, n_lo, n_hi)``: the
        rows [m_lo, m_hi) x columns [n_lo, n_hi) of batches [q_lo, q_hi) (flattened)."""
        p, bl = self.p, self.bl
        self.pack_b()
        self.pack_a()
        sm, sk = p.strides[p.a][p.row], p.strides[p.a][p.red]
        bk, bn = p.strides[p.b][p.red], p.strides[p.b][p.vec]
        pa, pb = self.mod.get_global(f"{self.pre}_pack_a"), self.mod.get_global(f"{self.pre}_pack_b")
        work, q_lo, q_hi, m_lo, m_hi, n_lo, n_hi, k_lo, k_hi, part = self.entry(ptrs_of)
        b = self.bld
        bpack, apack, aedge, bedge, partial, whole_a, cpad = (self.at(work, off) for off in self.offsets()[:7])
        table = self.k_table() if p.tables(p.b) else None
        compact = self.compact() if p.scratch_c else None
        klo, khi = p.k_steps()
        # A gathered (or through the K table) and read in place: each tile's row offsets
        row_offs = b.alloca(I64, size=bl.mr, name="row_offs") if self.a_by_rows() else None
        c_offs = b.alloca(I64, size=bl.mr, name="c_offs") if p.gathers_c() else None
        a_table = self.k_table() if row_offs is not None and p.tables(p.a) else None
        if bl.split_k:
            # part 0 adds into C, the others into a private copy of C's span (summed by
            # s{i}_reduce, which runs the epilogue: a part with less than the whole K does not)
            first = b.icmp_signed("==", part, _c(0))
            self.ptr[p.c] = b.select(first, self.ptr[p.c], partial)
            k_whole = b.and_(b.icmp_signed("==", k_lo, _c(klo)), b.icmp_signed("==", k_hi, _c(khi)))
            k_from, k_to = k_lo, k_hi
        else:
            first = k_whole = None
            k_from, k_to = _c(klo), _c(khi)

        ntaps = p.tap_points()
        pre = p.prepacks_a()
        if pre:
            # A varies only along the taps: pack it once here, every tap's K range of this
            # call's rows, not again for every batch iteration (a convolution's filter for each
            # output row: conv2d 8x128x58x58 * 128x3x3 repacked it 448 x 9 times)
            mcp = -(-bl.mc // bl.mr) * bl.mr
            krange = b.sub(k_to, k_from)
            per_tap = b.mul(b.mul(b.sdiv(b.add(b.sub(m_hi, m_lo), _c(bl.mc - 1)), _c(bl.mc)), _c(mcp)), krange)

            def a_block(t, ic, mc, pc):
                mcpad = b.mul(b.sdiv(b.add(mc, _c(bl.mr - 1)), _c(bl.mr)), _c(bl.mr))
                off = b.add(b.mul(t, per_tap), b.mul(b.sdiv(b.sub(ic, m_lo), _c(bl.mc)), b.mul(_c(mcp), krange)))
                return self.at(whole_a, b.add(off, b.mul(b.sub(pc, k_from), mcpad)))

            def pack_tap(t):
                A = self.operands(t)[0]  # taps are the innermost batch index: q = t is tap t

                def rows(ic):
                    mc = self.min(_c(bl.mc), b.sub(m_hi, ic))

                    def kblock(pc):
                        kc = self.min(_c(bl.kc), b.sub(k_to, pc))
                        b.call(pa, [a_block(t, ic, mc, pc), A, ic, mc, pc, kc])
                    self.loop(k_from, k_to, bl.kc, kblock, "ppc")
                self.loop(m_lo, m_hi, bl.mc, rows, "pic")
            self.loop(0, ntaps, 1, pack_tap, "pt")

        def columns(q, jc):
            """Columns [jc, jc + NC) of batch iteration q (a tap of a batch, with taps), every K block."""
            A, B, C = self.operands(q)
            if self.epilogue is not None:
                self.epi_args = self.batch_values(q)
            if p.scratch_c:  # tiles go to the scratch C, compacted into the batch's C after its last tap
                C = cpad
            nc = self.min(_c(bl.nc), b.sub(n_hi, jc))

            def kblock(pc):
                kc = self.min(_c(bl.kc), b.sub(k_to, pc))
                # the first K block stores, except onto a C it adds to (``+=``: part 0's)
                accum = b.icmp_signed("!=", pc, k_from) if p.init or bl.split_k else L.Constant(L.IntType(1), 1)
                if bl.split_k and not p.init:
                    accum = b.or_(accum, first)
                if p.taps and p.init:  # every tap but the first adds to what the earlier ones stored
                    accum = b.or_(accum, b.icmp_signed("!=", b.srem(q, _c(ntaps)), _c(0)))
                if bl.pack_b:
                    b.call(pb, [bpack, B, jc, nc, pc, kc])

                def iblock(ic, jr0=_c(0)):
                    mc = self.min(_c(bl.mc), b.sub(m_hi, ic))
                    ablk = apack
                    if pre:
                        ablk = a_block(b.srem(q, _c(ntaps)), ic, mc, pc)
                    elif bl.pack_a:
                        b.call(pa, [apack, A, ic, mc, pc, kc])

                    def jtile(jr):
                        nv = self.min(_c(bl.nr), b.sub(nc, jr))

                        def tiles(btile, b_ks):
                            def itile(ir):
                                mv = self.min(_c(bl.mr), b.sub(mc, ir))
                                m0 = b.add(ic, ir)
                                cols = b.mul(b.add(jc, jr), _c(p.strides[p.c][p.vec]))
                                if c_offs is not None:  # C's rows through their offsets
                                    ctile = self.at(C, cols)
                                    self.tile_rows(c_offs, m0, mv, self.c_row)
                                else:
                                    ctile = self.at(C, b.add(b.mul(m0, _c(p.strides[p.c][p.row])), cols))
                                c_extra = [c_offs] if c_offs is not None else []

                                def micro(a_rs, a_ks, at, a_extra=()):  # (B in place through the K table: its entry for pc)
                                    tbl = [b.gep(table, [_c(0), pc])] if b_ks == 0 else []
                                    self.call_micro(a_rs, a_ks, b_ks,
                                                    [at, btile, ctile, kc, mv, nv, accum] + tbl + list(a_extra) + c_extra)
                                if bl.pack_a:
                                    micro(1, bl.mr, self.at(ablk, b.mul(ir, kc)))
                                elif row_offs is not None:
                                    # A's rows in place through their offsets, k by its stride or
                                    # the K table from pc
                                    self.tile_rows(row_offs, m0, mv, self.a_row)
                                    if a_table is None:
                                        micro(-1, sk, self.at(A, b.mul(pc, _c(sk))), [row_offs])
                                    else:
                                        micro(-1, 0, A, [row_offs, b.gep(a_table, [_c(0), pc])])
                                else:
                                    def whole():
                                        micro(sm, sk, self.at(A, b.add(b.mul(m0, _c(sm)), b.mul(pc, _c(sk)))))

                                    def part():  # the last rows: a zero-padded panel
                                        b.call(pa, [aedge, A, m0, mv, pc, kc])
                                        micro(1, bl.mr, aedge)
                                    self.if_(b.icmp_signed("==", mv, _c(bl.mr)), whole, part)
                                self.finish_tile(pc, kc, khi, m0, mv, b.add(jc, jr), nv, k_whole)
                            self.loop(0, mc, bl.mr, itile, "ir")

                        if bl.pack_b:
                            tiles(self.at(bpack, b.mul(jr, self.b_steps(kc))), bl.nr)
                            return

                        def direct():
                            n0 = b.add(jc, jr)
                            tiles(self.at(B, b.add(b.mul(pc, _c(bk)), b.mul(n0, _c(bn)))), bk)

                        def edge():  # the last columns: a zero-padded panel
                            b.call(pb, [bedge, B, b.add(jc, jr), nv, pc, kc])
                            tiles(bedge, bl.nr)
                        self.if_(b.icmp_signed("==", nv, _c(bl.nr)), direct, edge)
                    self.loop(jr0, nc, bl.nr, jtile, "jr")
                    if self.epilogue is not None and p.gathers_c():
                        # C's rows stored element by element (its vec strided): the epilogue over
                        # the whole row block at once, along runs of rows that C holds one after
                        # another (a tile's few rows would leave nothing to vectorise)
                        self.if_(self.last_block(pc, kc, khi, k_whole), lambda: self.call_epilogue(
                            self.bufs, ic, mc, b.add(jc, jr0), b.sub(nc, jr0), self.epi_args))

                def blocks():
                    self.loop(m_lo, m_hi, bl.mc, iblock, "ic")
                if not p.streams():
                    blocks()
                    return

                def stream():  # whole tiles in one tight pass; ragged columns as usual
                    whole = b.mul(b.sdiv(nc, _c(bl.nr)), _c(bl.nr))
                    self.stream(A, B, C, pc, jc, whole, m_lo, accum, khi, k_whole)
                    self.if_(b.icmp_signed("<", whole, nc), lambda: iblock(m_lo, whole))
                full = b.and_(b.icmp_signed("==", kc, _c(bl.kc)), b.icmp_signed("==", b.sub(m_hi, m_lo), _c(bl.mr)))
                self.if_(full, stream, blocks)
            self.loop(k_from, k_to, bl.kc, kblock, "pc")

        if p.scratch_c:
            # a padded C is as long as all of a batch's output rows: each column block takes
            # every tap in turn while its part of the scratch C is in cache, then is compacted
            def group(q0):
                def jblock(jc):
                    self.loop(0, ntaps, 1, lambda t: columns(b.add(q0, t), jc), "t")
                    jend = self.min(b.add(jc, _c(bl.nc)), n_hi)
                    b.call(compact, [self.operands(q0)[2], cpad, m_lo, m_hi, jc, jend])
                    if self.epilogue is not None:
                        self.epi_args = self.batch_values(q0)
                        self.padded_epilogue(m_lo, m_hi, jc, jend)
                self.loop(n_lo, n_hi, bl.nc, jblock, "jc")
            self.loop(q_lo, q_hi, ntaps, group, "q")
        else:
            self.loop(q_lo, q_hi, 1, lambda q: self.loop(n_lo, n_hi, bl.nc, lambda jc: columns(q, jc), "jc"), "q")
        b.ret_void()

    def k_table(self):
        """The offset of every reduction step of a plan whose taps are folded into K (k's
        channel and tap) in the operand ``kfold`` names, as a constant table (made once): B is
        packed through it or read in place by the micro-kernel through it, A likewise;
        PREFETCH more entries repeat the last, for the prefetches that run ahead."""
        p, bl = self.p, self.bl
        g = self.mod.globals.get(f"{self.pre}_koffs")
        if g is not None:
            return g
        _, extents, strides = p.kfold[:3]
        offs = []
        for k in range(prod(extents)):
            off, rest = 0, k
            for d, (e, st) in enumerate(zip(extents, strides)):
                inner = prod(extents[d + 1:])
                off += (rest // inner) * st
                rest %= inner
            offs.append(off)
        offs += [offs[-1]] * bl.prefetch
        ty = L.ArrayType(I64, len(offs))
        g = L.GlobalVariable(self.mod, ty, name=f"{self.pre}_koffs")
        g.global_constant = True
        g.linkage = "internal"
        g.initializer = L.Constant(ty, offs)
        return g

    def compact(self):
        """``compact(c, scratch, m_lo, m_hi, n_lo, n_hi)``: scratch rows [m_lo, m_hi), columns
        [n_lo, n_hi), into C.  The scratch's columns are runs, each copied to its place in C: a
        padded plan's runs are C's rows, W apart in the scratch, of which the first Wo columns
        are kept (the rest is the overlap with the next row, dropped); an im2col plan's are
        every batch's Ho * Wo pixels, one after another."""
        p = self.p
        srow = p.strides[p.c][p.row]
        if p.im2col:
            _, _, _, _, ho, wo, _, _, _, c_n, c_row = p.im2col
            period, length, dst_period = ho * wo, ho * wo, c_n
        else:
            _, _, wpad, _, wo, c_row = p.pad
            period, length, dst_period = wpad, wo, wo
        fp = F32.as_pointer()
        outer = self.fn, self.bld
        fn = self.func("compact", [fp, fp, I64, I64, I64, I64])
        c, src, m_lo, m_hi, n_lo, n_hi = fn.args
        b = self.bld

        def row(m):
            dst_m = self.at(c, b.mul(m, _c(c_row)))
            src_m = self.at(src, b.mul(m, _c(srow)))

            def run(q, start, lo, hi):
                d, s_ = self.at(dst_m, b.mul(q, _c(dst_period))), self.at(src_m, start)
                self.loop(lo, hi, 1, lambda j: b.store(b.load(self.at(s_, j)), self.at(d, j)), "j")
            self.runs(n_lo, n_hi, period, length, run)
        self.loop(m_lo, m_hi, 1, row, "m")
        b.ret_void()
        self.fn, self.bld = outer
        return fn

    def stream(self, A, B, C, pc, jc, cols, m0, accum, khi: int, k_whole):
        """One whole K block (KC rows of B) of one whole row tile (MR rows at m0), columns
        [jc, jc + cols) in NR-wide tiles, as a single loop: the KC x MR scalars of A broadcast
        once, then per tile KC x NV loads of B, KC x MR x NV FMAs and the C update.  This is
        the GEMV of a GRU step at batch 1-4 streaming its weights from memory: the general
        tile loop spent ~100 instructions of set-up per 16 FMAs there (spilled loop state,
        the micro-kernel's edge checks), more than the out-of-order window hides.  Sums as
        the micro-kernel does (from zero, then added to C), so results match the general path."""
        p, bl, b = self.p, self.bl, self.bld
        sm, sk = p.strides[p.a][p.row], p.strides[p.a][p.red]
        bk, bn = p.strides[p.b][p.red], p.strides[p.b][p.vec]
        crs, cvs = p.strides[p.c][p.row], p.strides[p.c][p.vec]
        zero = L.Constant(self.vt, [0.0] * bl.vl)
        a = [[self.splat(b.load(self.at(A, b.add(b.mul(b.add(m0, _c(i)), _c(sm)), b.mul(b.add(pc, _c(g)), _c(sk))))))
              for g in range(bl.kc)] for i in range(bl.mr)]
        brow = self.at(B, b.mul(pc, _c(bk)))

        def tiles(add: bool, epilogue: bool):
            def tile(j):
                n0 = b.add(jc, j)
                acc = [[zero] * bl.nv for _ in range(bl.mr)]
                for g in range(bl.kc):
                    row = self.at(brow, b.add(_c(g * bk), b.mul(n0, _c(bn))))
                    bv = [self.vload(self.at(row, v * bl.vl)) for v in range(bl.nv)]
                    acc = [[b.call(self.fma, [a[i][g], bv[v], acc[i][v]]) for v in range(bl.nv)] for i in range(bl.mr)]
                for i in range(bl.mr):
                    ci = self.at(C, b.add(b.mul(b.add(m0, _c(i)), _c(crs)), b.mul(n0, _c(cvs))))
                    for v in range(bl.nv):
                        ptr = self.at(ci, v * bl.vl)
                        self.vstore(b.fadd(acc[i][v], self.vload(ptr)) if add else acc[i][v], ptr)
                if epilogue:
                    self.call_epilogue(self.bufs, m0, _c(bl.mr), n0, _c(bl.nr), self.epi_args)
            return lambda: self.loop(0, cols, bl.nr, tile, "js")

        # the loop-invariant choices made outside the loop (LLVM kept them in it, with the
        # epilogue inlined into the tile loop, spilling its state)
        def adding(epilogue: bool):
            return lambda: self.if_(accum, tiles(True, epilogue), tiles(False, epilogue))
        if self.epilogue is None:
            adding(False)()
            return
        self.if_(self.last_block(pc, _c(bl.kc), khi, k_whole), adding(True), adding(False))

    def reduce(self):
        """``void s{i}_reduce(i8** bufs, i64* works, i64 parts, m_lo, m_hi, n_lo, n_hi)``: after a
        split K, C += the partial sums in the scratch of parts 1.. (``works``: each part's
        scratch), over rows [m_lo, m_hi) x columns [n_lo, n_hi), then the fused epilogue there."""
        p = self.p
        fp = F32.as_pointer()
        i8pp = L.PointerType(L.IntType(8)).as_pointer()
        fn = L.Function(self.mod, L.FunctionType(L.VoidType(), [i8pp, I64.as_pointer()] + [I64] * 5),
                        name=f"{self.pre}_reduce")
        self.fn = fn
        self.bld = b = L.IRBuilder(fn.append_basic_block("entry"))
        bufs, works, parts, m_lo, m_hi, n_lo, n_hi = fn.args
        c = self.at(b.bitcast(b.load(b.gep(bufs, [L.Constant(I32, self.ptrs_of[p.c])])), fp), p.base[p.c])
        crs, cvs = p.strides[p.c][p.row], p.strides[p.c][p.vec]
        off = self.offsets()[4] + p.base[p.c]

        def part(q):
            src = self.at(b.inttoptr(b.load(self.at(works, q)), fp), off)

            def row(m):
                r = b.mul(m, _c(crs))

                def col(n):
                    at = b.add(r, b.mul(n, _c(cvs)))
                    dst = self.at(c, at)
                    b.store(b.fadd(b.load(dst), b.load(self.at(src, at))), dst)
                self.loop(n_lo, n_hi, 1, col, "n")
            self.loop(m_lo, m_hi, 1, row, "m")
        self.loop(1, parts, 1, part, "part")
        if self.epilogue is not None:
            self.call_epilogue(bufs, m_lo, b.sub(m_hi, m_lo), n_lo, b.sub(n_hi, n_lo), [])
        b.ret_void()
        return fn

    def offsets(self) -> list[int]:
        """Float offsets in the per-thread scratch: packed B block, packed A block, A edge
        panel, B edge panel, a split K's partial sums, the whole packed A (``prepacks_a``),
        a padded or im2col plan's scratch C (``Contraction.scratch_c``), and the end."""
        bl = self.bl
        pre = self.p.prepacks_a()
        sizes = [self.b_steps(bl.kc) * (-(-bl.nc // bl.nr) * bl.nr) if bl.pack_b else 0,
                 self.pack_a_floats() + bl.mr * (bl.kc + bl.vl) if bl.pack_a and not pre else 0, bl.mr * bl.kc,
                 bl.nr * bl.kc, self.p.c_span() if bl.split_k else 0,
                 # the whole packed A, and past its end room for the last block's staging
                 self.p.prepack_floats() + self.pack_a_floats() + bl.mr * (bl.kc + bl.vl) if pre else 0,
                 self.p.scratch_floats()]
        out = [0]
        for x in sizes:
            out.append(out[-1] + -(-x // 16) * 16)  # 64-byte aligned parts
        return out

    def pack_a_floats(self) -> int:
        """The packed A block, with room for pack_a's column stores, which run VL - MR floats
        past a panel's last column; pack_a stages rows right after it."""
        bl = self.bl
        return -(-((-(-bl.mc // bl.mr) * bl.mr) * bl.kc + bl.vl) // 16) * 16

    def workspace(self) -> int:
        """Floats of per-thread scratch the driver needs."""
        return self.offsets()[-1]


class _EmitDot(_Emit):
    """The dot-product form: for each tile of MR rows, MR x N vector accumulators along k
    (A rows read in place, B packed transposed per K block), summed across lanes at the end,
    a scalar loop for the last K % VL steps."""

    def pack_bt(self):
        """pack_bt(Bt, B, n_lo, n_hi, pc, kc): Bt[n - n_lo][kk] = B[pc + kk, n]."""
        p = self.p
        fp = F32.as_pointer()
        fn = self.func("pack_bt", [fp, fp, I64, I64, I64, I64])
        bt, src, nlo, nhi, pc, kc = fn.args
        sk, sn = p.strides[p.b][p.red], p.strides[p.b][p.vec]
        b = self.bld

        def col(n):
            d0 = b.mul(b.sub(n, nlo), kc)
            s0 = b.add(b.mul(pc, _c(sk)), b.mul(n, _c(sn)))

            def copy(kk):
                b.store(b.load(self.at(src, b.add(s0, b.mul(kk, _c(sk))))), self.at(bt, b.add(d0, kk)))
            self.loop(0, kc, 1, copy, "kk")
        self.loop(nlo, nhi, 1, col, "n")
        b.ret_void()
        return fn

    def hsum(self, v):
        """Sum of a vector's lanes by halving shuffles."""
        b, n = self.bld, self.bl.vl
        while n > 1:
            h = n // 2
            lo = b.shuffle_vector(v, v, L.Constant(L.VectorType(I32, h), list(range(h))))
            hi = b.shuffle_vector(v, v, L.Constant(L.VectorType(I32, h), list(range(h, n))))
            v = b.fadd(lo, hi)
            n = h
        return b.extract_element(v, L.Constant(I32, 0)) if isinstance(v.type, L.VectorType) else v

    def micro_dot(self, rows: int, cols: int):
        """micro(a, bt, c, kc, ncols, accumulate): C[0:rows, 0:cols] (+)= A[0:rows, 0:kc] . Bt[0:cols, 0:kc]."""
        p, bl = self.p, self.bl
        fp = F32.as_pointer()
        fn = self.func(f"dot_{rows}", [fp, fp, fp, I64, L.IntType(1)])
        fn.attributes.add("alwaysinline")
        a, bt, c, kc, accum = fn.args
        b = self.bld
        sm = p.strides[p.a][p.row]
        crs, cns = p.strides[p.c][p.row], p.strides[p.c][p.vec]
        vl = bl.vl
        kv = b.mul(b.sdiv(kc, _c(vl)), _c(vl))
        zero = L.Constant(self.vt, [0.0] * vl)
        entry = b.block
        head = fn.append_basic_block("k.head")
        body = fn.append_basic_block("k.body")
        done = fn.append_basic_block("k.done")
        b.branch(head)
        b.position_at_end(head)
        k = b.phi(I64, name="k")
        accs = [[b.phi(self.vt) for _ in range(cols)] for _ in range(rows)]
        k.add_incoming(_c(0), entry)
        for r in accs:
            for x in r:
                x.add_incoming(zero, entry)
        b.cbranch(b.icmp_signed("<", k, kv), body, done)
        b.position_at_end(body)
        av = [self.vload(self.at(a, b.add(_c(i * sm), k))) for i in range(rows)]
        bv = [self.vload(self.at(bt, b.add(b.mul(_c(n), kc), k))) for n in range(cols)]
        new = [[b.call(self.fma, [av[i], bv[n], accs[i][n]]) for n in range(cols)] for i in range(rows)]
        k.add_incoming(b.add(k, _c(vl)), body)
        for i in range(rows):
            for n in range(cols):
                accs[i][n].add_incoming(new[i][n], body)
        b.branch(head)
        b.position_at_end(done)
        sums = [[self.hsum(accs[i][n]) for n in range(cols)] for i in range(rows)]
        # the last kc % VL steps
        pre = b.block
        thead = fn.append_basic_block("t.head")
        tbody = fn.append_basic_block("t.body")
        tdone = fn.append_basic_block("t.done")
        b.branch(thead)
        b.position_at_end(thead)
        t = b.phi(I64)
        t.add_incoming(kv, pre)
        ss = [[b.phi(F32) for _ in range(cols)] for _ in range(rows)]
        for i in range(rows):
            for n in range(cols):
                ss[i][n].add_incoming(sums[i][n], pre)
        b.cbranch(b.icmp_signed("<", t, kc), tbody, tdone)
        b.position_at_end(tbody)
        ax = [b.load(self.at(a, b.add(_c(i * sm), t))) for i in range(rows)]
        bx = [b.load(self.at(bt, b.add(b.mul(_c(n), kc), t))) for n in range(cols)]
        for i in range(rows):
            for n in range(cols):
                ss[i][n].add_incoming(b.fadd(ss[i][n], b.fmul(ax[i], bx[n])), tbody)
        t.add_incoming(b.add(t, _c(1)), tbody)
        b.branch(thead)
        b.position_at_end(tdone)
        for i in range(rows):
            for n in range(cols):
                ptr = self.at(c, i * crs + n * cns)
                v = ss[i][n]
                b.store(b.select(accum, b.fadd(v, b.load(ptr)), v), ptr)
        b.ret_void()
        return fn

    def driver(self, ptrs_of):
        """Same signature as the broadcast form's driver; the column range is always whole."""
        p, bl = self.p, self.bl
        packer = self.pack_bt()
        cols = p.extent(p.vec)
        mlo_all, mhi_all = p.dom[p.row]
        edge_rows = (mhi_all - mlo_all) % bl.mr
        full = self.micro_dot(bl.mr, cols)
        edge = self.micro_dot(edge_rows, cols) if edge_rows else None
        work, q_lo, q_hi, m_lo, m_hi, n_lo, n_hi, _, _, _ = self.entry(ptrs_of)  # K always whole
        b = self.bld
        klo, khi = p.dom[p.red]
        sm, crs, cns = p.strides[p.a][p.row], p.strides[p.c][p.row], p.strides[p.c][p.vec]

        def batch(q):
            A, B, C = self.operands(q)
            C = self.at(C, b.mul(n_lo, _c(cns)))
            if self.epilogue is not None:
                self.epi_args = self.batch_values(q)

            def kblock(pc):
                kc = self.min(_c(bl.kc), b.sub(_c(khi), pc))
                accum = b.icmp_signed("!=", pc, _c(klo)) if p.init else L.Constant(L.IntType(1), 1)
                b.call(packer, [work, B, n_lo, n_hi, pc, kc])
                a0 = b.mul(pc, _c(p.strides[p.a][p.red]))

                def tile(m0):
                    args = [self.at(A, b.add(a0, b.mul(m0, _c(sm)))), work, self.at(C, b.mul(m0, _c(crs))), kc, accum]
                    if edge is None:
                        b.call(full, args)
                    else:
                        self.if_(b.icmp_signed("<=", b.add(m0, _c(bl.mr)), m_hi),
                                 lambda: b.call(full, args), lambda: b.call(edge, args))
                    self.finish_tile(pc, kc, khi, m0, self.min(_c(bl.mr), b.sub(m_hi, m0)), n_lo, b.sub(n_hi, n_lo))
                self.loop(m_lo, m_hi, bl.mr, tile, "m")
            self.loop(klo, khi, bl.kc, kblock, "pc")
        self.loop(q_lo, q_hi, 1, batch, "q")
        b.ret_void()

    def workspace(self) -> int:
        return self.bl.kc * self.p.extent(self.p.vec) + 16


# element types as this backend holds them (bfloat16 as float32 values already rounded)
HELD = {"int8": L.IntType(8), "int16": L.IntType(16), "int32": I32, "bfloat16": F32, "float32": F32}
I8, I16 = L.IntType(8), L.IntType(16)
# (lanes -> intrinsic) of the integer dot products: pairs of int16 (vpmaddwd, + the add: LLVM
# fuses the two into vpdpwssd where the host has AVX512-VNNI) and fours of unsigned x signed bytes
PMADDWD = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd", 4: "llvm.x86.sse2.pmadd.wd"}
VPDPBUSD = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256", 4: "llvm.x86.avx512.vpdpbusd.128"}


class _EmitGroups(_Emit):
    """The integer form (``form == "group"``): int8 (or int16) operands, an int32 C, on an
    instruction whose lanes each sum G products of consecutive k steps: G = 2, a pair of int16
    (vdot2_i16: vpmaddwd, fused with the add into vpdpwssd on AVX512-VNNI), or G = 4, four
    bytes (vdot4_i8: vpdpbusd).  The driver is the float one with K counted in groups
    (``Contraction.k_steps``): both operands are packed as 32-bit words of one element's G
    consecutive k steps, widened to int16 for pairs, the last group of a K that G does not
    divide padded with zeros; the micro-kernel broadcasts one word of A per row and group
    against NV word vectors of B.  vpdpbusd multiplies unsigned by signed bytes: A's bytes are
    packed plus 128 (their top bit flipped), and each B panel carries, after its K block, -128
    times each column's sum over the block, where the micro-kernel's accumulators start, so
    the sums come out as the signed products' (``_column_sums``).  The tile form
    (``_EmitTiles``) shares the packing, bfloat16 operands too (their top 16 bits as words'
    halves: exact on values held as float32 already rounded)."""

    def __init__(self, mod: L.Module, p: Contraction):
        self.et = HELD[p.dtypes[2]]
        super().__init__(mod, p)
        vl, g = self.bl.vl, p.group
        self.floats = self.et == F32  # (bfloat16 operands: their bits as int16)
        self.lane = {2: I16, 4: I8}[g]  # each word's G elements
        self.wt = L.VectorType(self.lane, g * vl)  # a word vector as the instruction's elements
        self.src = {n: HELD[d] for n, d in zip((p.a, p.b, p.c), p.dtypes)}
        self.sums = g == 4 and p.form == "group"  # B panels carry their columns' sums (the unsigned A's correction)
        if p.form == "group":
            name = (PMADDWD if g == 2 else VPDPBUSD)[vl]
            args = [self.wt, self.wt] if g == 2 else [self.vt, self.wt, self.wt]
            self.dot = mod.globals.get(name) or L.Function(mod, L.FunctionType(self.vt, args), name=name)

    def entry(self, ptrs_of):
        args = super().entry(ptrs_of)
        for name, ty in self.src.items():  # A and B read as int8, int16 or float32 elements, C as held
            self.ptr[name] = self.bld.bitcast(self.ptr[name], ty.as_pointer())
        return args

    def scalar(self, ptr):
        return self.bld.load(self.bld.bitcast(ptr, I32.as_pointer()))

    def mac(self, a, bv, acc):
        b = self.bld
        a, bv = b.bitcast(a, self.wt), b.bitcast(bv, self.wt)
        if self.sums:
            return b.call(self.dot, [acc, a, bv])  # (the unsigned operand second)
        return b.add(acc, b.call(self.dot, [a, bv]))

    def add(self, x, y):
        return self.bld.fadd(x, y) if self.floats else self.bld.add(x, y)

    def b_steps(self, kc):
        if not self.sums:
            return kc
        return kc + 1 if isinstance(kc, int) else self.bld.add(kc, _c(1))

    def acc_init(self, bp, kc, nvec: int) -> list:
        if not self.sums:
            return super().acc_init(bp, kc, nvec)
        sums = self.at(bp, self.bld.mul(kc, _c(self.bl.nr)))
        return [self.vload(self.at(sums, v * self.bl.vl)) for v in range(nvec)]

    def _widen(self, v, operand: str):
        """Elements (a value or a vector) of ``operand`` as the words hold them: int16 for pairs,
        bytes for fours, A's with the top bit flipped (plus 128: unsigned) for vpdpbusd,
        bfloat16's bits (a float32's top half: exact on values already rounded)."""
        b = self.bld
        vec = isinstance(v.type, L.VectorType)
        lane = L.VectorType(self.lane, v.type.count) if vec else self.lane
        if self.floats:
            wide = L.VectorType(I32, v.type.count) if vec else I32
            return b.trunc(b.lshr(b.bitcast(v, wide), L.Constant(wide, [16] * v.type.count if vec else 16)), lane)
        if v.type != lane:
            v = b.sext(v, lane)
        if self.sums and operand == self.p.a:
            v = b.xor(v, L.Constant(lane, [0x80] * lane.count if isinstance(lane, L.VectorType) else 0x80))
        return v

    def _pack(self, name: str, operand: str, across: str, width: int, by_rows: bool = False):
        """``name(P, X, x0, xn, pc, kc)``: panels of ``width`` elements of ``operand`` along
        ``across`` (rows [x0, x0 + xn)), each group kk of [pc, pc + kc) a row of ``width``
        words, element (kk, i)'s word X[x0 + q + i, k] for the group's k steps; 0 past xn and
        K.  Rows unit-stride along ``across`` take whole vectors of the G k steps, interleaved
        (B); rows unit-stride along k, VL groups of up to VL rows transposed in registers (A).
        ``by_rows``: each element's row of kc words one after another instead (a tile's A).
        A's rows may be gathered (an NHWC convolution's pixels: each row's offset decoded) and
        its k steps at the K table's offsets (the taps folded into K): the vector paths then
        take runs of whole vectors along k, which the table keeps contiguous where the
        innermost folded extent (the channels) is a multiple of a vector's steps."""
        p, bl = self.p, self.bl
        fp = F32.as_pointer()
        src_t = self.src[operand]
        fn = self.func(name, [fp, src_t.as_pointer(), I64, I64, I64, I64])
        dst, src, x0, xn, pc, kc = fn.args
        b = self.bld
        dl = b.bitcast(dst, self.lane.as_pointer())
        sx, sk = p.strides[operand][across], p.strides[operand][p.red]
        klo, khi = p.dom[p.red]
        g, vl = p.group, bl.vl
        sums = self.sums and operand == p.b
        steps = self.b_steps(kc) if operand == p.b else kc
        gathered = operand == p.a and p.gathers_a()
        table = self.k_table() if p.tables(operand) else None
        # (runs through the table: VL groups from a multiple of VL lie in one run of channels)
        runs = table is None or (bl.kc % vl == 0 and p.kfold[1][-1] % (g * vl) == 0)

        def row_off(x):  # the element offset of row x (gathered rows: decoded from x)
            return self.a_row(x) if operand == p.a else b.mul(x, _c(sx))

        def k_off(k):  # the element offset of step k (through the K table where taps fold into K)
            return b.load(b.gep(table, [_c(0), k])) if table is not None else b.mul(k, _c(sk))

        def k_at(kk, e=0):  # the k of step e of group pc + kk
            return b.add(_c(klo), b.add(b.mul(b.add(pc, kk), _c(g)), _c(e)))

        def k_of(kk, e):  # (k_at clamped into K; whether it is in K)
            k = k_at(kk, e)
            return self.min(k, _c(khi - 1)), b.icmp_signed("<", k, _c(khi))

        # groups from pc whose G steps all lie in K, in whole vectors of VL groups (the rest,
        # and any past K, one by one)
        kv = b.mul(b.sdiv(self.min(kc, b.sdiv(b.sub(_c(khi - klo), b.mul(pc, _c(g))), _c(g))), _c(vl)), _c(vl))
        words = b.bitcast(dst, I32.as_pointer())
        # the column sums' accumulators (in the entry block: one stack slot, not one per panel)
        acc = b.alloca(self.vt, size=width // vl, name="sums") if sums else None

        def panel(q):
            xv = self.min(_c(width), b.sub(xn, q))
            dst0 = b.mul(q, steps)  # panel q/width starts at q*steps words

            def scalar(kk0, hi):
                def group(kk):
                    ks = [k_of(kk, e) for e in range(g)]

                    def word(i):
                        x = b.add(x0, b.add(q, self.min(i, b.sub(xv, _c(1)))))  # (clamped: a valid row)
                        inside = b.icmp_signed("<", i, xv)
                        w_at = b.add(b.mul(i, kc), kk) if by_rows else b.add(b.mul(kk, _c(width)), i)
                        at = b.mul(b.add(dst0, w_at), _c(g))
                        ro = row_off(x)
                        for e, (k, ok) in enumerate(ks):
                            v = self._widen(b.load(self.at(src, b.add(ro, k_off(k)))), operand)
                            b.store(b.select(b.and_(ok, inside), v, L.Constant(self.lane, 0)), self.at(dl, b.add(at, _c(e))))
                    self.loop(0, width, 1, word, "i")
                self.loop(kk0, hi, 1, group, "kk")

            whole = b.icmp_signed("==", xv, _c(width))

            def steps_of(kk, t, e):  # element offset of step e of group kk + t (in K) along K
                return k_off(k_at(b.add(kk, _c(t)), e))

            def blocks(body):
                def vector():
                    self.loop(0, kv, vl, body, "kk")
                    scalar(kv, kc)
                self.if_(whole, vector, lambda: scalar(_c(0), kc))
            pow2 = not vl & (vl - 1)
            if by_rows and sk == 1 and runs:
                # A(m, k) into rows of words: VL words of each row at a time
                def rows(kk):
                    def row(i):
                        x = b.add(x0, b.add(q, i))
                        w = self._widen(self.vload_of(self.at(src, b.add(row_off(x), steps_of(kk, 0, 0))), src_t,
                                                      g * vl), operand)
                        at = b.mul(b.add(dst0, b.add(b.mul(i, kc), kk)), _c(g))
                        b.store(w, b.bitcast(self.at(dl, at), self.wt.as_pointer()), align=1)
                    self.loop(0, width, 1, row, "i")
                blocks(rows)
            elif by_rows and sx == 1 and width % vl == 0 and pow2 and not gathered and table is None:
                # A(k, m) into rows of words: for VL rows, VL groups' words (each from the group's
                # G rows of A interleaved), transposed in registers into each row's VL words
                def transposed(kk):
                    for i0 in range(0, width, vl):
                        cols = [b.bitcast(self.interleave([self._widen(self.vload_of(self.at(src, b.add(
                            steps_of(kk, t, e), b.add(x0, b.add(q, _c(i0))))), src_t, vl), operand) for e in range(g)]),
                            self.vt) for t in range(vl)]
                        for i, w in enumerate(self.transpose(cols)):
                            self.vstore(w, self.at(words, b.add(dst0, b.add(b.mul(_c(i0 + i), kc), kk))))
                blocks(transposed)
            elif sx == 1 and (width % vl == 0 or width < vl) and not by_rows and not gathered and table is None:
                # B(k, n), or a TN GEMM's A(k, m): each vector of n (m) from the group's G rows,
                # interleaved.  A panel narrower than a vector stores a whole one, its lanes past
                # the panel overwritten by the next group's row (the packed block has room past
                # its end), where the operand has that many elements past the panel to load
                nvec = max(1, width // vl)

                def vector():
                    def group(kk):
                        rows = []
                        for e in range(g):
                            k, ok = k_of(kk, e)
                            base = b.add(b.mul(k, _c(sk)), b.add(x0, q))
                            vs = [self._widen(self.vload_of(self.at(src, b.add(base, _c(v * vl))), src_t, vl), operand)
                                  for v in range(nvec)]
                            rows.append([b.select(ok, x, L.Constant(x.type, None)) for x in vs])
                        for v in range(nvec):
                            at = b.mul(b.add(dst0, b.add(b.mul(kk, _c(width)), _c(v * vl))), _c(g))
                            b.store(self.interleave([r[v] for r in rows]), b.bitcast(self.at(dl, at), self.wt.as_pointer()),
                                    align=1)
                    self.loop(0, kc, 1, group, "kk")
                if width < vl:  # (the loads' last lane within the operand's extent along ``across``)
                    whole = b.and_(whole, b.icmp_signed("<=", b.add(x0, b.add(q, _c(vl))), _c(p.dom[across][1])))
                self.if_(whole, vector, lambda: scalar(_c(0), kc))
            elif sk == 1 and (width <= vl or width % vl == 0) and pow2 and not by_rows and runs:
                # A(m, k) (or an NT GEMM's B(n, k)): VL groups of each row as one vector of words,
                # VL rows at a time transposed in registers into each group's words
                def transposed(kk):
                    for j0 in range(0, width, vl):
                        rows = [b.bitcast(self._widen(self.vload_of(self.at(src, b.add(
                            row_off(b.add(x0, b.add(q, _c(i)))), steps_of(kk, 0, 0))), src_t, g * vl), operand), self.vt)
                            for i in range(j0, min(width, j0 + vl))]
                        self.store_transposed(rows, self.at(words, b.add(dst0, b.add(b.mul(kk, _c(width)), _c(j0)))), width)
                blocks(transposed)
            else:
                scalar(_c(0), kc)
            if sums:
                self._column_sums(b.bitcast(self.at(dst, dst0), I32.as_pointer()), kc, width, acc)
        self.loop(0, xn, width, panel, "q")
        b.ret_void()

    def _column_sums(self, panel, kc, width: int, acc):
        """After a B panel's kc word rows: -128 x each column's sum of its bytes (the dot
        product of each word with four unsigned ones, the instruction itself), summed in
        ``acc`` (a stack slot of a vector per VL columns)."""
        b, vl = self.bld, self.bl.vl
        ones = L.Constant(self.wt, [1] * self.wt.count)
        for v in range(width // vl):
            slot = b.gep(acc, [_c(v)])
            b.store(L.Constant(self.vt, None), slot)

            def step(kk):
                w = b.bitcast(self.vload(self.at(panel, b.add(b.mul(kk, _c(width)), _c(v * vl)))), self.wt)
                b.store(b.call(self.dot, [b.load(slot), ones, w]), slot)
            self.loop(0, kc, 1, step, "kk")
            self.vstore(b.mul(b.load(slot), L.Constant(self.vt, [-128] * vl)),
                        self.at(panel, b.add(b.mul(kc, _c(width)), _c(v * vl))))

    def interleave(self, rows: list):
        """G vectors of VL lanes -> one of G x VL: element j of each row side by side, in order."""
        b = self.bld
        while len(rows) > 1:
            n = rows[0].type.count
            mask = L.Constant(L.VectorType(I32, 2 * n), [t // 2 + (t % 2) * n for t in range(2 * n)])
            rows = [b.shuffle_vector(rows[i], rows[i + 1], mask) for i in range(0, len(rows), 2)]
            if len(rows) > 1:  # pairs become the next round's elements
                bits = rows[0].type.element.width * 2
                rows = [b.bitcast(r, L.VectorType(L.IntType(bits), n)) for r in rows]
        return b.bitcast(rows[0], self.wt)

    def vload_of(self, ptr, elem, n: int):
        """n elements of type ``elem`` at ptr (unaligned)."""
        b = self.bld
        return b.load(b.bitcast(ptr, L.VectorType(elem, n).as_pointer()), align=1)

    def pack_b(self):
        self._pack("pack_b", self.p.b, self.p.vec, self.bl.nr)

    def pack_a(self):
        self._pack("pack_a", self.p.a, self.p.row, self.bl.mr)


class _EmitTiles(_EmitGroups):
    """The tile form (``form == "tile"``): AMX's tile multiply (tdpbf16ps on bfloat16 into
    float32, tdpbssd on int8 into int32), TM x TN tiles of C per micro-kernel call (the
    blocking's MR / rows x NV: 2 x 2) in the first tile registers, then TM tiles of A and TN of
    B, loaded per K step of a tile's words.  Both operands are packed as for the grouped form, B's words [k][n] (the layout a B
    tile wants: each row the G k steps of 16 columns side by side), A's [m][k] (each tile row
    one element's run along K); K is padded with zero words to whole tiles
    (``Contraction.k_steps``), so every call multiplies whole tiles, and an edge tile (rows or
    columns past C's end, or a C not unit-stride along n) is stored to a scratch tile and
    added element by element.  Each call of the driver configures the tiles first
    (ldtilecfg: all 8 of them) and releases them after (tilerelease)."""

    def __init__(self, mod: L.Module, p: Contraction):
        super().__init__(mod, p)
        i8p = I8.as_pointer()

        def intrinsic(name, args):
            return mod.globals.get(name) or L.Function(mod, L.FunctionType(L.VoidType(), args), name=name)
        self.ldtilecfg = intrinsic("llvm.x86.ldtilecfg", [i8p])
        self.tilerelease = intrinsic("llvm.x86.tilerelease", [])
        self.tileload = intrinsic("llvm.x86.tileloadd64", [I8, i8p, I64])
        self.tilestore = intrinsic("llvm.x86.tilestored64", [I8, i8p, I64])
        self.tilezero = intrinsic("llvm.x86.tilezero", [I8])
        self.tdp = intrinsic("llvm.x86.tdpbf16ps" if self.floats else "llvm.x86.tdpbssd", [I8, I8, I8])
        self.tm, self.tn = self.bl.mr // p.tile[0], self.bl.nv  # tiles of C down and across

    def c_tiles(self):
        """(tile register, its tile row, its tile column) of each of C's tiles."""
        return [(ti * self.tn + tj, ti, tj) for ti in range(self.tm) for tj in range(self.tn)]

    def a_tile(self, ti: int) -> int:
        return self.tm * self.tn + ti

    def b_tile(self, tj: int) -> int:
        return self.tm * self.tn + self.tm + tj

    def config(self):
        """The tile configuration (palette 1): C's tiles rows x columns, A's rows x words, B's
        words x columns, each row's bytes then the rows (a 64-byte constant)."""
        rows, cols, words = self.p.tile
        cfg = [0] * 64
        cfg[0] = 1
        shapes = [(rows, 4 * cols)] * (self.tm * self.tn) + [(rows, 4 * words)] * self.tm + [(words, 4 * cols)] * self.tn
        for t, (r, nbytes) in enumerate(shapes):
            cfg[16 + 2 * t], cfg[17 + 2 * t], cfg[48 + t] = nbytes & 0xFF, nbytes >> 8, r
        ty = L.ArrayType(I8, 64)
        g = L.GlobalVariable(self.mod, ty, name=f"{self.pre}_tilecfg")
        g.global_constant, g.linkage, g.align = True, "internal", 64
        g.initializer = L.Constant(ty, cfg)
        return g

    def entry(self, ptrs_of):
        args = super().entry(ptrs_of)
        self.bld.call(self.ldtilecfg, [self.bld.bitcast(self.config(), I8.as_pointer())])
        return args

    def driver(self, ptrs_of):
        super().driver(ptrs_of)
        b = self.bld
        b.position_before(b.block.terminator)
        b.call(self.tilerelease, [])

    def pack_a(self):
        self._pack("pack_a", self.p.a, self.p.row, self.bl.mr, by_rows=True)

    def call_micro(self, a_rs: int, a_ks: int, b_ks: int, args: list):
        self.bld.call(self.micro(a_rs, a_ks, b_ks), args)  # (whole tiles always: no narrower variants)

    def _micro(self, name: str, a_rs: int, a_ks: int, b_ks: int, nvec: int):
        p, bl = self.p, self.bl
        rows, cols, words = p.tile
        fp = F32.as_pointer()
        fn = self.func(name, [fp, fp, self.et.as_pointer(), I64, I64, I64, L.IntType(1)])
        a, bp, c, kc, mv, nv, accum = fn.args
        b = self.bld
        tmp = b.alloca(self.et, size=bl.mr * bl.nr, name="tile")
        crs, cvs = p.strides[p.c][p.row], p.strides[p.c][p.vec]

        def i8(ptr):
            return b.bitcast(ptr, I8.as_pointer())

        def c_tile(ti, tj):
            return i8(self.at(c, ti * rows * crs + tj * cols))
        full = b.and_(b.icmp_signed("==", mv, _c(bl.mr)), b.icmp_signed("==", nv, _c(bl.nr)))
        if cvs != 1:  # C's columns not one after another: every tile through the scratch tile
            full = L.Constant(L.IntType(1), 0)
        c_stride = _c(4 * crs)

        def load_c():
            for t, ti, tj in self.c_tiles():
                b.call(self.tileload, [L.Constant(I8, t), c_tile(ti, tj), c_stride])

        def zero_c():
            for t, _, _ in self.c_tiles():
                b.call(self.tilezero, [L.Constant(I8, t)])
        self.if_(b.and_(full, accum), load_c, zero_c)
        a_stride = b.mul(kc, _c(4))

        def step(kk):
            for ti in range(self.tm):
                at = self.at(a, b.add(b.mul(_c(ti * rows), kc), kk))
                b.call(self.tileload, [L.Constant(I8, self.a_tile(ti)), i8(at), a_stride])
            for tj in range(self.tn):
                at = self.at(bp, b.add(b.mul(kk, _c(bl.nr)), _c(tj * cols)))
                b.call(self.tileload, [L.Constant(I8, self.b_tile(tj)), i8(at), _c(4 * bl.nr)])
            for t, ti, tj in self.c_tiles():
                b.call(self.tdp, [L.Constant(I8, t), L.Constant(I8, self.a_tile(ti)), L.Constant(I8, self.b_tile(tj))])
        self.loop(0, kc, words, step, "kk")

        def store_full():
            for t, ti, tj in self.c_tiles():
                b.call(self.tilestore, [L.Constant(I8, t), c_tile(ti, tj), c_stride])

        def store_edge():
            for t, ti, tj in self.c_tiles():
                b.call(self.tilestore, [L.Constant(I8, t), i8(self.at(tmp, ti * rows * bl.nr + tj * cols)), _c(4 * bl.nr)])
            self.add_scratch(c, tmp, mv, nv, accum, lambda i: b.mul(i, _c(crs)))
        self.if_(full, store_full, store_edge)
        b.ret_void()
        return fn


def emit(mod: L.Module, p: Contraction, ptrs_of: dict[str, int], epilogue=None) -> int:
    """Add the contraction's functions to ``mod`` (``epilogue``: a ``void(i8**, m0, mv, n0, nv,
    batch variables...)`` function run on every output tile once its last K block is stored; on
    a padded plan, on each output row's part as it is compacted, h before the batch variables), with ``s{i}_reduce``
    where K splits across threads; returns the per-thread workspace in floats."""
    e = {"dot": _EmitDot, "group": _EmitGroups, "tile": _EmitTiles}.get(p.form, _Emit)(mod, p)
    e.epilogue, e.ptrs_of = epilogue, ptrs_of
    e.driver(ptrs_of)
    if p.blocking.split_k:
        e.reduce()
    return e.workspace()
