"""LSTM, GRU and RNN.

``W[D, G·H, I]`` multiplies ``x_t``, ``R[D, G·H, H]`` multiplies ``h_{t−1}`` (``D`` directions,
``G`` gates: LSTM 4, GRU 3, RNN 1; ``H`` hidden units): both are weights with output axis 1
(gate rows) and reduction axis 2. ``B[D, 2·G·H]`` (input 3; and LSTM's peepholes ``P``,
input 7) are biases. ``MACs = D·T·B·G·H·(I + H)`` over ``X[T, B, I]`` (``layout=1``:
``[B, T, I]``): the input and recurrent products of every step, split ``I : H`` between
``W`` and ``R``.
"""

from __future__ import annotations

from onnx import NodeProto

from onnxprune.ops.registry import register
from onnxprune.ops.spec import BIAS, OTHER, Count, Counter, Dims, OpSpec, Slot, SlotContext, attr

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


register(RecurrentSpec(), *GATES)
