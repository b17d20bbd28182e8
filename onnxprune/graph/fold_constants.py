"""Constant folding (main graph): nodes whose every input is a constant are replaced by
their values, within guards that keep the file from growing.

A node is folded when every input is a stored tensor (an initializer that is not also a
graph input, a Constant node) or the output of a folded node, its op is in the ONNX domain,
has no subgraph and is one the op table lets fold (:attr:`~onnxprune.ops.spec.OpSpec.foldable`:
not a random op, DequantizeLinear, Constant, or a sequence or optional op). A shape computation whose value the op table gives
from static shapes (:meth:`~onnxprune.ops.spec.OpSpec.shape_value`: ``Shape`` and ``Size``
of a tensor whose (selected) dims are all concrete, ``Gather``/``Slice`` of a ``Shape``
whose selected dims are concrete, the static part of a shape with a symbolic batch; the
arithmetic is in :mod:`onnxprune.ops.shape`) folds too; a dim that depends on a symbolic
input dim never folds.
Guards: a node whose output would be over :data:`GROWTH_LIMIT` bytes larger than its
inputs is kept (an Expand or Tile would grow the file), and so are ``DequantizeLinear``
and a widening ``Cast`` (the retyping op: :meth:`~onnxprune.ops.spec.OpSpec.output_type`)
of more than :data:`SMALL` elements (weights stored compressed on purpose). Output sizes come from shape inference before anything runs (a node whose output
shape is not known there is kept); the values from one onnxruntime run of the folded nodes
alone (if it fails, they are kept, with a note). A folded value read by a kept node becomes an
initializer (a Constant node if it is a graph output).

Shapes come from :func:`~onnxprune.graph.edit.inferred_shapes` (ONNX inference on a
data-free copy of the model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, helper

from onnxprune import runtime
from onnxprune.graph.edit import (
    ONNX_DOMAINS,
    InferredShapes,
    delete_nodes,
    inferred_shapes,
    is_external,
    node_subgraphs,
    overridable,
)
from onnxprune.graph.index import Scope, node_label
from onnxprune.graph.tensors import data_bytes, numel, read_array
from onnxprune.ops import lookup, registered, spec_of
from onnxprune.ops.spec import ShapeValueContext

log = logging.getLogger(__name__)

#: A folded node may output at most this many bytes more than its inputs.
GROWTH_LIMIT = 1 << 20
#: Constants of at most this many elements have their values read while planning (shape
#: arithmetic), and a widening Cast of at most this many elements may fold.
SMALL = 1024
#: The ONNX ops never folded, as the op table says (:attr:`~onnxprune.ops.spec.OpSpec.foldable`);
#: a view for readers of this name: folding asks ``spec_of(node).foldable``.
NEVER_FOLDED = frozenset(op for domain, op in registered() if domain == "" and not lookup(op).foldable)


def _constant_value(attr: AttributeProto) -> tuple[int, np.ndarray | None]:
    """The bytes of the value a Constant node writes (its attribute ``attr``), and the value
    when it is small."""
    if attr.type == AttributeProto.TENSOR:
        small = numel(attr.t) <= SMALL and not is_external(attr.t)
        return data_bytes(attr.t), read_array(attr.t) if small else None
    value = np.asarray(helper.get_attribute_value(attr))
    return value.nbytes, value if attr.name in ("value_int", "value_ints") else None


@dataclass
class _FoldPlan:
    """Nodes to fold: ``on_ort`` run in onnxruntime, ``by_shape`` computed from shapes."""

    on_ort: list[NodeProto] = field(default_factory=list)
    by_shape: list[NodeProto] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # constant value name -> bytes


def _foldable_op(node: NodeProto) -> bool:
    return spec_of(node).foldable and not any(node_subgraphs(node))


def _plan_folding(model: ModelProto, shapes: InferredShapes) -> _FoldPlan:
    graph, plan = model.graph, _FoldPlan()
    inputs_too = overridable(model, graph)
    small: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        if t.name not in inputs_too and not is_external(t):
            plan.sizes[t.name] = data_bytes(t)
            if numel(t) <= SMALL:
                small[t.name] = read_array(t)
    partial: dict[str, list[int | None]] = {}
    context = ShapeValueContext(shapes.dims, partial, small)
    for node in graph.node:
        if node.domain not in ONNX_DOMAINS or not node.output or not node.output[0]:
            continue
        out, spec = node.output[0], spec_of(node)
        attribute = spec.constant_attribute(node)
        if attribute is not None:  # a Constant: its value is stored
            plan.sizes[out], value = _constant_value(attribute)
            if value is not None:
                small[out] = value
            continue
        static = spec.shape_value(node, context)
        if static is not None:
            if any(d is None for d in static.dims):
                if static.tracked:
                    partial[out] = static.dims
                continue
            value = np.asarray(static.dims, dtype=np.int64)
            small[out] = plan.values[out] = value.reshape(()) if static.scalar else value
            plan.sizes[out] = value.nbytes
            plan.by_shape.append(node)
            continue
        inputs = list(dict.fromkeys(i for i in node.input if i))
        if not _foldable_op(node) or not inputs or any(i not in plan.sizes for i in inputs):
            continue
        outs = {o: _out_bytes(shapes, o) for o in node.output if o}
        if any(b is None for b in outs.values()):
            continue
        grows = sum(outs.values()) - sum(plan.sizes[i] for i in inputs)  # type: ignore[arg-type]
        if grows > GROWTH_LIMIT:
            log.info("not folding %s: it would add %d bytes of constants", node_label(node), grows)
            continue
        if spec.output_type(node) is not None and grows > 0 and _numel_of(shapes, out) > SMALL:
            continue  # a widening Cast of a weight: the model stores it compressed on purpose
        plan.on_ort.append(node)
        plan.sizes.update(outs)  # type: ignore[arg-type]
    return plan


def _numel_of(shapes: InferredShapes, name: str) -> int:
    dims = shapes.dims(name) or []
    return int(np.prod([d or 0 for d in dims], dtype=np.int64))


def _out_bytes(shapes: InferredShapes, name: str) -> int | None:
    dims = shapes.dims(name)
    if dims is None or any(d is None for d in dims):
        return None
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(shapes.types[name].tensor_type.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def _evaluate(model: ModelProto, plan: _FoldPlan, wanted: list[str], shapes: InferredShapes) -> dict[str, np.ndarray]:
    """Run the ``plan.on_ort`` nodes alone in onnxruntime, with the constants they read."""
    graph, nodes = model.graph, plan.on_ort
    needed = {i for n in nodes for i in n.input if i} - {o for n in nodes for o in n.output}
    sub = GraphProto(name="constant_folding")
    sub.node.extend(
        n for n in graph.node if spec_of(n).constant_attribute(n) is not None and n.output and n.output[0] in needed
    )
    sub.node.extend(nodes)
    sub.initializer.extend(t for t in graph.initializer if t.name in needed)
    sub.initializer.extend(onnx.numpy_helper.from_array(v, n) for n, v in plan.values.items() if n in needed)
    for name in wanted:
        sub.output.add(name=name).type.tensor_type.elem_type = shapes.types[name].tensor_type.elem_type
    folded = ModelProto(ir_version=model.ir_version, graph=sub)
    folded.opset_import.extend(model.opset_import)
    session = runtime.session(folded.SerializeToString(), optimize=False)
    return dict(zip(wanted, session.run(wanted, {}), strict=True))


def fold_constants(model: ModelProto, *, shapes: InferredShapes | None = None) -> tuple[int, tuple[str, ...]]:
    """Fold the constant nodes of ``model``'s main graph (in place, see the module docstring).

    ``shapes`` are the inferred shapes of ``model`` as it is now (inferred here if None).
    Returns the number of nodes folded and notes on what could not be done. Folded nodes
    whose values nobody reads are left as dead code for :func:`~onnxprune.graph.cleanup.cleanup`.
    """
    graph = model.graph
    notes: list[str] = []
    if shapes is None:
        shapes = inferred_shapes(model)
    plan = _plan_folding(model, shapes)
    if not plan.on_ort and not plan.by_shape:
        return 0, ()
    root = Scope.build(graph)
    outputs = {o.name for o in graph.output}

    def read_outside(nodes: list[NodeProto]) -> list[str]:
        """Outputs of ``nodes`` read by another node (any graph) or leaving the graph."""
        ids = {id(n) for n in nodes}
        names = [o for n in nodes for o in n.output if o]
        return [o for o in names if o in outputs or any(id(u.node) not in ids for u in root.uses.get(o, []))]

    folded = [*plan.by_shape, *plan.on_ort]
    values = dict(plan.values)
    wanted = read_outside(plan.on_ort)
    if wanted:
        try:
            values.update(_evaluate(model, plan, wanted, shapes))
        except Exception as exc:  # onnxruntime raises its own types for a graph it rejects
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            notes.append(f"constant folding skipped: onnxruntime could not evaluate the constant nodes ({detail})")
            folded = plan.by_shape
    kept = read_outside(folded)
    # Folded nodes are those a kept value depends on; the others are left as dead code.
    producers = {o: n for n in folded for o in n.output if o}
    useful: dict[int, NodeProto] = {}
    stack = list(kept)
    while stack:
        node = producers.get(stack.pop())
        if node is not None and id(node) not in useful:
            useful[id(node)] = node
            stack.extend(i for i in node.input if i)
    for name in kept:
        tensor = onnx.numpy_helper.from_array(np.asarray(values[name]), name)
        if name in outputs:  # a graph output stays produced by a node
            const = graph.node.add(op_type="Constant", name=f"{name}_folded", output=[name])
            const.attribute.add(name="value", type=AttributeProto.TENSOR, t=tensor)
        else:
            graph.initializer.append(tensor)
    delete_nodes(graph, list(useful.values()))
    return len(useful), tuple(notes)
