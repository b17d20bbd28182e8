"""Small deterministic ONNX graphs for the tests, built with ``onnx.helper``.

Every builder returns a :class:`onnx.ModelProto` (IR version 8, opset 17 unless an op
needs another) whose weights are seeded random values, so two calls give byte-identical
models. Nodes are always named: discovery reports readers by node name. Nothing is
downloaded or read from disk.

Shapes are chosen so that each weight has at least 256 elements (the default
``min_size``) unless a test is about small tensors; recurrent and depthwise weights are
smaller and are tested with ``min_size=0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # onnx 1.23 defaults to IR 14, which onnxruntime 1.31 cannot load

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
INT64 = TensorProto.INT64
BOOL = TensorProto.BOOL

Dims = Sequence[int | str | None]


# ---------------------------------------------------------------------------------------
# Primitives


def rand(shape: Sequence[int], seed: int, dtype: type | str = np.float32) -> np.ndarray:
    """Standard-normal values of ``shape`` from ``seed``, cast to ``dtype``."""
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(dtype)


def init(name: str, array: np.ndarray) -> TensorProto:
    """An initializer called ``name`` holding ``array`` (as raw_data)."""
    return numpy_helper.from_array(np.asarray(array), name)


def ints(name: str, values: Sequence[int]) -> TensorProto:
    """A 1-D int64 initializer (shapes, axes, starts ...)."""
    return init(name, np.asarray(values, dtype=np.int64))


def constant(output: str, array: np.ndarray) -> NodeProto:
    """A Constant node named ``const_<output>`` whose ``value`` is ``array``."""
    return helper.make_node(
        "Constant", [], [output], name=f"const_{output}", value=numpy_helper.from_array(np.asarray(array), output)
    )


def value(name: str, shape: Dims, elem_type: int = FLOAT) -> ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs: object) -> NodeProto:
    return helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs)


def graph(
    nodes: Sequence[NodeProto],
    inputs: Sequence[ValueInfoProto],
    outputs: Sequence[ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
    name: str = "g",
) -> GraphProto:
    return helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))


def model(
    nodes: Sequence[NodeProto],
    inputs: Sequence[ValueInfoProto],
    outputs: Sequence[ValueInfoProto],
    initializers: Sequence[TensorProto] = (),
    *,
    opset: int = OPSET,
    name: str = "test",
) -> ModelProto:
    """A model around one graph, at IR version 8 and the given opset."""
    return helper.make_model(
        graph(nodes, inputs, outputs, initializers, name),
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=IR_VERSION,
        producer_name="onnxprune-tests",
    )


def _stored(name: str, array: np.ndarray, as_constant: bool) -> tuple[list[NodeProto], list[TensorProto]]:
    """``array`` as an initializer, or as a Constant node (then returned as a node)."""
    return ([constant(name, array)], []) if as_constant else ([], [init(name, array)])


_NUMPY_TYPES = {FLOAT: np.float32, FLOAT16: np.float16, INT64: np.int64, BOOL: np.bool_}


def feeds(model: ModelProto, seed: int = 0, **overrides: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic inputs for every graph input that is not an initializer.

    Float inputs get standard-normal values; int64 inputs zeros and bools ``True``
    unless given in ``overrides``. Every dimension must be static.
    """
    stored = {t.name for t in model.graph.initializer}
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed)
    for vi in model.graph.input:
        if vi.name in stored:
            continue
        if vi.name in overrides:
            out[vi.name] = np.asarray(overrides[vi.name])
            continue
        elem = vi.type.tensor_type.elem_type
        shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        dtype = _NUMPY_TYPES[elem]
        if dtype is np.bool_:
            out[vi.name] = np.ones(shape, dtype=bool)
        elif dtype is np.int64:
            out[vi.name] = np.zeros(shape, dtype=np.int64)
        else:
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
    return out


# ---------------------------------------------------------------------------------------
# Convolutions


