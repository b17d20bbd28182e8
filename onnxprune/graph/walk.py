"""Walking every graph and every tensor of a model, subgraphs (If/Loop/Scan) included."""

from __future__ import annotations

from collections.abc import Iterator

from onnx import AttributeProto, GraphProto, ModelProto, TensorProto


def subgraphs(graph: GraphProto) -> Iterator[tuple[str, GraphProto]]:
    """Yield ``(node_name/attribute, subgraph)`` for the direct subgraphs of ``graph``."""
    for index, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{index}"
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield f"{label}/{attr.name}", attr.g
            elif attr.type == AttributeProto.GRAPHS:
                for i, g in enumerate(attr.graphs):
                    yield f"{label}/{attr.name}[{i}]", g


def all_graphs(graph: GraphProto, path: str = "") -> Iterator[tuple[str, GraphProto]]:
    """Yield ``(path, graph)`` for ``graph`` and, depth first, every nested subgraph."""
    yield path, graph
    for label, sub in subgraphs(graph):
        yield from all_graphs(sub, f"{path}/{label}" if path else label)


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
