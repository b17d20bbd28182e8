"""Input that is not what it claims to be (issue 13): a one-line error, never a crash.

Models that protobuf and ``onnx.load`` accept but nothing can use (external data pointing at a
folder or at the wrong bytes, dims that disagree with the stored values, names defined twice),
weights holding NaN or ±inf, absurd option values (a plan nested 100,000 deep, an input shape
of 10^12 elements). Every case checks the contract of ``tests/test_cli_errors.py``: exactly one
line on stderr, the exit code of its error class (:mod:`onnxprune.errors`), no traceback, and the
working folder unchanged (every file's sha256; no output written). The library raises the same
typed errors, naming API fields rather than flags.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_contract import cli, fails_cleanly, snapshot
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.config import load_plan
from onnxprune.errors import DataError, ModelLoadError, OptionError, UnsupportedModelError
from onnxprune.graph.discovery import discover
from onnxprune.graph.model_io import load_model
from onnxprune.graph.sanity import check_model
from onnxprune.graph.tensors import nonfinite_counts
from onnxprune.runtime import MAX_INPUT_ELEMENTS, parse_input_shapes, resolve_input_shapes

LOAD, OPTION, UNSUPPORTED = ModelLoadError.exit_code, OptionError.exit_code, UnsupportedModelError.exit_code
DATA = DataError.exit_code
PRUNE = ("prune", "m.onnx", "out.onnx", "--sparsity", "0.5")


# --------------------------------------------------------------------------- models


def mlp(*, bias: bool = True, hidden: int = 32) -> onnx.ModelProto:
    """x[N, 64] @ W1[64, hidden] (+ b1) -> Relu -> @ W2[hidden, 10] (+ b2): MatMul (+ Add) layers,
    both weights prunable (>= 256 elements), a dynamic batch."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, hidden)).astype(np.float32) / 8, "W1"),
        numpy_helper.from_array(rng.standard_normal((hidden, 10)).astype(np.float32) / 4, "W2"),
    ]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name="fc1")]
    last = "h1"
    if bias:
        inits.append(numpy_helper.from_array(np.linspace(-0.1, 0.1, hidden, dtype=np.float32), "b1"))
        nodes.append(helper.make_node("Add", ["h1", "b1"], ["a1"], name="fc1_bias"))
        last = "a1"
    nodes += [
        helper.make_node("Relu", [last], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "W2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def initializer(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def with_values(model: onnx.ModelProto, name: str, edit: Callable[[np.ndarray], object]) -> onnx.ModelProto:
    """``model`` with initializer ``name`` replaced by ``edit(its values)``."""
    tensor = initializer(model, name)
    values = numpy_helper.to_array(tensor).copy()
    edit(values)
    tensor.CopyFrom(numpy_helper.from_array(values, name))
    return model


def nan_model() -> onnx.ModelProto:
    def poison(w: np.ndarray) -> None:
        w[0, 0], w[1, 1], w[2, 2] = np.nan, np.inf, -np.inf

    return with_values(mlp(), "W1", poison)


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.data", size_threshold=0
    )
    return path.parent / "w.data"


def edit_external(path: Path, edit: Callable[[dict[str, str]], dict[str, str]]) -> None:
    """Rewrite the external-data entries of every initializer of the model at ``path``:
    ``edit(dict of key -> value)`` returns the new entries."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        entries = edit({e.key: e.value for e in tensor.external_data})
        del tensor.external_data[:]
        for key, value in entries.items():
            tensor.external_data.add(key=key, value=value)
    onnx.save_model(model, str(path))


# --------------------------------------------------------------------------- the contract


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder (the cwd), holding ``m.onnx`` (:func:`mlp`) and ``calib.npz``."""
    monkeypatch.chdir(tmp_path)
    onnx.save_model(mlp(), str(tmp_path / "m.onnx"))
    samples = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=samples)
    return tmp_path


# --------------------------------------------------------------------------- external data


@pytest.fixture
def ext(work: Path) -> Path:
    """``m.onnx`` saved again with every tensor in ``w.data``."""
    save_external(mlp(), work / "m.onnx")
    return work / "m.onnx"