def conv(*, as_constant: bool = False) -> ModelProto:
    """X[1,4,8,8] -> Conv(W[8,4,3,3], B[8], pads 1) -> Y[1,8,8,8]."""
    nodes, inits = _stored("W", rand((8, 4, 3, 3), 1), as_constant)
    more_nodes, more_inits = _stored("B", rand((8,), 2), as_constant)
    nodes += more_nodes
    inits += more_inits
    nodes.append(node("Conv", ["X", "W", "B"], ["Y"], "conv", pads=[1, 1, 1, 1]))
    return model(nodes, [value("X", (1, 4, 8, 8))], [value("Y", (1, 8, 8, 8))], inits)


def conv_transpose() -> ModelProto:
    """X[1,4,5,5] -> ConvTranspose(W[4,8,3,3] = [C_in, C_out, k, k], B[8]) -> Y[1,8,7,7]."""
    inits = [init("W", rand((4, 8, 3, 3), 3)), init("B", rand((8,), 4))]
    nodes = [node("ConvTranspose", ["X", "W", "B"], ["Y"], "deconv")]
    return model(nodes, [value("X", (1, 4, 5, 5))], [value("Y", (1, 8, 7, 7))], inits)


def depthwise_conv() -> ModelProto:
    """X[1,16,6,6] -> Conv(W[16,1,3,3], group=16) -> Y[1,16,4,4]."""
    inits = [init("W", rand((16, 1, 3, 3), 5))]
    nodes = [node("Conv", ["X", "W"], ["Y"], "dwconv", group=16)]
    return model(nodes, [value("X", (1, 16, 6, 6))], [value("Y", (1, 16, 4, 4))], inits)


def conv_computed_weight() -> ModelProto:
    """A Conv whose weight is a graph input (computed at run time)."""
    nodes = [node("Conv", ["X", "W"], ["Y"], "conv")]
    return model(nodes, [value("X", (1, 4, 8, 8)), value("W", (8, 4, 3, 3))], [value("Y", (1, 8, 6, 6))])


def conv_scaled_weight() -> ModelProto:
    """A Conv whose weight is Mul(stored W, stored s): a computed weight, the stored W is
    not a weight input itself."""
    inits = [init("W", rand((8, 4, 3, 3), 6)), init("s", np.asarray(0.5, dtype=np.float32))]
    nodes = [node("Mul", ["W", "s"], ["Ws"], "scale"), node("Conv", ["X", "Ws"], ["Y"], "conv")]
    return model(nodes, [value("X", (1, 4, 8, 8))], [value("Y", (1, 8, 6, 6))], inits)


# ---------------------------------------------------------------------------------------
# Gemm and MatMul


def gemm(*, trans_b: int, as_constant: bool = False) -> ModelProto:
    """X[2,32] -> Gemm(W, C[16], transB) -> Y[2,16]; W is [32,16] or, transposed, [16,32]."""
    shape = (16, 32) if trans_b else (32, 16)
    nodes, inits = _stored("W", rand(shape, 7), as_constant)
    inits.append(init("C", rand((16,), 8)))
    nodes.append(node("Gemm", ["X", "W", "C"], ["Y"], "gemm", transB=trans_b))
    return model(nodes, [value("X", (2, 32))], [value("Y", (2, 16))], inits)


def gemm_constant_a(*, trans_a: int = 0) -> ModelProto:
    """Y[16,4] = Gemm(A = stored W, B = X[32,4]): the weight is input 0, [16,32] or,
    with transA, [32,16]."""
    shape = (32, 16) if trans_a else (16, 32)
    nodes = [node("Gemm", ["W", "X"], ["Y"], "gemm", transA=trans_a)]
    return model(nodes, [value("X", (32, 4))], [value("Y", (16, 4))], [init("W", rand(shape, 9))])


