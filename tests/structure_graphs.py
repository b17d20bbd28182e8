"""Small ONNX graphs for the channel dependency tests (``tests/test_structure.py``).

Every builder returns a deterministic :class:`onnx.ModelProto` (IR version 8, opset 17,
seeded random weights) with named nodes. Arguments make some units *dead*: ``dead`` lists
output channels whose producer weights are zeroed, ``dead_bias`` the value their bias then
takes (``None`` keeps the random bias). The docstring of each builder names its groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builders import init, ints, model, node, rand, value
from onnx import ModelProto, helper

from onnxprune.graph.tensors import read_array

BOOL = 9  # TensorProto.BOOL


def _kill(weight: np.ndarray, bias: np.ndarray | None, dead: Sequence[int], dead_bias: float | None, axis: int) -> None:
    """Zero the ``dead`` output channels of ``weight`` (along ``axis``) and set their bias."""
    for c in dead:
        np.moveaxis(weight, axis, 0)[c] = 0.0
        if bias is not None and dead_bias is not None:
            bias[c] = dead_bias


def bn_inits(prefix: str, channels: int, seed: int, gamma_zero: Sequence[int] = ()) -> list:
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    gamma[list(gamma_zero)] = 0.0
    beta = rng.uniform(0.2, 1.0, channels).astype(np.float32)  # positive: relu(beta) is a nonzero constant
    mean = rng.standard_normal(channels).astype(np.float32)
    var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    return [
        init(f"{prefix}_{n}", v) for n, v in zip(("scale", "B", "mean", "var"), (gamma, beta, mean, var), strict=True)
    ]


def bn_node(x: str, y: str, prefix: str) -> object:
    return node("BatchNormalization", [x, *(f"{prefix}_{n}" for n in ("scale", "B", "mean", "var"))], [y], prefix)


# ---------------------------------------------------------------------------------------
# Convolutions


def conv_chain(
    *,
    bn: bool = True,
    dead: Sequence[int] = (),
    dead_bias: float | None = None,
    gamma_zero: Sequence[int] = (),
    k2: int = 3,
    pad2: int = 1,
) -> ModelProto:
    """X[2,3,8,8] -> conv1(W1[8,3,3,3], B1, pads 1) [-> bn1] -> relu1 -> conv2(W2[6,8,k2,k2], B2, pads pad2) -> Y.

    One group: 8 units, source conv1, sink conv2; members W1 axis 0, B1, (bn1's four
    parameters), W2 axis 1.
    """
    w1, b1 = rand((8, 3, 3, 3), 101), rand((8,), 102)
    _kill(w1, b1, dead, dead_bias, 0)
    inits = [init("W1", w1), init("B1", b1), init("W2", rand((6, 8, k2, k2), 103)), init("B2", rand((6,), 104))]
    nodes = [node("Conv", ["X", "W1", "B1"], ["c1"], "conv1", pads=[1, 1, 1, 1])]
    if bn:
        inits += bn_inits("bn1", 8, 105, gamma_zero)
        nodes.append(bn_node("c1", "n1", "bn1"))
    nodes += [
        node("Relu", ["n1" if bn else "c1"], ["r1"], "relu1"),
        node("Conv", ["r1", "W2", "B2"], ["Y"], "conv2", pads=[pad2] * 4),
    ]
    out = 8 + 2 * pad2 - k2 + 1
    return model(nodes, [value("X", (2, 3, 8, 8))], [value("Y", (2, 6, out, out))], inits)


def residual_add(*, dead_a: Sequence[int] = (), dead_b: Sequence[int] = ()) -> ModelProto:
    """X[2,4,8,8] -> conv_a(Wa[8,4,3,3], Ba, pads 1) + conv_b(Wb[8,4,1,1], Bb) -> add -> relu -> conv_c(Wc[5,8,1,1]) -> Y.

    One group (conv_a and conv_b merged by the Add), sink conv_c. ``dead_a``/``dead_b``
    zero the weights and biases of those channels of one branch.
    """
    wa, ba = rand((8, 4, 3, 3), 111), rand((8,), 112)
    wb, bb = rand((8, 4, 1, 1), 113), rand((8,), 114)
    _kill(wa, ba, dead_a, 0.0, 0)
    _kill(wb, bb, dead_b, 0.0, 0)
    inits = [init("Wa", wa), init("Ba", ba), init("Wb", wb), init("Bb", bb), init("Wc", rand((5, 8, 1, 1), 115))]
    nodes = [
        node("Conv", ["X", "Wa", "Ba"], ["a"], "conv_a", pads=[1, 1, 1, 1]),
        node("Conv", ["X", "Wb", "Bb"], ["b"], "conv_b"),
        node("Add", ["a", "b"], ["s"], "add"),
        node("Relu", ["s"], ["r"], "relu"),
        node("Conv", ["r", "Wc"], ["Y"], "conv_c"),
    ]
    return model(nodes, [value("X", (2, 4, 8, 8))], [value("Y", (2, 5, 8, 8))], inits)


def concat_branches(*, dead_a: Sequence[int] = (), dead_b: Sequence[int] = ()) -> ModelProto:
    """X[2,4,8,8] -> conv_a(Wa[6,4,3,3], pads 1) | conv_b(Wb[10,4,1,1]) -> concat(axis 1) -> relu -> conv_c(Wc[5,16,1,1]) -> Y.

    Two groups (6 and 10 units); conv_c's input axis holds conv_a's at offset 0 and
    conv_b's at offset 6.
    """
    wa, ba = rand((6, 4, 3, 3), 121), rand((6,), 122)
    wb, bb = rand((10, 4, 1, 1), 123), rand((10,), 124)
    _kill(wa, ba, dead_a, 0.0, 0)
    _kill(wb, bb, dead_b, 0.0, 0)
    inits = [
        init("Wa", wa),
        init("Ba", ba),
        init("Wb", wb),
        init("Bb", bb),
        init("Wc", rand((5, 16, 1, 1), 125)),
        init("Bc", rand((5,), 126)),
    ]
    nodes = [
        node("Conv", ["X", "Wa", "Ba"], ["a"], "conv_a", pads=[1, 1, 1, 1]),
        node("Conv", ["X", "Wb", "Bb"], ["b"], "conv_b"),
        node("Concat", ["a", "b"], ["cat"], "concat", axis=1),
        node("Relu", ["cat"], ["r"], "relu"),
        node("Conv", ["r", "Wc", "Bc"], ["Y"], "conv_c"),
    ]
    return model(nodes, [value("X", (2, 4, 8, 8))], [value("Y", (2, 5, 8, 8))], inits)


def depthwise_chain() -> ModelProto:
    """X[2,4,8,8] -> conv1(W1[8,4,1,1], B1) -> relu1 -> dw(Wd[8,1,3,3], Bd, group 8, pads 1) -> relu2 -> conv2(W2[6,8,1,1]) -> Y.

    One group of 8 carried through the depthwise conv: Wd and Bd are params, dw's
    ``group`` attribute an edit; sink conv2.
    """
    inits = [
        init("W1", rand((8, 4, 1, 1), 131)),
        init("B1", rand((8,), 132)),
        init("Wd", rand((8, 1, 3, 3), 133)),
        init("Bd", rand((8,), 134)),
        init("W2", rand((6, 8, 1, 1), 135)),
    ]
    nodes = [
        node("Conv", ["X", "W1", "B1"], ["c1"], "conv1"),
        node("Relu", ["c1"], ["r1"], "relu1"),
        node("Conv", ["r1", "Wd", "Bd"], ["d"], "dw", group=8, pads=[1, 1, 1, 1]),
        node("Relu", ["d"], ["r2"], "relu2"),
        node("Conv", ["r2", "W2"], ["Y"], "conv2"),
    ]
    return model(nodes, [value("X", (2, 4, 8, 8))], [value("Y", (2, 6, 8, 8))], inits)


def grouped_chain() -> ModelProto:
    """X[2,4,8,8] -> conv1(W1[8,4,1,1]) -> relu -> gconv(Wg[8,4,3,3], group 2, pads 1) -> Y: conv1's group is blocked."""
    inits = [init("W1", rand((8, 4, 1, 1), 141)), init("Wg", rand((8, 4, 3, 3), 142))]
    nodes = [
        node("Conv", ["X", "W1"], ["c1"], "conv1"),
        node("Relu", ["c1"], ["r1"], "relu1"),
        node("Conv", ["r1", "Wg"], ["Y"], "gconv", group=2, pads=[1, 1, 1, 1]),
    ]
    return model(nodes, [value("X", (2, 4, 8, 8))], [value("Y", (2, 8, 8, 8))], inits)


