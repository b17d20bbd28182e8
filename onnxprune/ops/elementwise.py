"""Normalization, gathers, shape reads and the Add that holds a linear layer's bias.

- BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization: every
  input after the data is a normalization parameter.
- Gather, GatherElements: a stored input 0 is an embedding table; Gather's input 1 holds
  token ids, and the table's length on ``axis`` is their vocabulary.
- BatchNormalization keeps running statistics (mean, variance: inputs 3, 4) of its data per
  channel on axis 1, what natural data for its input is drawn from.
- Shape, Size: read a tensor's shape only (``weight.size(0)`` in torch exports); zeros do
  not change it. Their values (and a Gather of one) from static shapes are in
  :mod:`onnxprune.ops.shape`.
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
from onnxprune.ops.shape import gather_rule, gather_value, shape_read_value, shape_rule
from onnxprune.ops.spec import (
    BIAS,
    NORM,
    OTHER,
    SHAPE_ONLY,
    OpSpec,
    ShapeValue,
    ShapeValueContext,
    Slot,
    SlotContext,
    attr,
)

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

    def channel_scale_input(self, node: NodeProto) -> int | None:
        return 1 if node.op_type in normalization.PARAMETERS else None  # BN, InstanceNormalization: γ

    def running_statistics(self, node: NodeProto) -> tuple[int, int] | None:
        return (3, 4) if node.op_type == "BatchNormalization" else None

    def channel_affine(
        self, node: NodeProto, read: Callable[[int, str], np.ndarray | str], others_read: bool
    ) -> tuple[np.ndarray, np.ndarray] | str | None:
        affine = normalization.AFFINE.get(node.op_type)
        return None if affine is None else affine(node, read, others_read)


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

    def shape_value(self, node: NodeProto, ctx: ShapeValueContext) -> ShapeValue | None:
        return gather_value(node, ctx)

    def embedding_lookup(self, node: NodeProto) -> tuple[int, int, int] | None:
        return (0, 1, int(attr(node, "axis", 0))) if node.op_type == "Gather" else None  # type: ignore[call-overload]


class ShapeReadSpec(OpSpec):
    def slot(self, ctx: SlotContext) -> Slot:
        return SHAPE_ONLY

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return shape_rule if node.op_type == "Shape" else None  # Size: not understood

    def shape_value(self, node: NodeProto, ctx: ShapeValueContext) -> ShapeValue | None:
        return shape_read_value(node, ctx)


class AddSpec(BroadcastSpec):
    adds_bias = True
    sums_inputs = True

    def slot(self, ctx: SlotContext) -> Slot:
        other = ctx.node.input[1 - ctx.index] if len(ctx.node.input) == 2 else ""
        return BIAS if ctx.producer_op(other) in BIASED_PRODUCERS else OTHER


register(NormSpec(), "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization")
register(GatherSpec(), "Gather", "GatherElements")
register(ShapeReadSpec(), "Shape", "Size")
register(AddSpec(), "Add")
