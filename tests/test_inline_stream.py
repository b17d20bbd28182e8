"""Models whose weights are inside the ``.onnx`` file, streamed from a skeleton
(:mod:`onnxprune.graph.wire`): the skeleton's references hold each tensor's very bytes, the
pruned output is the run on the loaded model to the byte, the model is never loaded whole, and
anything the walk does not expect falls back to parsing the file whole."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.errors import UnsupportedModelError
from onnxprune.graph import memory, model_io, wire
from onnxprune.graph.model_io import LazyModel, load_model_lazily
from onnxprune.passes import pipeline as pipeline_module

CONFIGS = {
    "local": onnxprune.PruneConfig(sparsity=0.5),
    "global_lamp": onnxprune.PruneConfig(sparsity=0.5, scope="global", criterion="lamp"),
    "nm_2_4": onnxprune.PruneConfig(pattern=(2, 4)),
}


def _model(nan_in: str | None = None) -> onnx.ModelProto:
    """x[1,256] -> MatMul W1[256,512] + b1 -> Relu -> Gemm(W2[384,512]ᵀ, b2) -> MatMul by a
    Constant: two weights above the skeleton's 64 KiB, small ones below it, seeded."""
    rng = np.random.default_rng(11)

    def tensor(name: str, *shape: int) -> TensorProto:
        values = rng.standard_normal(shape).astype(np.float32)
        if name == nan_in:
            values.reshape(-1)[7] = np.nan
        return numpy_helper.from_array(values, name)

    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h2"]),
        helper.make_node("Relu", ["h2"], ["h3"]),
        helper.make_node("Gemm", ["h3", "W2", "b2"], ["h4"], transB=1),
        helper.make_node("Constant", [], ["W3"], value=tensor("W3", 384, 32)),
        helper.make_node("MatMul", ["h4", "W3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "inline",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [tensor("W1", 256, 512), tensor("b1", 512), tensor("W2", 384, 512), tensor("b2", 384)],
    )
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def small_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixtures' files are under the skeleton's 16 MiB: let them through."""
    monkeypatch.setattr(model_io, "INLINE_STREAM_BYTES", 1)


def test_the_skeleton_refers_to_each_large_tensors_own_bytes(tmp_path: Path) -> None:
    path = _save(_model(), tmp_path)
    data = path.read_bytes()
    skeleton, moved = wire.inline_skeleton(memoryview(data), path.name, threshold=64 << 10)
    parsed = onnx.ModelProto()
    parsed.ParseFromString(skeleton)
    whole = onnx.load(str(path))
    assert moved == [0, 2]  # W1, W2: b1, b2 and the Constant stay in the skeleton
    for index, (tensor, loaded) in enumerate(zip(parsed.graph.initializer, whole.graph.initializer, strict=True)):
        if index in moved:
            entries = {e.key: e.value for e in tensor.external_data}
            assert tensor.data_location == TensorProto.EXTERNAL and entries["location"] == "model.onnx"
            offset, length = int(entries["offset"]), int(entries["length"])
            assert data[offset : offset + length] == loaded.raw_data
            assert not tensor.HasField("raw_data") and list(tensor.dims) == list(loaded.dims)
        else:
            assert tensor == loaded
    assert parsed.graph.node == whole.graph.node  # the Constant's 48 KiB stay in the skeleton too
    assert len(skeleton) < 60_000 < 1_000_000 < len(data)


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "group", "two graphs", "already external", "raw_data twice", "nothing to move"],
)
def test_the_walk_gives_up_on_what_it_does_not_expect(tmp_path: Path, damage: str) -> None:
    path = _save(_model(), tmp_path)
    data = path.read_bytes()
    threshold = 64 << 10
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    elif damage == "group":
        data = data + bytes([0x0B])  # field 1, wire type 3 (start group)
    elif damage == "two graphs":
        model = onnx.ModelProto()
        model.graph.name = "second"
        data = data + model.SerializeToString()
    elif damage == "already external":
        model = _model()
        onnx.external_data_helper.convert_model_to_external_data(model, location="w.bin", size_threshold=1 << 20)
        model.graph.initializer[0].data_location = TensorProto.EXTERNAL  # says where it is, still inline
        data = model.SerializeToString()
    elif damage == "raw_data twice":  # protobuf keeps the last: the walk must not pick one
        model = _model()
        tensor = model.graph.initializer.pop(0)
        twice = tensor.SerializeToString() + onnx.TensorProto(raw_data=tensor.raw_data).SerializeToString()
        graph = model.graph.SerializeToString() + wire.length_header(5, len(twice)) + twice
        model.ClearField("graph")
        data = model.SerializeToString() + wire.length_header(7, len(graph)) + graph
    else:
        threshold = 1 << 30
    assert wire.inline_skeleton(memoryview(data), "model.onnx", threshold=threshold) is None


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_model_with_its_weights_inside_is_streamed_to_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_files: None, name: str
) -> None:
    source = _save(_model(), tmp_path / "in")
    lazy = load_model_lazily(source, inline=True)
    assert lazy.inline == {"W1", "W2"} and lazy.files == (source,) and lazy.external
    streamed_out = tmp_path / "streamed" / "out.onnx"
    streamed_out.parent.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(LazyModel, "materialize", lambda *a, **k: pytest.fail("the model was loaded whole"))
        streamed = onnxprune.prune_file(source, streamed_out, CONFIGS[name])
    whole_out = tmp_path / "whole" / "out.onnx"
    whole_out.parent.mkdir()
    monkeypatch.setattr(model_io, "INLINE_STREAM_BYTES", 1 << 60)
    whole = onnxprune.prune_file(source, whole_out, CONFIGS[name])
    assert streamed.result.newly_zeroed > 0 and streamed.result.to_dict() == whole.result.to_dict()
    assert streamed_out.read_bytes() == whole_out.read_bytes()
    assert not streamed_out.with_name("out.onnx.data").exists()


def test_the_skeleton_loads_into_the_model_the_file_holds(tmp_path: Path, small_files: None) -> None:
    source = _save(_model(), tmp_path)
    lazy = load_model_lazily(source, inline=True)
    assert lazy.materialize().SerializeToString() == onnx.load(str(source)).SerializeToString()


def test_a_hard_linked_model_file_is_parsed_whole(tmp_path: Path, small_files: None) -> None:
    source = _save(_model(), tmp_path)
    os.link(source, tmp_path / "twin.onnx")  # external data may not be hard-linked: not as a skeleton
    lazy = load_model_lazily(source, inline=True)
    assert not lazy.inline and not lazy.external
    assert lazy.model.graph.initializer[0].HasField("raw_data")


def test_a_non_finite_weight_inside_the_file_is_still_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_files: None
) -> None:
    source = _save(_model(nan_in="W1"), tmp_path / "in")
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsupportedModelError, match="weight 'W1' holds 1 NaN") as streamed:
        onnxprune.prune_file(source, tmp_path / "out" / "out.onnx", CONFIGS["local"])
    assert not any((tmp_path / "out").iterdir())
    monkeypatch.setattr(model_io, "INLINE_STREAM_BYTES", 1 << 60)  # parsed whole: the same refusal
    with pytest.raises(UnsupportedModelError) as whole:
        onnxprune.prune_file(source, tmp_path / "out" / "out.onnx", CONFIGS["local"])
    assert str(whole.value) == str(streamed.value)


@pytest.mark.parametrize("stored", ["external", "inline"])
def test_dead_channels_of_negative_zeros_are_removed_from_a_streamed_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_files: None, stored: str
) -> None:
    """A masked PyTorch export keeps ``w · 0``'s sign: its dead rows hold -0.0 as well as +0. The
    streamed run's watch must see them as the loaded run's channel pass does."""
    masked = onnx.load(str(Path(__file__).resolve().parent.parent / "fixtures" / "masked" / "mlp_masked.onnx"))
    weight = numpy_helper.to_array(masked.graph.initializer[1])
    assert np.count_nonzero(np.signbit(weight) & (weight == 0)) > 0  # the fixture has negative zeros
    source = tmp_path / "in" / "model.onnx"
    source.parent.mkdir()
    if stored == "external":
        onnx.save_model(masked, str(source), save_as_external_data=True, location="w.bin", size_threshold=0)
    else:
        onnx.save_model(masked, str(source))
    config = onnxprune.PruneConfig(sparsity=0.3)
    (tmp_path / "out").mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(LazyModel, "materialize", lambda *a, **k: pytest.fail("the model was loaded whole"))
        streamed = onnxprune.prune_file(source, tmp_path / "out" / "streamed.onnx", config)
    monkeypatch.setattr(pipeline_module, "external_elsewhere", lambda model: "loaded whole for the comparison")
    monkeypatch.setattr(model_io, "INLINE_STREAM_BYTES", 1 << 60)
    whole = onnxprune.prune_file(source, tmp_path / "out" / "whole.onnx", config)
    assert streamed.params_after == whole.params_after
    assert whole.params_after.parameters < whole.params_before.parameters


def test_a_model_with_its_weights_inside_is_still_run_in_onnxruntime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_files: None
) -> None:
    """Loaded whole, such a model was validated by an onnxruntime run; streamed, it still is where
    memory allows, even past what a stream of external data runs (then checked tensor by tensor)."""
    source = _save(_model(), tmp_path / "in")
    monkeypatch.setattr(model_io, "streamed_run_fits", lambda model: False)
    (tmp_path / "out").mkdir()
    done = onnxprune.prune_file(source, tmp_path / "out" / "out.onnx", CONFIGS["local"])
    assert done.validation is not None and done.validation.tensors is None and done.validation.outputs_finite
    monkeypatch.setattr(memory, "available_memory", lambda: 1)  # no room for a run: as external data
    done = onnxprune.prune_file(source, tmp_path / "out" / "tight.onnx", CONFIGS["local"])
    assert done.validation is not None and done.validation.tensors is not None  # checked tensor by tensor
