"""Scheduling, lowering and the simulated accelerators, checked against ir.interp."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compiler
import ir.interp
import kernels
from compiler import cli
from compiler.backends.sim.simulate import SimError, Simulator
from compiler.checking import compare, random_inputs
from ir.loops import Move, show
from schedulers.base import Schedule

SIZES = {
    "gemm": [dict(M=64, N=32, K=96), dict(M=37, N=13, K=41), dict(M=1, N=1, K=1)],
    "gemm_tn": [dict(M=33, N=17, K=65)], "gemm_nt": [dict(M=33, N=17, K=65)],
    "gemm_bf16": [dict(M=65, N=33, K=70)],
    "batch_matmul": [dict(Bt=3, M=5, N=7, K=11)],
    "conv2d": [dict(N=2, C=3, H=6, W=7, F=4, R=3, S=2), dict(N=1, C=1, H=1, W=1, F=1, R=1, S=1)],
    "conv2d_nhwc": [dict(N=2, H=6, W=7, C=3, F=4, R=3, S=2)],
    "conv2d_bias_relu": [dict(N=2, C=3, H=6, W=7, F=4, R=3, S=2)],
    "conv2d_nhwc_bias_relu": [dict(N=1, H=5, W=6, C=3, F=5, R=2, S=3)],
    "depthwise_conv2d": [dict(N=1, C=3, H=6, W=7, R=3, S=3)],
    "pointwise_conv2d": [dict(N=2, C=3, H=4, W=5, F=6)],
    "depthwise_separable_conv2d": [dict(N=1, C=3, H=6, W=7, R=3, S=3, F=5)],
    "mlp": [dict(B=7, K=33, N=65)], "softmax": [dict(N=5, D=40)], "layernorm": [dict(N=5, D=37)],
    "gru_cell": [dict(B=3, I=5, Hd=7)], "lstm_cell": [dict(B=2, I=3, Hd=5)],
}


def check(name, target, sizes, scheduler, seed=0):
    ck = compiler.build(kernels.path(name), target=target, sizes=sizes, scheduler=scheduler)
    ins = random_inputs(ck.kernel, ck.bound, seed)
    out = ck.run_all(**ins)
    ref = ir.interp.run(ck.kernel, ins, ck.sizes)
    ok, err, _ = compare(out, ref, ck.precision)
    assert ok, (name, target, sizes, scheduler, err)
    return ck


@pytest.mark.parametrize("scheduler", ["vendor", "analytical"])
@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_kernel_on_nnp(name, scheduler):
    for sizes in SIZES[name]:
        ck = check(name, "sim-nnp", sizes, scheduler)
        assert ck.report["cycles"] > 0 and ck.report["roofline_cycles"] > 0


@pytest.mark.parametrize("sizes", [dict(M=20, N=17, K=33), dict(M=16, N=16, K=16), dict(M=1, N=3, K=1)])
def test_gemmini_int8_is_bit_exact(sizes):
    for s in ("vendor", "analytical"):
        ck = compiler.build(kernels.path("gemm_i8"), target="sim-gemmini", sizes=sizes, scheduler=s)
        ins = random_inputs(ck.kernel, ck.bound)
        ins = {k: np.random.default_rng(1).integers(-128, 128, v.shape).astype(np.int8) for k, v in ins.items()}
        out = ck.run_all(**ins)
        np.testing.assert_array_equal(out["C"], ir.interp.run(ck.kernel, ins)["C"])


@pytest.mark.parametrize("target,name,sizes", [
    ("sim-gemmini-fp32", "conv2d_nhwc", dict(N=2, H=9, W=11, C=5, F=7, R=3, S=2)),
    ("sim-gemmini-fp32", "conv2d_nhwc", dict(N=1, H=1, W=1, C=1, F=1, R=1, S=1)),
    ("sim-gemmini-fp32", "conv2d_nhwc", dict(N=1, H=20, W=5, C=17, F=16, R=3, S=1)),
    ("sim-gemmini", "conv2d_nhwc_i8", dict(N=2, H=7, W=19, C=17, F=33, R=3, S=3)),
    ("sim-gemmini", "conv2d_nhwc_i8", dict(N=1, H=3, W=3, C=1, F=2, R=3, S=3)),
    ("sim-tpu", "conv2d_nhwc", dict(N=1, H=6, W=7, C=3, F=4, R=3, S=3)),
])
def test_nhwc_convolutions_map_on_gemmini_without_a_gather(target, name, sizes):
    """Channels innermost (NHWC activations, RSCF filters), a pixel's channels are one row of a
    Gemmini block: plain strided copies, the taps reading sliding windows of one tile or runs of
    pixels at the input's pitch (the NCHW conv2d needs a gathering copy Gemmini lacks); int8
    bit-exact, prime and 1-sized shapes."""
    for scheduler in ("vendor", "analytical"):
        ck = compiler.build(kernels.path(name), target=target, sizes=sizes, scheduler=scheduler)
        ins = random_inputs(ck.kernel, ck.bound, 3)
        if name.endswith("_i8"):
            ins = {k: np.random.default_rng(2).integers(-128, 128, v.shape).astype(np.int8) for k, v in ins.items()}
            np.testing.assert_array_equal(ck.run_all(**ins)["O"], ir.interp.run(ck.kernel, ins)["O"])
        else:
            ok, err, _ = compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins, ck.sizes), ck.precision)
            assert ok, (scheduler, err)
        if scheduler == "analytical" and target.startswith("sim-gemmini") and sizes["H"] > sizes["R"]:
            src = ck.source("loops")
            assert "sliding window" in src or "at pitch" in src, scheduler


def test_gemmini_fp32_kernels_and_clear_errors():
    for name in ("gemm", "batch_matmul", "pointwise_conv2d", "gemm_tn"):
        check(name, "sim-gemmini-fp32", SIZES[name][0], "analytical")
    with pytest.raises(compiler.IsamapError) as e:
        compiler.build(kernels.path("softmax"), target="sim-gemmini-fp32", sizes=dict(N=4, D=4))
    assert "no instruction of sim-gemmini-fp32 can perform this statement" in e.value.message
    assert e.value.span.line == 3  # located at the statement
    with pytest.raises(compiler.IsamapError, match="no instruction of sim-gemmini"):
        compiler.build(kernels.path("gemm"), target="sim-gemmini", sizes=dict(M=4, N=4, K=4))


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 70), st.integers(1, 40), st.integers(1, 70), st.sampled_from(["vendor", "analytical"]))
def test_random_gemm_sizes_on_nnp(m, n, k, scheduler):
    check("gemm", "sim-nnp", dict(M=m, N=n, K=k), scheduler, seed=m + n + k)


def test_schedule_replays_to_the_same_program():
    ck = compiler.build(kernels.path("gemm"), target="sim-nnp", sizes=dict(M=100, N=70, K=40))
    text = ck.schedule.to_json()
    again = Schedule.from_json(text)
    assert again == ck.schedule
    from compiler.lower import lower
    p2 = lower(ck.kernel, ck.bound, ck.target_ir, again, ck.candidates)
    assert show(p2) == show(ck.program)


def test_emit_listings():
    ck = compiler.build(kernels.path("gemm"), target="sim-nnp", sizes=dict(M=40, N=40, K=40))
    loops = ck.source("loops")
    assert "parallel for core" in loops and "mm(" in loops and "buffer S0_0.A @sram" in loops
    asm = ck.source("asm")
    assert "; S0: C(m, n) +=! A(m, k) * B(k, n)" in asm
    assert any(line.split()[1] in ("mm", "mm_init") for line in asm.splitlines() if line.startswith("c"))
    assert "tiles [" in ck.source("schedule")


def test_simulator_refuses_a_program_that_reads_unwritten_data():
    ck = compiler.build(kernels.path("gemm"), target="sim-nnp", sizes=dict(M=32, N=32, K=32))
    from dataclasses import replace

    def drop_loads(nodes):
        out = []
        for n in nodes:
            if isinstance(n, Move) and n.instr.startswith("ld"):
                continue
            if hasattr(n, "body"):
                n = replace(n, body=tuple(drop_loads(n.body)))
            out.append(n)
        return tuple(out)
    broken = replace(ck.program, body=drop_loads(ck.program.body))
    ins = random_inputs(ck.kernel, ck.bound)
    sim = Simulator(ck.target_ir, broken, ck.kernel, ck.bound, ins)
    with pytest.raises(SimError, match=r"instruction \d+ \(mm(_init)?, statement S0\) reads operand A .* never written"):
        sim.run()


def test_a_dependency_on_another_cores_later_instruction_waits_for_it():
    """Cores are timed in step: an instruction that needs another core's instruction that is
    not timed yet (partial sums handed over through main memory) waits for its finish."""
    from compiler.backends.sim.simulate import Inst
    ck = compiler.build(kernels.path("gemm"), target="sim-nnp", sizes=dict(M=32, N=32, K=32))
    sim = Simulator(ck.target_ir, ck.program, ck.kernel, ck.bound, random_inputs(ck.kernel, ck.bound))
    sim.insts = [Inst(0, 0, "ld", "dma_in", 1000, 500, 0, None, [], 0, []),  # core 0 busy first ...
                 Inst(1, 0, "st", "dma_in", 10, 500, 0, None, [0], 0, []),  # ... then stores
                 Inst(2, 1, "ld", "dma_in", 10, 500, 0, None, [1], 0, [])]  # core 1 reads what it stored
    total, _, events = sim.timing(trace=True)
    st = next(e for e in events if e["pid"] == 0 and e["name"] == "st")
    ld = next(e for e in events if e["pid"] == 1)
    assert ld["ts"] >= st["args"]["done"] == 2010
    assert total == ld["args"]["done"] == 2520


def test_run_cli_sim_json_and_trace(capsys, tmp_path):
    trace = tmp_path / "t.json"
    code = cli.main(["run", "kernels/gemm.tc", "--target", "sim-nnp", "--sizes", "M=64,N=48,K=32", "--check",
                     "--json", "--trace", str(trace)])
    out, err = capsys.readouterr()
    assert code == 0, err
    r = json.loads(out)
    for key in ("correct", "max_abs_error", "cycles", "utilization", "roofline_cycles", "engine_busy"):
        assert key in r
    assert r["correct"] is True and r["cycles"] >= r["roofline_cycles"]
    events = json.loads(trace.read_text())["traceEvents"]
    assert events and {"name", "ph", "ts", "dur", "pid", "tid"} <= set(events[0])


def test_new_chip_in_one_file(tmp_path):
    """A copy of sim-nnp with 16x16 matrix units and less SRAM: mapping, scheduling and
    simulation follow from the file alone."""
    src = (compiler.__file__.rsplit("/", 2)[0] + "/hw_models/sim-nnp.hw")
    text = open(src).read().replace('target "sim-nnp"', 'target "my-chip"')
    text = text.replace("bfloat16(32, 32) A @sram, bfloat16(32, 32) B @sram) -> (float(32, 32) C @acc)",
                        "bfloat16(16, 16) A @sram, bfloat16(16, 16) B @sram) -> (float(16, 16) C @acc)")
    text = text.replace("memory sram { capacity = 2560 KiB", "memory sram { capacity = 512 KiB")
    text = text.replace("occupancy = 32  latency = 64  transpose", "occupancy = 16  latency = 40  transpose")
    mine = tmp_path / "my-chip.hw"
    mine.write_text(text)
    sizes = dict(M=100, N=64, K=96)
    a = check("gemm_bf16", "sim-nnp", sizes, "analytical")
    b = check("gemm_bf16", str(mine), sizes, "analytical")
    assert b.target_ir.memory("sram").capacity == 512 * 1024
    assert b.target_ir.peak_macs_per_cycle() == a.target_ir.peak_macs_per_cycle() / 4  # 16x16x16 in 16 cycles
    mm_a = sum(1 for line in a.source("asm").splitlines() if " mm" in line)
    mm_b = sum(1 for line in b.source("asm").splitlines() if " mm" in line)
    assert mm_b > mm_a  # smaller units: more instructions
    assert b.report["cycles"] != a.report["cycles"]


def test_max_reductions_over_padded_tiles_ignore_the_padding():
    """Blocks past the tensor's edge hold the reduction's identity, not zero."""
    ck = compiler.build(kernels.path("softmax"), target="sim-nnp", sizes=dict(N=5, D=40))
    x = -np.abs(np.random.default_rng(3).uniform(1, 2, (5, 40))).astype(np.float32)  # all negative
    out = ck.run_all(I=x)
    np.testing.assert_allclose(out["mx"], x.max(1))
    ck = compiler.build("def f(float(M) T) -> (O) { O(m) max=! T(m) + T(m) }", target="sim-nnp", sizes=dict(M=3))
    t = np.array([-1.0, -2.0, -3.0], np.float32)
    np.testing.assert_allclose(ck(T=t), 2 * t)


def test_copy_statements_run_on_data_movement_alone():
    ck = compiler.build("def copy2d(float(M, N) I) -> (O) { O(m, n) = I(m, n) }", target="sim-nnp",
                        sizes=dict(M=40, N=70))
    x = np.random.default_rng(0).uniform(size=(40, 70)).astype(np.float32)
    np.testing.assert_array_equal(ck(I=x), x)


def test_batched_loads_stop_at_tile_edges():
    """Tiles that are not a multiple of the DMA batch (16 on sim-nnp, 4 on sim-gemmini)."""
    from schedulers.base import NestSchedule
    from compiler.lower import lower
    for target, src, sizes, tiles in [
        ("sim-nnp", "gemm_bf16", dict(M=96, N=64, K=24 * 32), (("m", 3), ("n", 2), ("k", 20))),
        ("sim-gemmini", "gemm_i8", dict(M=48, N=32, K=7 * 16), (("m", 3), ("n", 2), ("k", 6))),
    ]:
        ck = compiler.build(kernels.path(src), target=target, sizes=sizes, scheduler="vendor")
        ns = NestSchedule(0, 0, tiles, ("m", "n", "k"), (), 1)
        sched = ck.schedule.__class__(ck.kernel.name, target, tuple(sizes.items()), "manual", (0,), (ns,))
        ck.program = lower(ck.kernel, ck.bound, ck.target_ir, sched, ck.candidates)
        ins = random_inputs(ck.kernel, ck.bound)
        if src == "gemm_i8":
            ins = {k: np.random.default_rng(2).integers(-100, 100, v.shape).astype(np.int8) for k, v in ins.items()}
        ok, err, _ = compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins), ck.precision)
        assert ok, (target, err)


@pytest.mark.parametrize("persistent", [False, True])
def test_gru_sequence_matches_a_numpy_gru(persistent):
    from compiler.rnn import gru_reference, gru_sequence, random_gru
    H, N, T = 64, 4, 4
    w = random_gru(H, H, seed=3)
    x = np.random.default_rng(4).uniform(-1, 1, (T, N, H)).astype(np.float32)
    h0 = np.random.default_rng(5).uniform(-1, 1, (N, H)).astype(np.float32)
    run = gru_sequence("sim-nnp", x, w, h0, persistent=persistent)
    ref = gru_reference(x, w, h0, "bfloat16")  # the matrix units multiply in bf16
    np.testing.assert_allclose(run.h, ref, atol=1e-4)
    np.testing.assert_allclose(run.h, gru_reference(x, w, h0), atol=5e-2)
    if persistent:
        assert set(run.resident) == {"Ur", "Uz", "Un"} and run.elided_loads > 0
    else:
        assert run.elided_loads == 0


def test_persistent_weights_take_fewer_cycles_than_reloading():
    """Where the recurrent weights' traffic matters (H=512: 3 x 512 x 512 weights a step):
    measured 20738 persistent vs 26116 reloading over 3 steps.  At H=256 the reloads hide
    behind compute since the main-memory server serves early-issued loads in issue order
    (33098 vs 33306 over 6 steps)."""
    from compiler.rnn import gru_sequence, random_gru
    H, N, T = 512, 8, 3
    w = random_gru(H, H)
    x = np.random.default_rng(0).uniform(-1, 1, (T, N, H)).astype(np.float32)
    h0 = np.zeros((N, H), np.float32)
    a = gru_sequence("sim-nnp", x, w, h0, persistent=False)
    b = gru_sequence("sim-nnp", x, w, h0, persistent=True)
    np.testing.assert_array_equal(a.h, b.h)
    assert b.step_cycles < 0.9 * a.step_cycles


def test_a_gathering_copy_never_becomes_a_plain_multicast():
    """im2col windows need a descriptor DMA: the multicast form of a load is used only where it
    can perform the same access pattern (conv2d on sim-nnp read its windows with ld_mc once)."""
    import hw_models
    from compiler.routes import multicast_variant
    for name in ("sim-nnp", "sim-gemmini"):
        t = hw_models.load(name)
        for c in t.copy_instrs:
            m = multicast_variant(t, c)
            assert m is None or m.gather or not c.gather, (name, c.name, m.name)
    ck = compiler.build(kernels.path("conv2d"), target="sim-nnp", sizes=dict(N=1, C=32, H=10, W=10, F=64, R=3, S=3))
    assert "ld_mc " not in ck.source("asm").replace("ld_mc_", "")  # windows come through ld_gather


@pytest.mark.parametrize("name,sizes", [("mlp", dict(B=64, K=96, N=100)), ("mlp", dict(B=1, K=1, N=1)),
                                        ("gru_cell", dict(B=3, I=37, Hd=41)), ("gru_step", dict(B=3, Hd=37)),
                                        ("conv2d_bias_relu", dict(N=2, C=16, H=9, W=12, F=40, R=3, S=3)),
                                        ("conv2d_nhwc_bias_relu", dict(N=1, H=7, W=9, C=5, F=33, R=3, S=2))])
def test_elementwise_epilogues_run_on_chip(name, sizes):
    """A statement that updates the producer's output in place (TC's epilogue style) runs on
    each output block before it is stored: one store of the output, no scratch tensor, fewer
    cycles than the unfused program, and the same numbers as the reference."""
    from dataclasses import replace

    from compiler.backends.sim.simulate import simulate
    from compiler.lower import lower
    ck = check(name, "sim-nnp", sizes, "analytical")
    assert any("fused into" in n for n in ck.program.notes)
    ins = random_inputs(ck.kernel, ck.bound, 3)
    ref = ir.interp.run(ck.kernel, ins, ck.sizes)
    unfused = replace(ck.schedule, fuse=False)
    assert Schedule.from_json(unfused.to_json()) == unfused and "no fusion" in unfused.describe()
    plain = lower(ck.kernel, ck.bound, ck.target_ir, unfused, ck.candidates)
    assert not any("fused into" in n for n in plain.notes) and len(plain.scratch) > len(ck.program.scratch)
    runs = {}
    for label, prog in (("fused", ck.program), ("plain", plain)):
        _, arrays = ir.interp.prepare_inputs(ck.kernel, ins, ck.sizes)
        res = simulate(ck.target_ir, prog, ck.kernel, ck.bound, arrays)
        ok, err, _ = compare({o.name: res.outputs[o.name] for o in ck.kernel.outputs}, ref, ck.precision)
        assert ok, (label, err)
        runs[label] = res
    assert runs["fused"].cycles < runs["plain"].cycles
    assert runs["fused"].link_bytes["sram->hbm"] < runs["plain"].link_bytes["sram->hbm"]
    if name == "mlp":  # the output is stored once
        assert runs["fused"].link_bytes["sram->hbm"] == 4 * sizes["B"] * sizes["N"]
    if name.startswith("conv2d"):  # so is a convolution's, the bias a column (NCHW: filter x pixel
        # blocks) or a row (NHWC: pixels x filters) of its blocks
        outputs = sizes["N"] * sizes["F"] * (sizes["H"] - sizes["R"] + 1) * (sizes["W"] - sizes["S"] + 1)
        assert runs["fused"].link_bytes["sram->hbm"] == 4 * outputs
        add = "vadd_row" if "nhwc" in name else "vadd_col"
        assert any(f"S1 on {add}+vrelu" in n and "fused into S0" in n for n in ck.program.notes)
    if name == "gru_step":  # Nc and Ho run on HN's blocks: three GEMM nests; R's and Z's, which
        # touch nothing the other writes, share a phase: two barriers
        assert sum(1 for n in ck.program.body if type(n).__name__ == "Barrier") == 2
        assert any("S2: runs beside S0" in n for n in ck.program.notes)


def _simulated(ck, program, ins):
    """``program`` (one of ck's kernel, lowered some way) simulated on ``ins``, its outputs
    checked against the reference."""
    from compiler.backends.sim.simulate import simulate
    _, arrays = ir.interp.prepare_inputs(ck.kernel, ins, ck.sizes)
    res = simulate(ck.target_ir, program, ck.kernel, ck.bound, arrays)
    ok, err, _ = compare({o.name: res.outputs[o.name] for o in ck.kernel.outputs}, ck.reference(ins), ck.precision)
    assert ok, err
    return res


def _main_bytes(res, main: str, loaded: bool = True) -> int:
    """Bytes a simulation moved out of main memory (``loaded``) or into it."""
    return sum(v for link, v in res.link_bytes.items() if link.split("->")[0 if loaded else 1] == main)


@pytest.mark.parametrize("target", ["sim-nnp", "sim-tpu"])
def test_softmax_runs_as_one_row_group(target):
    """Every statement of softmax on one row block after the other, per core: I is read from
    main memory once and each output stored once, with one barrier, in fewer cycles than the
    statements run apart; the schedule shows the group's tiles (whole rows per step)."""
    from dataclasses import replace

    from compiler.lower import lower
    sizes = dict(N=256, D=1000)  # a padded last column block: its sums must stay exact
    ck = check("softmax", target, sizes, "analytical")
    assert sum("row group" in n for n in ck.program.notes) == 4, ck.program.notes
    assert sum(1 for n in ck.program.body if type(n).__name__ == "Barrier") == 1
    assert "row groups" in ck.schedule.predicted and all(
        dict(ns.split) and ns.tile("n") == 1 for ns in ck.schedule.nests)
    ins = random_inputs(ck.kernel, ck.bound, 3)
    grouped = _simulated(ck, ck.program, ins)
    apart = _simulated(ck, lower(ck.kernel, ck.bound, ck.target_ir, replace(ck.schedule, fuse=False),
                                 ck.candidates), ins)
    elems, main = sizes["N"] * sizes["D"], ck.target_ir.main
    assert _main_bytes(grouped, main) == 4 * elems  # I, once
    assert _main_bytes(grouped, main, loaded=False) == 4 * (2 * elems + 2 * sizes["N"])  # e, O, mx, s
    assert _main_bytes(apart, main) > 3 * 4 * elems
    assert grouped.cycles < apart.cycles


def test_independent_statements_share_a_phase():
    """No barrier between statements where neither reads what the other writes: the second's
    loads start while the first's stores are in flight, in fewer cycles than with a barrier
    after each (the vendor baseline's), and the buffers of both are placed apart.  Dependent
    statements keep theirs."""
    from dataclasses import replace

    from compiler.lower import _phases, lower
    src = """def two(float(M, K) A, float(K, N) B, float(M, K) X, float(K, N) W) -> (C, D, E) {
        C(m, n) +=! A(m, k) * B(k, n)
        D(m, n) +=! X(m, k) * W(k, n)
        E(m) +=! C(m, n)
    }"""
    ck = compiler.build(src, target="sim-nnp", sizes=dict(M=64, N=96, K=128))
    barriers = [n.statement for n in ck.program.body if type(n).__name__ == "Barrier"]
    assert barriers == [1, 2], (barriers, ck.program.notes)  # C and D together, then E
    assert any("S1: runs beside S0" in n for n in ck.program.notes)
    ins = random_inputs(ck.kernel, ck.bound, 2)
    merged = _simulated(ck, ck.program, ins)
    import compiler.lower as lw
    orig = lw._phases
    try:  # the same program with a barrier after every nest
        lw._phases = lambda target, units, merge, notes: orig(target, units, False, notes)
        apart = lower(ck.kernel, ck.bound, ck.target_ir, ck.schedule, ck.candidates)
    finally:
        lw._phases = orig
    assert _phases is orig and sum(type(n).__name__ == "Barrier" for n in apart.body) == 3
    assert _simulated(ck, apart, ins).cycles > merged.cycles
    unfused = lower(ck.kernel, ck.bound, ck.target_ir, replace(ck.schedule, fuse=False), ck.candidates)
    assert sum(type(n).__name__ == "Barrier" for n in unfused.body) == 3


def test_gemms_sharing_an_operand_load_it_once():
    """Two GEMMs reading the same A at the same blocks form a row group (over the output
    blocks, K whole): the second reads A from the first's slots instead of loading it again,
    and the results match."""
    from dataclasses import replace

    from compiler.lower import lower
    src = """def two(float(M, K) A, float(K, N) B, float(K, N) W) -> (C, D) {
        C(m, n) +=! A(m, k) * B(k, n)
        D(m, n) +=! A(m, k) * W(k, n)
    }"""
    ck = compiler.build(src, target="sim-nnp", sizes=dict(M=64, N=96, K=128))
    assert sum("row group" in n for n in ck.program.notes) == 2
    ins = random_inputs(ck.kernel, ck.bound, 4)
    grouped = _simulated(ck, ck.program, ins)
    plain = _simulated(ck, lower(ck.kernel, ck.bound, ck.target_ir, replace(ck.schedule, fuse=False),
                                 ck.candidates), ins)
    main = ck.target_ir.main
    saved = _main_bytes(plain, main) - _main_bytes(grouped, main)  # the second GEMM's loads of A: whole copies
    assert saved > 0 and saved % (4 * 64 * 128) == 0  # (one per core along N; float32 in main memory)


def test_a_sequence_feeding_its_reduction_runs_as_a_row_group():
    """var(n) += (I - mean)^2 is vsub_col, vmul, vredsum: as a row group of its own steps the
    squares never leave the chip (no scratch for them).  With D = 77 the squares past a
    row's end would be mean^2, not 0: the steps run apart, the squares reloaded padded with
    0.  Both match the reference."""
    src = """def f(float(N, D) I, float(N) mean) -> (var) {
        var(n) +=! (I(n, d) - mean(n)) * (I(n, d) - mean(n))
    }"""
    for d, grouped in ((64, True), (77, False)):
        ck = compiler.build(src, target="sim-nnp", sizes=dict(N=70, D=d))
        ins = random_inputs(ck.kernel, ck.bound, 1)
        ok, err, _ = compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins, ck.sizes), ck.precision)
        assert ok, (d, err)
        assert ("its steps in a row group" in ck.program.notes[0]) == grouped, (d, ck.program.notes)
        assert any(x.name.startswith("_S0_") for x in ck.program.scratch) != grouped


