"""Prune then quantize: int8 through onnxruntime.quantization keeps every pruned zero a zero.

Checked on the fixtures, counting from the written files (not from the result): each int8
weight against the float weight it came from (position by position, and dequantized),
held-out accuracy against the pruned float model, onnx.checker and onnxruntime, the input
untouched; the CLI path, and one-line errors that write nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import MissingKernelError, OptionError, OutputError, UnsupportedModelError, ValidationError
from onnxprune.quantize import METADATA_KEY, DatasetReader, quantize_file

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PREFIX = "onnxprune: error: "


def _onnxruntime_runs_conv_integer() -> bool:
    """Whether this onnxruntime has a CPU ConvInteger kernel (added in 1.24): dynamic int8 of a Conv needs it."""
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        [numpy_helper.from_array(np.ones((1, 1, 1, 1), np.int8), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


CONV_INTEGER = _onnxruntime_runs_conv_integer()
needs_conv_integer = pytest.mark.skipif(
    not CONV_INTEGER, reason=f"onnxruntime {ort.__version__} has no ConvInteger kernel (dynamic int8 of a Conv)"
)


def _accuracy(path: Path, name: str) -> float:
    x = np.load(FIXTURES / f"{name}.test.npz")["input"]
    y = np.load(FIXTURES / f"{name}.test_labels.npy")
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return float(np.mean(logits.argmax(1) == y))


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _same_layout(float_weight: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other`` in the float weight's layout (the quantizer may swap the last two axes)."""
    if other.shape == float_weight.shape:
        return other
    swapped = np.swapaxes(other, -1, -2)
    assert swapped.shape == float_weight.shape, (other.shape, float_weight.shape)
    return swapped


#: Where a quantized op reads its integer weight (the test's own table, not the library's).
_WEIGHT_SLOT = {"DequantizeLinear": 0, "ConvInteger": 1, "MatMulInteger": 1}


def _int8_weights(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every int8 initializer read as a weight, with its scale, both found by following the graph:
    DequantizeLinear(q, scale); or ConvInteger/MatMulInteger(x_q, q) whose output is multiplied by
    ``x_scale · scale`` (the Mul that reads the activation's DynamicQuantizeLinear scale)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found = {}
    for node in model.graph.node:
        slot = _WEIGHT_SLOT.get(node.op_type)
        if slot is None or node.input[slot] not in inits or inits[node.input[slot]].dtype != np.int8:
            continue
        q = inits[node.input[slot]]
        if node.op_type == "DequantizeLinear":
            scale = inits[node.input[1]]
        else:
            activation_scale = producer[node.input[0]].output[1]
            mul = next(n for n in model.graph.node if n.op_type == "Mul" and activation_scale in n.input)
            scale = inits[next(name for name in mul.input if name != activation_scale)]
        found[node.input[slot]] = (q, scale)
    return found


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, onnxprune.PruneRun]]:
    """cnn_digits and mlp_digits pruned to 50 % (magnitude), as float models."""
    folder = tmp_path_factory.mktemp("pruned")
    runs = {}
    for name in ("cnn_digits", "mlp_digits"):
        run = onnxprune.prune_file(
            FIXTURES / f"{name}.onnx", folder / f"{name}.p50.onnx", onnxprune.PruneConfig(sparsity=0.5)
        )
        runs[name] = (run.saved.path, run)
    return runs


@pytest.fixture(scope="module")
def calib() -> dict[str, onnxprune.data.Dataset]:
    return {
        name: onnxprune.calibration_data(FIXTURES / f"{name}.onnx", FIXTURES / f"{name}.calib.npz", samples=64)
        for name in ("cnn_digits", "mlp_digits")
    }


# --------------------------------------------------------------------------- the library


