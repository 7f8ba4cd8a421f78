"""The .hw format: built-in targets, derived figures, validation errors."""
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hw_models
from compiler import cli
from compiler.frontend import parse
from ir.errors import IsamapError

GOOD = """
target "toy" {
    cores = 2
    memory dram { capacity = 8 GiB  bandwidth = 64 B/cycle  shared = true }
    memory sram { capacity = 1 MiB  bandwidth = 512 B/cycle }
    memory acc  { capacity = 64 KiB }
    engine dma { }
    engine mxu { }
    instr load(float(16, 16) X @dram) -> (float(16, 16) Y @sram) engine = dma  port = 64 B/cycle  latency = 10
    { Y(i, j) = X(i, j) }
    instr store(float(16, 16) X @acc) -> (float(16, 16) Y @dram) engine = dma  port = 64 B/cycle
    { Y(i, j) = X(i, j) }
    instr mma(float(16, 16) A @sram, float(16, 16) B @sram) -> (float(16, 16) C @acc) engine = mxu  occupancy = 16
    { C(i, j) += A(i, k) * B(k, j) }
    instr mma_init(float(16, 16) A @sram, float(16, 16) B @sram) -> (float(16, 16) C @acc) engine = mxu  occupancy = 16
    { C(i, j) +=! A(i, k) * B(k, j) }
}
"""


def test_builtin_targets_check_and_peaks():
    names = hw_models.builtin_names()
    assert {"sim-gemmini", "sim-nnp", "cpu", "cuda"} <= set(names)
    peaks = {n: hw_models.load(n).peak_macs_per_cycle() for n in names}
    assert peaks["sim-gemmini"] == 256  # 16x16 array, one 16x16x16 block per 16 cycles
    assert peaks["sim-nnp"] == 24 * 2 * 32 * 32  # 24 cores x 2 units x 32x32 per cycle
    assert peaks["cuda"] == 108 * 4 * 256
    nnp = hw_models.load("sim-nnp")
    assert nnp.instr("ld_mc").multicast == 24 and nnp.instr("mm").transpose == ("A", "B", "C")
    assert {"vexp", "vlog", "vtanh", "vsigmoid", "vsqrt", "vrsqrt", "vdiv", "vsel"} <= {i.name for i in nnp.instrs}
    assert nnp.instr("ld").is_copy and not nnp.instr("mm").is_copy


def test_instruction_bodies_are_kernels():
    t = parse(GOOD).targets[0]
    mma = t.instr("mma")
    assert mma.macs == 16 ** 3 and mma.body.stmts[0].reduction_vars == ("k",)
    assert t.links() == {("dram", "sram"), ("acc", "dram")}
    assert t.peak_macs_per_cycle() == 2 * 16 ** 3 / 16  # 2 cores, one 16x16x16 block per 16 cycles


def test_targets_cli_json(capsys):
    assert cli.main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {r["name"]: r for r in rows}
    assert by["sim-nnp"]["peak_macs_per_cycle"] == 49152
    assert by["sim-gemmini"]["path"].endswith("sim-gemmini.hw")
    assert {m["name"] for m in by["sim-nnp"]["memories"]} == {"hbm", "sram", "acc"}


BAD = [
    (("memory sram { capacity = 1 MiB  bandwidth = 512 B/cycle }", "memory sram { capacity = 0 B }"),
     r"'capacity' must be positive"),
    (("bandwidth = 64 B/cycle  shared", "bandwidth = -1 B/cycle  shared"), r"unexpected '-'"),
    (("engine = mxu", "engine = tpu"), r"unknown engine 'tpu'"),
    (("C @acc", "C @hbm"), r"unknown memory 'hbm'"),
    (("memory acc  { capacity = 64 KiB }", "memory acc  { capacity = 512 B }"), r"needs 1024 bytes but memory 'acc' holds 512"),
    (("C(i, j) += A(i, k) * B(k, j)", "C(i, j) += A(i, k) * Q(k, j)"), r"unknown tensor or function 'Q'"),
    (("engine dma { }", "engine dma { }\n engine dma { }"), r"engine 'dma' is declared twice"),
    (("engine = dma  port = 64 B/cycle\n", "engine = dma\n"), r"needs 'occupancy = N' or 'port"),
    (("instr load(float(16, 16) X @dram) -> (float(16, 16) Y @sram) engine = dma  port = 64 B/cycle  latency = 10\n    { Y(i, j) = X(i, j) }", ""),
     r"memory 'sram' cannot be reached from main memory 'dram'"),
    (("memory acc  { capacity = 64 KiB }", "memory acc  { capacity = 64 KiB  holds = [int8] }"), r"memory 'acc' cannot hold float32"),
    (("latency = 10", "latency = 10 cycles  speed = 3"), r"unknown property 'speed'"),
]


