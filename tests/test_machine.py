"""The host ceilings behind the benchmark tables' %roof (``compiler.bench.machine``): the
JIT-compiled loops compute what they claim to, and the roofline model picks the right tier.
No assertion here is on how fast anything ran."""
import math

import numpy as np
import pytest

from compiler.bench import gemm as bg
from compiler.bench import machine
from compiler.bench.gru import GruRow, gru_roofline, table as gru_table


def test_read_loop_sums_the_buffer_it_is_timed_on():
    lanes = machine._lanes()
    _, _, read = machine.kernels(lanes)
    step = machine.UNROLL * lanes
    buf = machine.aligned_ones(step * 37)
    assert buf.ctypes.data % 64 == 0
    buf[:] = np.random.default_rng(0).uniform(-1, 1, buf.size).astype(np.float32)
    assert read(buf.ctypes.data, buf.size) == pytest.approx(float(buf.sum(dtype=np.float64)), rel=1e-5, abs=1e-3)
    assert read(buf.ctypes.data, step) == pytest.approx(float(buf[:step].sum(dtype=np.float64)), rel=1e-5, abs=1e-4)


def test_fma_loop_runs_its_chains_of_fused_multiply_adds():
    lanes = machine._lanes()
    _, fma, _ = machine.kernels(lanes)
    x, y = np.float32(1.0000001), np.float32(0.9999999)
    accs = np.arange(machine.CHAINS, dtype=np.float64)
    for _ in range(5):
        accs = (accs.astype(np.float32).astype(np.float64) * float(x) + float(y)).astype(np.float32).astype(np.float64)
    assert fma(5) == pytest.approx(lanes * accs.sum(), rel=1e-6)


def test_measure_reports_positive_ceilings_and_the_caches():
    c = machine.measure(read_bytes=4 << 20, fma_iterations=10_000, passes=1)
    for v in (c.fma_gflops, c.fma_gflops_one, c.read_gbs, c.read_gbs_one, c.llc_gbs):
        assert v > 0 and math.isfinite(v)
    assert c.threads >= 1 and c.lanes in (4, 8, 16)
    assert "GFLOP/s" in c.summary() and "GB/s" in c.summary()
    one = machine.measure(read_bytes=4 << 20, fma_iterations=10_000, passes=1, single=False)
    assert one.fma_gflops_one == 0 and one.read_gbs_one == 0


def ceilings(llc=32 << 20, l2=1 << 20):
    return machine.Ceilings(threads=2, fma_gflops=200.0, fma_gflops_one=100.0, read_gbs=25.0, read_gbs_one=20.0,
                            llc_gbs=100.0, llc_bytes=llc, l2_bytes=l2, lanes=16)


def test_a_working_set_is_read_from_the_tier_it_does_not_fit_above():
    c = ceilings()
    assert c.read_seconds(1 << 20) == 0  # fits in the two L2s
    assert c.read_seconds(8e6) == pytest.approx(8e6 / 100e9)  # the last-level cache
    assert c.read_seconds(80e6) == pytest.approx(80e6 / 25e9)  # memory
    assert c.floor_seconds(2e9, 80e6) == pytest.approx(0.01) and not c.memory_bound(2e9, 80e6)
    assert c.floor_seconds(2e6, 80e6) == pytest.approx(80e6 / 25e9) and c.memory_bound(2e6, 80e6)
    assert ceilings(llc=None).read_seconds(1e12) == 0  # cache sizes unknown: FLOPs alone


def test_batch_one_gru_steps_above_the_cache_are_bound_by_memory_bandwidth():
    c = ceilings()
    H, T = 2560, 100
    f = gru_roofline(c, H, 1, T, {"ours": 1.0, "numpy": 2.0})
    assert f["memory_bound"] is True
    step = 4 * 3 * H * H / 25e9  # every step streams the recurrent weights from memory
    proj = 2.0 * T * H * 3 * H / 200e9  # the projection's working set (~27 MB) is cached: FLOPs bound it
    assert f["floor_seconds"] == pytest.approx(proj + T * step)
    assert f["of_roofline"] == pytest.approx(f["floor_seconds"]) and f["numpy_of_roofline"] == pytest.approx(
        f["floor_seconds"] / 2)
    assert gru_roofline(c, 512, 32, T, {})["memory_bound"] is False


def test_host_tables_show_the_roofline_column_and_the_ceilings():
    c = ceilings()
    row = bg.Row("training", 64, 16, 48, False, False, precision="float32", ratio=1.5, scheduler="llvm")
    row.extra = dict(seconds=1e-3, numpy_seconds=1.5e-3, gflops=1.0, numpy_gflops=0.7, threads=2)
    row.extra.update(machine.row_fields(c, 0.5e-3, False, {"ours": 1e-3, "numpy": 1.5e-3}))
    text = bg.table([row], "cpu")
    assert "%roof" in text and "  50% " in text and "FP32 FMA peak 200 GFLOP/s" in text and "around each row" in text
    assert "compute-bound rows (1): median %roof ours 50%, numpy 33%" in text
    g = GruRow("inference_server", 2560, 1, 10, ratio=1.0, correct=True)
    g.extra = dict(seconds=1.0, numpy_seconds=1.0, gflops=1.0, numpy_gflops=1.0)
    g.extra.update(gru_roofline(c, 2560, 1, 10, {"ours": 1.0, "numpy": 1.0}))
    text = gru_table([g], "cpu")
    assert "%m" in text and "memory-bound rows (1)" in text


def test_a_row_keeps_the_better_of_the_ceilings_measured_around_it():
    slow = machine.Ceilings(threads=2, fma_gflops=150.0, fma_gflops_one=0.0, read_gbs=30.0, read_gbs_one=0.0,
                            llc_gbs=120.0, llc_bytes=32 << 20, l2_bytes=1 << 20, lanes=16)
    b = ceilings().best(slow)
    assert (b.fma_gflops, b.read_gbs, b.llc_gbs) == (200.0, 30.0, 120.0) and b.llc_bytes == 32 << 20
