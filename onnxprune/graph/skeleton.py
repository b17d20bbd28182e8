"""A model's skeleton: the same model with its large tensors referenced, not copied.

``onnx.checker`` on a file parses the whole file, weights included, which for a large
model costs as much as loading it again. The streaming writer knows where each large
tensor's ``raw_data`` payload lies in the file it wrote (:data:`writer.Layout`), and that
is exactly what an ONNX external-data reference says (``location``, ``offset``,
``length``). The skeleton is the written model with those tensors turned into external
references *into the written file itself*: every field of every message is the same,
the tensor bytes are the very bytes on disk, and it is a few kilobytes. Checking it
checks the written model, without reading its weights twice.
"""

from __future__ import annotations

from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

from onnxprune.graph.writer import Layout, copy_fields

_GRAPH_PARTS = ("node", "initializer")


def _external(tensor: TensorProto, location: str, offset: int, length: int) -> TensorProto:
    out = TensorProto()
    copy_fields(tensor, out, skip=("raw_data", "data_location", "external_data"))
    out.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = out.external_data.add()
        entry.key, entry.value = key, value
    return out


def _node(node: NodeProto, layout: Layout, location: str) -> NodeProto:
    out = NodeProto()
    if not (node.op_type == "Constant" and node.output and node.output[0] in layout):
        out.CopyFrom(node)
        return out
    copy_fields(node, out, skip=("attribute",))
    offset, length = layout[node.output[0]]
    for attr in node.attribute:
        copy = out.attribute.add()
        if attr.name == "value" and attr.type == AttributeProto.TENSOR:
            copy_fields(attr, copy, skip=("t",))
            copy.t.CopyFrom(_external(attr.t, location, offset, length))
        else:
            copy.CopyFrom(attr)
    return out


def skeleton(model: ModelProto, layout: Layout, location: str) -> ModelProto:
    """``model`` with every main-graph tensor named in ``layout`` (initializers and
    Constant-node values) stored as external data at its place in the file ``location``
    (relative to the skeleton's folder)."""
    out = ModelProto()
    copy_fields(model, out, skip=("graph",))
    graph = GraphProto()
    copy_fields(model.graph, graph, skip=_GRAPH_PARTS)
    for node in model.graph.node:
        graph.node.append(_node(node, layout, location))
    for tensor in model.graph.initializer:
        if tensor.name in layout:
            graph.initializer.append(_external(tensor, location, *layout[tensor.name]))
        else:
            graph.initializer.append(tensor)
    out.graph.CopyFrom(graph)
    return out
