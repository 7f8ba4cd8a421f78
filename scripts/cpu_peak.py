#!/usr/bin/env python3
"""Measure this CPU's peak FP32 FMA throughput with a JIT-compiled micro-benchmark.

    python scripts/cpu_peak.py [--lanes 16] [--seconds 0.5]

Twelve independent vector FMA chains (enough to cover FMA latency x ports) in a
loop, compiled by llvmlite for the host CPU, run on 1 thread and on every core
(ctypes releases the GIL).  Prints GFLOP/s (2 flops per lane per FMA).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from llvmlite import binding as llvm
from llvmlite import ir as L


def build(lanes: int, chains: int):
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    vec = L.VectorType(L.FloatType(), lanes)
    mod = L.Module("peak")
    mod.triple = llvm.get_process_triple()
    fma = L.Function(mod, L.FunctionType(vec, [vec, vec, vec]), name=f"llvm.fma.v{lanes}f32")
    fn = L.Function(mod, L.FunctionType(L.FloatType(), [L.IntType(64)]), name="peak")
    b = L.IRBuilder(fn.append_basic_block("entry"))
    loop = fn.append_basic_block("loop")
    done = fn.append_basic_block("done")
    x = L.Constant(vec, [1.0000001] * lanes)
    y = L.Constant(vec, [0.9999999] * lanes)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(L.IntType(64))
    i.add_incoming(L.Constant(L.IntType(64), 0), fn.entry_basic_block)
    accs = [b.phi(vec) for _ in range(chains)]
    for k, a in enumerate(accs):
        a.add_incoming(L.Constant(vec, [float(k)] * lanes), fn.entry_basic_block)
    new = [b.call(fma, [a, x, y]) for a in accs]
    for a, v in zip(accs, new):
        a.add_incoming(v, loop)
    nxt = b.add(i, L.Constant(L.IntType(64), 1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_unsigned("<", nxt, fn.args[0]), loop, done)
    b.position_at_end(done)
    total = new[0]
    for v in new[1:]:
        total = b.fadd(total, v)
    b.ret(b.extract_element(total, L.Constant(L.IntType(32), 0)))
    tm = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3)
    m = llvm.parse_assembly(str(mod))
    engine = llvm.create_mcjit_compiler(m, tm)
    engine.finalize_object()
    f = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64)(engine.get_function_address("peak"))
    return engine, f


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lanes", type=int, default=16, help="16 for AVX-512, 8 for AVX2")
    ap.add_argument("--chains", type=int, default=12)
    ap.add_argument("--iters", type=int, default=20_000_000)
    a = ap.parse_args()
    engine, f = build(a.lanes, a.chains)
    f(1000)
    flops = 2.0 * a.lanes * a.chains * a.iters
    t0 = time.perf_counter()
    f(a.iters)
    one = time.perf_counter() - t0
    n = os.cpu_count() or 1
    with ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        list(pool.map(f, [a.iters] * n))
        many = time.perf_counter() - t0
    print(f"cpu {llvm.get_host_cpu_name()}: {a.lanes}-lane FP32 FMA peak: 1 thread {flops / one / 1e9:.1f} GFLOP/s, "
          f"{n} threads {n * flops / many / 1e9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