def flatten_gemm(*, dead: Sequence[int] = (), dead_bias: float | None = None) -> ModelProto:
    """X[2,3,6,6] -> conv(W1[4,3,3,3], B1) -> [2,4,4,4] -> relu -> flatten -> [2,64] -> gemm(W2[64,10], C2) -> Y.

    One group of 4 units; each unit is a block of 16 = 4·4 rows of W2 (per = 16).
    """
    w1, b1 = rand((4, 3, 3, 3), 151), rand((4,), 152)
    _kill(w1, b1, dead, dead_bias, 0)
    inits = [init("W1", w1), init("B1", b1), init("W2", rand((64, 10), 153)), init("C2", rand((10,), 154))]
    nodes = [
        node("Conv", ["X", "W1", "B1"], ["c"], "conv"),
        node("Relu", ["c"], ["r"], "relu"),
        node("Flatten", ["r"], ["f"], "flatten"),
        node("Gemm", ["f", "W2", "C2"], ["Y"], "gemm"),
    ]
    return model(nodes, [value("X", (2, 3, 6, 6))], [value("Y", (2, 10))], inits)


# ---------------------------------------------------------------------------------------
# Linear layers


def ffn(*, dead: Sequence[int] = (), dead_bias: float | None = None, layernorm: bool = False) -> ModelProto:
    """X[2,5,16] -> mm1(W1[16,32]) -> add1(b1[32]) [-> ln(axis -1)] -> relu -> mm2(W2[32,16]) -> add2(b2) -> Y.

    The hidden group has 32 units: W1 axis 1, b1 (a param of add1), W2 axis 0. With
    ``layernorm`` a LayerNormalization over the hidden channels blocks it.
    """
    w1, b1 = rand((16, 32), 161), rand((32,), 162)
    _kill(w1, b1, dead, dead_bias, 1)
    inits = [init("W1", w1), init("b1", b1), init("W2", rand((32, 16), 163)), init("b2", rand((16,), 164))]
    nodes = [node("MatMul", ["X", "W1"], ["h"], "mm1"), node("Add", ["h", "b1"], ["hb"], "add1")]
    if layernorm:
        inits += [init("ln_scale", rand((32,), 165)), init("ln_bias", rand((32,), 166))]
        nodes.append(node("LayerNormalization", ["hb", "ln_scale", "ln_bias"], ["hn"], "ln", axis=-1))
    nodes += [
        node("Relu", ["hn" if layernorm else "hb"], ["r"], "relu"),
        node("MatMul", ["r", "W2"], ["o"], "mm2"),
        node("Add", ["o", "b2"], ["Y"], "add2"),
    ]
    return model(nodes, [value("X", (2, 5, 16))], [value("Y", (2, 5, 16))], inits)


