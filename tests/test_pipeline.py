"""One pipeline for prune() and prune_file(): same passes, same model, uniform PassResults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxprune
from onnxprune.passes.base import PassContext, PassResult
from onnxprune.passes.deadwatch import NOTHING_DEAD, DeadChannelPass
from onnxprune.passes.pipeline import DEAD_CHANNELS_AFTER_WEIGHTS, NOTHING_CHANGED, build_pipeline
from onnxprune.passes.structural import StructuralPass
from onnxprune.passes.unstructured import WeightPass
from onnxprune.quantize import QuantizePass
from onnxprune.stats import param_stats

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
MLP = FIXTURES / "mlp_digits.onnx"
BIAS = "bias: not pruned"


def _outputs(model: onnx.ModelProto | Path) -> np.ndarray:
    data = np.load(FIXTURES / "mlp_digits.test.npz")
    feeds = {name: data[name][:64] for name in data.files}
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _same_model(model: onnx.ModelProto, path: Path) -> None:
    """Byte-identical, else the same outputs within 1e-6."""
    onnx.checker.check_model(model)
    if model.SerializeToString() != path.read_bytes():
        np.testing.assert_allclose(_outputs(model), _outputs(path), rtol=0, atol=1e-6)


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _by_name(run: onnxprune.PruneRun) -> dict[str, PassResult]:
    return {p.name: p for p in run.passes}


def test_build_pipeline_picks_the_passes_and_the_watch():
    config = onnxprune.PruneConfig(sparsity=0.5)
    watched = build_pipeline(config, DEAD_CHANNELS_AFTER_WEIGHTS, onnxprune.QuantizeConfig())
    assert [type(p) for p in watched.passes] == [WeightPass, DeadChannelPass, QuantizePass]
    assert watched.watched
    assert WeightPass.contract.streams and QuantizePass.contract.on_file
    full = build_pipeline(config, onnxprune.StructureConfig(amount=0.3))
    assert [type(p) for p in full.passes] == [WeightPass, StructuralPass] and not full.watched
    # dead channels without a streaming pass before them: run right away, no watch
    alone = build_pipeline(None, DEAD_CHANNELS_AFTER_WEIGHTS)
    assert [type(p) for p in alone.passes] == [DeadChannelPass] and not alone.watched
    assert build_pipeline(config, onnxprune.StructureConfig(dead_channels=False)).passes[1:] == ()
    with pytest.raises(onnxprune.OptionError, match="nothing to do"):
        build_pipeline(None, None, onnxprune.QuantizeConfig())
    with pytest.raises(onnxprune.OptionError, match="needs calibration data"):
        build_pipeline(config, quantize=onnxprune.QuantizeConfig(mode="static")).check(PassContext())


def test_prune_in_memory_with_structure_is_prune_file(tmp_path):
    structure = onnxprune.StructureConfig(amount=0.3)
    model, run = onnxprune.prune_model(MLP, None, structure=structure)
    out = tmp_path / "small.onnx"
    filed = onnxprune.prune_file(MLP, out, None, structure=structure)
    _same_model(model, out)
    # prune() runs the same pipeline and returns the same model
    same, result = onnxprune.prune(MLP, None, structure=structure)
    assert same.SerializeToString() == model.SerializeToString() and result.layers == ()

    assert [p.name for p in run.passes] == [p.name for p in filed.passes] == ["structural"]
    (passed,) = filed.passes
    assert passed.counts == run.passes[0].counts
    assert passed.changed and passed.detail is filed.structure
    # fc1 (256 units) and fc2 (128 units) lose 30 % each, rounded down to multiples of 8
    assert passed.counts["units_removed"] == 72 + 32 == filed.structure.removed_units
    assert passed.counts["dead_units"] == 0 and passed.counts["groups"] == 3
    written = _weights(out)
    assert written["fc1.weight"].shape == (256 - 72, 64) and written["fc2.weight"].shape == (128 - 32, 256 - 72)
    assert written["fc3.weight"].shape == (10, 128 - 32)
    params = sum(a.size for a in written.values())
    assert passed.counts["params_before"] == 50826 and passed.counts["params_after"] == params == 30690
    assert filed.params_after == param_stats(onnx.load(str(out))) == run.params_after
    # the blocked group (the logits) is skipped with its reason
    assert passed.skipped == (("/fc3/Gemm", "'logits' is a graph output (its shape must not change)"),)
    assert passed.counts["blocked_groups"] == 1


def test_prune_in_memory_with_quantize_is_prune_file(tmp_path):
    config, quantize = onnxprune.PruneConfig(sparsity=0.5), onnxprune.QuantizeConfig()
    model, run = onnxprune.prune_model(MLP, config, structure=DEAD_CHANNELS_AFTER_WEIGHTS, quantize=quantize)
    out = tmp_path / "int8.onnx"
    filed = onnxprune.prune_file(MLP, out, config, quantize=quantize)  # the same channel pass by default
    _same_model(model, out)
    assert [p.name for p in filed.passes] == [p.name for p in run.passes] == ["weights", "dead_channels", "quantize"]
    # the same counts, but the file runner left the pruned bytes to the streaming writer
    assert [{**p.counts, "deferred": 0} for p in filed.passes] == [{**p.counts, "deferred": 0} for p in run.passes]
    assert _by_name(filed)["weights"].counts["deferred"] == 3 and _by_name(run)["weights"].counts["deferred"] == 0
    int8 = _by_name(filed)["quantize"]
    assert int8.detail is filed.quantized and int8.changed
    stored = onnx.load(str(out)).graph.initializer
    quantized = [
        numpy_helper.to_array(t)
        for t in stored
        if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_quantized")
    ]
    assert len(quantized) == int8.counts["weights_quantized"] == 3
    assert int8.counts["elements"] == sum(q.size for q in quantized) == 50432
    assert int8.counts["zeros_before"] == 25216 == _by_name(filed)["weights"].counts["zeros_after"]
    assert int8.counts["zeros_after"] == sum(int(np.count_nonzero(q == 0)) for q in quantized) >= 25216
    assert int8.counts["bytes_after"] == out.stat().st_size


def test_weight_pass_counts_match_the_written_model(tmp_path):
    out = tmp_path / "pruned.onnx"
    run = onnxprune.prune_file(MLP, out, onnxprune.PruneConfig(sparsity=0.5))
    weights = _by_name(run)["weights"]
    assert weights.changed and weights.detail is run.result
    written = _weights(out)
    zeros = sum(int(np.count_nonzero(written[name] == 0)) for name in ("fc1.weight", "fc2.weight", "fc3.weight"))
    assert weights.counts["zeros_after"] == zeros == 25216 and weights.counts["newly_zeroed"] == 25216
    assert weights.counts["tensors_pruned"] == 3 and weights.counts["deferred"] == 3  # streamed
    assert [layer.key for layer in weights.layers] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    stats = param_stats(onnx.load(str(out)))
    assert (weights.counts["params_after"], weights.counts["nonzeros_after"]) == (stats.parameters, stats.nonzeros)
    assert run.params_after == stats and run.params_before.nonzeros == 50826
    assert weights.skipped == (("fc1.bias", BIAS), ("fc2.bias", BIAS), ("fc3.bias", BIAS))


def test_dead_channels_found_by_the_watch_in_memory_and_on_file(tmp_path):
    config = onnxprune.PruneConfig(sparsity=0.9)  # rows of fc1 / fc2 go all-zero: dead units
    model, run = onnxprune.prune_model(MLP, config, structure=DEAD_CHANNELS_AFTER_WEIGHTS)
    out = tmp_path / "dead.onnx"
    filed = onnxprune.prune_file(MLP, out, config)
    _same_model(model, out)
    dead = _by_name(filed)["dead_channels"]
    assert dead.changed and dead.detail is filed.structure
    assert dead.counts["units_removed"] == dead.counts["dead_units"] == 42 == filed.structure.dead_units
    written = _weights(out)
    assert written["fc1.weight"].shape[0] + written["fc2.weight"].shape[0] == 256 + 128 - 42
    assert dead.counts["params_after"] == sum(a.size for a in written.values()) == filed.params_after.parameters
    assert dead.counts == _by_name(run)["dead_channels"].counts
    np.testing.assert_allclose(_outputs(out), _outputs(model), rtol=0, atol=1e-6)


def test_the_watch_skips_the_dead_channel_pass_with_its_reason(tmp_path):
    out = tmp_path / "light.onnx"
    config = onnxprune.PruneConfig(sparsity=0.2)  # no row or column of a weight goes all-zero
    filed = onnxprune.prune_file(MLP, out, config)
    assert out.exists() and filed.structure is None
    dead = _by_name(filed)["dead_channels"]
    assert not dead.changed and dead.detail is None and dead.skipped == (("dead_channels", NOTHING_DEAD),)
    model, run = onnxprune.prune_model(MLP, config, structure=DEAD_CHANNELS_AFTER_WEIGHTS)
    assert _by_name(run)["dead_channels"].skipped == dead.skipped and run.structure is None
    _same_model(model, out)


def test_nothing_to_do_changes_nothing_and_writes_nothing(tmp_path):
    out = tmp_path / "none.onnx"
    config = onnxprune.PruneConfig(sparsity=0.5, min_size=10**9)  # no tensor qualifies
    run = onnxprune.prune_file(MLP, out, config, quantize=onnxprune.QuantizeConfig())
    assert run.saved is None and run.validation is None and run.quantized is None and run.structure is None
    assert list(tmp_path.iterdir()) == []
    assert [p.name for p in run.passes] == ["weights", "dead_channels", "quantize"]
    assert not any(p.changed for p in run.passes)
    weights, dead, int8 = run.passes
    assert weights.counts["tensors_pruned"] == 0 and weights.counts["zeros_after"] == 0
    assert weights.counts["tensors_skipped"] == 6 and all(reason for _, reason in weights.skipped)
    assert dead.skipped == (("dead_channels", NOTHING_DEAD),)
    assert int8.skipped == (("quantize", NOTHING_CHANGED),) and int8.detail is None
    assert run.params_before == run.params_after == param_stats(onnx.load(str(MLP)))

    # in memory: the same passes, nothing changed but prune()'s provenance of what it looked at
    source = onnx.load(str(MLP))
    model, memory = onnxprune.prune_model(source, config, structure=DEAD_CHANNELS_AFTER_WEIGHTS)
    assert [(p.name, p.changed, p.skipped) for p in memory.passes] == [
        (p.name, p.changed, p.skipped) for p in run.passes[:2]
    ]
    assert list(model.graph.initializer) == list(source.graph.initializer)


def test_calibrated_pass_in_memory_is_prune_file(tmp_path):
    calib = onnxprune.calibration_data(MLP, FIXTURES / "mlp_digits.calib.npz", samples=64)
    config = onnxprune.PruneConfig(sparsity=0.5, method="wanda")
    with pytest.raises(onnxprune.OptionError, match="needs calibration data"):
        onnxprune.prune(MLP, config)
    model, run = onnxprune.prune_model(MLP, config, calibration=calib, structure=DEAD_CHANNELS_AFTER_WEIGHTS)
    out = tmp_path / "wanda.onnx"
    filed = onnxprune.prune_file(MLP, out, config, calibration=calib)
    _same_model(model, out)
    passed = _by_name(filed)["calibrated"]
    assert passed.counts == _by_name(run)["calibrated"].counts
    assert passed.counts["magnitude_fallback"] == 0 and passed.counts["tensors_pruned"] == 3
    assert all(layer.method == "wanda" and layer.error is not None for layer in passed.layers)
    stats = param_stats(onnx.load(str(out)))
    assert passed.counts["nonzeros_after"] == stats.nonzeros == filed.params_after.nonzeros
