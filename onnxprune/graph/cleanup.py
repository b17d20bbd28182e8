"""Folding and cleanup after a structural edit: BatchNormalization folding, constant folding,
dead nodes and unused tensors, a stable topological sort and fresh shapes.

**BatchNormalization folding.** In inference mode BN is a per-channel affine map of its
input ``x`` along axis 1:

    y_c = γ_c · (x_c − μ_c) / √(σ²_c + ε) + β_c = s_c · x_c + t_c,
    s = γ / √(σ² + ε),   t = β − μ · s.

When ``x`` is the output of a producer that is linear in its weight per output channel,
``x_c = W_c · in + b_c``, the BN folds into it: ``y_c = (s_c W_c) · in + (s_c b_c + t_c)``,
so ``W' = s ⊙ W`` along the output-channel axis and ``b' = s·b + t = (b − μ)·s + β`` (a
missing bias is 0 and is created). The output-channel axis per producer:

* Conv, ``W[M, C/g, k…]``: axis 0 (depthwise and grouped alike).
* ConvTranspose, ``W[C, M/g, k…]``: output channel ``o = i·(M/g) + j`` of group ``i`` is
  ``W[i·C/g:(i+1)·C/g, j]``, so ``W`` is viewed as ``[g, C/g, M/g, k…]`` and scaled along
  its third axis by ``s`` viewed as ``[g, M/g]``.
* Gemm, ``Y = α·A'·B' + β_g·C``: ``B[K, N]`` is scaled along axis 1 (``transB=1``:
  ``B[N, K]``, axis 0); ``C' = s·(β_g·C) + t`` and ``β_g`` becomes 1.
* MatMul (+ Add), ``Y = X·B (+ c)`` with a 2-D ``B[K, N]`` and a 2-D ``Y``, so that BN's
  channel axis 1 is ``B``'s last axis: ``c' = s·c + t``, in a new Add if there was none.

Assumptions: ``training_mode`` is 0 and the running mean/var outputs are unused; γ, β, μ
and σ² are stored 1-D ``[C]`` tensors; ε is the attribute (default 1e-5). The producer's
output is read by the BN only. Everything is computed in float64 and rounded once to the
stored dtype, so a float16 model agrees with its unfused self to float16 rounding. A
weight or bias read by another node too is cloned before it is edited. The producer's
output takes the BN's output name, so every reader (and a graph output) is unchanged.
A BN that cannot be folded is kept, with the reason.

**Constant folding** (main graph). A node is folded when every input is a stored tensor
(an initializer that is not also a graph input, a Constant node) or the output of a
folded node, its op is deterministic, in the ONNX domain and has no subgraph. ``Shape``
and ``Size`` of a tensor whose (selected) dims are all concrete fold too, and so do
``Gather``/``Slice`` of a ``Shape`` whose selected dims are concrete (the static part of
a shape with a symbolic batch); a dim that depends on a symbolic input dim never folds.
Guards: a node whose output would be over :data:`GROWTH_LIMIT` bytes larger than its
inputs is kept (an Expand or Tile would grow the file), and so are ``DequantizeLinear``
and a widening ``Cast`` of more than :data:`SMALL` elements (weights stored compressed on
purpose). Output sizes come from shape inference before anything runs (a node whose output
shape is not known there is kept); the values from one onnxruntime run of the folded nodes
alone (if it fails, they are kept, with a note). A folded value read by a kept node becomes an
initializer (a Constant node if it is a graph output).

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
concrete value (symbolic dims are kept).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto, ValueInfoProto, helper

from onnxprune.graph.index import Scope, node_label
from onnxprune.graph.tensors import FLOAT_TYPES, data_bytes, numel, read_array, write_array

log = logging.getLogger(__name__)

#: A folded node may output at most this many bytes more than its inputs.
GROWTH_LIMIT = 1 << 20
#: Tensors of at most this many elements keep their values in the data-free copy used for
#: shape inference, and a widening Cast of at most this many elements may fold.
SMALL = 1024
#: Ops never folded: random, or decoding weights stored compressed on purpose.
NEVER_FOLDED = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
    | {"DequantizeLinear", "Constant"}
)
_ONNX_DOMAINS = ("", "ai.onnx")

GraphKey = tuple[str, ...]


@dataclass(frozen=True)
class CleanupResult:
    """What :func:`cleanup` changed."""

    bn_folded: tuple[str, ...]  # BN node names folded into their producer
    bn_kept: tuple[tuple[str, str], ...]  # (BN node, why it could not be folded)
    constants_folded: int  # nodes replaced by constants
    nodes_removed: int  # dead nodes dropped (unread Constant nodes included)
    initializers_removed: int  # unused initializers dropped
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------
# Graph helpers


def _subgraphs(node: NodeProto) -> Iterator[tuple[str, GraphProto]]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from ((f"{attr.name}[{i}]", g) for i, g in enumerate(attr.graphs))


def _graphs(graph: GraphProto, key: GraphKey = ()) -> Iterator[tuple[GraphKey, GraphProto]]:
    """``(key, graph)`` for ``graph`` and every nested subgraph; a key names each owner
    node by its first output (unique in a model) and the attribute."""
    yield key, graph
    for node in graph.node:
        for label, sub in _subgraphs(node):
            yield from _graphs(sub, (*key, node.output[0] if node.output else node.name, label))


def _defined(graph: GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names |= {s.values.name for s in graph.sparse_initializer}
    return names | {o for n in graph.node for o in n.output if o}


def _outer_refs(graph: GraphProto) -> set[str]:
    """Names read in ``graph`` (nested subgraphs included) that it does not define."""
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(i for i in node.input if i)
        for _, sub in _subgraphs(node):
            read |= _outer_refs(sub)
    return read - _defined(graph)


def _delete_nodes(graph: GraphProto, nodes: list[NodeProto]) -> None:
    """Delete ``nodes`` (held by the caller, so their ids stay valid) without copying."""
    drop = {id(n) for n in nodes}
    for i in range(len(graph.node) - 1, -1, -1):
        if id(graph.node[i]) in drop:
            del graph.node[i]


class _Names:
    """Fresh tensor names, unique in the whole model."""

    def __init__(self, model: ModelProto) -> None:
        self.taken = {name for _, g in _graphs(model.graph) for name in _defined(g)}

    def __call__(self, base: str) -> str:
        name, count = base, 1
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL and not tensor.HasField("raw_data")


def _overridable(model: ModelProto, graph: GraphProto) -> set[str]:
    """Initializers that are graph inputs too, hence not constants (IR >= 4)."""
    if model.ir_version < 4 or graph is not model.graph:
        return set()
    return {i.name for i in graph.input} & {t.name for t in graph.initializer}


# ---------------------------------------------------------------------------------------
# Shape inference on a data-free copy


def _data_free_tensor(tensor: TensorProto) -> TensorProto:
    if tensor.data_location != TensorProto.EXTERNAL and numel(tensor) <= SMALL:
        return tensor
    return TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)


def _typed(value: ValueInfoProto) -> ValueInfoProto:
    """``value`` with its element type but without its (possibly stale) shape."""
    out = ValueInfoProto()
    out.CopyFrom(value)
    if out.type.HasField("tensor_type"):
        out.type.tensor_type.ClearField("shape")
    return out


def _data_free_graph(graph: GraphProto) -> GraphProto:
    out = GraphProto(name=graph.name)
    out.input.extend(graph.input)
    out.output.extend(_typed(v) for v in graph.output)
    out.value_info.extend(_typed(v) for v in graph.value_info)
    out.initializer.extend(_data_free_tensor(t) for t in graph.initializer)
    out.sparse_initializer.extend(graph.sparse_initializer)
    for node in graph.node:
        copy = out.node.add(op_type=node.op_type, domain=node.domain, name=node.name, overload=node.overload)
        copy.input.extend(node.input)
        copy.output.extend(node.output)
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                copy.attribute.add(name=attr.name, type=attr.type, t=_data_free_tensor(attr.t))
            elif attr.type == AttributeProto.GRAPH:
                copy.attribute.add(name=attr.name, type=attr.type, g=_data_free_graph(attr.g))
            elif attr.type == AttributeProto.GRAPHS:
                copy.attribute.add(name=attr.name, type=attr.type, graphs=[_data_free_graph(g) for g in attr.graphs])
            else:
                copy.attribute.add().CopyFrom(attr)
    return out


@dataclass
class _Shapes:
    """Inferred types of every named value (flat: names are unique in a model) and the
    inferred ``value_info`` of each graph."""

    types: dict[str, TypeProto] = field(default_factory=dict)
    value_info: dict[GraphKey, list[ValueInfoProto]] = field(default_factory=dict)
    error: str | None = None

    def dims(self, name: str) -> list[int | None] | None:
        tensor_type = self.types[name].tensor_type if name in self.types else None
        if tensor_type is None or not tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]

    def rank(self, name: str) -> int | None:
        dims = self.dims(name)
        return None if dims is None else len(dims)


def _infer_shapes(model: ModelProto) -> _Shapes:
    """Run ONNX shape inference on a data-free copy of ``model`` (see the module docstring)."""
    skeleton = ModelProto(ir_version=model.ir_version, graph=_data_free_graph(model.graph))
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    shapes = _Shapes()
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference raises several types; the model still works without value_info
        shapes.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return shapes
    for key, graph in _graphs(inferred.graph):
        shapes.value_info[key] = list(graph.value_info)
        for value in (*graph.input, *graph.output, *graph.value_info):
            shapes.types[value.name] = value.type
        for tensor in graph.initializer:
            shapes.types[tensor.name] = helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
    return shapes


# ---------------------------------------------------------------------------------------
# BatchNormalization folding


@dataclass(frozen=True)
class _Stored:
    scope: Scope  # the scope that defines the tensor
    name: str
    tensor: TensorProto


Scale = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Fold:
    """How a BN folds: ``weight`` (input 1 of ``producer``) is scaled by ``scale``, the
    bias is input ``bias_index`` of ``bias_node`` (stored ``bias``, or None: created), and
    ``bias_node``'s output takes the BN's output name. No ``bias_node``: the BN becomes an Add."""

    producer: NodeProto
    weight: _Stored
    scale: Scale
    bias_node: NodeProto | None
    bias_index: int = 2
    bias: _Stored | None = None
    bias_factor: float = 1.0  # Gemm's beta, folded into the bias


@dataclass
class _BnContext:
    model: ModelProto
    scope: Scope
    bn: NodeProto
    rank: Callable[[str], int | None]
    fresh: _Names
    cloned: dict[tuple[int, str], int]  # (scope id, name) -> readers moved to clones
    channels: int = 0

    def stored(self, node: NodeProto, index: int, what: str) -> _Stored | str | None:
        """The stored tensor ``node`` reads at ``index``, why it does not fit, or None if absent."""
        name = node.input[index] if len(node.input) > index else ""
        owner = self.scope.resolve(name) if name else None
        tensor = owner.stored_tensor(name) if owner is not None else None
        if not name:
            return None
        if owner is None or tensor is None:
            return f"its {what} '{name}' is computed at run time, not stored"
        if name in _overridable(self.model, owner.graph):
            return f"its {what} '{name}' is also a graph input (it may be overridden at run time)"
        if _is_external(tensor):
            return f"the data of its {what} '{name}' is external and not loaded"
        if tensor.data_type not in FLOAT_TYPES:
            return f"its {what} '{name}' is not a float tensor"
        return _Stored(owner, name, tensor)

    def weight(self, node: NodeProto, axis: int, ndim: int | None = None) -> _Stored | str:
        """Input 1 of ``node``, with the BN's channel count along ``axis``."""
        weight = self.stored(node, 1, "weight")
        if weight is None or isinstance(weight, str):
            return weight or f"{node_label(node)} has no weight"
        dims = list(weight.tensor.dims)
        if (ndim is not None and len(dims) != ndim) or len(dims) <= axis or dims[axis] != self.channels:
            return f"its weight {dims} does not have the BN's {self.channels} output channels on axis {axis}"
        return weight

    def only_reader(self, name: str, reader: NodeProto) -> str | None:
        """Why ``name`` is not read by ``reader`` alone (None if it is)."""
        if self.scope.is_output(name):
            return f"'{name}' is also a graph output"
        others = [node_label(u.node) for u in self.scope.uses.get(name, []) if u.node is not reader]
        return f"'{name}' is also read by {', '.join(others)}" if others else None

    def fold(self, node: NodeProto, weight: _Stored | str, scale: Scale, factor: float = 1.0) -> _Fold | str:
        if isinstance(weight, str):
            return weight
        bias = self.stored(node, 2, "bias")
        return bias if isinstance(bias, str) else _Fold(node, weight, scale, node, 2, bias, factor)

    def own(self, stored: _Stored, node: NodeProto, index: int) -> TensorProto:
        """The tensor ``node`` reads at ``index``, cloned first if another node reads it too."""
        key = (id(stored.scope), stored.name)
        readers = len(stored.scope.uses.get(stored.name, [])) + stored.scope.is_output(stored.name)
        if readers - self.cloned.get(key, 0) <= 1:
            return stored.tensor
        self.cloned[key] = self.cloned.get(key, 0) + 1
        clone = self.scope.graph.initializer.add()
        clone.CopyFrom(stored.tensor)
        clone.name = node.input[index] = self.fresh(stored.name)
        return clone


