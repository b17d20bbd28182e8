"""Light copies of a model, for the checks and inferences that do not need its weights.

**Skeleton of a written model** (:func:`skeleton`). ``onnx.checker`` on a file parses
the whole file, weights included, which for a large model costs as much as loading it
again. The streaming writer knows where each large tensor's ``raw_data`` payload lies in
the file it wrote (:data:`writer.Layout`), and that is exactly what an ONNX external-data
reference says (``location``, ``offset``, ``length``). The skeleton is the written model
with those tensors turned into external references *into the written file itself*: every
field of every message is the same, the tensor bytes are the very bytes on disk, and it
is a few kilobytes. Checking it checks the written model, without reading its weights
twice.

**Data-free copy for shape inference** (:func:`data_free_model`). The same graphs
(subgraphs included), with the data of every tensor over :data:`DATA_FREE_KEEP` elements
(or stored externally) dropped: it keeps its name, dtype and dims, which is all shape
inference reads of a weight, while small tensors (shape targets, axes, scales) keep their
values for data propagation. Initializers, sparse initializers and tensor-valued
attributes (``TENSOR``, ``TENSORS``, ``SPARSE_TENSOR``) are all reduced. The declared
shapes of graph outputs and intermediate values are dropped (exporters fix them for other
input shapes; inference computes them afresh), and graph inputs may be given concrete
shapes. Memory stays small for a large model. The copy is for inference only: it cannot
run.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, SparseTensorProto, TensorProto, ValueInfoProto

from onnxprune.graph.tensors import numel
from onnxprune.graph.writer import Layout, copy_fields
from onnxprune.ops import constant_tensor

_GRAPH_PARTS = ("node", "initializer")

#: Tensors with at most this many elements keep their data in :func:`data_free_model`;
#: larger ones keep only their name, dims and dtype.
DATA_FREE_KEEP = 1024


# ---------------------------------------------------------------------------------------
# Skeleton of a written model


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
    if constant_tensor(node) is None or node.output[0] not in layout:
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


# ---------------------------------------------------------------------------------------
# Data-free copy for shape inference


def _data_free_tensor(tensor: TensorProto) -> TensorProto:
    """``tensor`` itself when small and loaded (the callers copy it), else its name, dtype and dims."""
    if tensor.data_location != TensorProto.EXTERNAL and numel(tensor) <= DATA_FREE_KEEP:
        return tensor
    return TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)


def _data_free_sparse(sparse: SparseTensorProto) -> SparseTensorProto:
    return SparseTensorProto(
        values=_data_free_tensor(sparse.values), indices=_data_free_tensor(sparse.indices), dims=sparse.dims
    )


def without_shape(value: ValueInfoProto) -> ValueInfoProto:
    """A copy of ``value`` with its element type but without its (possibly stale) shape."""
    out = ValueInfoProto()
    out.CopyFrom(value)
    if out.type.HasField("tensor_type"):
        out.type.tensor_type.ClearField("shape")
    return out


def _data_free_graph(graph: GraphProto) -> GraphProto:
    out = GraphProto(name=graph.name)
    out.input.extend(graph.input)
    out.output.extend(without_shape(v) for v in graph.output)
    out.value_info.extend(without_shape(v) for v in graph.value_info)
    out.initializer.extend(_data_free_tensor(t) for t in graph.initializer)
    out.sparse_initializer.extend(_data_free_sparse(s) for s in graph.sparse_initializer)
    for node in graph.node:
        copy = out.node.add(
            op_type=node.op_type, domain=node.domain, name=node.name, input=node.input, output=node.output
        )
        if node.overload:
            copy.overload = node.overload
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                copy.attribute.add(name=attr.name, type=attr.type, t=_data_free_tensor(attr.t))
            elif attr.type == AttributeProto.TENSORS:
                tensors = [_data_free_tensor(t) for t in attr.tensors]
                copy.attribute.add(name=attr.name, type=attr.type, tensors=tensors)
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                sparse = _data_free_sparse(attr.sparse_tensor)
                copy.attribute.add(name=attr.name, type=attr.type, sparse_tensor=sparse)
            elif attr.type == AttributeProto.GRAPH:
                copy.attribute.add(name=attr.name, type=attr.type, g=_data_free_graph(attr.g))
            elif attr.type == AttributeProto.GRAPHS:
                copy.attribute.add(name=attr.name, type=attr.type, graphs=[_data_free_graph(g) for g in attr.graphs])
            else:
                copy.attribute.add().CopyFrom(attr)
    return out


def data_free_model(model: ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None = None) -> ModelProto:
    """A data-free copy of ``model`` for ONNX shape inference (see the module docstring):
    its ir_version, opsets, functions and graphs, large tensors reduced to dims and dtype,
    declared output and intermediate shapes dropped, and each graph input named in
    ``input_shapes`` given that concrete shape. ``model`` is not changed."""
    out = ModelProto(ir_version=model.ir_version, graph=_data_free_graph(model.graph))
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    for value in out.graph.input:
        if input_shapes and value.name in input_shapes:
            tensor_type = value.type.tensor_type
            tensor_type.ClearField("shape")
            tensor_type.shape.SetInParent()
            for d in input_shapes[value.name]:
                tensor_type.shape.dim.add(dim_value=int(d))
    return out