@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("name", ["cnn_digits", "mlp_digits"])
def test_every_pruned_zero_is_an_int8_zero(tmp_path, pruned, calib, name, mode):
    if name == "cnn_digits" and mode == "dynamic" and not CONV_INTEGER:
        pytest.skip(f"onnxruntime {ort.__version__} has no ConvInteger kernel")
    source, run = pruned[name]
    before = source.read_bytes()
    out = tmp_path / f"{name}.int8.onnx"
    result = quantize_file(source, out, mode=mode, calibration=calib[name] if mode == "static" else None)

    # counted again from the files: float weights of the pruned model, int8 weights of the output
    floats, int8 = _initializers(source), _int8_weights(onnx.load(str(out)))
    assert {w.stored for w in result.weights} == set(int8), "every int8 weight is checked"
    pruned_names = {layer.name for layer in run.result.pruned}
    assert pruned_names <= {w.name for w in result.weights}, "every pruned weight is quantized"
    layers = 7 if name == "cnn_digits" else 3  # Conv, Gemm (onnxruntime >= 1.32 also quantizes BN scales in QDQ)
    assert len(result.weights) == layers if mode == "dynamic" else len(result.weights) >= layers
    zeros_before = zeros_after = 0
    for weight in result.weights:
        w, (stored, scale) = floats[weight.name], int8[weight.stored]
        q = _same_layout(w, stored)
        assert np.all(q[w == 0] == 0), f"{weight.name}: a float zero is not an int8 zero"
        if scale.size > 1:  # per channel: the scale runs along the quantized tensor's channel axis
            axis = next(d for d, n in enumerate(stored.shape) if n == scale.size)
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale = _same_layout(w, np.broadcast_to(scale.reshape(shape), stored.shape))
        dequantized = q.astype(np.float32) * scale
        assert np.all(dequantized[w == 0] == 0.0)
        assert np.max(np.abs(dequantized - w)) <= np.max(np.abs(w)) / 127  # at most one step off
        zeros_before += int(np.count_nonzero(w == 0))
        zeros_after += int(np.count_nonzero(q == 0))
        assert (weight.zeros_before, weight.zeros_after) == (
            int(np.count_nonzero(w == 0)),
            int(np.count_nonzero(q == 0)),
        )
    assert result.zeros_before == zeros_before >= run.result.zeros_after > 0
    assert result.zeros_after == zeros_after >= zeros_before
    assert result.weights_quantized == len(int8)
    assert result.to_dict()["weights"][0].keys() >= {"name", "stored", "zeros_before", "zeros_after", "layout"}

    # a real int8 model: smaller, validated, accurate, input untouched, provenance recorded
    assert result.bytes_after == out.stat().st_size < 0.4 * result.bytes_before
    assert result.validation.outputs_finite
    onnx.checker.check_model(str(out), full_check=True)
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert ("DynamicQuantizeLinear" in ops) if mode == "dynamic" else ("QuantizeLinear" in ops)
    assert abs(_accuracy(out, name) - _accuracy(source, name)) <= 0.02
    assert source.read_bytes() == before
    record = json.loads(_metadata(out)[METADATA_KEY])
    assert record["mode"] == mode and record["zeros_before"] == zeros_before and record["symmetric"]
    assert not list(tmp_path.glob(".*.tmp")), "the staging folder is removed"


def test_asymmetric_weights_would_be_refused(tmp_path, pruned, monkeypatch):
    """The zero check is real: an asymmetric weight quantization (zero point != 0) is caught."""
    import onnxruntime.quantization as q

    original = q.quantize_dynamic

    def asymmetric(*args, **kwargs):
        kwargs["extra_options"] = {**kwargs["extra_options"], "WeightSymmetric": False}
        kwargs["per_channel"] = False  # onnxruntime 1.18-1.20.0 keep per-channel zero points 0 whatever is asked
        return original(*args, **kwargs)

    monkeypatch.setattr(q, "quantize_dynamic", asymmetric)
    source, _ = pruned["mlp_digits"]
    out = tmp_path / "asym.onnx"
    with pytest.raises(ValidationError, match=r"lost \d+ of its \d+ zeros") as info:
        quantize_file(source, out)
    assert "\n" not in str(info.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def _rewrite_quantizer_output(monkeypatch, edit) -> None:
    """Let onnxruntime's quantize_dynamic write its model, then ``edit`` the ModelProto it wrote."""
    import onnxruntime.quantization as q

    original = q.quantize_dynamic

    def rewritten(model_input, model_output, *args, **kwargs):
        original(model_input, model_output, *args, **kwargs)
        model = onnx.load(str(model_output))
        edit(model)
        onnx.save_model(model, str(model_output))

    monkeypatch.setattr(q, "quantize_dynamic", rewritten)


def _rename_int8_initializers(model: onnx.ModelProto) -> None:
    """Give every int8 initializer a name unlike its float source's (as a new onnxruntime might)."""
    renames = {t.name: f"w{i}" for i, t in enumerate(model.graph.initializer) if t.data_type == TensorProto.INT8}
    for tensor in model.graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]


