"""Channel dependency analysis: which channels of an ONNX graph must be removed together.

The main graph is walked once in topological order. Each node's op spec is asked for its
channel rules (:meth:`onnxprune.ops.OpSpec.channel_rule` and ``channel_source``; the rules
and their language are in :mod:`onnxprune.ops`, see :mod:`onnxprune.ops.channels`). A node
with a stored weight whose output channels can be removed (Conv, ConvTranspose, Gemm,
MatMul, recurrent hidden units) starts a new group on its output's channel axis. A node
whose inputs carry groups gets their :class:`~onnxprune.structure.groups.Layout` and
applies its rule: carry the channels through (activations, BN, pooling, Transpose, Reshape …), join groups
(residual Add, batched attention MatMul), concatenate or split them, or consume them
(the next Conv's input channels). A tensor that carries channels and reaches anything
the rules do not understand (a graph output, a subgraph, an unknown op, a normalization
over the channel axis) blocks its groups, with the reason.

Shapes are static: shape inference on a data-free copy of the model with every dynamic
input dimension fixed (batch 1, others from ``input_shapes`` or a default), then one
onnxruntime run for values inference could not size. Beside them, *symbolic* dims: shape
inference once more with the inputs' dynamic dims left as declared, so a rule can tell a
static dim (an int) from a dynamic one (a name: the input's ``dim_param`` as it travels, or
the name inference gives an unknown dim, equal wherever inference knows the dims are equal),
and never mistakes a batch of 1 for a static size (:meth:`Context.dims`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import ModelProto, NodeProto

from onnxprune import runtime
from onnxprune.compute import graph_shapes, runtime_shapes, symbolic_dims
from onnxprune.graph import tensors
from onnxprune.graph.index import Scope, Use, node_label
from onnxprune.graph.skeleton import data_free_model
from onnxprune.ops import spec_of
from onnxprune.ops.spec import attr
from onnxprune.structure.groups import Edit, Group, GroupSet, Layout, Member, Segment, same_structure

log = logging.getLogger(__name__)

Dims = tuple[int, ...]
SymbolicDims = tuple[int | str | None, ...]


@dataclass
class Analysis:
    """The groups of one model, with the shapes they were found with."""

    groups: list[Group]
    shapes: dict[str, Dims]
    input_shapes: dict[str, Dims]
    context: Context
    notes: list[str] = field(default_factory=list)

    @property
    def layouts(self) -> dict[str, Layout]:
        """The channel layout of every tensor that carries a group."""
        return self.context.layouts

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if not g.blocked and g.n > 1 and any(m.kind == "in" for m in g.members)]

    @property
    def blocked(self) -> list[Group]:
        return [g for g in self.groups if g.blocked]


def input_shapes_for(model: ModelProto, given: Mapping[str, Dims] | None = None) -> dict[str, Dims]:
    """Concrete shapes of the graph inputs, by the package's one policy
    (:func:`onnxprune.runtime.resolve_input_shapes`)."""
    return runtime.resolve_input_shapes(runtime.declared_dims(model), given)


def symbolic_shapes(model: ModelProto) -> dict[str, SymbolicDims]:
    """Dims of main-graph values with the inputs' dynamic dims as declared (see the module
    docstring): an int per static dim, a name per dynamic one, None where inference has neither.
    Empty when shape inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(data_free_model(model), strict_mode=False, data_prop=True)
    except Exception:  # onnx raises InferenceError or C++ errors for unknown ops: no symbolic dims
        return {}
    return symbolic_dims(inferred.graph)


