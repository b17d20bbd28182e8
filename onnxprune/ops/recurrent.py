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
- ``R`` reads ``h_{t−1}``: the rows of the output ``Y [T, D, B, H]`` (``h_1 … h_T``) stand in for
  ``h_0 … h_{T−1}`` (one step shifted, the initial state left out). That holds for one
  direction only (``Y`` interleaves both), and for a GRU only with ``linear_before_reset`` = 1:
  with 0 its candidate gate computes ``R_h·(r_t ⊙ h_{t−1})``, so ``R``'s input is not ``h``.
- ``layout`` = 1 (batch first) has no view: its rows would be cut in another order.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnx import NodeProto

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
        if ctx.index in (1, 2):
            return Slot("weight", 1, 2)
        if ctx.index == 3 or (ctx.node.op_type == "LSTM" and ctx.index == 7):
            return BIAS  # B, and the LSTM peephole weights P
        return OTHER

    bias_layout = "gates"

    def bias_input(self, node: NodeProto) -> int | None:
        return 3

    def matrix_view(self, node: NodeProto, index: int, shape: Sequence[int]) -> MatrixView | str:
        if index not in (1, 2) or len(shape) != 3:
            return no_view(node, index, shape)
        dirs, rows, cols = (int(d) for d in shape)
        if int(attr(node, "layout", 0)) != 0:  # type: ignore[arg-type]
            return f"{node.op_type} with layout=1"
        if index == 2:
            if dirs != 1:
                return f"bidirectional {node.op_type} R"
            if node.op_type == "GRU" and not int(attr(node, "linear_before_reset", 0)):  # type: ignore[arg-type]
                return "GRU R with linear_before_reset=0 multiplies r⊙h, not h"
        return MatrixView(
            family="recurrent",
            shape=(dirs, rows, cols),
            groups=dirs,
            rows=rows,
            cols=cols,
            in_axis=2,
            activation=("output", 0) if index == 2 else ("input", 0),
            shared_input=True,
        )


register(RecurrentSpec(), *GATES)