def _along(axis: int, ndim: int, s: np.ndarray) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return s.reshape(shape)


def _conv(ctx: _BnContext, node: NodeProto) -> _Fold | str:
    return ctx.fold(node, ctx.weight(node, 0), lambda w, s: w * _along(0, w.ndim, s))


def _conv_transpose(ctx: _BnContext, node: NodeProto) -> _Fold | str:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    weight = ctx.stored(node, 1, "weight")
    if not isinstance(weight, _Stored):
        return weight or f"{node_label(node)} has no weight"
    dims = list(weight.tensor.dims)  # [C, M/g, k...]
    if len(dims) < 2 or dims[0] % group or dims[1] * group != ctx.channels:
        return f"its weight {dims} with group={group} does not give the BN's {ctx.channels} channels"

    def scale(w: np.ndarray, s: np.ndarray) -> np.ndarray:
        grouped = w.reshape(group, dims[0] // group, dims[1], -1)
        return (grouped * s.reshape(group, 1, dims[1], 1)).reshape(w.shape)

    return ctx.fold(node, weight, scale)


def _gemm(ctx: _BnContext, node: NodeProto) -> _Fold | str:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = 0 if attrs.get("transB", 0) else 1
    weight = ctx.weight(node, axis, 2)
    return ctx.fold(node, weight, lambda w, s: w * _along(axis, 2, s), float(attrs.get("beta", 1.0)))


def _matmul(ctx: _BnContext, node: NodeProto, add: NodeProto | None = None) -> _Fold | str:
    rank = ctx.rank(ctx.bn.input[0])
    if rank != 2:
        return f"the MatMul output has rank {rank or 'unknown'}, not 2: BN's channel axis is not its last axis"
    weight = ctx.weight(node, 1, 2)
    if isinstance(weight, str) or add is None:
        return weight if isinstance(weight, str) else _Fold(node, weight, lambda w, s: w * s, None)
    index = 1 if add.input[0] in node.output else 0
    bias = ctx.stored(add, index, "bias")
    if not isinstance(bias, _Stored):
        return bias or "its Add has no bias"
    return _Fold(node, weight, lambda w, s: w * s, add, index, bias)


def _add(ctx: _BnContext, node: NodeProto) -> _Fold | str:
    """A MatMul followed by an Add of a stored bias."""
    for name in node.input[:2]:
        matmul = ctx.scope.producers.get(name)
        if matmul is not None and matmul.op_type == "MatMul" and matmul.domain in _ONNX_DOMAINS:
            shared = ctx.only_reader(name, node)
            return f"the MatMul output {shared}" if shared else _matmul(ctx, matmul, node)
    return "producer is Add (not of a MatMul)"


#: BN producers: op type -> handler giving the fold, or why the BN stays.
PRODUCERS: dict[str, Callable[[_BnContext, NodeProto], _Fold | str]] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _add,
}