def matmul_right(*, as_constant: bool = False) -> ModelProto:
    """X[2,32] · W[32,16] -> Y[2,16]."""
    nodes, inits = _stored("W", rand((32, 16), 10), as_constant)
    nodes.append(node("MatMul", ["X", "W"], ["Y"], "matmul"))
    return model(nodes, [value("X", (2, 32))], [value("Y", (2, 16))], inits)


def matmul_left() -> ModelProto:
    """W[16,32] · X[32,4] -> Y[16,4]."""
    nodes = [node("MatMul", ["W", "X"], ["Y"], "matmul")]
    return model(nodes, [value("X", (32, 4))], [value("Y", (16, 4))], [init("W", rand((16, 32), 11))])


def matmul_batched() -> ModelProto:
    """X[3,2,16] · W[3,16,8] -> Y[3,2,8]: one weight matrix per batch entry."""
    nodes = [node("MatMul", ["X", "W"], ["Y"], "bmm")]
    return model(nodes, [value("X", (3, 2, 16))], [value("Y", (3, 2, 8))], [init("W", rand((3, 16, 8), 12))])


def matmul_small() -> ModelProto:
    """X[2,8] · W[8,8] + b[8]: only tensors below the default min_size."""
    inits = [init("W", rand((8, 8), 13)), init("b", rand((8,), 14))]
    nodes = [node("MatMul", ["X", "W"], ["XW"], "matmul"), node("Add", ["XW", "b"], ["Y"], "add")]
    return model(nodes, [value("X", (2, 8))], [value("Y", (2, 8))], inits)


# ---------------------------------------------------------------------------------------
# Recurrent layers

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SEQ, BATCH, INPUT, HIDDEN = 3, 2, 16, 8


def recurrent(op_type: str) -> ModelProto:
    """X[3,2,16] -> LSTM/GRU/RNN(W[1,g·8,16], R[1,g·8,8], B[1,2·g·8]) -> Y, Y_h."""
    gates = GATES[op_type]
    inits = [
        init("W", rand((1, gates * HIDDEN, INPUT), 20)),
        init("R", rand((1, gates * HIDDEN, HIDDEN), 21)),
        init("B", rand((1, 2 * gates * HIDDEN), 22)),
    ]
    nodes = [node(op_type, ["X", "W", "R", "B"], ["Y", "Y_h"], "rnn", hidden_size=HIDDEN)]
    outputs = [value("Y", (SEQ, 1, BATCH, HIDDEN)), value("Y_h", (1, BATCH, HIDDEN))]
    return model(nodes, [value("X", (SEQ, BATCH, INPUT))], outputs, inits)


def lstm_concat_gates() -> ModelProto:
    """An LSTM whose W is Concat(W_i, W_o, W_f, W_c) along the gate axis, one stored
    [1,8,16] piece per gate (as some exporters write it), and R stored whole."""
    pieces = ["W_i", "W_o", "W_f", "W_c"]
    inits = [init(p, rand((1, HIDDEN, INPUT), 30 + i)) for i, p in enumerate(pieces)]
    inits.append(init("R", rand((1, 4 * HIDDEN, HIDDEN), 35)))
    nodes = [
        node("Concat", pieces, ["W"], "concat_w", axis=1),
        node("LSTM", ["X", "W", "R"], ["Y", "Y_h"], "lstm", hidden_size=HIDDEN),
    ]
    outputs = [value("Y", (SEQ, 1, BATCH, HIDDEN)), value("Y_h", (1, BATCH, HIDDEN))]
    return model(nodes, [value("X", (SEQ, BATCH, INPUT))], outputs, inits)


# ---------------------------------------------------------------------------------------
# Weights reached through transparent ops


def identity_matmul() -> ModelProto:
    """W[32,16] -> Identity -> MatMul."""
    nodes = [node("Identity", ["W"], ["W_id"], "identity"), node("MatMul", ["X", "W_id"], ["Y"], "matmul")]
    return model(nodes, [value("X", (2, 32))], [value("Y", (2, 16))], [init("W", rand((32, 16), 40))])


