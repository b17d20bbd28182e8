"""Cleanup after a structural edit: BatchNormalization and constant folding, dead nodes and
unused tensors, a stable topological sort and fresh shapes, in that order (:func:`cleanup`).

The folds live in their own modules, with their maths: :mod:`~onnxprune.graph.fold_bn`
(BatchNormalization into its producer) and :mod:`~onnxprune.graph.fold_constants`
(constant nodes into their values). Their public names are importable from here too.

**Dead nodes and unused tensors.** A node is live when one of its outputs reaches a graph
output, directly or through live nodes; a name read inside a live If/Loop/Scan body counts
as read. Dead nodes are dropped in every graph (Constant nodes included; they count as
nodes), then initializers nobody reads, with their graph-input entry (IR < 4 style).
Inputs without an initializer are never dropped.

**Order and shapes.** Nodes are sorted topologically (Kahn's algorithm taking the lowest
original index first, so a valid order is kept as it is). Shapes are inferred with ONNX
shape inference (``data_prop``) on a data-free copy of the model whose declared output and
intermediate shapes are cleared; ``value_info`` is replaced by the result, and a graph
output's declared dim is updated only where it was concrete and inference gives another
concrete value (symbolic dims are kept). Shape inference runs once, shared by the folds
and the refresh, and again only if constants were folded.

**Which steps run on a gs.Graph.** The BatchNormalization and per-channel affine folds are
edits on a gs graph (:class:`~onnxprune.graph.gs_edit.EditGraph`; with ``edits``, the very
graph the structural pass removed channels on, written back once after the BN folds). The
constant folding (onnxruntime evaluates the foldable nodes of the protos), the sort, the
dead-code step and the shape refresh stay on the protos.

**Why the dead-code step stays on onnx protos, not a gs.Graph (measured).** :func:`_prune_gs` does the
dead-code step with ``gs.Graph.cleanup()`` through :mod:`~onnxprune.graph.gs_adapter`, and
gives byte-identical models and equal results on every fixture, every model of
tests/test_cleanup.py and every cleanup call of the structural tests (165 calls). It is not
the default (``_DEAD_CODE_ON_GS``) because it costs more time at no memory gain:
``tools/bench_gs.py`` on the 100 M-parameter model (384 MiB, 5 interleaved repeats, medians,
2 cores) gives the dead-code step 1.2 ms on protos vs 10.8-10.9 ms on gs (about 9x in two
runs: to_gs 7.2 ms, gs cleanup 1.6 ms, from_gs 1.9 ms) and the whole :func:`cleanup` 25.3 vs
32.9 ms in one run, 34.6 vs 33.9 ms in the other (1.30x and 0.98x: noise of a 30 ms call),
always at the same peak RSS (836 MiB: nothing is copied). The import is what costs: once the
structural pass holds a gs.Graph anyway, the step is 1.6 ms against 1.2. ``gs.Graph.toposort()``
cannot replace :func:`toposort` at all: it orders by depth, so it reorders graphs already in
a valid order (13 of 16 nodes of lstm_mnist1d, 140 of 148 of transformer_mnist1d), and it
raises on a cycle where this keeps the order with a note.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from onnxprune.graph import fold_constants as constant_folding
from onnxprune.graph.edit import (
    InferredShapes,
    defined_names,
    delete_nodes,
    graphs_by_owner,
    inferred_shapes,
    node_subgraphs,
    outer_refs,
)
from onnxprune.graph.fold_bn import PRODUCERS, fold_affine, fold_batchnorm
from onnxprune.graph.fold_constants import GROWTH_LIMIT, NEVER_FOLDED, SMALL
from onnxprune.graph.gs_adapter import from_gs, to_gs
from onnxprune.graph.gs_edit import EditGraph
from onnxprune.graph.skeleton import without_shape

__all__ = [
    "GROWTH_LIMIT",
    "NEVER_FOLDED",
    "PRODUCERS",
    "SMALL",
    "CleanupResult",
    "cleanup",
    "fold_batchnorm",
    "toposort",
]

log = logging.getLogger(__name__)

#: Dead nodes and unused initializers removed on a gs.Graph (True) or on the protos (False,
#: the default: see "Why this stays on onnx protos" in the module docstring).
_DEAD_CODE_ON_GS = False


@dataclass(frozen=True)
class CleanupResult:
    """What :func:`cleanup` changed."""

    bn_folded: tuple[str, ...]  # BN node names folded into their producer
    bn_kept: tuple[tuple[str, str], ...]  # (BN node, why it could not be folded)
    constants_folded: int  # nodes replaced by constants
    nodes_removed: int  # dead nodes dropped (unread Constant nodes included)
    initializers_removed: int  # unused initializers dropped
    notes: tuple[str, ...] = ()
    affine_folded: tuple[str, ...] = ()  # per-channel Mul/Add/Sub/Div folded into their producer


# ---------------------------------------------------------------------------------------
# Order, dead code, shapes


def toposort(graph: onnx.GraphProto) -> bool:
    """Sort ``graph``'s nodes (not its subgraphs) topologically, keeping the original order
    where it is valid. Returns False, leaving the order as it is, if the graph has a cycle."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waits = [0] * len(nodes)
    readers: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        reads = {x for x in node.input if x}
        for _, sub in node_subgraphs(node):
            reads |= outer_refs(sub)
        for before in {producer[x] for x in reads if x in producer} - {i}:
            waits[i] += 1
            readers[before].append(i)
    ready = [i for i, w in enumerate(waits) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in readers[i]:
            waits[j] -= 1
            if waits[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):
        return False
    if order != sorted(order):
        position = {id(nodes[i]): rank for rank, i in enumerate(order)}
        graph.node.sort(key=lambda n: position[id(n)])
    return True


@dataclass
class _Removed:
    nodes: int = 0
    initializers: int = 0


def _prune(graph: onnx.GraphProto, removed: _Removed, *, main: bool) -> set[str]:
    """Drop dead nodes and unread initializers of ``graph`` and its subgraphs; return the
    names it reads from enclosing graphs."""
    producer = {o: n for n in graph.node for o in n.output if o}
    live_names = {o.name for o in graph.output}
    live: dict[int, onnx.NodeProto] = {}
    for node in graph.node:
        if not any(node.output):  # no outputs: kept as it is
            live[id(node)] = node
            live_names.update(i for i in node.input if i)
    stack = list(live_names)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in live:
            continue
        live[id(node)] = node
        reads = {i for i in node.input if i}
        for _, sub in node_subgraphs(node):
            reads |= _prune(sub, removed, main=False)
        stack.extend(reads - live_names)
        live_names |= reads
    dead = [n for n in graph.node if id(n) not in live]
    removed.nodes += len(dead)
    delete_nodes(graph, dead)
    inputs = {i.name for i in graph.input}
    unread = [i for i, t in enumerate(graph.initializer) if t.name not in live_names and (main or t.name not in inputs)]
    dropped = {graph.initializer[i].name for i in unread}
    for i in reversed(unread):
        del graph.initializer[i]
    for i in reversed([i for i, s in enumerate(graph.sparse_initializer) if s.values.name not in live_names]):
        dropped.add(graph.sparse_initializer[i].values.name)
        del graph.sparse_initializer[i]
    removed.initializers += len(dropped)
    if main:
        for i in reversed([i for i, v in enumerate(graph.input) if v.name in dropped]):
            del graph.input[i]
    return live_names - defined_names(graph)


def _prune_gs(model: onnx.ModelProto, removed: _Removed) -> None:
    """:func:`_prune` on a gs.Graph: ``gs.Graph.cleanup()`` on every graph (functions left
    alone), written back in place by :func:`~onnxprune.graph.gs_adapter.from_gs`. gs's
    cleanup drops nodes without outputs and does not count a subgraph output naming an
    outer value as a read of it; both are held here for the call (a temporary output, a
    temporary Identity) so the result is the old one."""
    before = {
        key: (len(g.node), len(g.initializer) + len(g.sparse_initializer)) for key, g in graphs_by_owner(model.graph)
    }
    graph = to_gs(model)
    held = _hold(graph, {})
    graph.cleanup(
        remove_unused_node_outputs=False,
        recurse_subgraphs=True,
        remove_unused_graph_inputs=False,
        recurse_functions=False,
    )
    for release in held:
        release()
    from_gs(graph, like=model, drop_unread=True)
    for key, g in graphs_by_owner(model.graph):
        nodes, initializers = before[key]
        removed.nodes += nodes - len(g.node)
        removed.initializers += initializers - len(g.initializer) - len(g.sparse_initializer)


def _hold(graph: gs.Graph, scope: dict[str, gs.Tensor]) -> list[Callable[[], None]]:
    """Make gs's cleanup keep what :func:`_prune` keeps in ``graph`` and its subgraphs
    (``scope``: the tensors of the enclosing graphs by name); returns the undos."""
    local = {t.name for n in graph.nodes for t in n.outputs} | {t.name for t in graph.inputs}
    local |= {t.name for n in graph.nodes for t in n.inputs if isinstance(t, gs.Constant)}
    extra = [
        (n, gs.Variable(f"__onnxprune_hold_{i}"))
        for i, n in enumerate(graph.nodes)
        if not any(t.name for t in n.outputs)
    ]
    # gs reads a subgraph output naming an outer value as a tensor of its own: read the outer one
    passed = [scope.get(t.name, t) for t in graph.outputs if t.name not in local]
    identities = [
        gs.Node("Identity", inputs=[t], outputs=[gs.Variable(f"__onnxprune_pass_{i}")]) for i, t in enumerate(passed)
    ]
    for node, tensor in extra:
        node.outputs.append(tensor)
    graph.nodes.extend(identities)
    added = [t for _, t in extra] + [n.outputs[0] for n in identities]
    graph.outputs.extend(added)

    def release() -> None:
        del graph.outputs[len(graph.outputs) - len(added) :]
        for node, tensor in extra:
            node.outputs.remove(tensor)
        for node in identities:
            node.inputs.clear()
            node.outputs.clear()
            graph.nodes.remove(node)

    inner = {**scope, **{t.name: t for n in graph.nodes for t in n.outputs if t.name}}
    inner.update((t.name, t) for t in graph.inputs)
    undo = [release]
    for node in graph.nodes:
        for sub in node.subgraphs():
            undo += _hold(sub, inner)
    return undo


def _refresh_value_info(model: onnx.ModelProto, shapes: InferredShapes | None) -> None:
    """Replace every graph's value_info by the inferred one (``shapes`` None: only drop
    entries of values that are gone); values inference left out keep their type only."""
    for key, graph in graphs_by_owner(model.graph):
        inner = {o for n in graph.node for o in n.output if o} - {o.name for o in graph.output}
        old = [v for v in graph.value_info if v.name in inner]
        if shapes is None:
            fresh = old
        else:
            fresh = [v for v in shapes.value_info.get(key, []) if v.name in inner]
            done = {v.name for v in fresh}
            fresh += [without_shape(v) for v in old if v.name not in done]
        del graph.value_info[:]
        graph.value_info.extend(fresh)


def _refresh_outputs(model: onnx.ModelProto, shapes: InferredShapes) -> list[str]:
    """Update concrete output dims that inference now gives as other concrete values."""
    changed: list[str] = []
    for output in model.graph.output:
        new = shapes.dims(output.name) if output.name in shapes.types else None
        tensor_type = output.type.tensor_type
        if new is None or not tensor_type.HasField("shape") or len(tensor_type.shape.dim) != len(new):
            continue
        for dim, value in zip(tensor_type.shape.dim, new, strict=True):
            if dim.HasField("dim_value") and value is not None and dim.dim_value != value:
                changed.append(f"{output.name}: {dim.dim_value} -> {value}")
                dim.dim_value = value
    return changed


def cleanup(
    model: onnx.ModelProto,
    *,
    fold_bn: bool = True,
    fold_constants: bool = True,
    refresh_shapes: bool = True,
    edits: EditGraph | None = None,
) -> CleanupResult:
    """Fold BatchNormalization and constants, drop dead nodes and unused initializers, sort
    the graph and refresh its shapes, editing ``model`` in place (see the module docstring).

    ``edits``: the gs graph an editing pass still holds on ``model`` (not committed): the
    BatchNormalization folds are made on it too, then it is written back once, so the model
    is read into gs once for the pass and its folds.

    Everything else of the model (ir_version, opsets, functions, metadata, doc strings,
    external-data references of untouched tensors, graph input and output names) is kept.
    """
    cache: list[InferredShapes] = []

    def shapes() -> InferredShapes:
        if not cache:
            cache.append(inferred_shapes(model))
        return cache[0]

    bn_folded: list[str] = []
    bn_kept: list[tuple[str, str]] = []
    if edits is not None:
        if fold_bn:  # ranks (all a fold asks) are those of the model before the held edits
            bn_folded, bn_kept = fold_batchnorm(edits, rank=lambda name: shapes().rank(name))
        edits.commit()
        cache.clear()  # inferred on the model before the edits: not the shapes to refresh
    notes: list[str] = []
    for key, graph in graphs_by_owner(model.graph):
        if not toposort(graph):
            notes.append(f"graph {'/'.join(key) or 'main'} has a cycle: its node order is kept")
    if fold_bn and edits is None:
        bn_folded, bn_kept = fold_batchnorm(model, rank=lambda name: shapes().rank(name))
    constants = 0
    if fold_constants:
        constants, constant_notes = constant_folding.fold_constants(model, shapes=shapes())
        notes.extend(constant_notes)
    if constants:
        cache.clear()
    affine: list[str] = []
    if fold_bn:  # after constant folding, which turns Reshape(constant) scales into stored ones
        affine = fold_affine(model, rank=lambda name: shapes().rank(name))
        if affine:
            cache.clear()
    removed = _Removed()
    if _DEAD_CODE_ON_GS:
        _prune_gs(model, removed)
    else:
        _prune(model.graph, removed, main=True)
    if refresh_shapes:
        fresh = shapes()
        if fresh.error is not None:
            notes.append(f"shape inference failed ({fresh.error}): value_info is left without shapes")
        changed = _refresh_outputs(model, fresh)
        if changed:
            notes.append(f"graph output dims updated: {'; '.join(changed)}")
        _refresh_value_info(model, fresh)
    else:
        _refresh_value_info(model, None)
    log.info(
        "cleanup: %d BN and %d affine ops folded, %d BN kept, %d nodes folded to constants, "
        "%d dead nodes and %d initializers removed",
        len(bn_folded),
        len(affine),
        len(bn_kept),
        constants,
        removed.nodes,
        removed.initializers,
    )
    return CleanupResult(
        affine_folded=tuple(affine),
        bn_folded=tuple(bn_folded),
        bn_kept=tuple(bn_kept),
        constants_folded=constants,
        nodes_removed=removed.nodes,
        initializers_removed=removed.initializers,
        notes=tuple(notes),
    )
