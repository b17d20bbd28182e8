"""Which calibrated layers each value depends on, in the main graph and every If / Loop / Scan body.

Sequential calibration (:func:`onnxprune.passes.calibrated.waves`) captures a layer's input only
once every layer it depends on is pruned. :class:`Upstream` gives, for a value as a node reads
it, the set ``U(v)`` of those layers, walking each graph in its (topological) node order:

    U(out of n) = ⋃_{i ∈ inputs(n)} U(i) ∪ layers(n) ∪ ⋃_{values v of n's bodies} U(v)

so a control-flow node's outputs depend on every layer in its bodies. Inside a body, every
value also depends on what its owner node's inputs depend on (which branch runs, how many
iterations, the initial states): ``U_body(v) ⊇ B = ⋃_{i ∈ inputs(owner)} U(i)``, and the body's
own inputs (a Loop's iteration count and carried states, a Scan's states and slices) depend on
``B`` alone. The back edge of a loop (iteration ``t + 1`` reads what iteration ``t`` computed)
is left out: the layers of a body come in the order of its first iteration, a layer later in
the body after the layers before it, as in an unrolled network. Names are looked up from the
node's own graph outwards, so two branches may reuse a name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from onnx import GraphProto, NodeProto

from onnxprune.graph.walk import node_subgraphs

_NONE: frozenset[int] = frozenset()


class _Table:
    """The values one graph defines and the layers each depends on; names not found here are
    looked up in the enclosing graph's table."""

    def __init__(self, parent: _Table | None) -> None:
        self.parent = parent
        self.values: dict[str, frozenset[int]] = {}

    def get(self, name: str) -> frozenset[int]:
        table: _Table | None = self
        while table is not None:
            if name in table.values:
                return table.values[name]
            table = table.parent
        return _NONE  # a graph input or a stored tensor


class Upstream:
    """The layers each value depends on (see the module docstring). ``layers_of`` maps ``id()``
    of a node that holds layers (a live NodeProto of ``graph`` or of one of its subgraphs) to
    their indices."""

    def __init__(self, graph: GraphProto, layers_of: Mapping[int, Iterable[int]]) -> None:
        self._layers_of = {key: frozenset(value) for key, value in layers_of.items()}
        self._table_of: dict[int, _Table] = {}  # layer nodes only: their ids are those of live objects
        self._walk(graph, _Table(None), _NONE)

    def of(self, node: NodeProto, name: str) -> frozenset[int]:
        """``U(name)`` as ``node`` (one that holds layers) reads it."""
        table = self._table_of.get(id(node))
        return table.get(name) if table is not None else _NONE

    def _walk(self, graph: GraphProto, table: _Table, base: frozenset[int]) -> frozenset[int]:
        """Record ``U`` of every value ``graph`` defines; returns the union of them (everything
        the graph's values depend on, its layers included)."""
        everything = set(base)
        for node in graph.node:
            if id(node) in self._layers_of:
                self._table_of[id(node)] = table
            deps = set(base)
            for name in node.input:
                if name:
                    deps |= table.get(name)
            owner_deps = frozenset(deps)
            for _, body in node_subgraphs(node):
                inner = _Table(table)
                for value in body.input:
                    inner.values[value.name] = owner_deps
                deps |= self._walk(body, inner, owner_deps)
            out = frozenset(deps | self._layers_of.get(id(node), _NONE))
            for name in node.output:
                if name:
                    table.values[name] = out
            everything |= out
        return frozenset(everything)