def cast_fp16_matmul() -> ModelProto:
    """float16 W[32,16] -> Cast(to=FLOAT) -> MatMul (a float16 model run in float32)."""
    nodes = [node("Cast", ["W"], ["W32"], "cast", to=FLOAT), node("MatMul", ["X", "W32"], ["Y"], "matmul")]
    return model(nodes, [value("X", (2, 32))], [value("Y", (2, 16))], [init("W", rand((32, 16), 41, np.float16))])


def cast_fp16_conv() -> ModelProto:
    """float16 W[8,4,3,3] -> Cast(to=FLOAT) -> Conv."""
    nodes = [node("Cast", ["W"], ["W32"], "cast", to=FLOAT), node("Conv", ["X", "W32"], ["Y"], "conv")]
    inits = [init("W", rand((8, 4, 3, 3), 42, np.float16))]
    return model(nodes, [value("X", (1, 4, 8, 8))], [value("Y", (1, 8, 6, 6))], inits)


def transpose_matmul() -> ModelProto:
    """W[16,32] (out, in: a torch Linear weight) -> Transpose -> MatMul with [32,16]."""
    nodes = [node("Transpose", ["W"], ["Wt"], "transpose", perm=[1, 0]), node("MatMul", ["X", "Wt"], ["Y"], "matmul")]
    return model(nodes, [value("X", (2, 32))], [value("Y", (2, 16))], [init("W", rand((16, 32), 43))])


def transpose_conv_hwio() -> ModelProto:
    """A TensorFlow-layout W[3,3,4,8] (kh, kw, C_in, C_out) -> Transpose -> Conv."""
    nodes = [
        node("Transpose", ["W"], ["Wt"], "transpose", perm=[3, 2, 0, 1]),
        node("Conv", ["X", "Wt"], ["Y"], "conv"),
    ]
    inits = [init("W", rand((3, 3, 4, 8), 44))]
    return model(nodes, [value("X", (1, 4, 8, 8))], [value("Y", (1, 8, 6, 6))], inits)


def reshape_conv() -> ModelProto:
    """W[8,36] -> Reshape [8,4,3,3] -> Conv: C_out survives the reshape, C_in does not."""
    nodes = [node("Reshape", ["W", "shape"], ["W4"], "reshape"), node("Conv", ["X", "W4"], ["Y"], "conv")]
    inits = [init("W", rand((8, 36), 45)), ints("shape", [8, 4, 3, 3])]
    return model(nodes, [value("X", (1, 4, 8, 8))], [value("Y", (1, 8, 6, 6))], inits)


def reshape_matmul() -> ModelProto:
    """W[1,32,16] -> Reshape [32,-1] -> MatMul: both axes survive."""
    nodes = [node("Reshape", ["W", "shape"], ["W2"], "reshape"), node("MatMul", ["X", "W2"], ["Y"], "matmul")]
    inits = [init("W", rand((1, 32, 16), 46)), ints("shape", [32, -1])]
    return model(nodes, [value("X", (2, 32))], [value("Y", (2, 16))], inits)


def unsqueeze_matmul() -> ModelProto:
    """W[32,16] -> Unsqueeze(axes=[0]) -> MatMul with X[1,2,32]."""
    nodes = [node("Unsqueeze", ["W", "axes"], ["W3"], "unsqueeze"), node("MatMul", ["X", "W3"], ["Y"], "matmul")]
    inits = [init("W", rand((32, 16), 47)), ints("axes", [0])]
    return model(nodes, [value("X", (1, 2, 32))], [value("Y", (1, 2, 16))], inits)


def slice_matmul() -> ModelProto:
    """One stored W[32,32] sliced into two column halves, each read by its own MatMul
    (a fused QK projection split in two)."""
    nodes = [
        node("Slice", ["W", "zero", "half", "one"], ["Wa"], "slice_a"),
        node("Slice", ["W", "half", "full", "one"], ["Wb"], "slice_b"),
        node("MatMul", ["X", "Wa"], ["Ya"], "matmul_a"),
        node("MatMul", ["X", "Wb"], ["Yb"], "matmul_b"),
    ]
    inits = [init("W", rand((32, 32), 48)), ints("zero", [0]), ints("half", [16]), ints("full", [32]), ints("one", [1])]
    return model(nodes, [value("X", (2, 32))], [value("Ya", (2, 16)), value("Yb", (2, 16))], inits)


