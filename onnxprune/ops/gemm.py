"""Gemm: ``Y = alpha·op(A)·op(B) + beta·C`` with ``op(A)[M, K]``, ``op(B)[K, N]``.

The weight is usually ``B`` (``transB`` 1: ``[N, K]``, output axis 0; else ``[K, N]``,
output axis 1), sometimes ``A``. ``MACs = M·N·K``; adding ``C`` costs ``M·N`` additions,
counted apart. The bias ``C`` (input 2) enters with gain ``beta``, the product with gain
``alpha``: this is the one place that knows it (bias correction and channel removal ask
:meth:`GemmSpec.weight_gain` and :meth:`GemmSpec.bias_gain`).

Matrix view (:meth:`GemmSpec.matrix_view`) of a stored ``B`` (input 1): every row ``a`` of
``op(A)`` (``[M, K]``; capture transposes ``A`` when ``transA`` = 1) gives the output row
``y = W·a`` with ``W = op(B)ᵀ [N, K]``, one group: with ``transB`` = 1 the stored ``B [N, K]``
is ``W`` as is; with ``transB`` = 0 the stored ``B [K, N]`` is ``Wᵀ``, so ``W = Bᵀ``. A stored
``A`` multiplies from the left (``Y = W·op(B)``, per column): no view.

Channels (:mod:`onnxprune.ops.channels`): a Gemm whose ``B`` is its own (and ``transA`` = 0)
starts a group on axis 1 of ``Y`` (``B`` axis 0 with ``transB``, else 1; a per-output ``C``
with it); channels on the ``K`` axis of ``A`` are read through ``B``'s ``K`` axis. A dead unit
of the group (a zero column of ``op(B)``) outputs ``beta·C_n``.

Folding a per-channel ``y_n = s_n·x_n + t_n`` of ``Y`` (a BN, or a Mul/Add/Sub/Div by a
per-column constant: :meth:`GemmSpec.output_channel_fold`): ``B[K, N]`` is scaled along axis 1
(``transB`` = 1: ``B[N, K]``, axis 0); ``C' = s·(beta·C) + t`` and ``beta`` becomes 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from onnx import NodeProto

from onnxprune.ops.channels import (
    ChannelContext,
    Layout,
    new_output,
    only_first,
    output_bias,
    stored_vector,
    stored_weight,
    zero_output_constants,
)
from onnxprune.ops.registry import register
from onnxprune.ops.spec import (
    BIAS,
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
)


def count_gemm(node: NodeProto, ins: list[Dims], outs: list[Dims]) -> Count:
    a, b = ins
    if len(a) != 2 or len(b) != 2:
        raise ValueError(f"Gemm operands must be 2-D, got {list(a)} and {list(b)}")
    m, k = (a[1], a[0]) if attr(node, "transA", 0) else a
    n = b[0] if attr(node, "transB", 0) else b[1]
    has_bias = len(node.input) > 2 and bool(node.input[2])
    return Count(m * n * k, (((1, 0), 1),), bias=m * n if has_bias else 0)


class GemmSpec(OpSpec):
    weight_inputs = ((1, 0),)
    macs = Counter((0, 1), (), count_gemm)

    def slot(self, ctx: SlotContext) -> Slot:
        if ctx.index == 1:
            return Slot("weight", 0, 1) if ctx.attr("transB", 0) else Slot("weight", 1, 0)
        if ctx.index == 0:
            return Slot("weight", 1, 0) if ctx.attr("transA", 0) else Slot("weight", 0, 1)
        return BIAS

    bias_layout = "per_output"

    def bias_input(self, node: NodeProto) -> int | None:
        return 2

    def weight_gain(self, node: NodeProto) -> float:
        return float(attr(node, "alpha", 1.0))  # type: ignore[arg-type]

    def bias_gain(self, node: NodeProto) -> float:
        return float(attr(node, "beta", 1.0))  # type: ignore[arg-type]

    def output_channel_fold(self, node: NodeProto) -> ChannelFold | None:
        axis = 0 if attr(node, "transB", 0) else 1
        return ChannelFold(axis=axis, ndim=2, bias_gain=self.bias_gain(node), bias_gain_attr="beta")

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return gemm_rule

    def channel_source(self, node: NodeProto) -> Callable[..., None] | None:
        return gemm_source

    def source_constants(self, cx: ChannelContext, node: NodeProto, layout: Layout) -> np.ndarray:
        length = layout.length
        bias = np.zeros(length)
        if len(node.input) > 2 and node.input[2]:
            bias = stored_vector(cx, node, 2, 0, length, 1)
            shape = cx.shape(node.input[2]) or ()
            if len(shape) == 2 and shape[0] != 1:
                bias = np.full(length, np.nan)
        bias = bias * self.bias_gain(node)  # Y = alpha·A·B + beta·C
        return zero_output_constants(cx, node, 0 if cx.attr(node, "transB", 0) else 1, length, bias)

    def matrix_view(self, node: NodeProto, index: int, shape: Sequence[int]) -> MatrixView | str:
        if index != 1 or len(shape) != 2:
            return no_view(node, index, shape)
        shape = tuple(int(d) for d in shape)
        trans_b = bool(attr(node, "transB", 0))
        (n, k), in_axis = (shape, 1) if trans_b else (shape[::-1], 0)
        return MatrixView(
            family="gemm",
            shape=shape,
            groups=1,
            rows=n,
            cols=k,
            in_axis=in_axis,
            axes=() if trans_b else (1, 0),
            capture_op="Gemm",
            trans_a=bool(attr(node, "transA", 0)),
        )


register(GemmSpec(), "Gemm")


# --------------------------------------------------------------------------- channels


def gemm_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    k_axis = 0 if cx.attr(node, "transA", 0) else 1
    if layout.axis != k_axis:
        cx.block(layout, f"Gemm '{cx.label(node)}' reads these channels as rows")
        return
    weight = stored_weight(cx, node, 1, layout)
    if weight is not None:
        axis = 1 if cx.attr(node, "transB", 0) else 0
        cx.members(layout.moved(axis), weight[0], axis, "in", node, weight[1])


def gemm_source(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    stored = cx.stored(node, 1)
    if stored is None or len(cx.uses(stored[0])) != 1 or cx.attr(node, "transA", 0):
        return
    axis = 0 if cx.attr(node, "transB", 0) else 1
    n = cx.stored_shape(stored[0])[axis]
    layout = new_output(cx, node, n, 1)
    if layout is not None:
        cx.members(layout.moved(axis), stored[0], axis, "out", node, stored[1])
        output_bias(cx, node, 2, layout, n)
