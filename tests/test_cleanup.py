"""Tests of :mod:`onnxprune.graph.cleanup`: BatchNormalization folding, constant folding,
dead code, topological order and refreshed shapes, checked on small onnx.helper models and
on every fixture, in onnxruntime and with ``onnx.checker``."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

import builders as b
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.graph import cleanup as cleanup_module
from onnxprune.graph.cleanup import GROWTH_LIMIT, cleanup, fold_batchnorm, toposort

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def run(model: ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    # from a file: onnxruntime 1.24-1.28 cannot optimize a Conv+BN inside an If branch of a model given as bytes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        onnx.save_model(model, str(path))
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_a_session_from_bytes_falls_back_to_a_file_when_onnxruntime_wants_a_path(monkeypatch):
    """onnxruntime 1.24-1.28 refuse some models given as bytes ("model_path must not be empty")."""
    from onnxprune import runtime

    real, seen = ort.InferenceSession, []

    def picky(source, *args, **kwargs):
        seen.append(type(source).__name__)
        if isinstance(source, bytes):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : initializer.cc:76 model_path must not be empty.")
        return real(source, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", picky)
    model = onnx.load(str(Path(__file__).resolve().parent.parent / "fixtures" / "mlp_digits.onnx"))
    session = runtime.session(model.SerializeToString())
    assert seen == ["bytes", "str"]
    x = np.zeros((2, 64), np.float32)
    np.testing.assert_allclose(
        session.run(None, {"input": x})[0], real(model.SerializeToString()).run(None, {"input": x})[0]
    )
    with pytest.raises(RuntimeError, match="model_path"):  # other failures are not retried
        monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("model_path")))
        runtime.session(b"junk")


def copy(model: ModelProto) -> ModelProto:
    out = ModelProto()
    out.CopyFrom(model)
    return out


def assert_same_outputs(before: ModelProto, after: ModelProto, feeds: dict[str, np.ndarray], tol: float = 1e-5):
    for want, got in zip(run(before, feeds), run(after, feeds), strict=True):
        assert got.shape == want.shape
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale)


def ops(model: ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def bn_params(prefix: str, channels: int, seed: int, dtype: type = np.float32) -> list[TensorProto]:
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 2.0, channels)
    beta = rng.standard_normal(channels)
    mean = rng.standard_normal(channels)
    var = rng.uniform(0.2, 3.0, channels)
    names = ("scale", "B", "mean", "var")
    return [b.init(f"{prefix}_{n}", v.astype(dtype)) for n, v in zip(names, (gamma, beta, mean, var), strict=True)]


def bn(x: str, y: str, prefix: str, **attrs: object) -> NodeProto:
    inputs = [x, *(f"{prefix}_{n}" for n in ("scale", "B", "mean", "var"))]
    return b.node("BatchNormalization", inputs, [y], prefix, **attrs)


def unshaped(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, b.FLOAT, None)


def checked(model: ModelProto) -> ModelProto:
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------------------
# BatchNormalization folding


def conv_bn(*, group: int = 1, bias: bool = True, dtype: int = b.FLOAT, epsilon: float = 1e-5) -> ModelProto:
    """X[1,8,6,6] -> Conv(16 out, groups) -> BN -> Relu -> Y."""
    np_dtype = np.float16 if dtype == b.FLOAT16 else np.float32
    inits = [b.init("W", b.rand((16, 8 // group, 3, 3), 1, np_dtype)), *bn_params("bn", 16, 2, np_dtype)]
    conv_inputs = ["X", "W"]
    if bias:
        inits.append(b.init("Cb", b.rand((16,), 3, np_dtype)))
        conv_inputs.append("Cb")
    nodes = [
        b.node("Conv", conv_inputs, ["c"], "conv", pads=[1, 1, 1, 1], group=group),
        bn("c", "y", "bn", epsilon=epsilon),
        b.node("Relu", ["y"], ["Y"], "relu"),
    ]
    return b.model(nodes, [b.value("X", ("N", 8, 6, 6), dtype)], [b.value("Y", ("N", 16, 6, 6), dtype)], inits)


def feeds_for(model: ModelProto, **shapes: Sequence[int]) -> dict[str, np.ndarray]:
    out = {}
    rng = np.random.default_rng(7)
    for value in model.graph.input:
        if value.name in {t.name for t in model.graph.initializer}:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        shape = shapes.get(value.name) or [d.dim_value or 2 for d in value.type.tensor_type.shape.dim]
        out[value.name] = rng.standard_normal(shape).astype(dtype)
    return out


@pytest.mark.parametrize(
    ("group", "bias"),
    [(1, True), (1, False), (8, True), (2, False)],
    ids=["conv", "conv-no-bias", "depthwise", "grouped-no-bias"],
)
def test_conv_bn_folds(group, bias):
    model = conv_bn(group=group, bias=bias)
    before = copy(model)
    result = cleanup(model)
    assert result.bn_folded == ("bn",) and result.bn_kept == ()
    assert ops(checked(model)) == ["Conv", "Relu"]
    conv = model.graph.node[0]
    assert conv.output[0] == "y" and len(conv.input) == 3  # bias created when missing
    assert result.initializers_removed == 4  # the BN's scale, B, mean and var
    assert {t.name for t in model.graph.initializer} == set(conv.input[1:])
    assert_same_outputs(before, model, feeds_for(model))


def test_conv_bn_maths_matches_numpy():
    """W' = W·s per output channel, b' = (b − μ)·s + β, with the epsilon attribute."""
    model = conv_bn(epsilon=0.3)
    arrays = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    s = arrays["bn_scale"] / np.sqrt(arrays["bn_var"] + 0.3)
    fold_batchnorm(model)
    got = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(got["W"], arrays["W"] * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(got["Cb"], (arrays["Cb"] - arrays["bn_mean"]) * s + arrays["bn_B"], rtol=1e-5)


def test_conv_bn_float16_keeps_dtype():
    model = conv_bn(dtype=b.FLOAT16)
    before = copy(model)
    result = cleanup(model)
    assert result.bn_folded == ("bn",)
    assert all(t.data_type == TensorProto.FLOAT16 for t in checked(model).graph.initializer)
    # float16 rounding of the folded weights: compare at float16 precision
    assert_same_outputs(before, model, feeds_for(model), tol=2e-2)


def test_conv_transpose_grouped_bn_folds():
    inits = [b.init("W", b.rand((4, 3, 3, 3), 4)), b.init("Wb", b.rand((6,), 5)), *bn_params("bn", 6, 6)]
    nodes = [b.node("ConvTranspose", ["X", "W", "Wb"], ["c"], "deconv", group=2), bn("c", "Y", "bn")]
    model = b.model(nodes, [b.value("X", (1, 4, 5, 5))], [b.value("Y", (1, 6, 7, 7))], inits)
    before = copy(model)
    result = cleanup(model)
    assert result.bn_folded == ("bn",)
    assert ops(checked(model)) == ["ConvTranspose"] and model.graph.node[0].output[0] == "Y"
    assert_same_outputs(before, model, feeds_for(model))


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_gemm_bn_folds(trans_b, with_c):
    shape = (16, 32) if trans_b else (32, 16)
    inits = [b.init("W", b.rand(shape, 7)), *bn_params("bn", 16, 8)]
    inputs = ["X", "W"]
    if with_c:
        inits.append(b.init("C", b.rand((1, 16), 9)))
        inputs.append("C")
    nodes = [
        b.node("Gemm", inputs, ["g"], "gemm", transB=trans_b, alpha=0.5, beta=2.0),
        bn("g", "Y", "bn"),
    ]
    model = b.model(nodes, [b.value("X", ("N", 32))], [b.value("Y", ("N", 16))], inits)
    before = copy(model)
    result = cleanup(model)
    assert result.bn_folded == ("bn",)
    gemm = checked(model).graph.node[0]
    assert ops(model) == ["Gemm"] and gemm.output[0] == "Y" and len(gemm.input) == 3
    assert helper.get_node_attr_value(gemm, "beta") == 1.0
    assert_same_outputs(before, model, feeds_for(model, X=(5, 32)))


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_bn_folds(bias_first):
    inits = [b.init("W", b.rand((32, 16), 10)), b.init("c", b.rand((16,), 11)), *bn_params("bn", 16, 12)]
    add_inputs = ["c", "m"] if bias_first else ["m", "c"]
    nodes = [b.node("MatMul", ["X", "W"], ["m"], "mm"), b.node("Add", add_inputs, ["a"], "add"), bn("a", "Y", "bn")]
    model = b.model(nodes, [b.value("X", ("N", 32))], [b.value("Y", ("N", 16))], inits)
    before = copy(model)
    result = cleanup(model)
    assert result.bn_folded == ("bn",)
    assert ops(checked(model)) == ["MatMul", "Add"] and model.graph.node[1].output[0] == "Y"
    assert result.initializers_removed == 4
    assert_same_outputs(before, model, feeds_for(model, X=(3, 32)))


def test_matmul_bn_without_add_gets_a_bias():
    inits = [b.init("W", b.rand((32, 16), 10)), *bn_params("bn", 16, 12)]
    nodes = [b.node("MatMul", ["X", "W"], ["m"], "mm"), bn("m", "Y", "bn")]
    model = b.model(nodes, [b.value("X", ("N", 32))], [b.value("Y", ("N", 16))], inits)
    before = copy(model)
    result = cleanup(model)
    assert result.bn_folded == ("bn",)
    assert ops(checked(model)) == ["MatMul", "Add"] and model.graph.node[1].output[0] == "Y"
    assert_same_outputs(before, model, feeds_for(model, X=(3, 32)))


def test_matmul_bn_on_rank_3_is_kept():
    """BN's channel axis 1 of a [N, T, K] product is T, not the weight's output axis."""
    inits = [b.init("W", b.rand((32, 5), 10)), *bn_params("bn", 5, 12)]
    nodes = [b.node("MatMul", ["X", "W"], ["m"], "mm"), bn("m", "Y", "bn")]
    model = b.model(nodes, [b.value("X", (2, 5, 32))], [b.value("Y", (2, 5, 5))], inits)
    result = cleanup(model)
    assert result.bn_folded == ()
    assert result.bn_kept == (("bn", "the MatMul output has rank 3, not 2: BN's channel axis is not its last axis"),)
    assert "BatchNormalization" in ops(model)


def test_bn_kept_when_conv_output_has_another_reader():
    model = conv_bn()
    model.graph.node.append(b.node("Sigmoid", ["c"], ["Z"], "side"))
    model.graph.output.append(b.value("Z", ("N", 16, 6, 6)))
    before = copy(model)
    result = cleanup(model)
    assert result.bn_folded == ()
    assert result.bn_kept == (("bn", "its input 'c' is also read by side"),)
    assert ops(checked(model)).count("BatchNormalization") == 1
    assert result.initializers_removed == 0
    assert_same_outputs(before, model, feeds_for(model))


def test_bn_kept_reasons():
    """Relu producer, training mode and a computed variance each keep their BN."""
    inits = [b.init("W", b.rand((8, 4, 1, 1), 1)), *bn_params("a", 4, 2), *bn_params("t", 8, 3), *bn_params("v", 8, 4)]
    nodes = [
        b.node("Relu", ["X"], ["r"], "relu"),
        bn("r", "ya", "a"),
        b.node("Conv", ["X", "W"], ["c"], "conv"),
        b.node("Abs", ["v_var"], ["v_abs"], "abs"),
        b.node(
            "BatchNormalization", ["c", "v_scale", "v_B", "v_mean", "v_abs"], ["yv"], "v"
        ),  # variance computed at run time
    ]
    model = b.model(
        nodes, [b.value("X", (1, 4, 3, 3))], [b.value("ya", (1, 4, 3, 3)), b.value("yv", (1, 8, 3, 3))], inits
    )
    training = copy(model)
    training.graph.node.append(bn("ya", "yt", "t", training_mode=1))
    folded, kept = fold_batchnorm(training)
    assert folded == []
    assert dict(kept) == {
        "a": "producer is Relu",
        "v": "its variance 'v_abs' is computed at run time, not stored",
        "t": "training mode (training_mode=1)",
    }
    before = copy(model)
    cleanup(model)
    assert ops(model).count("BatchNormalization") == 2
    assert_same_outputs(before, model, feeds_for(model))


def test_shared_weight_is_cloned_and_bn_output_name_kept():
    """Two Convs read one weight; both fold (the weight is cloned once), and the BN
    outputs, which are graph outputs, keep their names."""
    inits = [b.init("W", b.rand((8, 4, 3, 3), 1)), *bn_params("b1", 8, 2), *bn_params("b2", 8, 3)]
    nodes = [
        b.node("Conv", ["X", "W"], ["c1"], "conv1"),
        b.node("Conv", ["X", "W"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
        bn("c1", "Y1", "b1"),
        bn("c2", "Y2", "b2"),
    ]
    model = b.model(
        nodes, [b.value("X", (1, 4, 6, 6))], [b.value("Y1", (1, 8, 4, 4)), b.value("Y2", (1, 8, 6, 6))], inits
    )
    before = copy(model)
    result = cleanup(model)
    assert result.bn_folded == ("b1", "b2")
    weights = [n.input[1] for n in checked(model).graph.node]
    assert len(set(weights)) == 2 and "W" in weights  # one clone, the original kept for the other
    assert [o.name for o in model.graph.output] == ["Y1", "Y2"]
    assert_same_outputs(before, model, feeds_for(model))


def test_bn_in_an_if_branch_folds_with_a_weight_shared_across_branches():
    """The then-branch Conv+BN folds; its weight, also read by the else-branch, is cloned."""
    then_branch = b.graph(
        [b.node("Conv", ["X", "W"], ["c"], "conv"), bn("c", "t", "bn")], [], [b.value("t", (1, 8, 4, 4))], name="then"
    )
    else_branch = b.graph(
        [b.node("Conv", ["X", "W"], ["e"], "conv_else")], [], [b.value("e", (1, 8, 4, 4))], name="else"
    )
    nodes = [b.node("If", ["cond"], ["Y"], "if", then_branch=then_branch, else_branch=else_branch)]
    inits = [b.init("W", b.rand((8, 4, 3, 3), 1)), *bn_params("bn", 8, 2)]
    inputs = [b.value("X", (1, 4, 6, 6)), b.value("cond", (), b.BOOL)]
    model = b.model(nodes, inputs, [b.value("Y", (1, 8, 4, 4))], inits)
    before = copy(model)
    result = cleanup(model)
    assert result.bn_folded == ("bn",) and result.initializers_removed == 4
    branches = {a.name: a.g for a in checked(model).graph.node[0].attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["Conv"]
    assert branches["else_branch"].node[0].input[1] == "W"
    assert branches["then_branch"].node[0].input[1] != "W"
    for cond in (True, False):
        feeds = {"X": b.rand((1, 4, 6, 6), 3), "cond": np.asarray(cond)}
        np.testing.assert_allclose(run(model, feeds)[0], run(before, feeds)[0], atol=1e-5)


def test_external_data_not_loaded_keeps_bn(tmp_path):
    model = conv_bn()
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    lazy = onnx.load(str(path), load_external_data=False)
    folded, kept = fold_batchnorm(lazy)
    assert folded == [] and "external and not loaded" in kept[0][1]


# ---------------------------------------------------------------------------------------
# Constant folding


def test_constant_subgraph_folds():
    """Y = X · (a + b)·2: the Add and Mul of constants become one initializer."""
    nodes = [
        b.constant("a", np.arange(4, dtype=np.float32)),
        b.node("Add", ["a", "b"], ["ab"], "add"),
        b.node("Mul", ["ab", "two"], ["k"], "mul"),
        b.node("Mul", ["X", "k"], ["Y"], "scale"),
    ]
    inits = [b.init("b", np.ones(4, np.float32)), b.init("two", np.asarray(2.0, np.float32))]
    model = b.model(nodes, [b.value("X", ("N", 4))], [b.value("Y", ("N", 4))], inits)
    before = copy(model)
    result = cleanup(model)
    assert result.constants_folded == 2
    assert ops(checked(model)) == ["Mul"]
    assert result.nodes_removed == 1 and result.initializers_removed == 2  # Constant a; b and two
    (k,) = model.graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(k), (np.arange(4) + 1) * 2)
    assert_same_outputs(before, model, feeds_for(model))


def shape_model() -> ModelProto:
    """Reshape X[N, 4, 6] to [N, 24] with the shape computed from Shape(X): the batch part
    depends on the input, the 4·6 part does not."""
    nodes = [
        b.node("Shape", ["X"], ["s"], "shape"),
        b.node("Gather", ["s", "i0"], ["n"], "get_n", axis=0),
        b.node("Gather", ["s", "i1"], ["c"], "get_c", axis=0),
        b.node("Gather", ["s", "i2"], ["w"], "get_w", axis=0),
        b.node("Mul", ["c", "w"], ["cw"], "mul"),
        b.node("Unsqueeze", ["n", "axes"], ["n1"], "un_n"),
        b.node("Unsqueeze", ["cw", "axes"], ["cw1"], "un_cw"),
        b.node("Concat", ["n1", "cw1"], ["target"], "concat", axis=0),
        b.node("Reshape", ["X", "target"], ["Y"], "reshape"),
    ]
    inits = [
        b.init("i0", np.asarray(0, np.int64)),
        b.init("i1", np.asarray(1, np.int64)),
        b.init("i2", np.asarray(-1, np.int64)),
        b.ints("axes", [0]),
    ]
    return b.model(nodes, [b.value("X", ("N", 4, 6))], [b.value("Y", ("N", 24))], inits)


def test_static_part_of_a_shape_folds_and_the_batch_does_not():
    model = shape_model()
    before = copy(model)
    result = cleanup(model)
    # get_c, get_w (from the shape), then Mul and Unsqueeze on constants
    assert result.constants_folded == 4
    assert ops(checked(model)) == ["Shape", "Gather", "Unsqueeze", "Concat", "Reshape"]
    folded = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(folded["cw1"], [24])
    assert_same_outputs(before, model, feeds_for(model, X=(3, 4, 6)))
    assert_same_outputs(before, model, feeds_for(model, X=(5, 4, 6)))


def test_folding_guards():
    """An Expand that would add over GROWTH_LIMIT bytes, a DequantizeLinear and a random
    op stay; a small Expand folds."""
    side = int(np.sqrt(GROWTH_LIMIT // 4)) + 8
    nodes = [
        b.node("Expand", ["one", "big_shape"], ["big"], "expand_big"),
        b.node("Expand", ["one", "small_shape"], ["small"], "expand_small"),
        b.node("DequantizeLinear", ["q", "qs"], ["dq"], "dequant"),
        b.node("RandomNormal", [], ["noise"], "noise", shape=[side], dtype=b.FLOAT),
        b.node("Add", ["X", "big"], ["y1"], "add_big"),
        b.node("Add", ["y1", "small"], ["y2"], "add_small"),
        b.node("Add", ["y2", "dq"], ["Y"], "add_dq"),
        b.node("Mul", ["noise", "one"], ["Z"], "scaled_noise"),
    ]
    inits = [
        b.init("one", np.ones((1,), np.float32)),
        b.ints("big_shape", [side, side]),
        b.ints("small_shape", [side]),
        b.init("q", np.arange(side, dtype=np.int8)),
        b.init("qs", np.asarray(0.5, np.float32)),
    ]
    model = b.model(nodes, [b.value("X", (side, side))], [b.value("Y", (side, side)), b.value("Z", (side,))], inits)
    before = copy(model)
    result = cleanup(model)
    assert result.constants_folded == 1
    assert "small" in {t.name for t in model.graph.initializer}
    assert set(ops(checked(model))) == {"Expand", "DequantizeLinear", "RandomNormal", "Add", "Mul"}
    x = feeds_for(model)
    np.testing.assert_array_equal(run(before, x)[0], run(model, x)[0])


def test_onnxruntime_failure_leaves_the_nodes_with_a_note():
    """onnxruntime has no float64 Conv on CPU: the constant Conv stays, with a note."""
    nodes = [b.node("Conv", ["a", "w"], ["c"], "conv"), b.node("Add", ["X", "c"], ["Y"], "add")]
    inits = [b.init("a", np.ones((1, 1, 3, 3))), b.init("w", np.ones((1, 1, 3, 3)))]
    model = b.model(
        nodes, [b.value("X", (1, 1, 1, 1), TensorProto.DOUBLE)], [b.value("Y", (1, 1, 1, 1), TensorProto.DOUBLE)], inits
    )
    result = cleanup(model)
    assert result.constants_folded == 0 and ops(checked(model)) == ["Conv", "Add"]
    assert len(result.notes) == 1 and result.notes[0].startswith("constant folding skipped: onnxruntime could not")


def test_folded_graph_output_stays_a_node_output():
    nodes = [b.node("Neg", ["c"], ["Y"], "neg"), b.node("Relu", ["X"], ["Z"], "relu")]
    model = b.model(
        nodes, [b.value("X", (2,))], [b.value("Y", (3,)), b.value("Z", (2,))], [b.init("c", np.ones(3, np.float32))]
    )
    before = copy(model)
    result = cleanup(model)
    assert result.constants_folded == 1
    assert ops(checked(model)) == ["Relu", "Constant"]
    assert_same_outputs(before, model, feeds_for(model))


# ---------------------------------------------------------------------------------------
# Dead code, subgraphs, order


def if_model() -> ModelProto:
    """An If whose then-branch reads the main-graph initializer ``w_then`` (nowhere else),
    a dead branch of the main graph, an unused initializer listed as an input (IR < 4
    style) and an unused real input."""
    then_branch = b.graph([b.node("Mul", ["X", "w_then"], ["t"], "then_mul")], [], [unshaped("t")], name="then")
    else_branch = b.graph([b.node("Neg", ["X"], ["e"], "else_neg")], [], [unshaped("e")], name="else")
    nodes = [
        b.node("If", ["cond"], ["Y"], "if", then_branch=then_branch, else_branch=else_branch),
        b.node("Mul", ["X", "w_dead"], ["d1"], "dead_mul"),
        b.node("Relu", ["d1"], ["d2"], "dead_relu"),
        b.constant("dead_const", np.ones(2, np.float32)),
    ]
    inits = [
        b.init("w_then", np.full(3, 2.0, np.float32)),
        b.init("w_dead", np.ones(3, np.float32)),
        b.init("unused", np.ones(5, np.float32)),
    ]
    inputs = [b.value("X", (3,)), b.value("cond", (), b.BOOL), b.value("spare", (2,)), b.value("unused", (5,))]
    return b.model(nodes, inputs, [b.value("Y", (3,))], inits)


def test_dead_nodes_and_unused_initializers_go_subgraph_reads_stay():
    model = if_model()
    before = copy(model)
    result = cleanup(model)
    assert result.nodes_removed == 3  # dead_mul, dead_relu, the Constant
    assert result.initializers_removed == 2  # w_dead, unused
    assert ops(checked(model)) == ["If"]
    assert [t.name for t in model.graph.initializer] == ["w_then"]
    assert [i.name for i in model.graph.input] == ["X", "cond", "spare"]  # real inputs stay
    for cond in (True, False):
        feeds = {"X": np.arange(3, dtype=np.float32), "cond": np.asarray(cond), "spare": np.zeros(2, np.float32)}
        np.testing.assert_array_equal(run(model, feeds)[0], run(before, feeds)[0])


def test_dead_nodes_inside_a_branch_go():
    model = if_model()
    (then_branch,) = (a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    then_branch.node.append(b.node("Abs", ["X"], ["unused_in_branch"], "dead_in_branch"))
    result = cleanup(model)
    assert result.nodes_removed == 4
    checked(model)
    assert [n.name for n in then_branch.node] == ["then_mul"]


def chain_model() -> ModelProto:
    inits = [b.init("W", b.rand((4, 4), 1))]
    nodes = [
        b.node("MatMul", ["X", "W"], ["a"], "mm"),
        b.node("Relu", ["a"], ["r"], "relu"),
        b.node("Sigmoid", ["a"], ["s"], "sig"),
        b.node("Add", ["r", "s"], ["t"], "add"),
        b.node("Neg", ["t"], ["Y"], "neg"),
    ]
    return b.model(nodes, [b.value("X", (2, 4))], [b.value("Y", (2, 4))], inits)


def test_toposort_of_a_shuffled_graph():
    model = chain_model()
    before = copy(model)
    nodes = list(model.graph.node)
    random.Random(3).shuffle(nodes)
    shuffled = [helper.make_node(n.op_type, n.input, n.output, name=n.name) for n in nodes]
    del model.graph.node[:]
    model.graph.node.extend(shuffled)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    result = cleanup(model)
    assert result.notes == () and result.nodes_removed == 0
    order = [n.name for n in checked(model).graph.node]
    assert order.index("mm") < order.index("relu") < order.index("add") < order.index("neg")
    assert_same_outputs(before, model, feeds_for(model))


def test_toposort_keeps_a_valid_order():
    model = chain_model()
    names = [n.name for n in model.graph.node]
    assert toposort(model.graph)
    assert [n.name for n in model.graph.node] == names


def test_toposort_reports_a_cycle():
    nodes = [b.node("Add", ["X", "b"], ["a"], "first"), b.node("Relu", ["a"], ["b"], "second")]
    model = b.model(nodes, [b.value("X", (2,))], [b.value("a", (2,))])
    assert not toposort(model.graph)
    assert [n.name for n in model.graph.node] == ["first", "second"]


# ---------------------------------------------------------------------------------------
# Shapes


def sliced_conv_model() -> ModelProto:
    """Conv 4->16 -> Relu -> Conv 16->2, with value_info and output shapes declared for 16
    channels; then the first Conv is cut to 8 channels by hand (the second reads 8)."""
    inits = [b.init("W1", b.rand((16, 4, 3, 3), 1)), b.init("W2", b.rand((2, 16, 1, 1), 2))]
    nodes = [
        b.node("Conv", ["X", "W1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        b.node("Relu", ["c1"], ["R"], "relu"),
        b.node("Conv", ["R", "W2"], ["Y"], "conv2"),
    ]
    model = b.model(
        nodes, [b.value("X", ("N", 4, 5, 5))], [b.value("R", ("N", 16, 5, 5)), b.value("Y", ("N", 2, 5, 5))], inits
    )
    model.graph.value_info.append(b.value("c1", ("N", 16, 5, 5)))
    w1, w2 = (numpy_helper.to_array(t) for t in model.graph.initializer)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1[:8], "W1"))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(w2[:, :8], "W2"))
    return model


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_value_info_refreshed_after_slicing_channels():
    model = sliced_conv_model()
    result = cleanup(model)
    (c1,) = checked(model).graph.value_info
    assert c1.name == "c1" and dims(c1) == ["N", 8, 5, 5]
    assert [dims(o) for o in model.graph.output] == [["N", 8, 5, 5], ["N", 2, 5, 5]]
    assert result.notes == ("graph output dims updated: R: 16 -> 8",)
    run(model, feeds_for(model, X=(2, 4, 5, 5)))


def test_refresh_off_keeps_shapes():
    model = sliced_conv_model()
    cleanup(model, refresh_shapes=False)
    assert dims(model.graph.value_info[0]) == ["N", 16, 5, 5]


def test_shape_inference_failure_is_a_note(monkeypatch):
    def fail(*args, **kwargs):
        raise onnx.shape_inference.InferenceError("no luck")

    monkeypatch.setattr(cleanup_module.onnx.shape_inference, "infer_shapes", fail)
    model = sliced_conv_model()
    result = cleanup(model)
    assert result.notes == ("shape inference failed (no luck): value_info is left without shapes",)
    (c1,) = model.graph.value_info
    assert not c1.type.tensor_type.HasField("shape") and c1.type.tensor_type.elem_type == b.FLOAT
    run(model, feeds_for(model, X=(2, 4, 5, 5)))


# ---------------------------------------------------------------------------------------
# Fixtures and what must not change


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.onnx")), ids=lambda p: p.stem)
def test_fixtures_outputs_unchanged(path):
    model = onnx.load(str(path))
    model.metadata_props.add(key="k", value="v")
    model.doc_string = "doc"
    before = copy(model)
    data = np.load(str(path.with_suffix(".test.npz")))
    # one-input fixtures: key "input", a batch of 64; stateful_mnist1d: complete feeds, the first
    feeds = {"input": data["input"][:64]} if "input" in data.files else {k: np.asarray(data[k][0]) for k in data.files}
    result = cleanup(model)
    checked(model)
    assert_same_outputs(before, model, feeds)
    assert model.ir_version == before.ir_version and model.opset_import == before.opset_import
    assert [(p.key, p.value) for p in model.metadata_props] == [("k", "v")] and model.doc_string == "doc"
    assert [i.name for i in model.graph.input] == [i.name for i in before.graph.input]
    assert [o.name for o in model.graph.output] == [o.name for o in before.graph.output]
    assert [(o.name, dims(o)) for o in model.graph.output] == [(o.name, dims(o)) for o in before.graph.output]
    if path.stem.startswith("cnn_digits"):
        assert len(result.bn_folded) == 5 and result.bn_kept == ()
        assert "BatchNormalization" not in ops(model)
        assert len(model.graph.node) == len(before.graph.node) - 5 - (20 if path.stem.endswith("const") else 0)
    else:
        assert result.bn_folded == ()


def test_nothing_to_do_changes_nothing():
    model = onnx.load(str(FIXTURES / "mlp_digits.onnx"))
    before = copy(model)
    result = cleanup(model)
    assert (result.constants_folded, result.nodes_removed, result.initializers_removed) == (0, 0, 0)
    assert result.bn_folded == () and result.notes == ()
    assert model.graph.node == before.graph.node and model.graph.initializer == before.graph.initializer


def test_options_off():
    model = conv_bn()
    model.graph.initializer.append(b.init("orphan", np.ones(3, np.float32)))
    result = cleanup(model, fold_bn=False, fold_constants=False)
    assert result.bn_folded == () and result.initializers_removed == 1
    assert ops(model) == ["Conv", "BatchNormalization", "Relu"]


# ---------------------------------------------------------------------------------------
# Per-channel affine ops after a Conv/Gemm (PaddlePaddle's scale layers, decomposed BN)


def conv_affine(constants: dict[str, np.ndarray], *, bias: bool = True, extra_reader: bool = False) -> ModelProto:
    """X[1,8,6,6] -> Conv(16) -> op(constant) ... -> Relu -> Y; ``constants`` maps op to its constant."""
    inits = [b.init("W", b.rand((16, 8, 3, 3), 1))]
    conv_inputs = ["X", "W"]
    if bias:
        inits.append(b.init("Cb", b.rand((16,), 3)))
        conv_inputs.append("Cb")
    nodes = [b.node("Conv", conv_inputs, ["c0"], "conv", pads=[1, 1, 1, 1])]
    outputs = [b.value("Y", ("N", 16, 6, 6), b.FLOAT)]
    for i, (op, value) in enumerate(constants.items()):
        inits.append(b.init(f"k{i}", value.astype(np.float32)))
        nodes.append(b.node(op, [f"c{i}", f"k{i}"], [f"c{i + 1}"], f"{op.lower()}{i}"))
    nodes.append(b.node("Relu", [f"c{len(constants)}"], ["Y"], "relu"))
    if extra_reader:
        nodes.append(b.node("Sigmoid", ["c0"], ["Z"], "side"))
        outputs.append(b.value("Z", ("N", 16, 6, 6), b.FLOAT))
    return b.model(nodes, [b.value("X", ("N", 8, 6, 6), b.FLOAT)], outputs, inits)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_scalar_and_per_channel_affine_ops_fold_into_the_conv(bias):
    rng = np.random.default_rng(5)
    model = conv_affine(
        {
            "Mul": np.array(1.7),
            "Add": rng.standard_normal((16, 1, 1)),
            "Sub": np.array([0.3]),
            "Div": rng.uniform(0.5, 2.0, (1, 16, 1, 1)),
        },
        bias=bias,
    )
    before = copy(model)
    result = cleanup(model)
    assert result.affine_folded == ("mul0", "add1", "sub2", "div3")
    assert ops(model) == ["Conv", "Relu"]
    assert_same_outputs(before, checked(model), feeds_for(before))


def test_affine_ops_that_are_not_per_channel_or_shared_stay():
    spatial = conv_affine({"Mul": np.random.default_rng(1).standard_normal((1, 1, 6, 6))})
    assert cleanup(spatial).affine_folded == () and "Mul" in ops(spatial)
    shared = conv_affine({"Mul": np.array(2.0)}, extra_reader=True)
    before = copy(shared)
    assert cleanup(shared).affine_folded == () and "Mul" in ops(shared)
    assert_same_outputs(before, shared, feeds_for(before))
    constant_first_sub = conv_affine({"Add": np.array(1.0)})
    constant_first_sub.graph.node[1].op_type = "Sub"
    constant_first_sub.graph.node[1].input[:] = ["k0", "c0"]  # 1 - x: not x + t
    before = copy(constant_first_sub)
    assert cleanup(constant_first_sub).affine_folded == ()
    assert_same_outputs(before, constant_first_sub, feeds_for(before))


def test_gemm_followed_by_a_per_output_shift_folds():
    model = b.model(
        [
            b.node("Gemm", ["X", "B", "C"], ["g"], "gemm", transB=1, alpha=0.5, beta=2.0),
            b.node("Sub", ["g", "s"], ["Y"], "sub"),
        ],
        [b.value("X", ("N", 12), b.FLOAT)],
        [b.value("Y", ("N", 7), b.FLOAT)],
        [b.init("B", b.rand((7, 12), 1)), b.init("C", b.rand((7,), 2)), b.init("s", b.rand((7,), 3))],
    )
    before = copy(model)
    assert cleanup(model).affine_folded == ("sub",)
    assert ops(model) == ["Gemm"]
    assert_same_outputs(before, checked(model), feeds_for(before))