def test_layernorm_runs_as_one_row_group():
    """With whole column blocks every statement of layernorm runs in one row group: the row
    statistics stay on chip as 32-vectors (mean / D, rsqrt(var + eps) on sim-nnp's vector
    forms), I is read from main memory once, and the result matches."""
    ck = check("layernorm", "sim-nnp", dict(N=100, D=64), "analytical")
    assert sum("row group" in n for n in ck.program.notes) == 5, ck.program.notes
    assert "vrsqrt_v" in ck.program.notes[4] and "vdivs_v" in ck.program.notes[1]
    res = _simulated(ck, ck.program, random_inputs(ck.kernel, ck.bound, 3))
    # I once; gamma and beta once per core (4 row blocks)
    assert _main_bytes(res, ck.target_ir.main) == 4 * (100 * 64 + 2 * 64 * 4)


def test_row_group_stops_before_a_reduction_over_wrong_padding():
    """Past the end of a padded row, e = I - mx holds -inf (I's padding for the max), which
    a sum would add: that sum runs apart, reloading e padded with 0.  With whole blocks
    (D = 64) all three statements run as one group.  Both match the reference."""
    src = """def f(float(N, D) I) -> (mx, e, t) {
        mx(n) max=! I(n, d)
        e(n, d) = I(n, d) - mx(n)
        t(n) +=! e(n, d)
    }"""
    for d, members in ((70, 2), (64, 3)):
        ck = compiler.build(src, target="sim-nnp", sizes=dict(N=300, D=d))
        ins = random_inputs(ck.kernel, ck.bound, 1)
        ok, err, _ = compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins, ck.sizes), ck.precision)
        assert ok, (d, err)
        assert sum("row group" in n for n in ck.program.notes) == members, (d, ck.program.notes)


