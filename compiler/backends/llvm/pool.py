"""A native thread pool for the JIT-compiled host code: spinning workers, ~1 us dispatch.

A Python ThreadPoolExecutor round trip costs 60-90 us on the project's VMs (two futex
wake-ups and the interpreter), more than a whole DeepBench GEMV or GRU step is worth
splitting.  These workers are native threads (pthread_create from JIT-compiled LLVM IR),
created once per process.  Each waits for the next job by spinning on a generation counter
for about 10 ms (so back-to-back kernel calls dispatch in about a microsecond) and
then blocks on a futex (so an idle process burns no core and wakes nobody: periodic naps
were measured to halve the speed of OpenBLAS running beside them).  A job is a task function
``void task(ptr ctx, i64 part)`` and a part count; the caller runs part 0 itself, worker w
runs parts w, w + workers + 1, ..., and the caller spins until all parts are done.  A
kernel call's jobs run from one native call (``pool_drive``, through ctypes, which releases
the GIL).
"""
from __future__ import annotations

import ctypes
import threading


SPIN = 1 << 19  # pause loops (~17 ns each on current Xeons: ~10 ms) before an idle worker blocks on a futex
WAKE_WORTH = 2e-3  # jobs shorter than this (seconds, one thread) do not wait for sleeping workers

_IR = r"""
@job_fn = internal global ptr null
@job_ctx = internal global ptr null
@job_parts = internal global i64 0
@gen = internal global i64 0
@pending = internal global i64 0
@workers = internal global i64 0
@fw = internal global i32 0
@sleepers = internal global i64 0

declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i64 @syscall(i64, ...)
declare void @llvm.x86.sse2.pause()

; parts first, first + stride, ... of a job: a worker's share (first = its id) or the caller's (0)
define internal void @run_parts(ptr %fn, ptr %ctx, i64 %parts, i64 %first, i64 %stride) {
entry:
  br label %part
part:
  %p = phi i64 [ %first, %entry ], [ %p2, %body ]
  %more = icmp slt i64 %p, %parts
  br i1 %more, label %body, label %done
body:
  call void %fn(ptr %ctx, i64 %p)
  %p2 = add i64 %p, %stride
  br label %part
done:
  ret void
}

define internal ptr @worker(ptr %arg) {
entry:
  %id = ptrtoint ptr %arg to i64
  br label %wait
wait:
  %seen = phi i64 [ 0, %entry ], [ %g, %done ]
  br label %spin
spin:
  %n = phi i64 [ 0, %wait ], [ %n1, %pause ], [ 0, %woke ]
  %cur = load atomic i64, ptr @gen seq_cst, align 8
  %new = icmp ne i64 %cur, %seen
  br i1 %new, label %run, label %idle
idle:
  %n1 = add i64 %n, 1
  %long = icmp ugt i64 %n1, SPIN
  br i1 %long, label %sleep, label %pause
pause:
  call void @llvm.x86.sse2.pause()
  br label %spin
sleep:
  %s0 = atomicrmw add ptr @sleepers, i64 1 seq_cst
  %f = load atomic i32, ptr @fw seq_cst, align 4
  %cur2 = load atomic i64, ptr @gen seq_cst, align 8
  %new2 = icmp ne i64 %cur2, %seen
  br i1 %new2, label %woke, label %block
block:
  %f64 = zext i32 %f to i64
  %rc = call i64 (i64, ...) @syscall(i64 202, ptr @fw, i64 128, i64 %f64, ptr null)
  br label %woke
woke:
  %s1 = atomicrmw sub ptr @sleepers, i64 1 seq_cst
  br label %spin
run:
  %g = phi i64 [ %cur, %spin ]
  %fn = load ptr, ptr @job_fn
  %ctx = load ptr, ptr @job_ctx
  %parts = load i64, ptr @job_parts
  %stride = load i64, ptr @workers
  %stride1 = add i64 %stride, 1
  call void @run_parts(ptr %fn, ptr %ctx, i64 %parts, i64 %id, i64 %stride1)
  br label %done
done:
  %old = atomicrmw sub ptr @pending, i64 1 acq_rel
  br label %wait
}

define i32 @pool_start(i64 %n) {
entry:
  store i64 %n, ptr @workers
  %tid = alloca i64
  br label %loop
loop:
  %i = phi i64 [ 1, %entry ], [ %i1, %ok ]
  %more = icmp sle i64 %i, %n
  br i1 %more, label %make, label %end
make:
  %arg = inttoptr i64 %i to ptr
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @worker, ptr %arg)
  %bad = icmp ne i32 %rc, 0
  %i1 = add i64 %i, 1
  br i1 %bad, label %fail, label %ok
ok:
  br label %loop
fail:
  ret i32 %rc
end:
  ret i32 0
}

define void @pool_wake() {
  %oldf = atomicrmw add ptr @fw, i32 1 seq_cst
  %rw = call i64 (i64, ...) @syscall(i64 202, ptr @fw, i64 129, i64 2147483647)
  ret void
}

define void @pool_run(ptr %fn, ptr %ctx, i64 %parts) {
entry:
  store ptr %fn, ptr @job_fn
  store ptr %ctx, ptr @job_ctx
  store i64 %parts, ptr @job_parts
  %w = load i64, ptr @workers
  store atomic i64 %w, ptr @pending release, align 8
  %old = atomicrmw add ptr @gen, i64 1 seq_cst
  %oldf = atomicrmw add ptr @fw, i32 1 seq_cst
  %sl = load atomic i64, ptr @sleepers seq_cst, align 8
  %stride1 = add i64 %w, 1
  %asleep = icmp ne i64 %sl, 0
  br i1 %asleep, label %wake, label %mine
wake:
  %rw = call i64 (i64, ...) @syscall(i64 202, ptr @fw, i64 129, i64 2147483647)
  br label %mine
mine:
  call void @run_parts(ptr %fn, ptr %ctx, i64 %parts, i64 0, i64 %stride1)
  br label %wait
wait:
  %left = load atomic i64, ptr @pending acquire, align 8
  %busy = icmp ne i64 %left, 0
  br i1 %busy, label %pause, label %end
pause:
  call void @llvm.x86.sse2.pause()
  br label %wait
end:
  ret void
}

; A kernel call's native steps in one go (NativePool.plan): n records of 5 i64s,
; (kind, fn, ctx, parts, short).  kind 0: fn(ctx); 1: fn(ctx, p) for each part on this thread;
; 2: a pool job.  Waking a sleeping worker costs 0.1-0.3 ms on a VM, so a short job (under
; WAKE_WORTH on one thread) that finds the workers asleep runs on this thread alone, while
; they wake for the jobs that follow.
define void @pool_drive(ptr %plan, i64 %n) {
entry:
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %next ]
  %more = icmp slt i64 %i, %n
  br i1 %more, label %body, label %end
body:
  %base = mul i64 %i, 5
  %kp = getelementptr i64, ptr %plan, i64 %base
  %kind = load i64, ptr %kp
  %fp = getelementptr i64, ptr %kp, i64 1
  %fn = load ptr, ptr %fp
  %cp = getelementptr i64, ptr %kp, i64 2
  %ctx = load ptr, ptr %cp
  %pp = getelementptr i64, ptr %kp, i64 3
  %parts = load i64, ptr %pp
  %sp = getelementptr i64, ptr %kp, i64 4
  %short = load i64, ptr %sp
  switch i64 %kind, label %pool [ i64 0, label %plain
                                  i64 1, label %here ]
plain:
  call void %fn(ptr %ctx)
  br label %next
here:
  call void @run_parts(ptr %fn, ptr %ctx, i64 %parts, i64 0, i64 1)
  br label %next
pool:
  %sl = load atomic i64, ptr @sleepers seq_cst, align 8
  %asleep = icmp ne i64 %sl, 0
  %isshort = icmp ne i64 %short, 0
  %alone = and i1 %asleep, %isshort
  br i1 %alone, label %wake_alone, label %shared
wake_alone:
  call void @pool_wake()
  call void @run_parts(ptr %fn, ptr %ctx, i64 %parts, i64 0, i64 1)
  br label %next
shared:
  call void @pool_run(ptr %fn, ptr %ctx, i64 %parts)
  br label %next
next:
  %i1 = add i64 %i, 1
  br label %loop
end:
  ret void
}
"""