def slice_steps_matmul() -> ModelProto:
    """W[32,32] -> Slice(starts, ends, axes omitted (""), steps [1,2]) -> [32,16] -> MatMul:
    every other column."""
    nodes = [
        node("Slice", ["W", "starts", "ends", "", "steps"], ["Ws"], "slice"),
        node("MatMul", ["X", "Ws"], ["Y"], "matmul"),
    ]
    inits = [init("W", rand((32, 32), 58)), ints("starts", [0, 0]), ints("ends", [32, 32]), ints("steps", [1, 2])]
    return model(nodes, [value("X", (2, 32))], [value("Y", (2, 16))], inits)


def split_matmul() -> ModelProto:
    """A fused QKV weight W[32,48] split along its columns into three [32,16] pieces,
    each read by its own MatMul."""
    nodes = [
        node("Split", ["W", "sizes"], ["Wq", "Wk", "Wv"], "split", axis=1),
        *(node("MatMul", ["X", f"W{p}"], [f"Y{p}"], f"matmul_{p}") for p in "qkv"),
    ]
    inits = [init("W", rand((32, 48), 56)), ints("sizes", [16, 16, 16])]
    return model(nodes, [value("X", (2, 32))], [value(f"Y{p}", (2, 16)) for p in "qkv"], inits)


def dequantize_matmul() -> ModelProto:
    """int8 W[32,16] -> DequantizeLinear(scale, zero point) -> MatMul (a QDQ model)."""
    weights = np.clip(np.round(rand((32, 16), 49) * 40), -127, 127).astype(np.int8)
    inits = [init("W", weights), init("scale", np.asarray(0.02, np.float32)), init("zp", np.asarray(0, np.int8))]
    nodes = [
        node("DequantizeLinear", ["W", "scale", "zp"], ["Wf"], "dequantize"),
        node("MatMul", ["X", "Wf"], ["Y"], "matmul"),
    ]
    return model(nodes, [value("X", (2, 32))], [value("Y", (2, 16))], inits)


# ---------------------------------------------------------------------------------------
# Sharing, subgraphs, embeddings, graph outputs


def shared_weight() -> ModelProto:
    """One W[32,16] read by a MatMul and by a Gemm (transB=0)."""
    nodes = [node("MatMul", ["X1", "W"], ["Y1"], "matmul"), node("Gemm", ["X2", "W"], ["Y2"], "gemm")]
    inputs = [value("X1", (2, 32)), value("X2", (3, 32))]
    return model(nodes, inputs, [value("Y1", (2, 16)), value("Y2", (3, 16))], [init("W", rand((32, 16), 50))])


def if_branches() -> ModelProto:
    """Both branches of an If read the outer initializer W[32,16]."""
    then_branch = graph([node("MatMul", ["X", "W"], ["then_y"], "then_matmul")], [], [value("then_y", (2, 16))])
    else_branch = graph(
        [node("Neg", ["X"], ["neg_x"], "else_neg"), node("MatMul", ["neg_x", "W"], ["else_y"], "else_matmul")],
        [],
        [value("else_y", (2, 16))],
    )
    nodes = [node("If", ["cond"], ["Y"], "if", then_branch=then_branch, else_branch=else_branch)]
    inputs = [value("cond", (), BOOL), value("X", (2, 32))]
    return model(nodes, inputs, [value("Y", (2, 16))], [init("W", rand((32, 16), 51))])


