"""The ``isamap`` command line.

User mistakes print ``file:line:col: error: ...`` with a caret and exit 1;
anything unexpected prints one "internal error" line and exits 70 (the
traceback only with ``--debug``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from ir.errors import IsamapError

EXIT_USER = 1
EXIT_INTERNAL = 70


def _add_kernel_args(p: argparse.ArgumentParser, sizes: bool = True):
    p.add_argument("kernel_file", metavar="KERNEL", help="a .tc file (or a library kernel name)")
    p.add_argument("--kernel", help="the def to use when the file holds several")
    p.add_argument("--target", "-t", default="reference", help="target name or .hw file (default: reference)")
    if sizes:
        p.add_argument("--sizes", "-s", help="size values, e.g. M=64,N=48,K=32")


def make_parser() -> argparse.ArgumentParser:
    from compiler import __version__
    ap = argparse.ArgumentParser(prog="isamap", description="Map tensor kernels onto accelerator ISAs.")
    ap.add_argument("--version", action="version", version=f"isamap {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check", help="parse and validate a .tc or .hw file")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(fn=cmd_check)

    p = sub.add_parser("targets", help="list the built-in targets and their peak figures")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(fn=cmd_targets)

    p = sub.add_parser("mappings", help="every legal way each statement runs on each instruction")
    _add_kernel_args(p)
    p.add_argument("--explain", action="store_true", help="also list rejected candidates and why")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(fn=cmd_mappings)

    p = sub.add_parser("tune", help="search schedules measured on the backend, recorded in a tuning database")
    _add_kernel_args(p)
    p.add_argument("--trials", type=int, default=16, help="schedules to measure (default 16)")
    p.add_argument("--db", default=None, help="tuning database (SQLite; default $ISAMAP_DB or isamap-tuning.db)")
    p.add_argument("--workers", default="1", help="parallel measurements: a number, or ray://ADDRESS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(fn=cmd_tune)

    p = sub.add_parser("bench", help="DeepBench suites against a baseline measured in the same run")
    p.add_argument("what", choices=["gemm", "gru"], help="which suite")
    p.add_argument("--target", "-t", default="sim-nnp", help="target name or .hw file")
    p.add_argument("--suite", help="quick (about a minute; the default) or deepbench (every row; the default "
                   "with --only)")
    p.add_argument("--sets", help="comma-separated: training, inference_server, inference_device")
    p.add_argument("--only", help="comma-separated shapes to keep, sizes in the table's column order (GEMM "
                   "MxNxK[:tn|nt|tt], GRU HxNxT), leading sizes matching any rest: e.g. 2048x1 for every "
                   "batch-1 GRU row of hidden 2048")
    p.add_argument("--scheduler", help="our strategy (default: analytical); the baseline is vendor")
    p.add_argument("--json", action="store_true", help="print a JSON object with a results list")
    p.add_argument("--out", help="also write CSV, JSON (and PNG plots when matplotlib exists) here")
    p.add_argument("--repeats", type=int, help="timed runs per side on host targets (median; default 5 for "
                   "gemm, 3 for gru; short problems repeat until 0.25 s is measured)")
    p.add_argument("--confirm-below", type=float, default=None, metavar="RATIO",
                   help="host targets: time a row again (more rounds, medians over all calls) when its ratio "
                   "comes out below RATIO (default 0.9; 0 turns it off); the table marks such rows 'r'")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("compile", help="compile a kernel and print an intermediate form")
    _add_kernel_args(p)
    p.add_argument("--scheduler", help="scheduling strategy (vendor, analytical, exhaustive, cpsat, tuned; cpu: vector, "
                   "scalar; cuda: tiled, scalar)")
    p.add_argument("--db", help="reuse the best schedule recorded in this tuning database")
    p.add_argument("--emit", default="ir", help="what to print: ir (default), mappings, schedule, loops, asm, llvm, "
                                                "cuda")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(fn=cmd_compile)

    p = sub.add_parser("cache", help="where compiled code and parsed files are cached, how much, and clearing it")
    p.add_argument("--clear", action="store_true", help="remove the cached entries (of --kind only, if given)")
    p.add_argument("--trim", action="store_true",
                   help="remove the least recently used entries now if the cache holds more than its bound "
                   "(ISAMAP_CACHE_SIZE, default 2 GiB; isamap also does this as it writes)")
    from compiler.cache import KINDS
    p.add_argument("--kind", action="append", help=f"{', '.join(KINDS)} (repeatable; default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(fn=cmd_cache)

    p = sub.add_parser("run", help="run a kernel on random inputs")
    _add_kernel_args(p)
    p.add_argument("--scheduler", help="scheduling strategy (vendor, analytical, exhaustive, cpsat, tuned; cpu: vector, "
                   "scalar; cuda: tiled, scalar)")
    p.add_argument("--db", help="reuse the best schedule recorded in this tuning database")
    p.add_argument("--check", action="store_true", help="compare with the reference interpreter")
    p.add_argument("--seed", type=int, default=0, help="random input seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace of the simulated timeline")
    p.add_argument("--stalls", action="store_true",
                   help="where the compute engine's time went (fill, waits by instruction, window, drain)")
    p.add_argument("--emulate", action="store_true",
                   help="cuda targets: run the generated CUDA on the CPU's functional emulator (no GPU needed; "
                   "checks results and shared-memory / cp.async / warp-collective use; times are not GPU "
                   "times). The same as ISAMAP_CUDA=emulate")
    p.set_defaults(fn=cmd_run)
    return ap


def _resolve_kernel_path(arg: str) -> str:
    import os
    if os.path.exists(arg) or arg.endswith(".tc") or "/" in arg:
        return arg
    import kernels
    return str(kernels.path(arg))


def cmd_cache(a) -> int:
    from compiler import cache
    kinds = tuple(a.kind or cache.KINDS)
    for k in kinds:
        if k not in cache.KINDS:
            raise IsamapError(f"unknown cache kind '{k}' ({', '.join(cache.KINDS)})")
    root = cache.cache_root()
    removed = cache.clear(kinds) if a.clear else cache.trim() if a.trim else None
    use = cache.usage(kinds)
    bound = cache.limit()
    if a.json:
        print(json.dumps({"root": str(root) if root else None, "limit_bytes": bound,
                          "kinds": {k: {"files": n, "bytes": b} for k, (n, b) in use.items()},
                          **({"removed": {"files": removed[0], "bytes": removed[1]}} if removed else {})}, indent=2))
        return 0
    if root is None:
        print("caching is off (ISAMAP_CACHE=off)")
        return 0
    if removed is not None:
        print(f"removed {removed[0]} files, {_mib(removed[1])}")
    print(f"cache: {root} (bound {_mib(bound) if bound else 'none'}: ISAMAP_CACHE_SIZE; least recently used "
          f"entries are trimmed past it)")
    for k, (n, b) in use.items():
        print(f"  {k:<9} {n:>7} files {_mib(b):>10}")
    return 0


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def cmd_check(a) -> int:
    from compiler.frontend import parse
    from ir import printer
    m = parse(a.file)
    summary = []
    for k in m.kernels:
        for w in k.warnings:
            print(w, file=sys.stderr)
        ins = ", ".join(f"{t.name}: {t.dtype}[{', '.join(printer.expr(d.extent) for d in k.dims(t.name))}]"
                        for t in k.inputs)
        outs = ", ".join(f"{t.name}: {t.dtype}[{', '.join(printer.expr(d.extent) for d in k.dims(t.name))}]"
                         for t in k.outputs)
        summary.append({"kind": "kernel", "name": k.name, "sizes": list(k.sizes),
                        "statements": len(k.stmts), "signature": f"({ins}) -> ({outs})"})
    for t in m.targets:
        summary.append({"kind": "target", "name": t.name, "instructions": len(t.instrs),
                        "peak_macs_per_cycle": t.peak_macs_per_cycle()})
    if a.json:
        print(json.dumps({"file": a.file, "ok": True, "items": summary}, indent=2))
    else:
        for s in summary:
            if s["kind"] == "kernel":
                print(f"ok: kernel {s['name']}{s['signature']}")
            else:
                print(f"ok: target {s['name']} ({s['instructions']} instructions)")
        if not summary:
            print(f"ok: {a.file} (empty)")
    return 0


def _fmt_bytes(n: float) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        scale = {"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10}[unit]
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def cmd_targets(a) -> int:
    import hw_models
    rows = [hw_models.load(n).summary() for n in hw_models.builtin_names()]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("reference    numpy reference interpreter (ir.interp)")
    for r in rows:
        mems = ", ".join(f"{m['name']} {_fmt_bytes(m['capacity_bytes'])}"
                         + (f" x{m['instances']}" if m["instances"] > 1 else "")
                         + (f" @ {m['bandwidth_bytes_per_cycle']:g} B/cycle" if m["bandwidth_bytes_per_cycle"] else "")
                         for m in r["memories"])
        print(f"{r['name']:<12} {r['cores']} core{'s' if r['cores'] != 1 else ''}, "
              f"peak {r['peak_macs_per_cycle']:g} MAC/cycle; {mems}")
    return 0


def cmd_mappings(a) -> int:
    import hw_models
    from compiler import api
    from compiler.mapping import mappings_for_kernel
    from compiler.sizes import parse_sizes
    from ir.bind import bind
    from compiler.updates import as_mapped
    t = hw_models.load(a.target)
    k = as_mapped(api.load_kernel(_resolve_kernel_path(a.kernel_file), a.kernel), t)
    sizes, spans = parse_sizes(a.sizes)
    bound = bind(k, sizes, spans) if sizes else None
    ms = mappings_for_kernel(k, t, explain=a.explain, bound=bound)
    if a.json:
        print(json.dumps([m.to_json() for m in ms], indent=2))
        return 0
    from ir import printer
    print(f"# {k.name} on {t.name}" + (f" with {', '.join(f'{n}={v}' for n, v in sizes.items())}" if sizes else ""))
    for si, st in enumerate(k.stmts):
        print(f"S{si}: {printer.stmt(st)}")
        mine = [m for m in ms if m.statement == si]
        if not any(m.legal for m in mine):
            print("  (no legal mapping on this target)")
        for m in mine:
            print(("  " if m.legal else "  x ") + m.describe()[len(f"S{si} "):])
    return 0


def _build(a):
    from compiler import api
    from compiler.sizes import parse_sizes
    from ir.bind import bind
    sizes, spans = parse_sizes(getattr(a, "sizes", None))
    k = api.load_kernel(_resolve_kernel_path(a.kernel_file), a.kernel)
    bind(k, sizes, spans)  # located errors for bad --sizes
    from schedulers import base
    # a search that runs past a second shows a progress bar on a terminal (not under --json)
    base.PROGRESS = sys.stderr.isatty() and not getattr(a, "json", False)
    try:
        return api.build(k, target=a.target, sizes=sizes, scheduler=getattr(a, "scheduler", None),
                         db=getattr(a, "db", None))
    finally:
        base.PROGRESS = False


def _write_output(path: str | None, text: str):
    if path is None:
        sys.stdout.write(text)
        return
    import os
    import tempfile
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".isamap-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # no partial output file on failure
    except BaseException:
        os.unlink(tmp)
        raise


def cmd_tune(a) -> int:
    import os

    import hw_models
    from compiler import api
    from compiler.sizes import parse_sizes
    from ir.bind import bind
    from schedulers.db import TuningDB, default_path
    from schedulers.tune import tune
    from compiler.updates import as_mapped
    sizes, spans = parse_sizes(a.sizes)
    t = hw_models.load(a.target)
    k = as_mapped(api.load_kernel(_resolve_kernel_path(a.kernel_file), a.kernel), t)  # what build() maps and keys by
    b = bind(k, sizes, spans)
    backend = t.prop("backend", "sim")
    if backend not in ("sim", "llvm"):
        raise IsamapError(f"tuning measures on the backend; tuning for the {backend} backend is not built yet")
    if a.trials < 1:
        raise IsamapError("--trials must be at least 1")
    if backend == "llvm" and a.workers != "1":
        raise IsamapError(f"--workers does not apply to {t.name}: its candidates are timed one at a time on "
                          f"this machine, as concurrent timings would disturb each other")
    path = a.db or default_path() or "isamap-tuning.db"
    db = TuningDB(path)
    if backend == "llvm":
        return _tune_host(a, k, b, t, db, path)
    workers = a.workers if a.workers.startswith("ray://") else int(a.workers) if a.workers.isdigit() else None
    if workers is None:
        raise IsamapError(f"--workers takes a number or ray://ADDRESS, not {a.workers!r}")
    best, st = tune(k, b, t, a.trials, db, workers, progress=not a.json, seed=a.seed)
    st.update(db=os.path.abspath(path), records=db.count())
    if a.json:
        print(json.dumps({**st, "schedule": json.loads(best.to_json())}, indent=2, default=float))
    else:
        print(best.describe(), end="")
        v, an = st["vendor_cycles"], st["analytical_cycles"]
        print(f"best {st['best_cycles']:.0f} cycles after {st['trials']} measurements"
              + (f"; vendor {v:.0f} ({v / st['best_cycles']:.2f}x)" if v else "")
              + (f"; analytical {an:.0f}" if an else "")
              + (f"; learned-model Spearman {st['spearman']:.2f}" if st.get("spearman") is not None else "")
              + f"; database {path} ({st['records']} records)")
    return 0


def _tune_host(a, k, b, t, db, path) -> int:
    """Host targets: blockings timed on this machine (one at a time: parallel timings would
    disturb each other)."""
    import os

    from schedulers.host_tune import tune_host
    best, st = tune_host(k, b, t, a.trials, db, progress=not a.json, seed=a.seed)
    st.update(db=os.path.abspath(path), records=db.count())
    if a.json:
        print(json.dumps({**st, "schedule": json.loads(best.to_json())}, indent=2, default=float))
        return 0
    print(best.describe(), end="")
    d = st["default_seconds"]
    print(f"best {st['best_seconds'] * 1e3:.3f} ms after {st['trials']} measurements"
          + (f"; default blocking {d * 1e3:.3f} ms ({d / st['best_seconds']:.2f}x)" if d else "")
          + f"; database {path} ({st['records']} records)")
    return 0


def cmd_bench(a) -> int:
    import dataclasses
    import os
    import platform

    from compiler.bench import gru as gru_bench
    import hw_models
    from compiler.bench.gemm import geomean, run_gemm_bench, table
    from compiler.bench.progress import bench_backend
    sets = a.sets.split(",") if a.sets else None
    a.suite = a.suite or ("deepbench" if a.only else "quick")
    more = {"repeats": a.repeats} if a.repeats else {}
    more["only"] = a.only.split(",") if a.only else None
    if a.confirm_below is not None:
        if not 0 <= a.confirm_below < float("inf"):
            raise IsamapError(f"--confirm-below takes a ratio >= 0 (0 turns the re-timing off), not {a.confirm_below}")
        more["confirm"] = a.confirm_below or None
    if a.what == "gru":
        rows = gru_bench.run_gru_bench(a.target, a.suite, sets, a.scheduler, progress=not a.json, **more)
        convention = ("ratio = baseline (vendor schedules, weights reloaded every step) cycles / our cycles "
                      "(persistent weights); FLOPs = 6*T*N*H^2 (+T*N*H inference)")
        text = gru_bench.table(rows, a.target)
    else:
        rows = run_gemm_bench(a.target, a.suite, sets, a.scheduler, progress=not a.json, **more)
        convention = "ratio = baseline (vendor schedule) cycles / our cycles; FLOPs = 2*M*N*K"
        text = table(rows, a.target)
    how = bench_backend(hw_models.load(a.target))
    if how == "llvm":  # host targets: timed against numpy
        convention = ("ratio = numpy seconds / our seconds (medians, same run); " +
                      ("FLOPs = 6*T*N*H^2 (+T*N*H inference)" if a.what == "gru" else "FLOPs = 2*M*N*K"))
    elif how == "cuda" and a.what == "gru":
        convention = ("ratio = cuDNN (torch.nn.GRU, float32, TF32 off) device seconds / ours (medians of "
                      "CUDA-event-timed sequences, same run); FLOPs = 6*T*N*H^2 (+T*N*H inference)")
    elif how == "cuda":
        convention = ("ratio = cuBLAS (torch.matmul) device seconds / ours (medians of CUDA-event-timed blocks, "
                      "same run); fp16 inputs, fp32 accumulation; FLOPs = 2*M*N*K")
    results = []
    for r in rows:
        d = dataclasses.asdict(r)
        d["flops"] = r.flops
        results.append(d)
    summary = {"suite": a.suite, "target": a.target, "what": a.what, "machine": platform.machine(),
               "convention": convention,
               "geomean_ratio": geomean([r.ratio for r in rows if not r.error]), "results": results}
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        import csv
        stem = f"{a.what}_{a.target.replace('/', '_')}"
        with open(os.path.join(a.out, f"{stem}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in results[0] if k != "extra"])
            w.writeheader()
            for r in results:
                w.writerow({k: v for k, v in r.items() if k != "extra"})
        _write_output(os.path.join(a.out, f"{stem}.json"), json.dumps(summary, indent=2, default=float))
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            ok = [r for r in rows if not r.error]
            fig, ax = plt.subplots(figsize=(10, 4))
            ax.bar(range(len(ok)), [r.ratio for r in ok])
            ax.set_xticks(range(len(ok)), [f"{r.m}x{r.n}x{r.k}" if a.what == "gemm" else
                                            f"H{r.hidden} N{r.batch} T{r.timesteps}" for r in ok],
                          rotation=60, fontsize=7)
            ax.axhline(1.0, color="k", lw=0.5)
            ax.set_ylabel("speed-up vs vendor")
            fig.tight_layout()
            fig.savefig(os.path.join(a.out, f"{stem}_ratio.png"))
        except ImportError:
            pass
    if a.json:
        print(json.dumps(summary, indent=2, default=float))
    else:
        print(text, end="")
    return 0


def cmd_compile(a) -> int:
    ck = _build(a)
    _write_output(a.output, ck.source(a.emit))
    return 0


def _stall_table(st: dict) -> str:
    """The slowest core's compute-engine time and the mean over cores, one row per cause."""
    per = st["per_core"]
    if not per:
        return "no compute instructions"
    slow = st["slowest_core"]
    keys = ["busy", "fill"] + sorted({k for d in per.values() for k in d} - {"busy", "fill", "drain", "engine"},
                                     key=lambda k: -per[slow].get(k, 0)) + ["drain"]
    engine = per[slow]["engine"]
    lines = [f"where {engine} time went (cycles): core {slow} (the slowest) and the mean over {len(per)} cores"]
    for k in keys:
        mean = sum(d.get(k, 0) for d in per.values()) / len(per)
        lines.append(f"  {k:<36s} {per[slow].get(k, 0):>9d} {mean:>9.0f}")
    return "\n".join(lines)


