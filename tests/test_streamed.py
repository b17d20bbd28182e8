"""Streamed pruning of models with external data: read lazily, written tensor by tensor.

The streamed run must write the very bytes the run on the loaded model writes (local,
global magnitude and LAMP, 2:4; output with and without external data), never load the
model whole, keep refusing hostile external-data locations, and its per-tensor check must
catch a corrupted written tensor.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.errors import DataError, UnsafeModelError, UnsupportedModelError, ValidationError
from onnxprune.graph import direct_io, memory, writer
from onnxprune.graph import lazy as lazy_module
from onnxprune.graph.direct_io import DirectAppender
from onnxprune.graph.lazy import TensorSource
from onnxprune.graph.model_io import LazyModel, StagedOutput, load_model_lazily
from onnxprune.graph.tensor_check import check_written
from onnxprune.passes import pipeline as pipeline_module
from onnxprune.passes import unstructured
from onnxprune.passes.unstructured import prune_weights
from onnxprune.sparsity import ZeroSmallest, nm_mask, nm_zeros_after

CONFIGS = {
    "local": onnxprune.PruneConfig(sparsity=0.5),
    "global_lamp": onnxprune.PruneConfig(sparsity=0.5, scope="global", criterion="lamp"),
    "global_magnitude": onnxprune.PruneConfig(sparsity=0.6, scope="global"),
    "nm_2_4": onnxprune.PruneConfig(pattern=(2, 4)),
}


def _model(nan: bool = False) -> onnx.ModelProto:
    """x[1,256] -> MatMul W1[256,512] + b1 -> Relu -> Gemm(W2[384,512]ᵀ, b2) -> MatMul W3[384,128]
    plus a Constant weight: about 1.5 MB of float32 weights, seeded."""
    rng = np.random.default_rng(7)

    def weight(name: str, *shape: int, scale: float = 1.0) -> TensorProto:
        values = (rng.standard_normal(shape) * scale).astype(np.float32)
        if nan and name == "W3":
            values[3, 5] = np.nan
        return numpy_helper.from_array(values, name)

    w4 = numpy_helper.from_array(rng.standard_normal((128, 64)).astype(np.float32), "W4")
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"], name="mm1"),
        helper.make_node("Add", ["h1", "b1"], ["h2"], name="add1"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("Gemm", ["h3", "W2", "b2"], ["h4"], name="gemm", transB=1),
        helper.make_node("MatMul", ["h4", "W3"], ["h5"], name="mm3"),
        helper.make_node("Constant", [], ["W4"], name="const4", value=w4),
        helper.make_node("MatMul", ["h5", "W4"], ["y"], name="mm4"),
    ]
    inits = [
        weight("W1", 256, 512, scale=0.05),
        weight("b1", 512),
        weight("W2", 384, 512, scale=0.2),
        weight("b2", 384),
        weight("W3", 384, 128),
    ]
    graph = helper.make_graph(
        nodes,
        "streamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        inits,
    )
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def _save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


def _files(path: Path) -> dict[str, bytes]:
    found = {path.name: path.read_bytes()}
    data = path.with_name(path.name + ".data")
    if data.exists():
        found[data.name] = data.read_bytes()
    return found


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return _save(_model(), tmp_path / "in")


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model was loaded whole")


def _whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the pipeline load the model whole (today's path), whatever it holds."""
    monkeypatch.setattr(pipeline_module, "external_elsewhere", lambda model: "loaded whole for the comparison")


