"""Inputs ``tools/fuzz.py`` found ending in exit 70 (a bug), each rebuilt here in ``tmp_path``.

Each case asserts the contract of ``tests/test_cli_errors.py``: the exit code of its error
class (:mod:`onnxprune.errors`), exactly one line on stderr, no traceback, no "internal
error". The seeds and cases that found them: ``tools/fuzz.py --seed S --only I``.

- **onnxruntime rejects the input model itself** (seed 1: 17, 31, 224, 470, 487, 518, 542,
  773, 970; seed 2: 312, 373, 948): an onnxruntime error that escapes a command is checked
  against the input model (:func:`onnxprune.runtime.input_rejection`): if onnxruntime cannot
  load it, or run it on a synthetic batch, the input is at fault (exit 4, one line); if it
  can, the error stays an internal error (exit 70, one line, without onnxruntime's log).
- ``analyze`` on a model with a scalar output (nested If subgraphs, seed 1: 682).
- unknown tensor types, string tensors in ``raw_data``, impossible opset versions (seed 1:
  984; seed 2: 312, 695): a ModelLoadError on load.
- a dead channel feeding a Gemm whose bias is computed (seed 1: 18): the unit is kept.
- a weight stored as strings (seed 1: 568, 18): an UnsupportedModelError on load.
- an ``.npz`` member whose header declares 4 TiB (seed 1: 503; seed 2: 351): a DataError.
- weight dims that disagree with the graph (seed 2: 277, 473): the groups are blocked.
- ``--seed -1`` (seed 2: 508), ``--threads 100000`` (seed 3: 410): an OptionError.
- ``analyze --structural`` on a -inf weight (seed 3: 361): refused as ``prune --structured`` does.
- an input declared ``[-5, 40]`` pruned structurally with data (seed 29: 56): the channel
  analysis takes a negative dim as unknown.
- an LSTM's W saved with a dim dropped (seed 56: 56): a slot naming an axis its tensor lacks
  gives no axes, and a recurrent W or R of a known rank other than 3 is no weight of the op.
- a Conv weight of 3e38 before a batch norm, calibrated (seed 67: 304): a layer whose
  calibration terms overflow is pruned by magnitude, and the infinite activations it makes
  downstream are a DataError.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_contract import INTERNAL, PREFIX, cli, error_line
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from onnxprune import runtime
from onnxprune.errors import DataError, ModelLoadError, OptionError, UnsupportedModelError
from onnxprune.graph.sanity import check_model
from onnxprune.structure.analysis import analyze
from onnxprune.structure.constants import dead_units

MLP = Path(__file__).resolve().parent.parent / "fixtures" / "mlp_digits.onnx"


# --------------------------------------------------------------------------- helpers


def fixture_model() -> onnx.ModelProto:
    """``fixtures/mlp_digits.onnx``: Gemm 64->256->128->10 with biases, input ``input`` [batch, 64]."""
    return onnx.load(str(MLP))


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def save(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    path = folder / name
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder (the cwd) with ``calib.npz``: 32 samples of the fixture's input."""
    monkeypatch.chdir(tmp_path)
    samples = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=samples)
    return tmp_path


# --------------------------------------------------------------------------- onnxruntime rejects the input


def with_dead_unit(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with fc1's unit 0 dead (zero weights, zero bias): ``--dead-channels`` removes
    it, and the structural pass's exact check runs the model in onnxruntime (before any
    validation does)."""
    for name in ("fc1.weight", "fc1.bias"):
        tensor = next(t for t in model.graph.initializer if t.name == name)
        values = numpy_helper.to_array(tensor).copy()
        values[0] = 0
        tensor.CopyFrom(numpy_helper.from_array(values, name))
    return model


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """The exceptions :func:`runtime.input_rejection` was asked about (the mechanism ran)."""
    asked: list[BaseException] = []
    real = runtime.input_rejection

    def record(exc: BaseException, inputs: list[runtime.InputModel]) -> object:
        asked.append(exc)
        return real(exc, inputs)

    monkeypatch.setattr(runtime, "input_rejection", record)
    return asked


def test_input_onnxruntime_cannot_load_is_its_fault(work: Path, spy: list[BaseException]) -> None:
    """An attribute Gemm does not define (seed 1 case 224 had ``alpha`` turned into a string,
    now refused on load): onnx.load and onnxprune's own checks accept it; onnxruntime first
    sees it in the structural pass's exact check, whose error escaped the command raw."""
    model = with_dead_unit(fixture_model())
    node(model, "/fc2/Gemm").attribute.append(helper.make_attribute("gamma", 2.0))
    save(model, work)
    message = error_line(
        cli("prune", "model.onnx", "out.onnx", "--dead-channels", "-q"),
        UnsupportedModelError.exit_code,
        "onnxruntime cannot load the input model 'model.onnx' (",
        "gamma",
        "the model itself is refused, not one onnxprune made",
    )
    assert "tensor(float)" not in message  # onnxruntime's listing of the node's inputs is cut
    assert len(spy) == 1 and runtime.from_onnxruntime(spy[0])
    assert not (work / "out.onnx").exists()


