"""The benchmark harness (on tiny problems: the real suites are run by `isamap bench`)."""
import json

import numpy as np
import pytest

import compiler
import ir.interp
from compiler import cli
from compiler.backends.cuda.runtime import gpu_present
from compiler.bench import gemm as bg


def test_generated_gemm_kernels_compute_the_transposed_products():
    rng = np.random.default_rng(0)
    A, B = rng.uniform(size=(5, 7)).astype(np.float32), rng.uniform(size=(7, 3)).astype(np.float32)
    for a_t, b_t in [(False, False), (True, False), (False, True)]:
        k = compiler.parse(bg.gemm_source("float", "float", a_t, b_t)).kernel()
        out = ir.interp.run(k, {"A": A.T.copy() if a_t else A, "B": B.T.copy() if b_t else B})["C"]
        np.testing.assert_allclose(out, A @ B, rtol=1e-5)


def test_bench_json_rows_carry_ratios(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bg, "QUICK", [("training", 96, 16, 64, False, False),
                                      ("inference_server", 40, 8, 48, False, False),
                                      ("training", 64, 32, 96, True, False)])
    assert cli.main(["bench", "gemm", "--target", "sim-nnp", "--json", "--out", str(tmp_path)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert len(r["results"]) == 3 and all(row["ratio"] > 0 for row in r["results"])
    assert r["geomean_ratio"] > 0 and "2*M*N*K" in r["convention"]
    assert (tmp_path / "gemm_sim-nnp.csv").exists() and (tmp_path / "gemm_sim-nnp.json").exists()
    assert r["results"][0]["precision"] == "bfloat16->float"


@pytest.mark.skipif(gpu_present(), reason="a GPU is present")
def test_timed_sides_let_neither_compared_side_always_follow_the_extra_baseline(monkeypatch):
    """A call right after torch's is slower whichever side makes it: torch goes last in each
    round (first among the warm-ups), and ours and numpy take turns after it."""
    calls = []
    monkeypatch.setattr(bg, "QUIET_SECONDS", 0)
    monkeypatch.setattr(bg, "MIN_SECONDS", 0)
    sides = {name: (lambda name=name: calls.append(name) or name) for name in ("ours", "numpy", "torch")}
    timed = bg._timed_sides(sides, repeats=3)
    assert calls[:3] == ["torch", "ours", "numpy"]  # warm-ups
    after_torch = [b for a, b in zip(calls[3:], calls[4:]) if a == "torch"]
    assert after_torch == ["numpy", "ours"] and calls[-1] == "torch"
    assert {name: calls.count(name) for name in sides} == {"ours": 4, "numpy": 4, "torch": 4}
    assert all(timed[name][3] == name for name in sides)  # each side's warm-up result


def test_timed_sides_settle_memory_before_each_block_of_large_outputs(monkeypatch):
    """Large outputs: an allocation of the output's size precedes every timed block (it
    absorbs the kernel's memory compaction after torch's frees); small ones: none."""
    calls = []
    monkeypatch.setattr(bg, "QUIET_SECONDS", 0)
    monkeypatch.setattr(bg, "MIN_SECONDS", 0)
    monkeypatch.setattr(bg, "SETTLE_BYTES", 4096)
    real_ones = np.ones
    monkeypatch.setattr(bg.np, "ones", lambda n, dt: calls.append(("settle", n)) or real_ones(n, dt))
    big = {name: (lambda name=name: calls.append(name) or np.zeros(2048, np.float32)) for name in ("ours", "numpy")}
    bg._timed_sides(big, repeats=3)
    assert calls[2:] == [("settle", 2048), "ours", ("settle", 2048), "numpy", ("settle", 2048), "numpy",
                         ("settle", 2048), "ours", ("settle", 2048), "ours", ("settle", 2048), "numpy"]
    calls.clear()
    small = {name: (lambda name=name: calls.append(name) or np.zeros(8, np.float32)) for name in ("ours", "numpy")}
    bg._timed_sides(small, repeats=3)
    assert ("settle", 8) not in calls and len(calls) == 8


def test_bench_on_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert cli.main(["bench", "gemm", "--target", "cuda"]) == 1
    assert "no NVIDIA GPU" in capsys.readouterr().err
    assert cli.main(["bench", "gru", "--target", "cuda"]) == 1
    assert "no NVIDIA GPU" in capsys.readouterr().err


def test_bench_gemm_on_cpu_against_numpy(monkeypatch, capsys):
    monkeypatch.setattr(bg, "QUICK", [("training", 64, 16, 48, False, False), ("training", 33, 8, 17, True, False)])
    assert cli.main(["bench", "gemm", "--target", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for row in r["results"]:
        assert row["ratio"] > 0 and row["extra"]["numpy_seconds"] > 0 and row["extra"]["max_abs_error"] < 1e-3
        assert row["extra"]["of_roofline"] > 0 and row["extra"]["memory_bound"] is False  # tiny: in cache


def test_bench_gru_json(monkeypatch, capsys):
    from compiler.bench import gru
    monkeypatch.setattr(gru, "QUICK", [("training", 64, 4, 2), ("inference_server", 32, 1, 5)])
    assert cli.main(["bench", "gru", "--target", "sim-nnp", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    rows = r["results"]
    assert [x["correct"] for x in rows] == [True, True]
    assert all(x["ratio"] > 0 for x in rows) and rows[1]["extrapolated"] is True
    assert rows[0]["flops"] == 6 * 2 * 4 * 64 * 64


def test_bench_rejects_unknown_sets_for_every_kernel(capsys):
    for kernel in ("gemm", "gru"):
        assert cli.main(["bench", kernel, "--target", "sim-nnp", "--sets", "trainig"]) == 1
        err = capsys.readouterr().err
        assert "unknown set 'trainig'" in err and "Traceback" not in err


def test_bench_gru_on_cpu_against_numpy(monkeypatch, capsys):
    from compiler.bench import gru
    monkeypatch.setattr(gru, "QUICK", [("training", 16, 3, 4), ("inference_server", 7, 1, 5)])
    assert cli.main(["bench", "gru", "--target", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert "numpy" in r["convention"]
    for row in r["results"]:
        assert row["correct"] is True and row["max_abs_error"] < 1e-4
        assert row["ratio"] > 0 and row["extra"]["numpy_seconds"] > 0
        assert row["extra"]["of_roofline"] > 0 and row["extra"]["peak_gflops"] > 0


def test_torch_gru_baseline_computes_our_gru():
    """The optional torch.nn.GRU baseline is loaded with our weights: same hidden state."""
    pytest.importorskip("torch")
    from compiler.bench.gru import torch_baseline
    from compiler.rnn import gru_reference, random_gru
    w = random_gru(24, 24, seed=3)
    x = np.random.default_rng(0).uniform(-1, 1, (6, 3, 24)).astype(np.float32)
    h0 = np.random.default_rng(1).uniform(-1, 1, (3, 24)).astype(np.float32)
    assert np.allclose(torch_baseline(x, w, h0)(), gru_reference(x, w, h0), atol=1e-5)


def test_host_tables_show_torch_columns_when_measured():
    from compiler.bench import gru
    row = bg.Row("training", 64, 16, 48, False, False, precision="float32", ratio=1.5, scheduler="llvm")
    row.extra = dict(seconds=1e-3, numpy_seconds=1.5e-3, gflops=1.0, numpy_gflops=0.7, threads=2,
                     torch_seconds=2e-3, torch_ratio=2.0, torch_version="9.9")
    text = bg.table([row], "cpu")
    assert "torch.matmul 9.9: 2.00" in text and "lowest 1.50 (64x16x48)" in text
    g = gru.GruRow("training", 64, 4, 2, ratio=1.2, correct=True)
    g.extra = dict(seconds=1e-3, numpy_seconds=1.2e-3, gflops=1.0, numpy_gflops=0.8, torch_seconds=3e-3,
                   torch_ratio=3.0, torch_version="9.9")
    assert "vs torch.nn.GRU 9.9: 3.00" in gru.table([g], "cpu")


@pytest.mark.gpu
def test_bench_gemm_on_cuda_against_cublas(monkeypatch, capsys):
    monkeypatch.setattr(bg, "QUICK", [("training", 64, 16, 48, False, False), ("training", 33, 8, 17, True, False),
                                      ("training", 257, 131, 300, False, True)])
    assert cli.main(["bench", "gemm", "--target", "cuda", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert "cuBLAS" in r["convention"]
    for row in r["results"]:
        assert row["error"] is None and row["extra"]["rel_error"] < 1e-3 and row["extra"]["seconds"] > 0


@pytest.mark.gpu
def test_bench_gru_on_cuda_against_cudnn(monkeypatch, capsys):
    from compiler.bench import gru
    monkeypatch.setattr(gru, "QUICK", [("training", 16, 3, 4), ("inference_server", 40, 1, 5)])
    assert cli.main(["bench", "gru", "--target", "cuda", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for row in r["results"]:
        assert row["error"] is None and row["correct"] is True and row["extra"]["seconds"] > 0


def test_only_keeps_the_rows_of_the_given_shapes():
    from compiler.bench.gru import gru_suite
    rows = bg.gemm_suite("deepbench", None, ["1024x8x500000:tn", "6144x3000"])
    assert rows and {(m, n, k, a_t, b_t) for _, m, n, k, a_t, b_t in rows if m == 1024} == {(1024, 8, 500000, True, False)}
    assert all((m, n) == (6144, 3000) for _, m, n, *_ in rows if m != 1024)
    every = bg.gemm_suite("deepbench", None)
    assert len(rows) == sum(1 for r in every if r[1:4] == (1024, 8, 500000) and r[4:] == (True, False)
                            or r[1:3] == (6144, 3000))
    grus = gru_suite("deepbench", ["inference_server"], ["2048x1"])
    assert len(grus) >= 2 and all(r[:3] == ("inference_server", 2048, 1) for r in grus)


def test_only_with_a_shape_of_no_row_or_a_malformed_one_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(bg, "QUICK", [("training", 96, 16, 64, False, False), ("training", 40, 8, 48, False, False)])
    assert cli.main(["bench", "gemm", "--target", "sim-nnp", "--suite", "quick", "--only", "40x8", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [(x["m"], x["n"], x["k"]) for x in r["results"]] == [(40, 8, 48)]
    for only, msg in (("41x8", "no row of the suite has shape '41x8'"), ("40xeight", "bad shape '40xeight'"),
                      ("40x8:tx", "bad shape '40x8:tx'")):
        assert cli.main(["bench", "gemm", "--target", "sim-nnp", "--suite", "quick", "--only", only]) == 1
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err


@pytest.mark.parametrize("ours_s, retimed", [(2.0, True), (1.0, False)])
def test_timed_sides_time_a_low_pair_again_and_keep_its_first_ratio(monkeypatch, ours_s, retimed):
    """A pair whose ratio comes out below ``confirm`` gets CONFIRM_ROUNDS more rounds, medians
    over both passes; a pair above it is timed once.  (A fake clock: each call takes its side's
    seconds.)"""
    clock = [0.0]
    monkeypatch.setattr(bg, "QUIET_SECONDS", 0)
    monkeypatch.setattr(bg, "MIN_SECONDS", 0)
    monkeypatch.setattr(bg.time, "perf_counter", lambda: clock[0])
    calls = []

    def side(name, seconds):
        def call():
            calls.append(name)
            clock[0] += seconds
            return name
        return call
    timed = bg._timed_sides({"ours": side("ours", ours_s), "numpy": side("numpy", 1.0)}, repeats=3, confirm=0.9)
    per_side = 1 + 3 + (bg.CONFIRM_ROUNDS if retimed else 0)
    assert calls.count("ours") == calls.count("numpy") == per_side
    assert timed["ours"][0] == ours_s and timed["numpy"][0] == 1.0
    assert timed.first_ratio == (1.0 / ours_s if retimed else None)
    rows = [bg.Row("t", 4, 4, 4, False, False, ratio=1.0 / ours_s,
                   extra={"first_ratio": timed.first_ratio} if retimed else {})]
    summary = bg.retimed_summary(rows, lambda r: "4x4x4")
    assert bool(summary) == retimed and (not retimed or "lowest 0.50 (4x4x4)" in summary[0])


def test_a_negative_confirm_threshold_is_a_user_error(capsys):
    for bad in ("-1", "nan"):
        assert cli.main(["bench", "gemm", "--target", "cpu", "--confirm-below", bad]) == 1
        err = capsys.readouterr().err
        assert "--confirm-below takes a ratio >= 0" in err and "Traceback" not in err


def test_progress_estimates_the_time_left_from_weighted_rows(monkeypatch, capsys):
    """The time left scales the finished rows' pace by the weight still to go: a cheap first
    row done in 10 s with nine times its weight left means ~90 s more, not 10."""
    from compiler.bench import progress
    now = [100.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    bar = progress.Progress("bench", 3, weights=[1, 4, 5])
    assert bar.left() is None
    now[0] += 10
    bar.step()
    assert bar.left() == pytest.approx(90.0)
    now[0] += 40
    bar.step("best 1.2")
    assert bar.left() == pytest.approx(50.0)
    now[0] += 50
    bar.step()
    bar.close()
    lines = capsys.readouterr().err.split("\r")
    assert "1/3 (10s, ~2 min left)" in lines[1] and "2/3 (50s, ~50s left) best 1.2" in lines[2]
    assert "3/3 (100s)" in lines[3] and "left" not in lines[3]
    assert progress.Progress("x", 2, weights=[1]).weights == [1.0, 1.0]  # a wrong-length list: rows count alike


def test_the_convolution_script_prints_a_row_against_torch():
    """scripts/bench_conv_cpu.py: one pointwise row against torch.conv2d (skipped without torch)."""
    import subprocess
    import sys
    from pathlib import Path
    pytest.importorskip("torch")
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_conv_cpu.py"
    out = subprocess.run([sys.executable, str(script), "--only", "4", "--repeats", "2"], capture_output=True,
                         text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["kernel", "N"] and lines[1].startswith("pointwise_conv2d")
    assert "merged rows" in lines[1] and float(lines[1].split()[-3]) < 1e-3  # the max difference from torch
    assert lines[-1].startswith("geometric-mean ratio vs torch.conv2d")


def test_progress_waits_before_showing_and_the_scheduler_shows_it_only_when_asked(monkeypatch, capsys):
    """A bar with ``after`` says nothing until that much time has passed, so quick work shows no
    bar at all; the analytical search draws one only when `schedulers.base.PROGRESS` is on (the
    CLI turns it on for compile and run on a terminal, and off again after)."""
    from compiler.bench import progress
    from schedulers import base
    now = [0.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    bar = progress.Progress("quick", 2, after=1.0)
    now[0] += 0.5
    bar.step()
    bar.step()
    bar.close()
    assert capsys.readouterr().err == ""
    bar = progress.Progress("slow", 2, after=1.0)
    now[0] += 0.5
    bar.step()
    now[0] += 1.0
    bar.step()
    bar.close()
    err = capsys.readouterr().err
    assert "1/2" not in err and "slow: [####################] 2/2 (2s)" in err and err.endswith("\n")
    monkeypatch.undo()
    from schedulers import search
    monkeypatch.setattr(search, "PROGRESS_AFTER", 0.0)
    monkeypatch.setenv("ISAMAP_CACHE", "off")
    compiler.build("kernels/gemm_bf16.tc", target="sim-nnp", sizes=dict(M=40, N=24, K=36))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(base, "PROGRESS", True)
    compiler.build("kernels/gemm_bf16.tc", target="sim-nnp", sizes=dict(M=40, N=24, K=36))
    assert "scheduling gemm_bf16 on sim-nnp: [####################]" in capsys.readouterr().err
    assert cli.main(["compile", "kernels/gemm.tc", "--target", "sim-nnp", "--sizes", "M=8,N=8,K=8"]) == 0
    assert base.PROGRESS is False  # the CLI turns it off again (stderr is no terminal here anyway)