def mlp(
    widths: Sequence[int] = (16, 64, 32, 10), *, dead: Sequence[int] = (), dead_bias: float | None = None
) -> ModelProto:
    """X[N,w0] -> fc1 (Gemm transB=1) -> relu1 -> fc2 -> relu2 -> ... -> fcK -> Y[N,wK] (N symbolic).

    Hidden groups: one per hidden layer (``widths[1:-1]``). ``dead`` kills rows of fc1.
    """
    nodes, inits = [], []
    x = "X"
    layers = len(widths) - 1
    for k in range(layers):
        w, bias = rand((widths[k + 1], widths[k]), 170 + 2 * k) * 0.5, rand((widths[k + 1],), 171 + 2 * k)
        if k == 0:
            _kill(w, bias, dead, dead_bias, 0)
        inits += [init(f"fc{k + 1}_W", w), init(f"fc{k + 1}_B", bias)]
        out = "Y" if k == layers - 1 else f"h{k + 1}"
        nodes.append(node("Gemm", [x, f"fc{k + 1}_W", f"fc{k + 1}_B"], [out], f"fc{k + 1}", transB=1))
        if k < layers - 1:
            nodes.append(node("Relu", [out], [f"r{k + 1}"], f"relu{k + 1}"))
            x = f"r{k + 1}"
    return model(nodes, [value("X", ("N", widths[0]))], [value("Y", ("N", widths[-1]))], inits)