def test_external_data_happy_path_still_loads(work: Path, ext: Path) -> None:
    result = cli(*PRUNE, "-q")
    assert result.exit_code == 0, result.stderr
    onnx.checker.check_model(str(work / "out.onnx"))


@pytest.mark.parametrize("location", [".", "./", "sub", "sub/."])
def test_external_data_location_is_a_folder(work: Path, ext: Path, location: str) -> None:
    (work / "sub").mkdir()
    edit_external(ext, lambda info: {**info, "location": location})
    message = fails_cleanly(work, LOAD, *PRUNE, fragments=("external data of tensor", "not a data file", "malformed"))
    assert location.rstrip("/.") in message or "model's folder" in message
    with pytest.raises(ModelLoadError, match="not a data file"):
        load_model(ext)


def test_external_data_without_length_on_a_short_file(work: Path, ext: Path) -> None:
    data = work / "w.data"
    data.write_bytes(data.read_bytes()[:100])
    edit_external(ext, lambda info: {k: v for k, v in info.items() if k != "length"})
    fails_cleanly(work, LOAD, *PRUNE, fragments=("external data of tensor", "is truncated", "'w.data' has 100 bytes"))


def test_external_data_without_length_reads_to_the_end(work: Path, ext: Path) -> None:
    """Without ``length`` onnx reads up to the end of the file: more bytes than the dims take."""
    edit_external(ext, lambda info: {k: v for k, v in info.items() if k != "length"})
    fails_cleanly(work, LOAD, *PRUNE, fragments=("gives no length", "'w.data'", "take", "malformed"))


def test_external_data_length_disagrees_with_dims(work: Path, ext: Path) -> None:
    edit_external(ext, lambda info: {**info, "length": str(int(info["length"]) - 4)})
    fails_cleanly(work, LOAD, *PRUNE, fragments=("external data of tensor", "has length", "its dims", "malformed"))


@pytest.mark.parametrize("location", ["d" * 5000, "w\x00.data"], ids=["too-long", "nul-byte"])
def test_external_data_location_the_system_refuses(work: Path, ext: Path, location: str) -> None:
    edit_external(ext, lambda info: {**info, "location": location})
    message = fails_cleanly(work, LOAD, *PRUNE, fragments=("external data of tensor", "cannot be opened", "malformed"))
    assert len(message) < 400


def test_external_data_offset_past_the_end(work: Path, ext: Path) -> None:
    edit_external(ext, lambda info: {**info, "offset": "999999999"})
    fails_cleanly(work, LOAD, *PRUNE, fragments=("external data of tensor", "is truncated"))


# --------------------------------------------------------------------------- dims against payload


def _raw_too_short(model: onnx.ModelProto) -> onnx.ModelProto:
    initializer(model, "W1").dims[1] = 64  # 64x64 declared, 64x32 stored
    return model


def _float_data_too_short(model: onnx.ModelProto) -> onnx.ModelProto:
    tensor = initializer(model, "W1")
    values = numpy_helper.to_array(tensor).ravel()
    tensor.ClearField("raw_data")
    tensor.float_data.extend(values[:100].tolist())
    return model


def _no_values(model: onnx.ModelProto) -> onnx.ModelProto:
    initializer(model, "W2").ClearField("raw_data")
    return model


def _negative_dim(model: onnx.ModelProto) -> onnx.ModelProto:
    initializer(model, "W2").dims[0] = -32
    return model


def _constant_attribute(model: onnx.ModelProto) -> onnx.ModelProto:
    """W2 as a Constant node whose tensor says 32x20 but holds 32x10 values."""
    tensor = initializer(model, "W2")
    value = onnx.TensorProto()
    value.CopyFrom(tensor)
    value.dims[1] = 20
    model.graph.initializer.remove(tensor)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["W2"], name="w2_const", value=value))
    return model


def _sparse_initializer(model: onnx.ModelProto) -> onnx.ModelProto:
    values = numpy_helper.from_array(np.ones(4, np.float32), "b1")
    values.dims[0] = 5  # 5 values declared, 4 stored
    indices = numpy_helper.from_array(np.array([0, 1, 2, 3], np.int64), "b1_indices")
    model.graph.initializer.remove(initializer(model, "b1"))
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [32]))
    return model