def _bn_plan(ctx: _BnContext) -> tuple[_Fold, np.ndarray, np.ndarray] | str:
    bn, scope = ctx.bn, ctx.scope
    attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
    if attrs.get("training_mode", 0):
        return "training mode (training_mode=1)"
    if any(out and (scope.uses.get(out) or scope.is_output(out)) for out in bn.output[1:]):
        return "its running mean/var outputs are used"
    params = []
    for index, what in enumerate(("scale", "bias", "mean", "variance"), start=1):
        stored = ctx.stored(bn, index, what)
        if not isinstance(stored, _Stored):
            return stored or f"it has no {what}"
        params.append(read_array(stored.tensor).astype(np.float64))
    gamma, beta, mean, var = params
    if any(p.ndim != 1 or p.shape != gamma.shape for p in params):
        return "its statistics are not 1-D per-channel vectors"
    denominator = var + float(attrs.get("epsilon", 1e-5))
    if np.any(denominator <= 0):
        return "variance + epsilon is not positive"
    ctx.channels = gamma.shape[0]
    producer = scope.producers.get(bn.input[0])
    if producer is None:
        return f"its input '{bn.input[0]}' is not computed by a node of its graph"
    handler = PRODUCERS.get(producer.op_type) if producer.domain in _ONNX_DOMAINS else None
    if handler is None:
        return f"producer is {producer.op_type}"
    shared = ctx.only_reader(bn.input[0], bn)
    if shared:
        return f"its input {shared}"
    plan = handler(ctx, producer)
    if isinstance(plan, str):
        return plan
    s = gamma / np.sqrt(denominator)
    return plan, s, beta - mean * s