def test_few_long_rows_stay_apart():
    """A group has a core per row block: for 2 blocks of 4000 columns the statements run
    apart, each over all 24 cores (the model's estimate decides)."""
    ck = check("softmax", "sim-nnp", dict(N=64, D=4000), "analytical")
    assert not any("row group" in n for n in ck.program.notes)


@settings(max_examples=6, deadline=None)
@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 70), st.sampled_from(["vendor", "analytical"]))
def test_fused_epilogue_on_random_sizes(b, k, n, scheduler):
    """Ours fuses; the vendor baseline runs each statement as its own kernel, like a library."""
    ck = check("mlp", "sim-nnp", dict(B=b, K=k, N=n), scheduler, seed=b * k + n)
    assert any("fused into S0" in note for note in ck.program.notes) == (scheduler == "analytical")


FIRST = ["C(m, n) + b(n)", "fmax(C(m, n), 0)", "C(m, n) * D(m, n)", "sigmoid(C(m, n))", "C(m, n) - D(m, n) * 2"]
SECOND = ["tanh(C(m, n))", "C(m, n) * D(m, n) + b(n)", "(1 - C(m, n)) * D(m, n)", "C(m, n) / 4"]


@settings(max_examples=10, deadline=None)
@given(st.sampled_from(FIRST), st.sampled_from(SECOND), st.integers(1, 70), st.integers(1, 50), st.integers(1, 40))
def test_random_epilogue_chains_fuse_and_match_the_reference(first, second, m, n, k):
    """GEMM + an in-place update + a statement writing another output: fused on sim-nnp (the
    chain runs on the GEMM's blocks on chip) and equal to the reference interpreter."""
    src = ("def chain(float(M, K) A, float(K, N) B, float(N) b, float(M, N) D) -> (C, E) {\n"
           f"    C(m, n) +=! A(m, k) * B(k, n)\n    C(m, n) = {first}\n    E(m, n) = {second}\n}}\n")
    ck = compiler.build(src, target="sim-nnp", sizes=dict(M=m, N=n, K=k))
    ins = random_inputs(ck.kernel, ck.bound, m + n + k)
    ok, err, _ = compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins, ck.sizes), ck.precision)
    assert ok, (first, second, err)
    notes = " ".join(ck.program.notes)
    assert "S1" in notes and notes.count("fused into S0") == 2, notes


