"""Conv and ConvTranspose.

- Conv ``X[N, C_in, *S_in]``, ``W[C_out, C_in/g, *k]``, ``B[C_out]`` → ``Y[N, C_out, *S_out]``:
  the weight's output-channel axis is 0, its reduction axis 1 (over ``C_in`` at each kernel
  position); ``MACs = |Y|·∏W.shape[1:]`` (every output element is a dot product over its
  group's input channels and the kernel window).
- ConvTranspose ``W[C_in, C_out/g, *k]``: output axis 1, reduction axis 0;
  ``MACs = |X|·∏W.shape[1:]`` (every input element is scattered over its group's output
  channels and the kernel window).

Both add a per-output bias ``B`` (input 2) with gain 1.
"""

from __future__ import annotations

from onnx import NodeProto

from onnxprune.ops.registry import register
from onnxprune.ops.spec import BIAS, OTHER, Count, Counter, Dims, OpSpec, Slot, SlotContext, prod


def count_conv(node: NodeProto, ins: list[Dims], outs: list[Dims]) -> Count:
    (w,), (y,) = ins, outs
    return Count(prod(y) * prod(w[1:]), (((1,), 1),))


def count_conv_transpose(node: NodeProto, ins: list[Dims], outs: list[Dims]) -> Count:
    x, w = ins
    return Count(prod(x) * prod(w[1:]), (((1,), 1),))


class ConvSpec(OpSpec):
    weight_inputs = ((1,),)
    macs = Counter((1,), (0,), count_conv)

    def slot(self, ctx: SlotContext) -> Slot:
        return {1: Slot("weight", 0, 1), 2: BIAS}.get(ctx.index, OTHER)

    bias_layout = "per_output"

    def bias_input(self, node: NodeProto) -> int | None:
        return 2


class ConvTransposeSpec(ConvSpec):
    macs = Counter((0, 1), (), count_conv_transpose)

    def slot(self, ctx: SlotContext) -> Slot:
        return {1: Slot("weight", 1, 0), 2: BIAS}.get(ctx.index, OTHER)


register(ConvSpec(), "Conv")
register(ConvTransposeSpec(), "ConvTranspose")
