"""LSTM, GRU and RNN.

``W[D, G·H, I]`` multiplies ``x_t``, ``R[D, G·H, H]`` multiplies ``h_{t−1}`` (``D`` directions,
``G`` gates: LSTM 4, GRU 3, RNN 1; ``H`` hidden units): both are weights with output axis 1
(gate rows) and reduction axis 2. ``B[D, 2·G·H]`` (input 3; and LSTM's peepholes ``P``,
input 7) are biases. ``MACs = D·T·B·G·H·(I + H)`` over ``X[T, B, I]`` (``layout=1``:
``[B, T, I]``): the input and recurrent products of every step, split ``I : H`` between
``W`` and ``R``.

Matrix view (:meth:`RecurrentSpec.matrix_view`): in direction ``d`` the gate pre-activations of
step ``t`` are ``z_t = W_d·x_t + R_d·h_{t−1} + b_d`` with ``W_d = W[d] [G·H, I]`` and
``R_d = R[d] [G·H, H]``, so the stored ``[D, G·H, n]`` is ``D`` groups as it is (no reshape).

- ``W`` reads the rows ``x_t`` of ``X [T, B, I]`` flattened to ``[T·B, I]``; every direction
  reads the same rows (the reverse one in the other order, which a sum over rows ignores), so
  they are captured once.
- ``R_d`` reads direction ``d``'s own previous state ``h^d_{t−1}``: the rows of its slice of the
  output, ``Y[:, d] [T, B, H]`` flattened to ``[T·B, H]`` (capture's "Directions", one group per
  direction), stand in for them: ``h_1 … h_T`` for ``h_0 … h_{T−1}`` (one step shifted in the
  direction's own order, the reverse direction's too; the initial state left out). For a GRU
  this holds with ``linear_before_reset`` = 1, ``h̃_t = tanh(W_h x_t + r_t ⊙ (R_h h_{t−1} + Rb_h)
  + Wb_h)``: ``R`` multiplies ``h_{t−1}`` in every gate block.
- A GRU with ``linear_before_reset`` = 0 (ONNX's default) has, in gate blocks ``z, r, h`` of
  ``R_d = [R_z; R_r; R_h]`` (each ``[H, H]``)::

      z_t = σ(W_z x_t + R_z h_{t−1} + Wb_z + Rb_z)
      r_t = σ(W_r x_t + R_r h_{t−1} + Wb_r + Rb_r)
      h̃_t = tanh(W_h x_t + R_h (r_t ⊙ h_{t−1}) + Rb_h + Wb_h)
      h_t = (1 − z_t) ⊙ h̃_t + z_t ⊙ h_{t−1}

  so ``R_z`` and ``R_r`` read ``h_{t−1}`` but ``R_h`` reads ``r_t ⊙ h_{t−1}``: ``R`` is ``3·D``
  groups ``[H, H]`` (``R[d]``'s blocks, the stored tensor reshaped), group ``3d + k`` reading
  ``h_{t−1}`` for ``k`` = 0, 1 and ``r_t ⊙ h_{t−1}`` for ``k`` = 2, i.e. ``H_h = Σ h hᵀ`` and
  ``H_rh = Σ (r⊙h)(r⊙h)ᵀ``. :func:`gru_reset_rows` (the view's ``prepare``) makes those rows
  from the node's values: ``h_{t−1}`` exactly, ``Y`` shifted one step in the direction's own
  order with the initial state (input 5, zeros when absent) first, and ``r_t`` recomputed in
  float64 from ``X``, that ``h_{t−1}``, ``W_r``, ``R_r``, ``Wb_r + Rb_r`` (input 3) and ``clip``;
  steps past a sequence's length (input 4) are zero rows. A reset activation other than the
  default Sigmoid has no view.
- ``layout`` = 1 (batch first) has no view: its rows would be cut in another order.

Channels (:mod:`onnxprune.ops.channels`): hidden unit ``h`` of a layer whose ``W`` and ``R`` are
its own (``layout`` = 0) owns row ``g·H + h`` of every gate block ``g`` of ``W``, ``R`` and both
halves of ``B`` (and of the peepholes ``P [D, 3·H]``), column ``h`` of ``R`` (the layer reads its
own state: a consumer of its own group), entry ``h`` of the initial states (stored; zeros of a
``ConstantOfShape`` read by this layer alone, whose shape entry is then edited; or zeros made at
run time otherwise, e.g. sliced per layer from one ``ConstantOfShape``: that input is then
dropped, an omitted initial state being zeros) and the last axis of ``Y``, ``Y_h``, ``Y_c``.
Input features on the last axis of ``X`` are read through ``W`` axis 2.

Dead units (:func:`dead_hidden_units`). A hidden unit's state depends on the sequence, so it is
a constant only when it is 0 at every step: when its candidate rows are all zero (``W``, ``R``
and both halves of ``B`` in the candidate block: LSTM ``c̃``, block 3 of ``i, o, f, c``; GRU
``h̃``, block 2 of ``z, r, h``; RNN its only block), its initial states are 0 (absent, zeros
made at run time, or stored zeros) and the activations are the default ones, which map 0 to
0 (Tanh). Then, from ``h_0 = c_0 = 0``: LSTM ``c̃_t = tanh(0) = 0``, ``c_t = f_t ⊙ c_{t−1} +
i_t ⊙ 0 = 0`` and ``h_t = o_t ⊙ tanh(c_t) = 0``; GRU ``h̃_t = 0`` and ``h_t = z_t ⊙ h_{t−1} = 0``;
RNN ``h_t = tanh(0) = 0``, whatever its other gates and the other units do. Its outputs
(``Y``, ``Y_h``, ``Y_c``) are 0 everywhere, and what reads them (the layer's own ``R``, the
next layer) reads zeros: the unit goes without a trace.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from onnx import NodeProto, numpy_helper

from onnxprune.ops.channels import ChannelContext, Layout, only_first, shape_entry, stored_weight
from onnxprune.ops.registry import register
from onnxprune.ops.spec import BIAS, OTHER, Count, Counter, Dims, MatrixView, OpSpec, Slot, SlotContext, attr, no_view

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def count_recurrent(node: NodeProto, ins: list[Dims], outs: list[Dims]) -> Count:
    x, w, r = ins
    steps, batch = (x[1], x[0]) if attr(node, "layout", 0) else (x[0], x[1])
    directions, inputs, hidden = w[0], w[2], r[2]
    macs = directions * steps * batch * GATES[node.op_type] * hidden * (inputs + hidden)
    return Count(macs, (((1,), inputs), ((2,), hidden)))


class RecurrentSpec(OpSpec):
    weight_inputs = ((1,), (2,))
    macs = Counter((0, 1, 2), (), count_recurrent)

    def slot(self, ctx: SlotContext) -> Slot:
        if ctx.index in (1, 2):  # W [D, G·H, I], R [D, G·H, H]; any other rank is not one
            return Slot("weight", 1, 2) if ctx.rank in (None, 3) else OTHER
        if ctx.index == 3 or (ctx.node.op_type == "LSTM" and ctx.index == 7):
            return BIAS  # B, and the LSTM peephole weights P
        return OTHER

    bias_layout = "gates"

    def bias_input(self, node: NodeProto) -> int | None:
        return 3

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return recurrent_rule

    def channel_source(self, node: NodeProto) -> Callable[..., None] | None:
        return recurrent_source

    def source_constants(self, cx: ChannelContext, node: NodeProto, layout: Layout) -> np.ndarray:
        return dead_hidden_units(cx, node, layout.length)

    def data_input(self, cx: ChannelContext, node: NodeProto, tensor: str, axis: int) -> str:
        recurrent = cx.stored(node, 2)
        if recurrent is not None and tensor == recurrent[0]:
            return node.output[0] if node.output else ""  # R multiplies the layer's own hidden state
        return node.input[0]

    def matrix_view(self, node: NodeProto, index: int, shape: Sequence[int]) -> MatrixView | str:
        if index not in (1, 2) or len(shape) != 3:
            return no_view(node, index, shape)
        dirs, rows, cols = (int(d) for d in shape)
        if int(attr(node, "layout", 0)) != 0:  # type: ignore[arg-type]
            return f"{node.op_type} with layout=1"
        if index == 2 and node.op_type == "GRU" and not int(attr(node, "linear_before_reset", 0)):  # type: ignore[arg-type]
            return gru_reset_view(node, dirs, rows, cols)
        recurrent = index == 2  # R reads each direction's own states, W the shared x_t
        return MatrixView(
            family="recurrent",
            shape=(dirs, rows, cols),
            groups=dirs,
            rows=rows,
            cols=cols,
            in_axis=2,
            capture_op="Directions" if recurrent else "MatMul",
            activation=("output", 0) if recurrent else ("input", 0),
            shared_input=not recurrent,
        )


register(RecurrentSpec(), *GATES)


def _text(value: object) -> str:
    """A string attribute's value (onnx gives bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