def if_branch_constant() -> ModelProto:
    """The then branch holds its weight as a Constant node Wc[32,16]; the else branch
    slices X instead."""
    then_branch = graph(
        [constant("Wc", rand((32, 16), 54)), node("MatMul", ["X", "Wc"], ["then_y"], "then_matmul")],
        [],
        [value("then_y", (2, 16))],
    )
    else_branch = graph(
        [node("Slice", ["X", "zero", "half", "one"], ["else_y"], "else_slice")], [], [value("else_y", (2, 16))]
    )
    nodes = [node("If", ["cond"], ["Y"], "if", then_branch=then_branch, else_branch=else_branch)]
    inputs = [value("cond", (), BOOL), value("X", (2, 32))]
    inits = [ints("zero", [0]), ints("half", [16]), ints("one", [1])]
    return model(nodes, inputs, [value("Y", (2, 16))], inits)


def if_colliding_labels() -> ModelProto:
    """Two If nodes whose subgraphs get the same label: one named "If_1", the other
    unnamed at index 1 (labelled op_type_index). Each then branch holds its own
    initializer named Wa[32,16]."""
    nodes = []
    for k, name in ((1, "If_1"), (2, "")):
        then_branch = graph(
            [node("MatMul", ["X", "Wa"], [f"then_y{k}"], "then_matmul")],
            [],
            [value(f"then_y{k}", (2, 16))],
            [init("Wa", rand((32, 16), 90 + k))],
        )
        else_branch = graph(
            [node("Slice", ["X", "zero", "half", "one"], [f"else_y{k}"], "else_slice")],
            [],
            [value(f"else_y{k}", (2, 16))],
        )
        nodes.append(node("If", ["cond"], [f"Y{k}"], name, then_branch=then_branch, else_branch=else_branch))
    inputs = [value("cond", (), BOOL), value("X", (2, 32))]
    inits = [ints("zero", [0]), ints("half", [16]), ints("one", [1])]
    return model(nodes, inputs, [value("Y1", (2, 16)), value("Y2", (2, 16))], inits)


def loop_body() -> ModelProto:
    """A Loop (2 iterations) whose body holds its own initializer Wl[16,16]: h = tanh(h·Wl)."""
    body = graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("MatMul", ["h_in", "Wl"], ["hw"], "body_matmul"),
            node("Tanh", ["hw"], ["h_out"], "body_tanh"),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL), value("h_in", (2, 16))],
        [value("cond_out", (), BOOL), value("h_out", (2, 16))],
        [init("Wl", rand((16, 16), 52))],
        name="body",
    )
    inits = [init("trip", np.asarray(2, np.int64)), init("keep_going", np.asarray(True))]
    nodes = [node("Loop", ["trip", "keep_going", "X"], ["Y"], "loop", body=body)]
    return model(nodes, [value("X", (2, 16))], [value("Y", (2, 16))], inits)


def loop_outer_weight() -> ModelProto:
    """A Loop body reading the outer W[16,16] (out, in) through a Transpose."""
    body = graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("Transpose", ["W"], ["Wt"], "body_transpose", perm=[1, 0]),
            node("MatMul", ["h_in", "Wt"], ["hw"], "body_matmul"),
            node("Tanh", ["hw"], ["h_out"], "body_tanh"),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL), value("h_in", (2, 16))],
        [value("cond_out", (), BOOL), value("h_out", (2, 16))],
        name="body",
    )
    inits = [init("W", rand((16, 16), 55)), init("trip", np.asarray(2, np.int64)), init("keep_going", np.asarray(True))]
    nodes = [node("Loop", ["trip", "keep_going", "X"], ["Y"], "loop", body=body)]
    return model(nodes, [value("X", (2, 16))], [value("Y", (2, 16))], inits)


