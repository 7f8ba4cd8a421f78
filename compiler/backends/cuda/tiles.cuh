// isamap tiled contraction building blocks (pasted into every generated .cu that uses them).
//
// A thread block computes a BM x BN tile of C over a slice [k0, k1) of the reduction, staged
// through shared memory in BK-deep slabs.  Three code paths:
//   * tensor cores: 16-bit A and B, float32 accumulators, cp.async (16-byte, zero-filling)
//     global->shared copies in a STAGES-deep ring, ldmatrix(.trans) shared->registers and
//     mma.sync.m16n8k16; every warp owns a WM x WN sub-tile of (WM/16) x (WN/8) mma tiles.
//   * FFMA: float32, each thread owns a TM x TN register tile, operands read from shared
//     memory as broadcasts.
//   * wgmma (sm_90a; WgTile and WsTile at the end): warpgroups issue wgmma.m64nNk16 on
//     128-byte-swizzled shared slabs, filled by every thread's cp.async (WgTile) or by a
//     producer warpgroup's bulk tensor copies through mbarriers (WsTile, warp-specialised).
// The PTX wrappers are compiled only for the GPU; emu.h gives them their semantics on the host.
// Operand layouts: an operand is "k-major" when its elements are contiguous along the
// reduction (A(m, k) row-major, B(n, k)); otherwise contiguous along m (A) or n (B).  The
// shared-memory copy keeps the global layout (rows padded to an odd number of 16-byte units: no
// bank conflicts for ldmatrix) so copies stay 16 bytes wide; .trans picks the right fragments.
#include <cuda.h>  // CUtensorMap
#include <cuda_bf16.h>

