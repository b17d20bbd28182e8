"""Small CRNN graphs (conv features -> a hand-off -> 2 bidirectional LSTMs -> MatMul) for
``tests/test_crnn_structure.py``, built with ``onnx.helper`` as the exporters write them.

``X [B, 1, H, W]`` -> Conv(``conv.W [C, 1, 3, 3]``, pads 1) -> Relu -> ``F [B, C, H, W]`` ->
hand-off -> ``S [W, B, C·H]`` -> LSTM ``lstm1`` (bidirectional, hidden ``HIDDEN``) -> ``Y1 [W, 2,
B, HIDDEN]`` -> Transpose(0, 2, 1, 3) -> Reshape ``[0, 0, -1]`` -> ``[W, B, 2·HIDDEN]`` -> LSTM
``lstm2`` -> the same merge -> MatMul(``fc.W [2·HIDDEN, K]``) + ``fc.B`` -> ``logits [W, B, K]``.

Hand-offs (``handoff``):

* ``"computed"``: Transpose(3, 0, 1, 2), then Reshape to ``[w, b, c·h]`` read from the conv
  features' shape (Shape, Gather, Mul, Unsqueeze, Concat: ``b, c, h, w = f.size()`` in torch);
* ``"zeros"``: Transpose(3, 0, 1, 2), Reshape to the stored ``[0, 0, -1]``;
* ``"static"``: Transpose(3, 0, 1, 2), Reshape to the stored ``[W, B, C·H]`` (static dims only);
* ``"batch_first"``: Transpose(0, 3, 1, 2), Reshape to ``Shape[0:2] ++ [-1]`` (``[B, W, C·H]``:
  torch's ``flatten(2)``), Transpose(1, 0, 2);
* ``"squeeze"``: ``H = 1``: Squeeze(axis 2), Transpose(2, 0, 1) (PP-OCR's ``Im2Seq``).

With ``dynamic`` the batch and width are symbolic (``batch``, ``width``) and the LSTMs' initial
states are zeros of a computed shape: one ConstantOfShape ``[4, b, HIDDEN]`` sliced into the
``h`` and ``c`` of both layers, ``[2·l : 2·l + 2]`` for layer ``l`` (torch's export of a 2-layer
bidirectional LSTM); without, they are omitted.
``dead_channels`` zeroes conv filters and their bias (``relu(0) = 0``); ``dead_units`` zeroes
``lstm1``'s rows (every gate block, or only the candidate one with ``candidate_only``) of the
given hidden units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builders import init, ints, model, node, rand, value
from onnx import ModelProto, TensorProto, helper

C, HIDDEN, K = 6, 4, 7
GATES = 4


def lstm_weights(prefix: str, inputs: int, seed: int, dead: Sequence[int] = (), candidate_only: bool = False) -> list:
    """W [2, 4H, inputs], R [2, 4H, H], B [2, 8H] of a bidirectional LSTM; ``dead`` units' rows zeroed."""
    w = rand((2, GATES * HIDDEN, inputs), seed) * 0.5
    r = rand((2, GATES * HIDDEN, HIDDEN), seed + 1) * 0.5
    b = rand((2, 2 * GATES * HIDDEN), seed + 2) * 0.5
    blocks = (3,) if candidate_only else range(GATES)  # ONNX gate order i, o, f, c: the candidate is block 3
    for u in dead:
        for k in blocks:
            w[:, k * HIDDEN + u] = 0.0
            r[:, k * HIDDEN + u] = 0.0
            b[:, k * HIDDEN + u] = 0.0
            b[:, (GATES + k) * HIDDEN + u] = 0.0
    return [init(f"{prefix}.W", w), init(f"{prefix}.R", r), init(f"{prefix}.B", b)]


def _merge(y: str, out: str, name: str) -> list:
    """``Y [T, 2, B, H]`` -> Transpose(0, 2, 1, 3) -> Reshape [0, 0, -1] -> ``[T, B, 2·H]``."""
    return [
        node("Transpose", [y], [f"{name}.t"], f"{name}/Transpose", perm=[0, 2, 1, 3]),
        node("Reshape", [f"{name}.t", "merge_shape"], [out], f"{name}/Reshape"),
    ]


def _gather(source: str, axis: int, out: str) -> list:
    """``out = Unsqueeze(Gather(Shape(source), axis), [0])`` (a dim as a 1-vector)."""
    return [
        node("Shape", [source], [f"{out}.shape"], f"{out}/Shape"),
        node("Gather", [f"{out}.shape", f"{out}.index"], [f"{out}.dim"], f"{out}/Gather", axis=0),
        node("Unsqueeze", [f"{out}.dim", "axes0"], [out], f"{out}/Unsqueeze"),
    ]