def _set(tensor: TensorProto, values: np.ndarray) -> None:
    del tensor.dims[:]
    tensor.dims.extend(values.shape)
    write_array(tensor, values)


def _apply(ctx: _BnContext, fold: _Fold, s: np.ndarray, t: np.ndarray) -> None:
    """Edit the graph as ``fold`` says (see the module docstring for the maths)."""
    bn = ctx.bn
    weight = ctx.own(fold.weight, fold.producer, 1)
    values = read_array(weight)
    write_array(weight, fold.scale(values.astype(np.float64), s).astype(values.dtype))
    bias = read_array(fold.bias.tensor) if fold.bias else np.zeros(s.shape, values.dtype)
    new_bias = (bias.astype(np.float64) * fold.bias_factor * s + t).astype(bias.dtype)
    if fold.bias is not None and fold.bias_node is not None:
        _set(ctx.own(fold.bias, fold.bias_node, fold.bias_index), new_bias)
    else:
        name = ctx.fresh(f"{fold.weight.name}_bias")
        _set(ctx.scope.graph.initializer.add(name=name, data_type=fold.weight.tensor.data_type), new_bias)
        if fold.bias_node is None:  # MatMul without Add: the BN node becomes the Add
            del bn.attribute[:], bn.input[1:], bn.output[1:]
            bn.op_type, bn.domain, bn.name = "Add", "", f"{node_label(fold.producer)}_bias"
            bn.input.append(name)
            return
        inputs = fold.bias_node.input
        inputs.extend([""] * (fold.bias_index + 1 - len(inputs)))
        inputs[fold.bias_index] = name
    for attr in fold.producer.attribute:
        if attr.name == "beta":  # Gemm: beta·C is in the new C
            attr.f = 1.0
    fold.bias_node.output[0] = bn.output[0]


