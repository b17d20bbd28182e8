"""The streaming writer's layout and the skeleton the checker reads instead of a large file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.model_io import StagedOutput
from onnxprune.graph.skeleton import skeleton
from onnxprune.graph.writer import LAYOUT_MIN_BYTES, write_model
from onnxprune.validate import validate_model


def _model() -> onnx.ModelProto:
    """x @ W1 (initializer, 256 KiB) -> + c (Constant node, 128 KiB) -> @ W2 (small)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w1")
    c = numpy_helper.from_array(rng.standard_normal((128, 256)).astype(np.float32), "c_value")
    w2 = numpy_helper.from_array(rng.standard_normal((256, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Constant", [], ["c"], name="const", value=c),
        helper.make_node("Add", ["h", "c"], ["a"], name="add"),
        helper.make_node("MatMul", ["a", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, 4])],
        [w1, w2],
    )
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def test_layout_points_at_each_large_payload_and_output_is_unchanged():
    model = _model()
    handle = io.BytesIO()
    layout = write_model(model, handle, {}, layout=True)
    data = handle.getvalue()
    assert data == model.SerializeToString()  # recording the layout changes no byte
    assert set(layout) == {"w1", "c"}  # w2 is under LAYOUT_MIN_BYTES
    assert len(model.graph.initializer[1].raw_data) < LAYOUT_MIN_BYTES
    w1 = model.graph.initializer[0].raw_data
    c = model.graph.node[1].attribute[0].t.raw_data
    for name, raw in (("w1", w1), ("c", c)):
        offset, length = layout[name]
        assert length == len(raw) and data[offset : offset + length] == raw


def test_layout_records_replaced_tensors_at_their_new_bytes():
    model = _model()
    zeros = bytes(len(model.graph.initializer[0].raw_data))
    handle = io.BytesIO()
    layout = write_model(model, handle, {"w1": lambda t: zeros}, layout=True)
    offset, length = layout["w1"]
    assert handle.getvalue()[offset : offset + length] == zeros


def test_skeleton_is_the_same_model_with_external_references(tmp_path: Path):
    model = _model()
    path = tmp_path / "m.onnx"
    with open(path, "wb") as handle:
        layout = write_model(model, handle, {}, layout=True)
    skel = skeleton(model, layout, path.name)
    skel_path = tmp_path / "m.skeleton"
    skel_path.write_bytes(skel.SerializeToString())
    assert skel_path.stat().st_size < 8192 < path.stat().st_size // 40  # w2 (4 KiB) stays inline
    onnx.checker.check_model(str(skel_path))
    # read back through the external references: the very model that was written
    restored = onnx.load(str(skel_path))
    restored.graph.initializer[0].ClearField("data_location")  # onnx.load leaves it set to DEFAULT
    restored.graph.node[1].attribute[0].t.ClearField("data_location")
    assert restored.SerializeToString() == model.SerializeToString()


def test_skeleton_keeps_what_the_checker_must_reject(tmp_path: Path):
    model = _model()
    model.graph.node[2].op_type = "NoSuchOp"
    path = tmp_path / "m.onnx"
    with open(path, "wb") as handle:
        layout = write_model(model, handle, {}, layout=True)
    skel_path = tmp_path / "m.skeleton"
    skel_path.write_bytes(skeleton(model, layout, path.name).SerializeToString())
    with pytest.raises(onnx.checker.ValidationError, match="NoSuchOp"):
        onnx.checker.check_model(str(skel_path))


def test_staged_output_checks_the_skeleton_and_validation_passes(tmp_path: Path):
    out = tmp_path / "out.onnx"
    with StagedOutput(out) as staged:
        staged.write(_model())
        assert staged.checker_path != staged.model_path and staged.checker_path.is_file()
        report = validate_model(staged.model_path, checker_path=staged.checker_path)
        assert report.checker == "passed"
        saved = staged.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no skeleton left behind
    assert saved.path == out


def test_a_failing_skeleton_falls_back_to_the_whole_file(tmp_path: Path):
    """If only the skeleton fails (it should not), the whole file decides."""
    model = _model()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    bad = tmp_path / "bad.skeleton"
    bad.write_bytes(b"not a model")
    report = validate_model(path, checker_path=bad)
    assert report.checker == "passed"


@pytest.mark.parametrize("data_type", [TensorProto.FLOAT, TensorProto.UNDEFINED])
@pytest.mark.parametrize("length", [4, 124, 128, 16380, 16384, 2_097_152])
def test_streamed_tensor_is_byte_identical_at_varint_boundaries(length: int, data_type: int):
    """The raw_data length comes from dims and type, or (a type of unknown size) from the
    serialized sizes; check both where varints widen."""
    values = np.arange(length // 4, dtype=np.float32)
    tensor = numpy_helper.from_array(values, "t")
    tensor.data_type = data_type
    tensor.doc_string = "after raw_data"  # a field numbered above raw_data
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [length // 4])])
    graph.initializer.append(tensor)
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    handle = io.BytesIO()
    write_model(model, handle, {"t": lambda t: t.raw_data}, layout=True)
    assert handle.getvalue() == model.SerializeToString()


@pytest.mark.parametrize("replace", [False, True])
def test_raw_data_that_disagrees_with_its_dims_is_refused_not_written(replace: bool):
    """The writer sizes a streamed raw_data (replaced, or recorded in the layout) from dims and
    type: a tensor or a replacement whose bytes disagree is an error naming it, never a
    misframed file."""
    model = _model()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]  # one value short
    replacements = {"w1": lambda t: t.raw_data} if replace else {}
    with pytest.raises(ValueError, match=r"tensor 'w1' (holds|is given) 262140 bytes of data where its dims"):
        write_model(model, io.BytesIO(), replacements, layout=True)


def test_onnxruntime_runs_the_skeleton_with_the_written_weights(tmp_path: Path):
    import onnxruntime as ort

    out = tmp_path / "out.onnx"
    x = np.random.default_rng(2).standard_normal((128, 256)).astype(np.float32)
    with StagedOutput(out) as staged:
        staged.write(_model())
        whole = ort.InferenceSession(str(staged.model_path)).run(None, {"x": x})[0]
        skel = ort.InferenceSession(str(staged.checker_path)).run(None, {"x": x})[0]
    assert np.array_equal(whole, skel)


def test_compare_elements_split_over_threads_gives_the_same_record(monkeypatch) -> None:
    """The writer's record of a replaced tensor (changed count, digest of which, not-zero count)
    is the same computed in one run of chunks or in runs side by side on threads."""
    from onnxprune.graph import writer

    rng = np.random.default_rng(3)
    old = rng.standard_normal(1000).astype(np.float32)
    new = old.copy()
    new[rng.choice(1000, 300, replace=False)] = 0.0
    new[5] = 7.0  # a changed element that is not +0
    new[6] = -0.0
    tensor = numpy_helper.from_array(old, "W")
    monkeypatch.setattr(writer, "COMPARE_CHUNK", 64)
    whole = writer.compare_elements(tensor, old.tobytes(), new.tobytes())
    monkeypatch.setattr(writer, "SPLIT_FROM", 1)
    monkeypatch.setattr(writer, "WORKERS", 3)
    assert writer.compare_elements(tensor, old.tobytes(), new.tobytes()) == whole
    assert whole[0].changed == int(np.count_nonzero(old.view(np.uint32) != new.view(np.uint32)))
    assert whole[1] == 2  # 7.0 and -0.0 are not +0
