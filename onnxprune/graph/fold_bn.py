"""BatchNormalization folding: a BN after a Conv, ConvTranspose, Gemm or MatMul (+ Add) is
folded into its producer's weight and bias.

In inference mode BN is a per-channel affine map of its input ``x`` along axis 1:

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

The producers are a registry of small handlers (:data:`PRODUCERS`): op type -> a function
that gives the fold (which weight, how it is scaled, where the bias goes) or why the BN
stays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper

from onnxprune.graph.edit import (
    ONNX_DOMAINS,
    FreshNames,
    InferredShapes,
    delete_nodes,
    inferred_shapes,
    is_external,
    overridable,
)
from onnxprune.graph.index import Scope, node_label
from onnxprune.graph.tensors import FLOAT_TYPES, read_array, write_array

log = logging.getLogger(__name__)


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
    fresh: FreshNames
    cloned: dict[tuple[int, str], int]  # (scope id, name) -> readers moved to clones
    channels: int = 0

    @property
    def affine(self) -> NodeProto:
        """The node being folded (a BN, or a per-channel Mul/Add/Sub/Div)."""
        return self.bn

    def stored(self, node: NodeProto, index: int, what: str) -> _Stored | str | None:
        """The stored tensor ``node`` reads at ``index``, why it does not fit, or None if absent."""
        name = node.input[index] if len(node.input) > index else ""
        owner = self.scope.resolve(name) if name else None
        tensor = owner.stored_tensor(name) if owner is not None else None
        if not name:
            return None
        if owner is None or tensor is None:
            return f"its {what} '{name}' is computed at run time, not stored"
        if name in overridable(self.model, owner.graph):
            return f"its {what} '{name}' is also a graph input (it may be overridden at run time)"
        if is_external(tensor):
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
        if matmul is not None and matmul.op_type == "MatMul" and matmul.domain in ONNX_DOMAINS:
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
    handler = PRODUCERS.get(producer.op_type) if producer.domain in ONNX_DOMAINS else None
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


def fold_batchnorm(
    model: ModelProto, *, rank: Callable[[str], int | None] | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Fold every foldable BatchNormalization of ``model`` (in place) into its producer.

    ``rank`` gives the rank of a value (None if unknown); it is asked only for a MatMul
    producer, and by default runs shape inference on ``model`` once, on first use.
    Returns the folded BN node names and ``(BN node, why it was kept)`` for the others.
    Unread BN parameters are left for :func:`~onnxprune.graph.cleanup.cleanup` to remove.
    """
    shapes: list[InferredShapes] = []

    def inferred_rank(name: str) -> int | None:
        if not shapes:  # inference only when a MatMul needs it
            shapes.append(inferred_shapes(model))
        return shapes[0].rank(name)

    root = Scope.build(model.graph)
    fresh, cloned = FreshNames(model), {}
    folded: list[str] = []
    kept: list[tuple[str, str]] = []
    for scope in root.all_scopes():
        removed: list[NodeProto] = []
        for bn in list(scope.graph.node):
            if bn.op_type != "BatchNormalization" or bn.domain not in ONNX_DOMAINS:
                continue
            label = node_label(bn)
            ctx = _BnContext(model, scope, bn, rank or inferred_rank, fresh, cloned)
            plan = _bn_plan(ctx)
            if isinstance(plan, str):
                log.info("BatchNormalization %s kept: %s", label, plan)
                kept.append((label, plan))
                continue
            _apply(ctx, *plan)
            if bn.op_type == "BatchNormalization":
                removed.append(bn)
            folded.append(label)
        delete_nodes(scope.graph, removed)
    return folded, kept


#: Per-channel affine ops folded like a BN: ``y = s·x + t`` with a stored constant operand.
AFFINE_OPS = ("Mul", "Add", "Sub", "Div")
_AFFINE_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")