namespace isamap {

#ifndef ISAMAP_EMU  // emu.h gives these their PTX semantics on the host
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// BYTES-wide global->shared copy that zero-fills when !full (16 bytes bypass L1: .cg)
template <int BYTES> __device__ __forceinline__ void cp_async(void* dst, const void* src, bool full) {
    if (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                     "r"(full ? 16 : 0));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_u32(dst)), "l"(src),
                     "n"(BYTES), "r"(full ? BYTES : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x2(unsigned (&r)[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x2_t(unsigned (&r)[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, __half) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1,
                                         __nv_bfloat16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

template <typename T> __device__ __forceinline__ T zero() { return T(0.0f); }

// Copy a ROWS x COLS tile (row stride LDS elements in shared memory) from global memory at
// g[(row0 + r) * ld + col0 + c], zero outside rows x cols.  VW > 1: ld and the base are VW-element
// aligned, so whole VW-element chunks move with cp.async (a chunk that straddles the edge goes
// element by element); VW == 1: plain loads and stores.
template <typename T, int ROWS, int COLS, int LDS, int THREADS, int VW>
__device__ __forceinline__ void load_tile(T* s, const T* __restrict__ g, long long ld, int row0, int col0,
                                          int rows, int cols, int tid) {
    if (VW > 1) {
        constexpr int CH = COLS / VW, TOTAL = ROWS * CH;
#pragma unroll
        for (int i0 = 0; i0 < TOTAL; i0 += THREADS) {
            int i = i0 + tid;
            if (TOTAL % THREADS != 0 && i >= TOTAL) break;
            int r = i / CH, c = (i % CH) * VW;
            int gr = row0 + r, gc = col0 + c;
            T* dst = s + r * LDS + c;
            if (gr < rows && gc + VW <= cols) {
                cp_async<VW * sizeof(T)>(dst, g + gr * ld + gc, true);
            } else if (gr < rows && gc < cols) {
#pragma unroll
                for (int e = 0; e < VW; ++e) dst[e] = gc + e < cols ? g[gr * ld + gc + e] : zero<T>();
            } else {
                cp_async<VW * sizeof(T)>(dst, g, false);
            }
        }
    } else {
        constexpr int TOTAL = ROWS * COLS;
#pragma unroll 4
        for (int i = tid; i < TOTAL; i += THREADS) {
            int r = i / COLS, c = i % COLS;
            int gr = row0 + r, gc = col0 + c;
            s[r * LDS + c] = (gr < rows && gc < cols) ? g[gr * ld + gc] : zero<T>();
        }
    }
}

// Row length in shared memory of a slab whose rows hold `cols` 16-bit elements: an odd number of
// 16-byte units, so the eight rows an ldmatrix matrix reads fall in eight distinct bank groups
// (cols + 8 when cols / 8 is even; a row of 8 stays 8: padding it to 16 would pair the groups).
__host__ __device__ constexpr int padded(int cols) { return (cols / 8) % 2 ? cols : cols + 8; }

// Tensor-core tile: acc += A[m0:m0+BM, k0:k1] * B[k0:k1, n0:n0+BN].
// A: AK ? A[m * lda + k] : A[k * lda + m];  B: BKM ? B[n * ldb + k] : B[k * ldb + n].
template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES, bool AK, bool BKM, int VA, int VB>
struct TcTile {
    static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN, THREADS = WARPS_M * WARPS_N * 32;
    static constexpr int MI = WM / 16, NI = WN / 8;
    static constexpr int A_R = AK ? BM : BK, A_C = padded(AK ? BK : BM);
    static constexpr int B_R = BKM ? BN : BK, B_C = padded(BKM ? BK : BN);
    static constexpr int A_STAGE = A_R * A_C, B_STAGE = B_R * B_C;
    static constexpr int SMEM = STAGES * (A_STAGE + B_STAGE) * (int)sizeof(T);

    __device__ __forceinline__ static void load(T* as, T* bs, const T* A, const T* B, long long lda, long long ldb,
                                                int M, int N, int kend, int m0, int n0, int k, int tid) {
        if (AK) load_tile<T, BM, BK, A_C, THREADS, VA>(as, A, lda, m0, k, M, kend, tid);
        else load_tile<T, BK, BM, A_C, THREADS, VA>(as, A, lda, k, m0, kend, M, tid);
        if (BKM) load_tile<T, BN, BK, B_C, THREADS, VB>(bs, B, ldb, n0, k, N, kend, tid);
        else load_tile<T, BK, BN, B_C, THREADS, VB>(bs, B, ldb, k, n0, kend, N, tid);
    }

    __device__ __forceinline__ static void run(float (&acc)[MI][NI][4], const T* __restrict__ A,
                                               const T* __restrict__ B, long long lda, long long ldb, int M, int N,
                                               int k0, int k1, int m0, int n0, T* smem) {
        const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
        const int wm = (warp / WARPS_N) * WM, wn = (warp % WARPS_N) * WN;
        T* As = smem;
        T* Bs = smem + STAGES * A_STAGE;
        const int tiles = (k1 - k0 + BK - 1) / BK;
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < tiles) load(As + s * A_STAGE, Bs + s * B_STAGE, A, B, lda, ldb, M, N, k1, m0, n0, k0 + s * BK, tid);
            cp_commit();
        }
        const int j = lane >> 3, r = lane & 7;
        for (int t = 0; t < tiles; ++t) {
            cp_wait<STAGES - 2>();
            __syncthreads();
            {
                int nt = t + STAGES - 1, ns = nt % STAGES;
                if (nt < tiles) load(As + ns * A_STAGE, Bs + ns * B_STAGE, A, B, lda, ldb, M, N, k1, m0, n0,
                                     k0 + nt * BK, tid);
                cp_commit();
            }
            const T* as = As + (t % STAGES) * A_STAGE;
            const T* bs = Bs + (t % STAGES) * B_STAGE;
#pragma unroll
            for (int kk = 0; kk < BK; kk += 16) {
                unsigned af[MI][4], bf[NI][2];
#pragma unroll
                for (int mi = 0; mi < MI; ++mi) {
                    int m = wm + mi * 16;
                    if (AK) ldsm_x4(af[mi], as + (m + r + (j & 1) * 8) * A_C + kk + (j >> 1) * 8);
                    else ldsm_x4_t(af[mi], as + (kk + r + (j >> 1) * 8) * A_C + m + (j & 1) * 8);
                }
#pragma unroll
                for (int ni = 0; ni + 1 < NI; ni += 2) {
                    int n = wn + ni * 8;
                    unsigned q[4];
                    if (BKM) ldsm_x4(q, bs + (n + r + (j >> 1) * 8) * B_C + kk + (j & 1) * 8);
                    else ldsm_x4_t(q, bs + (kk + r + (j & 1) * 8) * B_C + n + (j >> 1) * 8);
                    bf[ni][0] = q[0]; bf[ni][1] = q[1]; bf[ni + 1][0] = q[2]; bf[ni + 1][1] = q[3];
                }
                if (NI & 1) {
                    int n = wn + (NI - 1) * 8, jj = j & 1;
                    unsigned q[2];
                    if (BKM) ldsm_x2(q, bs + (n + r) * B_C + kk + jj * 8);
                    else ldsm_x2_t(q, bs + (kk + r + jj * 8) * B_C + n);
                    bf[NI - 1][0] = q[0]; bf[NI - 1][1] = q[1];
                }
#pragma unroll
                for (int mi = 0; mi < MI; ++mi)
#pragma unroll
                    for (int ni = 0; ni < NI; ++ni) mma16816(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1], T());
            }
        }
        cp_wait<0>();
    }
};

// FFMA tile (float32): THREADS = (BM / TM) * (BN / TN); double-buffered shared slabs, both
// stored k-major-outer (As[k][m], Bs[k][n]) so the inner loop reads broadcast rows.
template <int BM, int BN, int BK, int TM, int TN, bool AK, bool BKM>
struct FmaTile {
    static constexpr int THREADS = (BM / TM) * (BN / TN);
    static constexpr int SMEM = 2 * BK * (BM + BN) * 4;

    __device__ __forceinline__ static void load(float* as, float* bs, const float* A, const float* B, long long lda,
                                                long long ldb, int M, int N, int kend, int m0, int n0, int k, int tid) {
        for (int i = tid; i < BM * BK; i += THREADS) {
            int mm, kk;
            if (AK) { mm = i / BK; kk = i % BK; } else { kk = i / BM; mm = i % BM; }
            int gm = m0 + mm, gk = k + kk;
            as[kk * BM + mm] = (gm < M && gk < kend) ? (AK ? A[gm * lda + gk] : A[gk * lda + gm]) : 0.0f;
        }
        for (int i = tid; i < BN * BK; i += THREADS) {
            int nn, kk;
            if (BKM) { nn = i / BK; kk = i % BK; } else { kk = i / BN; nn = i % BN; }
            int gn = n0 + nn, gk = k + kk;
            bs[kk * BN + nn] = (gn < N && gk < kend) ? (BKM ? B[gn * ldb + gk] : B[gk * ldb + gn]) : 0.0f;
        }
    }

    __device__ __forceinline__ static void run(float (&acc)[TM][TN], const float* __restrict__ A,
                                               const float* __restrict__ B, long long lda, long long ldb, int M, int N,
                                               int k0, int k1, int m0, int n0, float* smem) {
        const int tid = threadIdx.x;
        const int tm = (tid / (BN / TN)) * TM, tn = (tid % (BN / TN)) * TN;
        const int tiles = (k1 - k0 + BK - 1) / BK;
        if (tiles > 0) load(smem, smem + BK * BM, A, B, lda, ldb, M, N, k1, m0, n0, k0, tid);
        __syncthreads();
        for (int t = 0; t < tiles; ++t) {
            float* as = smem + (t & 1) * BK * (BM + BN);
            float* bs = as + BK * BM;
            if (t + 1 < tiles) {
                float* nas = smem + ((t + 1) & 1) * BK * (BM + BN);
                load(nas, nas + BK * BM, A, B, lda, ldb, M, N, k1, m0, n0, k0 + (t + 1) * BK, tid);
            }
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                float a[TM], b[TN];
#pragma unroll
                for (int i = 0; i < TM; ++i) a[i] = as[kk * BM + tm + i];
#pragma unroll
                for (int i = 0; i < TN; ++i) b[i] = bs[kk * BN + tn + i];
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int q = 0; q < TN; ++q) acc[i][q] = fmaf(a[i], b[q], acc[i][q]);
            }
            __syncthreads();
        }
    }
};

