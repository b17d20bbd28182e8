"""BatchNormalization folding: a BN after a Conv, ConvTranspose, Gemm or MatMul (+ Add) is
folded into its producer's weight and bias; so is a Mul/Add/Sub/Div by a per-channel constant
right after a Conv, ConvTranspose or Gemm.

Both are a per-channel affine map ``y_c = s_c · x_c + t_c`` of the producer's output along
axis 1: what ``s`` and ``t`` are is the folded op's answer in the op table (BN:
:meth:`~onnxprune.ops.spec.OpSpec.channel_affine`, ``s = γ / √(σ² + ε)``, ``t = β − μ·s``, in
:mod:`onnxprune.ops.normalization`; Mul/Add/Sub/Div:
:meth:`~onnxprune.ops.spec.OpSpec.constant_affine`, in :mod:`onnxprune.ops.broadcast`).

When ``x`` is the output of a producer that is linear in its weight per output channel,
``x_c = W_c · in + b_c``, the map folds into it: ``y_c = (s_c W_c) · in + (s_c b_c + t_c)``,
so ``W' = s ⊙ W`` along the output-channel axis and ``b' = s·b + t`` (a missing bias is 0 and
is created). The output-channel axis, how ``W`` is scaled along it, where the bias is and its
gain are the producer's :meth:`~onnxprune.ops.spec.OpSpec.output_channel_fold` (a
:class:`~onnxprune.ops.spec.ChannelFold`: Conv axis 0, ConvTranspose its grouped axis 1, Gemm
``transB``'s axis with ``beta`` folded into ``C``, MatMul the last axis of a 2-D ``B`` with a
2-D output and no bias input of its own: its bias is the stored operand of a following Add,
or the BN becomes that Add). An affine op folds only into a producer with a bias input.

Assumptions: the producer's output is read by the folded node only. Everything is computed in
float64 and rounded once to the stored dtype, so a float16 model agrees with its unfused self
to float16 rounding. A weight or bias read by another node too is cloned before it is edited.
The producer's output takes the folded node's output name, so every reader (and a graph
output) is unchanged. A BN that cannot be folded is kept, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto

from onnxprune.graph.edit import (
    FreshNames,
    InferredShapes,
    delete_nodes,
    inferred_shapes,
    is_external,
    overridable,
)
from onnxprune.graph.index import Scope, node_label
from onnxprune.graph.tensors import FLOAT_TYPES, read_array, write_array
from onnxprune.ops import registered, spec_of
from onnxprune.ops.spec import ChannelFold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Stored:
    scope: Scope  # the scope that defines the tensor
    name: str
    tensor: TensorProto


@dataclass(frozen=True)
class _Fold:
    """How a BN folds: ``weight`` (input ``channel.weight_input`` of ``producer``) is scaled as
    ``channel`` says, the bias is input ``bias_index`` of ``bias_node`` (stored ``bias``, or
    None: created), and ``bias_node``'s output takes the BN's output name. No ``bias_node``:
    the BN becomes an Add."""

    producer: NodeProto
    channel: ChannelFold
    weight: _Stored
    bias_node: NodeProto | None
    bias_index: int = 2
    bias: _Stored | None = None


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

    def weight(self, node: NodeProto, channel: ChannelFold) -> _Stored | str:
        """The weight of ``node``, with the BN's channel count as ``channel`` lays it out."""
        weight = self.stored(node, channel.weight_input, "weight")
        if weight is None or isinstance(weight, str):
            return weight or f"{node_label(node)} has no weight"
        dims = list(weight.tensor.dims)
        if channel.out_channels(dims) != self.channels:
            if channel.groups is not None:
                return f"its weight {dims} with group={channel.groups} does not give the BN's {self.channels} channels"
            return f"its weight {dims} does not have the BN's {self.channels} output channels on axis {channel.axis}"
        return weight

    def only_reader(self, name: str, reader: NodeProto) -> str | None:
        """Why ``name`` is not read by ``reader`` alone (None if it is)."""
        if self.scope.is_output(name):
            return f"'{name}' is also a graph output"
        others = [node_label(u.node) for u in self.scope.uses.get(name, []) if u.node is not reader]
        return f"'{name}' is also read by {', '.join(others)}" if others else None

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