#: The ports of a GRU that :func:`gru_reset_rows` reads: X, W, R, B, sequence_lens, initial_h.
GRU_RESET_READS = (("input", 0), ("input", 1), ("input", 2), ("input", 3), ("input", 4), ("input", 5))


def gru_reset_view(node: NodeProto, dirs: int, rows: int, cols: int) -> MatrixView | str:
    """The view of a GRU's ``R [D, 3·H, H]`` with ``linear_before_reset`` = 0: ``3·D`` groups
    ``[H, H]`` (see the module docstring), or why it has none."""
    direction = _text(attr(node, "direction", "forward"))
    reverse = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}.get(direction)
    if reverse is None or len(reverse) != dirs or rows != 3 * cols:
        return f"GRU R of shape {[dirs, rows, cols]} with direction={direction}"
    activations = [_text(a) for a in attr(node, "activations", None) or ()]  # type: ignore[attr-defined]
    resets = activations[0::2] if len(activations) == 2 * dirs else []
    if activations and (not resets or any(a.lower() != "sigmoid" for a in resets)):
        return f"GRU R with linear_before_reset=0 and activations {activations}: its reset gate is not Sigmoid"
    clip = attr(node, "clip", None)
    return MatrixView(
        family="recurrent",
        shape=(dirs, rows, cols),
        groups=3 * dirs,
        rows=cols,
        cols=cols,
        in_axis=2,
        capture_op="Directions",
        activation=("output", 0),
        reads=GRU_RESET_READS,
        prepare=partial(gru_reset_rows, reverse=reverse, clip=None if clip is None else float(clip)),  # type: ignore[arg-type]
    )


