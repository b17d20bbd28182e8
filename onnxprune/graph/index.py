"""A name index over a graph and its subgraphs, with ONNX's scoping rules.

A subgraph (If branch, Loop or Scan body) may read any tensor of the graphs that enclose
it by name. :class:`Scope` resolves a name to the scope that defines it and records every
reader of a tensor in the defining scope, so a weight stored in the main graph and read
inside an If branch is found with all its uses.

A scope's path (``node/attribute``, nested with ``/``) names its tensors in weight keys
(``path::name``), so paths are unique: node names need not be (the checker allows
duplicates), and a repeated path gets a ``#2``, ``#3`` ... suffix in graph order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import GraphProto, NodeProto, TensorProto, numpy_helper

from onnxprune.graph.walk import node_subgraphs, subgraphs
from onnxprune.ops import constant_array, constant_tensor


def node_label(node: NodeProto) -> str:
    """How a node is named in results and reports: its name, else ``OpType(first output)``."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else ''})"


@dataclass(frozen=True)
class Use:
    """Node ``node`` of scope ``scope`` reads the tensor at input ``index``."""

    node: NodeProto
    index: int
    scope: Scope


@dataclass(eq=False)
class Scope:
    graph: GraphProto
    path: str
    parent: Scope | None = None
    initializers: dict[str, TensorProto] = field(default_factory=dict)
    constants: dict[str, NodeProto] = field(default_factory=dict)
    producers: dict[str, NodeProto] = field(default_factory=dict)
    inputs: set[str] = field(default_factory=set)
    outputs: set[str] = field(default_factory=set)
    uses: dict[str, list[Use]] = field(default_factory=dict)
    children: list[Scope] = field(default_factory=list)
    #: The node that holds this subgraph and the attribute it is held in (None, "" for the main graph).
    owner: NodeProto | None = None
    attribute: str = ""

    @classmethod
    def build(cls, graph: GraphProto, path: str = "", parent: Scope | None = None) -> Scope:
        """Index ``graph`` and all its subgraphs; returns the root scope."""
        scope = cls(graph, path, parent)
        scope.initializers = {t.name: t for t in graph.initializer}
        scope.inputs = {i.name for i in graph.input}
        scope.outputs = {o.name for o in graph.output}
        for node in graph.node:
            for out in node.output:
                if out:
                    scope.producers[out] = node
            if constant_tensor(node) is not None:
                scope.constants[node.output[0]] = node
        taken: set[str] = set()
        owners = [(node, attribute) for node in graph.node for attribute, _ in node_subgraphs(node)]
        for (label, sub), (owner, attribute) in zip(subgraphs(graph), owners, strict=True):
            child = f"{path}/{label}" if path else label
            unique, count = child, 1
            while unique in taken:
                count += 1
                unique = f"{child}#{count}"
            taken.add(unique)
            child_scope = cls.build(sub, unique, scope)
            child_scope.owner, child_scope.attribute = owner, attribute
            scope.children.append(child_scope)
        if parent is None:
            scope._index_uses()
        return scope

    def all_scopes(self) -> list[Scope]:
        out = [self]
        for child in self.children:
            out.extend(child.all_scopes())
        return out

    def _index_uses(self) -> None:
        for scope in self.all_scopes():
            for node in scope.graph.node:
                for index, name in enumerate(node.input):
                    owner = scope.resolve(name) if name else None
                    if owner is not None:
                        owner.uses.setdefault(name, []).append(Use(node, index, scope))

    def defines(self, name: str) -> bool:
        return name in self.initializers or name in self.producers or name in self.inputs

    def resolve(self, name: str) -> Scope | None:
        """The scope that defines ``name`` as seen from this scope (None if nowhere)."""
        scope: Scope | None = self
        while scope is not None:
            if scope.defines(name):
                return scope
            scope = scope.parent
        return None

    def is_output(self, name: str) -> bool:
        """True if ``name`` leaves this scope or any enclosed scope as a graph output."""
        return any(name in s.outputs for s in self.all_scopes() if s.resolve(name) is self)

    def stored_tensor(self, name: str) -> TensorProto | None:
        """The initializer or Constant-node tensor called ``name`` in this scope."""
        if name in self.initializers:
            return self.initializers[name]
        node = self.constants.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value":
                    return attr.t
        return None

    def producer_op(self, name: str) -> str | None:
        owner = self.resolve(name)
        if owner is None:
            return None
        node = owner.producers.get(name)
        return node.op_type if node is not None else None

    def const_value(self, name: str) -> np.ndarray | None:
        """The value of a small constant (shapes, axes) visible from this scope."""
        owner = self.resolve(name)
        if owner is None:
            return None
        tensor = owner.stored_tensor(name)
        if tensor is not None:
            return numpy_helper.to_array(tensor)
        node = owner.producers.get(name)
        return constant_array(node) if node is not None else None