def _fold_into(ctx: _BnContext, node: NodeProto, channel: ChannelFold, add: NodeProto | None = None) -> _Fold | str:
    """The fold into producer ``node`` laid out as ``channel``, its bias in ``add`` if it has none."""
    if channel.output_rank is not None:
        rank = ctx.rank(ctx.affine.input[0])
        if rank != channel.output_rank:
            return (
                f"the {node.op_type} output has rank {rank or 'unknown'}, not {channel.output_rank}: "
                "BN's channel axis is not its last axis"
            )
    weight = ctx.weight(node, channel)
    if isinstance(weight, str):
        return weight
    if channel.bias_input is not None:
        bias = ctx.stored(node, channel.bias_input, "bias")
        return bias if isinstance(bias, str) else _Fold(node, channel, weight, node, channel.bias_input, bias)
    if add is None:
        return _Fold(node, channel, weight, None)
    index = 1 if add.input[0] in node.output else 0
    bias = ctx.stored(add, index, "bias")
    if not isinstance(bias, _Stored):
        return bias or f"its {add.op_type} has no bias"
    return _Fold(node, channel, weight, add, index, bias)


def _bias_add_fold(ctx: _BnContext, node: NodeProto) -> _Fold | str:
    """``node`` adds a stored bias to a producer that has no bias input (a MatMul): fold into both."""
    for name in node.input[:2]:
        linear = ctx.scope.producers.get(name)
        channel = spec_of(linear).output_channel_fold(linear) if linear is not None else None
        if linear is not None and channel is not None and channel.bias_input is None:
            shared = ctx.only_reader(name, node)
            return f"the {linear.op_type} output {shared}" if shared else _fold_into(ctx, linear, channel, node)
    return f"producer is {node.op_type} (not of a MatMul)"


def folds_into(node: NodeProto) -> bool:
    """A per-channel map of ``node``'s output folds into it (or into it and its bias Add)."""
    spec = spec_of(node)
    return spec.output_channel_fold(node) is not None or spec.adds_bias


def _producer_fold(ctx: _BnContext, node: NodeProto) -> _Fold | str:
    channel = spec_of(node).output_channel_fold(node)
    return _bias_add_fold(ctx, node) if channel is None else _fold_into(ctx, node, channel)


#: The ONNX ops a BN folds into, as the op table answers (:func:`folds_into`).
PRODUCERS: tuple[str, ...] = tuple(
    op for domain, op in registered() if not domain and folds_into(NodeProto(op_type=op))
)


def _bn_plan(ctx: _BnContext) -> tuple[_Fold, np.ndarray, np.ndarray] | str | None:
    """The fold of a BN (None: the node is no BN-like per-channel map), or why it stays."""
    bn, scope = ctx.bn, ctx.scope

    def read(index: int, what: str) -> np.ndarray | str:
        stored = ctx.stored(bn, index, what)
        if not isinstance(stored, _Stored):
            return stored or f"it has no {what}"
        return read_array(stored.tensor).astype(np.float64)

    others_read = any(out and (scope.uses.get(out) or scope.is_output(out)) for out in bn.output[1:])
    affine = spec_of(bn).channel_affine(bn, read, others_read)
    if affine is None or isinstance(affine, str):
        return affine
    s, t = affine
    ctx.channels = s.shape[0]
    producer = scope.producers.get(bn.input[0])
    if producer is None:
        return f"its input '{bn.input[0]}' is not computed by a node of its graph"
    if not folds_into(producer):
        return f"producer is {producer.op_type}"
    shared = ctx.only_reader(bn.input[0], bn)
    if shared:
        return f"its input {shared}"
    plan = _producer_fold(ctx, producer)
    if isinstance(plan, str):
        return plan
    return plan, s, t


def _set(tensor: TensorProto, values: np.ndarray) -> None:
    del tensor.dims[:]
    tensor.dims.extend(values.shape)
    write_array(tensor, values)