def _out_channels(ctx: _BnContext, producer: NodeProto) -> int | None:
    weight = ctx.stored(producer, 1, "weight")
    if not isinstance(weight, _Stored):
        return None
    dims = list(weight.tensor.dims)
    attrs = {a.name: helper.get_attribute_value(a) for a in producer.attribute}
    if producer.op_type == "Conv":
        return dims[0] if dims else None
    if producer.op_type == "ConvTranspose":
        return dims[1] * int(attrs.get("group", 1)) if len(dims) > 1 else None
    return (dims[0] if attrs.get("transB", 0) else dims[1]) if len(dims) == 2 else None


def _affine_plan(ctx: _BnContext) -> tuple[_Fold, np.ndarray, np.ndarray] | str:
    """``x ∘ c`` (∘ = ·, +, −, ÷) right after a Conv/ConvTranspose/Gemm, ``c`` a stored constant
    that is a scalar or varies along the channel axis (1) only: the ``s, t`` of ``y = s·x + t``."""
    node, scope = ctx.affine, ctx.scope
    producers = [(i, scope.producers.get(name)) for i, name in enumerate(node.input[:2])]
    found = [(i, p) for i, p in producers if p is not None and p.op_type in _AFFINE_PRODUCERS]
    if len(found) != 1 or len(node.input) != 2:
        return "not right after a Conv, ConvTranspose or Gemm"
    index, producer = found[0]
    if producer.domain not in ONNX_DOMAINS or (node.op_type in ("Sub", "Div") and index != 0):
        return "the constant is on the wrong side"
    constant = ctx.stored(node, 1 - index, "constant")
    if not isinstance(constant, _Stored):
        return constant or "no constant operand"
    channels = _out_channels(ctx, producer)
    out_rank = ctx.rank(producer.output[0])
    c = read_array(constant.tensor).astype(np.float64)
    if channels is None or out_rank is None or c.ndim > out_rank:
        return "unknown channel count or rank"
    shape = (1,) * (out_rank - c.ndim) + c.shape
    if any(d != 1 for axis, d in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return f"the constant {list(c.shape)} is not per channel"
    vector = np.broadcast_to(c.reshape(-1), (channels,)) if c.size == 1 else c.reshape(-1)
    if node.op_type == "Div" and np.any(vector == 0):
        return "division by zero"
    ones, zeros = np.ones(channels), np.zeros(channels)
    s, t = {
        "Mul": (vector, zeros),
        "Add": (ones, vector),
        "Sub": (ones, -vector),
        "Div": (1.0 / np.where(vector == 0, 1.0, vector), zeros),
    }[node.op_type]
    shared = ctx.only_reader(producer.output[0], node)
    if shared:
        return f"its input {shared}"
    ctx.channels = channels
    plan = PRODUCERS[producer.op_type](ctx, producer)
    return plan if isinstance(plan, str) else (plan, s, t)


def fold_affine(model: ModelProto, *, rank: Callable[[str], int | None] | None = None) -> list[str]:
    """Fold per-channel (or scalar) Mul/Add/Sub/Div by a stored constant that directly follow a
    Conv, ConvTranspose or Gemm into its weight and bias, as a BN is folded (exact up to
    rounding). Returns the folded node names; chains (Conv → Mul → Add) fold one by one."""
    shapes: list[InferredShapes] = []

    def inferred_rank(name: str) -> int | None:
        if not shapes:
            shapes.append(inferred_shapes(model))
        return shapes[0].rank(name)

    fresh = FreshNames(model)
    folded: list[str] = []
    changed = True
    while changed:  # a fold changes which node follows a Conv: walk again
        changed = False
        root = Scope.build(model.graph)
        cloned: dict[tuple[int, str], int] = {}  # counts belong to this index of the graph
        for scope in root.all_scopes():
            for node in list(scope.graph.node):
                if node.op_type not in AFFINE_OPS or node.domain not in ONNX_DOMAINS:
                    continue
                ctx = _BnContext(model, scope, node, rank or inferred_rank, fresh, cloned)
                plan = _affine_plan(ctx)
                if isinstance(plan, str):
                    continue
                _apply(ctx, *plan)
                delete_nodes(scope.graph, [node])
                folded.append(node_label(node))
                changed = True
                break
            if changed:
                break
    return folded