def static_shapes(model: ModelProto, input_shapes: Mapping[str, Dims], notes: list[str]) -> dict[str, Dims]:
    """Shapes of main-graph values: shape inference first, one onnxruntime run for the rest."""
    skeleton = data_free_model(model, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError or C++ errors for unknown ops
        notes.append(f"ONNX shape inference failed ({runtime.ort_message(exc)}); shapes come from onnxruntime")
        inferred = skeleton
    shapes = graph_shapes(inferred.graph)
    missing = [o for node in model.graph.node for o in node.output if o and o not in shapes]
    missing = [name for name in dict.fromkeys(missing) if name]
    if missing:
        try:
            shapes.update(runtime_shapes(model, input_shapes, missing))
        except Exception as exc:  # onnxruntime raises its own types
            notes.append(
                f"onnxruntime could not run the model to size {len(missing)} value(s): {runtime.ort_message(exc)}"
            )
    return shapes


class Context:
    """What a rule sees (:class:`onnxprune.ops.channels.ChannelContext`): the graph, shapes,
    layouts so far, and the group set."""

    def __init__(
        self, model: ModelProto, shapes: dict[str, Dims], symbols: dict[str, SymbolicDims] | None = None
    ) -> None:
        self.model = model
        self.scope = Scope.build(model.graph)
        self.shapes = shapes
        self.symbols = symbols or {}
        self.layouts: dict[str, Layout] = {}
        self.groups = GroupSet()
        self.index = {id(node): i for i, node in enumerate(model.graph.node)}
        #: initializers that are also graph inputs: a caller may feed them, in their declared shape
        self.fed = {value.name for value in model.graph.input}

    # -- graph facts -------------------------------------------------------------------
    def shape(self, name: str) -> Dims | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def dims(self, name: str) -> SymbolicDims | None:
        """The symbolic dims of ``name`` (see the module docstring), None if unknown or if they
        disagree in rank with its static shape."""
        dims, shape = self.symbols.get(name), self.shape(name)
        return dims if dims is not None and shape is not None and len(dims) == len(shape) else None

    def const(self, name: str) -> np.ndarray | None:
        return self.scope.const_value(name) if name else None

    def uses(self, name: str) -> list[Use]:
        return self.scope.uses.get(name, [])

    def producer(self, name: str) -> NodeProto | None:
        return self.scope.producers.get(name)

    def node_id(self, node: NodeProto) -> int:
        return self.index[id(node)]

    @staticmethod
    def label(node: NodeProto) -> str:
        return node_label(node)

    def is_output(self, name: str) -> bool:
        return self.scope.is_output(name)

    def onnx_opset(self) -> int:
        """The model's opset of the ONNX domain (13 if it imports none)."""
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)

    attr = staticmethod(attr)  # the op table's attribute getter

    def stored(self, node: NodeProto, index: int) -> tuple[str, tuple[int, int]] | None:
        """The stored tensor behind input ``index`` of ``node`` (through Identity/Cast read
        by this node alone), with the (node, input) that reads it; None if computed."""
        name = node.input[index] if index < len(node.input) else ""
        reader = (self.node_id(node), index)
        for _ in range(8):
            if not name:
                return None
            if self.scope.stored_tensor(name) is not None:
                return name, reader
            prod = self.producer(name)
            if prod is None or not spec_of(prod).carries_stored(prod) or len(self.uses(name)) != 1:
                return None
            name, reader = prod.input[0], (self.node_id(prod), 0)
        return None

    def stored_shape(self, name: str) -> Dims:
        tensor = self.scope.stored_tensor(name)
        assert tensor is not None
        return tuple(int(d) for d in tensor.dims)

    def stored_array(self, name: str) -> np.ndarray:
        """The values of stored tensor ``name``."""
        return tensors.read_array(self.scope.stored_tensor(name))

    # -- recording ---------------------------------------------------------------------
    def new_group(self, node: NodeProto, n: int) -> Group:
        return self.groups.new(n, node_label(node))

    def coarsen(self, group: Group, k: int) -> bool:
        return self.groups.coarsen(group, k)

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            self.groups.block(layout.groups(), reason)

    def members(
        self, layout: Layout, tensor: str, axis: int, kind: str, node: NodeProto, reader: tuple[int, int]
    ) -> None:
        """Record that ``axis`` of stored ``tensor`` follows ``layout`` piece by piece; a tensor
        whose axis is not as long as the layout (dims that disagree with the graph, a model
        onnxruntime refuses too) blocks the layout's groups instead."""
        stored = self.scope.stored_tensor(tensor)
        dims = tuple(int(d) for d in stored.dims) if stored is not None else None
        if tensor in self.fed:
            self.block(layout, f"'{tensor}' is also a graph input (a caller may feed it): its shape must not change")
            return
        if dims is not None and (not 0 <= axis < len(dims) or dims[axis] != layout.length):
            self.block(
                layout,
                f"'{tensor}' (dims {list(dims)}) does not have the {layout.length} channels {node.op_type} "
                f"'{node_label(node)}' reads on its axis {axis}: its dims disagree with the graph",
            )
            return
        offset = 0
        for piece in layout.pieces:
            if isinstance(piece, Segment):
                member = Member(tensor, axis, offset, piece, kind, node_label(node), reader)
                group = piece.root()
                group.members.append(member)
                if kind == "in" and node_label(node) not in group.sinks:
                    group.sinks.append(node_label(node))
                offset += piece.length
            else:
                offset += piece

    def edit(self, target: tuple[str, object, object], layout: Layout, reader: tuple[int, int] | None = None) -> None:
        edit = Edit(target, layout.pieces, reader)
        for group in layout.groups():
            group.edits.append(edit)

    def set(self, name: str, layout: Layout | None) -> None:
        if name and layout is not None:
            self.layouts[name] = layout

    def join(self, layouts: list[Layout], why: str) -> Layout | None:
        """Merge layouts that meet element by element; block all of them if they cannot."""
        first = layouts[0]
        for other in layouts[1:]:
            ok = same_structure(first, other)
            if ok:
                for p, q in zip(first.pieces, other.pieces, strict=True):
                    if isinstance(p, Segment) and isinstance(q, Segment) and not self.groups.merge(p.group, q.group):
                        ok = False
            if not ok:
                for layout in layouts:
                    self.block(layout, f"{why}: the joined channel groups do not line up")
                return None
        return first