@pytest.mark.parametrize(
    ("corrupt", "fragments"),
    [
        (_raw_too_short, ("initializer 'W1'", "dims [64, 64]", "raw_data holds 8192 bytes")),
        (
            _float_data_too_short,
            (
                "initializer 'W1'",
                "float_data holds 100",
            ),
        ),
        (_no_values, ("initializer 'W2'", "it holds no values")),
        (_negative_dim, ("initializer 'W2'", "negative dimension")),
        (_constant_attribute, ("attribute 'value' of node 'w2_const'", "dims [32, 20]")),
        (_sparse_initializer, ("sparse initializer 'b1'", "values")),
    ],
    ids=["raw_data", "float_data", "no-values", "negative-dim", "constant", "sparse"],
)
def test_dims_disagree_with_the_values(
    work: Path, corrupt: Callable[[onnx.ModelProto], onnx.ModelProto], fragments: tuple[str, ...]
) -> None:
    onnx.save_model(corrupt(mlp()), str(work / "m.onnx"))
    fails_cleanly(work, LOAD, *PRUNE, fragments=(*fragments, "malformed"))
    fails_cleanly(work, LOAD, "inspect", "m.onnx", fragments=fragments)
    with pytest.raises(ModelLoadError):
        onnxprune.prune_file(work / "m.onnx", work / "out.onnx", onnxprune.PruneConfig(sparsity=0.5))
    with pytest.raises(ModelLoadError):
        onnxprune.prune(corrupt(mlp()), onnxprune.PruneConfig(sparsity=0.5))  # an in-memory model too


def test_dims_in_a_subgraph_are_checked(work: Path) -> None:
    model = mlp()
    bad = numpy_helper.from_array(np.ones((4, 4), np.float32), "inner")
    bad.dims[0] = 8
    branch = helper.make_graph(
        [helper.make_node("Identity", ["inner"], ["out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [8, 4])],
        [bad],
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [8, 4]))
    onnx.save_model(model, str(work / "m.onnx"))
    fails_cleanly(work, LOAD, *PRUNE, fragments=("initializer 'inner' in subgraph", "dims [8, 4]"))


# --------------------------------------------------------------------------- names defined twice


def test_duplicate_initializer_names(work: Path) -> None:
    model = mlp()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((64, 32), np.float32), "W1"))
    onnx.save_model(model, str(work / "m.onnx"))
    fails_cleanly(work, LOAD, *PRUNE, fragments=("two initializers are named 'W1'", "malformed"))
    with pytest.raises(ModelLoadError, match="two initializers"):
        onnxprune.prune(model, onnxprune.PruneConfig(sparsity=0.5))


@pytest.mark.parametrize("twice", ["node", "initializer"])
def test_node_output_defined_twice(work: Path, twice: str) -> None:
    model = mlp()
    if twice == "node":
        model.graph.node.insert(2, helper.make_node("Identity", ["x"], ["h1"], name="again"))
    else:
        model.graph.node.insert(0, helper.make_node("Identity", ["x"], ["W2"], name="again"))
    onnx.save_model(model, str(work / "m.onnx"))
    fails_cleanly(work, LOAD, *PRUNE, fragments=("is defined twice", "'again'", "malformed"))


@pytest.mark.parametrize("outputs", [(), ("nowhere",)], ids=["no-outputs", "undefined-output"])
def test_graph_outputs_must_be_defined(work: Path, outputs: tuple[str, ...]) -> None:
    model = mlp()
    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs)
    onnx.save_model(model, str(work / "m.onnx"))
    fails_cleanly(work, LOAD, *PRUNE, fragments=("output", "malformed"))


def test_sanity_leaves_a_valid_model_alone(fixtures_dir: Path) -> None:
    """Every fixture passes every check, with ``finite`` too (nothing changes in the model)."""
    for path in sorted(fixtures_dir.rglob("*.onnx")):
        model = onnx.load(str(path))
        before = model.SerializeToString()
        check_model(model, finite=True)
        assert model.SerializeToString() == before, path.name


# --------------------------------------------------------------------------- option values


def test_plan_nested_100000_deep(work: Path) -> None:
    (work / "plan.json").write_text("[" * 100_000 + "]" * 100_000)
    fails_cleanly(
        work, OPTION, *PRUNE[:3], "--plan", "plan.json", fragments=("plan file 'plan.json'", "nested too deeply")
    )
    with pytest.raises(OptionError, match="nested too deeply"):
        load_plan(work / "plan.json")


