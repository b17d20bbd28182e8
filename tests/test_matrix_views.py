"""The op table's matrix views (:meth:`onnxprune.ops.OpSpec.matrix_view`) against onnxruntime.

For each op family: ``to_matrix``/``from_matrix`` round-trip a random weight exactly, and
``W_g`` times the rows that capture cuts from the layer's input (im2col patches for a Conv,
rows of ``op(A)`` for Gemm, rows of ``A`` for MatMul, ``x_t`` and ``h_{t−1}`` for a recurrent
layer) equals the output of the single layer in onnxruntime, within 1e-5 relative. Plus the
weights that have no view, each with its reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import ops
from onnxprune.capture import LayerSpec
from onnxprune.im2col import ConvGeometry, patch_blocks
from onnxprune.ops.spec import MatrixView

RTOL = 1e-5


def _run(node: onnx.NodeProto, feeds: dict[str, np.ndarray], inits: dict[str, np.ndarray], rank: int) -> np.ndarray:
    """Output 0 (of ``rank``) of the one-node model ``node`` (opset 17) on ``feeds``, ``inits`` stored."""
    graph = helper.make_graph(
        [node],
        "one",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [f"d{i}" for i in range(rank)])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _view(node: onnx.NodeProto, index: int, shape: tuple[int, ...]) -> MatrixView:
    view = ops.spec_of(node).matrix_view(node, index, shape)
    assert isinstance(view, MatrixView), view
    return view


def _round_trips(view: MatrixView, rng: np.random.Generator) -> np.ndarray:
    """A random weight of the view's shape, after checking it round-trips exactly."""
    w = rng.standard_normal(view.shape).astype(np.float32)
    m = view.to_matrix(w)
    assert m.shape == (view.groups, view.rows, view.cols)
    back = view.from_matrix(m)
    assert back.shape == w.shape and np.array_equal(back, w)
    assert np.array_equal(view.from_matrix(view.to_matrix(w.astype(np.float64))), w.astype(np.float64))
    return w


def _close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) <= RTOL * np.linalg.norm(want)


# --------------------------------------------------------------------------- Conv


CONVS = {
    "groups, pads, strides": {
        "c_in": 6,
        "c_out": 4,
        "kernel": (3, 3),
        "group": 2,
        "pads": [1, 0, 2, 1],
        "strides": [2, 1],
    },
    "depthwise": {"c_in": 5, "c_out": 5, "kernel": (3, 3), "group": 5, "pads": [1, 1, 1, 1]},
    "1-D, dilated": {"c_in": 3, "c_out": 4, "kernel": (3,), "dilations": [2], "strides": [2]},
    "auto_pad SAME_UPPER": {"c_in": 3, "c_out": 2, "kernel": (2, 3), "auto_pad": "SAME_UPPER", "strides": [2, 2]},
    "1x1": {"c_in": 4, "c_out": 3, "kernel": (1, 1)},
}


