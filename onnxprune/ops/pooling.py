"""Pooling: MaxPool, AveragePool, LpPool, their global forms, MaxRoiPool.

Channel rule: a pooling window slides over the spatial axes of ``X[N, C, *S]`` and never
mixes channels, so channels on axis 1 are carried to ``Y[N, C, *S_out]``; channels on any
other axis are pooled together and blocked. A second output in use (MaxPool's indices)
blocks them too.

Constant propagation: a channel constant ``k`` over every position stays ``k`` under max
and mean (MaxPool, GlobalMaxPool, GlobalAveragePool). AveragePool is exact when it pads
nothing, or does not count the pads (``count_include_pad`` = 0); counting zero pads, the
border averages ``k·n/(n + pads)``, which is constant only for ``k = 0``. Lp pooling gives
no constant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from onnx import NodeProto

from onnxprune.ops.channels import ChannelContext, Layout, first_constants, only_first, padded, unused_outputs
from onnxprune.ops.registry import register
from onnxprune.ops.spec import OpSpec

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool")
#: Pools whose output is the constant of a constant channel.
KEEP_CONSTANT = ("MaxPool", "GlobalAveragePool", "GlobalMaxPool")


def pool_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    if layout.axis != 1:
        cx.block(layout, f"{node.op_type} '{cx.label(node)}' pools over the axis of these channels")
    elif unused_outputs(cx, node, layout):
        cx.set(node.output[0], layout)


class PoolSpec(OpSpec):
    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return pool_rule

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        x = first_constants(values, cx.layouts, node)
        if node.op_type in KEEP_CONSTANT:
            return x
        if node.op_type == "AveragePool" and x is not None:
            exact = not padded(cx, node) or not cx.attr(node, "count_include_pad", 0)
            return x if exact else np.where(x == 0, 0.0, np.nan)
        return None


register(PoolSpec(), *POOLS)