def attention(
    *, explicit: bool = True, heads: int = 4, head_dim: int = 4, seq: int = 6, dead_heads: Sequence[int] = ()
) -> ModelProto:
    """Multi-head self-attention on X[1,seq,D] (D = heads·head_dim):

    q/k/v = X·W + b (MatMul + Add); Reshape [1,seq,H,d] (one shape constant read by all three
    Reshapes; ``explicit`` writes H, else -1); Transpose to [1,H,seq,d] (k to [1,H,d,seq]);
    scores = q·kᵀ · 1/√d; Softmax(-1); ctx = p·v; Transpose back; Reshape [1,seq,D] (or
    [1,seq,-1]); out = ctx·Wo + bo -> Y.

    One group of H units of d channels (q, k, v merged), sink ``out_mm`` (Wo rows).
    ``dead_heads`` zero the q, k and v columns and biases of those heads.
    """
    d_model = heads * head_dim
    inits = []
    nodes = []
    for k, p in enumerate("qkv"):
        w, bias = rand((d_model, d_model), 180 + 2 * k) * 0.3, rand((d_model,), 181 + 2 * k)
        for h in dead_heads:
            w[:, h * head_dim : (h + 1) * head_dim] = 0.0
            bias[h * head_dim : (h + 1) * head_dim] = 0.0
        inits += [init(f"W{p}", w), init(f"b{p}", bias)]
        nodes += [
            node("MatMul", ["X", f"W{p}"], [f"{p}_mm"], f"{p}_mm"),
            node("Add", [f"{p}_mm", f"b{p}"], [f"{p}_lin"], f"{p}_add"),
            node("Reshape", [f"{p}_lin", "heads_shape"], [f"{p}_heads"], f"{p}_reshape"),
        ]
    inits += [
        ints("heads_shape", [1, seq, heads if explicit else -1, head_dim]),
        ints("merge_shape", [1, seq, d_model if explicit else -1]),
        init("scale", np.asarray(1.0 / np.sqrt(head_dim), dtype=np.float32)),
        init("Wo", rand((d_model, d_model), 190) * 0.3),
        init("bo", rand((d_model,), 191)),
    ]
    nodes += [
        node("Transpose", ["q_heads"], ["q_t"], "q_transpose", perm=[0, 2, 1, 3]),
        node("Transpose", ["k_heads"], ["k_t"], "k_transpose", perm=[0, 2, 3, 1]),
        node("Transpose", ["v_heads"], ["v_t"], "v_transpose", perm=[0, 2, 1, 3]),
        node("MatMul", ["q_t", "k_t"], ["scores"], "qk"),
        node("Mul", ["scores", "scale"], ["scaled"], "scale_mul"),
        node("Softmax", ["scaled"], ["probs"], "softmax", axis=-1),
        node("MatMul", ["probs", "v_t"], ["ctx"], "pv"),
        node("Transpose", ["ctx"], ["ctx_t"], "ctx_transpose", perm=[0, 2, 1, 3]),
        node("Reshape", ["ctx_t", "merge_shape"], ["merged"], "merge_reshape"),
        node("MatMul", ["merged", "Wo"], ["o"], "out_mm"),
        node("Add", ["o", "bo"], ["Y"], "out_add"),
    ]
    return model(nodes, [value("X", (1, seq, d_model))], [value("Y", (1, seq, d_model))], inits)


