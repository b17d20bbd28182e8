"""Values inside If / Loop / Scan bodies made main-graph outputs, so that onnxruntime returns them.

onnxruntime returns main-graph values only. :func:`plan` decides, on the model, how each
requested body value climbs to the main graph, one enclosing control-flow node at a time;
:meth:`Exposure.apply` makes those edits on a *copy* of the main graph (capture applies them to
the part of the model it runs, :mod:`onnxprune.capture`): the model itself is never changed.

A value ``v`` of shape ``s`` (rank ``r``) named in a body arrives as a **stack**
``[k_1, …, k_d, *s]``: ``d`` leading axes that count how often the body ran. From the innermost
body outwards, each enclosing node does one of (how the node runs its subgraphs and how a
repeated body lines up with it is the op table's, :mod:`onnxprune.ops.control`):

- **If** (``v`` in one branch): that branch outputs ``Unsqueeze(v, 0)`` ``[1, *stack]``, the other
  an empty Constant ``[0, …, 0]`` of the same element type and rank, and the If gets one more
  output: ``k = 1`` on a run where the branch was taken, ``k = 0`` where it was not. ``d += 1``.
- **Loop or Scan**, ``v`` not stacked yet (``d = 0``): one more scan output of the body (a Loop's
  after its loop-carried outputs, a Scan's ``scan_output_axes``/``directions`` given 0):
  ``[iterations, *s]``. ``d = 1``.
- **Loop**, ``v`` already stacked (``d ≥ 1``): its leading length may change from one iteration
  to the next (a branch taken or not, an inner loop's trip count), which a scan output cannot
  hold (onnxruntime requires one shape); a loop-carried accumulator can:
  ``acc' = Concat(acc, v, axis=0)`` from an empty ``[0, …, 0]`` of rank ``r + d`` gives
  ``[Σ_iterations k_1, k_2, …]``, the iterations joined to the leading axis. ``d`` stays. A
  Loop inside another Loop gathers even ``d = 0`` this way, as ``Unsqueeze(v, 0)`` (``d = 1``):
  onnxruntime gives a Loop that ran no iteration a scan output of shape ``[0]``, whose rank
  the enclosing Loop's Concat would refuse.
- **Scan**, ``v`` already stacked: refused (a Scan's states and scan outputs keep one shape over
  the iterations), with the reason; so is a body of an op the table gives no layout (Scan
  before opset 9, ops of other domains).

The body's own edit reads ``v`` through an Identity (or the Unsqueeze), so a body input (a
loop-carried state, a scanned slice) or a value of an enclosing graph is exposed as the body
sees it, once per run of the body: ``Σ_runs`` over the stack is the sum over every time the
node that reads ``v`` ran. A stack without elements means the body did not run on that batch
(:func:`runs` gives None). Element types and ranks come from ONNX shape inference
(:func:`~onnxprune.graph.edit.inferred_shapes`), else from the stored or inferred types of the
other inputs of the nodes that read ``v`` (a MatMul, Gemm or Conv reads one type), else from
the caller's hint; a rank is needed only for an empty tensor that a Loop concatenates. New
outputs are declared with their element type and, where it is known, their rank (every dim
unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from onnx import GraphProto, ModelProto, NodeProto, ValueInfoProto, helper

from onnxprune.graph.edit import FreshNames, InferredShapes, inferred_shapes
from onnxprune.graph.index import Scope
from onnxprune.graph.walk import GraphKey, graphs_by_owner, node_subgraphs, owner_key
from onnxprune.ops import spec_of
from onnxprune.ops.control import BodyLayout, ControlFlowSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BodyValue:
    """The value ``name`` as the graph at Scope path ``scope`` reads it (``""``: the main graph).

    ``rank``: the value's rank when the caller knows it (a Conv input's), used when shape
    inference does not give one; not part of the value's identity.
    """

    scope: str
    name: str
    rank: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Exposed:
    """Where a :class:`BodyValue` can be read: main-graph value ``name``, a stack with ``depth``
    leading run axes (0: the value itself), computed by the main-graph node whose first output
    is ``owner`` (``""`` for a main-graph value)."""

    name: str
    depth: int
    owner: str = ""


@dataclass(frozen=True)
class _Edit:
    """One step up: the body ``where`` gives value ``inner`` to its owner node's new output ``outer``."""

    where: GraphKey
    kind: str  # "branch" (If), "scan" (a scan output), "carried" (a Loop accumulator), "lifted" (one of Unsqueeze(v))
    inner: str
    outer: str
    elem_type: int
    rank: int | None  # of the stack arriving from inside (None: unknown, empties get rank 1)
    fresh: tuple[str, ...]
    opset: int
    layout: BodyLayout | None  # of a repeated body (ops.control), None for a branch