def gru_reset_rows(
    y: np.ndarray, reads: Sequence[np.ndarray | None], *, reverse: Sequence[bool], clip: float | None = None
) -> np.ndarray:
    """The rows ``R`` of a GRU with ``linear_before_reset`` = 0 multiplies, ``[T, 3·D, B, H]``
    float64: for direction ``d``, ``h_{t−1}`` at ``3d`` and ``3d + 1`` (the ``z`` and ``r``
    blocks) and ``r_t ⊙ h_{t−1}`` at ``3d + 2`` (the ``h`` block), with (module docstring)

        h_{t−1} = initial_h[d] at the direction's first step, else Y[t ∓ 1, d]
        r_t = σ(clip(X_t W_rᵀ + h_{t−1} R_rᵀ + Wb_r + Rb_r))

    ``y``: the node's ``Y [T, D, B, H]``; ``reads``: its ``X [T, B, I]``, ``W [D, 3H, I]``,
    ``R [D, 3H, H]``, ``B [D, 6H]``, ``sequence_lens [B]`` and ``initial_h [D, B, H]`` (None
    where absent: zeros, full length); ``reverse[d]``: direction ``d`` runs from the sequence's
    last step (``length − 1``) down. Steps at or past a sequence's length are zero rows.
    Raises ValueError when the shapes do not fit.
    """
    x, w, r, b, lens, h0 = reads
    if y.ndim != 4 or x is None or w is None or r is None or x.ndim != 3:
        raise ValueError(f"GRU output of shape {list(y.shape)} and its input X, W and R do not fit [T, D, B, H]")
    steps, dirs, batch, hidden = y.shape
    expected = {
        "X": (x, (steps, batch, x.shape[2])),
        "W": (w, (dirs, 3 * hidden, x.shape[2])),
        "R": (r, (dirs, 3 * hidden, hidden)),
        "B": (b, (dirs, 6 * hidden)),
        "sequence_lens": (lens, (batch,)),
        "initial_h": (h0, (dirs, batch, hidden)),
    }
    for name, (value, shape) in expected.items():
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"GRU {name} of shape {list(value.shape)} is not {list(shape)} (Y {list(y.shape)})")
    if len(reverse) != dirs:
        raise ValueError(f"GRU output with {dirs} direction(s), not {len(reverse)}")
    length = np.full(batch, steps, dtype=np.int64) if lens is None else np.clip(lens.astype(np.int64), 0, steps)
    valid = (np.arange(steps)[:, None] < length[None, :])[..., None]  # [T, B, 1]
    xs = x.astype(np.float64)
    out = np.empty((steps, 3 * dirs, batch, hidden))
    gate, bias = slice(hidden, 2 * hidden), slice(4 * hidden, 5 * hidden)  # r's rows; Rb_r in B = [Wb; Rb]
    for d in range(dirs):
        states = y[:, d].astype(np.float64)
        start = np.zeros((batch, hidden)) if h0 is None else h0[d].astype(np.float64)
        prev = np.empty_like(states)
        if reverse[d]:
            prev[:-1] = states[1:]
            prev[np.maximum(length - 1, 0), np.arange(batch)] = start  # the last step reads the initial state
        else:
            prev[1:] = states[:-1]
            prev[0] = start
        prev *= valid
        pre = xs @ w[d, gate].astype(np.float64).T + prev @ r[d, gate].astype(np.float64).T
        if b is not None:
            pre += b[d, gate].astype(np.float64) + b[d, bias].astype(np.float64)
        if clip is not None:
            pre = np.clip(pre, -clip, clip)
        reset = 0.5 * (1.0 + np.tanh(0.5 * pre))  # σ, without overflow
        out[:, 3 * d] = prev
        out[:, 3 * d + 1] = prev
        out[:, 3 * d + 2] = reset * prev
    return out