def _check_src(src, sizes, scheduler="analytical", seed=0):
    ck = compiler.build(src, target="sim-nnp", sizes=sizes, scheduler=scheduler)
    ins = random_inputs(ck.kernel, ck.bound, seed)
    # against the reference on the inputs as the program rounds them (fp32 -> a bf16 matrix
    # unit): what is left is accumulation order, even through a tanh of a large product
    ok, err, per = compare(ck.run_all(**ins), ck.reference(ins), ck.precision)
    assert ok, (sizes, scheduler, per)
    return ck


BROADCASTS = """def bias(float(A, B, C) X, float(A) b, float(B) c) -> (O, P) {
    O(i, j, k) = X(i, j, k) + b(i)
    P(i, j, k) = X(i, j, k) * c(j)
}
"""


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 70), st.sampled_from(["vendor", "analytical"]))
def test_per_iteration_scalar_operands(a, b, c, scheduler):
    """A vector instruction's scalar operand reading one element per iteration of the loops
    around it (a per-channel bias over an (h, w) tile): loaded next to the tile, addressed per
    iteration."""
    ck = _check_src(BROADCASTS, dict(A=a, B=b, C=c), scheduler, seed=a * b + c)
    assert "S0 on vadds" in ck.source("mappings")


@pytest.mark.parametrize("sizes", [dict(M=65, N=3, K=7), dict(M=1, N=1, K=1), dict(M=100, N=70, K=33)])
def test_a_bias_over_the_leading_index_loops_around_a_padded_dimension(sizes):
    """``C(n, m) + bias(n)``: no instruction adds a vector along i, but vadds' scalar operand
    reads bias(n) once per iteration of a loop over n, one instruction dimension padded (it
    was refused: n filled every instruction dimension it could, leaving none for the loop)."""
    src = ("def g(float(K, M) A, float(N, K) W, float(N) bias) -> (C, D) {\n"
           "    C(n, m) +=! W(n, k) * A(k, m)\n    D(n, m) = C(n, m) + bias(n)\n}\n")
    ck = _check_src(src, sizes)
    assert "S1 on vadds" in ck.source("mappings")


@pytest.mark.parametrize("sizes", [dict(M=25, N=98, K=145), dict(M=1, N=1, K=1), dict(M=70, N=3, K=5)])
def test_a_broadcast_inside_a_sequence_loops_around_every_step(sizes):
    """``tanh(C(m, n) + bias(m))``: the sum is a temporary whose every step leaves a dimension
    padded and loops over m around the whole sequence (refused before: vtanh bound m first)."""
    src = ("def g(float(K, M) A, float(N, K) W, float(M) bias) -> (C, D) {\n"
           "    C(m, n) +=! A(k, m) * W(n, k)\n    D(m, n) = tanh(C(m, n) + bias(m))\n}\n")
    ck = _check_src(src, sizes)
    assert any(ln.startswith("S1 on ") and "+vtanh" in ln for ln in ck.source("mappings").splitlines())


@pytest.mark.parametrize("sizes", [dict(N=1, D=1), dict(N=37, D=45), dict(N=64, D=1000)])
def test_vector_producers_keep_sequences_and_epilogues_on_chip(sizes):
    """A vector instruction's output is held where it was computed before its one hop out, so
    the rest of its statement's sequence (exp(I - mx): vsub_col then vexp) and the elementwise
    statements after it run on each block there: the temporary is never stored, and the
    second statement is fused into the first (or both run as a row group, which the model
    may prefer: 1417 against 1692 cycles at 37 x 45, within 1% elsewhere)."""
    src = ("def v(float(N, D) I, float(N) mx, float(D) b) -> (E, O) {\n    E(n, d) = exp(I(n, d) - mx(n))\n"
           "    O(n, d) = tanh(E(n, d) + b(d))\n}\n")
    ck = _check_src(src, sizes)
    loops = ck.source("loops")
    on_chip = "fused into S0" in loops or loops.count("in a row group with") == 2
    assert on_chip and "-> _S0_t1<" not in loops and "-> _S1_t1<" not in loops, loops


@pytest.mark.parametrize("sizes", [dict(N=70, D=100), dict(N=7, D=33), dict(N=64, D=1000)])
def test_a_sequence_fuses_the_steps_that_fit_and_stores_what_the_rest_reads(sizes):
    """layernorm's variance, (I - mean)^2 summed: vsub_col then vmul run on each block on chip,
    the reduction root (not elementwise) as its own nest reading the stored square; only that
    temporary gets main memory. Its normalisation: vadds + vrsqrt on the [n] statistics fuse,
    the [n, d] steps after them run on their own blocks."""
    ck = compiler.build(kernels.path("layernorm"), target="sim-nnp", sizes=sizes)
    ins = random_inputs(ck.kernel, ck.bound)
    ok, _, per = compare(ck.run_all(**ins), ck.reference(ins), ck.precision)
    assert ok, per
    scratch = [ln.split()[1] for ln in ck.source("loops").splitlines() if ln.startswith("scratch ")]
    assert "_S2_t1" not in scratch and "_S2_t2" in scratch and "_S4_t2" not in scratch, scratch


@pytest.mark.parametrize("src,sizes", [
    # S2 reads D as written before the GEMM: D must come from main memory, so S2 is not fused
    ("def g(float(M, K) A, float(K, N) B, float(M, N) X) -> (D, C) {\n    D(m, n) = X(m, n) * 3.0\n"
     "    C(m, n) +=! A(m, k) * B(k, n)\n    D(m, n) = D(m, n) + C(m, n)\n}\n", dict(M=40, N=50, K=30)),
    # two fused steps load T1 at different blocks, T1(m + 1, k + 1) and T1(m, k): one slot each
    ("def r(float(M, K) T1) -> (O0) {\n    O0(m) +=! T1(m + 1, k + 1) + 0 + T1(m + 1, k + 1) + T1(m, k)\n}\n",
     dict(M=2, K=2)),
    # a later step reads a temporary of a step outside the fused chain (found by a random-kernel fuzz)
    ("def r(float(M, K, N) T0, float(K, N, M) T1) -> (O0) {\n"
     "    O0(m, k) +=! -T0(m + 1, k + 1, n + 1) + -T1(k + 1, n + 1, m + 1) + T0(m, k, n)\n}\n", dict(M=2, N=2, K=2)),
])
def test_an_epilogue_reads_from_main_memory_only_what_it_loads(src, sizes):
    """An epilogue holds on chip only what its chain computed: a statement's own earlier value
    or another step's temporary is not fused in (the simulator caught reads of slots never written)."""
    _check_src(src, sizes)


@pytest.mark.parametrize("sizes", [dict(N=1, D=1), dict(N=33, D=2049), dict(N=70, D=100)])
def test_reduction_of_a_computed_expression(sizes):
    """TC's own softmax sums exp(I) directly: vexp into a temporary, reduced by vredsum (one
    block) or vredsum_acc (a reduction spanning blocks), with vexp + vdiv_col for the output."""
    src = ("def softmax(float(N, D) I) -> (O, expsum) {\n    expsum(n) +=! exp(I(n, d))\n"
           "    O(n, d) = exp(I(n, d)) / expsum(n)\n}\n")
    ck = _check_src(src, sizes)
    assert "S0 on vexp+vredsum" in ck.source("mappings")


@pytest.mark.parametrize("target", ["sim-nnp", "sim-gemmini-fp32"])
def test_timing_only_simulation_matches_the_functional_one(target):
    """The schedulers time candidates without computing data (block sizes from the tile
    bounds, no index arrays): cycles, engine busy time and bytes per link equal a full run's,
    remainder blocks included."""
    from compiler.backends.sim.simulate import Simulator
    for name, sizes in (("gemm", dict(M=37, N=13, K=41)), ("gemm", dict(M=64, N=32, K=96)),
                        ("batch_matmul", dict(Bt=3, M=5, N=7, K=11)), ("mlp", dict(B=7, K=33, N=65)),
                        ("softmax", dict(N=5, D=40)), ("conv2d", dict(N=2, C=3, H=6, W=7, F=4, R=3, S=2))):
        try:
            ck = compiler.build(kernels.path(name), target=target, sizes=sizes)
        except compiler.IsamapError:
            continue
        ins = random_inputs(ck.kernel, ck.bound)
        runs = []
        for functional in (True, False):
            sim = Simulator(ck.target_ir, ck.program, ck.kernel, ck.bound, ins, functional=functional)
            sim.run()
            cycles, busy, _ = sim.timing()
            runs.append((cycles, busy, dict(sim.link_bytes)))
        assert runs[0] == runs[1], (name, sizes)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_kernel_on_tpu(name):
    """sim-tpu is only a .hw file (128x128 MXUs, two cores, a vector unit on 128x128 tiles):
    every kernel runs on it, equal to the interpreter, with no compiler code for it."""
    for sizes in SIZES[name][:2]:
        ck = check(name, "sim-tpu", sizes, "analytical")
        assert ck.report["cycles"] > 0


