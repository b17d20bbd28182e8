"""Conv and ConvTranspose.

- Conv ``X[N, C_in, *S_in]``, ``W[C_out, C_in/g, *k]``, ``B[C_out]`` → ``Y[N, C_out, *S_out]``:
  the weight's output-channel axis is 0, its reduction axis 1 (over ``C_in`` at each kernel
  position); ``MACs = |Y|·∏W.shape[1:]`` (every output element is a dot product over its
  group's input channels and the kernel window).
- ConvTranspose ``W[C_in, C_out/g, *k]``: output axis 1, reduction axis 0;
  ``MACs = |X|·∏W.shape[1:]`` (every input element is scattered over its group's output
  channels and the kernel window).

Both add a per-output bias ``B`` (input 2) with gain 1.

Matrix view (:meth:`ConvSpec.matrix_view`): Conv with ``g`` groups computes, for group ``j``,

    Y_j = W_j · P_jᵀ,    W_j = W[j·C_out/g : (j+1)·C_out/g].reshape(C_out/g, C_in/g·∏k)

where ``P_j [N·∏S_out, C_in/g·∏k]`` are the im2col patches of ``X`` (:mod:`onnxprune.im2col`:
pads, strides, dilations and ``auto_pad`` as the node's). Column ``c·∏k + t`` is input
channel ``c`` of the group at kernel position ``t`` (channel-major, positions in C order), so
``W_j`` is the plain reshape of the stored weight and back; N:M sparsity counts ``M``
consecutive input channels at one kernel position, so its column order is position-major,
``t·(C_in/g) + c``. A depthwise Conv is ``C_in/g = 1``: ``cols = ∏k``.

ConvTranspose has no view today: it scatters every input element over a kernel window of the
output (``Y = col2im(Wᵀ·X)``). It equals a Conv of the zero-upsampled, padded input with the
flipped kernel of swapped channel axes, but capture does not build those patches, so its weight
is pruned by magnitude and, in the structural pass, sliced without a refit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import NodeProto

from onnxprune.ops.registry import register
from onnxprune.ops.spec import (
    BIAS,
    OTHER,
    Count,
    Counter,
    Dims,
    MatrixView,
    OpSpec,
    Slot,
    SlotContext,
    attr,
    no_view,
    prod,
)


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

    def matrix_view(self, node: NodeProto, index: int, shape: Sequence[int]) -> MatrixView | str:
        if index != 1 or len(shape) < 3:
            return no_view(node, index, shape)
        shape = tuple(int(d) for d in shape)
        c_out, c_in_g, *kernel = shape
        groups = int(attr(node, "group", 1))  # type: ignore[arg-type]
        positions = prod(kernel)
        spatial = len(kernel)
        auto_pad = attr(node, "auto_pad", b"NOTSET")
        return MatrixView(
            family="conv",
            shape=shape,
            groups=groups,
            rows=c_out // groups,
            cols=c_in_g * positions,
            in_axis=1,
            positions=positions,
            # im2col column of (channel c, position p) is c·P + p; N:M wants channels innermost
            nm_order=np.arange(c_in_g * positions).reshape(c_in_g, positions).T.reshape(-1),
            capture_op="Conv",
            kernel=tuple(kernel),
            strides=tuple(int(s) for s in attr(node, "strides", [1] * spatial)),  # type: ignore[union-attr]
            pads=tuple(int(p) for p in attr(node, "pads", [0] * 2 * spatial)),  # type: ignore[union-attr]
            dilations=tuple(int(d) for d in attr(node, "dilations", [1] * spatial)),  # type: ignore[union-attr]
            auto_pad=auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad),
        )


class ConvTransposeSpec(ConvSpec):
    macs = Counter((0, 1), (), count_conv_transpose)

    def slot(self, ctx: SlotContext) -> Slot:
        return {1: Slot("weight", 1, 0), 2: BIAS}.get(ctx.index, OTHER)

    def matrix_view(self, node: NodeProto, index: int, shape: Sequence[int]) -> MatrixView | str:
        if index != 1:
            return no_view(node, index, shape)
        return f"{no_view(node, index, shape)} scatters each input over a kernel window (col2im): no im2col view"


register(ConvSpec(), "Conv")
register(ConvTransposeSpec(), "ConvTranspose")
