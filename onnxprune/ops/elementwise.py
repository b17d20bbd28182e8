"""Normalization, gathers, shape reads and the Add that holds a linear layer's bias.

- BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization: every
  input after the data is a normalization parameter.
- Gather, GatherElements: a stored input 0 is an embedding table.
- Shape, Size: read a tensor's shape only (``weight.size(0)`` in torch exports); zeros do
  not change it.
- Add: a stored operand added to the output of a MatMul, Gemm, Conv or ConvTranspose is
  that layer's bias (how exporters write ``x·W + b``); as a broadcast op it joins channel
  groups (:mod:`onnxprune.ops.broadcast`).

The channel rules and constants of the normalizations are in :mod:`onnxprune.ops.normalization`,
those of Gather and Shape in :mod:`onnxprune.ops.shape`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from onnx import NodeProto

from onnxprune.ops import normalization
from onnxprune.ops.broadcast import BroadcastSpec
from onnxprune.ops.channels import ChannelContext, moved_constants
from onnxprune.ops.registry import register
from onnxprune.ops.shape import gather_rule, shape_rule
from onnxprune.ops.spec import BIAS, NORM, OTHER, SHAPE_ONLY, OpSpec, Slot, SlotContext

#: Ops whose output a following Add's stored operand is the bias of.
BIASED_PRODUCERS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


class NormSpec(OpSpec):
    def slot(self, ctx: SlotContext) -> Slot:
        return NORM if ctx.index >= 1 else OTHER

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return normalization.RULES.get(node.op_type)

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        constant = normalization.CONSTANTS.get(node.op_type)
        return None if constant is None else constant(cx, node, out, values)


class GatherSpec(OpSpec):
    quantized_data_slots = (0,)  # an int8 embedding table (dynamic quantization of Gather)

    def slot(self, ctx: SlotContext) -> Slot:
        return Slot("embedding") if ctx.index == 0 else OTHER

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return gather_rule if node.op_type == "Gather" else None  # GatherElements: not understood

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        return moved_constants(cx, node, out, values) if node.op_type == "Gather" else None


class ShapeReadSpec(OpSpec):
    def slot(self, ctx: SlotContext) -> Slot:
        return SHAPE_ONLY

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return shape_rule if node.op_type == "Shape" else None  # Size: not understood


class AddSpec(BroadcastSpec):
    adds_bias = True

    def slot(self, ctx: SlotContext) -> Slot:
        other = ctx.node.input[1 - ctx.index] if len(ctx.node.input) == 2 else ""
        return BIAS if ctx.producer_op(other) in BIASED_PRODUCERS else OTHER


register(NormSpec(), "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization")
register(GatherSpec(), "Gather", "GatherElements")
register(ShapeReadSpec(), "Shape", "Size")
register(AddSpec(), "Add")
