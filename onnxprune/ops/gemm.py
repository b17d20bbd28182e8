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
"""

from __future__ import annotations

from collections.abc import Sequence

from onnx import NodeProto

from onnxprune.ops.registry import register
from onnxprune.ops.spec import BIAS, Count, Counter, Dims, MatrixView, OpSpec, Slot, SlotContext, attr, no_view


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
            transposed=not trans_b,
            capture_op="Gemm",
            trans_a=bool(attr(node, "transA", 0)),
        )


register(GemmSpec(), "Gemm")
