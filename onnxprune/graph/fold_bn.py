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

The folds are edits on a gs graph (:class:`~onnxprune.graph.gs_edit.EditGraph`): gs keeps
every tensor's producer and readers current as the folds rewire the graph, so a chain of
folds (Conv → Mul → Add) needs no re-index between them, and a weight shared with another
reader is copied exactly when it still is shared. BN parameters a fold leaves unread stay in
the model for :func:`~onnxprune.graph.cleanup.cleanup` to drop (and count).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs
from onnx import ModelProto, NodeProto

from onnxprune.graph.edit import InferredShapes, inferred_shapes
from onnxprune.graph.gs_edit import EditGraph
from onnxprune.ops import registered, spec_of
from onnxprune.ops.spec import ChannelFold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Stored:
    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Fold:
    """How a BN folds: ``weight`` (input ``channel.weight_input`` of ``producer``) is scaled as
    ``channel`` says, the bias is input ``bias_index`` of ``bias_node`` (stored ``bias``, or
    None: created), and ``bias_node``'s output takes the BN's output. No ``bias_node``: the
    BN becomes an Add."""

    producer: gs.Node
    channel: ChannelFold
    weight: _Stored
    bias_node: gs.Node | None
    bias_index: int = 2
    bias: _Stored | None = None


@dataclass
class _BnContext:
    graph: EditGraph
    home: gs.Graph  # the graph (main or a subgraph) that holds the node being folded
    bn: gs.Node
    rank: Callable[[str], int | None]
    channels: int = 0

    @property
    def affine(self) -> gs.Node:
        """The node being folded (a BN, or a per-channel Mul/Add/Sub/Div)."""
        return self.bn

    def proto(self, node: gs.Node) -> NodeProto:
        return self.graph.proto(node)

    def producer(self, tensor: gs.Tensor) -> gs.Node | None:
        """The node of the same graph that computes ``tensor``."""
        return self.graph.producer(tensor, self.home)

    def stored(self, node: gs.Node, index: int, what: str) -> _Stored | str | None:
        """The stored tensor ``node`` reads at ``index``, why it does not fit, or None if absent."""
        name = node.inputs[index].name if len(node.inputs) > index else ""
        if not name:
            return None
        constant = self.graph.constant(name)
        if constant is None:
            return f"its {what} '{name}' is computed at run time, not stored"
        if name in self.graph.overridable:
            return f"its {what} '{name}' is also a graph input (it may be overridden at run time)"
        if self.graph.is_external(name):
            return f"the data of its {what} '{name}' is external and not loaded"
        if self.graph.dtype(name) is None:
            return f"its {what} '{name}' is not a float tensor"
        return _Stored(name, tuple(int(d) for d in constant.shape))

    def weight(self, node: gs.Node, channel: ChannelFold) -> _Stored | str:
        """The weight of ``node``, with the BN's channel count as ``channel`` lays it out."""
        weight = self.stored(node, channel.weight_input, "weight")
        if weight is None or isinstance(weight, str):
            return weight or f"{EditGraph.label(node)} has no weight"
        dims = list(weight.shape)
        if channel.out_channels(dims) != self.channels:
            if channel.groups is not None:
                return f"its weight {dims} with group={channel.groups} does not give the BN's {self.channels} channels"
            return f"its weight {dims} does not have the BN's {self.channels} output channels on axis {channel.axis}"
        return weight

    def only_reader(self, tensor: gs.Tensor, reader: gs.Node) -> str | None:
        """Why ``tensor`` is not read by ``reader`` alone (None if it is)."""
        if self.graph.is_output(tensor.name):
            return f"'{tensor.name}' is also a graph output"
        others = [EditGraph.label(n) for n in tensor.outputs if n is not reader]
        return f"'{tensor.name}' is also read by {', '.join(others)}" if others else None


