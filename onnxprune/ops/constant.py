"""Constant: a node whose output is a value written into the graph.

Its ``value`` attribute (a tensor) is a weight like an initializer: discovery, the
streaming writer, the skeleton and the quantizer read it through :func:`constant_tensor`.
The other value attributes (``value_int(s)``, ``value_float(s)``) hold shape-like scalars
and lists, which :func:`constant_array` also gives; ``value_string(s)`` and
``sparse_value`` give None. It does no work at run time.
"""

from __future__ import annotations

import numpy as np
from onnx import AttributeProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.ops.registry import register, spec_of
from onnxprune.ops.spec import OpSpec

_LISTS = ("value_ints", "value_int", "value_floats", "value_float")


class ConstantSpec(OpSpec):
    no_work = True  # its value is in the file
    foldable = False  # nothing to fold: its value is stored already

    def constant_attribute(self, node: NodeProto) -> AttributeProto | None:
        if len(node.attribute) == 1 and node.attribute[0].name != "sparse_value":
            return node.attribute[0]
        return None

    def constant_tensor(self, node: NodeProto) -> TensorProto | None:
        if not node.output or not node.output[0]:
            return None
        for attr in node.attribute:
            if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                return attr.t
        return None


register(ConstantSpec(), "Constant")


def constant_tensor(node: NodeProto) -> TensorProto | None:
    """The tensor ``node`` writes into the graph, if it is a Constant with a tensor ``value``."""
    return spec_of(node).constant_tensor(node)


def constant_array(node: NodeProto) -> np.ndarray | None:
    """The value of a Constant node as an array (``value`` or a numeric list attribute)."""
    tensor = constant_tensor(node)
    if tensor is not None:
        return numpy_helper.to_array(tensor)
    if not isinstance(spec_of(node), ConstantSpec):
        return None
    for attr in node.attribute:
        if attr.name in _LISTS:
            return np.asarray(helper.get_attribute_value(attr))
    return None
