// isamap tiled contraction building blocks (pasted into every generated .cu that uses them).
//
// A thread block computes a BM x BN tile of C over a slice [k0, k1) of the reduction, staged
// through shared memory in BK-deep slabs.  Two code paths:
//   * tensor cores: 16-bit A and B, float32 accumulators, cp.async (16-byte, zero-filling)
//     global->shared copies in a STAGES-deep ring, ldmatrix(.trans) shared->registers and
//     mma.sync.m16n8k16; every warp owns a WM x WN sub-tile of (WM/16) x (WN/8) mma tiles.
//   * FFMA: float32, each thread owns a TM x TN register tile, operands read from shared
//     memory as broadcasts.
// Operand layouts: an operand is "k-major" when its elements are contiguous along the
// reduction (A(m, k) row-major, B(n, k)); otherwise contiguous along m (A) or n (B).  The
// shared-memory copy keeps the global layout (rows padded by 8 elements: no bank conflicts
// for ldmatrix) so copies stay 16 bytes wide; ldmatrix's .trans picks the right fragments.
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

// Tensor-core tile: acc += A[m0:m0+BM, k0:k1] * B[k0:k1, n0:n0+BN].
// A: AK ? A[m * lda + k] : A[k * lda + m];  B: BKM ? B[n * ldb + k] : B[k * ldb + n].
template <typename T, int BM, int BN, int BK, int WM, int WN, int STAGES, bool AK, bool BKM, int VA, int VB>
struct TcTile {
    static constexpr int WARPS_M = BM / WM, WARPS_N = BN / WN, THREADS = WARPS_M * WARPS_N * 32;
    static constexpr int MI = WM / 16, NI = WN / 8;
    static constexpr int A_R = AK ? BM : BK, A_C = (AK ? BK : BM) + 8;
    static constexpr int B_R = BKM ? BN : BK, B_C = (BKM ? BK : BN) + 8;
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

}  // namespace isamap
