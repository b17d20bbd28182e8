"""Normalization, gathers, shape reads and the Add that holds a linear layer's bias.

- BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization: every
  input after the data is a normalization parameter.
- Gather, GatherElements: a stored input 0 is an embedding table.
- Shape, Size: read a tensor's shape only (``weight.size(0)`` in torch exports); zeros do
  not change it.
- Add: a stored operand added to the output of a MatMul, Gemm, Conv or ConvTranspose is
  that layer's bias (how exporters write ``x·W + b``).
"""

from __future__ import annotations

from onnxprune.ops.registry import register
from onnxprune.ops.spec import BIAS, NORM, OTHER, SHAPE_ONLY, OpSpec, Slot, SlotContext

#: Ops whose output a following Add's stored operand is the bias of.
BIASED_PRODUCERS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


class NormSpec(OpSpec):
    def slot(self, ctx: SlotContext) -> Slot:
        return NORM if ctx.index >= 1 else OTHER


class GatherSpec(OpSpec):
    quantized_data_slots = (0,)  # an int8 embedding table (dynamic quantization of Gather)

    def slot(self, ctx: SlotContext) -> Slot:
        return Slot("embedding") if ctx.index == 0 else OTHER


class ShapeReadSpec(OpSpec):
    def slot(self, ctx: SlotContext) -> Slot:
        return SHAPE_ONLY


class AddSpec(OpSpec):
    def slot(self, ctx: SlotContext) -> Slot:
        other = ctx.node.input[1 - ctx.index] if len(ctx.node.input) == 2 else ""
        return BIAS if ctx.producer_op(other) in BIASED_PRODUCERS else OTHER


register(NormSpec(), "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization")
register(GatherSpec(), "Gather", "GatherElements")
register(ShapeReadSpec(), "Shape", "Size")
register(AddSpec(), "Add")
