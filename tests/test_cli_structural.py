"""The structural pass from the command line: --dead-channels, --structured, --target-flops,
the light dead-channel pass after weight pruning, and the errors of impossible options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.config import StructureConfig
from onnxprune.passes.deadwatch import has_zero_slice
from onnxprune.passes.structural import remove_channels

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MASKED = FIXTURES / "masked"


def _invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _params(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("name", ["cnn_masked", "mlp_masked", "transformer_masked"])
def test_dead_channels_shrinks_a_masked_model_with_the_same_outputs(tmp_path, name):
    src, out, report = MASKED / f"{name}.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    result = _invoke("prune", src, out, "--dead-channels", "--json", report)
    assert result.exit_code == 0, result.output
    assert "exact: outputs before and after differ by at most" in result.output
    x = np.load(MASKED / f"{name}.test.npz")["input"]
    assert np.abs(_outputs(src, x) - _outputs(out, x)).max() <= 1e-5
    assert _params(out) < _params(src)
    onnx.checker.check_model(str(out), full_check=True)
    data = json.loads(report.read_text())["structure"]
    assert data["dead_units"] == data["removed_units"] > 0
    summary = json.loads(_metadata(out)["onnxprune.structure"])
    assert summary["params"][1] < summary["params"][0]


def test_dead_channels_on_a_model_without_any_writes_nothing(tmp_path):
    out = tmp_path / "out.onnx"
    result = _invoke("prune", FIXTURES / "mlp_digits.onnx", out, "--dead-channels")
    assert result.exit_code == 10
    assert "nothing to remove" in result.output and not out.exists()


def test_structured_with_calibration_spreads_the_parameters_by_measured_loss(tmp_path):
    out, report = tmp_path / "s30.onnx", tmp_path / "r.json"
    args = ["--structured", "--sparsity", "0.3", "--round-to", "1", "--json", report]
    calib = ["--calibration", FIXTURES / "cnn_digits.calib.npz"]
    result = _invoke("prune", FIXTURES / "cnn_digits.onnx", out, *args, *calib)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())["structure"]
    assert data["config"]["allocator"] is None
    assert 0.27 <= 1 - data["params_after"] / data["params_before"] <= 0.33  # of the parameters, not of each group
    x = np.load(FIXTURES / "cnn_digits.test.npz")["input"]
    y = np.load(FIXTURES / "cnn_digits.test_labels.npy")
    assert (_outputs(out, x).argmax(1) == y).mean() > 0.95
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(FIXTURES / "cnn_digits.onnx"))
    with pytest.raises(onnxprune.OptionError, match="calibration"):  # curves need data
        remove_channels(model, StructureConfig(amount=0.3, allocator="curves"))


def test_structured_with_calibration_refits_and_reports(tmp_path):
    out, report = tmp_path / "s30.onnx", tmp_path / "r.json"
    result = _invoke(
        "prune",
        FIXTURES / "cnn_digits.onnx",
        out,
        "--structured",
        "--sparsity",
        "0.3",
        "--calibration",
        FIXTURES / "cnn_digits.calib.npz",
        "--round-to",
        "1",
        "--allocation",
        "uniform",  # 30 % of each group (the default with data spreads 30 % of the parameters by loss)
        "--json",
        report,
    )
    assert result.exit_code == 0, result.output
    assert "channel group" in result.output and "consumers refitted" in result.output
    assert "MACs" in result.output
    data = json.loads(report.read_text())["structure"]
    assert data["removed_units"] > 0 and data["refits"]
    assert all(after <= before for _, before, after in data["refits"])
    assert data["macs"][1] < 0.6 * data["macs"][0]
    x = np.load(FIXTURES / "cnn_digits.test.npz")["input"]
    y = np.load(FIXTURES / "cnn_digits.test_labels.npy")
    assert (_outputs(out, x).argmax(1) == y).mean() > 0.95  # the refit keeps the accuracy
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # folded


def test_target_flops_keeps_about_that_fraction(tmp_path):
    out, report = tmp_path / "f50.onnx", tmp_path / "r.json"
    result = _invoke("prune", FIXTURES / "mlp_digits.onnx", out, "--target-flops", "0.5", "--json", report)
    assert result.exit_code == 0, result.output
    before, after = json.loads(report.read_text())["structure"]["macs"]
    assert 0.4 <= after / before <= 0.5


def test_round_to_keeps_hardware_friendly_counts(tmp_path):
    out = tmp_path / "r8.onnx"
    result = _invoke("prune", FIXTURES / "mlp_digits.onnx", out, "--structured", "--sparsity", "0.3", "--round-to", "8")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    widths = [t.dims[0] for t in model.graph.initializer if len(t.dims) == 2][:2]
    assert all(w % 8 == 0 for w in widths) and widths[0] < 256


def test_light_pass_after_weight_pruning_removes_dead_channels(tmp_path):
    src = MASKED / "mlp_masked.onnx"
    on, off = tmp_path / "on.onnx", tmp_path / "off.onnx"
    assert _invoke("prune", src, on, "--sparsity", "0.3").exit_code == 0
    result = _invoke("prune", src, off, "--sparsity", "0.3", "--no-dead-channels")
    assert result.exit_code == 0
    assert _params(on) < _params(off) == _params(src)
    x = np.load(MASKED / "mlp_masked.test.npz")["input"]
    assert np.abs(_outputs(on, x) - _outputs(off, x)).max() <= 1e-5  # the same pruned model, smaller
    assert "onnxprune.structure" in _metadata(on) and "onnxprune.structure" not in _metadata(off)


def test_light_pass_leaves_an_ordinary_model_as_it_was(tmp_path):
    out = tmp_path / "o.onnx"
    assert _invoke("prune", FIXTURES / "cnn_digits.onnx", out, "--sparsity", "0.3").exit_code == 0
    model = onnx.load(str(out))
    assert [n.op_type for n in model.graph.node] == [
        n.op_type for n in onnx.load(str(FIXTURES / "cnn_digits.onnx")).graph.node
    ]
    assert "onnxprune.structure" not in _metadata(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--structured"], "--structured needs --sparsity"),
        (["--structured", "--sparsity", "0.3", "--method", "sparsegpt"], "--method sparsegpt is for weight"),
        (["--structured", "--sparsity", "0.3", "--pattern", "2:4"], "drop --pattern"),
        (["--target-flops", "1.5"], "--target-flops is the fraction"),
        (["--structured", "--sparsity", "0.3", "--round-to", "0"], "--round-to must be >= 1"),
        (["--structured", "--sparsity", "0.3", "--max-group-sparsity", "1"], "--max-group-sparsity"),
        (["--structured", "--sparsity", "0.3", "--importance", "error"], "needs calibration data"),
        (["--no-dead-channels"], "nothing to do"),
        (["--sparsity", "0.3", "--calibration", "x.npz"], "--method magnitude uses no data"),
    ],
)
def test_impossible_structural_options_are_one_line_errors(tmp_path, args, message):
    out = tmp_path / "o.onnx"
    result = _invoke("prune", FIXTURES / "mlp_digits.onnx", out, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_zero_slices_are_seen_along_either_end_axis():
    w = np.ones((4, 3, 2))
    assert not has_zero_slice(w)
    w[2] = 0
    assert has_zero_slice(w)
    v = np.ones((4, 5))
    v[:, 3] = 0
    assert has_zero_slice(v)
    assert has_zero_slice(np.array([1.0, 0.0])) and not has_zero_slice(np.array([1.0, 2.0]))
