"""Which ops carry a gradient, and how an op's attributes read for the numpy kernels.

Block reconstruction (:mod:`onnxprune.passes.blocks`) follows the values that a fitted weight
reaches through ops that carry a gradient. An op in :data:`NO_GRADIENT` (shapes, indices,
comparisons, rounding), a random generator (:attr:`~onnxprune.ops.spec.OpSpec.draws`) or a
``Cast`` to a non-float type ends such a path: its outputs do not change smoothly with the
weights. An op on such a path can be differentiated
here when :data:`onnxprune.reconstruct.autodiff.KERNELS` has it (default domain only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import NodeProto, helper

from onnxprune.ops.registry import spec_of
from onnxprune.reconstruct.autodiff import KERNELS

#: ops whose outputs carry no gradient: they end a path from the fitted weights
NO_GRADIENT = frozenset(
    {
        "Shape", "Size", "ConstantOfShape", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
        "Not", "And", "Or", "Xor", "ArgMax", "ArgMin", "NonZero", "IsNaN", "IsInf", "Sign", "Floor",
        "Ceil", "Round", "EyeLike", "Range",
    }
)  # fmt: skip


def _cast_target(node: NodeProto) -> np.dtype:
    return helper.tensor_dtype_to_np_dtype(next((a.i for a in node.attribute if a.name == "to"), 0))


def carries_gradient(node: NodeProto) -> bool:
    """Whether ``node``'s outputs change smoothly with its float inputs."""
    if node.op_type in NO_GRADIENT or spec_of(node).draws:
        return False
    if node.op_type == "Cast":
        return bool(np.issubdtype(_cast_target(node), np.floating))
    return True


def has_kernel(node: NodeProto) -> bool:
    """Whether the numpy kernels can run and differentiate ``node``."""
    return node.domain in ("", "ai.onnx") and node.op_type in KERNELS


def kernel_attrs(node: NodeProto, opset: int) -> dict[str, Any]:
    """``node``'s attributes as plain values for its kernel, with the model's ``opset`` (a
    ``Cast`` also gets its numpy target type as ``to_numpy``)."""
    attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for key, value in list(attrs.items()):
        if isinstance(value, bytes):
            attrs[key] = value.decode()
    if node.op_type == "Cast":
        attrs["to_numpy"] = _cast_target(node)
    attrs["opset"] = opset
    return attrs
