"""Reductions: ReduceMean, ReduceSum, ReduceMax … and ArgMax, ArgMin.

Channel rule: reducing over ``axes`` (attribute, or constant input 1 from opset 18; none:
every axis unless ``noop_with_empty_axes``) mixes the elements along them. Channels on a
reduced axis are blocked; channels on another axis are carried, to the same axis with
``keepdims`` = 1, else moved down by the reduced axes before it. Axes computed at run time
block them.

Constant propagation: the mean, max or min of a constant ``k`` is ``k`` (ReduceMean,
ReduceMax, ReduceMin); the other reductions depend on how many elements they see and give
no constant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from onnx import NodeProto

from onnxprune.ops.channels import ChannelContext, Layout, axes_of, first_constants, norm_axis, only_first
from onnxprune.ops.registry import register
from onnxprune.ops.spec import OpSpec

REDUCTIONS = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
)  # fmt: skip
KEEP_CONSTANT = ("ReduceMean", "ReduceMax", "ReduceMin")


def reduce_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    label = cx.label(node)
    if node.op_type in ("ArgMax", "ArgMin"):
        axes: list[int] | None = [int(cx.attr(node, "axis", 0))]  # type: ignore[arg-type]
    else:
        axes = axes_of(cx, node, 1)
        has_input = len(node.input) > 1 and bool(node.input[1])
        if axes is None and has_input:
            cx.block(layout, f"{node.op_type} '{label}' reduces over axes computed at run time")
            return
        if not axes:
            axes = [] if cx.attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    reduced = {norm_axis(a, rank) for a in axes}
    if layout.axis in reduced:
        cx.block(layout, f"{node.op_type} '{label}' reduces over these channels")
        return
    keep = int(cx.attr(node, "keepdims", 1))  # type: ignore[arg-type]
    axis = layout.axis if keep else layout.axis - sum(1 for a in reduced if a < layout.axis)
    cx.set(node.output[0], layout.moved(axis))


class ReduceSpec(OpSpec):
    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return reduce_rule

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        return first_constants(values, cx.layouts, node) if node.op_type in KEEP_CONSTANT else None


register(ReduceSpec(), *REDUCTIONS, "ArgMax", "ArgMin")
