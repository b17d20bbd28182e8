"""MatMul: ``Y = A·B`` with ``A[..., M, K]``, ``B[..., K, N]`` (numpy rules).

A stored ``B`` is a weight with output axis ``rank−1`` and reduction axis ``rank−2`` (a 1-D
operand has only the ``K`` axis); a stored ``A`` the mirror image. ``MACs = ∏batch·M·N·K``
with ``batch`` the broadcast of both batch shapes; a 1-D ``A`` is a row ``[1, K]`` and a 1-D
``B`` a column ``[K, 1]``. MatMul has no bias input: exporters add one with a following Add
(see :mod:`onnxprune.ops.elementwise`).

Matrix view (:meth:`MatMulSpec.matrix_view`) of a stored 2-D ``B [K, N]`` (input 1): ``A``
flattened to rows ``[∏leading, K]`` (capture's cut), each row ``a`` gives ``y = W·a`` with
``W = Bᵀ [N, K]``, one group. No view for a stored ``A`` (it multiplies from the left, per
column of ``B``) nor for a batched ``B`` of rank 3 or more (one matrix per batch element, all
reading different rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import NodeProto

from onnxprune.ops.registry import register
from onnxprune.ops.spec import OTHER, Count, Counter, Dims, MatrixView, OpSpec, Slot, SlotContext, no_view, prod


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

    def matrix_view(self, node: NodeProto, index: int, shape: Sequence[int]) -> MatrixView | str:
        if index != 1 or len(shape) != 2:
            return no_view(node, index, shape)
        k, n = (int(d) for d in shape)
        return MatrixView(family="matmul", shape=(k, n), groups=1, rows=n, cols=k, in_axis=0, transposed=True)


register(MatMulSpec(), "MatMul")