def test_input_that_loads_but_cannot_run_is_its_fault(work: Path, spy: list[BaseException]) -> None:
    """A Cast to type 2^62 (seed 1 case 542): the model loads, and fails in that Cast on any
    batch; analyze meets it running the dense model on the data."""
    model = onnx.load(str(MLP.with_name("mlp_digits_fp16.onnx")))
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    cast.attribute[0].i = 2**62
    save(model, work)
    error_line(
        cli("analyze", "model.onnx", "--data", "calib.npz", "--samples", "16", "--levels", "0.5", "--workers", "1"),
        UnsupportedModelError.exit_code,
        "onnxruntime cannot run the input model 'model.onnx' on the synthetic input input:1x64 (",
        "Cast",
    )
    assert len(spy) == 1


def test_validation_blames_an_input_that_cannot_run(work: Path) -> None:
    """The same model pruned: its output fails validation, and so does the input on the shape it
    declares: the input's fault (exit 4), not a request for --input-shape (exit 5)."""
    model = onnx.load(str(MLP.with_name("mlp_digits_fp16.onnx")))
    next(n for n in model.graph.node if n.op_type == "Cast").attribute[0].i = 2**62
    save(model, work)
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--sparsity", "0.5", "-q"),
        UnsupportedModelError.exit_code,
        "onnxruntime cannot run the input model 'model.onnx'",
        "nothing was written",
    )


@pytest.mark.parametrize("flags", [("--sparsity", "0.5"), ("--dead-channels",)], ids=["weights", "dead-channels"])
def test_input_with_a_cycle(work: Path, flags: tuple[str, ...]) -> None:
    """An input renamed to a later output (seed 1 case 470): the graph is not acyclic. Weight
    pruning meets it in validation; the dead-channel pass finds no group to cut."""
    model = with_dead_unit(fixture_model())
    node(model, "/fc2/Gemm").input[0] = model.graph.node[-1].output[0]
    save(model, work)
    result = cli("prune", "model.onnx", "out.onnx", *flags, "-q")
    if result.exit_code == 10:  # nothing to remove: said on stderr as a note, not an error
        assert "nothing to remove" in result.stderr
        return
    error_line(result, UnsupportedModelError.exit_code, "onnxruntime cannot load the input model", "not acyclic")


def test_input_at_an_opset_onnxruntime_refuses(work: Path) -> None:
    """Opset 6 (seed 1 case 518): Gemm and BatchNormalization differ there."""
    model = with_dead_unit(fixture_model())
    model.opset_import[0].version = 6
    save(model, work)
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--dead-channels", "-q"),
        UnsupportedModelError.exit_code,
        "onnxruntime cannot load the input model 'model.onnx'",
    )


