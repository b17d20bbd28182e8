"""The structural pass's edits, made on one onnx-graphsurgeon graph.

:class:`EditGraph` reads a model into a ``gs.Graph`` once (:func:`~onnxprune.graph.gs_adapter.to_gs`:
weights stay in their protos as gs ``LazyValues``, nothing is copied), takes every edit the
structural and dead-channel passes make, and writes the graph back into the same model once
(:meth:`EditGraph.commit`, :func:`~onnxprune.graph.gs_adapter.from_gs`: only what changed is
rewritten, so doc strings, metadata and untouched weights stay byte for byte). gs keeps each
tensor's producer and readers current as inputs and outputs are reassigned, so no side
index goes stale.

**Addressing.** The channel analysis names a reader as ``(node index, input index)`` in the
main graph's node order; :attr:`EditGraph.nodes` keeps that order fixed, and a node the
edits add takes the next index (while in the graph it is placed right after the node it
follows, so the graph stays sorted). A stored tensor is named as the analysis saw it: an
initializer (a ``gs.Constant``) or the output of a ``Constant`` node (its ``value``).

**What an edit does to values.** :meth:`values` reads a lazy weight from its proto without
loading it into gs (an unchanged weight is written back as the same proto); :meth:`set_values`
gives the gs tensor new values, which :func:`~onnxprune.graph.gs_adapter.from_gs` writes in
place of the old initializer (or Constant attribute). :meth:`own` gives a set of readers a
private copy of a stored tensor that others (or a graph output) also read, so an edit for
those readers leaves the others' values as they were.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto, NodeProto
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues

from onnxprune.graph import tensors
from onnxprune.graph.edit import FreshNames, is_external, overridable
from onnxprune.graph.gs_adapter import from_gs, keep_initializers, source_of, to_gs
from onnxprune.ops import constant_tensor, spec_of

__all__ = ["EditGraph"]

Reader = tuple[int, int]


class EditGraph:
    """A model's main graph (subgraphs included) as a gs.Graph open for edits; see the module docstring."""

    def __init__(self, model: ModelProto) -> None:
        self.model = model
        self.graph = to_gs(model)
        self.nodes: list[gs.Node] = list(self.graph.nodes)
        self._index = {id(node): i for i, node in enumerate(self.nodes)}
        self._graphs = [self.graph, *self.graph.subgraphs(recursive=True)]
        self._home = {id(node): id(g) for g in self._graphs for node in g.nodes}  # node -> its graph
        self._tensors: dict[str, gs.Tensor] = {}
        for graph in self._graphs:
            for name, tensor in graph.tensors().items():
                self._tensors.setdefault(name, tensor)
        self._fresh = FreshNames(model)
        self._touched: set[int] = set()  # nodes whose attributes or op an edit changed
        self.overridable = overridable(model, model.graph)
        self.changed = False

    @property
    def graphs(self) -> list[gs.Graph]:
        """The main graph, then every subgraph (any depth)."""
        return list(self._graphs)

    # -- reading -----------------------------------------------------------------------
    def node(self, index: int) -> gs.Node:
        return self.nodes[index]

    def index_of(self, node: gs.Node) -> int:
        """The node's index in the analysis's order (-1 for a node of a subgraph)."""
        return self._index.get(id(node), -1)

    @staticmethod
    def source(node: gs.Node) -> NodeProto | None:
        """The proto ``node`` was read from (None for a node the edits added)."""
        return source_of(node)

    def proto(self, node: gs.Node) -> NodeProto:
        """``node`` as a NodeProto as it is now, for the op table's questions: the proto it
        was read from while the edits have left its op, attributes and tensor names as they
        were, else a fresh export of the node."""
        source = source_of(node)
        if (
            source is not None
            and id(node) not in self._touched  # an edit that changes an op or attribute touches the node
            and list(source.input) == [t.name for t in node.inputs]
            and list(source.output) == [t.name for t in node.outputs]
        ):
            return source
        return OnnxExporter.export_node(node)

    def touch(self, node: gs.Node) -> None:
        """Note that an edit changed ``node``'s op or attributes."""
        self._touched.add(id(node))
        self.changed = True

    @staticmethod
    def label(node: gs.Node) -> str:
        """How a node is named in results (as :func:`~onnxprune.graph.index.node_label`)."""
        return node.name or f"{node.op}({node.outputs[0].name if node.outputs else ''})"

    def producer(self, tensor: gs.Tensor, graph: gs.Graph | None = None) -> gs.Node | None:
        """The node that computes ``tensor`` (None for an input or a constant); with ``graph``,
        only a node of that graph counts."""
        if len(tensor.inputs) != 1:
            return None
        node = tensor.inputs[0]
        if graph is not None and self._home.get(id(node)) != id(graph):
            return None
        return node

    def is_external(self, name: str) -> bool:
        """True if stored tensor ``name`` keeps its data outside the model, not loaded."""
        constant = self.constant(name)
        return (
            constant is not None and isinstance(constant._values, LazyValues) and is_external(constant._values.tensor)
        )

    def tensor(self, name: str) -> gs.Tensor | None:
        return self._tensors.get(name)

    def constant(self, name: str) -> gs.Constant | None:
        """The stored tensor called ``name``: an initializer, or a ``Constant`` node's value."""
        tensor = self._tensors.get(name)
        if isinstance(tensor, gs.Constant):
            return tensor
        producer = tensor.inputs[0] if tensor is not None and len(tensor.inputs) == 1 else None
        proto = source_of(producer) if producer is not None else None
        if proto is not None and constant_tensor(proto) is not None:  # the op table's Constant
            value = producer.attrs.get("value")
            if isinstance(value, gs.Constant):
                return value
        return None

    def values(self, name: str) -> np.ndarray:
        """The values of stored tensor ``name``, read from its proto while gs has not loaded it."""
        constant = self.constant(name)
        if constant is None:
            raise KeyError(f"'{name}' is not a stored tensor")
        if isinstance(constant._values, LazyValues):
            return tensors.read_array(constant._values.tensor)
        return np.asarray(constant.values)

    def _reading(self, name: str) -> list[tuple[gs.Node, int]]:
        tensor = self._tensors.get(name)
        if tensor is None:
            return []
        nodes = {id(node): node for node in tensor.outputs}.values()
        return [(node, j) for node in nodes for j, read in enumerate(node.inputs) if read is tensor]

    def readers(self, name: str) -> set[Reader]:
        """``(node index, input index)`` of every input that reads tensor ``name`` (a reader
        inside a subgraph counts with node index -1)."""
        return {(self.index_of(node), j) for node, j in self._reading(name)}

    def uses(self, name: str) -> int:
        """How many node inputs read tensor ``name``, in any graph."""
        return len(self._reading(name))

    def stored(self, index: int, slot: int) -> tuple[str, Reader] | None:
        """The stored tensor behind input ``slot`` of node ``index`` (through Identity/Cast
        read by this node alone, as the op table says), with the ``(node, input)`` that
        reads it; None if it is computed. The graph as edited so far is what is read."""
        node = self.nodes[index]
        name = node.inputs[slot].name if slot < len(node.inputs) else ""
        reader = (index, slot)
        for _ in range(8):
            if not name:
                return None
            if self.constant(name) is not None:
                return name, reader
            tensor = self._tensors[name]
            producer = tensor.inputs[0] if len(tensor.inputs) == 1 else None
            proto = source_of(producer) if producer is not None else None
            if proto is None or not spec_of(proto).carries_stored(proto) or self.uses(name) != 1:
                return None
            name, reader = producer.inputs[0].name, (self.index_of(producer), 0)
        return None

    def dtype(self, name: str) -> np.dtype | None:
        """The element type of stored tensor ``name`` if it is a float (None otherwise)."""
        constant = self.constant(name)
        if constant is None:
            return None
        if isinstance(constant._values, LazyValues):
            proto = constant._values.tensor
            return tensors.read_array(proto).dtype if tensors.is_float(proto) else None
        dtype = np.asarray(constant.values).dtype
        return dtype if dtype.kind == "f" or dtype.name == "bfloat16" else None

    def is_output(self, name: str) -> bool:
        """True if ``name`` is an output of the main graph or of any subgraph."""
        return any(t.name == name for graph in self._graphs for t in graph.outputs)

    # -- editing -----------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A name no graph of the model uses yet."""
        return self._fresh(base)

    def set_values(self, name: str, values: np.ndarray) -> None:
        """Give stored tensor ``name`` new values (shape and all)."""
        constant = self.constant(name)
        if constant is None:
            raise KeyError(f"'{name}' is not a stored tensor")
        constant.values = np.ascontiguousarray(values)
        self.changed = True

    def add_constant(self, base: str, values: np.ndarray) -> gs.Constant:
        """A new initializer under a fresh name derived from ``base``; read by nobody yet."""
        constant = gs.Constant(self.fresh(base), np.ascontiguousarray(values))
        self._tensors[constant.name] = constant
        return constant

    def set_input(self, index: int | gs.Node, slot: int, tensor: gs.Tensor) -> None:
        """Node ``index`` (or the node given) reads ``tensor`` at input ``slot`` (missing
        optional inputs before it stay empty)."""
        inputs = (self.nodes[index] if isinstance(index, int) else index).inputs
        while len(inputs) < slot:
            inputs.append(gs.Variable.empty())
        if slot == len(inputs):
            inputs.append(tensor)
        else:
            inputs[slot] = tensor
        self.changed = True

    def drop_input(self, index: int, slot: int) -> None:
        """Node ``index`` leaves its optional input ``slot`` out (an empty name), as if never given."""
        inputs = self.nodes[index].inputs
        if slot < len(inputs):
            inputs[slot] = gs.Variable.empty()
            self.changed = True

    def own_at(self, node: gs.Node, slot: int) -> str:
        """The stored tensor ``node`` reads at ``slot``, made its own first (a copy) if
        another input or a graph output reads it too; returns its name."""
        tensor = node.inputs[slot]
        if self.uses(tensor.name) <= 1 and not self.is_output(tensor.name):
            return tensor.name
        clone = self.add_constant(tensor.name, np.array(self.values(tensor.name), copy=True))
        node.inputs[slot] = clone
        self.changed = True
        return clone.name

    def own(self, name: str, readers: Iterable[Reader]) -> str:
        """A stored tensor that only ``readers`` read: ``name`` itself if nothing else reads
        it and it is no graph output, else a copy those readers are switched to."""
        readers = set(readers)
        if self.readers(name) <= readers and not self.is_output(name):
            return name
        clone = self.add_constant(f"{name}.onnxprune_1", np.array(self.values(name), copy=True))
        for node_index, input_index in readers:
            self.nodes[node_index].inputs[input_index] = clone
        self.changed = True
        return clone.name

    def add_after(self, index: int, op: str, inputs: list[gs.Tensor], outputs: list[gs.Tensor], name: str) -> int:
        """A new node right after node ``index`` in the graph; returns its index."""
        node = gs.Node(op, name=name, inputs=inputs, outputs=outputs)
        before = self.nodes[index]
        position = next(i for i, n in enumerate(self.graph.nodes) if n is before)
        self.graph.nodes.insert(position + 1, node)
        self.nodes.append(node)
        self._index[id(node)] = len(self.nodes) - 1
        self._home[id(node)] = id(self.graph)
        for tensor in (*inputs, *outputs):
            self._tensors.setdefault(tensor.name, tensor)
        self.changed = True
        return len(self.nodes) - 1

    def take_output(self, index: int, base: str) -> gs.Variable:
        """Give node ``index``'s first output a fresh name derived from ``base``, returning
        the new tensor; the old tensor (same name, same readers) is left without a producer
        for a new node to produce."""
        node = self.nodes[index]
        old = node.outputs[0]
        new = gs.Variable(self.fresh(base), dtype=old.dtype, shape=old.shape)
        node.outputs[0] = new
        self._tensors[new.name] = new
        self.changed = True
        return new

    def set_attribute(self, index: int, name: str, value: int, position: int | None = None) -> None:
        """Set attribute ``name`` of node ``index`` (element ``position`` of a list attribute)."""
        attrs = self.nodes[index].attrs
        if position is None:
            attrs[name] = value
        else:
            if name not in attrs:  # pragma: no cover - the analysis only records list edits of existing attributes
                raise ValueError(f"attribute {name} missing on {self.nodes[index].name}")
            values = list(attrs[name])
            values[position] = value
            attrs[name] = values
        self.changed = True

    def remove(self, node: gs.Node, graph: gs.Graph) -> None:
        """Take ``node`` out of ``graph``, unlinking its inputs and outputs."""
        node.inputs.clear()
        node.outputs.clear()
        del graph.nodes[next(i for i, n in enumerate(graph.nodes) if n is node)]  # gs nodes compare by value
        self._home.pop(id(node), None)
        self.changed = True

    def commit(self) -> ModelProto:
        """Write the edits back into the model (in place) and return it. Initializers the
        edits left unread stay (as an edit on the protos leaves them): cleanup drops them."""
        if self.changed:
            keep_initializers(self.graph)
            from_gs(self.graph, self.model)
            self.changed = False
        return self.model