@dataclass
class Exposure:
    """How to read each requested body value (:attr:`exposed`), the values that cannot be read
    with the reason (:attr:`refused`), and the edits that make them main-graph outputs."""

    exposed: dict[BodyValue, Exposed] = field(default_factory=dict)
    refused: dict[BodyValue, str] = field(default_factory=dict)
    edits: list[_Edit] = field(default_factory=list)

    @property
    def owners(self) -> dict[str, str]:
        """Each exposed main-graph output and the first output of the main-graph node computing it."""
        return {e.name: e.owner for e in self.exposed.values() if e.owner}

    def apply(self, graph: GraphProto) -> None:
        """Make every exposed value an output of its owner node in ``graph`` (a copy of the main
        graph, or of the part holding the owner nodes); the caller lists them as graph outputs."""
        if not self.edits:
            return
        graphs = dict(graphs_by_owner(graph))
        # keyed before any edit: a Loop without carried values gets its accumulator as output 0
        owners = {(*key, owner_key(n)): n for key, g in graphs.items() for n in g.node if _holds_graphs(n)}
        for edit in self.edits:
            parent, owner, body = graphs[edit.where[:-2]], owners[edit.where[:-1]], graphs[edit.where]
            {"branch": _branch, "scan": _scan, "carried": _carried, "lifted": _carried}[edit.kind](
                edit, parent, owner, body
            )


def _holds_graphs(node: NodeProto) -> bool:
    return next(node_subgraphs(node), None) is not None


def runs(x: np.ndarray, depth: int) -> np.ndarray | None:
    """The stack ``x`` with ``depth`` run axes as ``[runs, *s]`` (a view), or None when the body
    never ran on this batch (no element)."""
    if depth == 0:
        return x[None]
    if x.size == 0 or x.ndim < depth:
        return None
    return x.reshape(-1, *x.shape[depth:])


# ---------------------------------------------------------------------------------------
# Planning


