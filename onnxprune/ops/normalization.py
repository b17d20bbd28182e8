"""The channel rules and constants of normalizations (their spec: :class:`onnxprune.ops.elementwise.NormSpec`).

- BatchNormalization ``y = γ_c·(x − μ_c)/√(σ²_c + ε) + β_c`` and InstanceNormalization
  ``y = γ_c·(x − mean_c)/√(var_c + ε) + β_c`` act per channel of axis 1: channels there are
  carried, and their parameters (inputs 1–4, resp. 1–2, which must be stored) are sliced with
  them (kind "param"). Channels on another axis are blocked (normalized together).
- LayerNormalization normalizes over every axis from ``axis`` on: channels there are blocked,
  channels before are carried. GroupNormalization has no rule (its groups mix channels).

Constant propagation: BN maps a constant channel ``k`` to ``γ(k − μ)/√(σ² + ε) + β`` and a
channel with ``γ = 0`` to ``β`` whatever its input; InstanceNormalization maps a channel
constant over its spatial positions to ``β`` (zero variance: ``x − mean = 0``).

Folding (:func:`batchnorm_affine`): in inference mode (``training_mode`` 0) BN is a per-channel
affine map of its input along axis 1,

    y_c = γ_c · (x_c − μ_c) / √(σ²_c + ε) + β_c = s_c · x_c + t_c,
    s = γ / √(σ² + ε),   t = β − μ · s,

with γ, β, μ, σ² stored 1-D ``[C]`` vectors, ε the attribute (default 1e-5), σ² + ε > 0, and
the running mean/var outputs unread; :mod:`onnxprune.graph.fold_bn` folds it into the producer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from onnx import NodeProto, helper

from onnxprune.ops.channels import (
    ChannelContext,
    Layout,
    first_constants,
    norm_axis,
    only_first,
    stored_vector,
    unused_outputs,
)

PARAMETERS = {"BatchNormalization": range(1, 5), "InstanceNormalization": range(1, 3)}


def batchnorm_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    label = cx.label(node)
    if layout.axis != 1:
        cx.block(layout, f"{node.op_type} '{label}' normalizes another axis")
        return
    found = []
    for index in PARAMETERS[node.op_type]:
        stored = cx.stored(node, index)
        if stored is None:
            cx.block(layout, f"{node.op_type} '{label}' has a computed parameter (input {index})")
            return
        found.append((index, stored))
    if not unused_outputs(cx, node, layout):
        return
    for _, (name, reader) in found:
        cx.members(layout.moved(0), name, 0, "param", node, reader)
    cx.set(node.output[0], layout)


def layernorm_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        cx.block(layout, f"LayerNormalization '{cx.label(node)}': unknown rank")
        return
    axis = norm_axis(int(cx.attr(node, "axis", -1)), rank)  # type: ignore[arg-type]
    if layout.axis >= axis:
        cx.block(layout, f"LayerNormalization '{cx.label(node)}' normalizes over these channels")
    elif unused_outputs(cx, node, layout):
        cx.set(node.output[0], layout)


def batchnorm_constants(
    cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    x = first_constants(values, cx.layouts, node)
    if x is None:
        return None
    length = cx.layouts[out].length
    gamma, beta, mean, var = (stored_vector(cx, node, i, 0, length, 1) for i in range(1, 5))
    eps = float(cx.attr(node, "epsilon", 1e-5))  # type: ignore[arg-type]
    with np.errstate(all="ignore"):
        y = gamma * (x - mean) / np.sqrt(var + eps) + beta
    return np.where(gamma == 0, beta, y)


def instancenorm_constants(
    cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    x = first_constants(values, cx.layouts, node)
    if x is None:
        return None
    beta = stored_vector(cx, node, 2, 0, cx.layouts[out].length, 1)
    return np.where(np.isnan(x), np.nan, beta)


RULES = {
    "BatchNormalization": batchnorm_rule,
    "InstanceNormalization": batchnorm_rule,
    "LayerNormalization": layernorm_rule,
}
CONSTANTS = {"BatchNormalization": batchnorm_constants, "InstanceNormalization": instancenorm_constants}


def batchnorm_affine(
    node: NodeProto, read: Callable[[int, str], np.ndarray | str], others_read: bool
) -> tuple[np.ndarray, np.ndarray] | str:
    """BN at inference as ``y = s·x + t`` per channel (module docstring), or why not."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("training_mode", 0):
        return "training mode (training_mode=1)"
    if others_read:
        return "its running mean/var outputs are used"
    params = []
    for index, what in enumerate(("scale", "bias", "mean", "variance"), start=1):
        value = read(index, what)
        if isinstance(value, str):
            return value
        params.append(value)
    gamma, beta, mean, var = params
    if any(p.ndim != 1 or p.shape != gamma.shape for p in params):
        return "its statistics are not 1-D per-channel vectors"
    denominator = var + float(attrs.get("epsilon", 1e-5))
    if np.any(denominator <= 0):
        return "variance + epsilon is not positive"
    s = gamma / np.sqrt(denominator)
    return s, beta - mean * s


#: Normalizations that are, at inference, a per-channel affine map of their input.
AFFINE = {"BatchNormalization": batchnorm_affine}