# ---------------------------------------------------------------------------------------
# Split, Slice


def concat_split() -> ModelProto:
    """conv_a (4) | conv_b (6) -> concat(axis 1) -> split(axis 1, stored sizes [4,6]) -> relu_a/relu_b -> conv_c/conv_d -> Yc, Yd.

    Two groups, each passing through the Split: the sizes tensor is an edit of both.
    """
    inits = [
        init("Wa", rand((4, 4, 3, 3), 201)),
        init("Ba", rand((4,), 202)),
        init("Wb", rand((6, 4, 1, 1), 203)),
        init("Bb", rand((6,), 204)),
        ints("sizes", [4, 6]),
        init("Wc", rand((3, 4, 1, 1), 205)),
        init("Wd", rand((5, 6, 1, 1), 206)),
    ]
    nodes = [
        node("Conv", ["X", "Wa", "Ba"], ["a"], "conv_a", pads=[1, 1, 1, 1]),
        node("Conv", ["X", "Wb", "Bb"], ["b"], "conv_b"),
        node("Concat", ["a", "b"], ["cat"], "concat", axis=1),
        node("Split", ["cat", "sizes"], ["sa", "sb"], "split", axis=1),
        node("Relu", ["sa"], ["ra"], "relu_a"),
        node("Relu", ["sb"], ["rb"], "relu_b"),
        node("Conv", ["ra", "Wc"], ["Yc"], "conv_c"),
        node("Conv", ["rb", "Wd"], ["Yd"], "conv_d"),
    ]
    outputs = [value("Yc", (2, 3, 8, 8)), value("Yd", (2, 5, 8, 8))]
    return model(nodes, [value("X", (2, 4, 8, 8))], outputs, inits)


def split_cuts_group() -> ModelProto:
    """conv1 (8) -> split(axis 1, sizes [4,4]) -> conv_a / conv_b: the Split cuts conv1's group."""
    inits = [
        init("W1", rand((8, 4, 1, 1), 211)),
        ints("sizes", [4, 4]),
        init("Wa", rand((3, 4, 1, 1), 212)),
        init("Wb", rand((3, 4, 1, 1), 213)),
    ]
    nodes = [
        node("Conv", ["X", "W1"], ["c"], "conv1"),
        node("Split", ["c", "sizes"], ["sa", "sb"], "split", axis=1),
        node("Conv", ["sa", "Wa"], ["Ya"], "conv_a"),
        node("Conv", ["sb", "Wb"], ["Yb"], "conv_b"),
    ]
    outputs = [value("Ya", (2, 3, 8, 8)), value("Yb", (2, 3, 8, 8))]
    return model(nodes, [value("X", (2, 4, 8, 8))], outputs, inits)


def conv_slice(*, axis: int = 1) -> ModelProto:
    """conv1 (8) -> slice(first 4 along ``axis``) -> conv2(W2[3,C,1,1]) -> Y.

    On the channel axis (1) the Slice cuts conv1's group; on a spatial axis (2) it does not.
    """
    c_in = 4 if axis == 1 else 8
    inits = [
        init("W1", rand((8, 4, 1, 1), 221)),
        ints("starts", [0]),
        ints("ends", [4]),
        ints("axes", [axis]),
        init("W2", rand((3, c_in, 1, 1), 222)),
    ]
    nodes = [
        node("Conv", ["X", "W1"], ["c"], "conv1"),
        node("Slice", ["c", "starts", "ends", "axes"], ["s"], "slice"),
        node("Conv", ["s", "W2"], ["Y"], "conv2"),
    ]
    out = (2, 3, 8, 8) if axis == 1 else (2, 3, 4, 8)
    return model(nodes, [value("X", (2, 4, 8, 8))], [value("Y", out)], inits)


# ---------------------------------------------------------------------------------------
# Things that block a group