def loop_with_if() -> ModelProto:
    """An If nested in a Loop body; its then branch reads the main graph's W[16,16]."""
    then_branch = graph([node("MatMul", ["h_in", "W"], ["then_y"], "then_matmul")], [], [value("then_y", (2, 16))])
    else_branch = graph([node("Neg", ["h_in"], ["else_y"], "else_neg")], [], [value("else_y", (2, 16))])
    body = graph(
        [
            node("Identity", ["cond_in"], ["cond_out"], "body_cond"),
            node("If", ["cond_in"], ["hw"], "body_if", then_branch=then_branch, else_branch=else_branch),
            node("Tanh", ["hw"], ["h_out"], "body_tanh"),
        ],
        [value("i", (), INT64), value("cond_in", (), BOOL), value("h_in", (2, 16))],
        [value("cond_out", (), BOOL), value("h_out", (2, 16))],
        name="body",
    )
    inits = [init("W", rand((16, 16), 57)), init("trip", np.asarray(2, np.int64)), init("keep_going", np.asarray(True))]
    nodes = [node("Loop", ["trip", "keep_going", "X"], ["Y"], "loop", body=body)]
    return model(nodes, [value("X", (2, 16))], [value("Y", (2, 16))], inits)


def scan_body() -> ModelProto:
    """A Scan over X[3,2,16] whose body holds Ws[16,16]: h = tanh(x_t·Ws + h)."""
    body = graph(
        [
            node("MatMul", ["x_t", "Ws"], ["xw"], "body_matmul"),
            node("Add", ["xw", "h_in"], ["pre"], "body_add"),
            node("Tanh", ["pre"], ["h_out"], "body_tanh"),
            node("Identity", ["h_out"], ["y_t"], "body_out"),
        ],
        [value("h_in", (2, 16)), value("x_t", (2, 16))],
        [value("h_out", (2, 16)), value("y_t", (2, 16))],
        [init("Ws", rand((16, 16), 53))],
        name="body",
    )
    nodes = [node("Scan", ["H0", "X"], ["H", "Y"], "scan", body=body, num_scan_inputs=1)]
    inputs = [value("H0", (2, 16)), value("X", (3, 2, 16))]
    return model(nodes, inputs, [value("H", (2, 16)), value("Y", (3, 2, 16))])


VOCAB, DIM = 50, 16


def embedding() -> ModelProto:
    """E[50,16] -> Gather(ids[2,3]) -> Y[2,3,16]."""
    nodes = [node("Gather", ["E", "ids"], ["Y"], "embed")]
    return model(nodes, [value("ids", (2, 3), INT64)], [value("Y", (2, 3, DIM))], [init("E", rand((VOCAB, DIM), 60))])


def tied_embedding() -> ModelProto:
    """E[50,16] is both the input embedding (Gather) and, transposed, the output
    projection (MatMul): weight tying as in GPT-2."""
    nodes = [
        node("Gather", ["E", "ids"], ["h"], "embed"),
        node("Transpose", ["E"], ["Et"], "transpose", perm=[1, 0]),
        node("MatMul", ["h", "Et"], ["Y"], "lm_head"),
    ]
    inputs = [value("ids", (2, 3), INT64)]
    return model(nodes, inputs, [value("Y", (2, 3, VOCAB))], [init("E", rand((VOCAB, DIM), 61))])


def weight_is_output() -> ModelProto:
    """W[32,16] is read by a MatMul and also returned as a graph output."""
    nodes = [node("MatMul", ["X", "W"], ["Y"], "matmul")]
    outputs = [value("Y", (2, 16)), value("W", (32, 16))]
    return model(nodes, [value("X", (2, 32))], outputs, [init("W", rand((32, 16), 62))])


def shape_reader() -> ModelProto:
    """W[32,16] is read by a MatMul and by Shape (as torch exports ``weight.size(0)``)."""
    nodes = [node("Shape", ["W"], ["w_shape"], "shape"), node("MatMul", ["X", "W"], ["Y"], "matmul")]
    outputs = [value("Y", (2, 16)), value("w_shape", (2,), INT64)]
    return model(nodes, [value("X", (2, 32))], outputs, [init("W", rand((32, 16), 63))])


def initializers_as_inputs() -> ModelProto:
    """An old-style export (IR 3 habit) listing the initializer W[32,16] as a graph input."""
    m = matmul_right()
    m.graph.input.append(value("W", (32, 16)))
    return m


