"""Helpers shared by the passes that edit a model in place (:mod:`~onnxprune.graph.cleanup`,
:mod:`~onnxprune.graph.fold_bn`, :mod:`~onnxprune.graph.fold_constants`): nested graphs
keyed by their owner node, the names a graph (or a node) defines and reads from outside, deleting
nodes, fresh names, and the shapes ONNX inference gives.

**Shapes.** ONNX shape inference (``strict_mode=False``, ``data_prop=True``) runs on
:func:`~onnxprune.graph.skeleton.data_free_model` of the model: the same graphs without
large tensor data, and without the declared shapes of outputs and intermediate values
(they may be stale after an edit), so every shape is computed afresh. The result is flat
(names are unique in a model): the type of every named value, and each graph's inferred
``value_info`` keyed by :func:`graphs_by_owner`. If inference fails, the result is empty
and carries the first line of the error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, TypeProto, ValueInfoProto, helper

from onnxprune.graph.skeleton import data_free_model
from onnxprune.graph.walk import GraphKey, graphs_by_owner, node_subgraphs

#: The domain names of the standard ONNX operators.
ONNX_DOMAINS = ("", "ai.onnx")


def defined_names(graph: GraphProto) -> set[str]:
    """Names ``graph`` itself defines: inputs, initializers, node outputs."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names |= {s.values.name for s in graph.sparse_initializer}
    return names | {o for n in graph.node for o in n.output if o}


def outer_refs(graph: GraphProto) -> set[str]:
    """Names read in ``graph`` (nested subgraphs included) that it does not define."""
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(i for i in node.input if i)
        for _, sub in node_subgraphs(node):
            read |= outer_refs(sub)
    return read - defined_names(graph)


def node_reads(node: NodeProto) -> list[str]:
    """The names ``node`` reads: its inputs (in order, empty ones left out), then what its
    subgraphs read from outside them (sorted)."""
    return [name for name in node.input if name] + sorted(
        {name for _, sub in node_subgraphs(node) for name in outer_refs(sub)}
    )


def delete_nodes(graph: GraphProto, nodes: list[NodeProto]) -> None:
    """Delete ``nodes`` (held by the caller, so their ids stay valid) without copying."""
    drop = {id(n) for n in nodes}
    for i in range(len(graph.node) - 1, -1, -1):
        if id(graph.node[i]) in drop:
            del graph.node[i]


class FreshNames:
    """Fresh tensor names, unique in the whole model."""

    def __init__(self, model: ModelProto) -> None:
        self.taken = {name for _, g in graphs_by_owner(model.graph) for name in defined_names(g)}

    def __call__(self, base: str) -> str:
        name, count = base, 1
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name


def is_external(tensor: TensorProto) -> bool:
    """True if ``tensor``'s data is stored outside the model and not loaded."""
    return tensor.data_location == TensorProto.EXTERNAL and not tensor.HasField("raw_data")


def overridable(model: ModelProto, graph: GraphProto) -> set[str]:
    """Initializers that are graph inputs too, hence not constants (IR >= 4)."""
    if model.ir_version < 4 or graph is not model.graph:
        return set()
    return {i.name for i in graph.input} & {t.name for t in graph.initializer}


@dataclass
class InferredShapes:
    """Inferred types of every named value (flat: names are unique in a model) and the
    inferred ``value_info`` of each graph."""

    types: dict[str, TypeProto] = field(default_factory=dict)
    value_info: dict[GraphKey, list[ValueInfoProto]] = field(default_factory=dict)
    error: str | None = None

    def dims(self, name: str) -> list[int | None] | None:
        tensor_type = self.types[name].tensor_type if name in self.types else None
        if tensor_type is None or not tensor_type.HasField("shape"):
            return None
        # a negative dim_value (some exporters write -1) is as unknown as a dim_param
        return [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tensor_type.shape.dim]

    def rank(self, name: str) -> int | None:
        dims = self.dims(name)
        return None if dims is None else len(dims)


def inferred_shapes(model: ModelProto) -> InferredShapes:
    """The shapes ONNX inference gives for ``model`` (see the module docstring)."""
    shapes = InferredShapes()
    try:
        inferred = onnx.shape_inference.infer_shapes(data_free_model(model), strict_mode=False, data_prop=True)
    except Exception as exc:  # inference raises several types; the model still works without value_info
        shapes.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return shapes
    for key, graph in graphs_by_owner(inferred.graph):
        shapes.value_info[key] = list(graph.value_info)
        for value in (*graph.input, *graph.output, *graph.value_info):
            shapes.types[value.name] = value.type
        for tensor in graph.initializer:
            shapes.types[tensor.name] = helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
    return shapes