def test_elementwise_updates_written_as_reductions_map_in_assignment_form():
    """O(i, j) += b(j), *= 2.0, max= 0.0 update each element (no reduction variable) and a
    first definition P +=! x is P = x: in assignment form they map onto vadd_row, vmuls,
    vrelu and vmul_row; a real reduction no instruction has says which update rule is missing."""
    src = ("def multi(float(N, M) A, float(M) b) -> (O, P) {\n    O(i, j) = A(i, j)\n    O(i, j) += b(j)\n"
           "    O(i, j) *= 2.0\n    O(i, j) max= 0.0\n    P(i, j) +=! A(i, j) * b(j)\n}\n")
    for sizes in (dict(N=37, M=70), dict(N=1, M=1)):
        ck = _check_src(src, sizes)
    text = ck.source("mappings")
    for line in ("S1 on vadd_row", "S2 on vmuls", "S3 on vrelu", "S4 on vmul_row"):
        assert line in text, text
    with pytest.raises(compiler.IsamapError) as e:
        compiler.build("def p(float(N, M) A) -> (O) { O(i) *=! A(i, j) }", target="sim-nnp", sizes=dict(N=4, M=5))
    assert e.value.notes == ["operation: no instruction of sim-nnp reduces with *=!"]


@pytest.mark.parametrize("sizes", [dict(N=7, M=7), dict(N=1, M=1), dict(N=70, M=33)])
def test_rank0_tensors_on_nnp(sizes):
    """A scalar input read by a vector instruction's scalar operand (loaded from memory, not
    folded as an immediate) and a rank-0 output written from a reduction's padded vector."""
    src = ("def total(float(N, M) A, float s) -> (S, T) {\n    S +=! A(i, j) * s\n"
           "    T(i) = S + A(i, 0)\n}\n")
    _check_src(src, sizes)


def test_scalar_operand_computed_from_a_tensor_is_refused_not_crashed():
    """An instruction's scalar operand is an immediate or one element read per iteration:
    `-s` over a rank-0 s is neither, so no cover binds it (the lowering used to crash on it)."""
    src = "def neg(float s, float(M) A) -> (O) {\n    O(m) = -s + A(m)\n}\n"
    with pytest.raises(compiler.IsamapError) as e:
        compiler.build(src, target="sim-nnp", sizes=dict(M=5))
    assert e.value.span is not None and "no instruction of sim-nnp" in e.value.message


def _gemm_on_gemmini_fp32(m: int = 512, n: int = 128, k: int = 512):
    ck = compiler.build(kernels.path("gemm"), target="sim-gemmini-fp32", sizes=dict(M=m, N=n, K=k))
    rng = np.random.default_rng(0)
    ins = {"A": rng.random((m, k), dtype=np.float32), "B": rng.random((k, n), dtype=np.float32)}
    return ck, ins


def test_one_accumulator_tile_twice_as_big_when_loads_bound():
    """sim-gemmini-fp32: a 16x16 fp32 block takes 64 cycles to load and 16 to multiply, so a
    C tile of 4 x 8 blocks (the most a 64 KiB accumulator double-buffers) waits on its 12 loads
    per K step; 8 x 8 blocks in one slot balance 16 loads against 64 products, the stores'
    drain between C tiles costing far less than that."""
    from dataclasses import replace

    from compiler.lower import lower
    ck, ins = _gemm_on_gemmini_fp32()
    ns = ck.schedule.nests[0]
    assert ns.out_slots == 1 and ns.tile("m") * ns.tile("n") == 64
    assert Schedule.from_json(ck.schedule.to_json()) == ck.schedule
    assert "output slots 1" in ck.schedule.describe()
    one = _simulated(ck, ck.program, ins)
    double = replace(ck.schedule, nests=(replace(ns, tiles=(("m", 4), ("n", 8), ("k", 1)), out_slots=0),))
    two = _simulated(ck, lower(ck.kernel, ck.bound, ck.target_ir, double, ck.candidates), ins)
    assert one.cycles < 0.8 * two.cycles
    assert one.cycles < 1.15 * one.roofline_cycles


def test_prefetched_loads_are_spread_over_the_step():
    """The loads of the next K step come one or two per row of C blocks, not all of B's in the
    first row: no stretch of the instruction stream as long as the window is mostly loads."""
    from compiler.backends.sim.simulate import simulate
    ck, ins = _gemm_on_gemmini_fp32()
    _, arrays = ir.interp.prepare_inputs(ck.kernel, ins, ck.sizes)
    res = simulate(ck.target_ir, ck.program, ck.kernel, ck.bound, arrays, listing=True)
    names = [line.split()[1] for line in res.listing if not line.startswith(";")]
    first_mm = names.index("matmul")
    step = 64 + 16  # one K step: 8 x 8 products and the next step's 16 loads
    body = names[first_mm + 2 * step:]  # past step 0 (its loads come at their first use)
    W = ck.target_ir.window
    densest = max(body[i:i + W].count("mvin") for i in range(0, len(body) - W, 4))
    assert densest <= W // 3, densest


def test_schedules_are_kept_in_the_cache_by_kernel_sizes_target_and_strategy(tmp_path, monkeypatch):
    """A deterministic strategy's schedule is searched once per kernel, sizes, target and code,
    then read back whole (the same schedule and predictions, the same results); an unreadable
    entry is searched again, and ``ISAMAP_CACHE=off`` searches every time."""
    from schedulers import search
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path))
    searched = []
    real = search._Search.schedule

    def counted(self, kernel, bound, target, budget=None):
        searched.append((kernel.name, tuple(bound.sizes.items()), target.name))
        return real(self, kernel, bound, target, budget)
    monkeypatch.setattr(search._Search, "schedule", counted)
    sizes = dict(M=40, N=24, K=36)
    first = compiler.build(kernels.path("gemm_bf16"), target="sim-nnp", sizes=sizes)
    again = compiler.build(kernels.path("gemm_bf16"), target="sim-nnp", sizes=sizes)
    assert len(searched) == 1 and not first.report["schedule_cached"] and again.report["schedule_cached"]
    assert again.schedule == first.schedule and again.schedule.predicted == first.schedule.predicted
    ins = random_inputs(again.kernel, again.bound, seed=1)
    ok, _, per = compare(again.run_all(**ins), ir.interp.run(again.kernel, ins, again.sizes), again.precision)
    assert ok, per
    compiler.build(kernels.path("gemm_bf16"), target="sim-nnp", sizes=dict(sizes, K=37))
    compiler.build(kernels.path("gemm_bf16"), target="sim-tpu", sizes=sizes)
    assert len(searched) == 3
    vendor = [compiler.build(kernels.path("gemm_bf16"), target="sim-nnp", sizes=sizes, scheduler="vendor")
              for _ in range(2)]  # kept under its own name
    assert [v.report["schedule_cached"] for v in vendor] == [False, True] and len(searched) == 3
    assert vendor[1].schedule.strategy == "vendor" != first.schedule.strategy
    for f in (tmp_path / "schedules").iterdir():
        f.write_bytes(b"torn")
    torn = compiler.build(kernels.path("gemm_bf16"), target="sim-nnp", sizes=sizes)
    assert len(searched) == 4 and not torn.report["schedule_cached"] and torn.schedule == first.schedule
    monkeypatch.setenv("ISAMAP_CACHE", "off")
    compiler.build(kernels.path("gemm_bf16"), target="sim-nnp", sizes=sizes)
    compiler.build(kernels.path("gemm_bf16"), target="sim-nnp", sizes=sizes)
    assert len(searched) == 6


def test_a_compiled_kernel_prints_as_one_line():
    """At a prompt a compiled kernel says what it is in a line, not its whole IR (100+ KiB)."""
    ck = compiler.build(kernels.path("gemm"), target="sim-nnp", sizes=dict(M=64, N=48, K=32))
    text = repr(ck)
    assert "\n" not in text and len(text) < 200
    assert text.startswith("<CompiledKernel gemm on sim-nnp (M=64, N=48, K=32)") and "cycles" in text
    assert repr(compiler.build(kernels.path("gemm"))) == "<CompiledKernel gemm on reference (sizes from the first call)>"


def test_the_first_steps_tiles_load_in_the_order_they_are_needed():
    """With several steps prefetched, the load engine serves copies in issue order: the tiles
    of step 0 come first, then step 1's, ... (step 0's used to queue behind steps 1..d-1's:
    sim-nnp 512x8x500 1835 -> 1611 cycles), and the model's fill counts step 0's transfer once."""
    ck = compiler.build(kernels.path("gemm_bf16"), target="sim-nnp", sizes=dict(M=512, N=8, K=500))
    ns = ck.schedule.nests[0]
    assert ns.prefetch > 1, ck.schedule.describe()
    core0 = [line for line in ck.source("asm").splitlines() if line.startswith("c0 ")]
    loads = []
    for line in core0:
        if not line.split()[1].startswith("ld"):
            break
        loads.append(line.split("src=")[1].split(",")[0] + "," + line.split("src=")[1].split(",")[1].split(")")[0])
    # A's and B's first K blocks (step 0) first, then each later step's in turn
    assert loads[0].startswith("hbm:A(0, 0") and loads[1].startswith("hbm:B(0, 0"), loads
    ks = [int(x.split(",")[1]) for x in loads if x.startswith("hbm:A")]
    assert ks == sorted(ks), loads
    ins = random_inputs(ck.kernel, ck.bound, 3)
    ok, _, per = compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins, ck.sizes), ck.precision)
    assert ok, per