def relu_is_output() -> ModelProto:
    """conv1 (8) -> relu1 -> R (a graph output) and -> conv2 -> Y."""
    inits = [init("W1", rand((8, 4, 1, 1), 231)), init("W2", rand((3, 8, 1, 1), 232))]
    nodes = [
        node("Conv", ["X", "W1"], ["c"], "conv1"),
        node("Relu", ["c"], ["R"], "relu1"),
        node("Conv", ["R", "W2"], ["Y"], "conv2"),
    ]
    outputs = [value("Y", (2, 3, 8, 8)), value("R", (2, 8, 8, 8))]
    return model(nodes, [value("X", (2, 4, 8, 8))], outputs, inits)


def read_in_if() -> ModelProto:
    """X[2,16] -> mm1(W1[16,8]) -> relu -> r; mm2(W2[8,4]) reads r -> Y2, and an If reads r
    inside both branches (Identity / Neg) -> Y."""
    then_branch = helper.make_graph(
        [node("Identity", ["r"], ["then_y"], "then_identity")], "then", [], [value("then_y", (2, 8))]
    )
    else_branch = helper.make_graph([node("Neg", ["r"], ["else_y"], "else_neg")], "else", [], [value("else_y", (2, 8))])
    inits = [init("W1", rand((16, 8), 241)), init("W2", rand((8, 4), 242))]
    nodes = [
        node("MatMul", ["X", "W1"], ["h"], "mm1"),
        node("Relu", ["h"], ["r"], "relu"),
        node("MatMul", ["r", "W2"], ["Y2"], "mm2"),
        node("If", ["cond"], ["Y"], "if", then_branch=then_branch, else_branch=else_branch),
    ]
    inputs = [value("X", (2, 16)), value("cond", (), BOOL)]
    return model(nodes, inputs, [value("Y", (2, 8)), value("Y2", (2, 4))], inits)


def shared_consumer_weight() -> ModelProto:
    """X[2,16] -> mm_a(Wa[16,8]) -> relu_a -> mm_c(W2[8,4]) -> Ya and X -> mm_b(Wb[16,8]) -> relu_b -> mm_d(W2) -> Yb:
    both consumers read one W2, so neither hidden group can shrink."""
    inits = [init("Wa", rand((16, 8), 251)), init("Wb", rand((16, 8), 252)), init("W2", rand((8, 4), 253))]
    nodes = [
        node("MatMul", ["X", "Wa"], ["ha"], "mm_a"),
        node("Relu", ["ha"], ["ra"], "relu_a"),
        node("MatMul", ["ra", "W2"], ["Ya"], "mm_c"),
        node("MatMul", ["X", "Wb"], ["hb"], "mm_b"),
        node("Relu", ["hb"], ["rb"], "relu_b"),
        node("MatMul", ["rb", "W2"], ["Yb"], "mm_d"),
    ]
    return model(nodes, [value("X", (2, 16))], [value("Ya", (2, 4)), value("Yb", (2, 4))], inits)


def custom_op() -> ModelProto:
    """conv1 (8) -> relu -> r; conv2 reads r -> Y2; a custom-domain op (com.example.Foo) reads r -> Y."""
    inits = [init("W1", rand((8, 4, 1, 1), 261)), init("W2", rand((3, 8, 1, 1), 262))]
    nodes = [
        node("Conv", ["X", "W1"], ["c"], "conv1"),
        node("Relu", ["c"], ["r"], "relu"),
        node("Conv", ["r", "W2"], ["Y2"], "conv2"),
        helper.make_node("Foo", ["r"], ["Y"], name="foo", domain="com.example"),
    ]
    m = model(nodes, [value("X", (2, 4, 8, 8))], [value("Y", (2, 8, 8, 8)), value("Y2", (2, 3, 8, 8))], inits)
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    return m


def tensor(m: ModelProto, name: str) -> np.ndarray:
    """The stored initializer ``name`` of ``m`` as an array."""
    return read_array(next(t for t in m.graph.initializer if t.name == name))