def crnn(
    handoff: str = "computed",
    *,
    dynamic: bool = True,
    dead_channels: Sequence[int] = (),
    dead_units: Sequence[int] = (),
    candidate_only: bool = False,
) -> ModelProto:
    """The CRNN graph of the module docstring."""
    height = 1 if handoff == "squeeze" else 3
    batch, width = ("batch", "width") if dynamic else (2, 8)
    features = C * height
    conv_w = rand((C, 1, 3, 3), 1)
    conv_b = np.abs(rand((C,), 2)) + 0.1
    for c in dead_channels:
        conv_w[c] = 0.0
        conv_b[c] = 0.0
    inits = [
        init("conv.W", conv_w),
        init("conv.B", conv_b),
        *lstm_weights("lstm1", features, 10, dead_units, candidate_only),
        *lstm_weights("lstm2", 2 * HIDDEN, 20),
        init("fc.W", rand((2 * HIDDEN, K), 30)),
        init("fc.B", rand((K,), 31)),
        ints("merge_shape", [0, 0, -1]),
        ints("axes0", [0]),
    ]
    nodes = [
        node("Conv", ["X", "conv.W", "conv.B"], ["conv"], "conv", pads=[1, 1, 1, 1]),
        node("Relu", ["conv"], ["F"], "relu"),
    ]
    if handoff in ("computed", "zeros", "static"):
        nodes.append(node("Transpose", ["F"], ["FT"], "handoff/Transpose", perm=[3, 0, 1, 2]))
        if handoff == "computed":  # b, c, h, w = f.size(); f.permute(3, 0, 1, 2).reshape(w, b, c * h)
            for axis, name in enumerate(("b", "c", "h", "w")):
                nodes += _gather("F", axis, f"dim_{name}")
                inits.append(init(f"dim_{name}.index", np.int64(axis)))
            nodes.append(node("Mul", ["dim_c", "dim_h"], ["dim_ch"], "handoff/Mul"))
            nodes.append(node("Concat", ["dim_w", "dim_b", "dim_ch"], ["target"], "handoff/Concat", axis=0))
        else:
            inits.append(ints("target", [0, 0, -1] if handoff == "zeros" else [8, 2, features]))
        nodes.append(node("Reshape", ["FT", "target"], ["S"], "handoff/Reshape"))
    elif handoff == "batch_first":  # f.permute(0, 3, 1, 2).flatten(2).transpose(0, 1)
        nodes += [
            node("Transpose", ["F"], ["FT"], "handoff/Transpose", perm=[0, 3, 1, 2]),
            node("Shape", ["FT"], ["FT.shape"], "handoff/Shape"),
            node("Slice", ["FT.shape", "zero", "two", "zero"], ["FT.lead"], "handoff/Slice"),
            node("Concat", ["FT.lead", "minus_one"], ["target"], "handoff/Concat", axis=0),
            node("Reshape", ["FT", "target"], ["SB"], "handoff/Reshape"),
            node("Transpose", ["SB"], ["S"], "handoff/Transpose_1", perm=[1, 0, 2]),
        ]
        inits += [ints("zero", [0]), ints("two", [2]), ints("minus_one", [-1])]
    elif handoff == "squeeze":
        nodes += [
            node("Squeeze", ["F", "axis2"], ["FS"], "handoff/Squeeze"),
            node("Transpose", ["FS"], ["S"], "handoff/Transpose", perm=[2, 0, 1]),
        ]
        inits.append(ints("axis2", [2]))
    else:
        raise ValueError(handoff)
    if dynamic:  # zeros [4, b, H] of a computed shape, sliced per layer and state (torch's export)
        nodes += _gather("S", 1, "state_b")
        inits += [init("state_b.index", np.int64(1)), ints("four", [4]), ints("hidden", [HIDDEN])]
        nodes += [
            node("Concat", ["four", "state_b", "hidden"], ["state_shape"], "state/Concat", axis=0),
            node("ConstantOfShape", ["state_shape"], ["zeros"], "state/ConstantOfShape"),
        ]
        for k in range(4):
            layer = k // 2  # directions 2·layer, 2·layer + 1: the h, then the c of each layer
            inits += [ints(f"state{k}.start", [2 * layer]), ints(f"state{k}.end", [2 * layer + 2])]
            nodes.append(
                node("Slice", ["zeros", f"state{k}.start", f"state{k}.end"], [f"state{k}"], f"state/Slice_{k}")
            )
    for layer, x in ((1, "S"), (2, "M1")):
        init_states = [f"state{2 * layer - 2}", f"state{2 * layer - 1}"] if dynamic else []
        inputs = [x, f"lstm{layer}.W", f"lstm{layer}.R", f"lstm{layer}.B", "", *init_states]
        nodes.append(node("LSTM", inputs, [f"Y{layer}"], f"lstm{layer}", hidden_size=HIDDEN, direction="bidirectional"))
        nodes += _merge(f"Y{layer}", f"M{layer}", f"merge{layer}")
    nodes += [
        node("MatMul", ["M2", "fc.W"], ["fc"], "fc/MatMul"),
        node("Add", ["fc", "fc.B"], ["logits"], "fc/Add"),
    ]
    return model(
        nodes,
        [value("X", (batch, 1, height, width))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [width, batch, K])],
        inits,
    )