@pytest.mark.parametrize("block", [None, 1000])
@pytest.mark.parametrize("external_data", [None, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_streamed_output_is_byte_identical_to_the_loaded_run(
    tmp_path: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    external_data: bool | None,
    block: int | None,
):
    """The same bytes whole or a block at a time (1000 elements: many blocks a tensor, N:M's
    rounded to whole rows of groups)."""
    if block is not None:
        monkeypatch.setattr(writer, "BLOCK", block)
    config = CONFIGS[name]
    streamed_out = tmp_path / "streamed" / "out.onnx"
    streamed_out.parent.mkdir()
    with monkeypatch.context() as patch:
        patch.setattr(LazyModel, "materialize", _refuse)
        streamed = onnxprune.prune_file(source, streamed_out, config, external_data=external_data)
    with monkeypatch.context() as patch:
        _whole(patch)
        whole_out = tmp_path / "whole" / "out.onnx"
        whole_out.parent.mkdir()
        whole = onnxprune.prune_file(source, whole_out, config, external_data=external_data)
    assert streamed.result.newly_zeroed > 0
    assert streamed.result.to_dict() == whole.result.to_dict()
    assert streamed.params_before == whole.params_before and streamed.params_after == whole.params_after
    assert _files(streamed_out) == _files(whole_out)
    assert (streamed_out.with_name("out.onnx.data").exists()) is bool(external_data)
    onnx.checker.check_model(str(streamed_out))
    assert streamed.validation is not None and streamed.validation.tensors is None  # small: run in onnxruntime


def _narrow_model(dtype: type, element: int) -> onnx.ModelProto:
    """x -> MatMul W1[256, 512] -> Relu -> MatMul W2[512, 64] in ``dtype``, seeded, with a few
    +0 and -0 weights in W1."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((256, 512)).astype(dtype)
    w1[0, :7], w1[1, :5] = 0.0, -0.0
    w2 = rng.standard_normal((512, 64)).astype(dtype)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "W2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", element, [1, 256])],
        [helper.make_tensor_value_info("y", element, [1, 64])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(("dtype", "element"), [(np.float16, TensorProto.FLOAT16), (np.float64, TensorProto.DOUBLE)])
@pytest.mark.parametrize("name", ["local", "global_lamp", "nm_2_4"])
def test_blocks_of_every_float_width_are_the_loaded_run_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: type, element: int, name: str
):
    """float16 and float64 tensors written in blocks of 1000 elements: the loaded run's bytes, and
    (checked tensor by tensor) every tensor read back as written, -0 weights counted as changed."""
    source = _save(_narrow_model(dtype, element), tmp_path / "in")
    monkeypatch.setattr(writer, "BLOCK", 1000)
    outs = {}
    for way in ("streamed", "whole"):
        with monkeypatch.context() as patch:
            if way == "whole":
                _whole(patch)
            else:
                patch.setattr(memory, "available_memory", lambda: 1000)  # the per-tensor check
            outs[way] = tmp_path / way / "out.onnx"
            outs[way].parent.mkdir()
            run = onnxprune.prune_file(source, outs[way], CONFIGS[name], external_data=True)
            if way == "streamed":
                assert run.validation is not None and "2 of them read back as they were written" in str(
                    run.validation.tensors
                )
    assert _files(outs["streamed"]) == _files(outs["whole"])


def _takes_direct_io(folder: Path) -> bool:
    """Whether a file in ``folder`` takes an O_DIRECT write (some file systems refuse the flag at
    ``open``, others only at the first transfer)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
        try:
            os.pwrite(fd, memoryview(direct_io.aligned_buffer(direct_io.ALIGN)), 0)
        finally:
            os.close(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("name", ["local", "nm_2_4"])
def test_the_data_file_is_the_same_past_the_page_cache_or_through_it(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, name: str
):
    opened: list[DirectAppender] = []
    real_init = DirectAppender.__init__

    def recording(self: DirectAppender, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(DirectAppender, "__init__", recording)
    outs = []
    for direct in (True, False):
        out = tmp_path / f"direct_{direct}" / "out.onnx"
        out.parent.mkdir()
        with monkeypatch.context() as patch:
            if not direct:
                patch.setattr(direct_io, "_DIRECT", 0)  # as where O_DIRECT does not exist
            onnxprune.prune_file(source, out, CONFIGS[name], external_data=True)
        outs.append(out)
    assert len(opened) == 2 and not opened[1].direct
    assert opened[0].direct is _takes_direct_io(tmp_path)  # tmpfs, for one, may refuse it
    assert _files(outs[0]) == _files(outs[1])
    assert outs[0].with_name("out.onnx.data").stat().st_size > 1 << 20


@pytest.mark.parametrize("available", [1 << 50, 1000])
def test_streamed_run_reads_tensors_lazily_and_never_loads_the_model(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, available: int
):
    monkeypatch.setattr(memory, "available_memory", lambda: available)  # 1000: checked tensor by tensor
    monkeypatch.setattr(onnx, "load_external_data_for_model", _refuse)
    monkeypatch.setattr(LazyModel, "materialize", _refuse)
    live: list[weakref.ref[np.ndarray]] = []
    names: list[str] = []
    most = 0
    raw = TensorSource.raw

    def counting(self: TensorSource, tensor: TensorProto) -> np.ndarray:
        nonlocal most
        array = raw(self, tensor)
        if lazy_module.is_external(tensor):
            live[:] = [ref for ref in live if ref() is not None]
            live.append(weakref.ref(array))
            names.append(tensor.name)
            most = max(most, len(live))
        return array

    monkeypatch.setattr(TensorSource, "raw", counting)
    run = onnxprune.prune_file(source, tmp_path / "out.onnx", CONFIGS["global_lamp"], external_data=True)
    assert run.result.newly_zeroed > 0
    assert {"W1", "W2", "W3", "b1", "b2"} <= set(names)  # every external tensor came through the source
    # two tensors at a time: the writer computes the next one while it writes one; with the
    # per-tensor check too: the writer reads each tensor back as it writes it, so the check reads
    # neither file's tensors again
    assert most == 2
    if available == 1000:
        assert run.validation is not None and run.validation.tensors is not None
        assert "5 of them read back as they were written" in run.validation.tensors


def test_the_loader_returns_the_skeleton(source: Path):
    lazy = load_model_lazily(source)
    assert lazy.external and lazy.external_bytes() > 1_000_000
    assert all(t.data_location == TensorProto.EXTERNAL and not t.raw_data for t in lazy.model.graph.initializer)
    values = lazy.tensors(lazy.model.graph.initializer[0])
    assert values.shape == (256, 512) and not values.flags.writeable
    expected = numpy_helper.to_array(onnx.load(str(source)).graph.initializer[0])
    assert np.array_equal(values, expected)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "link.bin", "hard.bin"])
def test_hostile_locations_are_still_refused(tmp_path: Path, location: str):
    folder = tmp_path / "in"
    path = _save(_model(), folder)
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    if location == "link.bin":
        (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
    if location == "hard.bin":  # a hard link may be any file of the machine
        os.link(tmp_path / "outside.bin", folder / "hard.bin")
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(path))
    with pytest.raises(UnsafeModelError):
        onnxprune.prune_file(path, tmp_path / "out.onnx", CONFIGS["local"])
    assert not (tmp_path / "out.onnx").exists()


def test_the_source_reads_only_checked_files_and_refuses_a_replaced_one(tmp_path: Path, source: Path):
    lazy = load_model_lazily(source)
    tensor = lazy.model.graph.initializer[0]
    other = TensorProto()
    other.CopyFrom(tensor)
    for entry in other.external_data:
        if entry.key == "location":
            entry.value = "model.onnx"  # in the folder, but not a checked data file
    with pytest.raises(UnsafeModelError):
        lazy.tensors(other)
    with pytest.raises(UnsafeModelError):
        lazy.tensors.prefetch(other)
    data = source.parent / "weights.bin"
    copy = source.parent / "weights.new"
    copy.write_bytes(data.read_bytes())
    os.replace(copy, data)  # a new file (inode) under the same name
    with pytest.raises(UnsafeModelError):
        lazy.tensors(tensor)
    with pytest.raises(UnsafeModelError):
        lazy.tensors.prefetch(tensor)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this system")
def test_a_tensor_written_a_block_at_a_time_is_read_ahead(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
):
    asked: list[tuple[int, int, int]] = []
    real = os.posix_fadvise
    monkeypatch.setattr(lazy_module.os, "posix_fadvise", lambda fd, *args: asked.append(args) or real(fd, *args))
    onnxprune.prune_file(source, tmp_path / "out.onnx", CONFIGS["local"], external_data=True)
    written = onnx.load(str(source), load_external_data=False)
    ranges = {
        (int(e["offset"]), int(e["length"]))
        for t in written.graph.initializer
        if t.name in {"W1", "W2", "W3"}
        for e in [{x.key: x.value for x in t.external_data}]
    }
    assert {(a, b) for a, b, _ in asked} == ranges and {c for _, _, c in asked} == {os.POSIX_FADV_WILLNEED}


def _staged_write(source: Path, out: Path, staged: StagedOutput) -> None:
    lazy = load_model_lazily(source)
    _, replacements = prune_weights(lazy.model, CONFIGS["local"], defer=True, source=lazy.tensors)
    staged.write(lazy.model, external_data=True, replacements=replacements, source=lazy.tensors, record=True)


def _corrupt(data: Path, offset: int, value: bytes) -> None:
    with open(data, "r+b") as handle:
        handle.seek(offset)
        handle.write(value)


@pytest.mark.parametrize("corruption", ["kept value changed", "pruned value restored", "extra zero"])
def test_the_per_tensor_check_catches_a_corrupted_tensor(tmp_path: Path, source: Path, corruption: str):
    with StagedOutput(tmp_path / "out.onnx", input_path=source) as staged:
        _staged_write(source, tmp_path / "out.onnx", staged)
        assert staged.records is not None and staged.records["W2"].changed > 0
        check = check_written(staged.model_path, source, staged.records)
        assert check.replaced == len(staged.records) and check.changed == sum(
            r.changed for r in staged.records.values()
        )
        written = onnx.load(str(staged.model_path), load_external_data=False)
        w2 = next(t for t in written.graph.initializer if t.name == "W2")
        offset = int(next(e.value for e in w2.external_data if e.key == "offset"))
        data = staged.model_path.with_name("out.onnx.data")
        values = np.frombuffer(data.read_bytes()[offset : offset + 384 * 512 * 4], dtype=np.uint32)
        pruned = int(np.flatnonzero(values == 0)[0])
        kept = int(np.flatnonzero(values != 0)[0])
        if corruption == "kept value changed":
            _corrupt(data, offset + 4 * kept, np.uint32(values[kept] ^ 1).tobytes())
        elif corruption == "pruned value restored":
            _corrupt(data, offset + 4 * pruned, np.float32(0.5).tobytes())
        else:
            _corrupt(data, offset + 4 * kept, bytes(4))
        with pytest.raises(ValidationError, match="'W2'"):
            check_written(staged.model_path, source, staged.records)


@pytest.mark.parametrize("config", ["local", "nm_2_4"])
def test_a_tensor_that_does_not_read_back_is_compared_with_the_input(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, config: str
):
    """W2's bytes change on the file as they are written (a faulty device): the read-back finds
    it, whether W2 came whole (2:4) or a block at a time (local), and the check of the file
    compares W2 with the input and fails."""
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    first = onnxprune.prune_file(source, tmp_path / "first.onnx", CONFIGS[config], external_data=True)
    assert first.validation is not None and "5 of them read back as they were written" in str(first.validation.tensors)
    written = onnx.load(str(tmp_path / "first.onnx"), load_external_data=False)
    w2 = next(t for t in written.graph.initializer if t.name == "W2")
    at = int(next(e.value for e in w2.external_data if e.key == "offset")) + 4 * 7
    real, hits = direct_io.os.pwrite, []

    def pwrite(fd: int, view: memoryview, offset: int) -> int:
        count = real(fd, view, offset)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith("out.onnx.data") and offset <= at < offset + count:
            with open(path, "r+b") as other:  # another descriptor: the writer's takes aligned transfers only
                other.seek(at)
                other.write(np.float32(0.5).tobytes())
            hits.append(offset)
        return count

    monkeypatch.setattr(direct_io.os, "pwrite", pwrite)
    out = tmp_path / "out.onnx"
    with pytest.raises(ValidationError, match="'W2'"):
        onnxprune.prune_file(source, out, CONFIGS[config], external_data=True)
    assert hits
    assert not out.exists() and not out.with_name("out.onnx.data").exists()


def test_a_failure_computing_a_tensor_while_another_is_written_stops_the_run(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
):
    real = unstructured._replacement
    calls: list[str] = []

    def failing(proto: TensorProto, **kwargs: object) -> object:
        calls.append(proto.name)
        if len(calls) == 2:  # computed on the writer's second thread while the first tensor is written
            raise DataError("cannot compute this tensor")
        return real(proto, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(unstructured, "_replacement", failing)
    out = tmp_path / "out.onnx"
    with pytest.raises(DataError, match="cannot compute this tensor"):
        onnxprune.prune_file(source, out, CONFIGS["local"], external_data=True)
    assert len(calls) == 2  # nothing after the failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no staging left


def test_a_failure_filling_a_block_stops_the_run(tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch):
    real = ZeroSmallest.fill
    blocks: list[int] = []

    def failing(self: ZeroSmallest, start: int, out: np.ndarray) -> None:
        blocks.append(start)
        if len(blocks) == 3:  # on the block thread, while a block before it is written
            raise DataError("cannot fill this block")
        real(self, start, out)

    monkeypatch.setattr(writer, "BLOCK", 1 << 16)  # W1 (131,072 elements) in two blocks
    monkeypatch.setattr(ZeroSmallest, "fill", failing)
    out = tmp_path / "out.onnx"
    with pytest.raises(DataError, match="cannot fill this block"):
        onnxprune.prune_file(source, out, CONFIGS["local"], external_data=True)
    assert len(blocks) == 3  # nothing after the failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_model_too_large_for_a_run_is_checked_tensor_by_tensor(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(memory, "available_memory", lambda: 1000)
    run = onnxprune.prune_file(source, tmp_path / "out.onnx", CONFIGS["nm_2_4"], external_data=True)
    assert run.validation is not None and run.validation.checker == "passed"
    assert run.validation.feeds.startswith("not run") and not run.validation.outputs_finite
    assert run.validation.tensors is not None and "per-tensor check" in run.validation.tensors


def test_stream_runs_onnxruntime_only_within_its_own_memory(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 50)
    largest = 500_000_000
    assert memory.stream_can_run(memory.STREAM_RUN_TENSORS * largest, largest)
    assert not memory.stream_can_run(memory.STREAM_RUN_TENSORS * largest + 1, largest)  # 12 GB of 0.5 GB
    monkeypatch.setattr(memory, "available_memory", lambda: 2 * largest)
    assert memory.stream_can_run(largest, largest)
    assert not memory.stream_can_run(largest + 1, largest)  # over half the memory available


def test_many_small_tensors_are_checked_tensor_by_tensor_however_much_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 50)
    rng = np.random.default_rng(3)
    nodes, inits, name = [], [], "x"
    for i in range(6):  # six equal weights: 1.5 times STREAM_RUN_TENSORS' allowance
        inits.append(numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), f"W{i}"))
        nodes.append(helper.make_node("MatMul", [name, f"W{i}"], [f"h{i}"], name=f"mm{i}"))
        name = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    source = _save(model, tmp_path / "in")
    run = onnxprune.prune_file(source, tmp_path / "out.onnx", CONFIGS["local"])
    assert run.validation is not None and run.validation.feeds.startswith("not run")
    assert run.validation.tensors is not None and "per-tensor check" in run.validation.tensors
    assert run.result.newly_zeroed == 6 * 64 * 32