class NativePool:
    """The process's native workers (``threads - 1`` of them beside the calling thread).  They
    start before the first job, waiting for generation 1: a worker that is slow to start still
    sees every job."""

    def __init__(self, threads: int):
        from .loader import module_code
        self.code = module_code(_IR.replace("SPIN", str(SPIN)), "pool")
        start = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64)(self.code.address("pool_start"))
        self._drive = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(self.code.address("pool_drive"))
        self.threads = threads
        self.lock = threading.Lock()  # one drive at a time (kernels called from several Python threads)
        if threads > 1 and start(threads - 1) != 0:
            raise OSError("could not start the native worker threads")

    def plan(self, steps: list[tuple[int, int, int, int, float]]):
        """One call running ``steps`` in order, each (kind, function, context, parts, one-thread
        seconds) as ``NativeKernel._calls_planned`` gives them: a kernel's statements and split-K
        sums as one ctypes call into ``pool_drive`` instead of a Python call and two ctypes
        calls per job (~2-3 us each, during which the workers spin: ~15 us of a 117 us GRU
        step at hidden 1024 was that)."""
        rows = []
        for kind, fn, ctx, parts, seconds in steps:
            kind = 0 if kind == 0 else 1 if parts == 1 else 2
            rows += [kind, fn, ctx, parts, int(seconds < WAKE_WORTH)]
        table = (ctypes.c_int64 * len(rows))(*rows)
        drive, n, lock = self._drive, len(steps), self.lock

        def run() -> None:
            with lock:
                drive(table, n)
        run.table = table  # kept alive with the closure
        return run


_POOL: NativePool | None = None
_POOL_LOCK = threading.Lock()


def native_pool() -> NativePool:
    """The process-wide pool, started on first use with one thread per core in all (a kernel
    asking for fewer threads simply makes fewer parts)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import os
            _POOL = NativePool(os.cpu_count() or 1)
        return _POOL
