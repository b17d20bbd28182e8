"""A toy producer op, written the way a new op joins onnxprune: one spec, in one file.

``com.example::ToyLinear(x, W)`` computes ``x·W`` (a model-local ONNX function, so
onnxruntime runs it). Its spec says that a stored ``W`` at input 1 is a weight (output axis
1, reduction axis 0), that it should be stored, and how many MACs a node does.
"""

from __future__ import annotations

from onnx import NodeProto

from onnxprune.ops import Count, Counter, OpSpec, Slot, SlotContext, register

DOMAIN = "com.example"


def count_toy(node: NodeProto, ins: list[tuple[int, ...]], outs: list[tuple[int, ...]]) -> Count:
    (m, k), (_, n) = ins
    return Count(m * n * k, (((1,), 1),))


class ToyLinearSpec(OpSpec):
    weight_inputs = ((1,),)
    macs = Counter((0, 1), (), count_toy)

    def slot(self, ctx: SlotContext) -> Slot:
        return Slot("weight", 1, 0) if ctx.index == 1 else Slot("other")


def install() -> None:
    register(ToyLinearSpec(), "ToyLinear", domain=DOMAIN)