def _fold_batchnorm(model: ModelProto, rank: Callable[[str], int | None]) -> tuple[list[str], list[tuple[str, str]]]:
    root = Scope.build(model.graph)
    fresh, cloned = _Names(model), {}
    folded: list[str] = []
    kept: list[tuple[str, str]] = []
    for scope in root.all_scopes():
        removed: list[NodeProto] = []
        for bn in list(scope.graph.node):
            if bn.op_type != "BatchNormalization" or bn.domain not in _ONNX_DOMAINS:
                continue
            label = node_label(bn)
            ctx = _BnContext(model, scope, bn, rank, fresh, cloned)
            plan = _bn_plan(ctx)
            if isinstance(plan, str):
                log.info("BatchNormalization %s kept: %s", label, plan)
                kept.append((label, plan))
                continue
            _apply(ctx, *plan)
            if bn.op_type == "BatchNormalization":
                removed.append(bn)
            folded.append(label)
        _delete_nodes(scope.graph, removed)
    return folded, kept


def fold_batchnorm(model: ModelProto) -> tuple[list[str], list[tuple[str, str]]]:
    """Fold every foldable BatchNormalization of ``model`` (in place) into its producer.

    Returns the folded BN node names and ``(BN node, why it was kept)`` for the others.
    Unread BN parameters are left for :func:`cleanup` to remove.
    """
    shapes: list[_Shapes] = []

    def rank(name: str) -> int | None:
        if not shapes:  # inference only when a MatMul needs it
            shapes.append(_infer_shapes(model))
        return shapes[0].rank(name)

    return _fold_batchnorm(model, rank)


