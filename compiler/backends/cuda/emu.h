// isamap CUDA emulator: runs the cuda backend's generated CUDA C on the host CPU, so that what
// the code computes (not only whether nvcc accepts it) is checked on machines without a GPU.
//
// The generated source is compiled by the host C++ compiler with this header forced in front
// (emulate.py rewrites the few CUDA-only spellings: kernel launches, extern __shared__ and the
// CUDA headers).  Every CUDA thread is a fiber of one OS thread (a six-register stack switch
// on x86-64, ucontext elsewhere: swapcontext's signal-mask system calls cost half the time);
// blocks run one
// after another; __syncthreads parks a fiber until every live thread of its block arrives; a
// warp-collective instruction (ldmatrix, mma.sync) completes when all 32 lanes of the warp have
// arrived, and the last lane to arrive computes every lane's result, following the PTX ISA's
// fragment layouts.  cp.async copies are queued per thread and land only at cp.async.wait_group,
// so code that reads a stage before waiting for it reads stale data, as a GPU may.
//
// What is checked, beyond the results: shared-memory addresses (in bounds, aligned as ldmatrix
// and cp.async require), cp.async sources (aligned, inside a cudaMalloc'd buffer), the dynamic
// shared-memory size of a launch against cudaFuncSetAttribute and the device's limit, threads
// per block, whole warps at a collective and every lane at the same collective, and deadlock
// (a __syncthreads some threads never reach).  A fault makes the launch's cudaGetLastError
// non-zero and isamap_emu_error() says what happened.  Fresh device and shared memory are filled
// with 0xFF bytes (NaN in every float format) so reads of unwritten memory show in the results.
// Timing (CUDA events) is host wall-clock time of the emulation: meaningless as GPU time.
#pragma once
#define ISAMAP_EMU 1
#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __grid_constant__

using std::max;
using std::min;
using std::isnan;
using std::isinf;

struct alignas(64) CUtensorMap {
    unsigned long long opaque[16];
};

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};