def _apply(ctx: _BnContext, fold: _Fold, s: np.ndarray, t: np.ndarray) -> bool:
    """Edit the graph as ``fold`` says (see the module docstring for the maths); True when the
    folded node stays, as the bias Add of a producer that has no bias input."""
    bn, channel = ctx.bn, fold.channel
    weight = ctx.own(fold.weight, fold.producer, channel.weight_input)
    values = read_array(weight)
    write_array(weight, channel.scale(values.astype(np.float64), s).astype(values.dtype))
    bias = read_array(fold.bias.tensor) if fold.bias else np.zeros(s.shape, values.dtype)
    new_bias = (bias.astype(np.float64) * channel.bias_gain * s + t).astype(bias.dtype)
    if fold.bias is not None and fold.bias_node is not None:
        _set(ctx.own(fold.bias, fold.bias_node, fold.bias_index), new_bias)
    else:
        name = ctx.fresh(f"{fold.weight.name}_bias")
        _set(ctx.scope.graph.initializer.add(name=name, data_type=fold.weight.tensor.data_type), new_bias)
        if fold.bias_node is None:  # MatMul without Add: the BN node becomes the Add
            del bn.attribute[:], bn.input[1:], bn.output[1:]
            bn.op_type, bn.domain, bn.name = "Add", "", f"{node_label(fold.producer)}_bias"
            bn.input.append(name)
            return True
        inputs = fold.bias_node.input
        inputs.extend([""] * (fold.bias_index + 1 - len(inputs)))
        inputs[fold.bias_index] = name
    for attr in fold.producer.attribute:
        if attr.name == channel.bias_gain_attr:  # Gemm: beta·C is in the new C
            attr.f = 1.0
    fold.bias_node.output[0] = bn.output[0]
    return False


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
            ctx = _BnContext(model, scope, bn, rank or inferred_rank, fresh, cloned)
            plan = _bn_plan(ctx)
            if plan is None:
                continue
            label = node_label(bn)
            if isinstance(plan, str):
                log.info("%s %s kept: %s", bn.op_type, label, plan)
                kept.append((label, plan))
                continue
            if not _apply(ctx, *plan):
                removed.append(bn)
            folded.append(label)
        delete_nodes(scope.graph, removed)
    return folded, kept


def _own_bias_fold(node: NodeProto) -> ChannelFold | None:
    """How a map folds into ``node`` alone (it has a bias input of its own); None: it does not."""
    channel = spec_of(node).output_channel_fold(node)
    return channel if channel is not None and channel.bias_input is not None else None


def _affine_plan(ctx: _BnContext) -> tuple[_Fold, np.ndarray, np.ndarray] | str:
    """``x ∘ c`` (∘ = ·, +, −, ÷) right after a Conv/ConvTranspose/Gemm, ``c`` a stored constant
    that is a scalar or varies along the channel axis (1) only: the ``s, t`` of ``y = s·x + t``."""
    node, scope = ctx.affine, ctx.scope
    spec = spec_of(node)
    producers = [(i, scope.producers.get(name)) for i, name in enumerate(node.input[:2])]
    found = [(i, p, f) for i, p in producers if p is not None and (f := _own_bias_fold(p)) is not None]
    if len(found) != 1 or len(node.input) != 2:
        return "not right after a Conv, ConvTranspose or Gemm"
    index, producer, channel = found[0]
    if index not in spec.affine_inputs(node):
        return "the constant is on the wrong side"
    constant = ctx.stored(node, 1 - index, "constant")
    if not isinstance(constant, _Stored):
        return constant or "no constant operand"
    weight = ctx.stored(producer, channel.weight_input, "weight")
    channels = channel.out_channels(list(weight.tensor.dims)) if isinstance(weight, _Stored) else None
    out_rank = ctx.rank(producer.output[0])
    c = read_array(constant.tensor).astype(np.float64)
    if channels is None or out_rank is None or c.ndim > out_rank:
        return "unknown channel count or rank"
    shape = (1,) * (out_rank - c.ndim) + c.shape
    if any(d != 1 for axis, d in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return f"the constant {list(c.shape)} is not per channel"
    vector = np.broadcast_to(c.reshape(-1), (channels,)) if c.size == 1 else c.reshape(-1)
    affine = spec.constant_affine(node, vector)
    if isinstance(affine, str):
        return affine
    s, t = affine
    shared = ctx.only_reader(producer.output[0], node)
    if shared:
        return f"its input {shared}"
    ctx.channels = channels
    plan = _fold_into(ctx, producer, channel)
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
                if not spec_of(node).affine_inputs(node):
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