# ---------------------------------------------------------------------------------------
# Constant folding


def _constant_value(node: NodeProto) -> tuple[int, np.ndarray | None]:
    """A Constant node's bytes, and its value when it is small."""
    attr = node.attribute[0]
    if attr.type == AttributeProto.TENSOR:
        small = numel(attr.t) <= SMALL and not _is_external(attr.t)
        return data_bytes(attr.t), read_array(attr.t) if small else None
    value = np.asarray(helper.get_attribute_value(attr))
    return value.nbytes, value if attr.name in ("value_int", "value_ints") else None


def _selected_dims(node: NodeProto, partial: dict[str, list[int | None]], shapes: _Shapes, small: dict) -> object:
    """The dims a Shape/Size (or a Gather/Slice of a Shape) selects, None where symbolic;
    None if the node is not one of those."""
    if node.op_type in ("Shape", "Size"):
        dims = shapes.dims(node.input[0])
        if dims is None or node.op_type == "Size":
            return dims
        attrs = {a.name: a.i for a in node.attribute}
        return dims[slice(attrs.get("start", 0), attrs.get("end"))]
    if not node.input or node.input[0] not in partial:
        return None
    dims = partial[node.input[0]]
    try:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in small:
            picked = np.asarray(dims, dtype=object)[np.asarray(small[node.input[1]])]
            return np.asarray(picked, dtype=object).reshape(-1).tolist()
        if node.op_type == "Slice" and all(i in small for i in node.input[1:] if i):
            starts, ends, axes, steps = ([*(small[i].tolist() if i else None for i in node.input[1:])] + [None] * 3)[:4]
            if axes in (None, [0], [-1]) and len(starts) == 1:
                return dims[slice(starts[0], ends[0], steps[0] if steps else None)]
    except (IndexError, TypeError, ValueError):
        return None
    return None