def test_onnxruntime_error_on_a_valid_input_stays_internal(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input loads and runs: an onnxruntime error is then onnxprune's bug (exit 70), said
    in one line, without onnxruntime's multi-line text."""
    save(fixture_model(), work)

    def broken(*args: object, **kwargs: object) -> None:
        runtime.session(b"not a model")  # raises onnxruntime's own InvalidProtobuf

    monkeypatch.setattr("onnxprune.sensitivity.tasks.run_outputs", broken)
    monkeypatch.setattr("onnxprune.sensitivity.sweep.run_outputs", broken)
    message = error_line(
        cli("analyze", "model.onnx", "--data", "calib.npz", "--samples", "16", "--levels", "0.5", "--workers", "1"),
        INTERNAL,
        "internal error (InvalidProtobuf",
        "rerun with --debug and report it",
    )
    assert "[ONNXRuntimeError]" not in message


def test_input_check_costs_nothing_on_success(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input is checked only after an onnxruntime error: a run that succeeds never asks."""
    save(fixture_model(), work)

    def asked(*args: object) -> None:
        raise AssertionError("the input was checked on the success path")

    monkeypatch.setattr(runtime, "rejection", asked)
    result = cli("prune", "model.onnx", "out.onnx", "--sparsity", "0.5", "-q")
    assert result.exit_code == 0, result.stderr


def test_input_rejection_unit() -> None:
    """Only onnxruntime errors are looked into; a registered input that loads and runs is fine."""
    inputs = [runtime.InputModel(MLP)]
    assert runtime.input_rejection(ValueError("x"), inputs) is None
    try:
        runtime.session(b"garbage")
    except Exception as exc:  # onnxruntime's own type
        assert runtime.from_onnxruntime(exc)
        assert runtime.input_rejection(exc, inputs) is None
        assert runtime.input_rejection(exc, []) is None
    with runtime.input_scope() as registered:
        runtime.reads_model(MLP, {"input": (2, 64)})
        runtime.reads_model(MLP)
    runtime.reads_model(MLP)  # outside a scope: nothing registers
    assert registered == [runtime.InputModel(MLP, {"input": (2, 64)})]


def test_onnxruntime_logs_nothing_on_stderr(tmp_path: Path) -> None:
    """In a real process (onnxruntime logs a failing kernel to the file descriptor, which
    CliRunner does not see): a model that fails to run gives exactly one line on stderr."""
    model = onnx.load(str(MLP.with_name("mlp_digits_fp16.onnx")))
    next(n for n in model.graph.node if n.op_type == "Cast").attribute[0].i = 2**62
    save(model, tmp_path)
    samples = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=samples)
    args = ["analyze", "model.onnx", "--data", "calib.npz", "--samples", "16", "--levels", "0.5", "--workers", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "onnxprune", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == UnsupportedModelError.exit_code, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX + "onnxruntime cannot run the input model"), done.stderr


def test_ort_message_drops_cpp_signatures() -> None:
    text = (
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Cast node. Name:'w/Cast' "
        "Status Message: /onnxruntime_src/include/onnxruntime/core/framework/data_types_internal.h:656 void "
        "onnxruntime::utils::mltype_dispatcher_internal::CallableDispatchableHelper::CheckCalledOnce() const "
        "called_ == 1 was false. Unsupported data type: 0\nmore lines"
    )
    assert runtime.ort_message(Exception(text)) == (
        "Non-zero status code returned while running Cast node. Name:'w/Cast' Status Message: called_ == 1 was "
        "false. Unsupported data type: 0"
    )


# --------------------------------------------------------------------------- analyze: a scalar output


def deep_if_model(depth: int = 20) -> onnx.ModelProto:
    """The fixture with a scalar output made by ``depth`` nested If subgraphs (the fuzzer's
    ``deep-subgraph`` mutation)."""
    model = fixture_model()
    model.graph.initializer.append(helper.make_tensor("fuzz_cond", TensorProto.BOOL, [], [True]))

    def leaf(name: str) -> onnx.GraphProto:
        value = helper.make_tensor("v", TensorProto.FLOAT, [], [1.0])
        const = helper.make_node("Constant", [], [name], value=value)
        return helper.make_graph([const], f"g_{name}", [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, [])])

    inner = leaf(f"leaf_{depth}")
    for k in range(depth - 1, -1, -1):
        out = "deep" if k == 0 else f"o{k}"
        branch = helper.make_node("If", ["fuzz_cond"], [out], then_branch=inner, else_branch=leaf(f"e{k}"))
        inner = helper.make_graph([branch], f"g{k}", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [])])
    model.graph.node.extend(inner.node)
    model.graph.output.append(helper.make_tensor_value_info("deep", TensorProto.FLOAT, []))
    return model


def test_analyze_with_a_scalar_output(work: Path) -> None:
    save(deep_if_model(), work)
    result = cli(
        "analyze", "model.onnx", "--data", "calib.npz", "--samples", "16", "--levels", "0.5", "--workers", "1",
        "--method", "sparsegpt", "--no-cache", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "layer(s) analysed" in result.stdout


def test_run_outputs_joins_scalar_outputs() -> None:
    from onnxprune.sensitivity.tasks import run_outputs

    feeds = tuple({"input": np.zeros((count, 64), np.float32)} for count in (4, 4, 2))
    outputs = run_outputs(deep_if_model(8).SerializeToString(), feeds)
    assert outputs[0].shape == (10, 10)
    assert outputs[1].shape == (3,)  # one value per batch: 4 + 4 + 2 samples


# --------------------------------------------------------------------------- types and opsets on load


def test_unknown_tensor_type(work: Path) -> None:
    """data_type 99 (seed 1 case 984): a KeyError in numpy_helper before."""
    model = fixture_model()
    model.graph.initializer[0].data_type = 99
    save(model, work)
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--sparsity", "0.5", "--criterion", "random", "-q"),
        ModelLoadError.exit_code,
        "element type 99, which is no type ONNX defines",
        "malformed",
    )
    error_line(cli("inspect", "model.onnx"), ModelLoadError.exit_code, "element type 99")


def test_undefined_tensor_type() -> None:
    model = fixture_model()
    model.graph.initializer[0].data_type = TensorProto.UNDEFINED
    with pytest.raises(ModelLoadError, match="no element type"):
        check_model(model)


def test_string_tensor_in_raw_data(work: Path) -> None:
    """A float initializer retyped STRING, its raw bytes kept (seed 2 case 695)."""
    model = fixture_model()
    model.graph.initializer[-2].data_type = TensorProto.STRING
    save(model, work)
    error_line(cli("inspect", "model.onnx"), ModelLoadError.exit_code, "string tensor stored as raw_data")


@pytest.mark.parametrize("version", [-1, 0, 10000])
def test_impossible_opset_version(work: Path, version: int) -> None:
    """Opset -1 (seed 1 case 984), 10000 (seed 2 case 312)."""
    model = fixture_model()
    model.opset_import[0].version = version
    save(model, work)
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--sparsity", "0.5", "-q"),
        ModelLoadError.exit_code,
        f"opset version {version} of domain 'ai.onnx', which no release has",
    )


def test_negative_opset_of_a_custom_domain() -> None:
    model = fixture_model()
    model.opset_import.append(helper.make_opsetid("com.example", -3))
    with pytest.raises(ModelLoadError, match=re.escape("version -3 of domain 'com.example'")):
        check_model(model)
    model.opset_import[-1].version = 0  # a custom domain may number from 0
    check_model(model)


# --------------------------------------------------------------------------- weights that are no numbers


def string_weight_model(*, through_cast: bool) -> onnx.ModelProto:
    """The fixture with fc3's weight as strings (the fuzzer's ``raw-payload:string``), read by the
    Gemm directly or through a Cast (which parses strings at run time)."""
    model = fixture_model()
    weight = next(t for t in model.graph.initializer if t.name == "fc3.weight")
    count = int(np.prod(weight.dims))
    weight.ClearField("raw_data")
    weight.data_type = TensorProto.STRING
    weight.string_data.extend([b"x"] * count)
    if through_cast:
        weight.name = "fc3.weight_text"
        cast = helper.make_node("Cast", ["fc3.weight_text"], ["fc3.weight"], to=TensorProto.FLOAT)
        model.graph.node.insert(0, cast)
    return model


@pytest.mark.parametrize("through_cast", [False, True], ids=["direct", "cast"])
def test_weight_stored_as_strings(work: Path, through_cast: bool) -> None:
    """Seed 1 case 568 (direct, ``--quantize int8``) and 18 (through a Cast)."""
    save(string_weight_model(through_cast=through_cast), work)
    args = ("prune", "model.onnx", "out.onnx", "--min-size", "0", "--sparsity", "0.99", "--scope", "global")
    error_line(
        cli(*args, "--quantize", "int8", "--quantize-mode", "dynamic", "-q"),
        UnsupportedModelError.exit_code,
        "is stored as STRING values",
    )
    error_line(cli("inspect", "model.onnx"), UnsupportedModelError.exit_code, "STRING")


def test_string_vocabulary_read_by_gather_is_fine() -> None:
    """A Gather of a string table (a vocabulary) is valid and stays accepted."""
    vocab = helper.make_tensor("vocab", TensorProto.STRING, [3], [b"a", b"b", b"c"])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["vocab", "ids"], ["words"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("words", TensorProto.STRING, ["N"])],
        [vocab],
    )
    check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


# --------------------------------------------------------------------------- a dead channel into a computed bias


def computed_bias_model() -> onnx.ModelProto:
    """x[N, 16] -> Gemm (8 units) -> Relu -> Gemm (4 outputs) whose C is computed by a node
    (``Neg`` of a graph input). Unit 3 has zero weights and bias 0.5: a constant 0.5 that only
    a stored bias could absorb. Unit 5 has zero weights and bias 0: removable exactly."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    b1 = rng.uniform(0.1, 0.3, 8).astype(np.float32)
    w1[3], b1[3] = 0.0, 0.5
    w1[5], b1[5] = 0.0, 0.0
    w2 = rng.standard_normal((4, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Neg", ["c"], ["bias2"], name="bias_maker"),
        helper.make_node("Gemm", ["r", "w2", "bias2"], ["y"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "computed_bias",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_dead_unit_into_a_computed_bias_is_kept() -> None:
    """Only the unit whose constant is 0 is removable: fc2's computed bias cannot take 0.5·W2[3]."""
    analysis = analyze(computed_bias_model())
    found = dead_units(analysis)
    units = sorted(int(u) for group in found.units.values() for u in group)
    assert units == [5]
    assert sum(found.constant_kept.values()) == 1
    assert any("computed or ignored bias" in reason for reason in found.reasons.values())


def test_dead_channels_with_a_computed_bias(work: Path) -> None:
    """Seed 1 case 18: ``add_to_bias`` was called for a consumer whose bias is computed."""
    model = computed_bias_model()
    save(model, work)
    result = cli("prune", "model.onnx", "out.onnx", "--dead-channels", "-q")
    assert result.exit_code == 0, result.stderr
    out = onnx.load(str(work / "out.onnx"))
    w1 = next(numpy_helper.to_array(t) for t in out.graph.initializer if t.name == "w1")
    assert w1.shape == (7, 16)  # unit 5 removed, unit 3 kept
    feeds = {"x": np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32), "c": np.ones(4, np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    after = ort.InferenceSession(str(work / "out.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- weight dims that disagree with the graph


def test_weight_dims_that_disagree_with_the_graph(work: Path) -> None:
    """fc2's weight reversed (seed 2 case 473): its input axis has 256 entries where fc1 makes
    128 ... channels, so the analysis's members and constants would index past its end.
    The groups are blocked; the model itself is one onnxruntime refuses."""
    model = fixture_model()
    weight = next(t for t in model.graph.initializer if t.name == "fc2.weight")
    values = numpy_helper.to_array(weight)
    weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(values.T), "fc2.weight"))
    save(model, work)
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--sparsity", "0.99", "--dead-channels", "-q"),
        UnsupportedModelError.exit_code,
        "the input model 'model.onnx'",  # onnxruntime 1.18 refuses it on a run, newer ones on load
        "Gemm",
    )


@pytest.mark.parametrize(
    ("name", "retag", "said"),
    [
        ("transB", lambda a: setattr(a, "type", AttributeProto.FLOAT), "tagged FLOAT; its schema says INT"),
        ("beta", lambda a: (a.Clear(), a.MergeFrom(helper.make_attribute("beta", [1.0, 2.0]))), "tagged FLOATS"),
        ("alpha", lambda a: (a.Clear(), a.MergeFrom(helper.make_attribute("alpha", b"abc"))), "tagged STRING"),
        ("alpha", lambda a: setattr(a, "type", AttributeProto.UNDEFINED), "tagged UNDEFINED"),
    ],
    ids=["transB-float-tag", "beta-list", "alpha-string", "alpha-undefined-tag"],
)
def test_mistyped_gemm_attribute(work: Path, name: str, retag: Callable[[AttributeProto], object], said: str) -> None:
    """Gemm attributes of the wrong type (seed 2 case 277: transB's tag turned FLOAT, its value
    left in ``i``; seed 10 cases 4643, 6853, 9542: a list or a string where a float belongs,
    which reached ``float()`` as an internal error): refused on load, naming the node."""
    model = fixture_model()
    retag(next(a for a in node(model, "/fc1/Gemm").attribute if a.name == name))
    save(model, work)
    for args in (
        ("prune", "model.onnx", "out.onnx", "--min-size", "0", "--pattern", "4:8", "--dead-channels", "-q"),
        ("inspect", "model.onnx"),
    ):
        error_line(cli(*args), ModelLoadError.exit_code, f"attribute '{name}' of node '/fc1/Gemm' (Gemm)", said)
    assert not (work / "out.onnx").exists()


# --------------------------------------------------------------------------- npy headers that lie


def npy_bomb(shape: tuple[int, ...] = (1 << 40, 64)) -> bytes:
    """An .npy that declares ``shape`` of float32 and holds 64 bytes."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x00" * 64


def zipped(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_npz_member_declaring_4_tib(work: Path, compression: int) -> None:
    """Seed 1 case 503: ``np.load`` allocated the declared array: MemoryError, exit 70."""
    (work / "calib.npz").write_bytes(zipped({"input": npy_bomb()}, compression))
    args = ("prune", MLP, "out.onnx", "--sparsity", "0.3", "--method", "refit", "--calibration", "calib.npz")
    error_line(
        cli(*args, "--samples", "16", "-q"),
        DataError.exit_code,
        "its array 'input' declares shape (1099511627776, 64) of float32",
        "the file stores 64 bytes",
    )


def test_npy_declaring_more_than_it_holds(work: Path) -> None:
    (work / "calib.npy").write_bytes(npy_bomb((1000, 64)))
    error_line(
        cli("prune", MLP, "out.onnx", "--sparsity", "0.3", "--method", "wanda", "--calibration", "calib.npy", "-q"),
        DataError.exit_code,
        "calib.npy: its array declares shape (1000, 64)",
    )


def test_labels_declaring_more_than_they_hold(work: Path) -> None:
    (work / "labels.npy").write_bytes(npy_bomb((1 << 40,)))
    error_line(
        cli("eval", MLP, "--data", "calib.npz", "--labels", "labels.npy", "--no-latency"),
        DataError.exit_code,
        "labels file labels.npy",
    )


def test_honest_npz_files_still_load(work: Path) -> None:
    from onnxprune.data.numpy_files import load_numpy

    np.savez_compressed(work / "z.npz", a=np.zeros((100, 64), np.float32), b=np.arange(5))
    np.save(work / "one.npy", np.ones((3, 4), np.float64))
    with load_numpy(work / "z.npz", "data file") as loaded:
        assert loaded["a"].shape == (100, 64)
    assert load_numpy(work / "one.npy", "data file").shape == (3, 4)


# --------------------------------------------------------------------------- options


def test_negative_seed(work: Path) -> None:
    """Seed 2 case 508: ``np.random.default_rng([-1, index])`` raised ValueError."""
    error_line(
        cli("prune", MLP, "out.onnx", "--sparsity", "0.1", "--criterion", "random", "--seed", "-1"),
        OptionError.exit_code,
        "--seed must be an integer >= 0",
    )


def test_threads_beyond_the_machine(work: Path) -> None:
    """Seed 3 case 410: ``--threads 100000`` crashed onnxruntime (SIGSEGV); 512 on 2 cores hung."""
    from onnxprune.latency import LatencySettings, max_threads

    error_line(
        cli("eval", MLP, "--data", "calib.npz", "--threads", "100000", "--repeats", "2", "--warmup", "0"),
        OptionError.exit_code,
        "threads 100000 is more than 4 per logical core",
        f"use at most {max_threads()}",
    )
    assert LatencySettings(threads=max_threads()).threads == max_threads()


# --------------------------------------------------------------------------- analyze --structural: non-finite weights


def test_analyze_structural_refuses_infinite_weights(work: Path) -> None:
    """Seed 3 case 361: a -inf weight reached the channel ranking (ValueError, exit 70); it is
    refused as ``prune --structured`` refuses it."""
    model = fixture_model()
    weight = next(t for t in model.graph.initializer if t.name == "fc2.weight")
    values = numpy_helper.to_array(weight).copy()
    values[3, 5] = -np.inf
    weight.CopyFrom(numpy_helper.from_array(values, "fc2.weight"))
    save(model, work)
    args = ("analyze", "model.onnx", "--data", "calib.npz", "--samples", "16", "--levels", "0.5", "--workers", "1")
    error_line(
        cli(*args, "--structural", "--no-cache"),
        UnsupportedModelError.exit_code,
        "weight 'fc2.weight' holds 1 infinite values",
        "channel groups are ranked by their weights",
    )


# --------------------------------------------------------------------------- seed 10, 10,000 cases


def run_process(folder: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own: a SIGABRT from onnxruntime would end pytest too."""
    return subprocess.run(
        [sys.executable, "-m", "onnxprune", *map(str, args)], cwd=folder, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("where", ["model", "option"])
def test_empty_input_is_never_run(work: Path, where: str) -> None:
    """Cases 2255 and 2727: an input of batch 0 (declared by the model, or asked for by
    ``--input-shape input:0x40``) reached onnxruntime, which aborts the process on it
    (SIGABRT, the staging folder left behind). A declared 0 counts as unknown (filled like a
    free dim on a synthetic input), and a model that declares one is refused as soon as data is
    opened for it (seed 11 case 1717: analyze's run on the data failed with onnxruntime's error,
    exit 70); a given 0 is refused."""
    model = fixture_model()
    extra: tuple[str, ...] = ("--input-shape", "input:0x64")
    if where == "model":
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
        extra = ()
    save(model, work)
    args = ("prune", "model.onnx", "out.onnx", "--sparsity", "0.7", "--method", "refit", "--calibration", "calib.npz")
    done = run_process(work, *args, "--samples", "16", *extra)
    assert done.returncode == (OptionError.exit_code if extra else UnsupportedModelError.exit_code), done.stderr
    lines = done.stderr.splitlines()
    assert lines and lines[-1].startswith(PREFIX) and "Traceback" not in done.stderr, done.stderr
    assert ("dimensions must be >= 1" if extra else "declares a size of 0 on axis 0") in lines[-1]
    assert sorted(p.name for p in work.iterdir()) == ["calib.npz", "model.onnx"]


def test_analyze_on_a_model_declaring_batch_0(work: Path) -> None:
    model = fixture_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    save(model, work)
    args = ("analyze", "model.onnx", "--data", "calib.npz", "--samples", "16", "--levels", "0.5", "--workers", "1")
    error_line(
        cli(*args, "--method", "sparsegpt", "--no-cache", "-q"),
        UnsupportedModelError.exit_code,
        "input 'input' [0, 64] declares a size of 0 on axis 0",
    )


def test_huge_declared_input_dims(work: Path) -> None:
    """Cases 4428, 9788: every input dim declared 2^31: numpy's "array is too big" (exit 70)
    when the synthetic batch was made; the model is refused for the shape it declares. With
    every dim at 2^31 the feature dim contradicts the first Gemm's weight (64), and onnxruntime
    refuses the model itself before any batch is made; with the batch dim alone at 2^31, the
    synthetic batch would be too big."""
    model = fixture_model()
    for dim in model.graph.input[0].type.tensor_type.shape.dim:
        dim.Clear()
        dim.dim_value = 2**31
    save(model, work)
    message = error_line(
        cli("prune", "model.onnx", "out.onnx", "--min-size", "1024", "--sparsity", "0.5", "-q"),
        UnsupportedModelError.exit_code,
    )
    # onnxruntime >= 1.2x refuses the model at load (its shape inference); older ones load it
    # and onnxprune refuses the synthetic batch the shape asks for: either is the model's fault
    refused = "onnxruntime cannot load the input model 'model.onnx'" in message and "Dimension mismatch" in message
    too_big = "input 'input' declares shape 2147483648x2147483648" in message
    assert refused or too_big, message
    assert not (work / "out.onnx").exists()
    model = fixture_model()
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_value = 2**31
    save(model, work)
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--min-size", "1024", "--sparsity", "0.5", "-q"),
        UnsupportedModelError.exit_code,
        "input 'input' declares shape 2147483648x",
        "more than the 1,073,741,824 (2^30) onnxprune makes for one input",
    )
    assert not (work / "out.onnx").exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("out.onnx/", "--external-data"), "'OUT'"),
        (("out.onnx", "--json", "result.json/"), "'--json'"),
        (("out.onnx", "--report", "report.html/"), "'--report'"),
    ],
    ids=["out-external-data", "json", "report"],
)
def test_output_with_trailing_slash(work: Path, args: tuple[str, ...], flag: str) -> None:
    """Cases 3381, 5668: ``out.onnx/`` was written as ``out.onnx`` plus ``out.onnx.data`` (pathlib
    drops the slash), files the command line never named; a trailing slash names a folder."""
    error_line(
        cli("prune", MLP, *args, "--sparsity", "0.3", "-q"),
        2,
        f"Invalid value for {flag}",
        "ends with '/', so it names a folder: give a file path such as",
    )
    assert sorted(p.name for p in work.iterdir()) == ["calib.npz"]


def test_eval_refuses_a_billion_synthetic_samples(work: Path) -> None:
    """Case 8381: ``eval --samples 1000000000`` on synthetic data ran for ever."""
    error_line(
        cli("eval", MLP, MLP, "--samples", "1000000000", "--repeats", "2", "--warmup", "0"),
        OptionError.exit_code,
        "--samples 1,000,000,000 asks for more synthetic samples than the 100,000",
    )
    error_line(
        cli("prune", MLP, "out.onnx", "--sparsity", "0.5", "--eval", "--eval-samples", "1000000000", "-q"),
        OptionError.exit_code,
        "asks for more synthetic samples",
    )
    assert not (work / "out.onnx").exists()


def test_cast_to_no_type(work: Path) -> None:
    """Case 1130: a bias Cast ``to=0`` (UNDEFINED): the structural pass asked numpy for dtype 0
    (KeyError, exit 70) when it made a bias; onnxruntime cannot run the input model, so the input
    is at fault, whichever pass meets it first."""
    model = onnx.load(str(MLP.with_name("mlp_digits_fp16.onnx")))
    next(n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == "fc3.bias_fp16").attribute[0].i = 0
    save(model, work)
    for args in (("--sparsity", "0.5"), ("--structured", "--sparsity", "0.3", "--data-free")):
        error_line(
            cli("prune", "model.onnx", "out.onnx", *args, "-q"),
            UnsupportedModelError.exit_code,
            "onnxruntime cannot run the input model 'model.onnx'",
            "Unsupported data type: 0",
        )
    assert not (work / "out.onnx").exists()


def test_name_that_is_not_utf8(work: Path) -> None:
    """Case 1497: a flipped byte in a node name; protobuf hands the name out as ``bytes``, and
    copying the node raised UnicodeDecodeError (exit 70)."""
    data = MLP.read_bytes().replace(b"/fc2/Gemm", b"/fc2/G\xe1mm")
    (work / "model.onnx").write_bytes(data)
    for args in (("prune", "model.onnx", "out.onnx", "--sparsity", "0.1", "-q"), ("inspect", "model.onnx")):
        error_line(cli(*args), ModelLoadError.exit_code, "not UTF-8", "/fc2/G\\xe1mm", "the file is corrupt")
    assert not (work / "out.onnx").exists()


def test_conv_weight_dims_reversed_beside_batchnorm(work: Path) -> None:
    """Case 2938: a Conv weight's dims reversed (12x16x3x3 -> 3x3x16x12; its bytes unchanged):
    the channel analysis broadcast the BN after it against 3 channels (ValueError, exit 70),
    then blamed itself; onnxruntime cannot run the input model."""
    model = onnx.load(str(MLP.parent / "masked" / "cnn_masked.onnx"))
    weight = next(t for t in model.graph.initializer if t.name == "inception.b3.0.weight")
    weight.dims[:] = list(reversed(weight.dims))
    save(model, work)
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--op-types", "Conv,MatMul", "--sparsity", "0.7", "-q"),
        UnsupportedModelError.exit_code,
        "onnxruntime cannot run the input model 'model.onnx'",
        "Conv",
    )
    assert not (work / "out.onnx").exists()


def test_quantize_deeply_nested_subgraphs(work: Path) -> None:
    """Seed 10 case 4756: 30 nested If subgraphs; onnxruntime's symbolic shape inference (the
    quantizer's pre-processing) walks every branch once per enclosing branch (12 levels: 34 s,
    16 levels: 120 s, 30: the fuzzer's hang); past MAX_PREPROCESS_DEPTH it is skipped and the
    model quantized as it is. (12 levels, not 30: onnxruntime 1.18 itself needs minutes to open
    a session on 30.)"""
    from onnxprune.quantize import MAX_PREPROCESS_DEPTH, subgraph_depth

    model = deep_if_model(12)
    assert subgraph_depth(model) == 12 > MAX_PREPROCESS_DEPTH
    save(model, work)
    args = ("prune", "model.onnx", "out.onnx", "--sparsity", "0.9", "--quantize", "int8", "-q", "--json", "r.json")
    done = run_process(work, *args)
    assert done.returncode == 0, done.stderr
    assert json.loads((work / "r.json").read_text())["quantize"]["preprocessed"] is False


def test_negative_input_dims_skip_the_exact_check(work: Path) -> None:
    """Seed 10 case 8895: input dims declared -5 (read as dynamic and guessed): the structural
    pass's exact check ran the model as it came on the guess, and onnxruntime's error escaped
    (exit 70); the check is skipped, and validation says which dims to give."""
    model = onnx.load(str(MLP.parent / "cnn_digits.onnx"))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[:3]:
        dim.Clear()
        dim.dim_value = -5
    save(model, work)
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--sparsity", "0.5", "-q"),
        OptionError.exit_code,
        "onnxruntime cannot run the model on any synthetic input onnxprune guessed",
        "--input-shape input:1xNxNx8 (declared [?, ?, ?, 8])",
    )
    assert not (work / "out.onnx").exists()