def test_non_finite_external_weights_are_refused_unless_allowed(tmp_path: Path):
    path = _save(_model(nan=True), tmp_path / "in")
    with pytest.raises(UnsupportedModelError, match="W3"):
        onnxprune.prune_file(path, tmp_path / "out.onnx", CONFIGS["local"])
    assert not (tmp_path / "out.onnx").exists()
    run = onnxprune.prune_file(path, tmp_path / "out.onnx", CONFIGS["local"], allow_nonfinite=True)
    assert "W3" in {layer.name for layer in run.result.skipped}
    assert os.path.exists(tmp_path / "out.onnx")


def test_a_non_finite_external_bias_is_refused_too(tmp_path: Path):
    model = _model()
    bias = next(t for t in model.graph.initializer if t.name == "b1")
    values = numpy_helper.to_array(bias).copy()
    values[3] = np.nan
    bias.CopyFrom(numpy_helper.from_array(values, "b1"))
    path = _save(model, tmp_path / "in")
    with pytest.raises(UnsupportedModelError, match="'b1' holds 1 NaN"):
        onnxprune.prune_file(path, tmp_path / "out.onnx", CONFIGS["local"])
    assert not (tmp_path / "out.onnx").exists()


def test_streamed_finite_check_reads_only_what_discovery_found_non_finite(tmp_path: Path, monkeypatch):
    """Discovery counted NaN and ±inf in every stored tensor as it read it: the run's finite
    check reads again only a tensor found non-finite (to name its counts), none of a finite model."""
    from onnxprune.graph import tensors
    from onnxprune.passes import pipeline

    read: list[int] = []
    inside = [False]  # counts by the run's finite check only (the loader's of the model file are its own)
    count, check = tensors.nonfinite_counts, pipeline.refuse_nonfinite

    def checking(*args, **kwargs):
        inside[0] = True
        try:
            return check(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(
        tensors, "nonfinite_counts", lambda values: (inside[0] and read.append(values.size)) or count(values)
    )
    monkeypatch.setattr(pipeline, "refuse_nonfinite", checking)
    onnxprune.prune_file(_save(_model(), tmp_path / "in"), tmp_path / "out.onnx", CONFIGS["local"])
    assert read == []
    model = _model()
    bias = next(t for t in model.graph.initializer if t.name == "b1")
    values = numpy_helper.to_array(bias).copy()
    values[0] = np.nan
    bias.CopyFrom(numpy_helper.from_array(values, "b1"))
    with pytest.raises(UnsupportedModelError, match="'b1' holds 1 NaN"):
        onnxprune.prune_file(_save(model, tmp_path / "in2"), tmp_path / "out2.onnx", CONFIGS["local"])
    assert read == [values.size]


@pytest.mark.parametrize("tensor", ["W3", "b1"])
def test_non_finite_values_are_refused_when_the_model_is_loaded_whole_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tensor: str
):
    _whole(monkeypatch)  # external data, loaded whole: discovery's counts refuse it, not the loader
    model = _model()
    stored = next(t for t in model.graph.initializer if t.name == tensor)
    values = numpy_helper.to_array(stored).copy()
    values.reshape(-1)[3] = np.nan
    stored.CopyFrom(numpy_helper.from_array(values, tensor))
    path = tmp_path / "in" / "model.onnx"
    path.parent.mkdir()
    # the weights external, the biases (2 KB at most) in the model file
    onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=4096)
    with pytest.raises(UnsupportedModelError, match=f"'{tensor}' holds 1 NaN"):
        onnxprune.prune_file(path, tmp_path / "out.onnx", CONFIGS["local"])
    assert not (tmp_path / "out.onnx").exists()