@pytest.mark.parametrize("target", ["sim-nnp", "sim-tpu", "sim-gemmini", "sim-gemmini-fp32"])
def test_replayed_instruction_bodies_match_the_interpreter_bit_for_bit(target):
    """Copies and block products run as the numpy operations ir.interp performs, worked out once
    (fastbody.py): every such instruction of the target gives the interpreter's bits, NaN, inf
    and signed zeros included, with and without an initial output."""
    import hw_models
    from compiler.backends.sim.simulate import _Executor
    from ir import dtypes
    rng = np.random.default_rng(7)
    replayed = 0
    for ins in hw_models.load(target).instrs:
        ex = _Executor(ins)
        if ex.fast is None:
            continue
        replayed += 1
        out = ins.outputs[0]
        for trial in range(4):
            arrays = {}
            for o in ins.inputs:
                if o.dtype.is_float:
                    a = (rng.standard_normal(o.shape or ()) * 10.0 ** rng.integers(-3, 4)).astype(o.dtype.np)
                    if trial == 3 and a.size > 2:
                        a.reshape(-1)[:3] = (np.nan, np.inf, -0.0)
                    a = dtypes.round_bf16(a) if o.dtype == dtypes.BFLOAT16 else a
                else:
                    info = np.iinfo(o.dtype.np)
                    a = rng.integers(info.min, info.max, size=o.shape or (), dtype=o.dtype.np, endpoint=True)
                arrays[o.name] = a
            initial = None
            if trial % 2:
                initial = rng.standard_normal(out.shape).astype(out.dtype.np) if out.dtype.is_float else \
                    rng.integers(-100, 100, size=out.shape).astype(out.dtype.np)
            with np.errstate(all="ignore"):
                want, got = ex.interpret(arrays, initial), ex(arrays, initial)
            assert got.dtype == want.dtype and got.shape == want.shape, ins.name
            assert np.array_equal(got, want, equal_nan=True) and np.array_equal(np.signbit(got), np.signbit(want)), \
                (ins.name, trial)
    assert replayed >= 4  # its loads, converting loads, stores and matrix products


@pytest.mark.parametrize("name,target,sizes", [
    ("gemm", "sim-nnp", dict(M=67, N=45, K=38)),
    ("gemm_tn", "sim-gemmini-fp32", dict(M=37, N=21, K=19)),
    ("gemm_nt", "sim-tpu", dict(M=130, N=7, K=129)),
    ("gemm_i8", "sim-gemmini", dict(M=33, N=17, K=40)),
    ("batch_matmul", "sim-nnp", dict(Bt=3, M=35, K=20, N=33)),
    ("mlp", "sim-tpu", dict(B=5, K=130, N=129)),
    ("softmax", "sim-nnp", dict(N=37, D=70)),
    ("layernorm", "sim-tpu", dict(N=9, D=131)),
    ("gru_cell", "sim-nnp", dict(B=3, I=40, Hd=33)),
    ("conv2d", "sim-nnp", dict(N=2, C=5, H=9, W=11, F=7, R=3, S=2)),
    ("depthwise_conv2d", "sim-tpu", dict(N=1, C=3, H=7, W=9, R=3, S=3)),
])
def test_plain_blocks_move_as_slices_with_the_same_results(name, target, sizes, monkeypatch):
    """Blocks read through plain variables move as tensor slices, not index arrays per element:
    the same outputs bit for bit and the same cycles as the general path, edges included."""
    import sys
    simulate = sys.modules["compiler.backends.sim.simulate"]  # the module (the package exports a function of that name)
    ck = compiler.build(kernels.path(name), target=target, sizes=sizes)
    ins = random_inputs(ck.kernel, ck.bound, 5)
    fast = ck.run_all(**ins)
    cycles = ck.last.cycles
    monkeypatch.setattr(simulate, "PLAIN_TILES", False)
    slow = ck.run_all(**ins)
    assert ck.last.cycles == cycles
    for k in slow:
        assert np.array_equal(fast[k], slow[k], equal_nan=True), k
    ok, _, per = compare(fast, ir.interp.run(ck.kernel, ins, ck.sizes), ck.precision)
    assert ok, per


WINDOW_CONVS = [
    dict(N=2, C=16, H=12, W=12, F=32, R=3, S=3),  # a row and its halo in one block
    dict(N=1, C=5, H=4, W=70, F=7, R=2, S=5),  # rows over three blocks: windows span two
    dict(N=1, C=3, H=2, W=40, F=4, R=1, S=33),  # a tap one row longer than a block
    dict(N=1, C=2, H=2, W=33, F=3, R=1, S=2),  # 32 outputs wide: the halo is a block of its own
]


@pytest.mark.parametrize("sizes", WINDOW_CONVS)
def test_convolution_taps_read_sliding_windows_of_one_loaded_tile(sizes):
    """sim-nnp's mapping with I's rows along w: each tap s reads the rows s further on in one
    tile loaded with a halo block (``OperandInfo.window``, ``Slot.offset``), for any tiling of w,
    with w split across cores, and any prefetch; I is loaded once per tap row instead of S times."""
    from dataclasses import replace

    import compiler.nest
    from compiler.lower import lower
    from schedulers.search import best_nest
    from schedulers.space import candidates, fits
    ck = compiler.build(kernels.path("conv2d"), target="sim-nnp", sizes=sizes)
    t = ck.target_ir
    idx = next(i for i, c in enumerate(ck.candidates[0]) if any(o.window for o in c.nests[0].operands))
    nest = ck.candidates[0][idx].nests[0]
    (o,) = [o for o in nest.operands if o.window]
    assert o.tensor == "I" and o.window == ("w", "s") and o.axes[-1] == "w" and "s" not in o.axes
    best, _ = best_nest(t, nest)
    wb = nest.axis("w").blocks
    variants = [best, replace(best, prefetch=0), replace(best, prefetch=3)]
    if wb > 1:
        tiles = dict(best.tiles)
        variants += [replace(best, tiles=tuple({**tiles, "w": wb - 1}.items())),
                     replace(best, tiles=tuple({**tiles, "w": 1}.items()), split=(("w", wb),),
                             order=("w",) + tuple(a for a in best.order if a != "w"))]
    ins = random_inputs(ck.kernel, ck.bound, 1)
    for ns in variants:
        if fits(t, nest, ns) is not None:
            continue
        sched = Schedule(ck.kernel.name, t.name, tuple(sizes.items()), "manual", (idx,), (ns,))
        program = lower(ck.kernel, ck.bound, t, sched, ck.candidates)
        assert "rows" in show(program), ns
        res = _simulated(ck, program, ins)
        if ns is best:
            windowed = res
    compiler.nest.WINDOWS = False
    try:
        cands = candidates(ck.kernel, ck.bound, t)
        assert not any(o.window for o in cands[0][idx].nests[0].operands)
        program = lower(ck.kernel, ck.bound, t, Schedule(ck.kernel.name, t.name, tuple(sizes.items()), "manual",
                                                          (idx,), (best,)), cands)
        per_tap = _simulated(ck, program, ins)
    finally:
        compiler.nest.WINDOWS = True
    assert _main_bytes(windowed, "hbm") < _main_bytes(per_tap, "hbm")


@pytest.fixture
def unpitched(monkeypatch):
    """The mappings without pitched pairs (``bind.PITCHED``), where a small depthwise
    convolution would otherwise take its pixels at the input's pitch instead of windows."""
    import compiler.mapping.bind
    monkeypatch.setattr(compiler.mapping.bind, "PITCHED", False)


@pytest.mark.parametrize("sizes", [dict(N=2, C=40, H=6, W=12, R=3, S=3), dict(N=2, C=33, H=5, W=45, R=3, S=4)])
def test_depthwise_taps_read_windows_along_a_blocks_columns(sizes, unpitched):
    """sim-nnp's depthwise mapping runs w along its blocks' columns: the window slides along
    the second dimension (the tile's blocks side by side), and I comes on chip once per tap
    row (8x64x30x30 3x3: 15499 -> 7819 cycles, HBM-bound before)."""
    ck = check("depthwise_conv2d", "sim-nnp", sizes, None)
    text = ck.source("loops")
    assert " cols" in text and "columns further on" in text


def test_output_rows_of_a_tile_share_the_input_rows_they_read():
    """I(n, c, h + r, w + s): a tile of 3 output rows holds the 5 input rows its 3 filter rows
    reach once each (``OperandInfo.merged``), not 9 blocks; the result is the reference's."""
    from dataclasses import replace

    from compiler.lower import lower
    sizes = dict(N=2, C=40, H=9, W=12, R=3, S=3)
    ck = compiler.build(kernels.path("depthwise_conv2d"), target="sim-nnp", sizes=sizes)
    idx = ck.schedule.mappings[0]
    nest = ck.candidates[0][idx].nests[0]
    (o,) = [o for o in nest.operands if o.merged]
    assert o.merged == ("h", "r") and o.tensor == "I"
    ins = random_inputs(ck.kernel, ck.bound, 2)
    moved = {}
    for h in (1, 3, 4):
        tiles = tuple((a, h if a == "h" else t) for a, t in ck.schedule.nests[0].tiles)
        sched = replace(ck.schedule, nests=(replace(ck.schedule.nests[0], tiles=tiles, split=(("n", 2),)),))
        assert o.tile_blocks(dict(tiles)) == (h + 2) * o.tile_blocks({**dict(tiles), "h": 1}) // 3
        moved[h] = _main_bytes(_simulated(ck, lower(ck.kernel, ck.bound, ck.target_ir, sched, ck.candidates), ins),
                               "hbm")
    assert moved[3] < moved[1] and moved[4] < moved[1]