def test_negative_batch_dim_is_unknown_to_the_structural_pass(work: Path) -> None:
    """Seed 29 case 56: a transformer whose input is declared [-5, 40], pruned structurally with
    calibration data and ``--input-shape``: the channel analysis read -5 as a known size, and the
    model it ran for the channels' losses failed onnxruntime's shape inference (exit 70). A
    negative dim is as unknown as a dim_param there too (as in :mod:`onnxprune.compute`)."""
    model = onnx.load(str(MLP.parent / "transformer_mnist1d.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -5
    save(model, work)
    calib = np.load(MLP.parent / "transformer_mnist1d.calib.npz")
    np.savez(work / "calib.npz", **{k: v[:16] for k, v in calib.items()})
    args = ["--structured", "--sparsity", "0.5", "--calibration", "calib.npz", "--samples", "16"]
    result = cli("prune", "model.onnx", "out.onnx", *args, "--input-shape", "input:1x40", "-q")
    assert result.exit_code == 0, result.output
    assert (work / "out.onnx").exists()


def test_weight_that_is_also_a_graph_input_keeps_its_shape(work: Path) -> None:
    """Seed 12 case 6388: fc2.weight listed as a graph input too (a caller may feed it); the
    structural pass sliced it, so onnxruntime refused the model (analyze --structural: exit 70;
    prune --structured: "a bug in onnxprune"). Its channel groups are blocked instead."""
    model = fixture_model()
    weight = next(t for t in model.graph.initializer if t.name == "fc2.weight")
    model.graph.input.append(helper.make_tensor_value_info("fc2.weight", TensorProto.FLOAT, list(weight.dims)))
    save(model, work)
    result = cli("prune", "model.onnx", "out.onnx", "--structured", "--sparsity", "0.5", "--calibration", "calib.npz")
    assert result.exit_code == 10, result.stderr
    assert "is also a graph input (a caller may feed it): its shape must not change" in result.output
    args = ("analyze", "model.onnx", "--data", "calib.npz", "--samples", "16", "--levels", "0.5", "--workers", "1")
    result = cli(*args, "--structural", "--no-cache", "-q")
    assert result.exit_code == 2 and "no channel group that can lose channels" in result.stderr, result.stderr


def test_quantize_leaves_no_shape_inference_file_in_the_working_folder(work: Path) -> None:
    """Seed 12 case 6836: with input dims declared -5, onnxruntime's symbolic shape inference
    gives up and saves ``sym_shape_infer_temp.onnx`` (and its data) into the working folder; it
    now runs in the staging folder."""
    model = fixture_model()
    for dim in model.graph.input[0].type.tensor_type.shape.dim:
        dim.Clear()
        dim.dim_value = -5
    save(model, work)
    cli("prune", "model.onnx", "out.onnx", "--sparsity", "0.5", "--quantize", "int8", "-q")
    assert sorted(p.name for p in work.iterdir()) in (
        ["calib.npz", "model.onnx"],
        ["calib.npz", "model.onnx", "out.onnx"],
    )


def test_a_recurrent_weight_of_the_wrong_rank_is_not_a_weight(work: Path) -> None:
    """Seed 56 case 56: the LSTM's W saved as [1, 256] instead of [1, 256, 1]: discovery mapped the
    op's (out, in) axes (1, 2) through a rank-2 tensor (IndexError, exit 70). A slot naming an
    axis its tensor lacks now gives no axes (and a recurrent W or R of a known rank other than 3
    is no weight of the op); the plan that names the bias is refused, and the model is refused by
    onnxruntime."""
    from onnxprune.graph.discovery import discover

    model = onnx.load(str(MLP.parent / "lstm_mnist1d.onnx"))
    weight = next(t for t in model.graph.initializer if t.name == "lstm.W")
    del weight.dims[2]
    save(model, work)
    found = {w.name: w for w in discover(model).weights}
    assert found["lstm.R"].prunable and not found["lstm.W"].prunable
    (work / "plan.json").write_text(json.dumps({"lstm.B": 0.19, "fc.weight": 0.49}))
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--exclude", "weight", "--plan", "plan.json", "-q"),
        OptionError.exit_code,
        "the plan names 'lstm.B', which is not prunable here",
    )
    error_line(
        cli("prune", "model.onnx", "out.onnx", "--sparsity", "0.5", "-q"),
        4,
        "onnxruntime cannot run the input model 'model.onnx'",
    )
    assert not (work / "out.onnx").exists()


def test_a_slot_naming_an_axis_its_tensor_lacks_gives_no_axes() -> None:
    """The guard of the case above for any op: a weight slot whose (out, in) axes lie beyond the
    tensor's rank (a malformed model) agrees on no axes, where it raised IndexError."""
    from onnxprune.graph.discovery import Reader, _axes, _Trace
    from onnxprune.ops.spec import Slot

    reader = Reader("node", "LSTM", 1, "", "weight")
    assert _axes(_Trace(slots=[(reader, Slot("weight", 1, 2), (0, 1))])) == (None, None)
    assert _axes(_Trace(slots=[(reader, Slot("weight", 1, 2), (0, 1, 2))])) == (1, 2)
    assert _axes(_Trace(slots=[(reader, Slot("weight", 0, None), (1, 0))])) == (1, None)


def test_weights_too_large_to_calibrate_are_refused_by_name(work: Path) -> None:
    """Seed 67 case 304: a Conv weight of 3e38 everywhere (finite) before a batch norm; SparseGPT
    at 2:4 found its calibration terms infinite and raised ValueError inside the solver (exit
    70). Such a layer is not solved (pruned by magnitude, :func:`nonfinite_terms`), and the
    infinite activations it makes downstream are a data error, one line."""
    model = onnx.load(str(MLP.parent / "cnn_digits.onnx"))
    weight = next(t for t in model.graph.initializer if t.name == "block.conv2.weight")
    weight.CopyFrom(numpy_helper.from_array(np.full(tuple(weight.dims), 3e38, np.float32), weight.name))
    save(model, work)
    (work / "calib.npz").write_bytes((MLP.parent / "cnn_digits.calib.npz").read_bytes())
    args = ("--pattern", "2:4", "--method", "sparsegpt", "--calibration", "calib.npz", "--samples", "16", "-q")
    error_line(cli("prune", "model.onnx", "out.onnx", *args), DataError.exit_code, "NaN/inf")
    assert not (work / "out.onnx").exists()


def test_a_layer_task_with_overflowing_terms_names_them() -> None:
    from types import SimpleNamespace

    from onnxprune.reconstruct.layer import nonfinite_terms

    arrays = {"w": np.ones((1, 2, 2)), "magnitude": np.zeros((1, 2, 2), bool), "H": np.ones((1, 2, 2))}
    task = SimpleNamespace(**arrays, sqnorm=np.ones((1, 2)), CW=np.array([[[np.inf, 0.0]]]), energy_ref=None)
    task.residual = SimpleNamespace(cross=np.zeros((2, 2)), cross_ref=np.array([[np.nan]]))
    assert nonfinite_terms(task) == ["CW", "cross_ref"]
    task.CW, task.residual = np.zeros((1, 1, 2)), None
    assert nonfinite_terms(task) == []
