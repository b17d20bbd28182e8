"""Bias correction on Gemm (alpha, beta, transA/transB, broadcast C) and on MatMul + Add.

Gemm computes ``Y = alpha·A·B' + beta·C``, so keeping each output's mean after pruning needs
``C' = C + delta·alpha/beta`` with ``delta = (W − Ŵ)·E[x]``, and a C stored broadcast (scalar,
``[1]``, ``[1, 1]``, ``[1, N]``) grows to the per-output shape. With one calibrated layer and
Wanda (no weight update), the corrected model's mean output over the calibration data equals
the dense model's up to float32 rounding: every test below asks ``max |mean shift| < 1e-3``
on outputs of magnitude ~30, while the uncorrected shift is above 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import init, model, node, value
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main

K, N, ROWS = 64, 16, 256
TOLERANCE = 1e-3  # max over outputs of |mean(pruned) − mean(dense)|, outputs ~30 in magnitude


def _gemm_model(
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    trans_a: int = 0,
    trans_b: int = 1,
    c_shape: tuple[int, ...] | None = (N,),
    shared_c: bool = False,
) -> onnx.ModelProto:
    """x[n, K] -> Gemm(W, C; alpha, beta, transA, transB) -> y[n, N] (transA via a Transpose)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((N, K) if trans_b else (K, N)).astype(np.float32)
    inits = [init("w", w)]
    nodes = []
    a = "x"
    if trans_a:
        nodes.append(node("Transpose", ["x"], ["xt"], "transpose", perm=[1, 0]))
        a = "xt"
    inputs = [a, "w"]
    if c_shape is not None:
        inits.append(init("c", rng.standard_normal(c_shape).astype(np.float32)))
        inputs.append("c")
    attrs = {"alpha": alpha, "beta": beta, "transA": trans_a, "transB": trans_b}
    nodes.append(node("Gemm", inputs, ["y"], "gemm", **attrs))
    outputs = [value("y", ("n", N))]
    if shared_c:  # a second Gemm reads the same C
        inits.append(init("w2", rng.standard_normal((N, K)).astype(np.float32)))
        nodes.append(node("Gemm", ["x", "w2", "c"], ["y2"], "gemm2", transB=1))
        outputs.append(value("y2", ("n", N)))
    return model(nodes, [value("x", ("n", K))], outputs, inits)


def _matmul_add_model(const_shape: tuple[int, ...], *, const_first: bool = False) -> onnx.ModelProto:
    """x[n, K] -> MatMul(W[K, N]) -> Add(b) -> y[n, N], ``b`` of ``const_shape``."""
    rng = np.random.default_rng(4)
    inits = [init("w", rng.standard_normal((K, N)).astype(np.float32))]
    inits.append(init("b", rng.standard_normal(const_shape).astype(np.float32)))
    add_inputs = ["b", "m"] if const_first else ["m", "b"]
    nodes = [node("MatMul", ["x", "w"], ["m"], "mm"), node("Add", add_inputs, ["y"], "add")]
    return model(nodes, [value("x", ("n", K))], [value("y", ("n", N))], inits)


