"""A recurrent R's damping chosen by the closed-loop error of its node's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune.graph.discovery import discover
from onnxprune.graph.index import Scope
from onnxprune.passes import calibrated, closed_loop
from onnxprune.passes.calibrated import _closed_loop_outputs
from onnxprune.passes.layers import calib_layer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LSTM = FIXTURES / "lstm_mnist1d.onnx"
STATES = ["/lstm/LSTM_output_0", "/lstm/LSTM_output_1", "/lstm/LSTM_output_2"]


def _calib():
    return onnxprune.calibration_data(LSTM, FIXTURES / "lstm_mnist1d.calib.npz", samples=64)


def _states(path: Path) -> list[np.ndarray]:
    """The LSTM node's three outputs on the calibration inputs, closed loop (onnxruntime)."""
    model = onnx.load(str(path))
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in STATES)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.load(FIXTURES / "lstm_mnist1d.calib.npz")["input"][:64]
    return sess.run(STATES, {"input": x})


def _error(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    num = sum(float(np.sum((g.astype(np.float64) - r) ** 2)) for g, r in zip(got, ref, strict=True))
    return num / sum(float(np.sum(r.astype(np.float64) ** 2)) for r in ref)


def test_relative_error_sums_over_batches_and_values():
    refs = [{"a": np.array([3.0, 4.0]), "b": np.array([0.0])}, {"a": np.array([0.0, 0.0]), "b": np.array([1.0])}]
    got = [{"a": np.array([3.0, 5.0]), "b": np.array([0.0])}, {"a": np.array([1.0, 0.0]), "b": np.array([1.0])}]
    assert closed_loop.relative_error(got, refs) == pytest.approx(2.0 / 26.0)
    assert closed_loop.relative_error(refs, refs) == 0.0


def test_only_a_layer_reading_its_own_output_is_chosen_closed_loop():
    model = onnx.load(str(LSTM))
    scope = Scope.build(model.graph)
    found = {}
    for weight in discover(model).prunable:
        layer, _ = calib_layer(model, scope, weight)
        found[weight.key] = _closed_loop_outputs(scope, layer)
    assert found["lstm.R"] == STATES
    assert found["lstm.W"] == [] and found["fc.weight"] == []


def test_the_chosen_damping_is_the_one_with_the_least_closed_loop_error(tmp_path: Path):
    data = _calib()
    dense = _states(LSTM)
    chosen = onnxprune.prune_file(
        LSTM, tmp_path / "auto.onnx", onnxprune.PruneConfig(plan={"lstm.R": 0.7}, method="sparsegpt"), calibration=data
    )
    record = next(layer for layer in chosen.result.layers if layer.key == "lstm.R")
    assert record.percdamp in {*closed_loop.PERCDAMPS, calibrated.PERCDAMP_DATA}
    assert record.closed_loop_error == pytest.approx(_error(_states(tmp_path / "auto.onnx"), dense), rel=1e-3)
    # every fixed damping is at best as good, measured on the written models
    for percdamp in closed_loop.PERCDAMPS:
        fixed = tmp_path / f"fixed{percdamp}.onnx"
        config = onnxprune.PruneConfig(plan={"lstm.R": 0.7}, method="sparsegpt", percdamp=percdamp)
        run = onnxprune.prune_file(LSTM, fixed, config, calibration=data)
        assert next(layer for layer in run.result.layers if layer.key == "lstm.R").percdamp is None  # the user's
        assert _error(_states(fixed), dense) >= record.closed_loop_error * (1 - 1e-3)