def test_renamed_int8_weights_are_still_checked(tmp_path, pruned, monkeypatch):
    """The int8 weights are matched to their float sources by the graph, whatever they are called."""
    source, run = pruned["mlp_digits"]
    plain = quantize_file(source, tmp_path / "plain.onnx")
    _rewrite_quantizer_output(monkeypatch, _rename_int8_initializers)
    renamed = quantize_file(source, tmp_path / "renamed.onnx")
    assert renamed.weights_quantized == plain.weights_quantized == 3
    assert all(w.stored.startswith("w") and w.stored[1:].isdigit() for w in renamed.weights)
    assert [(w.name, w.zeros_before, w.zeros_after, w.layout) for w in renamed.weights] == [
        (w.name, w.zeros_before, w.zeros_after, w.layout) for w in plain.weights
    ]
    assert renamed.zeros_before == run.result.zeros_after > 0


def test_a_renamed_int8_weight_that_lost_a_zero_fails_loudly(tmp_path, pruned, monkeypatch):
    source, _ = pruned["mlp_digits"]
    floats = _initializers(source)

    def damage(model: onnx.ModelProto) -> None:
        _rename_int8_initializers(model)
        for tensor in model.graph.initializer:  # the Gemm weight, stored transposed: one pruned zero made 1
            if tensor.data_type == TensorProto.INT8 and tuple(tensor.dims) == floats["fc1.weight"].shape[::-1]:
                q = numpy_helper.to_array(tensor).copy()
                q[np.swapaxes(floats["fc1.weight"], 0, 1) == 0] = 1
                tensor.CopyFrom(numpy_helper.from_array(q, tensor.name))

    _rewrite_quantizer_output(monkeypatch, damage)
    out = tmp_path / "q.onnx"
    with pytest.raises(ValidationError, match=r"int8 weight 'fc1.weight' lost \d+ of its \d+ zeros") as info:
        quantize_file(source, out)
    assert "\n" not in str(info.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_int8_weight_that_cannot_be_traced_fails_loudly(tmp_path, pruned, monkeypatch):
    """Never skipped: an int8 weight whose float source the graph does not show is an error."""
    source, _ = pruned["mlp_digits"]

    def hide(model: onnx.ModelProto) -> None:  # every tensor the quantizer writes gets a new name
        outputs = {out for node in model.graph.node for out in node.output} - {o.name for o in model.graph.output}
        renames = {name: f"t{i}" for i, name in enumerate(sorted(outputs))}
        for node in model.graph.node:
            node.input[:] = [renames.get(name, name) for name in node.input]
            node.output[:] = [renames.get(name, name) for name in node.output]

    _rewrite_quantizer_output(monkeypatch, hide)
    out = tmp_path / "q.onnx"
    with pytest.raises(
        ValidationError, match=r"int8 weight '.+' \(read by MatMulInteger .*\) cannot be traced"
    ) as info:
        quantize_file(source, out)
    assert "\n" not in str(info.value)
    assert not out.exists() and not list(tmp_path.iterdir())


@needs_conv_integer
def test_constant_node_weights_are_quantized(tmp_path):
    """Weights held in Constant nodes are moved to initializers first (the quantizer needs them there)."""
    source = FIXTURES / "cnn_digits_const.onnx"
    result = quantize_file(source, tmp_path / "q.onnx")
    assert result.constants_lifted > 0 and result.weights_quantized == 7
    assert abs(_accuracy(result.saved.path, "cnn_digits") - _accuracy(source, "cnn_digits")) <= 0.02


def test_external_data_in_and_out(tmp_path, pruned):
    source, _ = pruned["mlp_digits"]
    ext = tmp_path / "ext.onnx"
    onnx.save_model(
        onnx.load(str(source)), str(ext), save_as_external_data=True, location="ext.onnx.data", size_threshold=0
    )
    result = quantize_file(ext, tmp_path / "q.onnx")
    assert result.saved.data_path == tmp_path / "q.onnx.data" and result.saved.data_path.is_file()
    assert result.bytes_after == (tmp_path / "q.onnx").stat().st_size + result.saved.data_path.stat().st_size
    assert abs(_accuracy(result.saved.path, "mlp_digits") - _accuracy(source, "mlp_digits")) <= 0.02


def test_prune_file_with_quantize(tmp_path, calib):
    config = onnxprune.PruneConfig(sparsity=0.5, method="sparsegpt")
    run = onnxprune.prune_file(
        FIXTURES / "mlp_digits.onnx",
        tmp_path / "out.onnx",
        config,
        calibration=calib["mlp_digits"],
        quantize=onnxprune.QuantizeConfig(mode="static"),
    )
    assert run.quantized is not None and run.saved == run.quantized.saved
    assert run.quantized.mode == "static" and run.quantized.zeros_before >= run.result.zeros_after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # the pruned float model was staged only
    meta = _metadata(tmp_path / "out.onnx")
    assert METADATA_KEY in meta and any(key.startswith("onnxprune.") and key != METADATA_KEY for key in meta)
    assert _accuracy(tmp_path / "out.onnx", "mlp_digits") >= 0.95


def test_dataset_reader_reads_every_sample_in_order(calib):
    data = calib["mlp_digits"]
    reader = DatasetReader(data, batch_size=20)
    first = np.concatenate([feeds["input"] for feeds in reader])
    assert first.shape[0] == data.num_samples() == 64
    assert reader.get_next() is None
    reader.rewind()
    again = np.concatenate([feeds["input"] for feeds in reader])
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, np.load(FIXTURES / "mlp_digits.calib.npz")["input"][:64])


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, pruned):
    source, _ = pruned["mlp_digits"]
    out = tmp_path / "q.onnx"
    cases = [
        (OptionError, "must be one of dynamic, static", {"mode": "int4"}),
        (OptionError, "mode='static' needs calibration data", {"mode": "static"}),
        (OptionError, "op_types to quantize is empty", {"op_types": ()}),
    ]
    for error, fragment, kwargs in cases:
        with pytest.raises(error, match=fragment) as info:
            quantize_file(source, out, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(OutputError, match="is the input model"):
        quantize_file(source, source)
    with pytest.raises(UnsupportedModelError, match="no weight to quantize") as info:
        quantize_file(FIXTURES / "mlp_digits_fp16.onnx", out)
    assert "\n" not in str(info.value) and ".tmp" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_onnxruntime_advice_goes_to_debug(tmp_path, pruned, caplog):
    """Without pre-processing onnxruntime warns on the root logger; the user sees none of it."""
    source, _ = pruned["mlp_digits"]
    with caplog.at_level(logging.DEBUG):
        quantize_file(source, tmp_path / "q.onnx", preprocess=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    demoted = [r.getMessage() for r in caplog.records if r.name == "onnxprune.quantize" and r.levelno == logging.DEBUG]
    assert any("pre-processing" in m for m in demoted), demoted
    assert logging.getLogger("onnxruntime").level == logging.NOTSET  # restored


def test_nothing_of_the_input_changes(tmp_path):
    """The dense input quantizes too; its float weights, file and names are left as they were."""
    source = FIXTURES / "mlp_digits.onnx"
    before = source.read_bytes()
    result = quantize_file(source, tmp_path / "q.onnx")
    assert source.read_bytes() == before
    assert result.zeros_before == 0 and result.weights_quantized == 3
    floats = _initializers(source)
    assert all(floats[w.name].dtype == np.float32 and floats[w.name].shape == w.shape for w in result.weights)


def test_a_kernel_onnxruntime_lacks_is_the_runtimes_limit_not_a_bug(tmp_path, pruned, monkeypatch):
    """onnxruntime before 1.24 has no ConvInteger kernel: the error says so and what to do (simulated
    here on any version; on an old onnxruntime the real one is met by the CLI test below)."""
    from onnxprune import runtime

    real = runtime.session

    def old_onnxruntime(path, *args, **kwargs):
        if any(n.op_type == "ConvInteger" for n in onnx.load(str(path), load_external_data=False).graph.node):
            raise RuntimeError(
                "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
                "ConvInteger(10) node with name '/stem/stem.0/Conv_quant'"
            )
        return real(path, *args, **kwargs)

    monkeypatch.setattr(runtime, "session", old_onnxruntime)
    source, _ = pruned["cnn_digits"]
    out = tmp_path / "q.onnx"
    with pytest.raises(MissingKernelError) as info:
        quantize_file(source, out)
    message = str(info.value)
    assert "has no kernel for ConvInteger(10)" in message and "the runtime lacks it" in message
    assert "upgrade onnxruntime" in message and "static mode" in message and "bug" not in message
    assert info.value.exit_code == UnsupportedModelError.exit_code and "\n" not in message
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_kernel_is_read_from_onnxruntime_itself(tmp_path):
    """A bfloat16 MatMul, which onnxruntime's CPU provider does not implement: the real message."""
    from onnx import helper

    from onnxprune.validate import validate_model

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, 4])],
        [helper.make_tensor("w", TensorProto.BFLOAT16, [4, 4], [0] * 16)],
    )
    path = tmp_path / "bf16.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception:
        pass
    else:
        pytest.skip(f"onnxruntime {ort.__version__} runs a bfloat16 MatMul on the CPU")
    with pytest.raises(MissingKernelError, match=r"has no kernel for MatMul\(13\) with these types \(node 'mm'\)"):
        validate_model(path, reference=FIXTURES / "mlp_digits.onnx")