def test_plan_with_a_number_too_long(work: Path) -> None:
    (work / "plan.json").write_text('{"W1": ' + "9" * 5000 + "}")
    fails_cleanly(
        work, OPTION, *PRUNE[:3], "--plan", "plan.json", fragments=("plan file 'plan.json'", "number too long")
    )


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("x:99999999999x64", ("--input-shape x:99999999999x64 has 6,399,999,999,936 elements", "2^30")),
        ("x:0x99999999999999999999999", ("dimensions must be >= 1",)),
        ("x:65536x65536", ("has 4,294,967,296 elements", "one realistic batch")),
    ],
)
def test_absurd_input_shape(work: Path, spec: str, fragments: tuple[str, ...]) -> None:
    fails_cleanly(work, OPTION, *PRUNE, "--input-shape", spec, fragments=fragments)
    with pytest.raises(OptionError, match="input_shapes"):
        parse_input_shapes([spec])


def test_absurd_input_shape_in_the_api() -> None:
    with pytest.raises(OptionError) as caught:
        resolve_input_shapes({"x": ("N", 64)}, {"x": (MAX_INPUT_ELEMENTS, 64)})
    assert "input_shapes" in str(caught.value) and "--input-shape" not in str(caught.value)
    assert resolve_input_shapes({"x": ("N", 64)}, {"x": (4, 64)}) == {"x": (4, 64)}  # sane ones pass


def test_absurd_data_free_samples(work: Path) -> None:
    fails_cleanly(
        work,
        OPTION,
        *PRUNE,
        "--method",
        "sparsegpt",
        "--data-free",
        "--samples",
        "100000000",
        fragments=("100000000 data-free samples", "--samples", "--input-shape"),
    )


# --------------------------------------------------------------------------- a regression: IndexError


def test_structured_with_calibration_on_a_bias_free_matmul_mlp(work: Path) -> None:
    """``--structured`` with calibration data on MatMul layers without any bias (was an IndexError)."""
    onnx.save_model(mlp(bias=False, hidden=64), str(work / "m.onnx"))
    result = cli("prune", "m.onnx", "out.onnx", "--structured", "--sparsity", "0.5", "--calibration", "calib.npz", "-q")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = onnx.load(str(work / "out.onnx"))
    onnx.checker.check_model(out)
    assert initializer(out, "W1").dims[1] < 64  # channels went


# --------------------------------------------------------------------------- NaN and inf weights


def test_nonfinite_counts_by_bits() -> None:
    values = np.array([1, np.nan, -np.inf, np.inf, -np.nan, 0, -0.0, 3e38], np.float32)
    assert nonfinite_counts(values) == (2, 2)
    assert nonfinite_counts(np.array([np.inf, 65504, np.nan, -np.inf], np.float16)) == (1, 2)
    assert nonfinite_counts(values.astype(np.float64)[::2]) == (1, 1)
    assert nonfinite_counts(np.arange(4)) == (0, 0)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_nonfinite_counts_over_chunks_and_the_finite_fast_path(dtype: str, monkeypatch) -> None:
    """Counted over chunks (the last one short) in reused buffers, with non-finite values in the
    first and last chunks only; a finite array (float32/float64: max and min) has none."""
    import ml_dtypes

    from onnxprune.graph import tensors

    monkeypatch.setattr(tensors, "NONFINITE_CHUNK", 8)
    kind = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    values = np.linspace(-3, 3, 45).astype(kind)
    assert nonfinite_counts(values) == (0, 0)
    values[[0, 3]] = np.nan
    values[[1, 44]] = np.inf
    values[43] = -np.inf
    values[42] = np.float32("-nan")
    assert nonfinite_counts(values) == (3, 3)
    assert nonfinite_counts(values.reshape(5, 9)[:, ::2]) == (2, 1)  # not contiguous: 0, 42 / 44


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("--method", "sparsegpt", "--calibration", "calib.npz"),
        ("--method", "wanda", "--calibration", "calib.npz"),
        ("--method", "sparsegpt", "--data-free"),
        ("--bias-correction", "--calibration", "calib.npz"),
    ],
    ids=["magnitude", "sparsegpt", "wanda", "sparsegpt-data-free", "bias-correction"],
)
def test_nonfinite_weights_are_refused(work: Path, options: tuple[str, ...]) -> None:
    onnx.save_model(nan_model(), str(work / "m.onnx"))
    fails_cleanly(
        work,
        UNSUPPORTED,
        *PRUNE,
        *options,
        fragments=("weight 'W1' holds 1 NaN and 2 infinite values (of 2048)", "--allow-nonfinite"),
    )


