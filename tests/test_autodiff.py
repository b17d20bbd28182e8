"""The block programs' gradients against finite differences, op by op, and the forward
values against onnxruntime (the reference for what an op means)."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.reconstruct.autodiff import KERNELS, Step, backward, erf, forward, unbroadcast, unsupported

RNG = np.random.default_rng(0)


def _numeric_grad(steps, values, wanted, out, weights, eps=1e-6):
    """∂/∂wanted of Σ weights ⊙ out, by central differences (float64)."""
    base = values[wanted]
    grad = np.zeros_like(base)
    for index in np.ndindex(base.shape):
        for sign in (1, -1):
            moved = base.copy()
            moved[index] += sign * eps
            env = forward(steps, {**values, wanted: moved})
            grad[index] += sign * float(np.sum(env[out] * weights)) / (2 * eps)
    return grad


def _check(steps, values, wanted, out="y", tol=1e-5):
    values = {
        k: (np.asarray(v, dtype=np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
        for k, v in values.items()
    }
    env = forward(steps, values)
    weights = RNG.standard_normal(np.shape(env[out]))
    grads = backward(steps, env, {out: weights}, wanted)
    for name in wanted:
        numeric = _numeric_grad(steps, values, name, out, weights)
        assert grads[name].shape == values[name].shape, name
        np.testing.assert_allclose(grads[name], numeric, rtol=tol, atol=tol, err_msg=f"{steps[0].op} ∂/∂{name}")


def _x(*shape: int, positive: bool = False) -> np.ndarray:
    v = RNG.standard_normal(shape)
    return np.abs(v) + 0.5 if positive else v


@pytest.mark.parametrize(
    ("op", "shapes"),
    [
        ("Add", [(2, 3), (3,)]),
        ("Sub", [(2, 1, 3), (4, 1)]),
        ("Mul", [(2, 3), (2, 1)]),
        ("Div", [(2, 3), (1, 3)]),
        ("MatMul", [(2, 3, 4), (4, 5)]),
        ("MatMul", [(2, 1, 3, 4), (3, 4, 2)]),
    ],
)
def test_binary_gradients(op: str, shapes: list[tuple[int, ...]]) -> None:
    values = {"a": _x(*shapes[0]), "b": _x(*shapes[1], positive=op == "Div")}
    _check([Step(op, ("a", "b"), ("y",))], values, ["a", "b"])


@pytest.mark.parametrize("op", ["Identity", "Neg", "Sqrt", "Exp", "Erf", "Tanh", "Sigmoid", "Relu"])
def test_unary_gradients(op: str) -> None:
    _check([Step(op, ("x",), ("y",))], {"x": _x(3, 4, positive=op == "Sqrt")}, ["x"])


def test_pow_softmax_layernorm_gelu_gradients() -> None:
    _check([Step("Pow", ("x", "p"), ("y",))], {"x": _x(2, 3, positive=True), "p": np.float64(2.5)}, ["x"])
    _check([Step("Softmax", ("x",), ("y",), {"axis": -1})], {"x": _x(2, 3, 5)}, ["x"])
    _check([Step("Softmax", ("x",), ("y",), {"axis": 1})], {"x": _x(2, 3, 5)}, ["x"])
    _check([Step("LogSoftmax", ("x",), ("y",), {"axis": -1})], {"x": _x(2, 3, 5)}, ["x"])
    _check(
        [Step("LayerNormalization", ("x", "g", "b"), ("y",), {"axis": -1, "epsilon": 1e-5})],
        {"x": _x(2, 3, 6), "g": _x(6), "b": _x(6)},
        ["x", "g", "b"],
    )
    _check(
        [Step("LayerNormalization", ("x", "g"), ("y",), {"axis": 1, "epsilon": 1e-5})],
        {"x": _x(2, 3, 4), "g": _x(3, 4)},
        ["x", "g"],
    )
    for approximate in ("none", "tanh"):
        _check([Step("Gelu", ("x",), ("y",), {"approximate": approximate})], {"x": _x(3, 4)}, ["x"])


def test_gemm_clip_where_reduce_gradients() -> None:
    for ta, tb in [(0, 0), (1, 0), (0, 1), (1, 1)]:
        a = _x(3, 4) if not ta else _x(4, 3)
        b = _x(4, 5) if not tb else _x(5, 4)
        attrs = {"alpha": 0.7, "beta": 1.3, "transA": ta, "transB": tb}
        _check([Step("Gemm", ("a", "b", "c"), ("y",), attrs)], {"a": a, "b": b, "c": _x(5)}, ["a", "b", "c"])
    _check(
        [Step("Clip", ("x", "lo", "hi"), ("y",))], {"x": _x(4, 5), "lo": np.float64(-0.5), "hi": np.float64(0.5)}, ["x"]
    )
    cond = RNG.random((2, 3)) > 0.5
    _check([Step("Where", ("c", "a", "b"), ("y",))], {"c": cond, "a": _x(2, 3), "b": _x(3)}, ["a", "b"])
    _check([Step("Expand", ("x", "s"), ("y",))], {"x": _x(3, 1), "s": np.array([2, 3, 4])}, ["x"])
    for op in ("ReduceMean", "ReduceSum", "ReduceL2"):
        _check([Step(op, ("x", "axes"), ("y",), {"keepdims": 0})], {"x": _x(2, 3, 4), "axes": np.array([-1, 0])}, ["x"])
        _check([Step(op, ("x",), ("y",), {"axes": [1], "keepdims": 1})], {"x": _x(2, 3, 4)}, ["x"])
        _check([Step(op, ("x",), ("y",), {})], {"x": _x(2, 3)}, ["x"])


def test_movement_gradients() -> None:
    x = _x(2, 3, 4)
    _check([Step("Reshape", ("x", "s"), ("y",))], {"x": x, "s": np.array([0, -1, 2])}, ["x"])
    _check([Step("Transpose", ("x",), ("y",), {"perm": [2, 0, 1]})], {"x": x}, ["x"])
    _check([Step("Transpose", ("x",), ("y",))], {"x": x}, ["x"])
    _check([Step("Unsqueeze", ("x", "a"), ("y",))], {"x": x, "a": np.array([0, -1])}, ["x"])
    _check([Step("Squeeze", ("x", "a"), ("y",))], {"x": _x(2, 1, 3), "a": np.array([1])}, ["x"])
    _check([Step("Flatten", ("x",), ("y",), {"axis": 2})], {"x": x}, ["x"])
    _check([Step("Concat", ("a", "b"), ("y",), {"axis": 1})], {"a": _x(2, 3), "b": _x(2, 2)}, ["a", "b"])
    cut = {"s": np.array([1, -1]), "e": np.array([2**62, -(2**62)]), "ax": np.array([1, -1]), "st": np.array([2, -2])}
    _check([Step("Slice", ("x", "s", "e", "ax", "st"), ("y",))], {"x": _x(2, 5, 4), **cut}, ["x"])
    _check([Step("Slice", ("x",), ("y",), {"starts": [0], "ends": [2], "axes": [0]})], {"x": _x(3, 2)}, ["x"])
    _check([Step("Cast", ("x",), ("y",), {"to_numpy": np.float64})], {"x": x}, ["x"])


@pytest.mark.parametrize(
    ("xs", "ws", "attrs"),
    [
        ((2, 3, 6, 5), (4, 3, 3, 3), {}),
        ((1, 4, 7, 6), (6, 2, 3, 2), {"group": 2, "strides": [2, 1], "pads": [1, 0, 1, 1]}),
        ((2, 3, 7, 7), (3, 1, 3, 3), {"group": 3, "dilations": [2, 2], "pads": [2, 2, 2, 2]}),
        ((1, 2, 9), (3, 2, 3), {"strides": [2], "auto_pad": "SAME_UPPER"}),
    ],
)
def test_conv_gradients(xs, ws, attrs) -> None:
    _check(
        [Step("Conv", ("x", "w", "b"), ("y",), attrs)], {"x": _x(*xs), "w": _x(*ws), "b": _x(ws[0])}, ["x", "w", "b"]
    )


def test_pooling_batchnorm_and_hard_activation_gradients() -> None:
    x = _x(2, 3, 6, 5)
    _check([Step("MaxPool", ("x",), ("y",), {"kernel_shape": [2, 2], "strides": [2, 1]})], {"x": x}, ["x"])
    _check([Step("MaxPool", ("x",), ("y",), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})], {"x": x}, ["x"])
    for include in (0, 1):
        attrs = {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "strides": [2, 2], "count_include_pad": include}
        _check([Step("AveragePool", ("x",), ("y",), attrs)], {"x": x}, ["x"])
    _check([Step("GlobalAveragePool", ("x",), ("y",))], {"x": x}, ["x"])
    bn = {"x": x, "s": _x(3), "b": _x(3), "m": _x(3), "v": _x(3, positive=True)}
    _check([Step("BatchNormalization", ("x", "s", "b", "m", "v"), ("y",), {"epsilon": 1e-3})], bn, ["x", "s", "b"])
    _check([Step("HardSigmoid", ("x",), ("y",), {"alpha": 0.3, "beta": 0.4})], {"x": x}, ["x"])
    _check([Step("HardSwish", ("x",), ("y",))], {"x": x * 3}, ["x"])
    _check([Step("LeakyRelu", ("x",), ("y",), {"alpha": 0.1})], {"x": x}, ["x"])


def test_a_chain_sums_the_gradients_of_a_value_read_twice() -> None:
    """x → (x·W) → GELU by its decomposed form → + x (a residual) → LayerNorm: every path counts."""
    steps = [
        Step("MatMul", ("x", "w"), ("h",)),
        Step("Div", ("h", "s"), ("d",)),
        Step("Erf", ("d",), ("e",)),
        Step("Add", ("e", "one"), ("e1",)),
        Step("Mul", ("h", "e1"), ("g",)),
        Step("Add", ("g", "x"), ("r",)),
        Step("LayerNormalization", ("r", "gamma", "beta"), ("y",), {"axis": -1, "epsilon": 1e-5}),
    ]
    values = {
        "x": _x(3, 4),
        "w": _x(4, 4),
        "s": np.float64(math.sqrt(2)),
        "one": np.float64(1.0),
        "gamma": _x(4),
        "beta": _x(4),
    }
    _check(steps, values, ["x", "w", "gamma", "beta"])


def test_a_wanted_value_the_loss_does_not_read_gets_zeros() -> None:
    steps = [Step("Add", ("a", "b"), ("y",)), Step("Mul", ("c", "c"), ("z",))]
    values = {"a": _x(2), "b": _x(2), "c": _x(2)}
    env = forward(steps, values)
    grads = backward(steps, env, {"y": np.ones(2)}, ["a", "c"])
    np.testing.assert_array_equal(grads["c"], np.zeros(2))
    np.testing.assert_array_equal(grads["a"], np.ones(2))


def test_erf_matches_math_erf() -> None:
    x = np.linspace(-5, 5, 2001)
    assert np.max(np.abs(erf(x) - np.vectorize(math.erf)(x))) < 2e-7


def test_unbroadcast_sums_added_and_stretched_axes() -> None:
    g = np.ones((2, 3, 4))
    assert unbroadcast(g, (3, 1)).tolist() == [[8.0]] * 3 and unbroadcast(g, (3, 1)).shape == (3, 1)
    assert unbroadcast(g, ()).item() == 24.0


def test_unsupported_names_each_missing_op_once() -> None:
    steps = [
        Step("LSTM", ("x", "w"), ("y",)),
        Step("LSTM", ("y", "w"), ("z",)),
        Step("Add", ("z", "z"), ("u",)),
        Step("If", ("c",), ("v",)),
    ]
    assert unsupported(steps) == ["If", "LSTM"]


def _ort(
    op: str, inputs: dict[str, np.ndarray], attrs: dict, opset: int = 17, consts: dict | None = None
) -> np.ndarray:
    consts = consts or {}
    names = list(inputs) + list(consts)
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, v.shape) for n, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, n) for n, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["y"], {k: v.astype(np.float32) for k, v in inputs.items()})[0]


@pytest.mark.parametrize(
    ("op", "attrs", "opset"),
    [
        ("Softmax", {"axis": -1}, 17),
        ("LogSoftmax", {"axis": 1}, 17),
        ("Erf", {}, 17),
        ("LayerNormalization", {"axis": -1, "epsilon": 1e-5}, 17),
        ("Gelu", {}, 20),
        ("Gelu", {"approximate": "tanh"}, 20),
        ("Sigmoid", {}, 17),
        ("Tanh", {}, 17),
        ("HardSigmoid", {"alpha": 0.3}, 17),
        ("HardSwish", {}, 17),
        ("LeakyRelu", {"alpha": 0.2}, 17),
        ("GlobalAveragePool", {}, 17),
        ("MaxPool", {"kernel_shape": [3], "pads": [1, 1], "strides": [2]}, 17),
        ("AveragePool", {"kernel_shape": [3], "pads": [1, 0], "strides": [2]}, 17),
        ("AveragePool", {"kernel_shape": [3], "pads": [1, 1], "count_include_pad": 1}, 17),
        ("Conv", {"group": 1, "pads": [1, 1], "strides": [2]}, 17),
        ("BatchNormalization", {"epsilon": 1e-3}, 17),
    ],
)
def test_forward_values_match_onnxruntime(op: str, attrs: dict, opset: int) -> None:
    x = (_x(2, 3, 8) * 2).astype(np.float32)
    consts = {
        "LayerNormalization": {"g": _x(8), "b": _x(8)},
        "Conv": {"w": _x(4, 3, 3), "b": _x(4)},
        "BatchNormalization": {"s": _x(3), "b": _x(3), "m": _x(3), "v": _x(3, positive=True)},
    }.get(op, {})
    consts = {k: v.astype(np.float32) for k, v in consts.items()}
    try:
        want = _ort(op, {"x": x}, attrs, opset, consts)
    except Exception as exc:  # an onnxruntime without this opset: nothing to compare with
        pytest.skip(f"onnxruntime cannot run {op} at opset {opset}: {exc}")
    got = forward([Step(op, ("x", *consts), ("y",), {**attrs, "opset": opset})], {"x": x, **consts})["y"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_slice_matches_onnxruntime() -> None:
    x = _x(2, 5, 4).astype(np.float32)
    bounds = {"s": [1, -1], "e": [2**62, -(2**62)], "ax": [1, -1], "st": [2, -2]}
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), k) for k, v in bounds.items()]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "s", "e", "ax", "st"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = forward(
        [Step("Slice", ("x", "s", "e", "ax", "st"), ("y",))], {"x": x, **{k: np.array(v) for k, v in bounds.items()}}
    )
    np.testing.assert_array_equal(got["y"], want)


def test_every_kernel_is_checked_here() -> None:
    """A kernel added without a gradient check fails this test: add it above."""
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    missing = [op for op in KERNELS if f'"{op}"' not in source]
    assert not missing, missing