RUN_SECONDS = 0.2  # host kernels: timed calls after the first, until this much is measured


def _warm_timing(ck, inputs) -> dict:
    """Host code's time per call as a user's steady state sees it: the median of calls after
    the first (which starts the thread pool, touches fresh output pages and finds cold
    caches: a 512^3 GEMM's first call ran at 78 GFLOP/s, its next ones at ~200), repeated
    until ``RUN_SECONDS`` is measured (one call at least, 1000 at most)."""
    import statistics
    first = ck.report["seconds"]
    times: list[float] = []
    while not times or (sum(times) < RUN_SECONDS and len(times) < 1000):
        ck.run_all(**inputs)
        times.append(ck.report["seconds"])
    sec = statistics.median(times)
    flops = 2 * ck.bound.macs()
    ck.report["seconds"] = sec
    out = {"seconds": sec, "first_call_seconds": first, "timed_calls": len(times)}
    if flops:
        out["gflops"] = ck.report["gflops"] = flops / sec / 1e9 if sec > 0 else None
    return out


def _emulator_line(c: dict) -> str:
    """The emulator's counters of one run in a line: what a GPU would have executed."""
    parts = [f"{c.get('blocks', 0)} blocks", f"{c.get('barriers', 0)} block barriers"]
    if c.get("mma_sync"):
        parts.append(f"{c['mma_sync']} mma.sync")
    if c.get("ldmatrix"):
        parts.append(f"{c['ldmatrix']} ldmatrix ({c['ldmatrix_wavefronts'] / max(1, c['ldmatrix_matrices']):.2f} "
                     f"shared-memory wavefronts per 8x8 matrix; 1 is conflict-free)")
    if c.get("wgmma"):
        parts.append(f"{c['wgmma']} wgmma")
    for key, what in (("cp_async_bytes", "cp.async"), ("tma_bytes", "bulk tensor copies")):
        if c.get(key):
            parts.append(f"{c[key] / 1e6:.1f} MB by {what}")
    return "emulator: " + ", ".join(parts)


