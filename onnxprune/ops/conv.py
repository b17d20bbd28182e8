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

ConvTranspose ``W[C_in, C_out, *k]`` scatters every input element over a kernel window of the
output (``Y = col2im(Wᵀ·X)``). When the windows do not overlap (``strides >= k`` on every axis,
one group, no pads, output padding or dilation: the 2×2 stride-2 upsampling of U-Nets and DB
text detectors), each output pixel is written by exactly one input pixel ``x [C_in]`` and one
kernel tap ``t``:

    Y[:, s·i + t] = W_tᵀ · x_i,    W_t = W[:, :, t]ᵀ  [C_out, C_in]

so the weight is ``∏k`` groups (one per tap, ``axes = (2, …, 1, 0)``) that all read the same
rows, the input pixels (capture's "Conv" with a 1×1 kernel), and the layer's output error is the
sum of the taps' errors, exactly. Each output channel has one bias for all taps, which cover
equal numbers of output pixels: its correction is the mean of the taps' (``bias_taps``).
Overlapping windows have no view (their taps add up at the same pixels): such a weight is
pruned by magnitude and, in the structural pass, sliced without a refit.

Channels (:mod:`onnxprune.ops.channels`): a Conv/ConvTranspose with one group and a weight of
its own starts a group on axis 1 of ``Y`` (``W`` axis 0, resp. 1, and ``B`` sliced with it);
channels on axis 1 of ``X`` are read through ``W`` axis 1 (ConvTranspose: 0). A depthwise Conv
(``group = C_in = C_out``, ``W[C, 1, *k]``) carries them instead: ``W``, ``B`` and ``group``
follow. Other grouped convolutions block. A dead input channel ``c`` that holds ``k`` adds
``k·Σ_t W[o, c, t]`` to output ``o`` at every position of an unpadded Conv: its bias absorbs it
exactly; with pads (or for ConvTranspose) the border sees zeros, so only ``k = 0`` is exact. A
depthwise channel maps ``k`` to ``k·Σ_t W[c, 0, t] + b_c`` (unpadded), a zero filter to ``b_c``.

Folding a per-channel ``y_c = s_c·x_c + t_c`` of the output (a BN, or a Mul/Add/Sub/Div by a
per-channel constant: :meth:`ConvSpec.output_channel_fold`) into the weight and bias
``B' = s·B + t``: Conv ``W[M, C/g, k…]`` is scaled along axis 0 (depthwise and grouped alike);
ConvTranspose ``W[C, M/g, k…]``: output channel ``o = i·(M/g) + j`` of group ``i`` is
``W[i·C/g:(i+1)·C/g, j]``, so ``W`` is viewed as ``[g, C/g, M/g, k…]`` and scaled along its third
axis by ``s`` viewed as ``[g, M/g]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from onnx import NodeProto

from onnxprune.ops.channels import (
    ChannelContext,
    Layout,
    first_constants,
    new_output,
    only_first,
    output_bias,
    padded,
    stored_vector,
    stored_weight,
    zero_output_constants,
)
from onnxprune.ops.registry import register
from onnxprune.ops.spec import (
    BIAS,
    OTHER,
    ChannelFold,
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

    def output_channel_fold(self, node: NodeProto) -> ChannelFold | None:
        return ChannelFold(axis=0)

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return conv_rule

    def channel_source(self, node: NodeProto) -> Callable[..., None] | None:
        return conv_source

    def source_constants(self, cx: ChannelContext, node: NodeProto, layout: Layout) -> np.ndarray:
        bias = np.zeros(layout.length)
        if len(node.input) > 2 and node.input[2]:
            bias = stored_vector(cx, node, 2, 0, layout.length, 1)
        return zero_output_constants(cx, node, 1 if node.op_type == "ConvTranspose" else 0, layout.length, bias)

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        x = first_constants(values, cx.layouts, node)
        return None if x is None else depthwise_constants(cx, node, x)

    def absorbs_constant(self, cx: ChannelContext, node: NodeProto, axis: int) -> bool:
        return not padded(cx, node)

    def constant_bias(self, node: NodeProto, contribution: np.ndarray) -> np.ndarray:
        return contribution.reshape(contribution.shape[0], -1).sum(axis=1)  # Σ over the kernel positions

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

    def output_channel_fold(self, node: NodeProto) -> ChannelFold | None:
        return ChannelFold(axis=1, groups=int(attr(node, "group", 1)))  # type: ignore[arg-type]

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        return None  # no depthwise carry: a ConvTranspose only consumes and produces

    def absorbs_constant(self, cx: ChannelContext, node: NodeProto, axis: int) -> bool:
        return False  # a constant input is scattered over kernel windows: only 0 is exact

    def constant_bias(self, node: NodeProto, contribution: np.ndarray) -> np.ndarray:
        return contribution

    def matrix_view(self, node: NodeProto, index: int, shape: Sequence[int]) -> MatrixView | str:
        if index != 1 or len(shape) < 3:
            return no_view(node, index, shape)
        shape = tuple(int(d) for d in shape)
        c_in, c_out, *kernel = shape
        spatial = len(kernel)
        strides = [int(s) for s in attr(node, "strides", [1] * spatial)]  # type: ignore[union-attr]
        flat = {
            "group": int(attr(node, "group", 1)) == 1,  # type: ignore[arg-type]
            "pads": not any(int(p) for p in attr(node, "pads", [])),  # type: ignore[union-attr]
            "output_padding": not any(int(p) for p in attr(node, "output_padding", [])),  # type: ignore[union-attr]
            "dilations": all(int(d) == 1 for d in attr(node, "dilations", [])),  # type: ignore[union-attr]
            "auto_pad": attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID"),
            "strides": len(strides) == spatial and all(s >= k for s, k in zip(strides, kernel, strict=True)),
        }
        overlap = [name for name, ok in flat.items() if not ok]
        if overlap:
            return (
                f"{no_view(node, index, shape)}: a ConvTranspose with overlapping or cropped kernel windows "
                f"({', '.join(overlap)}) scatters each input over pixels that other inputs write too"
            )
        taps = prod(kernel)
        return MatrixView(
            family="conv",
            shape=shape,
            groups=taps,
            rows=c_out,
            cols=c_in,
            in_axis=0,
            axes=(*range(2, 2 + spatial), 1, 0),  # [*k, C_out, C_in]: one matrix per tap
            capture_op="Conv",
            shared_input=True,  # every tap reads the same input pixel
            kernel=(1,) * spatial,
            strides=(1,) * spatial,
            pads=(0,) * (2 * spatial),
            dilations=(1,) * spatial,
            bias_taps=taps,
        )


register(ConvSpec(), "Conv")
register(ConvTransposeSpec(), "ConvTranspose")


# --------------------------------------------------------------------------- channels


def conv_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    label = cx.label(node)
    if layout.axis != 1:
        cx.block(layout, f"{node.op_type} '{label}' reads these channels on a spatial axis")
        return
    weight = stored_weight(cx, node, 1, layout)
    if weight is None:
        return
    groups = int(cx.attr(node, "group", 1))  # type: ignore[arg-type]
    shape = cx.stored_shape(weight[0])
    if groups == 1:
        cx.members(layout.moved(1), weight[0], 0 if node.op_type == "ConvTranspose" else 1, "in", node, weight[1])
        return
    depthwise = node.op_type == "Conv" and groups == layout.length == shape[0] and shape[1] == 1
    if not depthwise:
        cx.block(layout, f"{node.op_type} '{label}' is a grouped convolution ({groups} groups)")
        return
    cx.members(layout.moved(0), weight[0], 0, "param", node, weight[1])
    if len(node.input) > 2 and node.input[2]:
        bias = cx.stored(node, 2)
        if bias is None:
            cx.block(layout, f"Conv '{label}' has a computed bias")
            return
        cx.members(layout.moved(0), bias[0], 0, "param", node, bias[1])
    cx.edit(("attr", cx.node_id(node), "group"), layout)
    cx.set(node.output[0], layout)


def conv_source(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    if int(cx.attr(node, "group", 1)) != 1:  # type: ignore[arg-type]
        return
    stored = cx.stored(node, 1)
    if stored is None or len(cx.uses(stored[0])) != 1:
        return
    axis = 1 if node.op_type == "ConvTranspose" else 0
    n = cx.stored_shape(stored[0])[axis]
    layout = new_output(cx, node, n, 1)
    if layout is not None:
        cx.members(layout.moved(axis), stored[0], axis, "out", node, stored[1])
        output_bias(cx, node, 2, layout.moved(0), n)


def depthwise_constants(cx: ChannelContext, node: NodeProto, x: np.ndarray) -> np.ndarray:
    """A depthwise Conv's output channels from its input channels' constants (module docstring)."""
    w = cx.stored_array(cx.stored(node, 1)[0]).astype(np.float64)  # type: ignore[index]
    bias = np.zeros(len(x))
    if len(node.input) > 2 and node.input[2]:
        bias = stored_vector(cx, node, 2, 0, len(x), 1)
    pads = padded(cx, node)
    rows = w.reshape(len(x), -1)
    out = np.where(x == 0, bias, np.nan if pads else x * rows.sum(axis=1) + bias)
    out = np.where(np.isnan(x), np.nan, out)
    return np.where(~np.any(rows != 0, axis=1), bias, out)  # a zero filter outputs its bias