def test_nonfinite_weights_structured_data_free_are_not_blamed_on_the_data(work: Path) -> None:
    onnx.save_model(nan_model(), str(work / "m.onnx"))
    message = fails_cleanly(
        work,
        UNSUPPORTED,
        "prune",
        "m.onnx",
        "out.onnx",
        "--structured",
        "--sparsity",
        "0.5",
        "--data-free",
        fragments=("weight 'W1'", "NaN"),
    )
    assert "data's scale" not in message


def test_nonfinite_weights_refused_by_the_api(work: Path) -> None:
    onnx.save_model(nan_model(), str(work / "m.onnx"))
    config = onnxprune.PruneConfig(sparsity=0.5)
    for call in (
        lambda: onnxprune.prune_file(work / "m.onnx", work / "out.onnx", config),
        lambda: onnxprune.prune(work / "m.onnx", config),
        lambda: onnxprune.prune(nan_model(), config),
        lambda: onnxprune.calibration_data(work / "m.onnx", data_free=True, samples=4),
    ):
        with pytest.raises(UnsupportedModelError) as caught:
            call()
        assert "allow_nonfinite=True" in str(caught.value) and "--allow" not in str(caught.value)
    assert not (work / "out.onnx").exists()


def test_allow_nonfinite_leaves_those_tensors_as_they_are(work: Path) -> None:
    onnx.save_model(nan_model(), str(work / "m.onnx"))
    source = snapshot(work)["m.onnx"]
    result = cli(*PRUNE, "--allow-nonfinite")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "W1" in result.stdout and "non-finite values: 3 NaN or infinite, not pruned" in result.stdout
    assert snapshot(work)["m.onnx"] == source
    out = onnx.load(str(work / "out.onnx"))
    assert initializer(out, "W1").raw_data == initializer(nan_model(), "W1").raw_data  # untouched, byte for byte
    w2 = numpy_helper.to_array(initializer(out, "W2"))
    assert np.count_nonzero(w2 == 0) == w2.size // 2  # the rest pruned

    run = onnxprune.prune_file(
        work / "m.onnx", work / "api.onnx", onnxprune.PruneConfig(sparsity=0.5), allow_nonfinite=True
    )
    weights = run.passes[0]
    assert weights.counts["nonfinite"] == 1 and weights.counts["tensors_pruned"] == 1
    assert dict(weights.skipped)["W1"].startswith("non-finite values")


def test_allow_nonfinite_in_memory() -> None:
    model, result = onnxprune.prune(nan_model(), onnxprune.PruneConfig(sparsity=0.5), allow_nonfinite=True)
    assert [layer.key for layer in result.pruned] == ["W2"]
    assert np.isnan(numpy_helper.to_array(initializer(model, "W1"))[0, 0])


@pytest.mark.parametrize(
    ("options", "reader"),
    [
        (("--sparsity", "0.5", "--method", "sparsegpt", "--calibration", "calib.npz"), "--method sparsegpt"),
        (("--sparsity", "0.5", "--method", "wanda", "--calibration", "calib.npz"), "--method wanda"),
        (("--sparsity", "0.5", "--bias-correction", "--calibration", "calib.npz"), "--bias-correction"),
        (("--structured", "--sparsity", "0.5"), "--structured"),
        (("--structured", "--sparsity", "0.5", "--data-free"), "--structured"),
        (("--sparsity", "0.5", "--quantize", "int8"), "--quantize"),
    ],
    ids=["sparsegpt", "wanda", "bias-correction", "structured", "structured-data-free", "quantize"],
)
def test_allow_nonfinite_refused_where_a_pass_reads_them_anyway(
    work: Path, options: tuple[str, ...], reader: str
) -> None:
    onnx.save_model(nan_model(), str(work / "m.onnx"))
    fails_cleanly(
        work,
        UNSUPPORTED,
        "prune",
        "m.onnx",
        "out.onnx",
        *options,
        "--allow-nonfinite",
        fragments=("weight 'W1'", "--allow-nonfinite leaves such tensors as they are", reader),
    )


