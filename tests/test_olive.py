"""The Olive pass: runs when Microsoft Olive is installed (``onnxprune[olive]``), skipped otherwise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest

if importlib.util.find_spec("olive") is None:  # installed but broken is a failure, not a skip
    pytest.skip("Microsoft Olive (onnxprune[olive]) is not installed", allow_module_level=True)

from onnxprune.cli_olive import main
from onnxprune.olive import PASS_TYPE, configs, package_config, run
from onnxprune.stats import param_stats

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _workflow(tmp_path: Path, passes: dict) -> dict:
    return {
        "input_model": {"type": "ONNXModel", "model_path": str(ROOT / "fixtures" / "cnn_digits.onnx")},
        "systems": {
            "local": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "passes": passes,
        "host": "local",
        "target": "local",
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "out"),
    }


def test_the_package_config_adds_the_pass_to_olives_own():
    merged = package_config()
    assert merged["passes"][PASS_TYPE] == {"module_path": "onnxprune.olive.OnnxPrune"}
    assert "OnnxDynamicQuantization" in merged["passes"]  # Olive's passes stay available


def test_a_workflow_prunes_with_sparsegpt_then_quantizes(tmp_path):
    passes = {
        "prune": {
            "type": PASS_TYPE,
            "sparsity": 0.5,
            "method": "sparsegpt",
            "calibration": str(ROOT / "fixtures" / "cnn_digits.calib.npz"),
            "samples": 32,
        }
    }
    run(_workflow(tmp_path, passes))
    outputs = sorted((tmp_path / "out").rglob("*.onnx"))
    assert outputs, list((tmp_path / "out").rglob("*"))
    model = onnx.load(outputs[-1])
    stats = param_stats(model)
    assert 0.45 < 1 - stats.nonzeros / stats.parameters < 0.55  # 50 % of the weights; biases and norms kept
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["onnxprune.options"])["method"] == "sparsegpt"


def test_options_follow_prune(tmp_path):
    weights, structure = configs({"pattern": "2:4", "dead_channels": True})
    assert weights.pattern == (2, 4) and structure is None
    weights, structure = configs({"structured": True, "sparsity": 0.3})
    assert weights is None and structure.amount == 0.3
    assert main(["--write-package-config", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["passes"][PASS_TYPE]