// ---- 16-bit floating point (round to nearest even both ways, as the CUDA intrinsics) ----
struct __half {
    _Float16 v;
    __half() = default;
    __half(float f) : v((_Float16)f) {}
    operator float() const { return (float)v; }
};
struct __nv_bfloat16 {
    uint16_t bits;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        if (std::isnan(f)) bits = (uint16_t)((u >> 16) | 0x40u);
        else bits = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
    operator float() const {
        uint32_t u = (uint32_t)bits << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return (float)h; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float atomicAdd(float* p, float v) {  // fibers of one OS thread: a plain update is atomic
    float old = *p;
    *p = old + v;
    return old;
}
// CUDA math functions the host library lacks
inline float exp10f(float x) { return std::pow(10.0f, x); }
inline double exp10(double x) { return std::pow(10.0, x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / std::cbrt(x); }
inline float sinpif(float x) { return std::sin((float)M_PI * x); }
inline float cospif(float x) { return std::cos((float)M_PI * x); }
inline float normcdff(float x) { return 0.5f * std::erfc(-x / std::sqrt(2.0f)); }
inline float fdividef(float a, float b) { return a / b; }

// ---- the runtime API the generated host code uses ----
typedef int cudaError_t;
typedef int cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorLaunchFailure = 719 };
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace isamap_emu {

constexpr int kStack = 256 * 1024;
constexpr int kMaxThreads = 1024;
constexpr long kDefaultSmem = 48 * 1024;
constexpr long kMaxSmem = 227 * 1024;  // sm_90's opt-in limit per block

struct Copy {
    void* dst;
    const void* src;
    int bytes, src_bytes;
};

struct Fiber {
    ucontext_t ctx;
    void* sp = nullptr;  // saved stack pointer (x86-64 switch)
    uint3 tid;
    int lin = 0;
    bool done = false;
    std::vector<Copy> open;               // cp.async not yet committed
    std::deque<std::vector<Copy>> groups;  // committed, not yet waited for
};

struct Slot {
    int op;
    const void* in;
    void* out;
};

struct Warp {  // a warp (32 lanes) or a warpgroup (128: wgmma)
    Slot slot[128];
    std::vector<int> waiting;
};

struct WgOp {  // one wgmma.mma_async, run when a wgmma.wait_group retires its group
    int n, ta, tb, scale, bf16;
    uint64_t da, db;
    float* d[128];
};

struct WgQueue {
    std::vector<WgOp> open;
    std::deque<std::vector<WgOp>> groups;
};

struct MBar {  // an mbarrier: arrivals and transaction bytes still due in its current phase
    int count = 0, pending = 0, phase = 0;
    long tx = 0;
    std::vector<int> waiters;
};

struct TmaMap {  // what cuTensorMapEncodeTiled records (a 2-D, 16-bit, 128-byte-swizzled map)
    const unsigned char* base;
    int bf16;
    unsigned long long cols, rows, ld;
    unsigned box0, box1;
};

struct Tma {  // a bulk tensor copy in flight: lands when someone waits on its mbarrier
    void* dst;
    TmaMap map;
    const void* bar;
    int c0, c1;
};

// What the emulated code did, summed over launches until isamap_emu_counters reads and resets it:
// instructions by kind, bytes moved into shared memory, and shared-memory wavefronts of
// ldmatrix (one per 8x8 matrix when its eight 16-byte rows fall in distinct bank groups: more
// means bank conflicts in the tile's layout).
enum Counter { kBlocks, kBarriers, kLdmatrix, kLdmatrixMatrices, kLdmatrixWavefronts, kMma, kWgmma, kCpAsyncBytes,
               kTmaBytes, kCounters };

struct State {
    std::mutex lock;  // one launch at a time (ctypes callers may be several Python threads)
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    std::vector<Warp> warps, wgroups;
    std::vector<WgQueue> wgq;
    std::deque<int> ready;
    std::vector<int> bar_waiting;
    ucontext_t sched;
    void* sched_sp = nullptr;
    Fiber* cur = nullptr;
    int live = 0, nthreads = 0;
    uint3 block{0, 0, 0}, bdim{1, 1, 1}, gdim{1, 1, 1};
    unsigned char* smem = nullptr;
    long smem_bytes = 0;
    std::function<void()> body;
    std::map<const void*, struct MBar> mbars;
    std::vector<struct Tma> tma;
    void (*tma_flush)() = nullptr;  // lands every copy in flight (when nothing else can run)
    std::map<uintptr_t, size_t> allocs;
    std::map<const void*, long> smem_attr;
    int error = 0;
    std::string message;
    long long counters[kCounters] = {};
    std::vector<std::function<void()>>* capture = nullptr;  // stream capture in progress: work is recorded
};

inline State& st() {
    static State s;
    return s;
}

inline void fault(const std::string& what) {
    State& s = st();
    if (!s.error) {
        char where[160];
        std::snprintf(where, sizeof where, " (block %u,%u,%u thread %u,%u,%u)", s.block.x, s.block.y, s.block.z,
                      s.cur ? s.cur->tid.x : 0, s.cur ? s.cur->tid.y : 0, s.cur ? s.cur->tid.z : 0);
        s.message = what + where;
    }
    s.error = cudaErrorLaunchFailure;
}

inline Fiber* cur() { return st().cur; }

#if defined(__x86_64__)
// Save the callee-saved registers on this stack, store its pointer at *save, load `load` and
// pop the registers saved there (a fiber's first switch "returns" into fiber_start).
extern "C" void isamap_emu_switch(void** save, void* load);
__asm__(".text\n.globl isamap_emu_switch\n.hidden isamap_emu_switch\n.type isamap_emu_switch,@function\n"
        "isamap_emu_switch:\n"
        "pushq %rbp\npushq %rbx\npushq %r12\npushq %r13\npushq %r14\npushq %r15\n"
        "movq %rsp, (%rdi)\nmovq %rsi, %rsp\n"
        "popq %r15\npopq %r14\npopq %r13\npopq %r12\npopq %rbx\npopq %rbp\nret\n"
        ".size isamap_emu_switch, .-isamap_emu_switch\n");
#define ISAMAP_EMU_SWITCH 1
#endif

inline void park() {
    State& s = st();
#ifdef ISAMAP_EMU_SWITCH
    isamap_emu_switch(&s.cur->sp, s.sched_sp);
#else
    swapcontext(&s.cur->ctx, &s.sched);
#endif
}

inline void wake(std::vector<int>& who, int except) {
    State& s = st();
    for (int i : who)
        if (i != except) s.ready.push_back(i);
    who.clear();
}

inline void syncthreads() {
    State& s = st();
    s.bar_waiting.push_back(s.cur->lin);
    if ((int)s.bar_waiting.size() == s.live) {
        s.counters[kBarriers]++;
        wake(s.bar_waiting, s.cur->lin);
    } else {
        park();
    }
}

// A warp-collective operation: `in` and `out` are this lane's operands; the last lane to arrive
// runs `compute` on every lane's slot.
template <int G = 32, typename F>
inline void collective(int op, const void* in, void* out, F&& compute) {
    State& s = st();
    int lin = s.cur->lin, w = lin / G, lane = lin % G;
    if ((w + 1) * G > s.nthreads) {
        fault(G == 32 ? "warp-collective instruction in a partial warp (threads per block not a multiple of 32)"
                      : "warpgroup instruction (wgmma) in a partial warpgroup (threads per block not a multiple of 128)");
        return;
    }
    Warp& wp = (G == 32 ? s.warps : s.wgroups)[w];
    wp.slot[lane] = Slot{op, in, out};
    wp.waiting.push_back(lin);
    if ((int)wp.waiting.size() < G) {
        park();
        return;
    }
    for (int l = 1; l < G; ++l)
        if (wp.slot[l].op != wp.slot[0].op) {
            fault("lanes of one warp at different collective instructions (divergence)");
            wake(wp.waiting, lin);
            return;
        }
    compute(wp.slot);
    wake(wp.waiting, lin);
}

inline bool in_smem(const void* p, int bytes) {
    State& s = st();
    const unsigned char* c = (const unsigned char*)p;
    return c >= s.smem && c + bytes <= s.smem + s.smem_bytes;
}

inline bool in_global(const void* p, int bytes) {
    State& s = st();
    uintptr_t a = (uintptr_t)p;
    auto it = s.allocs.upper_bound(a);
    if (it == s.allocs.begin()) return false;
    --it;
    return a + bytes <= it->first + it->second;
}

inline void land(const std::vector<Copy>& g) {
    for (const Copy& c : g) {
        if (c.src_bytes) std::memcpy(c.dst, c.src, c.src_bytes);
        if (c.bytes > c.src_bytes) std::memset((char*)c.dst + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
}

inline void fiber_main() {
    State& s = st();
    s.body();
    Fiber* f = s.cur;
    for (auto& g : f->groups) land(g);
    land(f->open);
    f->done = true;
    s.live--;
    if (!s.bar_waiting.empty() && (int)s.bar_waiting.size() == s.live) wake(s.bar_waiting, -1);
    // the rest of its warp or warpgroup waiting at a collective would wait forever
    Warp* mine[2] = {&s.warps[f->lin / 32], &s.wgroups[f->lin / 128]};
    const char* what[2] = {"a thread exited while the rest of its warp waited at a collective instruction",
                           "a thread exited while the rest of its warpgroup waited at a wgmma instruction"};
    for (int i = 0; i < 2; ++i)
        if (!mine[i]->waiting.empty()) {
            fault(what[i]);
            wake(mine[i]->waiting, -1);
        }
    if (f->lin % 128 == 127 && (int)s.wgq.size() > f->lin / 128) {
        WgQueue& q = s.wgq[f->lin / 128];
        if (!q.open.empty() || !q.groups.empty()) fault("a warpgroup exited with wgmma operations not waited for");
    }
}

#ifdef ISAMAP_EMU_SWITCH
[[noreturn]] inline void fiber_start() {
    fiber_main();
    State& s = st();
    isamap_emu_switch(&s.cur->sp, s.sched_sp);  // never resumed
    __builtin_unreachable();
}
#endif

inline void run_block() {
    State& s = st();
    s.ready.clear();
    s.bar_waiting.clear();
    s.live = s.nthreads;
    for (int i = 0; i < s.nthreads; ++i) {
        Fiber& f = s.fibers[i];
        f.lin = i;
        f.tid = uint3{(unsigned)(i % s.bdim.x), (unsigned)((i / s.bdim.x) % s.bdim.y),
                      (unsigned)(i / (s.bdim.x * s.bdim.y))};
        f.done = false;
        f.open.clear();
        f.groups.clear();
#ifdef ISAMAP_EMU_SWITCH
        // six zeroed registers, then fiber_start as the return address; after the `ret` the
        // stack pointer is 8 past a 16-byte boundary, as at any function's entry
        uintptr_t top = ((uintptr_t)s.stacks[i] + kStack) & ~(uintptr_t)15;
        void** frame = (void**)(top - 64);
        for (int r = 0; r < 6; ++r) frame[r] = nullptr;
        frame[6] = (void*)&fiber_start;
        frame[7] = nullptr;
        f.sp = frame;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = s.stacks[i];
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = &s.sched;
        makecontext(&f.ctx, (void (*)())fiber_main, 0);
#endif
        s.ready.push_back(i);
    }
    for (Warp& w : s.warps) w.waiting.clear();
    for (Warp& w : s.wgroups) w.waiting.clear();
    for (WgQueue& q : s.wgq) q = WgQueue();
    s.mbars.clear();
    s.tma.clear();
    std::memset(s.smem, 0xFF, s.smem_bytes);
    for (;;) {
        if (s.ready.empty()) {  // every thread waits: copies still in flight land now, as they must
            if (s.tma.empty() || !s.tma_flush) break;
            s.tma_flush();
            continue;
        }
        int i = s.ready.front();
        s.ready.pop_front();
        s.cur = &s.fibers[i];
#ifdef ISAMAP_EMU_SWITCH
        isamap_emu_switch(&s.sched_sp, s.cur->sp);
#else
        swapcontext(&s.sched, &s.cur->ctx);
#endif
    }
    s.cur = nullptr;
    if (s.live > 0) {
        char m[200];
        std::snprintf(m, sizeof m, "deadlock: %d of %d threads never finished (%zu waiting at __syncthreads)",
                      s.live, s.nthreads, s.bar_waiting.size());
        fault(m);
    }
}

template <typename F>
struct Launch {
    F* fn;
    dim3 grid, block;
    size_t smem;
    template <typename... A>
    void operator()(A... args) {
        State& s = st();
        if (s.capture) {  // recorded into the graph being captured, run at cudaGraphLaunch
            Launch me = *this;
            s.capture->push_back([me, args...]() mutable { me(args...); });
            return;
        }
        std::lock_guard<std::mutex> g(s.lock);
        int n = (int)(block.x * block.y * block.z);
        long limit = kDefaultSmem;
        auto at = s.smem_attr.find((const void*)fn);
        if (at != s.smem_attr.end()) limit = std::max(limit, at->second);
        if (n < 1 || n > kMaxThreads) {
            fault("launch with " + std::to_string(n) + " threads per block (1 to 1024 allowed)");
            return;
        }
        if ((long)smem > limit) {
            fault("launch with " + std::to_string(smem) + " bytes of dynamic shared memory, more than the " +
                  std::to_string(limit) + " allowed (cudaFuncSetAttribute raises the limit)");
            return;
        }
        if (grid.y > 65535 || grid.z > 65535 || grid.x < 1 || grid.y < 1 || grid.z < 1) {
            fault("invalid grid dimensions");
            return;
        }
        s.nthreads = n;
        s.bdim = uint3{block.x, block.y, block.z};
        s.gdim = uint3{grid.x, grid.y, grid.z};
        while ((int)s.stacks.size() < n) s.stacks.push_back((char*)std::malloc(kStack));
        if ((int)s.fibers.size() < n) s.fibers.resize(n);
        s.warps.assign((n + 31) / 32, Warp());
        s.wgroups.assign((n + 127) / 128, Warp());
        s.wgq.assign((n + 127) / 128, WgQueue());
        s.smem_bytes = (long)smem;
        s.smem = (unsigned char*)std::aligned_alloc(1024, ((smem + 1023) / 1024) * 1024 + 1024);
        s.body = [&]() { fn(args...); };
        for (unsigned z = 0; z < grid.z && !s.error; ++z)
            for (unsigned y = 0; y < grid.y && !s.error; ++y)
                for (unsigned x = 0; x < grid.x && !s.error; ++x) {
                    s.block = uint3{x, y, z};
                    s.counters[kBlocks]++;
                    run_block();
                }
        std::free(s.smem);
        s.smem = nullptr;
        s.body = nullptr;
    }
};

template <typename F>
Launch<F> launch(F* fn, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = 0) {
    return Launch<F>{fn, grid, block, smem};
}

}  // namespace isamap_emu

#define threadIdx (isamap_emu::st().cur->tid)
#define blockIdx (isamap_emu::st().block)
#define blockDim (isamap_emu::st().bdim)
#define gridDim (isamap_emu::st().gdim)

inline void __syncthreads() { isamap_emu::syncthreads(); }

inline cudaError_t cudaMalloc(void** p, size_t n) {
    size_t r = ((n + 255) / 256) * 256;
    *p = std::aligned_alloc(256, r ? r : 256);
    if (!*p) return cudaErrorMemoryAllocation;
    std::memset(*p, 0xFF, r ? r : 256);
    isamap_emu::st().allocs[(uintptr_t)*p] = n;
    return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
    isamap_emu::st().allocs.erase((uintptr_t)p);
    std::free(p);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) {
    std::memcpy(d, s, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) {
    std::memset(p, v, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = 0) {
    if (isamap_emu::st().capture) {
        isamap_emu::st().capture->push_back([p, v, n]() { cudaMemset(p, v, n); });
        return cudaSuccess;
    }
    return cudaMemset(p, v, n);
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k, cudaStream_t = 0) {
    if (isamap_emu::st().capture) {
        isamap_emu::st().capture->push_back([d, s, n, k]() { cudaMemcpy(d, s, n, k); });
        return cudaSuccess;
    }
    return cudaMemcpy(d, s, n, k);
}
// CUDA graphs by stream capture: the captured work, replayed in order
#define cudaStreamPerThread ((cudaStream_t)2)
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal, cudaStreamCaptureModeRelaxed };
typedef std::vector<std::function<void()>>* cudaGraph_t;
typedef std::vector<std::function<void()>>* cudaGraphExec_t;
inline cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
    if (isamap_emu::st().capture) return cudaErrorInvalidValue;
    isamap_emu::st().capture = new std::vector<std::function<void()>>();
    return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* g) {
    *g = isamap_emu::st().capture;
    isamap_emu::st().capture = nullptr;
    return *g ? cudaSuccess : cudaErrorInvalidValue;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long = 0) {
    *e = new std::vector<std::function<void()>>(*g);
    return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t = 0) {
    for (auto& f : *e) f();
    return cudaSuccess;
}
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    delete e;
    return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return isamap_emu::st().error; }
inline cudaError_t cudaGetLastError() {
    int e = isamap_emu::st().error;
    isamap_emu::st().error = 0;
    return e;
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* fn, cudaFuncAttribute, int value) {
    if (value > isamap_emu::kMaxSmem) return cudaErrorInvalidValue;
    isamap_emu::st().smem_attr[(const void*)fn] = value;
    return cudaSuccess;
}
struct isamap_emu_event {
    std::chrono::steady_clock::time_point t;
};
typedef isamap_emu_event* cudaEvent_t;
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
    *e = new isamap_emu_event;
    return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = 0) {
    e->t = std::chrono::steady_clock::now();
    return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t z) {
    *ms = std::chrono::duration<float, std::milli>(z->t - a->t).count();
    return cudaSuccess;
}

extern "C" const char* isamap_emu_error() { return isamap_emu::st().message.c_str(); }

// When asynchronous work takes effect: 0 (the default) as late as the program allows (cp.async
// copies at cp.async.wait_group, wgmma at wgmma.wait_group, bulk tensor copies when their
// mbarrier is waited on), 1 at once.  A correct program computes the same either way; a
// missing wait shows in the late mode, a buffer overwritten under work in flight in the early.
namespace isamap_emu {
inline int& early() {
    static int e = 0;
    return e;
}
}  // namespace isamap_emu
extern "C" void isamap_emu_early(int on) { isamap_emu::early() = on; }
// the counters since the last call (order: isamap_emu::Counter), then zero
extern "C" int isamap_emu_counters(long long* out) {
    for (int i = 0; i < isamap_emu::kCounters; ++i) {
        out[i] = isamap_emu::st().counters[i];
        isamap_emu::st().counters[i] = 0;
    }
    return isamap_emu::kCounters;
}

// ---- the PTX instructions tiles.cuh wraps, by their semantics ----
namespace isamap {

// The shared window address of a pointer into the block's shared memory: it starts at 16, not
// at a multiple of 1024, so a kernel that needs 1024-byte-aligned swizzle atoms must align.
constexpr unsigned kWindow = 16;
inline unsigned smem_u32(const void* p) {
    return (unsigned)((const unsigned char*)p - isamap_emu::st().smem) + kWindow;
}

template <int BYTES>
inline void cp_async(void* dst, const void* src, bool full) {
    using namespace isamap_emu;
    if (!in_smem(dst, BYTES) || (uintptr_t)dst % BYTES) fault("cp.async: destination outside shared memory or misaligned");
    else if (full && (uintptr_t)src % BYTES) fault("cp.async: source address not aligned to the copy size");
    else if (full && !in_global(src, BYTES)) fault("cp.async: source outside every device buffer");
    else if ((st().counters[kCpAsyncBytes] += full ? BYTES : 0), early()) land({Copy{dst, src, BYTES, full ? BYTES : 0}});
    else cur()->open.push_back(Copy{dst, src, BYTES, full ? BYTES : 0});
}
inline void cp_commit() {
    isamap_emu::Fiber* f = isamap_emu::cur();
    f->groups.push_back(std::move(f->open));
    f->open.clear();
}
template <int N>
inline void cp_wait() {
    isamap_emu::Fiber* f = isamap_emu::cur();
    while ((int)f->groups.size() > N) {
        isamap_emu::land(f->groups.front());
        f->groups.pop_front();
    }
}

inline uint16_t emu_b16(const void* row, int col) {
    uint16_t v;
    std::memcpy(&v, (const char*)row + 2 * col, 2);
    return v;
}

// ldmatrix.m8n8.xN(.trans).b16: lane 8j+r gives the address of row r of matrix j; lane t receives
// matrix j's elements (t/4, 2(t%4)) and (t/4, 2(t%4)+1) in register j (low half first), or with
// .trans the elements (2(t%4), t/4) and (2(t%4)+1, t/4).
template <int NM, bool TRANS>
inline void emu_ldsm(unsigned* r, const void* p) {
    using namespace isamap_emu;
    if (!in_smem(p, 16) || (uintptr_t)p % 16) {
        fault("ldmatrix: row address outside shared memory or not 16-byte aligned");
        p = st().smem;
    }
    collective(100 + NM * 2 + TRANS, p, r, [](Slot* s) {
        long long* n = st().counters;
        n[kLdmatrix]++;
        n[kLdmatrixMatrices] += NM;
        for (int j = 0; j < NM; ++j) {  // wavefronts: the most rows of this matrix in one 16-byte bank group
            int in_group[8] = {};
            for (int r = 0; r < 8; ++r) in_group[(smem_u32(s[j * 8 + r].in) >> 4) & 7]++;
            n[kLdmatrixWavefronts] += *std::max_element(in_group, in_group + 8);
        }
        for (int t = 0; t < 32; ++t) {
            unsigned* out = (unsigned*)s[t].out;
            for (int j = 0; j < NM; ++j) {
                int g = t / 4, c = 2 * (t % 4);
                uint16_t lo, hi;
                if (TRANS) {
                    lo = emu_b16(s[j * 8 + c].in, g);
                    hi = emu_b16(s[j * 8 + c + 1].in, g);
                } else {
                    lo = emu_b16(s[j * 8 + g].in, c);
                    hi = emu_b16(s[j * 8 + g].in, c + 1);
                }
                out[j] = (unsigned)lo | ((unsigned)hi << 16);
            }
        }
    });
}
inline void ldsm_x4(unsigned (&r)[4], const void* p) { emu_ldsm<4, false>(r, p); }
inline void ldsm_x4_t(unsigned (&r)[4], const void* p) { emu_ldsm<4, true>(r, p); }
inline void ldsm_x2(unsigned (&r)[2], const void* p) { emu_ldsm<2, false>(r, p); }
inline void ldsm_x2_t(unsigned (&r)[2], const void* p) { emu_ldsm<2, true>(r, p); }

template <typename T>
inline float emu_unpack(unsigned reg, int half) {
    T v;
    uint16_t b = (uint16_t)(reg >> (16 * half));
    std::memcpy(&v, &b, 2);
    return (float)v;
}

struct MmaLane {
    const unsigned* a;
    unsigned b0, b1;
    float* c;
};

// mma.sync.m16n8k16.row.col, float32 accumulators.  Lane t, g = t/4, q = t%4: a0..a3 hold
// A(g, 2q..2q+1), A(g+8, 2q..), A(g, 2q+8..), A(g+8, 2q+8..); b0, b1 hold B(2q..2q+1, g),
// B(2q+8..2q+9, g); c0..c3 are C(g, 2q), C(g, 2q+1), C(g+8, 2q), C(g+8, 2q+1).
template <typename T>
inline void emu_mma(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    MmaLane me{a, b0, b1, c};
    isamap_emu::collective(200 + (int)sizeof(T), &me, nullptr, [](isamap_emu::Slot* s) {
        isamap_emu::st().counters[isamap_emu::kMma]++;
        float A[16][16], B[16][8], C[16][8];
        for (int t = 0; t < 32; ++t) {
            const MmaLane& l = *(const MmaLane*)s[t].in;
            int g = t / 4, q = 2 * (t % 4);
            for (int h = 0; h < 2; ++h) {
                A[g][q + h] = emu_unpack<T>(l.a[0], h);
                A[g + 8][q + h] = emu_unpack<T>(l.a[1], h);
                A[g][q + 8 + h] = emu_unpack<T>(l.a[2], h);
                A[g + 8][q + 8 + h] = emu_unpack<T>(l.a[3], h);
                B[q + h][g] = emu_unpack<T>(l.b0, h);
                B[q + 8 + h][g] = emu_unpack<T>(l.b1, h);
            }
            C[g][q] = l.c[0];
            C[g][q + 1] = l.c[1];
            C[g + 8][q] = l.c[2];
            C[g + 8][q + 1] = l.c[3];
        }
        for (int t = 0; t < 32; ++t) {
            const MmaLane& l = *(const MmaLane*)s[t].in;
            int g = t / 4, q = 2 * (t % 4);
            for (int e = 0; e < 4; ++e) {
                int row = g + (e >> 1) * 8, col = q + (e & 1);
                float acc = C[row][col];
                for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
                l.c[e] = acc;
            }
        }
    });
}
inline void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, __half) {
    emu_mma<__half>(c, a, b0, b1);
}
inline void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, __nv_bfloat16) {
    emu_mma<__nv_bfloat16>(c, a, b0, b1);
}


// ---- Hopper warpgroup MMA (wgmma) with 128-byte-swizzled shared-memory operands ----
inline void fence_proxy_async() {}
inline void wg_fence() {}
template <typename T> inline void fence_operand(T&) {}

// The element at a window address, through the 128-byte swizzle (Swizzle<3,4,3>: address bits
// 4-6 XOR bits 7-9), the way the hardware reads a swizzled operand.
inline float emu_wg_elem(bool bf16, unsigned addr) {
    using namespace isamap_emu;
    unsigned phys = addr ^ (((addr >> 7) & 7u) << 4);
    const unsigned char* p = st().smem + (long)phys - kWindow;
    if (phys < kWindow || !in_smem(p, 2)) {
        fault("wgmma: an operand descriptor reaches outside shared memory");
        return 0.0f;
    }
    uint16_t b;
    std::memcpy(&b, p, 2);
    if (bf16) return (float)*(const __nv_bfloat16*)&b;
    return (float)*(const __half*)&b;
}

// Operand element (r, k), r along M (A) or N (B), k < 16, of a descriptor: K-major (no
// transpose): 8-row groups SBO apart, rows 128 bytes apart, k contiguous; MN-major
// (transposed): 64-element MN atoms LBO apart, 8-k groups SBO apart, k rows 128 bytes apart.
inline float emu_wg_operand(uint64_t d, bool mn_major, bool bf16, int r, int k) {
    unsigned start = (unsigned)(d & 0x3FFF) << 4, lbo = (unsigned)((d >> 16) & 0x3FFF) << 4,
             sbo = (unsigned)((d >> 32) & 0x3FFF) << 4;
    unsigned addr = mn_major ? start + (r / 64) * lbo + (k / 8) * sbo + (k % 8) * 128 + (r % 64) * 2
                             : start + (r / 8) * sbo + (r % 8) * 128 + k * 2;
    return emu_wg_elem(bf16, addr);
}

inline void emu_wg_run(const isamap_emu::WgOp& op) {
    using namespace isamap_emu;
    if ((op.da >> 62) != 1 || (op.db >> 62) != 1) {
        fault("wgmma: only the 128-byte swizzle mode is modelled by the emulator");
        return;
    }
    static float A[64][16], B[256][16];
    for (int r = 0; r < 64; ++r)
        for (int k = 0; k < 16; ++k) A[r][k] = emu_wg_operand(op.da, op.ta, op.bf16, r, k);
    for (int r = 0; r < op.n; ++r)
        for (int k = 0; k < 16; ++k) B[r][k] = emu_wg_operand(op.db, op.tb, op.bf16, r, k);
    // accumulator fragment: warp w of the group owns rows 16w..16w+15; lane l holds, for every
    // 8-column slice i, d[4i + e] = D(16w + l/4 + 8(e/2), 8i + 2(l%4) + e%2)
    for (int t = 0; t < 128; ++t) {
        int w = t / 32, l = t % 32;
        for (int i = 0; i < op.n / 8; ++i)
            for (int e = 0; e < 4; ++e) {
                int row = 16 * w + l / 4 + 8 * (e >> 1), col = 8 * i + 2 * (l % 4) + (e & 1);
                float acc = op.scale ? op.d[t][4 * i + e] : 0.0f;
                for (int k = 0; k < 16; ++k) acc += A[row][k] * B[col][k];
                op.d[t][4 * i + e] = acc;
            }
    }
}

struct WgIn {
    float* d;
    uint64_t da, db;
    int scale;
};

// wgmma.mma_async.sync.aligned.m64nNk16.f32.{f16,bf16}: recorded now, run when a
// wgmma.wait_group retires its group (reading shared memory then, as the hardware may).
template <int N, typename T, int TA, int TB>
struct Wgmma {
    static void run(float (&d)[N / 2], uint64_t da, uint64_t db, int scale) {
        WgIn me{d, da, db, scale};
        isamap_emu::collective<128>(300 + N * 4 + TA * 2 + TB, &me, nullptr, [](isamap_emu::Slot* s) {
            using namespace isamap_emu;
            const WgIn& a = *(const WgIn*)s[0].in;
            WgOp op{N, TA, TB, a.scale, (int)sizeof(T) == 2 && std::is_same<T, __nv_bfloat16>::value, a.da, a.db, {}};
            for (int t = 0; t < 128; ++t) {
                const WgIn& x = *(const WgIn*)s[t].in;
                if (x.da != a.da || x.db != a.db || x.scale != a.scale) fault("wgmma: threads of a warpgroup disagree on its operands");
                op.d[t] = x.d;
            }
            st().counters[kWgmma]++;
            if (early()) emu_wg_run(op);
            else st().wgq[cur()->lin / 128].open.push_back(op);
        });
    }
};

inline void wg_commit() {
    isamap_emu::collective<128>(2000, nullptr, nullptr, [](isamap_emu::Slot*) {
        isamap_emu::WgQueue& q = isamap_emu::st().wgq[isamap_emu::cur()->lin / 128];
        q.groups.push_back(std::move(q.open));
        q.open.clear();
    });
}

template <int N>
inline void wg_wait() {
    isamap_emu::collective<128>(2100 + N, nullptr, nullptr, [](isamap_emu::Slot*) {
        isamap_emu::WgQueue& q = isamap_emu::st().wgq[isamap_emu::cur()->lin / 128];
        while ((int)q.groups.size() > N) {
            for (const isamap_emu::WgOp& op : q.groups.front()) emu_wg_run(op);
            q.groups.pop_front();
        }
    });
}


// ---- mbarriers and the bulk tensor copy engine (TMA) ----
inline isamap_emu::MBar* emu_mbar(const void* bar) {
    auto& m = isamap_emu::st().mbars;
    auto it = m.find(bar);
    if (it == m.end()) {
        isamap_emu::fault("mbarrier used before mbarrier.init");
        return nullptr;
    }
    return &it->second;
}
inline void emu_mbar_done(isamap_emu::MBar* b) {
    if (b->pending == 0 && b->tx == 0) {
        b->phase ^= 1;
        b->pending = b->count;
        isamap_emu::wake(b->waiters, -1);
    }
}
inline void mbar_init(unsigned long long* bar, unsigned count) {
    using namespace isamap_emu;
    if (!in_smem(bar, 8) || (uintptr_t)bar % 8) fault("mbarrier.init: not an aligned 8-byte word of shared memory");
    else st().mbars[bar] = MBar{(int)count, (int)count, 0, 0, {}};
}
inline void mbar_fence_init() {}
inline void mbar_arrive(unsigned long long* bar) {
    isamap_emu::MBar* b = emu_mbar(bar);
    if (!b) return;
    if (b->pending <= 0) isamap_emu::fault("mbarrier.arrive: more arrivals than the barrier's count");
    b->pending--;
    emu_mbar_done(b);
}
inline void mbar_expect_tx(unsigned long long* bar, unsigned bytes) {
    isamap_emu::MBar* b = emu_mbar(bar);
    if (!b) return;
    b->tx += bytes;
    mbar_arrive(bar);
}
// the copies in flight on this barrier land: the box, zero outside the matrix, written through
// the 128-byte swizzle of the destination's shared-window addresses
inline void emu_tma_land(const void* bar) {
    using namespace isamap_emu;
    State& s = st();
    std::vector<Tma> rest;
    for (const Tma& c : s.tma) {
        if (c.bar != bar) {
            rest.push_back(c);
            continue;
        }
        unsigned base = smem_u32(c.dst);
        for (unsigned j = 0; j < c.map.box1; ++j)
            for (unsigned i = 0; i < c.map.box0; ++i) {
                long long gi = (long long)c.c0 + i, gj = (long long)c.c1 + j;
                uint16_t v = 0;
                if (gi >= 0 && gj >= 0 && (unsigned long long)gi < c.map.cols && (unsigned long long)gj < c.map.rows)
                    std::memcpy(&v, c.map.base + (gj * c.map.ld + gi) * 2, 2);
                unsigned addr = base + j * c.map.box0 * 2 + i * 2;
                unsigned phys = addr ^ (((addr >> 7) & 7u) << 4);
                unsigned char* p = s.smem + (long)phys - kWindow;
                if (!in_smem(p, 2)) {
                    fault("cp.async.bulk.tensor: the box reaches outside shared memory");
                    return;
                }
                std::memcpy(p, &v, 2);
            }
        MBar* b = emu_mbar(bar);
        if (b) b->tx -= (long)c.map.box0 * c.map.box1 * 2;
    }
    s.tma.swap(rest);
    MBar* b = emu_mbar(bar);
    if (b) {
        if (b->tx < 0) fault("mbarrier: more bytes landed than expect_tx announced");
        emu_mbar_done(b);
    }
}
// mbarrier.try_wait.parity in a loop: returns once the phase of this parity has completed
inline void mbar_wait(unsigned long long* bar, unsigned parity) {
    using namespace isamap_emu;
    for (;;) {
        MBar* b = emu_mbar(bar);
        if (!b || (unsigned)b->phase != (parity & 1)) return;
        emu_tma_land(bar);
        if ((unsigned)b->phase != (parity & 1)) return;
        b->waiters.push_back(cur()->lin);
        park();
    }
}
inline void tma_load_2d(void* dst, const CUtensorMap* map, unsigned long long* bar, int c0, int c1) {
    using namespace isamap_emu;
    TmaMap m;
    std::memcpy(&m, map, sizeof m);
    if (!in_smem(dst, (int)(m.box0 * m.box1 * 2)) || smem_u32(dst) % 1024)
        fault("cp.async.bulk.tensor: destination outside shared memory or not 1024-byte aligned (128-byte swizzle)");
    else if (!emu_mbar(bar))
        return;
    else {
        st().counters[kTmaBytes] += (long long)m.box0 * m.box1 * 2;
        st().tma.push_back(Tma{dst, m, bar, c0, c1});
        st().tma_flush = [] {
            while (!st().tma.empty()) emu_tma_land(st().tma.front().bar);
        };
        if (early()) emu_tma_land(bar);
    }
}
template <int R> inline void reg_dealloc() {}
template <int R> inline void reg_alloc() {}

// cuTensorMapEncodeTiled for the maps tiles.cuh makes (2-D, 16-bit elements, 128-byte swizzle)
static int tensor_map(CUtensorMap* m, bool bf16, const void* base, unsigned long long cols, unsigned long long rows,
                      unsigned long long ld, unsigned box0, unsigned box1) {
    if ((uintptr_t)base % 16 || (ld * 2) % 16 || box0 * 2 != 128 || box1 < 1 || box1 > 256) {
        isamap_emu::st().error = 0;
        isamap_emu::fault("cuTensorMapEncodeTiled: base or row pitch not 16-byte aligned, or a box the 128-byte "
                          "swizzle cannot take");
        isamap_emu::st().error = 0;
        return 1;  // CUDA_ERROR_INVALID_VALUE
    }
    isamap_emu::TmaMap t{(const unsigned char*)base, bf16, cols, rows, ld, box0, box1};
    static_assert(sizeof t <= sizeof(CUtensorMap), "tensor map");
    std::memcpy(m, &t, sizeof t);
    return 0;
}

}  // namespace isamap