def test_allow_nonfinite_on_a_finite_model_changes_nothing(work: Path) -> None:
    plain = cli(*PRUNE, "-q")
    assert plain.exit_code == 0, plain.stderr
    first = (work / "out.onnx").read_bytes()
    allowed = cli("prune", "m.onnx", "out2.onnx", "--sparsity", "0.5", "--allow-nonfinite", "-q")
    assert allowed.exit_code == 0, allowed.stderr
    assert (work / "out2.onnx").read_bytes() == first


def test_an_inf_attention_mask_is_not_a_nonfinite_weight(work: Path) -> None:
    """An additive mask of -inf (read as a bias of a MatMul) is what masks are: pruning goes on."""
    model = mlp(bias=False)
    mask = np.zeros((1, 10), np.float32)
    mask[0, 7:] = -np.inf
    model.graph.initializer.append(numpy_helper.from_array(mask, "mask"))
    model.graph.node[-1].output[0] = "scores"
    model.graph.node.append(helper.make_node("Add", ["scores", "mask"], ["masked"], name="mask_add"))
    model.graph.node.append(helper.make_node("Softmax", ["masked"], ["y"], axis=-1))
    onnx.save_model(model, str(work / "m.onnx"))
    assert discover(model).weights[-1].nonfinite == 0
    result = cli(*PRUNE, "-q")
    assert result.exit_code == 0, result.stderr


def test_a_nan_bias_is_refused_too(work: Path) -> None:
    model = with_values(mlp(), "b1", lambda b: b.__setitem__(3, np.nan))
    onnx.save_model(model, str(work / "m.onnx"))
    fails_cleanly(work, UNSUPPORTED, *PRUNE, fragments=("bias 'b1' holds 1 NaN values (of 32)",))


def test_inspect_lists_nonfinite_weights_with_the_reason(work: Path) -> None:
    onnx.save_model(nan_model(), str(work / "m.onnx"))
    result = cli("inspect", "m.onnx")
    assert result.exit_code == 0, result.stderr
    assert "non-finite values" in result.stdout
    (weight,) = (w for w in onnxprune.inspect(work / "m.onnx").weights if w.name == "W1")
    assert not weight.prunable and weight.nonfinite == 3


def test_json_plan_still_reads(work: Path) -> None:
    (work / "plan.json").write_text(json.dumps({"W1": 0.25}))
    result = cli("prune", "m.onnx", "out.onnx", "--plan", "plan.json", "-q")
    assert result.exit_code == 0, result.stderr


def test_nonfinite_weights_in_external_data(work: Path) -> None:
    """A model with external data is checked before its data is read, and its weights once loaded."""
    save_external(nan_model(), work / "m.onnx")
    fails_cleanly(work, UNSUPPORTED, *PRUNE, fragments=("weight 'W1' holds 1 NaN and 2 infinite values",))
    result = cli(*PRUNE, "--allow-nonfinite", "-q")
    assert result.exit_code == 0, result.stderr
    out = onnx.load(str(work / "out.onnx"))
    assert np.isnan(numpy_helper.to_array(initializer(out, "W1"))[0, 0])


@pytest.mark.parametrize("indices", [[7], [2, 1], [-1]], ids=["outside", "unsorted", "negative"])
def test_sparse_initializer_indices_are_checked(work: Path, indices: list[int]) -> None:
    """onnxruntime 1.18 crashes (SIGSEGV) on a sparse initializer whose indices lie outside its
    dims: the load check refuses it first, as ONNX requires indices in range and increasing."""
    values = numpy_helper.from_array(np.ones(len(indices), np.float32), "s")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array(indices, np.int64), "s_i"), [4])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "s"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        sparse_initializer=[sparse],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(work / "model.onnx"))
    fails_cleanly(work, ModelLoadError.exit_code, "inspect", "model.onnx", fragments=("sparse initializer 's'",))
