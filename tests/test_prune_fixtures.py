"""Acceptance on the trained fixtures: every fixture at 0.5 local, global, LAMP and 2:4.

Asserted four ways: exact counts, structure (what changed and what did not, byte for
byte), onnxruntime runs the output and agrees where it must, and onnx.checker passes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune.graph.tensors import read_array
from onnxprune.graph.walk import all_tensors
from onnxprune.passes.pipeline import DEAD_CHANNELS_AFTER_WEIGHTS
from onnxprune.sparsity import magnitude_keys
from onnxprune.stats import param_stats

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures"
MODELS = sorted(p.name for p in FIXTURE_DIR.glob("*.onnx"))

CONFIGS = {
    "local": {"sparsity": 0.5},
    "global": {"sparsity": 0.5, "scope": "global"},
    "lamp": {"sparsity": 0.5, "scope": "global", "criterion": "lamp"},
    "2:4": {"pattern": (2, 4)},
}


def _zeros(tensor) -> int:
    values = read_array(tensor)
    return int(values.size - np.count_nonzero(magnitude_keys(values)))


def _tensor_bytes(tensor) -> bytes:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    copy.doc_string = ""
    return copy.SerializeToString()


def _tensors_by_name(model) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in all_tensors(model)}


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def stack_feeds(name: str) -> dict[str, np.ndarray]:
    data = np.load(FIXTURE_DIR / name.replace(".onnx", ".test.npz"))
    if "input" not in data.files:  # stateful_mnist1d: a stack of complete batch-1 feeds, the first
        return {key: np.asarray(data[key][0]) for key in data.files}
    return {key: data[key][:64] for key in data.files}


def test_there_are_fixtures():
    assert len(MODELS) >= 6, MODELS


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("model_name", MODELS)
def test_prune_fixture(model_name, config_name, tmp_path):
    source = FIXTURE_DIR / model_name
    dense = onnx.load(str(source))
    config = onnxprune.PruneConfig(**CONFIGS[config_name])
    model, result = onnxprune.prune(source, config)

    # what changed: at least one tensor pruned, counts exact
    assert result.pruned, "no weight was pruned"
    before, after = _tensors_by_name(dense), _tensors_by_name(model)
    pruned = {layer.name: layer for layer in result.pruned}
    for layer in result.pruned:
        zeros = _zeros(after[layer.name])
        assert zeros == layer.zeros_after
        assert after[layer.name].data_type == before[layer.name].data_type
        if config_name == "local":
            assert zeros == max(math.floor(0.5 * layer.numel), layer.zeros_before)
    if config_name in ("global", "lamp"):
        total = sum(layer.numel for layer in result.pruned)
        assert sum(layer.zeros_after for layer in result.pruned) == math.floor(0.5 * total)
        assert all(
            layer.zeros_after <= math.floor(0.98 * layer.numel) or layer.zeros_after == layer.zeros_before
            for layer in result.pruned
        )
    if config_name == "2:4":
        for weight in onnxprune.inspect(dense).prunable:
            layer = pruned[weight.name]
            values = read_array(after[weight.name])
            if layer.pattern == "2:4":
                groups = np.moveaxis(values, weight.in_axis, -1).reshape(-1, 4)
                assert np.all(np.count_nonzero(groups, axis=1) <= 2), weight.name
            else:
                assert "multiple of 4" in layer.reason or "unknown" in layer.reason

    # what did not change: every other tensor byte-identical, graph structure the same
    for name, tensor in before.items():
        if name not in pruned:
            assert _tensor_bytes(after[name]) == _tensor_bytes(tensor), name
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in dense.graph.node]

    # provenance
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxprune.version"] == onnxprune.__version__
    assert "onnxprune.summary" in meta
    assert all("onnxprune:" in after[name].doc_string for name in pruned)

    # checker and onnxruntime, via the validated atomic save
    out = tmp_path / "pruned.onnx"
    onnxprune.save(model, out, reference=source)
    onnx.checker.check_model(str(out), full_check=True)
    outputs = _run(onnx.load(str(out)), stack_feeds(model_name))
    assert all(np.isfinite(o).all() for o in outputs)
    assert outputs[0].shape == _run(dense, stack_feeds(model_name))[0].shape


@pytest.mark.parametrize("model_name", MODELS)
def test_zero_sparsity_changes_no_weight(model_name):
    source = FIXTURE_DIR / model_name
    dense = onnx.load(str(source))
    model, result = onnxprune.prune(source, onnxprune.PruneConfig(sparsity=0.0))
    assert result.newly_zeroed == 0
    before, after = _tensors_by_name(dense), _tensors_by_name(model)
    assert all(_tensor_bytes(after[n]) == _tensor_bytes(t) for n, t in before.items())
    feeds = stack_feeds(model_name)
    for a, b in zip(_run(dense, feeds), _run(model, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model_name", ["cnn_digits.onnx", "mlp_digits_fp16.onnx"])
def test_same_input_and_options_give_byte_identical_output(model_name, tmp_path):
    source = FIXTURE_DIR / model_name
    config = onnxprune.PruneConfig(sparsity=0.6, scope="global", criterion="lamp")
    paths = []
    for i in range(2):
        model, _ = onnxprune.prune(source, config)
        paths.append(onnxprune.save(model, tmp_path / f"out{i}.onnx", reference=source).path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_pruning_twice_adds_no_zeros():
    source = FIXTURE_DIR / "mlp_digits.onnx"
    config = onnxprune.PruneConfig(sparsity=0.5)
    once, first = onnxprune.prune(source, config)
    _twice, second = onnxprune.prune(once, config)
    assert second.newly_zeroed == 0
    assert second.zeros_after == first.zeros_after


def test_pruned_model_keeps_accuracy_at_moderate_sparsity():
    """Magnitude pruning at 30% of a well-trained MLP costs little held-out accuracy."""
    source = FIXTURE_DIR / "mlp_digits.onnx"
    data = np.load(FIXTURE_DIR / "mlp_digits.test.npz")
    labels = np.load(FIXTURE_DIR / "mlp_digits.test_labels.npy")
    model, _ = onnxprune.prune(source, onnxprune.PruneConfig(sparsity=0.3))

    def accuracy(m) -> float:
        return float((_run(m, {"input": data["input"]})[0].argmax(1) == labels).mean())

    dense_acc, pruned_acc = accuracy(onnx.load(str(source))), accuracy(model)
    assert dense_acc > 0.9
    assert pruned_acc >= dense_acc - 0.03


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("model_name", MODELS)
def test_streamed_output_equals_in_place_output(model_name, config_name, tmp_path):
    """prune_file (deferred writes, streamed) and prune + save (in place) agree byte for byte, given
    the same passes (prune_file's dead-channel pass after the weights, which the recipe stamped in
    both says)."""
    source = FIXTURE_DIR / model_name
    config = onnxprune.PruneConfig(**CONFIGS[config_name])
    run = onnxprune.prune_file(source, tmp_path / "streamed.onnx", config)
    model, result = onnxprune.prune(source, config, structure=DEAD_CHANNELS_AFTER_WEIGHTS)
    saved = onnxprune.save(model, tmp_path / "in_place.onnx", reference=source)
    assert run.saved.path.read_bytes() == saved.path.read_bytes()
    assert run.result == result
    assert run.validation.checker == "passed"
    assert param_stats(onnx.load(str(run.saved.path))) == run.params_after
    assert param_stats(onnx.load(str(source))) == run.params_before