def test_a_three_axis_core_grid_is_searched_and_correct(unpitched):
    """Channels, images and rows split over the cores at once (24 = 2 x 4 x 3 on sim-nnp)."""
    from dataclasses import replace

    from compiler.lower import lower
    from schedulers.search import core_grids
    sizes = dict(N=4, C=40, H=8, W=12, R=3, S=3)
    ck = compiler.build(kernels.path("depthwise_conv2d"), target="sim-nnp", sizes=sizes)
    nest = ck.candidates[0][ck.schedule.mappings[0]].nests[0]
    grids = core_grids(ck.target_ir, nest)
    assert (("c", 2), ("n", 4), ("h", 3)) in grids and all(len(g) <= 3 for g in grids)
    ns = replace(ck.schedule.nests[0], split=(("c", 2), ("n", 4), ("h", 3)))
    sched = replace(ck.schedule, nests=(ns,))
    _simulated(ck, lower(ck.kernel, ck.bound, ck.target_ir, sched, ck.candidates), random_inputs(ck.kernel, ck.bound, 3))


PITCHED_CONVS = [
    ("conv2d", "sim-tpu", dict(N=2, C=5, H=9, W=11, F=7, R=3, S=2)),
    ("conv2d_nhwc", "sim-tpu", dict(N=2, H=7, W=9, C=3, F=4, R=2, S=3)),
    ("conv2d_nhwc", "sim-nnp", dict(N=1, H=5, W=40, C=6, F=9, R=3, S=5)),  # a row over two blocks
    ("depthwise_conv2d", "sim-tpu", dict(N=1, C=3, H=6, W=7, R=3, S=3)),
    ("conv2d_nhwc_i8", "sim-gemmini", dict(N=2, H=6, W=6, C=17, F=5, R=3, S=3)),
    ("conv2d", "sim-nnp", dict(N=1, C=2, H=3, W=2, F=3, R=1, S=2)),  # one output column
]


@pytest.mark.parametrize("name,target,sizes", PITCHED_CONVS)
def test_output_columns_run_over_the_input_rows_at_its_pitch(name, target, sizes):
    """A convolution's pixels (h, w) as one instruction dim with w over the input's whole row
    (``bind._pitch``, ``Step.pitch``): I's tiles are contiguous runs of pixels read with plain
    copies, each tap's run r * W + s further on; the W - Wo columns of overlap per row are
    computed and never stored (``TileDim.real``: holes, not out-of-bounds elements). Exact
    against the reference; the output's stored bytes are the tensor's, not the padded rows';
    the timing-only run (the scheduler's) counts the same bytes and cycles as the functional one."""
    from compiler.backends.sim.simulate import simulate
    from compiler.lower import lower
    from schedulers.search import best_nest
    ck = compiler.build(kernels.path(name), target=target, sizes=sizes)
    t = ck.target_ir
    idx = [i for i, c in enumerate(ck.candidates[0]) if c.nests[0].step.pitch()]
    assert idx, "no pitched mapping"
    cand = ck.candidates[0][idx[0]]
    (m,) = [tr for tr in cand.mapping.transforms if " at pitch " in tr and "rows" in tr]
    assert "gather" not in " ".join(x for x in cand.mapping.transforms if x.startswith(m.split(":")[0]))
    ns, _ = best_nest(t, cand.nests[0])
    sched = Schedule(ck.kernel.name, t.name, tuple(ck.sizes.items()), "manual", (idx[0],), (ns,))
    program = lower(ck.kernel, ck.bound, t, sched, ck.candidates)
    ins = random_inputs(ck.kernel, ck.bound, 4)
    if name.endswith("_i8"):
        ins = {k: np.random.default_rng(4).integers(-128, 128, v.shape).astype(np.int8) for k, v in ins.items()}
    res = _simulated(ck, program, ins)
    out = ck.kernel.outputs[0]
    stored = sum(v for link, v in res.link_bytes.items() if link.endswith("->" + t.main))
    assert stored == np.prod(ck.bound.shapes[out.name]) * out.dtype.itemsize
    _, arrays = ir.interp.prepare_inputs(ck.kernel, ins, ck.sizes)
    timing = simulate(t, program, ck.kernel, ck.bound, arrays, functional=False)
    assert (timing.cycles, timing.link_bytes) == (res.cycles, res.link_bytes)




@pytest.mark.parametrize("name,target,sizes", [
    ("mlp", "sim-gemmini-fp32", dict(B=7, K=33, N=65)),
    ("conv2d_nhwc_bias_relu", "sim-gemmini-fp32", dict(N=2, H=7, W=9, C=5, F=18, R=3, S=2)),
    ("conv2d_nhwc_i8_bias_relu", "sim-gemmini", dict(N=2, H=7, W=9, C=5, F=18, R=3, S=2)),
    ("conv2d_nhwc_i8_bias_relu", "sim-gemmini", dict(N=1, H=12, W=12, C=20, F=33, R=3, S=3))])
def test_gemmini_adds_the_bias_and_applies_relu_on_accumulator_rows(name, target, sizes):
    """Gemmini has no vector unit: a layer's bias and ReLU run on the accumulator's
    read-out path (acc_add_row, acc_relu in its .hw), on each output block before its one
    mvout (fused, or the two statements a row group); exact, and fewer cycles than the statement run on its own (O stored, moved back in
    and out again)."""
    from dataclasses import replace

    from compiler.lower import lower
    ck = check(name, target, sizes, "analytical")
    assert any("S1 on acc_add_row+acc_relu" in n and ("fused into S0" in n or "in a row group with S0" in n)
               for n in ck.program.notes)  # (a row group: one block of the GEMM, then its epilogue, on chip)
    ins = random_inputs(ck.kernel, ck.bound, 2)
    if target == "sim-gemmini":
        rng = np.random.default_rng(2)
        ins = {k: rng.integers(-128, 128, v.shape).astype(v.dtype) for k, v in ins.items()}
    fused = _simulated(ck, ck.program, ins)
    plain = _simulated(ck, lower(ck.kernel, ck.bound, ck.target_ir, replace(ck.schedule, fuse=False),
                                 ck.candidates), ins)
    assert fused.cycles < plain.cycles
    out = ck.kernel.outputs[0].name
    assert fused.link_bytes["acc->dram"] == 4 * np.prod(ck.bound.shapes[out]) < plain.link_bytes["acc->dram"]


def test_a_producers_tiling_leaves_its_epilogue_room(monkeypatch, tmp_path):
    """A fused epilogue's slots (its temporary and bias blocks, two per output block) share the
    accumulator with the producer's tiles: the producer's tiling is searched again with that
    room reserved (``epilogue.reserves``), or the lowering would run the epilogue apart (at
    8x30x30x64 * 3x3x64x128 on sim-gemmini the output tile the model picks alone fills the
    accumulator; apart it simulated 3002620 cycles, fused 2232176, the convolution alone 2199572)."""
    import schedulers.search
    from compiler.epilogue import reserves
    from schedulers.space import fits
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path))
    sizes = dict(N=8, H=30, W=30, C=64, F=128, R=3, S=3)
    ck = compiler.build(kernels.path("conv2d_nhwc_i8_bias_relu"), target="sim-gemmini", sizes=sizes)
    assert any("fused into S0" in n for n in ck.program.notes)
    chosen = [ck.candidates[si][m].nests for si, m in enumerate(ck.schedule.mappings)]
    (mem, per_block), = reserves(ck.kernel, ck.target_ir, chosen).values()
    assert mem == "acc" and per_block == 2 * (16 * 16 * 4 + 16 * 4)  # a temporary block and a bias row
    assert fits(ck.target_ir, chosen[0][0], ck.schedule.nests[0], (mem, per_block)) is None
    # the cpsat strategy searches the producer again with the same room (a TypeError before)
    from schedulers.cpsat import CpSat
    ns, cost = CpSat().nest(ck.target_ir, chosen[0][0], reserve=(mem, per_block))
    assert fits(ck.target_ir, chosen[0][0], ns, (mem, per_block)) is None and cost["cycles"] > 0
    monkeypatch.setattr(schedulers.search, "reserves", lambda *a: {})
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path / "apart"))  # not the schedule just kept
    apart = compiler.build(kernels.path("conv2d_nhwc_i8_bias_relu"), target="sim-gemmini", sizes=sizes)
    assert not any("fused into S0" in n for n in apart.program.notes)

def test_a_bias_and_relu_run_on_a_convolutions_pitched_blocks():
    """sim-tpu's convolution computes its pixels at the input's pitch; the bias and ReLU run on
    those blocks as they are (the overlap columns too, never stored): one store of O, exact,
    and within a few percent of the convolution alone (unfused, O went out and back)."""
    sizes = dict(N=2, C=32, H=18, W=18, F=64, R=3, S=3)
    ck = check("conv2d_bias_relu", "sim-tpu", sizes, "analytical")
    assert ck.candidates[0][ck.schedule.mappings[0]].nests[0].step.pitch()
    assert any("S1 on vadd_col+vrelu" in n and "fused into S0" in n for n in ck.program.notes)
    ins = random_inputs(ck.kernel, ck.bound, 5)
    res = _simulated(ck, ck.program, ins)
    t = ck.target_ir
    stored = sum(v for link, v in res.link_bytes.items() if link.endswith("->" + t.main))
    assert stored == 4 * np.prod(ck.bound.shapes["O"])
    alone = compiler.build(kernels.path("conv2d"), target="sim-tpu", sizes=sizes)
    assert res.cycles < 1.1 * _simulated(alone, alone.program, random_inputs(alone.kernel, alone.bound, 5)).cycles