// ---- Hopper (sm_90a): warpgroup MMA over 128-byte-swizzled shared-memory slabs ----
// A block computes BM x BN with BM / 64 warpgroups, each owning 64 rows and all BN columns
// (one wgmma.m64nBNk16 per 16 of k), over BK = 64 slabs: one 128-byte row of 16-bit elements
// per swizzle-atom row.  A K-major slab (operand contiguous along k: A(m, k), B(n, k)) is R rows
// of 128 bytes, 16-byte chunk c of row r stored at chunk c ^ (r % 8); an MN-major slab
// (contiguous along m or n) is R / 64 atoms of BK k-rows x 128 bytes, chunk c of k-row kk at
// c ^ (kk % 8) (wgmma reads it transposed).  Every slab starts 1024-byte aligned in the shared
// window (the swizzle's period).  Copies are cp.async (16 bytes; plain stores at a ragged edge),
// made visible to wgmma's async proxy with fence.proxy.async before the block barrier.  A ring
// of STAGES slabs keeps STAGES - 2 copies ahead and one wgmma group in flight behind.
#ifndef ISAMAP_EMU
#ifdef __CUDA_ARCH_FEAT_SM90_ALL  // wgmma exists only in sm_90a code; other architectures never run these kernels
#define ISAMAP_SM90A(x) x
#else
#define ISAMAP_SM90A(x)
#endif
__device__ __forceinline__ void fence_proxy_async() {
    ISAMAP_SM90A(asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"));
}
__device__ __forceinline__ void wg_fence() { ISAMAP_SM90A(asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory")); }
__device__ __forceinline__ void wg_commit() {
    ISAMAP_SM90A(asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"));
}
template <int N> __device__ __forceinline__ void wg_wait() {
    ISAMAP_SM90A(asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"));
}
__device__ __forceinline__ void fence_operand(float& x) { asm volatile("" : "+f"(x)::"memory"); }
template <int N, typename T, int TA, int TB> struct Wgmma;  // specialisations: generated (gemm.py)
#endif

__device__ __forceinline__ unsigned long long wg_desc(const void* p, unsigned lbo, unsigned sbo) {
    unsigned long long a = smem_u32(p);
    return ((a & 0x3FFFF) >> 4) | ((unsigned long long)((lbo & 0x3FFFF) >> 4) << 16) |
           ((unsigned long long)((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

// Copy a GR x GC tile (GC contiguous elements per row, a multiple of 8) at
// g[(row0 + r) * ld + col0 + c], zero outside rows x cols, into a swizzled slab (above).
template <typename T, int GR, int GC, int THREADS, bool KMAJ, int BK>
__device__ __forceinline__ void load_swizzled(unsigned char* s, const T* __restrict__ g, long long ld, int row0,
                                              int col0, int rows, int cols, int tid) {
    constexpr int CH = GC / 8, TOTAL = GR * CH;
#pragma unroll
    for (int i0 = 0; i0 < TOTAL; i0 += THREADS) {
        int i = i0 + tid;
        if (TOTAL % THREADS != 0 && i >= TOTAL) break;
        int r = i / CH, c = i % CH;
        int off = KMAJ ? r * 128 + ((c ^ (r & 7)) << 4) : (c >> 3) * (BK * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4);
        T* dst = (T*)(s + off);
        int gr = row0 + r, gc = col0 + c * 8;
        if (gr < rows && gc + 8 <= cols) {
            cp_async<16>(dst, g + gr * ld + gc, true);
        } else if (gr < rows && gc < cols) {
#pragma unroll
            for (int e = 0; e < 8; ++e) dst[e] = gc + e < cols ? g[gr * ld + gc + e] : zero<T>();
        } else {
            cp_async<16>(dst, g, false);
        }
    }
}

// One BK = 64 slab: four wgmma k16 steps of this warpgroup's 64 rows (at a) by the block's BN
// columns (at b), committed as one group.  A K-major operand advances 32 bytes a step inside
// its swizzled rows; an MN-major one two 8-row k groups (2048 bytes).
template <typename T, int BN, bool AK, bool BKM>
__device__ __forceinline__ void wg_slab(float (&acc)[BN / 2], unsigned char* a, unsigned char* b) {
    constexpr int BK = 64;
    wg_fence();
#pragma unroll
    for (int j = 0; j < BK / 16; ++j) {
        unsigned long long da = AK ? wg_desc(a + 32 * j, 16, 1024) : wg_desc(a + 2048 * j, BK * 128, 1024);
        unsigned long long db = BKM ? wg_desc(b + 32 * j, 16, 1024) : wg_desc(b + 2048 * j, BK * 128, 1024);
        Wgmma<BN, T, AK ? 0 : 1, BKM ? 0 : 1>::run(acc, da, db, 1);
    }
    wg_commit();
}

template <typename T, int BM, int BN, int STAGES, bool AK, bool BKM>
struct WgTile {
    static constexpr int BK = 64, THREADS = (BM / 64) * 128, ACC = BN / 2;
    static constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE = A_BYTES + B_BYTES;
    static constexpr int SMEM = STAGES * STAGE + 1024;  // + alignment of the first slab
    static_assert(BM % 64 == 0 && BN % 8 == 0 && BN <= 256 && (BKM || BN % 64 == 0), "wgmma block shape");
    static_assert(STAGES >= 3, "a wgmma ring needs a slab being copied, one being read and one in flight");

    __device__ __forceinline__ static void load(unsigned char* st, const T* A, const T* B, long long lda, long long ldb,
                                                int M, int N, int kend, int m0, int n0, int k, int tid) {
        if (AK) load_swizzled<T, BM, BK, THREADS, true, BK>(st, A, lda, m0, k, M, kend, tid);
        else load_swizzled<T, BK, BM, THREADS, false, BK>(st, A, lda, k, m0, kend, M, tid);
        if (BKM) load_swizzled<T, BN, BK, THREADS, true, BK>(st + A_BYTES, B, ldb, n0, k, N, kend, tid);
        else load_swizzled<T, BK, BN, THREADS, false, BK>(st + A_BYTES, B, ldb, k, n0, kend, N, tid);
    }

    __device__ __forceinline__ static void run(float (&acc)[ACC], const T* __restrict__ A, const T* __restrict__ B,
                                               long long lda, long long ldb, int M, int N, int k0, int k1, int m0,
                                               int n0, unsigned char* raw) {
        unsigned char* smem = raw + ((1024 - (smem_u32(raw) & 1023)) & 1023);
        const int tid = threadIdx.x, wg = tid / 128;
        const int tiles = (k1 - k0 + BK - 1) / BK;
#pragma unroll
        for (int s = 0; s < STAGES - 2; ++s) {
            if (s < tiles) load(smem + s * STAGE, A, B, lda, ldb, M, N, k1, m0, n0, k0 + s * BK, tid);
            cp_commit();
        }
        for (int t = 0; t < tiles; ++t) {
            cp_wait<STAGES - 3>();  // this thread's copies of slab t have landed
            fence_proxy_async();
            __syncthreads();  // everyone's have; every warpgroup has retired the group of slab t - 2
            {
                int nt = t + STAGES - 2;
                if (nt < tiles) load(smem + (nt % STAGES) * STAGE, A, B, lda, ldb, M, N, k1, m0, n0, k0 + nt * BK, tid);
                cp_commit();
            }
            unsigned char* a = smem + (t % STAGES) * STAGE + wg * 64 * BK * 2;
            unsigned char* b = smem + (t % STAGES) * STAGE + A_BYTES;
            wg_slab<T, BN, AK, BKM>(acc, a, b);
            wg_wait<1>();
        }
        wg_wait<0>();
        cp_wait<0>();
#pragma unroll
        for (int i = 0; i < ACC; ++i) fence_operand(acc[i]);
    }
};

// ---- Hopper (sm_90a), warp-specialised: the copy engine (TMA) feeds, warpgroups multiply ----
// Warpgroup 0 is the producer: one thread issues cp.async.bulk.tensor copies of each BK = 64
// slab (the tensor maps lay them out 128-byte-swizzled, exactly as WgTile's slabs, and fill
// what lies outside the matrix with zeros) into a ring of STAGES slots; warpgroups 1..BM/64
// consume, each 64 rows x BN with wgmma.  Two mbarriers per slot: `full` completes when the
// copies' bytes have landed (expect_tx), `empty` when every consumer has retired its wgmma
// group on the slot.  setmaxnreg moves registers from the producer to the consumers.  A block
// takes one output tile, or (persistent) every gridDim.x-th.
#ifndef ISAMAP_EMU
__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
    ISAMAP_SM90A(asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count)));
}
__device__ __forceinline__ void mbar_fence_init() {
    ISAMAP_SM90A(asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"));
}
__device__ __forceinline__ void mbar_expect_tx(unsigned long long* bar, unsigned bytes) {
    ISAMAP_SM90A(asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                              : "memory"));
}
__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
    ISAMAP_SM90A(asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory"));
}
__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) {
    ISAMAP_SM90A(asm volatile("{\n.reg .pred p;\nLAB_WAIT:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                              "@p bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(smem_u32(bar)), "r"(parity)
                              : "memory"));
}
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, unsigned long long* bar, int c0, int c1) {
    ISAMAP_SM90A(asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n"
        ::"r"(smem_u32(dst)), "l"((unsigned long long)map), "r"(smem_u32(bar)), "r"(c0), "r"(c1) : "memory"));
}
template <int R> __device__ __forceinline__ void reg_dealloc() {
    ISAMAP_SM90A(asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R)));
}
template <int R> __device__ __forceinline__ void reg_alloc() {
    ISAMAP_SM90A(asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R)));
}