@pytest.mark.parametrize("edit,pattern", BAD)
def test_damaged_targets_get_located_errors(edit, pattern):
    src = GOOD.replace(*edit)
    assert src != GOOD
    with pytest.raises(IsamapError) as e:
        parse(src, name="toy.hw")
    assert re.search(pattern, e.value.message), e.value.message
    assert e.value.span is not None and e.value.format().startswith("toy.hw:")


def test_check_hw_file_cli(capsys, tmp_path):
    f = tmp_path / "toy.hw"
    f.write_text(GOOD)
    assert cli.main(["check", str(f)]) == 0
    assert "ok: target toy (4 instructions)" in capsys.readouterr().out
    f.write_text(GOOD.replace("engine = mxu", "engine = tpu"))
    assert cli.main(["check", str(f)]) == 1
    err = capsys.readouterr().err
    assert re.match(rf"{re.escape(str(f))}:\d+:\d+: error: unknown engine 'tpu'", err)


def test_target_paths_are_accepted_where_names_are(capsys, tmp_path):
    f = tmp_path / "toy.hw"
    f.write_text(GOOD)
    code = cli.main(["run", "kernels/gemm.tc", "--target", str(f), "--sizes", "M=20,N=4,K=33", "--check"])
    out, err = capsys.readouterr()
    assert code == 0 and "PASS" in out, err
    code = cli.main(["run", "kernels/gemm.tc", "--target", str(tmp_path / "nope.hw"), "--sizes", "M=4,N=4,K=4"])
    assert code == 1 and "no such target file" in capsys.readouterr().err


def test_a_target_derived_from_another_replaces_only_what_it_declares(tmp_path):
    base = hw_models.load("cuda")
    t = hw_models.load("cuda-h100")
    assert t.cores == 132 and t.memory("smem").capacity == 227 * 1024 and t.memory("reg") == base.memory("reg")
    assert [i.name for i in t.instrs] == [i.name for i in base.instrs] and t.prop("backend") == "cuda"
    f = tmp_path / "variant.hw"
    f.write_text('target "variant" : "sim-nnp" {\n  cores = 4\n  engine mpu { count = 1 }\n'
                 '  instr extra(float(8) X @sram) -> (float(8) Y @acc) engine = vpu occupancy = 1 latency = 1'
                 ' { Y(i) = X(i) }\n}\n')
    v = hw_models.load(str(f))
    nnp = hw_models.load("sim-nnp")
    assert v.cores == 4 and v.engine("mpu").count == 1 and v.window == nnp.window and v.main == nnp.main
    assert [i.name for i in v.instrs] == [i.name for i in nnp.instrs] + ["extra"]


def test_deriving_from_an_unknown_or_own_target_is_a_located_error(tmp_path):
    f = tmp_path / "bad.hw"
    f.write_text('target "bad" : "no-such-chip" {\n  cores = 2\n}\n')
    with pytest.raises(IsamapError, match="cannot derive from 'no-such-chip'") as e:
        hw_models.load(str(f))
    assert e.value.span is not None and e.value.span.line == 1
    g = tmp_path / "loop.hw"
    g.write_text('target "loop" : "loop.hw" {\n  cores = 2\n}\n')
    with pytest.raises(IsamapError, match="derives from itself"):
        hw_models.load(str(g))


def test_cache_ways_come_from_the_hw_file_or_the_host(tmp_path, monkeypatch):
    f = tmp_path / "ways.hw"
    f.write_text('target "ways" : "cpu" {\n  memory l1 { capacity = 48 KiB  ways = 12 }\n}\n')
    t = hw_models.load(str(f))
    assert (t.memory("l1").capacity, t.memory("l1").ways) == (48 << 10, 12)
    import compiler.host as host
    monkeypatch.setattr(host, "_host_cache_field", lambda level, name: {"size": "64K", "ways_of_associativity": "16"}[name])
    g = tmp_path / "host.hw"
    g.write_text('target "host" : "cpu" {\n  memory l1 { capacity = 32 KiB  host_cache = 1  ways = 8 }\n}\n')
    assert (hw_models.load(str(g)).memory("l1").capacity, hw_models.load(str(g)).memory("l1").ways) == (64 << 10, 16)


def test_instructions_requiring_a_cpu_feature_the_host_lacks_are_left_out(tmp_path, monkeypatch):
    """``requires = [..]`` names CPU features as /proc/cpuinfo or LLVM spell them; an
    instruction needing one the host lacks is not part of the target, the others are."""
    import compiler.targets as targets
    _fresh_loads(monkeypatch, tmp_path / "cache")
    monkeypatch.setattr(targets, "host_features", lambda: frozenset({"avx512vnni", "amxint8"}))
    f = tmp_path / "features.hw"
    body = ' { Y(i) = X(i) }\n'
    f.write_text('target "features" : "sim-nnp" {\n'
                 + ''.join(f'  instr {n}(float(8) X @sram) -> (float(8) Y @acc) engine = vpu occupancy = 1 latency = 1'
                           f'  requires = [{r}]' + body for n, r in (("vnni", "avx512_vnni"), ("amx", "amx_int8, avx512vnni"),
                                                                    ("other", "no_such_feature")))
                 + '}\n')
    names = [i.name for i in hw_models.load(str(f)).instrs]
    assert "vnni" in names and "amx" in names and "other" not in names