def cmd_run(a) -> int:
    from compiler.checking import compare, random_inputs
    import ir.interp
    if a.emulate:
        os.environ["ISAMAP_CUDA"] = "emulate"
    ck = _build(a)
    if a.emulate and ck.gpu is None:
        raise IsamapError(f"--emulate runs cuda targets on the CPU; '{ck.target}' is not one")
    if a.emulate and ck.bound.macs() > 5e9:  # the emulator does ~0.5 G multiply-adds a second
        print(f"note: emulating {ck.bound.macs() / 1e9:.1f} G multiply-adds on the CPU takes about "
              f"{ck.bound.macs() / 5e8 / 60:.0f} min; smaller --sizes run the same code paths", file=sys.stderr)
    inputs = random_inputs(ck.kernel, ck.bound, a.seed)
    t0 = time.perf_counter()
    if a.stalls and ck.program is None:
        raise IsamapError("--stalls needs a simulated target")
    out = ck.run_all(trace=bool(a.trace), stalls=a.stalls, **inputs) if ck.program is not None else \
        ck.run_all(**inputs)
    seconds = time.perf_counter() - t0
    result = {"kernel": ck.kernel.name, "target": ck.target, "sizes": ck.sizes}
    if ck.program is None:
        result["seconds"] = ck.report.get("seconds", seconds) if (ck.native or ck.gpu) is not None else seconds
    if ck.native is not None:
        result.update(_warm_timing(ck, inputs))
    result.update({k: v for k, v in ck.report.items() if k not in result and k != "seconds"})
    if a.check:
        ref = ir.interp.run(ck.kernel, inputs, ck.sizes)
        ok, err, per = compare(out, ref, ck.precision)
        conv = {} if ok else ck.converted_inputs()
        if conv:
            # the program rounds these inputs to a narrower type by design (its mapping converts
            # them): judge it against the reference on the rounded inputs, and say so
            ok, _, per2 = compare(out, ck.reference(inputs), ck.precision)
            for name, d in per.items():
                d["correct"] = per2[name]["correct"]
                d["max_abs_error_rounded_inputs"] = per2[name]["max_abs_error"]
            result["rounded_inputs"] = conv
        result.update(correct=ok, max_abs_error=err, outputs=per)
    if a.trace:
        if ck.last is None:
            raise IsamapError("--trace needs a simulated target")
        _write_output(a.trace, json.dumps({"traceEvents": ck.last.trace_events,
                                           "displayTimeUnit": "ns"}))
    if a.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        sizes = ", ".join(f"{k}={v}" for k, v in ck.sizes.items())
        if ck.program is None:
            gf = f" ({result['gflops']:.2f} GFLOP/s)" if result.get("gflops") else ""
            if ck.gpu is not None and ck.gpu.emulated:
                print(f"{ck.kernel.name} on {ck.target} with {sizes}: emulated on the CPU "
                      f"({result.get('seconds', seconds) * 1e3:.3f} ms of emulation, not GPU time)")
                print(_emulator_line(result.get("emulator_counters", {})))
            else:
                print(f"{ck.kernel.name} on {ck.target} with {sizes}: {result.get('seconds', seconds) * 1e3:.3f} ms{gf}")
        else:
            print(f"{ck.kernel.name} on {ck.target} with {sizes}: {result['cycles']} cycles "
                  f"(roofline {result['roofline_cycles']}, {100 * result['of_roofline']:.1f}% of roofline, "
                  f"utilization {100 * result['utilization']:.1f}%), {result['instructions']} instructions")
        if a.stalls:
            print(_stall_table(result["stalls"]))
        if a.check:
            line = f"max abs error {result['max_abs_error']:.3g}"
            if "rounded_inputs" in result:
                worst = max(d.get("max_abs_error_rounded_inputs") or 0.0 for d in result["outputs"].values())
                line += (f" ({worst:.3g} against the reference on the inputs the program rounds to "
                         f"{'/'.join(sorted(set(result['rounded_inputs'].values())))}: "
                         f"{', '.join(result['rounded_inputs'])})")
            print(f"{line}: {'PASS' if result['correct'] else 'FAIL'}")
    if a.check and not result["correct"]:
        return EXIT_USER
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = make_parser()
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except IsamapError as e:
        print(e.format(), file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("isamap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError as e:  # sizes too large for this machine: the user's choice, not a bug
        print(f"error: not enough memory for this run ({e or 'allocation failed'}); try smaller --sizes",
              file=sys.stderr)
        return EXIT_USER
    except Exception as e:  # noqa: BLE001 - the one place internal failures are reported
        if a.debug:
            traceback.print_exc()
        else:
            print(f"isamap: internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)",
                  file=sys.stderr)
        return EXIT_INTERNAL


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
