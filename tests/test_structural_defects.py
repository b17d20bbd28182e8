"""Structural pass defects: bias-free consumers and the parameter counts it prints.

1. A bias-free MLP ``x -> MatMul(W1) -> Relu -> MatMul(W2) -> y`` (bias-free linear layers
   are the norm in transformers; the Gemm form without ``C`` too): with calibration data the
   consumer is refitted and the removed units' mean goes into a bias the consumer does not
   have yet. The bias must be created for real (an Add after the MatMul, input C of a Gemm),
   never left as a placeholder, and the run must not crash counting parameters.
2. One ``prune --structured`` run prints its parameters twice (the summary table and the
   closing line): both must be the evaluator's count (:func:`onnxprune.stats.param_stats`) of
   the written model, which leaves shape constants out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import builders as b
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import ModelProto, TensorProto, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.config import StructureConfig
from onnxprune.passes.structural import remove_channels
from onnxprune.stats import param_stats

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
D_IN, HIDDEN, D_OUT, ROWS = 16, 32, 8, 256


def bias_free_mlp(op: str = "MatMul", *, beta: float | None = None) -> ModelProto:
    """x[N,16] -> op(W1[16,32]) -> relu -> op(W2[32,8]) -> y, no bias anywhere; ``op`` is MatMul or Gemm."""
    w1, w2 = b.rand((D_IN, HIDDEN), 11) / 4, b.rand((HIDDEN, D_OUT), 12) / 4
    w1[:, ::2] *= 0.2  # half of the hidden units are weak: a clear choice for the pass
    extra = {} if beta is None else {"beta": beta}
    nodes = [
        b.node(op, ["x", "W1"], ["h"], "mm1", **extra),
        b.node("Relu", ["h"], ["r"], "relu"),
        b.node(op, ["r", "W2"], ["y"], "mm2", **extra),
    ]
    return b.model(
        nodes, [b.value("x", ("N", D_IN))], [b.value("y", ("N", D_OUT))], [b.init("W1", w1), b.init("W2", w2)]
    )


def calibration(seed: int = 1) -> np.ndarray:
    # an offset, so the hidden units have clearly non-zero means (what the bias must carry)
    return (np.random.default_rng(seed).standard_normal((ROWS, D_IN)) + 0.5).astype(np.float32)


def _files(tmp_path: Path, model: ModelProto) -> tuple[Path, Path]:
    path, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(model, str(path))
    np.savez(calib, x=calibration())
    return path, calib


def _run(model: ModelProto | Path, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _rel(reference: np.ndarray, other: np.ndarray) -> float:
    return float(((reference - other) ** 2).sum() / (reference**2).sum())


def _weight(model: ModelProto, node_name: str) -> np.ndarray:
    stored = {t.name: t for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    return numpy_helper.to_array(stored[node.input[1]])


def _assert_no_placeholder(model: ModelProto) -> None:
    for tensor in model.graph.initializer:
        assert tensor.name, "an initializer without a name"
        assert tensor.data_type != TensorProto.UNDEFINED, f"'{tensor.name}' is a placeholder (no data type)"
        values = numpy_helper.to_array(tensor)
        assert values.size == int(np.prod(tensor.dims)) > 0, f"'{tensor.name}' has an empty payload"


def _kept_columns(original: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    """Which columns of ``original`` survive in ``pruned`` (the producer's weights are sliced, not refitted)."""
    kept = [int(np.flatnonzero((original == column[:, None]).all(0))[0]) for column in pruned.T]
    assert kept == sorted(kept)
    return np.asarray(kept)


def _prune_cli(path: Path, calib: Path, out: Path, *extra: str):
    args = ["prune", path, out, "--structured", "--sparsity", "0.5", "--calibration", calib, *extra]
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------------------------------
# 1. A consumer without a bias


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_bias_free_mlp_prunes_refits_and_creates_a_real_bias(tmp_path, op):
    dense = bias_free_mlp(op)
    path, calib = _files(tmp_path, dense)
    x = calibration()
    out, plain_out = tmp_path / "out.onnx", tmp_path / "norefit.onnx"
    result = _prune_cli(path, calib, out)
    assert result.exit_code == 0, result.output
    assert "consumers refitted" in result.output
    onnx.checker.check_model(str(out), full_check=True)
    pruned = onnx.load(str(out))
    _assert_no_placeholder(pruned)
    # what changed: half of the 32 hidden units go, W1 loses columns, W2 rows
    w1, w2 = _weight(pruned, "mm1"), _weight(pruned, "mm2")
    assert w1.shape == (D_IN, HIDDEN // 2) and w2.shape == (HIDDEN // 2, D_OUT)
    # the new bias: an Add after the MatMul (a stored [8] vector) that now makes y; a Gemm's C
    mm2 = next(n for n in pruned.graph.node if n.name == "mm2")
    stored = {t.name: t for t in pruned.graph.initializer}
    if op == "MatMul":
        adds = [n for n in pruned.graph.node if n.op_type == "Add"]
        assert len(adds) == 1 and adds[0].output[0] == "y" and mm2.output[0] in adds[0].input
        bias = numpy_helper.to_array(stored[next(i for i in adds[0].input if i in stored)])
    else:
        assert len(mm2.input) == 3
        bias = numpy_helper.to_array(stored[mm2.input[2]])
    assert bias.shape == (D_OUT,) and np.abs(bias).max() > 0
    # numbers: close to the dense model on the calibration data, and better than without the refit
    # and better than plain slicing (no refit, no mean compensation)
    reference = _run(dense, x)
    refitted = _rel(reference, _run(out, x))
    assert _prune_cli(path, calib, plain_out, "--no-refit").exit_code == 0
    mean_only = _rel(reference, _run(plain_out, x))
    original = [numpy_helper.to_array(t) for t in dense.graph.initializer]
    kept = _kept_columns(original[0], w1)
    sliced = _rel(reference, np.maximum(x @ original[0][:, kept], 0) @ original[1][kept])
    assert refitted <= mean_only < sliced
    assert refitted < 0.02, (refitted, mean_only, sliced)
    assert refitted < 0.5 * sliced, (refitted, mean_only, sliced)


def test_bias_free_matmul_without_cleanup_stays_sorted_and_counts_parameters(tmp_path):
    """The API with ``fold=False``: no cleanup runs, so the new Add must already sit in a valid order."""
    model = bias_free_mlp()
    path, calib = _files(tmp_path, model)
    data = onnxprune.calibration_data(path, calib)
    config = StructureConfig(amount=0.5, fold=False)
    result = remove_channels(model, config, calibration=data)
    onnx.checker.check_model(model, full_check=True)
    _assert_no_placeholder(model)
    assert result.removed_units == HIDDEN // 2 and len(result.refits) == 1
    assert result.params_before == D_IN * HIDDEN + HIDDEN * D_OUT
    assert result.params_after == param_stats(model).parameters == (D_IN + D_OUT) * HIDDEN // 2 + D_OUT
    record = next(g for g in result.groups if g.removed)
    assert record.params_removed == (D_IN + D_OUT) * HIDDEN // 2
    assert _rel(_run(bias_free_mlp(), calibration()), _run(model, calibration())) < 0.02


def test_gemm_that_ignores_its_bias_skips_the_refit_with_a_reason(tmp_path):
    """beta = 0: no bias can carry the mean, so the consumer is not refitted, and the result says why."""
    model = bias_free_mlp("Gemm", beta=0.0)
    path, calib = _files(tmp_path, model)
    result = remove_channels(model, StructureConfig(amount=0.5), calibration=onnxprune.calibration_data(path, calib))
    onnx.checker.check_model(model, full_check=True)
    _assert_no_placeholder(model)
    assert result.removed_units == HIDDEN // 2 and result.refits == ()
    assert any("mm2" in note and "beta = 0" in note for note in result.notes), result.notes
    assert _weight(model, "mm2").shape == (HIDDEN // 2, D_OUT)
    _run(model, calibration())  # runs in onnxruntime


# ---------------------------------------------------------------------------------------
# 2. One parameter count


def _numbers(text: str) -> tuple[int, int]:
    a, b_ = text
    return int(a.replace(",", "")), int(b_.replace(",", ""))


def test_table_and_summary_print_the_evaluators_parameter_count(tmp_path):
    out = tmp_path / "t30.onnx"
    src = FIXTURES / "transformer_mnist1d.onnx"
    result = CliRunner().invoke(main, ["prune", str(src), str(out), "--structured", "--sparsity", "0.3"])
    assert result.exit_code == 0, result.output
    table = re.search(r"^parameters\s+([\d,]+)\s+([\d,]+)\s", result.output, re.M)
    summary = re.search(r"; parameters ([\d,]+) -> ([\d,]+) ->", result.output)
    assert table and summary, result.output
    assert _numbers(table.groups()) == _numbers(summary.groups())
    expected = (param_stats(onnx.load(str(src))).parameters, param_stats(onnx.load(str(out))).parameters)
    assert _numbers(table.groups()) == expected
    stamped = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["onnxprune.structure"])
    assert tuple(stamped["params"]) == expected


def test_dead_channels_of_an_fp16_stored_model_keep_the_bias_type_the_gemm_reads(tmp_path):
    """fp16 storage, Cast to float before each Gemm: a dead unit's constant folded into the next
    Gemm's bias makes a new bias in float (what the Gemm reads), not fp16 (what was stored).
    It was an fp16 C beside a float A: 'this is a bug in onnxprune' (exit 5) at 70 %."""
    source = FIXTURES / "mlp_digits_fp16.onnx"
    result = CliRunner().invoke(main, ["prune", str(source), str(tmp_path / "o.onnx"), "--sparsity", "0.7", "-q"])
    assert result.exit_code == 0, result.output
    assert "removed 17 channel unit(s) (17 dead)" in result.output
    kept = CliRunner().invoke(
        main, ["prune", str(source), str(tmp_path / "k.onnx"), "--sparsity", "0.7", "--no-dead-channels", "-q"]
    )
    assert kept.exit_code == 0, kept.output
    x = np.load(FIXTURES / "mlp_digits_fp16.test.npz")["input"]
    run = [
        ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for name in ("o.onnx", "k.onnx")
    ]
    np.testing.assert_allclose(run[0], run[1], atol=2e-3 * float(np.abs(run[1]).max()))
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)


def test_a_gemm_with_trans_a_is_refitted_from_its_transposed_input(tmp_path):
    """mm2 reads its input as ``[K, M]`` (``transA=1`` after a Transpose): the capture cuts its
    rows from the transpose, and the refit beats plain removal with mean compensation."""
    w1, w2 = b.rand((D_IN, HIDDEN), 11) / 4, b.rand((HIDDEN, D_OUT), 12) / 4
    w1[:, ::2] *= 0.2
    nodes = [
        b.node("Gemm", ["x", "W1"], ["h"], "mm1"),
        b.node("Relu", ["h"], ["r"], "relu"),
        b.node("Transpose", ["r"], ["rt"], "transpose", perm=[1, 0]),
        b.node("Gemm", ["rt", "W2"], ["y"], "mm2", transA=1),
    ]
    dense = b.model(
        nodes, [b.value("x", ("N", D_IN))], [b.value("y", ("N", D_OUT))], [b.init("W1", w1), b.init("W2", w2)]
    )
    path, calib = _files(tmp_path, dense)
    x = calibration()
    out, plain_out = tmp_path / "out.onnx", tmp_path / "norefit.onnx"
    result = _prune_cli(path, calib, out)
    assert result.exit_code == 0, result.output
    assert "mm2:" in result.output and "consumers refitted" in result.output
    assert _weight(onnx.load(str(out)), "mm2").shape == (HIDDEN // 2, D_OUT)
    assert _prune_cli(path, calib, plain_out, "--no-refit").exit_code == 0
    reference = _run(dense, x)
    refitted, mean_only = _rel(reference, _run(out, x)), _rel(reference, _run(plain_out, x))
    assert refitted < 0.7 * mean_only, (refitted, mean_only)