// A 2-D tensor map of a row-major matrix (rows x cols elements, rows `ld` elements apart) read
// in box0 x box1 boxes (box0 along the contiguous dimension), 128-byte swizzled.  0 or a CUresult.
static int tensor_map(CUtensorMap* m, bool bf16, const void* base, unsigned long long cols, unsigned long long rows,
                      unsigned long long ld, unsigned box0, unsigned box1) {
    typedef CUresult (*Encode)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                               const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                               CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
    static Encode encode = nullptr;
    if (!encode) {
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void**)&encode, 12000, cudaEnableDefault, &q) !=
                cudaSuccess || q != cudaDriverEntryPointSuccess)
            return 999;
    }
    cuuint64_t dims[2] = {cols, rows}, strides[1] = {ld * 2};
    cuuint32_t box[2] = {box0, box1}, es[2] = {1, 1};
    return (int)encode(m, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                       const_cast<void*>(base), dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                       CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                       CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}
#endif

template <typename T, int BM, int BN, int STAGES, bool AK, bool BKM>
struct WsTile {
    static constexpr int BK = 64, CONSUMERS = BM / 64, THREADS = (CONSUMERS + 1) * 128, ACC = BN / 2;
    static constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, STAGE = A_BYTES + B_BYTES;
    static constexpr int SMEM = STAGES * STAGE + 1024 + 256;  // + alignment of the first slab, + the mbarriers
    static_assert(BM % 64 == 0 && BN % 64 == 0 && BN <= 256 && STAGES >= 2 && 2 * STAGES * 8 <= 256, "shape");