# --------------------------------------------------------------------------- the command line


def _cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@needs_conv_integer
def test_cli_prune_quantize_dynamic_with_json_and_eval(tmp_path):
    source = FIXTURES / "cnn_digits.onnx"
    before = source.read_bytes()
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = _cli(
        "prune", source, out, "--sparsity", "0.5", "--quantize", "int8", "--json", report,
        "--data", FIXTURES / "cnn_digits.test.npz", "--labels", FIXTURES / "cnn_digits.test_labels.npy",
        "--no-latency",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "int8 (dynamic, per channel): 7 weight tensors quantized, 22,272 of 22,272 zeros kept" in result.output
    data = json.loads(report.read_text())
    assert data["quantize"]["mode"] == "dynamic" and data["quantize"]["zeros_before"] == 22272
    assert data["quantize"]["zeros_after"] >= 22272
    comp_in, comp_out = data["model"]["compressed_bytes"]
    assert comp_out < 0.3 * comp_in  # int8 + zeros: under a third of the dense compressed size
    assert data["model"]["file_bytes"][1] == out.stat().st_size
    assert any(t.data_type == TensorProto.INT8 for t in onnx.load(str(out)).graph.initializer)
    assert "top-1" in result.output and "98." in result.output  # the evaluation compares IN and OUT
    assert source.read_bytes() == before


def test_cli_prune_quantize_static_reads_the_calibration_data(tmp_path):
    out = tmp_path / "out.onnx"
    result = _cli(
        "prune", FIXTURES / "mlp_digits.onnx", out, "--sparsity", "0.5", "--quantize", "int8",
        "--quantize-mode", "static", "--calibration", FIXTURES / "mlp_digits.calib.npz", "--samples", "32", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and "weights are zero" in lines[0] and lines[1].startswith("int8 (static")
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(out)).graph.node}
    assert abs(_accuracy(out, "mlp_digits") - 0.9733) <= 0.02


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--quantize", "int8", "--quantize-mode", "static"), "static needs calibration data"),
        (("--quantize", "int4"), "Invalid value for '--quantize'"),
        (("--quantize-mode", "static"), "needs --quantize int8"),
        (("--quantize-mode", "dynamic", "--calibration", "c.npz"), "needs --quantize int8"),
        (("--quantize", "int8", "--calibration", FIXTURES / "mlp_digits.calib.npz"), "magnitude uses no data"),
    ],
)
def test_cli_quantize_errors_are_one_line_exit_2(tmp_path, args, fragment):
    source = FIXTURES / "mlp_digits.onnx"
    before = source.read_bytes()
    result = _cli("prune", source, tmp_path / "out.onnx", "--sparsity", "0.5", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir()) and source.read_bytes() == before


@pytest.mark.skipif(CONV_INTEGER, reason="this onnxruntime has a ConvInteger kernel")
def test_cli_dynamic_int8_conv_on_an_onnxruntime_without_conv_integer(tmp_path):
    result = _cli("prune", FIXTURES / "cnn_digits.onnx", tmp_path / "o.onnx", "--sparsity", "0.5", "--quantize", "int8")
    assert result.exit_code == UnsupportedModelError.exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(PREFIX) and "has no kernel for ConvInteger" in lines[-1] and "bug" not in lines[-1]
    assert not list(tmp_path.iterdir())


def test_cli_unquantizable_model_is_one_line(tmp_path):
    result = _cli(
        "prune", FIXTURES / "mlp_digits_fp16.onnx", tmp_path / "o.onnx", "--sparsity", "0.5", "--quantize", "int8"
    )
    assert result.exit_code == UnsupportedModelError.exit_code
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(PREFIX) and "no weight to quantize" in lines[-1] and ".tmp" not in lines[-1]
    assert not list(tmp_path.iterdir())
