"""MACs, FLOPs and non-zero-aware MACs (onnxprune.compute), and per-tensor sizes (onnxprune.stats).

Expected numbers are computed here from the weight shapes read with onnx and the formulas
of the module docstring; the output shapes of the hand-built graphs are checked against an
onnxruntime run, so a wrong formula here cannot agree with a wrong count there.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import builders as b
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import ModelProto, helper, numpy_helper

import onnxprune
from onnxprune.compute import ComputeStats, NodeCompute, count_compute
from onnxprune.errors import DataError
from onnxprune.graph.skeleton import data_free_model
from onnxprune.graph.tensors import read_array
from onnxprune.stats import LayerSize, layer_stats, param_stats, sparse_bytes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


# ---------------------------------------------------------------------------------------
# Helpers


def _load(name: str) -> ModelProto:
    return onnx.load(str(FIXTURES / f"{name}.onnx"))


def _stored(model: ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values of the main graph, by name; a Cast output
    (the fp16 fixture) maps to the stored tensor it casts."""
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            arrays[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    for n in model.graph.node:
        if n.op_type == "Cast" and n.input[0] in arrays:
            arrays[n.output[0]] = arrays[n.input[0]]
    return arrays


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv_out(size: int, k: int, stride: int, pad: int, dilation: int) -> int:
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


def _unshaped(name: str) -> onnx.ValueInfoProto:
    """A float graph output whose shape is left to inference."""
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


def _by_node(stats: ComputeStats) -> dict[str, NodeCompute]:
    return {n.key: n for n in stats.nodes}


def _nonzero(array: np.ndarray) -> int:
    return int(np.count_nonzero(array))


def _expected_fixture_macs(name: str, model: ModelProto, batch: int) -> dict[str, int]:
    """Hand count of every contracting node of a fixture, from its weight shapes."""
    w = _stored(model)
    expected: dict[str, int] = {}
    size = 8  # the CNNs take 8x8 digits; every Conv reads the previous Conv's output size
    for n in model.graph.node:
        if n.op_type == "Conv":
            a = _attrs(n)
            c_out, c_in_per_group, kh, kw = w[n.input[1]].shape
            pads, strides, dil = a["pads"], a["strides"], a["dilations"]
            h_out = _conv_out(size, kh, strides[0], pads[0] + pads[2], dil[0])
            w_out = _conv_out(size, kw, strides[1], pads[1] + pads[3], dil[1])
            expected[n.name] = batch * c_out * h_out * w_out * c_in_per_group * kh * kw
            size = h_out
        elif n.op_type == "Gemm":
            out_features, in_features = w[n.input[1]].shape  # transB=1 in every fixture
            assert _attrs(n)["transB"] == 1
            expected[n.name] = batch * out_features * in_features
        elif n.op_type == "MatMul":
            tokens, heads, head_dim = 10, 4, 16  # transformer_mnist1d: 10 tokens, d=64, 4 heads
            if n.input[1] in w:
                k, n_out = w[n.input[1]].shape
                expected[n.name] = batch * tokens * k * n_out
            else:  # Q·Kᵀ and softmax·V, both activations
                expected[n.name] = batch * heads * tokens * tokens * head_dim
        elif n.op_type == "LSTM":
            directions, gates_hidden, inputs = w[n.input[1]].shape
            hidden = w[n.input[2]].shape[2]
            steps = 40  # lstm_mnist1d: 40 steps of 1 feature
            expected[n.name] = directions * steps * batch * gates_hidden * (inputs + hidden)
    assert expected, f"no contracting node found in {name}"
    return expected


# ---------------------------------------------------------------------------------------
# Fixtures: hand counts, batch 1 and 4


FIXTURE_SHAPES = {
    "cnn_digits": (1, 8, 8),
    "cnn_digits_const": (1, 8, 8),
    "mlp_digits": (64,),
    "mlp_digits_fp16": (64,),
    "transformer_mnist1d": (40,),
    "lstm_mnist1d": (40,),
}


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", list(FIXTURE_SHAPES))
def test_fixture_hand_counts(name, batch):
    model = _load(name)
    stats = count_compute(model, input_shapes={"input": (batch, *FIXTURE_SHAPES[name])})
    expected = _expected_fixture_macs(name, model, batch)

    assert {n.node: n.macs for n in stats.nodes} == expected
    assert all(n.counted and n.reason is None and n.scope == "" for n in stats.nodes)
    assert stats.uncounted == ()
    assert stats.macs == sum(expected.values())
    assert stats.flops == 2 * stats.macs
    # dense trained weights: no zeros, so a sparse kernel does all the work
    assert stats.nonzero_macs == stats.macs and stats.nonzero_flops == stats.flops
    # every Conv and Gemm names its stored weight (through Cast and Constant nodes too)
    stored = _stored(model)
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            assert _by_node(stats)[n.name].weight in (n.input[1], f"{n.input[1]}_fp16")
            assert n.input[1] in stored


@pytest.mark.parametrize("name", list(FIXTURE_SHAPES))
def test_fixture_counts_are_linear_in_batch(name):
    model = _load(name)
    one = count_compute(model, input_shapes={"input": (1, *FIXTURE_SHAPES[name])})
    four = count_compute(model, input_shapes={"input": (4, *FIXTURE_SHAPES[name])})
    assert one.macs > 0
    assert four.macs == 4 * one.macs
    assert four.nonzero_macs == 4 * one.nonzero_macs
    assert four.other["Gemm bias"] == 4 * one.other["Gemm bias"]


def test_fixture_other_bucket_mlp():
    model = _load("mlp_digits")
    stats = count_compute(model, input_shapes={"input": (3, 64)})
    widths = [numpy_helper.to_array(t).shape[0] for t in model.graph.initializer if t.name.endswith(".bias")]
    # Gemm bias adds one element per output; Relu follows fc1 and fc2 (256 and 128 wide)
    assert stats.other == {"Gemm bias": 3 * sum(widths), "Relu": 3 * (256 + 128)}


def test_cnn_constant_nodes_count_like_initializers():
    shape = {"input": (2, 1, 8, 8)}
    plain = count_compute(_load("cnn_digits"), input_shapes=shape)
    const = count_compute(_load("cnn_digits_const"), input_shapes=shape)
    assert [(n.node, n.macs, n.weight) for n in plain.nodes] == [(n.node, n.macs, n.weight) for n in const.nodes]
    assert plain.other == const.other  # Constant nodes cost nothing at run time


def test_transformer_attention_has_no_weight():
    stats = count_compute(_load("transformer_mnist1d"), input_shapes={"input": (2, 40)})
    attention = [n for n in stats.nodes if n.node.endswith(("attn/MatMul", "attn/MatMul_1"))]
    assert len(attention) == 4
    assert all(n.weight is None and n.density == 1.0 for n in attention)
    assert all(n.macs == 2 * 4 * 10 * 10 * 16 for n in attention)


def test_to_dict_is_json():
    stats = count_compute(_load("lstm_mnist1d"), input_shapes={"input": (1, 40)})
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["macs"] == stats.macs
    assert data["flops"] == 2 * stats.macs
    assert [n["node"] for n in data["nodes"]] == ["/lstm/LSTM", "/fc/Gemm"]
    assert data["nodes"][0]["weight"] == "lstm.W, lstm.R"
    assert data["other"] == stats.other


# ---------------------------------------------------------------------------------------
# Hand-built graphs, one op each


def _run_shapes(model: ModelProto, feeds: dict[str, np.ndarray]) -> list[tuple[int, ...]]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [tuple(out.shape) for out in sess.run(None, feeds)]


def _single(model: ModelProto, shapes: dict[str, tuple[int, ...]]) -> NodeCompute:
    stats = count_compute(model, input_shapes=shapes)
    (entry,) = stats.nodes
    assert entry.counted, entry.reason
    assert stats.macs == entry.macs and stats.flops == 2 * entry.macs
    return entry


def test_conv_stride_pad_dilation_groups():
    n, c_in, c_out, groups, kh, kw = 2, 6, 9, 3, 3, 2
    strides, pads, dilations = [2, 3], [1, 0, 2, 1], [2, 1]
    w = b.rand((c_out, c_in // groups, kh, kw), 1)
    node = b.node("Conv", ["X", "W"], ["Y"], "conv", group=groups, strides=strides, pads=pads, dilations=dilations)
    model = b.model([node], [b.value("X", ("n", c_in, 11, 13))], [_unshaped("Y")], [b.init("W", w)])
    h_out = _conv_out(11, kh, strides[0], pads[0] + pads[2], dilations[0])
    w_out = _conv_out(13, kw, strides[1], pads[1] + pads[3], dilations[1])
    assert _run_shapes(model, {"X": np.ones((n, c_in, 11, 13), np.float32)}) == [(n, c_out, h_out, w_out)]
    entry = _single(model, {"X": (n, c_in, 11, 13)})
    assert entry.macs == n * c_out * h_out * w_out * (c_in // groups) * kh * kw == 2 * 9 * 5 * 5 * 2 * 3 * 2
    assert entry.weight == "W"


def test_conv_transpose_groups():
    n, c_in, c_out, groups, k = 1, 4, 6, 2, 3
    w = b.rand((c_in, c_out // groups, k, k), 2)
    node = b.node("ConvTranspose", ["X", "W"], ["Y"], "deconv", group=groups, strides=[2, 2])
    model = b.model([node], [b.value("X", (n, c_in, 5, 5))], [_unshaped("Y")], [b.init("W", w)])
    assert _run_shapes(model, {"X": np.ones((n, c_in, 5, 5), np.float32)}) == [(n, c_out, 11, 11)]
    entry = _single(model, {"X": (n, c_in, 5, 5)})
    assert entry.macs == n * c_in * 5 * 5 * (c_out // groups) * k * k


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_transposes_and_bias(trans_a, trans_b):
    m, k, n = 3, 5, 7
    a_shape = (k, m) if trans_a else (m, k)
    w = b.rand((n, k) if trans_b else (k, n), 3)
    node = b.node("Gemm", ["A", "W", "C"], ["Y"], "gemm", transA=trans_a, transB=trans_b)
    inits = [b.init("W", w), b.init("C", b.rand((n,), 4))]
    model = b.model([node], [b.value("A", a_shape)], [b.value("Y", (m, n))], inits)
    assert _run_shapes(model, {"A": np.ones(a_shape, np.float32)}) == [(m, n)]
    stats = count_compute(model, input_shapes={"A": a_shape})
    assert stats.nodes[0].macs == stats.macs == m * n * k
    assert stats.other == {"Gemm bias": m * n}


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "out_shape", "macs"),
    [
        ((2, 1, 4, 5), (3, 5, 6), (2, 3, 4, 6), 2 * 3 * 4 * 6 * 5),  # batch dims broadcast
        ((4, 5), (2, 5, 6), (2, 4, 6), 2 * 4 * 6 * 5),
        ((5,), (2, 5, 6), (2, 6), 2 * 6 * 5),  # 1-D A: a row, its axis dropped
        ((3, 4, 5), (5,), (3, 4), 3 * 4 * 5),  # 1-D B: a column
        ((5,), (5,), (), 5),
    ],
)
def test_matmul_broadcasting(a_shape, b_shape, out_shape, macs):
    node = b.node("MatMul", ["A", "B"], ["Y"], "matmul")
    model = b.model([node], [b.value("A", a_shape), b.value("B", b_shape)], [_unshaped("Y")])
    feeds = {"A": np.ones(a_shape, np.float32), "B": np.ones(b_shape, np.float32)}
    assert _run_shapes(model, feeds) == [out_shape]
    entry = _single(model, {"A": a_shape, "B": b_shape})
    assert entry.macs == macs
    assert entry.weight is None and entry.nonzero_macs == macs  # two activations


@pytest.mark.parametrize("op_type", ["LSTM", "GRU", "RNN"])
def test_recurrent(op_type):
    model = b.recurrent(op_type)
    w, r = (read_array(t) for t in model.graph.initializer[:2])
    x = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op_type]
    steps, batch, inputs = x
    hidden = r.shape[2]
    entry = _single(model, {"X": x})
    assert entry.macs == steps * batch * gates * hidden * (inputs + hidden)
    assert w.shape[1] == gates * hidden
    assert entry.weight == "W, R"


def test_einsum_is_listed_not_counted():
    node = b.node("Einsum", ["A", "B"], ["Y"], "einsum", equation="ij,jk->ik")
    model = b.model([node], [b.value("A", (2, 3)), b.value("B", (3, 4))], [b.value("Y", (2, 4))])
    stats = count_compute(model, input_shapes={})
    assert stats.macs == 0 and stats.uncounted == ("einsum",)
    assert "Einsum" in stats.nodes[0].reason
    assert stats.other == {}  # not smuggled into the elementwise bucket either


def _computed_reshape_nodes(prefix: str = "") -> list[onnx.NodeProto]:
    """X -> Reshape(X, Abs(Shape(X))) -> MatMul(W): the target is computed at run time by an
    op ONNX data propagation does not follow."""
    p = prefix
    return [
        b.node("Shape", ["X"], [f"{p}s"], f"{p}shape"),
        b.node("Abs", [f"{p}s"], [f"{p}t"], f"{p}abs"),
        b.node("Reshape", ["X", f"{p}t"], [f"{p}r"], f"{p}reshape"),
        b.node("MatMul", [f"{p}r", "W"], [f"{p}y"], f"{p}matmul"),
    ]


def test_computed_reshape_uses_onnxruntime():
    nodes = [*_computed_reshape_nodes(), b.node("Relu", ["y"], ["Y"], "relu")]
    model = b.model(nodes, [b.value("X", ("n", 4, 8))], [_unshaped("Y")], [b.init("W", b.rand((8, 3), 5))])
    # shape inference alone leaves the MatMul input unknown
    fixed = data_free_model(model, {"X": (2, 4, 8)})
    inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    r = next(v for v in inferred.graph.value_info if v.name == "r")
    assert not all(d.HasField("dim_value") for d in r.type.tensor_type.shape.dim)

    stats = count_compute(model, input_shapes={"X": (2, 4, 8)})
    assert stats.nodes[0].counted and stats.nodes[0].macs == 2 * 4 * 8 * 3
    assert stats.other["Reshape"] == 2 * 4 * 8 and stats.other["Relu"] == 2 * 4 * 3
    assert any("onnxruntime" in note for note in stats.notes)
    assert model.graph.output[0].name == "Y" and len(model.graph.output) == 1  # the model is not changed


def test_unknown_shape_in_subgraph_is_not_guessed():
    then_branch = b.graph(_computed_reshape_nodes("t_"), [], [_unshaped("t_y")])
    else_branch = b.graph([b.node("MatMul", ["X", "W"], ["e_y"], "e_matmul")], [], [_unshaped("e_y")])
    nodes = [b.node("If", ["cond"], ["Y"], "if", then_branch=then_branch, else_branch=else_branch)]
    inputs = [b.value("cond", (), b.BOOL), b.value("X", (2, 4, 8))]
    model = b.model(nodes, inputs, [_unshaped("Y")], [b.init("W", b.rand((8, 3), 6))])
    stats = count_compute(model, input_shapes={})
    entries = _by_node(stats)
    missing = entries["if/then_branch::t_matmul"]
    assert not missing.counted and missing.macs == 0
    assert "unknown" in missing.reason and "t_r" in missing.reason
    assert stats.uncounted == ("if/then_branch::t_matmul",)
    assert entries["if/else_branch::e_matmul"].macs == 2 * 4 * 8 * 3


def test_onnxruntime_failure_leaves_node_uncounted():
    nodes = [
        helper.make_node("Mystery", ["X"], ["m"], name="mystery", domain="com.example"),
        b.node("MatMul", ["m", "W"], ["Y"], "matmul"),
    ]
    model = b.model(nodes, [b.value("X", (2, 8))], [_unshaped("Y")], [b.init("W", b.rand((8, 3), 11))])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    stats = count_compute(model, input_shapes={})
    (entry,) = stats.nodes
    assert not entry.counted and entry.macs == 0 and stats.macs == 0
    assert "shape of 'm' unknown" in entry.reason and "onnxruntime could not run the model" in entry.reason
    assert stats.uncounted == ("matmul",)
    assert any("com.example::Mystery" in note for note in stats.notes)  # left out of 'other', said so


def test_stale_declared_shapes_are_not_trusted():
    # the exporter fixed the output to batch 2; the input is dynamic and run at batch 5
    nodes = [b.node("MatMul", ["X", "W"], ["y"], "matmul"), b.node("Relu", ["y"], ["Y"], "relu")]
    model = b.model(nodes, [b.value("X", ("n", 32))], [b.value("Y", (2, 16))], [b.init("W", b.rand((32, 16), 12))])
    model.graph.value_info.append(b.value("y", (2, 16)))
    stats = count_compute(model, input_shapes={"X": (5, 32)})
    assert stats.macs == 5 * 32 * 16
    assert stats.other == {"Relu": 5 * 16}


def test_initializers_listed_as_inputs_need_no_shape():
    stats = count_compute(b.initializers_as_inputs(), input_shapes={})
    assert stats.macs == 2 * 32 * 16 and stats.nodes[0].weight == "W"


# ---------------------------------------------------------------------------------------
# Subgraphs


def test_if_branches_listed_not_totalled():
    model = b.if_branches()
    stats = count_compute(model, input_shapes={})
    entries = _by_node(stats)
    assert set(entries) == {"if/then_branch::then_matmul", "if/else_branch::else_matmul"}
    assert all(e.macs == 2 * 32 * 16 for e in entries.values())
    assert stats.macs == 0 and stats.other == {}
    assert any("If 'if'" in note and "not added to the totals" in note for note in stats.notes)


def test_loop_body_counted_once():
    stats = count_compute(b.loop_body(), input_shapes={})
    (entry,) = stats.nodes
    assert entry.scope == "loop/body" and entry.macs == 2 * 16 * 16
    assert stats.macs == entry.macs  # one iteration, though the loop runs twice
    assert stats.other["Tanh"] == 2 * 16
    assert any("trip count is unknown" in note for note in stats.notes)


def test_if_inside_loop_stays_out_of_totals():
    stats = count_compute(b.loop_with_if(), input_shapes={})
    (entry,) = stats.nodes
    assert entry.scope == "loop/body/body_if/then_branch" and entry.macs == 2 * 16 * 16
    assert stats.macs == 0


# ---------------------------------------------------------------------------------------
# Non-zero-aware MACs


def _zero_half(array: np.ndarray) -> np.ndarray:
    out = array.copy()
    flat = out.reshape(-1)
    flat[: flat.size // 2] = 0
    return out


def test_zeroing_half_a_weight_halves_its_node():
    model = _load("mlp_digits")
    fc2 = next(t for t in model.graph.initializer if t.name == "fc2.weight")
    fc2.CopyFrom(numpy_helper.from_array(_zero_half(read_array(fc2)), "fc2.weight"))
    stats = count_compute(model, input_shapes={"input": (2, 64)})
    nodes = _by_node(stats)
    assert nodes["/fc2/Gemm"].nonzero_macs * 2 == nodes["/fc2/Gemm"].macs == 2 * 128 * 256
    assert nodes["/fc2/Gemm"].density == 0.5
    assert nodes["/fc1/Gemm"].nonzero_macs == nodes["/fc1/Gemm"].macs
    assert stats.nonzero_macs == stats.macs - nodes["/fc2/Gemm"].macs // 2
    assert stats.nonzero_flops == 2 * stats.nonzero_macs


def test_negative_zero_counts_as_zero():
    w = b.rand((8, 4), 7)
    w[:, :2] = -0.0
    model = b.model(
        [b.node("MatMul", ["X", "W"], ["Y"], "matmul")],
        [b.value("X", (1, 8))],
        [b.value("Y", (1, 4))],
        [b.init("W", w)],
    )
    entry = _single(model, {})
    assert entry.macs == 32 and entry.nonzero_macs == 16


@pytest.mark.parametrize("name", ["mlp_digits_fp16", "cnn_digits_const", "transformer_mnist1d", "cnn_digits"])
def test_pruned_fixture_nonzero_macs(name):
    pruned, result = onnxprune.prune(FIXTURES / f"{name}.onnx", onnxprune.PruneConfig(sparsity=0.5))
    assert result.pruned
    batch = 2
    stats = count_compute(pruned, input_shapes={"input": (batch, *FIXTURE_SHAPES[name])})
    dense = count_compute(_load(name), input_shapes={"input": (batch, *FIXTURE_SHAPES[name])})
    assert [n.macs for n in stats.nodes] == [n.macs for n in dense.nodes]
    stored = _stored(pruned)
    reads = {n.name: n for n in pruned.graph.node}
    for entry in stats.nodes:
        node = reads[entry.node]
        weight = next((i for i in reversed(node.input[:2]) if i in stored), None)
        if weight is None:  # attention: both operands are activations
            assert entry.nonzero_macs == entry.macs and entry.weight is None
            continue
        array = stored[weight]
        assert entry.nonzero_macs == entry.macs * _nonzero(array) // array.size
        assert entry.nonzero_macs < entry.macs or array.size < 256  # below min_size: not pruned
    assert stats.nonzero_macs < 0.6 * stats.macs
    assert stats.macs == dense.macs


def test_lstm_density_weighted_by_work():
    model = _load("lstm_mnist1d")
    r = next(t for t in model.graph.initializer if t.name == "lstm.R")
    r.CopyFrom(numpy_helper.from_array(_zero_half(read_array(r)), "lstm.R"))
    w = read_array(next(t for t in model.graph.initializer if t.name == "lstm.W"))
    batch = 3
    stats = count_compute(model, input_shapes={"input": (batch, 40)})
    lstm = _by_node(stats)["/lstm/LSTM"]
    # nonzero = dense·(d_W·I + d_R·H)/(I + H) = steps·batch·(nnz(W) + nnz(R))
    assert lstm.nonzero_macs == 40 * batch * (_nonzero(w) + _nonzero(read_array(r)))
    assert lstm.nonzero_macs == 40 * batch * (256 + 256 * 64 // 2)
    assert lstm.macs == 40 * batch * 256 * 65


def test_concatenated_pieces_count_together():
    model = b.lstm_concat_gates()
    first = model.graph.initializer[0]  # W_i, one quarter of W
    first.CopyFrom(numpy_helper.from_array(np.zeros_like(read_array(first)), first.name))
    x = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    entry = _single(model, {"X": x})
    steps, batch, inputs = x
    w_size = 4 * 8 * inputs
    r_size = 4 * 8 * 8
    assert entry.nonzero_macs == steps * batch * (w_size * 3 // 4 + r_size)
    assert entry.weight == "W_i, W_o, W_f, W_c, R"


# ---------------------------------------------------------------------------------------
# Bad input and memory


def test_bad_input_shapes():
    model = _load("mlp_digits")
    with pytest.raises(DataError, match="unknown input"):
        count_compute(model, input_shapes={"images": (1, 64)})
    with pytest.raises(DataError, match="no shape given for input 'input'"):
        count_compute(model, input_shapes={})
    with pytest.raises(DataError, match="does not fit"):
        count_compute(model, input_shapes={"input": (1, 65)})
    with pytest.raises(DataError, match="does not fit"):
        count_compute(model, input_shapes={"input": (64,)})


def test_error_messages_are_one_line():
    with pytest.raises(DataError) as exc_info:
        count_compute(_load("cnn_digits"), input_shapes={"input": (1, 3, 8, 8)})
    assert "\n" not in str(exc_info.value) and "[batch, 1, 8, 8]" in str(exc_info.value)


def test_skeleton_drops_large_data():
    big = b.rand((512, 1024), 8)  # 2 MiB
    nodes = [
        b.node("Reshape", ["X", "target"], ["x2"], "reshape"),
        b.node("MatMul", ["x2", "W"], ["y"], "matmul"),
        b.constant("W2", b.rand((1024, 256), 9)),
        b.node("MatMul", ["y", "W2"], ["Y"], "matmul2"),
    ]
    inits = [b.init("W", big), b.ints("target", [-1, 512])]
    model = b.model(nodes, [b.value("X", ("n", 2, 256))], [_unshaped("Y")], inits)
    skeleton = data_free_model(model, {"X": (3, 2, 256)})
    assert skeleton.ByteSize() < 10_000 < model.ByteSize()
    assert [tuple(t.dims) for t in skeleton.graph.initializer] == [(512, 1024), (2,)]
    assert read_array(skeleton.graph.initializer[1]).tolist() == [-1, 512]  # shape targets keep their data
    stats = count_compute(model, input_shapes={"X": (3, 2, 256)})
    assert [n.macs for n in stats.nodes] == [3 * 512 * 1024, 3 * 1024 * 256]
    assert not any("onnxruntime" in note for note in stats.notes)


# ---------------------------------------------------------------------------------------
# Per-tensor sizes (onnxprune.stats)


def test_coo_bytes_exact():
    w = np.zeros((4, 5), np.float32)
    w[0, 1], w[2, 3], w[3, 4] = 1.5, -2.0, 3.0
    w[1, 1] = -0.0  # a zero
    h = np.zeros((10,), np.float16)
    h[3] = 1.0
    node = b.node("Add", ["X", "H"], ["Y"], "add")
    model = b.model([node], [b.value("X", (10,), b.FLOAT16)], [b.value("Y", (10,), b.FLOAT16)])
    model.graph.initializer.extend([b.init("W", w), b.init("H", h)])
    layers = {layer.name: layer for layer in layer_stats(model)}
    assert layers["W"] == LayerSize("W", "", (4, 5), "float32", 20, 3, 80, 3 * 4 + 3 * 8)
    assert layers["H"] == LayerSize("H", "", (10,), "float16", 10, 1, 20, 2 + 8)
    assert sparse_bytes(layers.values()) == 36 + 10


def test_dense_cheaper_than_coo():
    w = b.rand((2, 3), 10)
    model = b.model(
        [b.node("MatMul", ["X", "W"], ["Y"], "mm")], [b.value("X", (1, 2))], [b.value("Y", (1, 3))], [b.init("W", w)]
    )
    (layer,) = layer_stats(model)
    assert (layer.dense_bytes, layer.coo_bytes) == (24, 72)
    assert sparse_bytes([layer]) == 24


def test_layer_stats_subgraph_and_constants():
    layers = layer_stats(b.if_branch_constant())
    floats = {(layer.scope, layer.name): layer.shape for layer in layers}
    assert floats == {("if/then_branch", "Wc"): (32, 16)}  # int64 slice bounds are not parameters


@pytest.mark.parametrize("name", list(FIXTURE_SHAPES))
def test_layer_stats_cover_param_stats(name):
    model = _load(name)
    layers = layer_stats(model)
    params = param_stats(model)
    assert sum(layer.parameters for layer in layers) == params.parameters
    assert sum(layer.nonzeros for layer in layers) == params.nonzeros


def test_pruned_fixture_sparse_bytes():
    pruned, result = onnxprune.prune(FIXTURES / "mlp_digits.onnx", onnxprune.PruneConfig(sparsity=0.5))
    layers = {layer.name: layer for layer in layer_stats(pruned)}
    for pruned_layer in result.pruned:
        layer = layers[pruned_layer.name]
        assert layer.nonzeros == layer.parameters - math.floor(0.5 * layer.parameters)
        assert layer.coo_bytes == layer.nonzeros * 12
        assert layer.sparse_bytes == layer.dense_bytes  # 50% dense: COO (12 B per non-zero) does not pay off
    dense_total = sum(layer.dense_bytes for layer in layers.values())
    assert sparse_bytes(layers.values()) == dense_total  # nothing under a third dense

    at_90, _ = onnxprune.prune(FIXTURES / "mlp_digits.onnx", onnxprune.PruneConfig(sparsity=0.9))
    sparse = layer_stats(at_90)
    weights = [layer for layer in sparse if layer.name.endswith(".weight")]
    assert all(layer.nonzeros == layer.parameters - math.floor(0.9 * layer.parameters) for layer in weights)
    expected = sum(min(layer.parameters * 4, layer.nonzeros * 12) for layer in sparse)
    assert sparse_bytes(sparse) == expected < sum(layer.dense_bytes for layer in sparse)
