"""Instruction mapping (first version): legal mappings and located rejection reasons."""
import json

import compiler
import hw_models
import kernels
from compiler import cli
from compiler.mapping import mappings_for_kernel


def maps(kernel, target, explain=False):
    k = compiler.parse(kernels.path(kernel)).kernel()
    return mappings_for_kernel(k, hw_models.load(target), explain)


def test_gemm_direct_and_transposed_on_nnp():
    direct = [m for m in maps("gemm", "sim-nnp") if m.instruction == "mm"]
    assert [dict(m.vars) for m in direct] == [{"i": "m", "j": "n", "k": "k"}]
    assert any("ld_cvt" in t for t in direct[0].transforms)  # fp32 tensors feed a bf16 unit
    tn = [m for m in maps("gemm_tn", "sim-nnp") if m.instruction == "mm"]
    assert any("A read transposed" in t for t in tn[0].transforms)
    assert maps("gemm_tn", "sim-gemmini-fp32") == []  # no transposed operand reads there


def test_batch_variable_is_a_loop():
    for m in maps("batch_matmul", "sim-nnp"):
        assert "b" in m.loops and "b" not in dict(m.vars).values()


def test_never_reduction_on_parallel_var():
    for name in ("gemm", "conv2d", "depthwise_separable_conv2d", "gru_cell", "lstm_cell"):
        k = compiler.parse(kernels.path(name)).kernel()
        for m in maps(name, "sim-nnp"):
            red = set(k.stmts[m.statement].reduction_vars)
            assert dict(m.vars)["k"] in red
            assert dict(m.vars)["i"] not in red and dict(m.vars)["j"] not in red


def test_depthwise_rejected_pointwise_extracted():
    ms = maps("depthwise_separable_conv2d", "sim-nnp", explain=True)
    assert not any(m.legal for m in ms if m.statement == 0 and m.instruction == "mm")
    reasons = {m.reason.split(":")[0] for m in ms if m.statement == 0 and not m.legal}
    assert {"roles", "access"} <= reasons
    assert any("im2col" in m.reason for m in ms if not m.legal)
    assert any(m.legal and m.statement == 1 and m.instruction == "mm" for m in ms)


def test_gru_gates_map_to_matrix_unit():
    k = compiler.parse(kernels.path("gru_cell")).kernel()
    gemm_stmts = {i for i, s in enumerate(k.stmts) if s.reduction_vars}
    legal = {m.statement for m in maps("gru_cell", "sim-nnp") if m.instruction == "mm"}
    assert legal == gemm_stmts


def test_mappings_cli_json(capsys):
    assert cli.main(["mappings", "kernels/gemm.tc", "--target", "sim-nnp", "--json", "--explain"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"statement", "instruction", "operands", "vars", "transforms", "legal", "reason"} <= set(rows[0])
    assert any(r["legal"] for r in rows) and any(not r["legal"] and r["reason"] for r in rows)