def plan(model: ModelProto, values: Sequence[BodyValue]) -> Exposure:
    """How each of ``values`` becomes readable in the main graph (see the module docstring)."""
    exposure = Exposure()
    wanted = list(dict.fromkeys(values))
    if not wanted:
        return exposure
    root = Scope.build(model.graph)
    scopes = {s.path: s for s in root.all_scopes()}
    shapes: InferredShapes | None = None
    fresh = FreshNames(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    for value in wanted:
        scope = scopes.get(value.scope)
        if scope is None:
            exposure.refused[value] = f"no subgraph at '{value.scope}'"
            continue
        if scope.resolve(value.name) is None:
            exposure.refused[value] = f"'{value.name}' is not defined where '{value.scope or 'main graph'}' reads it"
            continue
        if scope.parent is None:
            exposure.exposed[value] = Exposed(value.name, 0)
            continue
        if shapes is None:
            shapes = inferred_shapes(model)
            if shapes.error:
                log.debug("shape inference failed (%s): types of body values come from their readers", shapes.error)
        elem_type, rank = _value_type(scope, value, shapes)
        if not elem_type:
            exposure.refused[value] = f"the element type of '{value.name}' is unknown: it cannot be exposed"
            continue
        edits, depth, why = _climb(scope, value.name, elem_type, rank, fresh, opset)
        if why is not None:
            exposure.refused[value] = why
            continue
        exposure.edits.extend(edits)
        exposure.exposed[value] = Exposed(edits[-1].outer, depth, edits[-1].where[-2])
    return exposure


def _key(scope: Scope) -> GraphKey:
    chain: list[str] = []
    while scope.parent is not None and scope.owner is not None:
        chain[:0] = [owner_key(scope.owner), scope.attribute]
        scope = scope.parent
    return tuple(chain)


def _layout(node: NodeProto, opset: int) -> tuple[str | None, BodyLayout | None]:
    """What the op table says of ``node``'s subgraphs: how they run ("branches", "repeated",
    None) and, for a repeated body, how it lines up with the node."""
    spec = spec_of(node, opset if node.domain in ("", "ai.onnx") else None)
    return spec.subgraphs, spec.body if isinstance(spec, ControlFlowSpec) else None


def _climb(
    scope: Scope, name: str, elem_type: int, rank: int | None, fresh: FreshNames, opset: int
) -> tuple[list[_Edit], int, str | None]:
    """The edits that carry ``name`` from ``scope`` up to the main graph and the run axes of the
    stack they give, or the reason it cannot go.

    A Loop inside another Loop gathers with an accumulator even a value not stacked yet
    (``Unsqueeze`` first): onnxruntime gives a Loop that ran no iteration a scan output of
    shape ``[0]``, whose rank the enclosing Loop's Concat would refuse.
    """
    chain: list[Scope] = []
    while scope.parent is not None:
        chain.append(scope)
        scope = scope.parent
    layouts = [_layout(body.owner, opset) if body.owner is not None else (None, None) for body in chain]
    edits: list[_Edit] = []
    depth, inner = 0, name
    base = name.replace("/", "_")
    for level, body in enumerate(chain):
        owner = body.owner
        if owner is None or not owner.output or not owner.output[0]:
            return [], 0, f"the node holding '{body.path}' has no named output to key it by"
        runs_as, layout = layouts[level]
        label = owner.name or owner.output[0]
        stacked = None if rank is None else rank + depth
        outer = fresh(f"{base}.onnxprune_exposed")
        grows_above = any(above is not None and above.carried_may_grow for _, above in layouts[level + 1 :])
        if runs_as == "branches":
            kind = "branch"
            names = (
                fresh(f"{base}.onnxprune_run"),
                fresh(f"{base}.onnxprune_axes"),
                fresh(f"{base}.onnxprune_not_run"),
            )
            depth += 1
        elif layout is None:
            return [], 0, f"'{name}' is inside a subgraph of {owner.op_type} '{label}', which cannot be exposed"
        elif depth == 0 and not (layout.carried_may_grow and grows_above):
            kind, names, depth = "scan", (fresh(f"{base}.onnxprune_iteration"),), 1
        elif layout.carried_may_grow:
            if stacked is None:
                return [], 0, f"the rank of '{name}' is unknown: it cannot be gathered over the iterations of '{label}'"
            kind = "carried" if depth else "lifted"
            names = (
                fresh(f"{base}.onnxprune_acc"),
                fresh(f"{base}.onnxprune_acc_out"),
                fresh(f"{base}.onnxprune_acc0"),
            )
            names += (fresh(f"{base}.onnxprune_run"), fresh(f"{base}.onnxprune_axes"))
            depth = max(depth, 1)
        else:
            why = f"'{name}' runs a varying number of times per iteration of {owner.op_type} '{label}' (an If or Loop"
            return [], 0, f"{why} inside it), which its outputs cannot hold: they keep one shape over the iterations"
        edits.append(_Edit(_key(body), kind, inner, outer, elem_type, stacked, names, opset, layout))
        inner = outer
    return edits, depth, None


def _value_type(scope: Scope, value: BodyValue, shapes: InferredShapes) -> tuple[int, int | None]:
    """The element type (0: unknown) and rank of ``value``: inferred, else from the other inputs of
    the nodes that read it (same-type operands), else the caller's rank."""
    name = value.name
    known = shapes.types.get(name)
    elem_type = known.tensor_type.elem_type if known is not None and known.HasField("tensor_type") else 0
    rank = shapes.rank(name) if known is not None else None
    if not elem_type:
        for node in scope.graph.node:
            if name not in node.input:
                continue
            for other in node.input:
                if not other or other == name:
                    continue
                owner = scope.resolve(other)
                stored = owner.stored_tensor(other) if owner is not None else None
                if stored is not None:
                    elem_type = stored.data_type
                elif other in shapes.types and shapes.types[other].HasField("tensor_type"):
                    elem_type = shapes.types[other].tensor_type.elem_type
                if elem_type:
                    break
            if elem_type:
                break
    return elem_type, rank if rank is not None else value.rank


# ---------------------------------------------------------------------------------------
# Edits


def _typed(name: str, elem_type: int, rank: int | None) -> ValueInfoProto:
    """``name`` declared with its element type, and its rank where known (every dim unknown)."""
    return helper.make_tensor_value_info(name, elem_type, None if rank is None else [None] * rank)


def _plus(rank: int | None, more: int) -> int | None:
    return None if rank is None else rank + more


def _empty(name: str, elem_type: int, rank: int | None) -> NodeProto:
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    value = helper.make_tensor(name, elem_type, [0] * (rank or 1), np.zeros(0, dtype).tolist())
    return helper.make_node("Constant", [], [name], name=name, value=value)


def _pad_outputs(owner: NodeProto, count: int) -> None:
    """Name every output of ``owner`` up to ``count`` (omitted trailing ones as unused, "")."""
    while len(owner.output) < count:
        owner.output.append("")


def _unsqueeze(body: GraphProto, name: str, out: str, axes: str, opset: int) -> None:
    """``out = Unsqueeze(name, axes=[0])`` at the end of ``body`` (axes an input from opset 13)."""
    if opset >= 13:
        body.node.append(helper.make_node("Constant", [], [axes], name=axes, value_ints=[0]))
        body.node.append(helper.make_node("Unsqueeze", [name, axes], [out], name=out))
    else:
        body.node.append(helper.make_node("Unsqueeze", [name], [out], name=out, axes=[0]))


def _branch(edit: _Edit, parent: GraphProto, owner: NodeProto, body: GraphProto) -> None:
    run, axes, not_run = edit.fresh
    _pad_outputs(owner, len(body.output))
    _unsqueeze(body, edit.inner, run, axes, edit.opset)
    body.output.append(_typed(run, edit.elem_type, _plus(edit.rank, 1)))
    for label, other in node_subgraphs(owner):
        if label != edit.where[-1]:  # the branches not holding the value give an empty stack
            other.node.append(_empty(not_run, edit.elem_type, _plus(edit.rank, 1)))
            other.output.append(_typed(not_run, edit.elem_type, _plus(edit.rank, 1)))
    owner.output.append(edit.outer)


def _scan(edit: _Edit, parent: GraphProto, owner: NodeProto, body: GraphProto) -> None:
    (value,) = edit.fresh
    layout = edit.layout
    assert layout is not None  # planned for a repeated body
    body.node.append(helper.make_node("Identity", [edit.inner], [value], name=value))
    _pad_outputs(owner, len(body.output) - layout.outputs_before)
    body.output.append(_typed(value, edit.elem_type, edit.rank))
    owner.output.append(edit.outer)
    for attr in owner.attribute:
        if attr.name in layout.scan_output_attributes:
            attr.ints.append(0)  # stacked on axis 0, forward


def _carried(edit: _Edit, parent: GraphProto, owner: NodeProto, body: GraphProto) -> None:
    acc, acc_out, acc0, run, axes = edit.fresh
    layout = edit.layout
    assert layout is not None  # planned for a repeated body
    carried = len(owner.input) - layout.inputs_before  # the loop-carried values so far
    _pad_outputs(owner, len(body.output) - layout.outputs_before)
    value, rank = edit.inner, edit.rank
    if edit.kind == "lifted":
        _unsqueeze(body, edit.inner, run, axes, edit.opset)
        value, rank = run, _plus(rank, 1)
    body.input.append(_typed(acc, edit.elem_type, rank))
    body.node.append(helper.make_node("Concat", [acc, value], [acc_out], name=acc_out, axis=0))
    body.output.insert(layout.outputs_before + carried, _typed(acc_out, edit.elem_type, rank))
    at = next(i for i, n in enumerate(parent.node) if n is owner)
    parent.node.insert(at, _empty(acc0, edit.elem_type, rank))
    owner.input.append(acc0)
    owner.output.insert(carried, edit.outer)