def _nm_by_argsort(keys: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(keys, axis, -1)
    groups = moved.reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order[:, : m - n], True, axis=1)
    return np.moveaxis(mask.reshape(moved.shape), -1, axis)


@pytest.mark.parametrize(("shape", "axis"), [((8, 12), 0), ((8, 12), 1), ((4, 8, 3, 3), 1), ((6, 4, 5), -2)])
@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 4), (1, 2)])
def test_nm_mask_is_the_stable_sort_rule_and_zero_counts_agree(shape: tuple[int, ...], axis: int, n: int, m: int):
    if shape[axis] % m:
        pytest.skip("not a multiple of M")
    keys = np.random.default_rng(5).integers(0, 4, size=shape).astype(np.uint32)  # many ties and zeros
    mask = nm_mask(keys, n, m, axis)
    assert np.array_equal(mask, _nm_by_argsort(keys, n, m, axis % keys.ndim))
    assert nm_zeros_after(keys, n, m, axis) == int(np.count_nonzero((keys * ~mask) == 0))


@pytest.mark.parametrize("kind", ["bytes", "blocks"])
def test_a_replacement_of_another_length_is_refused(tmp_path: Path, source: Path, kind: str):
    """New bytes, or a fill, one element short of W2 (an external tensor) stop the write with
    the tensor's name: nothing of another length reaches the data file."""
    lazy = load_model_lazily(source)
    _, replacements = prune_weights(lazy.model, CONFIGS["local"], defer=True, source=lazy.tensors)
    real = replacements["W2"]

    def short(proto: TensorProto) -> object:
        values = lazy.tensors(proto).reshape(-1)[:-1].view(np.uint32)
        return ZeroSmallest(values, 10) if kind == "blocks" else values.tobytes()

    assert isinstance(real(next(t for t in lazy.model.graph.initializer if t.name == "W2")), ZeroSmallest)
    replacements["W2"] = short
    with (
        pytest.raises(ValueError, match=r"tensor 'W2' has 786428 bytes, expected 786432"),
        StagedOutput(tmp_path / "out.onnx", input_path=source) as staged,
    ):
        staged.write(lazy.model, external_data=True, replacements=replacements, source=lazy.tensors, record=True)
    assert not (tmp_path / "out.onnx").exists()