# ---------------------------------------------------------------------------------------
# Biases and normalization


def biases_and_norms() -> ModelProto:
    """Conv(W,B) -> BatchNorm -> Flatten -> Gemm(Wg,C) -> MatMul(Wm) + bm -> LayerNorm."""
    inits = [
        init("conv.W", rand((8, 4, 3, 3), 70)),
        init("conv.B", rand((8,), 71)),
        init("bn.scale", rand((8,), 72)),
        init("bn.bias", rand((8,), 73)),
        init("bn.mean", rand((8,), 74)),
        init("bn.var", np.abs(rand((8,), 75)) + 0.5),
        init("fc.W", rand((512, 16), 76) * 0.05),
        init("fc.C", rand((16,), 77)),
        init("proj.W", rand((16, 32), 78)),
        init("proj.b", rand((32,), 79)),
        init("ln.gamma", rand((32,), 80)),
        init("ln.beta", rand((32,), 81)),
    ]
    nodes = [
        node("Conv", ["X", "conv.W", "conv.B"], ["c"], "conv", pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["n"], "bn"),
        node("Flatten", ["n"], ["f"], "flatten"),
        node("Gemm", ["f", "fc.W", "fc.C"], ["g"], "fc"),
        node("MatMul", ["g", "proj.W"], ["p"], "proj"),
        node("Add", ["p", "proj.b"], ["pb"], "proj_bias"),
        node("LayerNormalization", ["pb", "ln.gamma", "ln.beta"], ["Y"], "ln"),
    ]
    return model(nodes, [value("X", (1, 4, 8, 8))], [value("Y", (1, 32))], inits)


def conv_gemm_matmul() -> ModelProto:
    """Three weights of three op types with layer-like names, for include/exclude/op_types:
    conv1.weight (Conv), fc.weight (Gemm) and head.weight (MatMul)."""
    inits = [
        init("conv1.weight", rand((8, 4, 3, 3), 90)),
        init("fc.weight", rand((16, 288), 91) * 0.1),
        init("head.weight", rand((16, 32), 92)),
    ]
    nodes = [
        node("Conv", ["X", "conv1.weight"], ["c"], "conv1"),
        node("Flatten", ["c"], ["f"], "flatten"),
        node("Gemm", ["f", "fc.weight"], ["g"], "fc", transB=1),
        node("MatMul", ["g", "head.weight"], ["Y"], "head"),
    ]
    return model(nodes, [value("X", (1, 4, 8, 8))], [value("Y", (1, 32))], inits)


def substitute(model: ModelProto, values: Mapping[str, np.ndarray]) -> ModelProto:
    """A copy of ``model`` with the stored tensors named in ``values`` (keys as
    ``scope::name`` or ``name`` in the main graph, Constant nodes by output) replaced."""
    out = ModelProto()
    out.CopyFrom(model)

    def visit(g: GraphProto, path: str) -> None:
        for tensor in g.initializer:
            key = f"{path}::{tensor.name}" if path else tensor.name
            if key in values:
                tensor.CopyFrom(numpy_helper.from_array(values[key], tensor.name))
        for n in g.node:
            for attr in n.attribute:
                if n.op_type == "Constant" and attr.name == "value":
                    key = f"{path}::{n.output[0]}" if path else n.output[0]
                    if key in values:
                        attr.t.CopyFrom(numpy_helper.from_array(values[key], attr.t.name))
                if attr.type == attr.GRAPH:
                    visit(attr.g, f"{path}/{n.name}/{attr.name}" if path else f"{n.name}/{attr.name}")

    visit(out.graph, "")
    return out


#: capture's sums of float32 activations come from float32 products (:data:`onnxprune.capture.BLOCK_ROWS`
#: rows each) added in float64: they agree with float64 sums to float32 rounding
F32 = {"rtol": 1e-5, "atol": 1e-6}