def _calibration(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = (np.random.default_rng(5).standard_normal((ROWS, K)) + 2.0).astype(np.float32)  # non-zero mean
    path = tmp_path / "calib.npz"
    np.savez(path, x=x)
    return path, x


def _save(m: onnx.ModelProto, tmp_path: Path, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    onnx.save(m, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def _prune(path: Path, calib: Path, tmp_path: Path, *, correct: bool = True, name: str = "out.onnx"):
    config = onnxprune.PruneConfig(sparsity=0.5, method="wanda", bias_correction=correct)
    data = onnxprune.calibration_data(path, calib, samples=ROWS)
    return onnxprune.prune_file(path, tmp_path / name, config, calibration=data)


def _stored(m: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def _mean_shift(source: Path, pruned: Path, x: np.ndarray) -> float:
    return float(np.abs(_run(pruned, x).mean(0) - _run(source, x).mean(0)).max())


def _valid(path: Path, x: np.ndarray) -> None:
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert _run(path, x).shape == (ROWS, N)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (2.0, 0.5), (0.5, 3.0)])
def test_gemm_bias_correction_keeps_the_mean_output_with_alpha_and_beta(
    tmp_path: Path, alpha: float, beta: float, trans_a: int, trans_b: int
):
    source = _save(_gemm_model(alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b), tmp_path)
    calib, x = _calibration(tmp_path)
    plain = _prune(source, calib, tmp_path, correct=False, name="plain.onnx")
    run = _prune(source, calib, tmp_path)
    (layer,) = run.result.pruned
    assert layer.method == "wanda" and layer.bias == "corrected"
    assert layer.zeros_after == K * N // 2
    out = onnx.load(str(run.saved.path))
    assert onnx.numpy_helper.to_array(_stored(out, "c")).shape == (N,)
    assert _mean_shift(source, plain.saved.path, x) > 0.5  # the correction has something to do
    assert _mean_shift(source, run.saved.path, x) < TOLERANCE
    _valid(run.saved.path, x)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(
    ("c_shape", "grown"),
    [((1,), (N,)), ((), (N,)), ((1, 1), (1, N)), ((1, N), (1, N)), ((N,), (N,))],
)
def test_gemm_broadcast_c_grows_to_the_per_output_shape(
    tmp_path: Path, c_shape: tuple[int, ...], grown: tuple[int, ...], trans_b: int
):
    source = _save(_gemm_model(alpha=2.0, beta=0.5, trans_b=trans_b, c_shape=c_shape), tmp_path)
    calib, x = _calibration(tmp_path)
    run = _prune(source, calib, tmp_path)
    (layer,) = run.result.pruned
    assert layer.bias == "corrected"
    out = onnx.load(str(run.saved.path))
    old = onnx.numpy_helper.to_array(_stored(onnx.load(str(source)), "c"))
    new = onnx.numpy_helper.to_array(_stored(out, "c"))
    assert new.shape == grown and new.dtype == np.float32
    assert len(out.graph.initializer) == 2 and [n.op_type for n in out.graph.node] == ["Gemm"]
    assert not np.allclose(new, np.broadcast_to(old, new.shape))
    assert _mean_shift(source, run.saved.path, x) < TOLERANCE
    _valid(run.saved.path, x)


def test_gemm_without_c_gets_one_scaled_by_alpha_over_beta(tmp_path: Path):
    source = _save(_gemm_model(alpha=2.0, beta=0.5, c_shape=None), tmp_path)
    calib, x = _calibration(tmp_path)
    run = _prune(source, calib, tmp_path)
    (layer,) = run.result.pruned
    assert layer.bias == "added"
    out = onnx.load(str(run.saved.path))
    assert len(out.graph.node[0].input) == 3
    assert _mean_shift(source, run.saved.path, x) < TOLERANCE
    _valid(run.saved.path, x)


def test_cli_gemm_with_a_one_element_c_exits_zero(tmp_path: Path):
    source = _save(_gemm_model(alpha=2.0, beta=0.5, c_shape=(1,)), tmp_path)
    calib, x = _calibration(tmp_path)
    output = tmp_path / "cli.onnx"
    args = ["prune", str(source), str(output), "--sparsity", "0.5", "--method", "wanda"]
    result = CliRunner().invoke(main, [*args, "--calibration", str(calib), "--samples", str(ROWS), "--bias-correction"])
    assert result.exit_code == 0, result.output
    assert onnx.numpy_helper.to_array(_stored(onnx.load(str(output)), "c")).shape == (N,)
    assert _mean_shift(source, output, x) < TOLERANCE
    _valid(output, x)


def test_gemm_with_beta_zero_is_not_corrected_and_says_why(tmp_path: Path):
    source = _save(_gemm_model(alpha=2.0, beta=0.0, c_shape=(N,)), tmp_path)
    calib, x = _calibration(tmp_path)
    run = _prune(source, calib, tmp_path)
    (layer,) = run.result.pruned
    assert layer.bias.startswith("not corrected") and "beta" in layer.bias
    out = onnx.load(str(run.saved.path))
    assert _stored(out, "c").SerializeToString() == _stored(onnx.load(str(source)), "c").SerializeToString()
    assert len(out.graph.node[0].input) == 3 and len(out.graph.initializer) == 2
    _valid(run.saved.path, x)


def test_gemm_shared_broadcast_c_is_skipped_with_a_reason(tmp_path: Path):
    source = _save(_gemm_model(c_shape=(1,), shared_c=True), tmp_path)
    calib, x = _calibration(tmp_path)
    run = _prune(source, calib, tmp_path)
    assert len(run.result.pruned) == 2
    for layer in run.result.pruned:
        assert layer.bias.startswith("not corrected") and "shared" in layer.bias
    out = onnx.load(str(run.saved.path))
    assert _stored(out, "c").SerializeToString() == _stored(onnx.load(str(source)), "c").SerializeToString()
    _valid(run.saved.path, x)


@pytest.mark.parametrize("c_shape", [(1,), (N,)])
def test_without_bias_correction_c_is_untouched(tmp_path: Path, c_shape: tuple[int, ...]):
    source = _save(_gemm_model(alpha=2.0, beta=0.5, c_shape=c_shape), tmp_path)
    calib, x = _calibration(tmp_path)
    run = _prune(source, calib, tmp_path, correct=False)
    (layer,) = run.result.pruned
    assert layer.bias is None and layer.zeros_after == K * N // 2
    out = onnx.load(str(run.saved.path))
    assert _stored(out, "c").SerializeToString() == _stored(onnx.load(str(source)), "c").SerializeToString()
    assert len(out.graph.initializer) == 2 and len(out.graph.node[0].input) == 3
    _valid(run.saved.path, x)


@pytest.mark.parametrize("const_first", [False, True])
@pytest.mark.parametrize(("const_shape", "grown"), [((1,), (N,)), ((), (N,)), ((1, N), (1, N)), ((N,), (N,))])
def test_matmul_add_broadcast_bias_is_corrected(
    tmp_path: Path, const_shape: tuple[int, ...], grown: tuple[int, ...], const_first: bool
):
    source = _save(_matmul_add_model(const_shape, const_first=const_first), tmp_path)
    calib, x = _calibration(tmp_path)
    run = _prune(source, calib, tmp_path)
    (layer,) = run.result.pruned
    assert layer.bias == "corrected"
    out = onnx.load(str(run.saved.path))
    assert onnx.numpy_helper.to_array(_stored(out, "b")).shape == grown
    assert _mean_shift(source, run.saved.path, x) < TOLERANCE
    _valid(run.saved.path, x)
