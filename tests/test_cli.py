"""The command line: exit codes, JSON, located errors, no tracebacks."""
import json

import pytest

import compiler
from compiler import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_check_json(capsys):
    code, out, err = run(capsys, "run", "kernels/gemm.tc", "--target", "reference", "--sizes",
                         "M=64,N=48,K=32", "--check", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["correct"] is True and r["max_abs_error"] == 0.0 and "seconds" in r


def test_run_by_library_name_and_kernel_flag(capsys, tmp_path):
    code, out, _ = run(capsys, "run", "softmax", "--sizes", "N=3,D=7", "--check")
    assert code == 0 and "PASS" in out
    f = tmp_path / "two.tc"
    f.write_text("def a(float(N) X) -> (Y) { Y(i) = X(i) }\ndef b(float(N) X) -> (Y) { Y(i) = 2 * X(i) }\n")
    code, out, err = run(capsys, "run", str(f), "--sizes", "N=4")
    assert code == 1 and "several kernels" in err
    code, out, err = run(capsys, "run", str(f), "--kernel", "b", "--sizes", "N=4", "--check")
    assert code == 0, err


def test_check_reports_kernels_and_errors(capsys, tmp_path):
    code, out, _ = run(capsys, "check", "kernels/conv2d.tc")
    assert code == 0 and "O: float32[N, F, H - R + 1, W - S + 1]" in out
    bad = tmp_path / "bad.tc"
    bad.write_text("def f(float(N) A) -> (B) {\n    B(i) = A(i) +\n}\n")
    code, out, err = run(capsys, "check", str(bad))
    assert code == 1
    assert err.startswith(f"{bad}:3:1: error: unexpected '}}'")
    assert "Traceback" not in err


def test_bad_sizes_and_missing_file(capsys):
    code, _, err = run(capsys, "run", "kernels/gemm.tc", "--sizes", "M=4,N=four,K=2")
    assert code == 1 and err.startswith("--sizes:1:7: error:")
    code, _, err = run(capsys, "check", "nope.tc")
    assert code == 1 and "no such file" in err
    code, _, err = run(capsys, "run", "kernels/gemm.tc", "--sizes", "M=4,N=4,K=2", "--target", "tpu9")
    assert code == 1 and "unknown target 'tpu9'" in err


def test_compile_emit_ir_writes_atomically(capsys, tmp_path):
    out_file = tmp_path / "g.ir"
    code, _, err = run(capsys, "compile", "kernels/gemm.tc", "--sizes", "M=4,N=4,K=2", "-o", str(out_file))
    assert code == 0, err
    assert "C(m, n) +=! A(m, k) * B(k, n)" in out_file.read_text()
    code, _, err = run(capsys, "compile", "kernels/gemm.tc", "--sizes", "M=4,N=4,K=2", "--emit", "cuda",
                       "-o", str(tmp_path / "x.cu"))
    assert code == 1 and not (tmp_path / "x.cu").exists()


def test_internal_errors_are_one_line(capsys, monkeypatch):
    def boom(a):
        raise RuntimeError("kaput")
    monkeypatch.setattr(cli, "cmd_check", boom)
    code, _, err = run(capsys, "check", "kernels/gemm.tc")
    assert code == cli.EXIT_INTERNAL
    assert err.strip() == "isamap: internal error: RuntimeError: kaput (rerun with --debug for a traceback)"


def test_sizes_too_large_for_memory_are_a_user_error(capsys, monkeypatch):
    def huge(a):  # what numpy raises for --sizes M=300000,N=300000,K=300000 (without allocating here)
        raise MemoryError("Unable to allocate 671. GiB for an array with shape (300000, 300000)")
    monkeypatch.setattr(cli, "cmd_run", huge)
    code, _, err = run(capsys, "run", "kernels/gemm.tc", "--sizes", "M=300000,N=300000,K=300000")
    assert code == 1 and err.startswith("error: not enough memory for this run") and "Traceback" not in err


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and "isamap" in capsys.readouterr().out
    for sub in ("check", "run", "compile"):
        with pytest.raises(SystemExit) as e:
            cli.main([sub, "--help"])
        assert e.value.code == 0


def test_check_judges_bf16_programs_on_the_inputs_they_round(capsys):
    """lstm_cell at B=16, Hd=256 on sim-nnp: the bf16 matrix units' input rounding moves tanh's
    output by ~0.05 (over the 2% tolerance); against the reference on the rounded inputs the
    program is exact to fp32 accumulation order, and --check says which inputs it rounded."""
    code = cli.main(["run", "kernels/lstm_cell.tc", "--target", "sim-nnp", "--sizes", "B=16,I=256,Hd=256",
                     "--check", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert code == 0 and d["correct"]
    assert d["rounded_inputs"]["Wg"] == "bfloat16" and "bi" not in d["rounded_inputs"]
    assert d["outputs"]["GG"]["max_abs_error"] > d["outputs"]["GG"]["tolerance"]  # the exact view, kept
    assert all(o["max_abs_error_rounded_inputs"] < 1e-4 for o in d["outputs"].values())


def test_run_stalls_accounts_for_every_cycle_of_the_compute_engine(capsys):
    code, out, err = run(capsys, "run", "kernels/gemm_bf16.tc", "--target", "sim-nnp", "--sizes",
                         "M=800,N=64,K=96", "--stalls", "--json")
    assert code == 0, err
    r = json.loads(out)
    per = r["stalls"]["per_core"]
    assert per and r["stalls"]["slowest_core"] is not None
    for d in per.values():  # busy + every cause = the whole run, per core (rounded per cause)
        assert d["engine"] == "mpu" and d["busy"] > 0 and d["fill"] > 0
        parts = sum(v for k, v in d.items() if k != "engine")
        assert abs(parts - r["cycles"]) <= len(d)
    code, out, _ = run(capsys, "run", "kernels/gemm_bf16.tc", "--target", "sim-nnp", "--sizes",
                       "M=800,N=64,K=96", "--stalls")
    assert code == 0 and "where mpu time went" in out and "drain" in out
    code, out, _ = run(capsys, "run", "kernels/softmax.tc", "--target", "sim-nnp", "--sizes", "N=8,D=40",
                       "--stalls", "--json")
    assert code == 0 and {d["engine"] for d in json.loads(out)["stalls"]["per_core"].values()} == {"vpu"}
    code, out, err = run(capsys, "run", "kernels/gemm.tc", "--target", "cpu", "--sizes", "M=8,N=8,K=8", "--stalls")
    assert code == 1 and "simulated target" in err and "Traceback" not in err


def test_cache_command_shows_and_clears_the_cache(tmp_path, monkeypatch, capsys):
    import kernels
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path))
    compiler.parse(kernels.path("gemm"))  # one kernels entry
    assert cli.main(["cache", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["root"] == str(tmp_path) and r["kinds"]["kernels"]["files"] == 1 and r["kinds"]["kernels"]["bytes"] > 0
    (tmp_path / "keep.txt").write_text("not ours")  # only isamap's folders are touched
    assert cli.main(["cache", "--clear", "--kind", "kernels"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 files" in out and "kernels         0 files" in out
    assert (tmp_path / "keep.txt").exists()
    assert cli.main(["cache", "--kind", "objects"]) == 1
    assert "unknown cache kind 'objects'" in capsys.readouterr().err
    monkeypatch.setenv("ISAMAP_CACHE", "off")
    assert cli.main(["cache"]) == 0 and "caching is off" in capsys.readouterr().out


def test_the_cache_keeps_within_its_bound_trimming_the_least_recently_used(tmp_path, monkeypatch, capsys):
    """Past its bound (ISAMAP_CACHE_SIZE) the cache drops its least recently used entries down to
    three quarters of it; entries used in the last ten minutes stay, reading an entry marks it
    used, and files that are not isamap's are never touched."""
    import os
    import time

    from compiler import cache
    monkeypatch.setenv("ISAMAP_CACHE", str(tmp_path))
    monkeypatch.setenv("ISAMAP_CACHE_SIZE", "100K")
    assert cache.limit() == 100 << 10
    now = time.time()
    old = [cache.cache_dir(kind) / f"e{i}" for i, kind in enumerate(["llvm", "kernels", "schedules", "cuda"] * 4)]
    for i, f in enumerate(old):
        f.write_bytes(b"x" * (10 << 10))
        os.utime(f, (now - 3600 + i, now - 3600 + i))  # an hour ago, the first oldest
    recent = cache.cache_dir("targets") / "fresh"
    recent.write_bytes(b"x" * (60 << 10))
    (tmp_path / "keep.txt").write_bytes(b"x" * (200 << 10))
    used = cache.entry_file("kernels", lambda: b"used")
    cache.store_entry(used, {"a": 1})  # the first write checks the bound: 220 KiB > 100 KiB
    left = {f for f in old if f.exists()}
    assert not old[0].exists() and left == set(old[-len(left):])  # the oldest went first
    assert recent.exists() and used.exists() and (tmp_path / "keep.txt").exists()
    assert sum(f.stat().st_size for f in left) + (60 << 10) + used.stat().st_size <= 75 << 10
    # the next check comes an hour after this one, whichever process writes then
    extra = cache.cache_dir("llvm") / "extra"
    extra.write_bytes(b"x" * (50 << 10))
    os.utime(extra, (now - 3600, now - 3600))
    cache.store_entry(cache.entry_file("kernels", lambda: b"other"), 2)
    assert extra.exists()
    os.utime(tmp_path / cache.STAMP, (now - 3601, now - 3601))
    cache.store_entry(cache.entry_file("kernels", lambda: b"third"), 3)
    assert not extra.exists()
    left = {f for f in old if f.exists()}
    # reading an entry marks it used: it outlives entries written after it
    os.utime(used, (now - 7200, now - 7200))
    assert cache.load_entry(used) == {"a": 1} and used.stat().st_mtime >= now
    monkeypatch.setenv("ISAMAP_CACHE_SIZE", "0")  # no bound
    assert cache.limit() is None and cache.trim() == (0, 0)
    monkeypatch.setenv("ISAMAP_CACHE_SIZE", "lots")  # not a size: the default
    assert cache.limit() == cache.LIMIT
    monkeypatch.setenv("ISAMAP_CACHE_SIZE", "1K")
    assert cli.main(["cache", "--trim", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["limit_bytes"] == 1024 and r["removed"]["files"] == len(left)  # the recent ones stay
    assert recent.exists() and used.exists()
