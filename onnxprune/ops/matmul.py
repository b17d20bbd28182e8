"""MatMul: ``Y = A·B`` with ``A[..., M, K]``, ``B[..., K, N]`` (numpy rules).

A stored ``B`` is a weight with output axis ``rank−1`` and reduction axis ``rank−2`` (a 1-D
operand has only the ``K`` axis); a stored ``A`` the mirror image. ``MACs = ∏batch·M·N·K``
with ``batch`` the broadcast of both batch shapes; a 1-D ``A`` is a row ``[1, K]`` and a 1-D
``B`` a column ``[K, 1]``. MatMul has no bias input: exporters add one with a following Add
(see :mod:`onnxprune.ops.elementwise`).

Matrix view (:meth:`MatMulSpec.matrix_view`) of a stored 2-D ``B [K, N]`` (input 1): ``A``
flattened to rows ``[∏leading, K]`` (capture's cut), each row ``a`` gives ``y = W·a`` with
``W = Bᵀ [N, K]``, one group. A stored 2-D ``A [M, K]`` (input 0, ``W @ x``) is ``W`` as it is,
each column of ``B [..., K, N]`` a row (capture's "MatMulLeft"). A batched ``B [*b, K, N]``
(rank ``r`` ≥ 3) is one matrix per batch element: group ``g`` (C order over ``b``) is
``W_g = B[g]ᵀ [N, K]``, i.e. ``B.transpose(…, r−1, r−2).reshape(∏b, N, K)``, and it multiplies
the rows of ``A [*a, M, K]`` whose batch index, broadcast against ``b`` by numpy's rules, is
``g``: every ``M`` row of those batch elements, over ``A``'s leading batch axes beyond ``b``
and over the axes where ``B`` has 1 and ``A`` more (capture's "BatchedMatMul"). No view for a
batched stored ``A``.

Channels (:mod:`onnxprune.ops.channels`): ``x @ W`` with a 2-D ``W`` of its own starts a group
on the last axis of ``Y`` (``W`` axis 1). Channels on ``A``'s ``K`` axis are read through a
stored 2-D ``B``'s axis 0, or joined with ``B``'s ``K`` axis when both are tracked (attention
``Q·Kᵀ``); channels on ``A``'s row axis (``M``) go to ``Y``'s; on a batch axis (heads) they are
joined with ``B``'s batch axis, or carried where ``B`` broadcasts over it; channels on ``B``'s
last axis go to ``Y``'s (``attn·V``), on its ``K`` axis through a stored 2-D ``A``'s axis 1. A
dead unit of ``x @ W`` (a zero column) outputs 0 (no bias); an element that is 0 in either
operand gives 0 along the joined axis. A constant on ``A``'s ``K`` axis is absorbed by a bias
(``k·W[e]`` per output); one on a weight on the left (``W @ x``) would be per row: only 0 is exact.

Folding a per-channel ``y_n = s_n·x_n + t_n`` on axis 1 of ``Y = X·B (+ c)`` (a BN:
:meth:`MatMulSpec.output_channel_fold`) needs a 2-D ``B[K, N]`` and a 2-D ``Y``, so that axis 1
is ``B``'s last axis: ``B' = B·diag(s)``, ``c' = s·c + t`` in the following Add (its stored
operand, :mod:`onnxprune.ops.elementwise`), or a new Add of ``t`` if there was none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from onnx import NodeProto

from onnxprune.ops.channels import ChannelContext, Layout, new_output, stored_weight, zero_output_constants
from onnxprune.ops.registry import register
from onnxprune.ops.spec import (
    OTHER,
    ChannelFold,
    Count,
    Counter,
    Dims,
    MatrixView,
    OpSpec,
    Slot,
    SlotContext,
    no_view,
    prod,
)


def count_matmul(node: NodeProto, ins: list[Dims], outs: list[Dims]) -> Count:
    a, b = ins
    if not a or not b:
        raise ValueError("MatMul operands must have rank 1 or more")
    m, k = (1, a[0]) if len(a) == 1 else (a[-2], a[-1])
    n = 1 if len(b) == 1 else b[-1]
    batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return Count(prod(batch) * m * n * k, (((1, 0), 1),))


class MatMulSpec(OpSpec):
    macs = Counter((0, 1), (), count_matmul)

    def slot(self, ctx: SlotContext) -> Slot:
        if ctx.rank is None:
            return Slot("weight")
        if ctx.index == 1:
            return Slot("weight", ctx.rank - 1, ctx.rank - 2) if ctx.rank >= 2 else Slot("weight", None, 0)
        if ctx.index == 0:
            return Slot("weight", ctx.rank - 2, ctx.rank - 1) if ctx.rank >= 2 else Slot("weight", None, 0)
        return OTHER

    def output_channel_fold(self, node: NodeProto) -> ChannelFold | None:
        return ChannelFold(axis=1, ndim=2, output_rank=2, bias_input=None)

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return matmul_rule

    def channel_source(self, node: NodeProto) -> Callable[..., None] | None:
        return matmul_source

    def source_constants(self, cx: ChannelContext, node: NodeProto, layout: Layout) -> np.ndarray:
        return zero_output_constants(cx, node, -1, layout.length, np.zeros(layout.length))

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        length = cx.layouts[out].length
        zero = np.zeros(length, dtype=bool)
        for name in node.input[:2]:
            v = values.get(name) if name in cx.layouts else None
            if v is not None and len(v) == length:
                zero |= v == 0
        return np.where(zero, 0.0, np.nan)

    def data_input(self, cx: ChannelContext, node: NodeProto, tensor: str, axis: int) -> str:
        return node.input[0] if axis == 0 else node.input[1]  # B [K, N] read on axis 0: the data is A

    def absorbs_constant(self, cx: ChannelContext, node: NodeProto, axis: int) -> bool:
        return axis == 0  # a weight on the left: the change would be per row, not per output

    def matrix_view(self, node: NodeProto, index: int, shape: Sequence[int]) -> MatrixView | str:
        if index == 1 and len(shape) >= 3:  # x @ W with one W [K, N] per batch element
            *batch, k, n = (int(d) for d in shape)
            rank = len(shape)
            return MatrixView(
                family="matmul",
                shape=(*batch, k, n),
                groups=prod(batch),
                rows=n,
                cols=k,
                in_axis=rank - 2,
                axes=(*range(rank - 2), rank - 1, rank - 2),
                capture_op="BatchedMatMul",
                batch=tuple(batch),
            )
        if len(shape) != 2 or index not in (0, 1):
            return no_view(node, index, shape)
        if index == 0:  # W @ x: W [M, K] as it is, x [..., K, N] read column by column
            m, k = (int(d) for d in shape)
            return MatrixView(
                family="matmul",
                shape=(m, k),
                groups=1,
                rows=m,
                cols=k,
                in_axis=1,
                capture_op="MatMulLeft",
                activation=("input", 1),
            )
        k, n = (int(d) for d in shape)
        return MatrixView(family="matmul", shape=(k, n), groups=1, rows=n, cols=k, in_axis=0, axes=(1, 0))


register(MatMulSpec(), "MatMul")


# --------------------------------------------------------------------------- channels


def matmul_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    label = cx.label(node)
    ra, rb, r = cx.rank(node.input[0]), cx.rank(node.input[1]), cx.rank(node.output[0])
    if ra is None or rb is None or r is None:
        for layout in tracked.values():
            cx.block(layout, f"MatMul '{label}': unknown ranks")
        return
    a, b = tracked.get(0), tracked.get(1)
    a_k, b_k = ra - 1, (rb - 2 if rb >= 2 else 0)
    out: list[Layout] = []
    if a is not None and a.axis == a_k:
        if b is not None and b.axis == b_k:
            cx.join([a, b.moved(a.axis)], f"MatMul '{label}'")
            b = None
        elif b is None and rb == 2 and cx.stored(node, 1) is not None:
            weight = stored_weight(cx, node, 1, a)
            if weight is not None:
                cx.members(a.moved(0), weight[0], 0, "in", node, weight[1])
        else:
            cx.block(a, f"MatMul '{label}' contracts these channels with a tensor that has no group")
    elif a is not None and ra >= 2 and a.axis == ra - 2:
        out.append(a.moved(r - 2))
    elif a is not None:
        batch = a.axis + r - ra
        b_axis = batch - (r - rb)
        if b is not None and b.axis == b_axis:
            joined = cx.join([a.moved(batch), b.moved(batch)], f"MatMul '{label}'")
            b = None
            if joined is not None:
                out.append(joined)
        elif b is None and (b_axis < 0 or (cx.shape(node.input[1]) or (0,) * rb)[b_axis] == 1):
            out.append(a.moved(batch))
        else:
            cx.block(a, f"MatMul '{label}' batches these channels with a tensor that has no group")
    if b is not None:
        if rb >= 2 and b.axis == rb - 1:
            out.append(b.moved(r - 1))
        elif b.axis == b_k and ra == 2 and cx.stored(node, 0) is not None:
            weight = stored_weight(cx, node, 0, b)
            if weight is not None:
                cx.members(b.moved(1), weight[0], 1, "in", node, weight[1])
        else:
            cx.block(b, f"MatMul '{label}' reads these channels as {'rows' if b.axis == b_k else 'a batch axis'}")
    if len(out) > 1:
        for layout in out:
            cx.block(layout, f"MatMul '{label}' would carry channels on two axes")
    elif out:
        cx.set(node.output[0], out[0])


def matmul_source(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    stored = cx.stored(node, 1)
    rank = cx.rank(node.output[0])
    if stored is None or rank is None or rank < 2 or len(cx.uses(stored[0])) != 1:
        return
    shape = cx.stored_shape(stored[0])
    if len(shape) != 2:
        return
    layout = new_output(cx, node, shape[1], rank - 1)
    if layout is not None:
        cx.members(layout.moved(1), stored[0], 1, "out", node, stored[1])