def _fresh_loads(monkeypatch, cache):
    """Loads that start from the disk cache in ``cache`` (the in-process one emptied)."""
    monkeypatch.setenv("ISAMAP_CACHE", str(cache))
    hw_models._load.cache_clear()
    hw_models._DEPS.clear()


def test_checked_targets_are_cached_on_disk_and_equal_to_parsed_ones(tmp_path, monkeypatch):
    _fresh_loads(monkeypatch, tmp_path)
    parsed = hw_models.load("sim-nnp")
    assert len(list((tmp_path / "targets").glob("*.pickle"))) == 1
    import compiler.frontend
    monkeypatch.setattr(compiler.frontend, "parse", lambda *a, **k: pytest.fail("parsed again"))
    hw_models._load.cache_clear()
    assert hw_models.load("sim-nnp") == parsed
    monkeypatch.undo()
    for entry in (tmp_path / "targets").glob("*.pickle"):  # a damaged entry: parsed again, and replaced
        entry.write_bytes(b"not a pickle")
    _fresh_loads(monkeypatch, tmp_path)
    assert hw_models.load("sim-nnp") == parsed
    _fresh_loads(monkeypatch, "off")
    assert hw_models.load("sim-nnp") == parsed


def test_a_cached_derived_target_follows_changes_of_its_base(tmp_path, monkeypatch):
    _fresh_loads(monkeypatch, tmp_path / "cache")
    base, derived = tmp_path / "base.hw", tmp_path / "derived.hw"
    base.write_text('target "base" : "cpu" {\n  cores = 3\n}\n')
    derived.write_text(f'target "derived" : "{base}" {{\n  memory l1 {{ capacity = 48 KiB  ways = 12 }}\n}}\n')
    assert hw_models.load(str(derived)).cores == 3
    base.write_text('target "base" : "cpu" {\n  cores = 5\n}\n')
    _fresh_loads(monkeypatch, tmp_path / "cache")
    assert hw_models.load(str(derived)).cores == 5  # not the entry made from the old base


def test_cuda_libraries_go_to_a_private_folder_when_caching_is_off(monkeypatch):
    from compiler.backends.cuda import runtime
    monkeypatch.setenv("ISAMAP_CACHE", "off")
    d = runtime.cache_dir()
    assert d.is_dir() and d.name.startswith("isamap-cuda-") and not (d.parent / "off").exists()


HW_EDITS = list("(){},=+-*/!<>?:#@.0123456789aZ_ \n[]") + [
    "instr", "memory", "engine", "@sram", "@hbm", "@spad", "KiB", "B/cycle", "float", "bfloat16", "int8", "latency =",
    "port =", "count = 0", "capacity = 0", "occupancy = 0", "batch = 0", "cores = 0", "transpose = [A]", "+=!"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["sim-nnp", "sim-gemmini", "sim-gemmini-fp32"]),
       st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 5), st.sampled_from(HW_EDITS)), min_size=1, max_size=3))
def test_mutated_targets_compile_correctly_or_refuse_cleanly(tmp_path_factory, name, edits):
    """A user's .hw file with mistakes (or odd but valid figures and instruction bodies) gives a
    located error, or a target every compiled kernel on which equals the interpreter: the
    mapping pass follows what the instructions compute, whatever they compute."""
    import compiler
    import ir.interp
    import kernels
    from compiler.checking import compare, random_inputs
    src = hw_models.resolve_path(name).read_text()
    for pos, length, text in edits:
        pos %= len(src) + 1
        src = src[:pos] + text + src[pos + length:]
    f = tmp_path_factory.mktemp("hw") / "mut.hw"
    f.write_text(src)
    try:
        parse(src, name="mut.hw")
    except IsamapError as e:
        assert e.format().startswith("mut.hw") or e.span is None
        return
    for kernel, sizes in (("gemm", dict(M=20, N=9, K=13)), ("softmax", dict(N=5, D=7))):
        try:
            ck = compiler.build(kernels.path(kernel), target=str(f), sizes=sizes)
        except IsamapError as e:
            assert e.format().strip()
            continue
        ins = random_inputs(ck.kernel, ck.bound)
        ok, _, per = compare(ck.run_all(**ins), ir.interp.run(ck.kernel, ins, ck.sizes), ck.precision)
        assert ok, (kernel, per)