# --------------------------------------------------------------------------- channels


#: The candidate block among a layer's gate blocks (ONNX orders: LSTM i, o, f, c; GRU z, r, h).
CANDIDATE = {"LSTM": 3, "GRU": 2, "RNN": 0}


def _zero_state(cx: ChannelContext, node: NodeProto, index: int, hidden: int) -> np.ndarray:
    """Per unit: is initial state ``index`` (5: h, 6: c) zero there (absent, zeros made at run time, stored zeros)?"""
    if index >= len(node.input) or not node.input[index] or zero_fill(cx, node.input[index]):
        return np.ones(hidden, dtype=bool)
    stored = cx.stored(node, index)
    if stored is None:
        return np.zeros(hidden, dtype=bool)
    values = cx.stored_array(stored[0])
    if values.ndim != 3 or values.shape[2] != hidden:
        return np.zeros(hidden, dtype=bool)
    return ~np.any(values.reshape(-1, hidden) != 0, axis=0)


def dead_hidden_units(cx: ChannelContext, node: NodeProto, hidden: int) -> np.ndarray:
    """0.0 for each hidden unit whose outputs are 0 at every step, NaN for the others (see the module docstring)."""
    out = np.full(hidden, np.nan)
    if cx.attr(node, "activations") is not None:
        return out  # not the defaults: an activation may not map 0 to 0
    gates = GATES[node.op_type]
    block = CANDIDATE[node.op_type]
    dead = _zero_state(cx, node, 5, hidden)
    if node.op_type == "LSTM":
        dead &= _zero_state(cx, node, 6, hidden)
    for index, blocks in ((1, (block,)), (2, (block,)), (3, (block, gates + block))):
        if index >= len(node.input) or not node.input[index]:
            continue  # an absent B is zeros
        stored = cx.stored(node, index)
        if stored is None:
            return out
        values = cx.stored_array(stored[0])
        if values.ndim < 2 or values.shape[1] < (max(blocks) + 1) * hidden:
            return out
        for k in blocks:
            rows = np.moveaxis(values[:, k * hidden : (k + 1) * hidden], 1, 0).reshape(hidden, -1)
            dead &= ~np.any(rows != 0, axis=1)
    out[dead] = 0.0
    return out


