"""The dense model's side of the waves' captures: a frozen :class:`onnxprune.frontier.Frontier`
of the dense model, so each wave runs only the dense nodes beyond the last one's. The same
statistics as a dense session per capture, the waves' batch cut to fit their dense values, and
the temporary folder gone after a calibrated run (a killed run's swept by the next)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import init, model, node, rand, value

import onnxprune
from onnxprune import frontier as frontier_module
from onnxprune.capture import capture, sample_bytes
from onnxprune.frontier import Frontier
from onnxprune.graph.discovery import discover
from onnxprune.graph.index import Scope
from onnxprune.graph.outputs import _host_tag
from onnxprune.passes import calibrated as calibrated_module
from onnxprune.passes.layers import calib_layer

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _block(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x -> MatMul(W1) -> Relu = h -> MatMul(W2) -> Add(h) = y: W2's output feeds a residual sum."""
    nodes = [
        node("MatMul", ["x", "W1"], ["a"], "mm1"),
        node("Relu", ["a"], ["h"], "relu"),
        node("MatMul", ["h", "W2"], ["o"], "mm2"),
        node("Add", ["h", "o"], ["y"], "sum"),
    ]
    return model(nodes, [value("x", ["n", 8])], [value("y", ["n", 8])], [init("W1", w1), init("W2", w2)])


def _spec(m: onnx.ModelProto, name: str):
    weight = next(w for w in discover(m).weights if w.name == name)
    layer, why = calib_layer(m, Scope.build(m.graph), weight)
    assert layer is not None, why
    return layer.spec


def test_a_dense_frontier_gives_the_statistics_of_a_dense_session(tmp_path):
    w1, w2 = rand((8, 8), seed=1), rand((8, 8), seed=2)
    dense = _block(w1, w2)
    pruned = _block(np.where(np.abs(w1) > 0.5, w1, 0).astype(np.float32), w2)
    spec1, spec2 = _spec(dense, "W1"), _spec(dense, "W2")
    assert spec2.residual == "h"
    batches = [{"x": rand((16, 8), seed=5)}, {"x": rand((24, 8), seed=6)}]
    values = Frontier(dense, tmp_path, frozen=True)
    for spec in (spec1, spec2):  # two waves: the second reads the dense model beyond the first's
        by_session = capture(pruned, [spec], batches, reference=dense)[spec.key]
        by_values = capture(pruned, [spec], batches, reference=values)[spec.key]
        assert by_values.C is not None
        for field in ("H", "C", "H_ref", "mean", "mean_ref"):
            np.testing.assert_allclose(getattr(by_values, field), getattr(by_session, field), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(by_values.residual.cross, by_session.residual.cross, rtol=1e-6, atol=1e-9)
    assert values.segments_run == 2 and values.region  # both captures ran on it


def test_each_wave_runs_only_the_dense_nodes_beyond_the_last_one(tmp_path, monkeypatch):
    dense = _block(rand((8, 8), seed=1), rand((8, 8), seed=2))
    pruned = _block(rand((8, 8), seed=3), rand((8, 8), seed=4))
    spec1, spec2 = _spec(dense, "W1"), _spec(dense, "W2")
    runs: list[int] = []
    real = frontier_module.sub_model

    def counted(model, graph, nodes, *args, **kwargs):
        if model is dense:
            runs.append(len(nodes))
        return real(model, graph, nodes, *args, **kwargs)

    monkeypatch.setattr(frontier_module, "sub_model", counted)
    values = Frontier(dense, tmp_path, frozen=True)
    batches = [{"x": rand((4, 8), seed=5)}]
    capture(pruned, [spec1], batches, reference=values)
    capture(pruned, [spec2], batches, reference=values)
    again = capture(pruned, [spec2], batches, reference=values)[spec2.key]
    # x is fed; mm1 and relu make h, the second wave's input (and residual); then h is kept
    assert runs == [2]
    by_session = capture(pruned, [spec2], batches, reference=dense)[spec2.key]
    np.testing.assert_allclose(again.C, by_session.C, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["mlp_digits", "lstm_mnist1d"])
def test_a_sequential_run_removes_its_folder_and_matches_a_session_per_wave(name, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the run's scratch folder goes
    made: list[Frontier] = []
    real_init = Frontier.__init__

    def recorded(self, model, folder, **kwargs):
        real_init(self, model, folder, **kwargs)
        made.append(self)

    monkeypatch.setattr(Frontier, "__init__", recorded)
    source = FIXTURES / f"{name}.onnx"
    data = onnxprune.calibration_data(source, FIXTURES / f"{name}.calib.npz", samples=32)
    config = onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt", allocator="uniform")
    kept, _ = onnxprune.prune(onnx.load(str(source)), config, calibration=data)
    dense = [f for f in made if f.frozen and Path(f.folder).name == "dense"]
    assert len(dense) == 1 and dense[0].segments_run >= 1  # the waves after the first read from it
    folder = Path(dense[0].folder).parent
    assert folder.parent == scratch and folder.name.startswith(".dense-values")
    assert not list(scratch.iterdir())  # removed at the end
    # the same run with every capture from the graph inputs: frontiers that keep nothing
    monkeypatch.setattr(frontier_module, "FRONTIER_DISK_BYTES", 0)
    made.clear()
    per_wave, _ = onnxprune.prune(onnx.load(str(source)), config, calibration=data)
    assert made and not any(f.enabled for f in made)  # each gave up at its first capture
    a = {t.name: onnx.numpy_helper.to_array(t) for t in kept.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in per_wave.graph.initializer}
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key] == 0, b[key] == 0), key  # the same masks
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_the_waves_batch_is_cut_to_fit_their_dense_values(monkeypatch):
    source = FIXTURES / "mlp_digits.onnx"
    dense = onnx.load(str(source))
    data = onnxprune.calibration_data(source, FIXTURES / "mlp_digits.calib.npz", samples=16)
    names = [dense.graph.node[0].output[0]]
    first = next(data.batches(1))
    per_sample = sample_bytes(dense, names, first, data.count(first))
    assert per_sample > 0
    monkeypatch.setattr(calibrated_module, "WAVE_BATCH_BYTES", int(3 * per_sample) + 1)
    assert calibrated_module._wave_batch(dense, names, data, 32) == 3  # 3 samples' values fit
    assert calibrated_module._wave_batch(dense, names, data, 2) == 2  # never above the batch asked
    monkeypatch.setattr(calibrated_module, "WAVE_BATCH_BYTES", 0)  # not even one sample fits
    assert calibrated_module._wave_batch(dense, names, data, 32) == 1
    assert calibrated_module._wave_batch(dense, [], data, 32) == 32  # nothing read from the dense model


def test_a_killed_runs_scratch_folder_is_swept_by_the_next_run(tmp_path, monkeypatch):
    """A run killed mid-way (SIGKILL) leaves its dense values; the next calibrated run removes
    them (ours, its process gone), and leaves others' files alone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".dense-values.onnxprune-{dead}-{_host_tag()}-abc123.tmp"
    stale.mkdir()
    (stale / "b0_0.npy").write_bytes(b"x" * 1000)
    other = tmp_path / "someone-elses.npy"
    other.write_bytes(b"y")
    source = FIXTURES / "mlp_digits.onnx"
    data = onnxprune.calibration_data(source, FIXTURES / "mlp_digits.calib.npz", samples=16)
    onnxprune.prune(onnx.load(str(source)), onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt"), calibration=data)
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone-elses.npy"]