def _guarded(cx: Context, node: NodeProto, tracked: dict[int, Layout], rule: Callable[..., None]) -> None:
    """Run a rule; if it fails on an odd node, the groups it sees are blocked, never guessed."""
    try:
        rule(cx, node, tracked)
    except Exception as exc:  # a rule meeting a graph it does not expect: keep those channels whole
        log.warning("channel analysis: %s '%s' not understood (%s)", node.op_type, node_label(node), exc)
        for layout in tracked.values():
            cx.block(layout, f"{node.op_type} '{node_label(node)}' could not be analysed ({type(exc).__name__})")
        for out in node.output:
            layout = cx.layouts.pop(out, None)
            cx.block(layout, f"{node.op_type} '{node_label(node)}' could not be analysed ({type(exc).__name__})")


def analyze(model: ModelProto, *, input_shapes: Mapping[str, Dims] | None = None) -> Analysis:
    """Find every channel group of ``model``'s main graph (see module docstring)."""
    notes: list[str] = []
    inputs = input_shapes_for(model, input_shapes)
    shapes = static_shapes(model, inputs, notes)
    cx = Context(model, shapes, symbolic_shapes(model))
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        tracked = {i: cx.layouts[name] for i, name in enumerate(node.input) if name in cx.layouts}
        label = node_label(node)
        if node.domain not in ("", "ai.onnx"):
            for layout in tracked.values():
                cx.block(layout, f"{node.op_type} '{label}' (domain {node.domain}) reads these channels")
            continue
        spec = spec_of(node)
        if tracked:
            rule = spec.channel_rule(node)
            if rule is None:
                for layout in tracked.values():
                    cx.block(layout, f"{node.op_type} '{label}' reads these channels (not understood)")
            else:
                _guarded(cx, node, tracked, rule)
        source = spec.channel_source(node)
        if source is not None:
            _guarded(cx, node, tracked, source)
    for name, layout in cx.layouts.items():
        if name in outputs:
            cx.block(layout, f"'{name}' is a graph output (its shape must not change)")
        if any(use.scope is not cx.scope for use in cx.uses(name)):
            cx.block(layout, f"'{name}' is read inside a subgraph")
    groups = cx.groups.roots()
    for g in groups:
        if not any(m.kind == "in" for m in g.members) and not g.blocked:
            g.blocked.append("no consumer reads these channels")
    log.info(
        "channel analysis: %d groups, %d prunable, %d blocked",
        len(groups),
        sum(1 for g in groups if not g.blocked),
        sum(1 for g in groups if g.blocked),
    )
    return Analysis(groups, shapes, inputs, cx, notes)