RESIDUAL = """def conv_residual(float(N, C, H, W) I, float(F, C, R, S) Wt, float(N, F, P, Q) X) -> (O) {
    O(n, f, h, w) +=! I(n, c, h + r, w + s) * Wt(f, c, r, s)
    O(n, f, h, w) = fmax(O(n, f, h, w) + X(n, f, h, w), 0)
}
"""


def test_a_residual_is_loaded_at_the_convolutions_pitch():
    """A residual X(n, f, h, w) beside pixels computed at the input's pitch is loaded the way
    the output block is stored: rows at the pitch, the overlap columns left out (X declared
    with sizes of its own: the mapping pass compares the numbers). Exact, O stored once, X read
    once, the timing-only run counting what the functional one does."""
    from compiler.backends.sim.simulate import simulate
    sizes = dict(N=2, C=32, H=18, W=18, F=64, R=3, S=3, P=16, Q=16)
    ck = compiler.build(RESIDUAL, target="sim-tpu", sizes=sizes)
    assert ck.candidates[0][ck.schedule.mappings[0]].nests[0].step.pitch()
    assert any("S1 on vadd+vrelu" in n and "fused into S0" in n for n in ck.program.notes)
    assert "X<f@" in ck.source("loops") and "h*w[16 of 18]" in ck.source("loops")
    ins = random_inputs(ck.kernel, ck.bound, 6)
    res = _simulated(ck, ck.program, ins)
    t = ck.target_ir
    out_bytes = 4 * np.prod(ck.bound.shapes["O"])
    assert sum(v for link, v in res.link_bytes.items() if link.endswith("->" + t.main)) == out_bytes
    _, arrays = ir.interp.prepare_inputs(ck.kernel, ins, ck.sizes)
    timing = simulate(t, ck.program, ck.kernel, ck.bound, arrays, functional=False)
    assert (timing.cycles, timing.link_bytes) == (res.cycles, res.link_bytes)


def test_an_epilogue_loads_each_bias_block_once_per_tile():
    """A bias by filter is loaded once for the output blocks of a tile that differ only in
    other axes (three rows of pixels: one copy, not three), and each block reads that slot."""
    from dataclasses import replace

    from compiler.backends.sim.simulate import simulate
    from compiler.lower import lower
    from schedulers.space import fits
    ck = compiler.build(kernels.path("conv2d_bias_relu"), target="sim-nnp",
                        sizes=dict(N=2, C=16, H=9, W=12, F=40, R=3, S=3))
    cand = ck.candidates[0][ck.schedule.mappings[0]]
    ns = ck.schedule.nests[0]
    assert "h" in cand.nests[0].output.axes and cand.nests[0].axis("h").instr_var is None
    ns = replace(ns, tiles=tuple((a, 3 if a == "h" else 1) for a, _ in ns.tiles), split=(), prefetch=1)
    assert fits(ck.target_ir, cand.nests[0], ns) is None
    sched = replace(ck.schedule, nests=(ns,) + ck.schedule.nests[1:])
    program = lower(ck.kernel, ck.bound, ck.target_ir, sched, ck.candidates)
    assert any("fused into S0" in n for n in program.notes)
    ins = random_inputs(ck.kernel, ck.bound, 3)
    _simulated(ck, program, ins)
    _, arrays = ir.interp.prepare_inputs(ck.kernel, ins, ck.sizes)
    listing = simulate(ck.target_ir, program, ck.kernel, ck.bound, arrays, listing=True).listing
    stores = sum(1 for x in listing if "st_f32" in x and "dst=hbm:O" in x)
    bias = sum(1 for x in listing if "src=hbm:Bias" in x)
    # (n, f blocks) x 7 rows, stored a block each; the bias once a tile of 3 rows (3 + 3 + 1)
    assert stores == 2 * 2 * 7 and bias == 2 * 2 * 3

def test_a_producer_takes_the_mapping_its_epilogue_fuses_onto():
    """At 1x1 every convolution mapping costs the same alone, and the first (O written
    transposed, w x f) is one no epilogue mapping reads; one pass over the statements as they
    are kept it and ran the bias and ReLU as a nest of their own.  Each producer mapping is
    weighed with its consumers' best answer (``search._completions``): the pair that fuses."""
    ck = check("conv2d_bias_relu", "sim-nnp", dict(N=1, C=1, H=1, W=1, F=1, R=1, S=1), "analytical")
    assert any("fused into S0" in n for n in ck.program.notes)
    assert sum(1 for n in ck.program.body if type(n).__name__ == "Barrier") == 1

def test_pitched_pairs_are_a_switch_and_explained():
    """``bind.PITCHED`` off gives the mappings before them (I gathered along (h,w)); on, the
    mapping says what it does with I and O."""
    import compiler.mapping.bind as bind
    sizes = dict(N=8, C=64, H=30, W=30, F=128, R=3, S=3)
    text = "\n".join(m.describe() for m in compiler.mappings(kernels.path("conv2d"), "sim-tpu", sizes))
    assert "B: I (h,w) read flat at pitch 30" in text
    assert "C: O rows (h,w) at pitch 30, the 2 columns of overlap a row computed and not stored" in text
    assert "j=(h,w), k=c extents i:exact, j:padded 840->896" in text
    try:
        bind.PITCHED = False
        text = "\n".join(m.describe() for m in compiler.mappings(kernels.path("conv2d"), "sim-tpu", sizes))
    finally:
        bind.PITCHED = True
    assert "at pitch" not in text and "fusing (h,w) of I is not contiguous" in text


NHWC_LAYER = dict(N=8, H=30, W=30, C=64, F=128, R=3, S=3)


def test_nhwc_convolution_folds_a_filter_rows_taps_into_the_reduction():
    """sim-tpu's NHWC layer binds k = (s, c) (a run of one filter row's pixels, contiguous
    from w + s on) with the input one tile of a whole row of pixels that each output column
    reads C elements further on (``nest._run_window``): a third of the matrix unit's passes
    gone against k = c, the input read once per filter row, and the result the reference's."""
    from math import prod

    import compiler.routes
    from compiler.lower import lower
    ck = compiler.build(kernels.path("conv2d_nhwc"), target="sim-tpu", sizes=NHWC_LAYER)
    (nest,) = ck.candidates[0][ck.schedule.mappings[0]].nests
    assert nest.axis("(s,c)").instr_var == "k"
    (o,) = [o for o in nest.operands if o.window]
    assert o.tensor == "I" and o.along_run and o.window == ("(s,c)", "w") and o.window_stride == 64
    assert "I dims (s,c) fused from w + s on" in ck.candidates[0][ck.schedule.mappings[0]].mapping.describe()
    assert "w x 64 columns further on" in show(ck.program)
    ins = random_inputs(ck.kernel, ck.bound, 3)
    early = _simulated(ck, ck.program, ins)
    # one tile of I per filter row and (n, h) block: I's bytes (as fp32) once per filter row
    assert _main_bytes(early, "hbm") < 3.5 * 4 * prod(ck.bound.shapes["I"]) + 4 * prod(ck.bound.shapes["Wt"]) * 2
    # the output's blocks stored as each is finished: the same results, a shorter drain
    compiler.routes.EARLY_STORES = False
    try:
        late = _simulated(ck, lower(ck.kernel, ck.bound, ck.target_ir, ck.schedule, ck.candidates), ins)
    finally:
        compiler.routes.EARLY_STORES = True
    for name in early.outputs:
        np.testing.assert_array_equal(early.outputs[name], late.outputs[name])
    assert early.cycles < late.cycles


def test_taps_read_a_window_over_pixels_at_the_input_pitch():
    """sim-tpu's depthwise layer reads I's pixels at the input's pitch (p = h * W + w); tap s
    then reads the pixels s further on in one tile with a halo block instead of a tile of its
    own (``nest._window_along`` over a pitched pair, ``PITCHED_WINDOWS``): the same results
    with a third of I's bytes from main memory."""
    import compiler.nest
    from compiler.lower import lower
    from schedulers.space import candidates
    sizes = dict(N=2, C=16, H=12, W=12, R=3, S=3)
    ck = compiler.build(kernels.path("depthwise_conv2d"), target="sim-tpu", sizes=sizes)
    found = [(i, c) for i, c in enumerate(ck.candidates[0])
             if any(o.window and ck.candidates[0][i].nests[0].axis(o.window[0]).real for o in c.nests[0].operands)]
    assert found
    idx, cand = found[0]
    (o,) = [o for o in cand.nests[0].operands if o.window]
    assert o.tensor == "I" and o.window[1] == "s" and "s" not in o.axes
    sched = Schedule(ck.kernel.name, ck.target_ir.name, tuple(sizes.items()), "manual", (idx,),
                     (schedulers_best(ck.target_ir, cand.nests[0]),))
    ins = random_inputs(ck.kernel, ck.bound, 5)
    windowed = _simulated(ck, lower(ck.kernel, ck.bound, ck.target_ir, sched, ck.candidates), ins)
    compiler.nest.PITCHED_WINDOWS = False
    try:
        cands = candidates(ck.kernel, ck.bound, ck.target_ir)
        assert not any(o.window for o in cands[0][idx].nests[0].operands)
        sched = Schedule(ck.kernel.name, ck.target_ir.name, tuple(sizes.items()), "manual", (idx,),
                         (schedulers_best(ck.target_ir, cands[0][idx].nests[0]),))
        per_tap = _simulated(ck, lower(ck.kernel, ck.bound, ck.target_ir, sched, cands), ins)
    finally:
        compiler.nest.PITCHED_WINDOWS = True
    assert _main_bytes(windowed, "hbm") < 0.5 * _main_bytes(per_tap, "hbm")


def schedulers_best(target, nest):
    from schedulers.search import best_nest
    return best_nest(target, nest)[0]