    // the producer: the A and B boxes of slab k into one ring slot
    __device__ __forceinline__ static void copy(unsigned char* st, const CUtensorMap* ma, const CUtensorMap* mb,
                                                unsigned long long* bar, int m0, int n0, int k) {
        mbar_expect_tx(bar, STAGE);
        if (AK) tma_load_2d(st, ma, bar, k, m0);
        else
#pragma unroll
            for (int a = 0; a < BM / 64; ++a) tma_load_2d(st + a * BK * 128, ma, bar, m0 + 64 * a, k);
        if (BKM) tma_load_2d(st + A_BYTES, mb, bar, k, n0);
        else
#pragma unroll
            for (int a = 0; a < BN / 64; ++a) tma_load_2d(st + A_BYTES + a * BK * 128, mb, bar, n0 + 64 * a, k);
    }

    // The output tiles blockIdx.x, + gridDim.x, ... of a tiles_m x tiles_n grid (m fastest): one
    // per block, or several (a persistent grid, while the consumers store one tile the producer
    // already fills the ring for the next).  The ring's slot and phase run on across tiles.
    // Consumers call epi(m0, n0, acc, consumer) with each tile's 64 x BN accumulators.
    template <typename Epi>
    __device__ __forceinline__ static void run_tiles(const CUtensorMap* ma, const CUtensorMap* mb, int k0, int k1,
                                                     int tiles_m, int tiles_n, unsigned char* raw, Epi&& epi) {
        unsigned char* smem = raw + ((1024 - (smem_u32(raw) & 1023)) & 1023);
        unsigned long long* full = (unsigned long long*)(smem + STAGES * STAGE);
        unsigned long long* empty = full + STAGES;
        const int tid = threadIdx.x, wg = tid / 128;
        const int ktiles = (k1 - k0 + BK - 1) / BK, tiles = tiles_m * tiles_n;
        if (tid == 0) {
            for (int s = 0; s < STAGES; ++s) {
                mbar_init(&full[s], 1);
                mbar_init(&empty[s], CONSUMERS);
            }
            mbar_fence_init();
        }
        __syncthreads();
        int g = 0;  // slabs this block has passed through the ring
        if (wg == 0) {
            reg_dealloc<40>();
            if (tid == 0)
                for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x)
                    for (int t = 0; t < ktiles; ++t, ++g) {
                        int s = g % STAGES;
                        if (g >= STAGES) mbar_wait(&empty[s], ((g / STAGES) - 1) & 1);
                        copy(smem + s * STAGE, ma, mb, &full[s], (tile % tiles_m) * BM, (tile / tiles_m) * BN,
                             k0 + t * BK);
                    }
            return;
        }
        reg_alloc<232>();
        float acc[ACC];
        for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
#pragma unroll
            for (int i = 0; i < ACC; ++i) acc[i] = 0.0f;
            for (int t = 0; t < ktiles; ++t, ++g) {
                int s = g % STAGES;
                mbar_wait(&full[s], (g / STAGES) & 1);
                unsigned char* a = smem + s * STAGE + (wg - 1) * 64 * BK * 2;
                unsigned char* b = smem + s * STAGE + A_BYTES;
                wg_slab<T, BN, AK, BKM>(acc, a, b);
                wg_wait<1>();  // the group of the slab before has retired: its slot may be refilled
                if (t > 0 && tid % 128 == 0) mbar_arrive(&empty[(g - 1) % STAGES]);
            }
            wg_wait<0>();
#pragma unroll
            for (int i = 0; i < ACC; ++i) fence_operand(acc[i]);
            if (ktiles > 0 && tid % 128 == 0) mbar_arrive(&empty[(g - 1) % STAGES]);  // the tile's last slab
            epi((tile % tiles_m) * BM, (tile / tiles_m) * BN, acc, wg - 1);
        }
    }
};

}  // namespace isamap