def _fold_into(ctx: _BnContext, node: gs.Node, channel: ChannelFold, add: gs.Node | None = None) -> _Fold | str:
    """The fold into producer ``node`` laid out as ``channel``, its bias in ``add`` if it has none."""
    if channel.output_rank is not None:
        rank = ctx.rank(ctx.affine.inputs[0].name)
        if rank != channel.output_rank:
            return (
                f"the {node.op} output has rank {rank or 'unknown'}, not {channel.output_rank}: "
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
    index = 1 if any(add.inputs[0] is out for out in node.outputs) else 0
    bias = ctx.stored(add, index, "bias")
    if not isinstance(bias, _Stored):
        return bias or f"its {add.op} has no bias"
    return _Fold(node, channel, weight, add, index, bias)


def _bias_add_fold(ctx: _BnContext, node: gs.Node) -> _Fold | str:
    """``node`` adds a stored bias to a producer that has no bias input (a MatMul): fold into both."""
    for tensor in node.inputs[:2]:
        linear = ctx.producer(tensor)
        proto = ctx.proto(linear) if linear is not None else None
        channel = spec_of(proto).output_channel_fold(proto) if proto is not None else None
        if linear is not None and channel is not None and channel.bias_input is None:
            shared = ctx.only_reader(tensor, node)
            return f"the {linear.op} output {shared}" if shared else _fold_into(ctx, linear, channel, node)
    return f"producer is {node.op} (not of a MatMul)"


def folds_into(node: NodeProto) -> bool:
    """A per-channel map of ``node``'s output folds into it (or into it and its bias Add)."""
    spec = spec_of(node)
    return spec.output_channel_fold(node) is not None or spec.adds_bias


def _producer_fold(ctx: _BnContext, node: gs.Node) -> _Fold | str:
    proto = ctx.proto(node)
    channel = spec_of(proto).output_channel_fold(proto)
    return _bias_add_fold(ctx, node) if channel is None else _fold_into(ctx, node, channel)


#: The ONNX ops a BN folds into, as the op table answers (:func:`folds_into`).
PRODUCERS: tuple[str, ...] = tuple(
    op for domain, op in registered() if not domain and folds_into(NodeProto(op_type=op))
)


def _bn_plan(ctx: _BnContext) -> tuple[_Fold, np.ndarray, np.ndarray] | str | None:
    """The fold of a BN (None: the node is no BN-like per-channel map), or why it stays."""
    bn, graph = ctx.bn, ctx.graph

    def read(index: int, what: str) -> np.ndarray | str:
        stored = ctx.stored(bn, index, what)
        if not isinstance(stored, _Stored):
            return stored or f"it has no {what}"
        return graph.values(stored.name).astype(np.float64)

    others_read = any(out.name and (graph.uses(out.name) or graph.is_output(out.name)) for out in bn.outputs[1:])
    proto = ctx.proto(bn)
    affine = spec_of(proto).channel_affine(proto, read, others_read)
    if affine is None or isinstance(affine, str):
        return affine
    s, t = affine
    ctx.channels = s.shape[0]
    producer = ctx.producer(bn.inputs[0])
    if producer is None:
        return f"its input '{bn.inputs[0].name}' is not computed by a node of its graph"
    if not folds_into(ctx.proto(producer)):
        return f"producer is {producer.op}"
    shared = ctx.only_reader(bn.inputs[0], bn)
    if shared:
        return f"its input {shared}"
    plan = _producer_fold(ctx, producer)
    if isinstance(plan, str):
        return plan
    return plan, s, t


def _apply(ctx: _BnContext, fold: _Fold, s: np.ndarray, t: np.ndarray) -> bool:
    """Edit the graph as ``fold`` says (see the module docstring for the maths); True when the
    folded node stays, as the bias Add of a producer that has no bias input."""
    graph, bn, channel = ctx.graph, ctx.bn, fold.channel
    weight = graph.own_at(fold.producer, channel.weight_input)
    values = graph.values(weight)
    graph.set_values(weight, channel.scale(values.astype(np.float64), s).astype(values.dtype))
    bias = graph.values(fold.bias.name) if fold.bias else np.zeros(s.shape, values.dtype)
    new_bias = (bias.astype(np.float64) * channel.bias_gain * s + t).astype(bias.dtype)
    if fold.bias is not None and fold.bias_node is not None:
        graph.set_values(graph.own_at(fold.bias_node, fold.bias_index), new_bias)
    else:
        created = graph.add_constant(f"{fold.weight.name}_bias", new_bias)
        if fold.bias_node is None:  # MatMul without Add: the BN node becomes the Add
            while len(bn.inputs) > 1:  # gs's linked lists take no slice deletion
                bn.inputs.pop()
            while len(bn.outputs) > 1:
                bn.outputs.pop()
            bn.inputs.append(created)
            bn.attrs.clear()
            bn.op, bn.domain, bn.name = "Add", "", f"{EditGraph.label(fold.producer)}_bias"
            graph.touch(bn)
            return True
        graph.set_input(fold.bias_node, fold.bias_index, created)
    if channel.bias_gain_attr in fold.producer.attrs:  # Gemm: beta·C is in the new C
        fold.producer.attrs[channel.bias_gain_attr] = 1.0
        graph.touch(fold.producer)
    out = bn.outputs[0]
    bn.outputs.clear()
    fold.bias_node.outputs[0] = out
    return False


def _ranks(model: ModelProto, rank: Callable[[str], int | None] | None) -> Callable[[str], int | None]:
    """``rank``, or shape inference on ``model`` run once, on first use (only a MatMul producer asks)."""
    if rank is not None:
        return rank
    shapes: list[InferredShapes] = []

    def inferred_rank(name: str) -> int | None:
        if not shapes:
            shapes.append(inferred_shapes(model))
        return shapes[0].rank(name)

    return inferred_rank


def fold_batchnorm(
    model: ModelProto | EditGraph, *, rank: Callable[[str], int | None] | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Fold every foldable BatchNormalization of ``model`` (in place) into its producer.

    ``rank`` gives the rank of a value (None if unknown); it is asked only for a MatMul
    producer, and by default runs shape inference on the model (as given) once, on first use.
    ``model`` may be an open :class:`EditGraph`: the folds are then left for its owner to commit.
    Returns the folded BN node names and ``(BN node, why it was kept)`` for the others.
    Unread BN parameters are left for :func:`~onnxprune.graph.cleanup.cleanup` to remove.
    """
    graph = model if isinstance(model, EditGraph) else EditGraph(model)
    ranks = _ranks(graph.model, rank)
    folded: list[str] = []
    kept: list[tuple[str, str]] = []
    for home in graph.graphs:
        for bn in list(home.nodes):
            ctx = _BnContext(graph, home, bn, ranks)
            plan = _bn_plan(ctx)
            if plan is None:
                continue
            label = EditGraph.label(bn)
            if isinstance(plan, str):
                log.info("%s %s kept: %s", bn.op, label, plan)
                kept.append((label, plan))
                continue
            if not _apply(ctx, *plan):
                graph.remove(bn, home)
            folded.append(label)
    if graph is not model:
        graph.commit()
    return folded, kept


def _own_bias_fold(node: NodeProto) -> ChannelFold | None:
    """How a map folds into ``node`` alone (it has a bias input of its own); None: it does not."""
    channel = spec_of(node).output_channel_fold(node)
    return channel if channel is not None and channel.bias_input is not None else None


def _affine_plan(ctx: _BnContext) -> tuple[_Fold, np.ndarray, np.ndarray] | str:
    """``x ∘ c`` (∘ = ·, +, −, ÷) right after a Conv/ConvTranspose/Gemm, ``c`` a stored constant
    that is a scalar or varies along the channel axis (1) only: the ``s, t`` of ``y = s·x + t``."""
    node = ctx.affine
    proto = ctx.proto(node)
    spec = spec_of(proto)
    producers = [(i, ctx.producer(tensor)) for i, tensor in enumerate(node.inputs[:2])]
    found = [(i, p, f) for i, p in producers if p is not None and (f := _own_bias_fold(ctx.proto(p))) is not None]
    if len(found) != 1 or len(node.inputs) != 2:
        return "not right after a Conv, ConvTranspose or Gemm"
    index, producer, channel = found[0]
    if index not in spec.affine_inputs(proto):
        return "the constant is on the wrong side"
    constant = ctx.stored(node, 1 - index, "constant")
    if not isinstance(constant, _Stored):
        return constant or "no constant operand"
    weight = ctx.stored(producer, channel.weight_input, "weight")
    channels = channel.out_channels(list(weight.shape)) if isinstance(weight, _Stored) else None
    out_rank = ctx.rank(producer.outputs[0].name)
    c = ctx.graph.values(constant.name).astype(np.float64)
    if channels is None or out_rank is None or c.ndim > out_rank:
        return "unknown channel count or rank"
    shape = (1,) * (out_rank - c.ndim) + c.shape
    if any(d != 1 for axis, d in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return f"the constant {list(c.shape)} is not per channel"
    vector = np.broadcast_to(c.reshape(-1), (channels,)) if c.size == 1 else c.reshape(-1)
    affine = spec.constant_affine(proto, vector)
    if isinstance(affine, str):
        return affine
    s, t = affine
    shared = ctx.only_reader(producer.outputs[0], node)
    if shared:
        return f"its input {shared}"
    ctx.channels = channels
    plan = _fold_into(ctx, producer, channel)
    return plan if isinstance(plan, str) else (plan, s, t)


def fold_affine(model: ModelProto | EditGraph, *, rank: Callable[[str], int | None] | None = None) -> list[str]:
    """Fold per-channel (or scalar) Mul/Add/Sub/Div by a stored constant that directly follow a
    Conv, ConvTranspose or Gemm into its weight and bias, as a BN is folded (exact up to
    rounding). Returns the folded node names; chains (Conv → Mul → Add) fold one by one, in
    graph order (gs keeps the links current, so each fold sees the ones before it)."""
    graph = model if isinstance(model, EditGraph) else EditGraph(model)
    ranks = _ranks(graph.model, rank)
    folded: list[str] = []
    for home in graph.graphs:
        for node in list(home.nodes):
            proto = graph.proto(node)
            if not spec_of(proto).affine_inputs(proto):
                continue
            ctx = _BnContext(graph, home, node, ranks)
            plan = _affine_plan(ctx)
            if isinstance(plan, str):
                continue
            _apply(ctx, *plan)
            graph.remove(node, home)
            folded.append(EditGraph.label(node))
    if graph is not model:
        graph.commit()
    return folded