@dataclass
class _FoldPlan:
    """Nodes to fold: ``on_ort`` run in onnxruntime, ``by_shape`` computed from shapes."""

    on_ort: list[NodeProto] = field(default_factory=list)
    by_shape: list[NodeProto] = field(default_factory=list)
    values: dict[str, np.ndarray] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # constant value name -> bytes


def _foldable_op(node: NodeProto) -> bool:
    op = node.op_type
    return not (op in NEVER_FOLDED or "Sequence" in op or "Optional" in op or any(_subgraphs(node)))


def _plan_folding(model: ModelProto, shapes: _Shapes) -> _FoldPlan:
    graph, plan = model.graph, _FoldPlan()
    overridable = _overridable(model, graph)
    small: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        if t.name not in overridable and not _is_external(t):
            plan.sizes[t.name] = data_bytes(t)
            if numel(t) <= SMALL:
                small[t.name] = read_array(t)
    partial: dict[str, list[int | None]] = {}
    for node in graph.node:
        if node.domain not in _ONNX_DOMAINS or not node.output or not node.output[0]:
            continue
        out = node.output[0]
        if node.op_type == "Constant":
            if len(node.attribute) == 1 and node.attribute[0].name != "sparse_value":
                plan.sizes[out], value = _constant_value(node)
                if value is not None:
                    small[out] = value
            continue
        dims = _selected_dims(node, partial, shapes, small)
        if isinstance(dims, list):
            if any(d is None for d in dims):
                if node.op_type in ("Shape", "Slice"):
                    partial[out] = dims
                continue
            scalar = node.op_type == "Size" or (node.op_type == "Gather" and np.ndim(small[node.input[1]]) == 0)
            value = np.asarray(np.prod(dims, dtype=np.int64) if node.op_type == "Size" else dims, dtype=np.int64)
            small[out] = plan.values[out] = value.reshape(()) if scalar else value
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
        if node.op_type == "Cast" and grows > 0 and _numel_of(shapes, out) > SMALL:
            continue  # a widening Cast of a weight: the model stores it compressed on purpose
        plan.on_ort.append(node)
        plan.sizes.update(outs)  # type: ignore[arg-type]
    return plan


def _numel_of(shapes: _Shapes, name: str) -> int:
    dims = shapes.dims(name) or []
    return int(np.prod([d or 0 for d in dims], dtype=np.int64))