@pytest.mark.parametrize("case", list(CONVS))
def test_conv_view_times_im2col_patches_is_the_conv(case):
    rng = np.random.default_rng(0)
    params = dict(CONVS[case])
    c_in, c_out, kernel = params.pop("c_in"), params.pop("c_out"), params.pop("kernel")
    group = params.get("group", 1)
    node = helper.make_node("Conv", ["x", "W"], ["y"], **params)
    shape = (c_out, c_in // group, *kernel)
    view = _view(node, 1, shape)
    assert (view.groups, view.rows, view.cols) == (group, c_out // group, c_in // group * int(np.prod(kernel)))
    w = _round_trips(view, rng)
    x = rng.standard_normal((2, c_in, *(9,) * len(kernel))).astype(np.float32)
    y = _run(node, {"x": x}, {"W": w}, x.ndim)
    geometry = ConvGeometry(view.groups, view.kernel, view.strides, view.pads, view.dilations, view.auto_pad)
    patches = np.concatenate(list(patch_blocks(x, geometry, max_bytes=1 << 20)), axis=1)  # [g, N·∏out, cols]
    got = np.matmul(view.to_matrix(w.astype(np.float64)), patches.transpose(0, 2, 1))  # [g, rows, N·∏out]
    n, positions = y.shape[0], int(np.prod(y.shape[2:]))
    want = y.reshape(n, group, c_out // group, positions).transpose(1, 2, 0, 3).reshape(got.shape)
    _close(got, want)


def test_conv_columns_are_channel_major_and_nm_order_puts_channels_innermost():
    view = _view(helper.make_node("Conv", ["x", "W"], ["y"]), 1, (8, 3, 2, 2))
    assert view.positions == 4 and view.in_axis == 1 and view.capture_op == "Conv"
    order = view.nm_order
    assert order is not None and sorted(order) == list(range(12))
    # after the permutation, column t·C + c is (channel c, position t), whose im2col column is c·P + t
    assert [int(order[t * 3 + c]) for t in range(4) for c in range(3)] == [
        c * 4 + t for t in range(4) for c in range(3)
    ]


def test_a_conv_view_captures_what_the_conv_reads():
    node = helper.make_node("Conv", ["x", "W"], ["y"], group=2, pads=[1, 1, 0, 0], auto_pad="NOTSET")
    view = _view(node, 1, (4, 3, 3, 1))
    spec = LayerSpec.from_view(view, key="k", node="conv", activation=view.activation_name(node))
    assert (spec.capture_op, spec.activation, spec.cols, spec.groups) == ("Conv", "x", 9, 2)
    assert (spec.kernel, spec.strides, spec.pads, spec.dilations, spec.auto_pad) == (
        (3, 1),
        (1, 1),
        (1, 1, 0, 0),
        (1, 1),
        "NOTSET",
    )


# --------------------------------------------------------------------------- Gemm, MatMul


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_view_times_rows_is_the_gemm(trans_a, trans_b):
    rng = np.random.default_rng(1)
    m, k, n = 5, 7, 3
    node = helper.make_node("Gemm", ["a", "B"], ["y"], transA=trans_a, transB=trans_b)
    view = _view(node, 1, (n, k) if trans_b else (k, n))
    assert (view.groups, view.rows, view.cols, view.trans_a) == (1, n, k, bool(trans_a))
    assert view.in_axis == (1 if trans_b else 0) and view.axes == (() if trans_b else (1, 0))
    w = _round_trips(view, rng)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    y = _run(node, {"a": a}, {"B": w}, 2)
    rows = (a.T if view.trans_a else a).astype(np.float64)  # capture's cut: op(A), one row per output row
    _close(view.to_matrix(w.astype(np.float64))[0] @ rows.T, y.T)
    spec = LayerSpec.from_view(view, key="k", node="gemm", activation="a")
    assert (spec.capture_op, spec.cols, spec.trans_a, spec.groups) == ("Gemm", k, bool(trans_a), 1)


def test_matmul_view_times_rows_is_the_matmul():
    rng = np.random.default_rng(2)
    node = helper.make_node("MatMul", ["a", "W"], ["y"])
    view = _view(node, 1, (6, 4))
    assert (view.groups, view.rows, view.cols, view.in_axis) == (1, 4, 6, 0)
    w = _round_trips(view, rng)
    a = rng.standard_normal((2, 3, 6)).astype(np.float32)
    y = _run(node, {"a": a}, {"W": w}, 3)
    rows = a.reshape(-1, 6).astype(np.float64)  # capture's cut: [∏leading, K]
    _close(view.to_matrix(w.astype(np.float64))[0] @ rows.T, y.reshape(-1, 4).T)
    spec = LayerSpec.from_view(view, key="k", node="mm", activation=view.activation_name(node))
    assert (spec.capture_op, spec.activation, spec.cols) == ("MatMul", "a", 6)


# --------------------------------------------------------------------------- recurrent


def test_recurrent_views_of_w_and_r_are_the_gate_products():
    """An RNN with an identity activation (Affine 1, 0) and no bias: ``h_t = W·x_t + R·h_{t−1}``,
    so ``W_0·x_t`` is the first step and ``R_0·h_{t−1}`` (read from Y) is the rest of every later one."""
    rng = np.random.default_rng(3)
    steps, batch, inputs, hidden = 4, 2, 3, 5
    node = helper.make_node(
        "RNN", ["x", "W", "R"], ["Y"], hidden_size=hidden, activations=["Affine"], activation_alpha=[1.0],
        activation_beta=[0.0],
    )  # fmt: skip
    w_view = _view(node, 1, (1, hidden, inputs))
    r_view = _view(node, 2, (1, hidden, hidden))
    assert (w_view.activation_name(node), r_view.activation_name(node)) == ("x", "Y")
    assert (w_view.cols, r_view.cols, w_view.groups, w_view.in_axis) == (inputs, hidden, 1, 2)
    w = _round_trips(w_view, rng) * 0.5
    r = _round_trips(r_view, rng) * 0.3
    x = rng.standard_normal((steps, batch, inputs)).astype(np.float32)
    y = _run(node, {"x": x}, {"W": w, "R": r}, 4)  # [T, 1, B, H]
    states = y[:, 0].astype(np.float64)  # h_1 … h_T
    input_part = w_view.to_matrix(w.astype(np.float64))[0] @ x.reshape(-1, inputs).T.astype(np.float64)
    input_part = input_part.T.reshape(steps, batch, hidden)
    _close(input_part[0], states[0])  # h_0 = 0
    recurrent_part = r_view.to_matrix(r.astype(np.float64))[0] @ states[:-1].reshape(-1, hidden).T
    _close(recurrent_part.T.reshape(steps - 1, batch, hidden), states[1:] - input_part[1:])


@pytest.mark.parametrize("op, gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_views_round_trip_one_group_per_direction(op, gates):
    node = helper.make_node(op, ["x", "W", "R"], ["Y"], hidden_size=4, direction="bidirectional")
    view = _view(node, 1, (2, gates * 4, 3))
    assert (view.groups, view.rows, view.cols, view.capture_groups) == (2, gates * 4, 3, 1)
    _round_trips(view, np.random.default_rng(4))
    assert LayerSpec.from_view(view, key="k", node="n", activation="x").groups == 1  # directions share x_t


def test_gru_r_without_linear_before_reset_is_one_group_per_direction_and_gate_block():
    """``R_z, R_r`` read ``h_{t−1}``, ``R_h`` reads ``r_t ⊙ h_{t−1}``: group ``3d + k`` is block ``k`` of ``R[d]``."""
    node = helper.make_node("GRU", ["x", "W", "R", "B"], ["Y"], hidden_size=4, direction="bidirectional")
    view = _view(node, 2, (2, 12, 4))
    assert (view.groups, view.rows, view.cols, view.capture_groups, view.capture_op) == (6, 4, 4, 6, "Directions")
    assert view.activation_name(node) == "Y" and view.read_names(node) == ("x", "W", "R", "B", "", "")
    r = _round_trips(view, np.random.default_rng(6))
    np.testing.assert_array_equal(view.to_matrix(r)[4], r[1, 4:8])  # direction 1, reset block


# --------------------------------------------------------------------------- no view


def test_weight_on_the_left_of_a_matmul() -> None:
    """``W @ x``: ``W [M, K]`` is the matrix as stored (rows M, columns K), x is input 1."""
    node = helper.make_node("MatMul", ["W", "x"], ["y"])
    view = ops.spec_of(node).matrix_view(node, 0, (4, 3))
    assert not isinstance(view, str)
    assert (view.rows, view.cols, view.in_axis, view.axes, view.capture_op) == (4, 3, 1, (), "MatMulLeft")
    assert view.activation_name(node) == "x"
    _round_trips(view, np.random.default_rng(5))


@pytest.mark.parametrize(
    "node, index, shape, reason",
    [
        (
            helper.make_node("GRU", ["x", "W", "R"], ["Y"], hidden_size=4, activations=["HardSigmoid", "Tanh"]),
            2,
            (1, 12, 4),
            "linear_before_reset=0 and activations",
        ),
        (helper.make_node("RNN", ["x", "W", "R"], ["Y"], hidden_size=4, layout=1), 1, (1, 4, 3), "layout=1"),
        (helper.make_node("ConvTranspose", ["x", "W"], ["y"]), 1, (4, 6, 3, 3), "overlapping"),
        (helper.make_node("MatMul", ["W", "x"], ["y"]), 0, (2, 4, 3), "MatMul input 0 with shape [2, 4, 3]"),
        (helper.make_node("Gemm", ["W", "x"], ["y"]), 0, (2, 3), "Gemm input 0"),
        (helper.make_node("Relu", ["x"], ["y"]), 0, (2, 3), "Relu input 0"),
    ],
)
def test_weights_without_a_view_say_why(node, index, shape, reason):
    view = ops.spec_of(node).matrix_view(node, index, shape)
    assert isinstance(view, str) and reason in view