def recurrent_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    rank = cx.rank(node.input[0]) or 3
    if layout.axis != rank - 1:
        cx.block(layout, f"{node.op_type} '{cx.label(node)}' reads these channels as time or batch")
        return
    weight = stored_weight(cx, node, 1, layout)
    if weight is not None:
        cx.members(layout.moved(2), weight[0], 2, "in", node, weight[1])


#: Ops whose output is zeros wherever their input 0 is all zeros (they only move, cut or repeat it).
ZERO_KEEPING = ("Identity", "Cast", "Slice", "Expand", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Tile")


def zero_fill(cx: ChannelContext, name: str) -> bool:
    """True if ``name`` holds zeros made at run time: a ``ConstantOfShape`` of 0 (its default value),
    perhaps sliced, reshaped or expanded (a multi-layer export slices each layer's state from one)."""
    for _ in range(8):
        node = cx.producer(name)
        if node is None or not node.input:
            return False
        if node.op_type == "ConstantOfShape":
            value = cx.attr(node, "value")
            return value is None or not np.any(numpy_helper.to_array(value))  # type: ignore[arg-type]
        if node.op_type not in ZERO_KEEPING:
            return False
        name = node.input[0]
    return False


def recurrent_source(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    """Hidden units of a recurrent layer (see the module docstring)."""
    hidden = int(cx.attr(node, "hidden_size", 0) or 0)  # type: ignore[call-overload]
    label = cx.label(node)
    weights = [cx.stored(node, 1), cx.stored(node, 2)]
    if not hidden or any(w is None or len(cx.uses(w[0])) != 1 for w in weights) or cx.attr(node, "layout", 0):
        return
    gates = GATES[node.op_type]
    group = cx.new_group(node, hidden)
    seg = group.segment(1)

    def block(k: int, total: int, axis: int) -> Layout:
        pieces = ([k * hidden] if k else []) + [seg] + ([(total - k - 1) * hidden] if total - k - 1 else [])
        return Layout(axis, tuple(pieces))

    for index, blocks in ((1, gates), (2, gates), (3, 2 * gates), (7, 3)):
        if index >= len(node.input) or not node.input[index]:
            continue
        stored = cx.stored(node, index)
        if stored is None:
            cx.block(Layout(1, (seg,)), f"{node.op_type} '{label}' has a computed input {index}")
            continue
        for k in range(blocks):
            cx.members(block(k, blocks, 1), stored[0], 1, "out", node, stored[1])
    recurrent = weights[1]
    cx.members(Layout(2, (seg,)), recurrent[0], 2, "in", node, recurrent[1])  # type: ignore[index]
    for index in (5, 6):  # initial_h, initial_c: [dirs, batch, H]
        if index < len(node.input) and node.input[index]:
            stored = cx.stored(node, index)
            if stored is not None:
                cx.members(Layout(2, (seg,)), stored[0], 2, "param", node, stored[1])
                continue
            fill = cx.producer(node.input[index])  # exporters write zeros of a computed shape
            entry = shape_entry(cx, fill, 2, 0) if fill is not None and fill.op_type == "ConstantOfShape" else None
            own = all(cx.node_id(use.node) == cx.node_id(node) for use in cx.uses(node.input[index]))
            if entry is not None and entry[2] == hidden and own:
                cx.edit(("tensor", entry[0], entry[1]), Layout(0, (seg,)), entry[3])
            elif zero_fill(cx, node.input[index]):  # shared or sliced zeros: drop them, zeros are the default
                cx.edit(("input", cx.node_id(node), index), Layout(0, (seg,)))
            else:
                cx.block(Layout(2, (seg,)), f"{node.op_type} '{label}' has a computed initial state")
    cx.edit(("attr", cx.node_id(node), "hidden_size"), Layout(0, (seg,)))
    for index, name in enumerate(node.output):
        if name:
            cx.set(name, Layout(3 if index == 0 else 2, (seg,)))