def _out_bytes(shapes: _Shapes, name: str) -> int | None:
    dims = shapes.dims(name)
    if dims is None or any(d is None for d in dims):
        return None
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(shapes.types[name].tensor_type.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def _evaluate(model: ModelProto, plan: _FoldPlan, wanted: list[str], shapes: _Shapes) -> dict[str, np.ndarray]:
    """Run the ``plan.on_ort`` nodes alone in onnxruntime, with the constants they read."""
    graph, nodes = model.graph, plan.on_ort
    needed = {i for n in nodes for i in n.input if i} - {o for n in nodes for o in n.output}
    sub = GraphProto(name="constant_folding")
    sub.node.extend(n for n in graph.node if n.op_type == "Constant" and n.output and n.output[0] in needed)
    sub.node.extend(nodes)
    sub.initializer.extend(t for t in graph.initializer if t.name in needed)
    sub.initializer.extend(onnx.numpy_helper.from_array(v, n) for n, v in plan.values.items() if n in needed)
    for name in wanted:
        sub.output.add(name=name).type.tensor_type.elem_type = shapes.types[name].tensor_type.elem_type
    folded = ModelProto(ir_version=model.ir_version, graph=sub)
    folded.opset_import.extend(model.opset_import)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(folded.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(wanted, session.run(wanted, {}), strict=True))


def _fold_constants(model: ModelProto, shapes: _Shapes, notes: list[str]) -> int:
    graph = model.graph
    plan = _plan_folding(model, shapes)
    if not plan.on_ort and not plan.by_shape:
        return 0
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
    _delete_nodes(graph, list(useful.values()))
    return len(useful)


# ---------------------------------------------------------------------------------------
# Order, dead code, shapes


def toposort(graph: GraphProto) -> bool:
    """Sort ``graph``'s nodes (not its subgraphs) topologically, keeping the original order
    where it is valid. Returns False, leaving the order as it is, if the graph has a cycle."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waits = [0] * len(nodes)
    readers: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        reads = {x for x in node.input if x}
        for _, sub in _subgraphs(node):
            reads |= _outer_refs(sub)
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


def _prune(graph: GraphProto, removed: _Removed, *, main: bool) -> set[str]:
    """Drop dead nodes and unread initializers of ``graph`` and its subgraphs; return the
    names it reads from enclosing graphs."""
    producer = {o: n for n in graph.node for o in n.output if o}
    live_names = {o.name for o in graph.output}
    live: dict[int, NodeProto] = {}
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
        for _, sub in _subgraphs(node):
            reads |= _prune(sub, removed, main=False)
        stack.extend(reads - live_names)
        live_names |= reads
    dead = [n for n in graph.node if id(n) not in live]
    removed.nodes += len(dead)
    _delete_nodes(graph, dead)
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
    return live_names - _defined(graph)


def _refresh_value_info(model: ModelProto, shapes: _Shapes | None) -> None:
    """Replace every graph's value_info by the inferred one (``shapes`` None: only drop
    entries of values that are gone); values inference left out keep their type only."""
    for key, graph in _graphs(model.graph):
        inner = {o for n in graph.node for o in n.output if o} - {o.name for o in graph.output}
        old = [v for v in graph.value_info if v.name in inner]
        if shapes is None:
            fresh = old
        else:
            fresh = [v for v in shapes.value_info.get(key, []) if v.name in inner]
            done = {v.name for v in fresh}
            fresh += [_typed(v) for v in old if v.name not in done]
        del graph.value_info[:]
        graph.value_info.extend(fresh)


def _refresh_outputs(model: ModelProto, shapes: _Shapes) -> list[str]:
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
    model: ModelProto, *, fold_bn: bool = True, fold_constants: bool = True, refresh_shapes: bool = True
) -> CleanupResult:
    """Fold BatchNormalization and constants, drop dead nodes and unused initializers, sort
    the graph and refresh its shapes, editing ``model`` in place (see the module docstring).

    Everything else of the model (ir_version, opsets, functions, metadata, doc strings,
    external-data references of untouched tensors, graph input and output names) is kept.
    """
    notes: list[str] = []
    for key, graph in _graphs(model.graph):
        if not toposort(graph):
            notes.append(f"graph {'/'.join(key) or 'main'} has a cycle: its node order is kept")
    cache: list[_Shapes] = []

    def shapes() -> _Shapes:
        if not cache:
            cache.append(_infer_shapes(model))
        return cache[0]

    bn_folded: list[str] = []
    bn_kept: list[tuple[str, str]] = []
    if fold_bn:
        bn_folded, bn_kept = _fold_batchnorm(model, lambda name: shapes().rank(name))
    constants = _fold_constants(model, shapes(), notes) if fold_constants else 0
    if constants:
        cache.clear()
    removed = _Removed()
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
        "cleanup: %d BN folded, %d kept, %d nodes folded to constants, %d dead nodes and %d initializers removed",
        len(bn_folded),
        len(bn_kept),
        constants,
        removed.nodes,
        removed.initializers,
    )
    return CleanupResult(
        bn_folded=tuple(bn_folded),
        bn_kept=tuple(bn_kept),
        constants_folded=constants,
        nodes_removed=removed.nodes,
        initializers_removed=removed.initializers,
        notes=tuple(notes),
    )
