"""Activations and other elementwise maps of one tensor; Softmax and its kin.

Channel rule: an elementwise map ``y = f(x)`` keeps every element where it is, so the
output carries input 0's channel groups unchanged (:func:`~onnxprune.ops.channels.carry_first`;
a second output in use, Dropout's mask, blocks them). Softmax, LogSoftmax and Hardmax
normalize along ``axis`` (opset ≥ 13; before, over every axis from ``axis`` on): channels on
that axis are mixed and blocked, channels on any other axis are carried.

Constant propagation: a dead channel that holds the constant ``k`` holds ``f(k)`` after the
map, elementwise: ``relu(k) = max(k, 0)``, ``σ(k) = 1/(1+e^{−k})``, ``LeakyRelu(k) = k`` or
``α·k``, ``Elu(k) = k`` or ``α·(e^k − 1)``, ``HardSigmoid(k) = clip(α·k + β, 0, 1)``,
``HardSwish(k) = k·clip(k/6 + 1/2, 0, 1)``, ``Gelu(k) = k·(1 + erf(k/√2))/2``, ``Clip`` to its
(stored) bounds, Dropout (inference) the identity. A constant channel under Softmax along
``axis`` (``d`` elements, not the channel axis) is ``1/d`` (the rule checks only that the channel
is constant, as the analysis always has). Other maps give no constant (NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from onnx import NodeProto

from onnxprune.ops.channels import ChannelContext, Layout, carry_first, first_constants, norm_axis, only_first
from onnxprune.ops.registry import register
from onnxprune.ops.spec import OpSpec

_erf = np.vectorize(math.erf, otypes=[np.float64])

Map = Callable[[np.ndarray, NodeProto, ChannelContext], np.ndarray]

#: ``f(k)`` of the maps whose constants are followed (see the module docstring).
MAPS: dict[str, Map] = {
    "Relu": lambda x, n, cx: np.maximum(x, 0.0),
    "Sigmoid": lambda x, n, cx: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": lambda x, n, cx: np.tanh(x),
    "Erf": lambda x, n, cx: _erf(x),
    "Exp": lambda x, n, cx: np.exp(x),
    "Abs": lambda x, n, cx: np.abs(x),
    "Neg": lambda x, n, cx: -x,
    "Sqrt": lambda x, n, cx: np.sqrt(x),
    "Dropout": lambda x, n, cx: x,
    "Softplus": lambda x, n, cx: np.log1p(np.exp(x)),
    "LeakyRelu": lambda x, n, cx: np.where(x >= 0, x, float(cx.attr(n, "alpha", 0.01)) * x),
    "Elu": lambda x, n, cx: np.where(x >= 0, x, float(cx.attr(n, "alpha", 1.0)) * np.expm1(x)),
    "HardSigmoid": lambda x, n, cx: np.clip(float(cx.attr(n, "alpha", 0.2)) * x + float(cx.attr(n, "beta", 0.5)), 0, 1),
    "HardSwish": lambda x, n, cx: x * np.clip(x / 6.0 + 0.5, 0, 1),
    "Gelu": lambda x, n, cx: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
}

#: Elementwise maps of input 0 (Identity, Cast and CastLike are in :mod:`.movement`).
UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Gelu", "Erf",
    "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal", "Softplus", "Softsign", "Mish", "Sin", "Cos", "Floor",
    "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink", "Clip", "Dropout",
)  # fmt: skip


def clip_constants(
    cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    x = first_constants(values, cx.layouts, node)
    if x is None:
        return None
    lo = cx.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    hi = cx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    lo_v = float(lo.reshape(-1)[0]) if lo is not None else float(cx.attr(node, "min", -np.inf))  # type: ignore[arg-type]
    hi_v = float(hi.reshape(-1)[0]) if hi is not None else float(cx.attr(node, "max", np.inf))  # type: ignore[arg-type]
    return np.clip(x, lo_v, hi_v)


class ActivationSpec(OpSpec):
    """``y = f(x)`` elementwise (see the module docstring)."""

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return carry_first

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        if node.op_type == "Clip":
            return clip_constants(cx, node, out, values)
        fn = MAPS.get(node.op_type)
        x = first_constants(values, cx.layouts, node)
        if fn is None or x is None:
            return None
        with np.errstate(all="ignore"):
            return fn(x, node, cx)


def softmax_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    opset = cx.onnx_opset()
    axis = norm_axis(int(cx.attr(node, "axis", -1 if opset >= 13 else 1)), rank)  # type: ignore[arg-type]
    hit = layout.axis == axis if opset >= 13 else layout.axis >= axis
    if hit:
        cx.block(layout, f"{node.op_type} '{cx.label(node)}' normalizes over these channels")
    else:
        cx.set(node.output[0], layout)


class SoftmaxSpec(OpSpec):
    """Softmax, LogSoftmax, Hardmax along ``axis`` (see the module docstring)."""

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return softmax_rule

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        x = first_constants(values, cx.layouts, node)
        if node.op_type != "Softmax" or x is None:
            return None
        shape = cx.shape(out) or ()
        axis = int(cx.attr(node, "axis", -1)) % max(len(shape), 1)  # type: ignore[arg-type]
        return np.where(np.isnan(x), np.nan, 1.0 / shape[axis]) if shape else None


register(ActivationSpec(), *UNARY)


class LogSoftmaxSpec(SoftmaxSpec):
    """LogSoftmax: a Softmax whose output holds log-probabilities."""

    log_probabilities = True


register(SoftmaxSpec(), "Softmax", "Hardmax")
register(LogSoftmaxSpec(), "LogSoftmax")
