"""Walking every graph and every tensor of a model, subgraphs (If/Loop/Scan) included.

One walker (:func:`node_subgraphs`), two ways to name a graph: :func:`all_graphs` by a path
of node labels (weight keys, ``path::name``), :func:`graphs_by_owner` by owner outputs
(edits and shape inference).
"""

from __future__ import annotations

from collections.abc import Iterator

from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

#: A graph's place in a model: ``()`` for the main graph, then (owner node's first
#: output, attribute) pairs down to it.
GraphKey = tuple[str, ...]


def node_subgraphs(node: NodeProto) -> Iterator[tuple[str, GraphProto]]:
    """``(attribute, subgraph)`` for each subgraph of ``node`` (``name[i]`` for a GRAPHS
    attribute): the one place that knows where subgraphs live."""
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from ((f"{attr.name}[{i}]", g) for i, g in enumerate(attr.graphs))


def subgraphs(graph: GraphProto) -> Iterator[tuple[str, GraphProto]]:
    """Yield ``(node_name/attribute, subgraph)`` for the direct subgraphs of ``graph`` (the
    label that weight keys use: ``path::name``)."""
    for index, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{index}"
        for attribute, sub in node_subgraphs(node):
            yield f"{label}/{attribute}", sub


def all_graphs(graph: GraphProto, path: str = "") -> Iterator[tuple[str, GraphProto]]:
    """Yield ``(path, graph)`` for ``graph`` and, depth first, every nested subgraph."""
    yield path, graph
    for label, sub in subgraphs(graph):
        yield from all_graphs(sub, f"{path}/{label}" if path else label)


def graphs_by_owner(graph: GraphProto, key: GraphKey = ()) -> Iterator[tuple[GraphKey, GraphProto]]:
    """``(key, graph)`` for ``graph`` and every nested subgraph; a key names each owner
    node by its first output (unique in a model) and the attribute (what edits and shape
    inference key a graph by: it survives renaming nodes)."""
    yield key, graph
    for node in graph.node:
        for label, sub in node_subgraphs(node):
            yield from graphs_by_owner(sub, (*key, owner_key(node), label))


def owner_key(node: NodeProto) -> str:
    """How a :data:`GraphKey` names the node that holds a subgraph: its first output, else its name."""
    return node.output[0] if node.output else node.name


def all_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto stored in the model: initializers, sparse initializers and
    tensor-valued attributes (Constant nodes and others), in every graph."""
    for _, graph in all_graphs(model.graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == AttributeProto.TENSORS:
                    yield from attr.tensors
                elif attr.type == AttributeProto.SPARSE_TENSOR:
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
