"""``prune --dry-run`` predicts what ``prune`` writes, and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import main
from onnxprune.dry_run import capture_plan
from onnxprune.envelope import schema
from onnxprune.stats import param_stats

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MODEL = FIXTURES / "cnn_digits.onnx"
CALIB = FIXTURES / "cnn_digits.calib.npz"


def _dry(tmp_path, *args):
    out = tmp_path / "out.onnx"
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["prune", str(MODEL), str(out), *args, "--dry-run", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even OUT
    return json.loads(result.stdout), result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--sparsity", "0.5"],
        ["--sparsity", "0.7", "--scope", "global", "--criterion", "lamp"],
        ["--pattern", "2:4"],
        ["--structured", "--sparsity", "0.3"],
    ],
)
def test_the_prediction_is_what_prune_writes(tmp_path, args):
    predicted, text = _dry(tmp_path, *args)
    assert "dry run: nothing written" in text
    real = tmp_path / "real.onnx"
    done = CliRunner().invoke(main, ["prune", str(MODEL), str(real), *args, "-q"])
    assert done.exit_code == 0, done.output
    stats = param_stats(onnx.load(real))
    assert predicted["model"]["parameters"][1] == stats.parameters
    assert predicted["model"]["nonzeros"][1] == stats.nonzeros
    assert predicted["capture"] is None
    import jsonschema

    jsonschema.Draft202012Validator(schema()).validate(predicted)


def test_a_calibrated_method_lists_what_calibration_would_capture(tmp_path):
    predicted, text = _dry(tmp_path, "--sparsity", "0.5", "--method", "sparsegpt", "--calibration", str(CALIB))
    capture = predicted["capture"]
    layers = [layer for wave in capture["waves"] for layer in wave]
    assert {layer["weight"] for layer in layers} == {
        "block.conv1.weight",
        "block.conv2.weight",
        "pw.0.weight",
        "fc1.weight",
        "fc2.weight",
    }
    fc1 = next(layer for layer in layers if layer["weight"] == "fc1.weight")
    assert (fc1["rows"], fc1["cols"], fc1["statistics_bytes"]) == (64, 512, 2 * 8 * 512 * 512)
    assert capture["peak_statistics_bytes"] == max(sum(x["statistics_bytes"] for x in w) for w in capture["waves"])
    assert "calibration would capture 5 layer(s)" in text and "--method sparsegpt is not run in a dry run" in text
    assert "method='sparsegpt' is not run in a dry run" in predicted["notes"][0]  # the API's spelling in JSON
    # the same layers the calibrated pass fits
    plan = capture_plan(onnx.load(MODEL), onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt"))
    assert plan.layers == 5 and not plan.fallback


def test_a_dry_run_refuses_to_write(tmp_path):
    for extra in (["--report", str(tmp_path / "r.html")], ["--json", str(tmp_path / "r.json")], ["--quantize", "int8"]):
        result = CliRunner().invoke(
            main, ["prune", str(MODEL), str(tmp_path / "o.onnx"), "--sparsity", "0.5", "--dry-run", *extra]
        )
        assert result.exit_code == 2 and "--dry-run writes nothing" in result.output
        assert list(tmp_path.iterdir()) == []
