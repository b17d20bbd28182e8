"""The dense model's values computed once for every wave (:class:`onnxprune.capture.DenseValues`):
the same statistics as a dense session per capture, one dense run per batch in all, and the
temporary folder gone after a calibrated run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import init, model, node, rand, value

import onnxprune
from onnxprune import capture as capture_module
from onnxprune import runtime
from onnxprune.capture import DenseValues, capture
from onnxprune.graph.discovery import discover
from onnxprune.graph.index import Scope
from onnxprune.graph.outputs import _host_tag
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


def test_dense_values_give_the_statistics_of_a_dense_session(tmp_path):
    w1, w2 = rand((8, 8), seed=1), rand((8, 8), seed=2)
    dense = _block(w1, w2)
    pruned = _block(np.where(np.abs(w1) > 0.5, w1, 0).astype(np.float32), w2)
    spec = _spec(dense, "W2")
    assert spec.residual == "h"
    batches = [{"x": rand((16, 8), seed=5)}, {"x": rand((24, 8), seed=6)}]
    by_session = capture(pruned, [spec], batches, reference=dense)[spec.key]
    values = DenseValues(dense, [spec.activation, spec.residual], tmp_path)
    by_values = capture(pruned, [spec], batches, reference=values)[spec.key]
    assert by_values.C is not None and by_values.residual is not None
    for field in ("H", "C", "H_ref", "mean", "mean_ref"):
        np.testing.assert_allclose(getattr(by_values, field), getattr(by_session, field), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(by_values.residual.cross, by_session.residual.cross, rtol=1e-6, atol=1e-9)
    assert len(list(tmp_path.glob("*.npy"))) == len({spec.activation, spec.residual}) * 2  # names × batches


def test_each_batch_runs_the_dense_model_once_for_every_capture(tmp_path, monkeypatch):
    dense = _block(rand((8, 8), seed=1), rand((8, 8), seed=2))
    runs: list[tuple[str, ...]] = []
    real = runtime.run_batch

    def counted(sess, names, feeds, index):
        runs.append(tuple(names))
        return real(sess, names, feeds, index)

    monkeypatch.setattr(runtime, "run_batch", counted)
    values = DenseValues(dense, ["a", "h"], tmp_path)
    feeds = {"x": rand((4, 8), seed=3)}
    first = values.read(["h"], feeds, 0)
    again = values.read(["a", "h"], feeds, 0)
    assert runs == [("a", "h")]  # every name at once, the first time only
    np.testing.assert_array_equal(first["h"], again["h"])
    direct = np.maximum(feeds["x"] @ onnx.numpy_helper.to_array(dense.graph.initializer[0]), 0)
    np.testing.assert_allclose(again["h"], direct, rtol=1e-6)
    other = values.read(["y"], feeds, 0)  # a name it was not given: a session of its own
    assert runs[-1] == ("y",) and other["y"].shape == (4, 8)


@pytest.mark.parametrize("name", ["mlp_digits", "lstm_mnist1d"])
def test_a_sequential_run_removes_its_folder_and_matches_a_session_per_wave(name, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the run's scratch folder goes
    folders: list[Path] = []
    real_init = DenseValues.__init__

    def recorded(self, model, names, folder, **kwargs):
        folders.append(Path(folder))
        real_init(self, model, names, folder, **kwargs)

    monkeypatch.setattr(DenseValues, "__init__", recorded)
    fills: list[int] = []
    real_fill = DenseValues._fill

    def counted_fill(self, feeds, index):
        real_fill(self, feeds, index)
        fills.append(index in self._done)

    monkeypatch.setattr(DenseValues, "_fill", counted_fill)
    source = FIXTURES / f"{name}.onnx"
    data = onnxprune.calibration_data(source, FIXTURES / f"{name}.calib.npz", samples=32)
    config = onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt", allocator="uniform")
    cached, _ = onnxprune.prune(onnx.load(str(source)), config, calibration=data)
    assert fills and all(fills)  # every batch's dense values were kept once
    assert len(folders) == 1 and folders[0].parent == scratch and folders[0].name.startswith(".dense-values")
    assert not list(scratch.iterdir())  # removed at the end
    # the same run with a dense session per wave: values too large to keep
    monkeypatch.setattr(capture_module, "DENSE_BATCH_BYTES", 0)
    fills.clear()
    per_wave, _ = onnxprune.prune(onnx.load(str(source)), config, calibration=data)
    assert not fills
    a = {t.name: onnx.numpy_helper.to_array(t) for t in cached.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in per_wave.graph.initializer}
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key] == 0, b[key] == 0), key  # the same masks
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_the_batch_is_cut_to_fit_and_values_too_large_for_one_sample_are_not_kept(tmp_path, monkeypatch):
    dense = _block(rand((8, 8), seed=1), rand((8, 8), seed=2))
    feeds = {"x": rand((4, 8), seed=3)}
    monkeypatch.setattr(capture_module, "DENSE_BATCH_BYTES", 200)  # the probe: 2 names × 8 floats = 64 B a sample
    cut = DenseValues(dense, ["a", "h"], tmp_path, probe={"x": feeds["x"][:1]}, batch=4)
    assert cut.keeps and cut.batch == 3  # the batch the captures should use: 3 samples' values fit
    monkeypatch.setattr(capture_module, "DENSE_BATCH_BYTES", 50)  # not even one sample fits
    values = DenseValues(dense, ["a", "h"], tmp_path, probe={"x": feeds["x"][:1]}, batch=4)
    assert not values.keeps and values.batch == 4
    out = values.read(["h"], feeds, 0)
    np.testing.assert_allclose(
        out["h"], np.maximum(feeds["x"] @ onnx.numpy_helper.to_array(dense.graph.initializer[0]), 0), rtol=1e-6
    )
    assert not list(tmp_path.glob("*.npy"))


def test_values_stop_being_kept_past_the_disk_budget(tmp_path, monkeypatch):
    dense = _block(rand((8, 8), seed=1), rand((8, 8), seed=2))
    monkeypatch.setattr(capture_module, "DENSE_DISK_BYTES", 4 * 8 * 4 * 2 + 1)  # one batch of 4 samples, 2 names
    values = DenseValues(dense, ["a", "h"], tmp_path, probe={"x": rand((1, 8), seed=9)}, batch=4)
    assert values.keeps
    first = values.read(["h"], {"x": rand((4, 8), seed=3)}, 0)
    second = values.read(["h"], {"x": rand((4, 8), seed=4)}, 1)  # over the budget: read directly
    assert not values.keeps and len(list(tmp_path.glob("*.npy"))) == 2
    assert first["h"].shape == second["h"].shape == (4, 8)
    assert values.read(["h"], {"x": rand((4, 8), seed=3)}, 0)["h"].shape == (4, 8)  # batch 0 is still kept


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
