"""The language of channel rules: how an op treats the channel groups that reach it.

The structural pass (:mod:`onnxprune.structure.analysis`) walks the graph once; every tensor
whose axis carries *channel groups* has a :class:`Layout`: the axis, and its elements cut
into *pieces*, each either a :class:`Segment` of a group (``n × per`` elements; unit ``u`` owns
elements ``[u·per, (u+1)·per)``) or a fixed number of elements that never change. The walk
asks each node's spec (:meth:`onnxprune.ops.spec.OpSpec.channel_rule`) what to do with the
tracked inputs ``tracked: {input index: Layout}``; a rule does one of four things with each:

* carry: give an output the same channels, possibly on another axis (activations, BN,
  pooling, Transpose, Reshape, Gather on another axis …);
* join: merge groups that meet element by element (residual Add, attention MatMul batched
  over heads, Concat on another axis);
* consume: record the stored weight axis that reads the channels (Conv, Gemm, MatMul, LSTM
  input channels: a *sink*);
* block: keep the groups whole, with the reason.

:meth:`~onnxprune.ops.spec.OpSpec.channel_source` starts a new group on the output channels
of a node with a stored weight (Conv, ConvTranspose, Gemm, ``x @ W`` MatMul, recurrent hidden
units). An op whose spec has no rule blocks every group it reads ("not understood").

Dead units. A producer channel whose weights are all zero outputs a constant (its bias);
:meth:`~onnxprune.ops.spec.OpSpec.propagate_constant` maps the constants of a node's tracked
inputs (one value per element of the channel axis, NaN where not a constant) to those of an
output, the maths of each op in its family module. A rule sees the graph through a
:class:`ChannelContext` (the analysis' context); the union-find of groups, the walk and the
removal stay in :mod:`onnxprune.structure`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from onnx import NodeProto

Dims = tuple[int, ...]

# --------------------------------------------------------------------------- layouts


@dataclass(eq=False)
class Segment:
    """``n × per`` elements of one axis, owned by ``group`` (a union-find node; resolve with :meth:`root`)."""

    group: Any  # onnxprune.structure.groups.Group
    per: int

    def root(self) -> Any:
        return self.group.root()

    @property
    def length(self) -> int:
        return self.root().n * self.per


@dataclass(frozen=True)
class Layout:
    """The channel-carrying axis of one tensor and what its elements belong to."""

    axis: int
    pieces: tuple[Segment | int, ...]

    @property
    def length(self) -> int:
        return sum(p.length if isinstance(p, Segment) else p for p in self.pieces)

    def groups(self) -> list[Any]:
        out: list[Any] = []
        for p in self.pieces:
            if isinstance(p, Segment) and p.root() not in out:
                out.append(p.root())
        return out

    def moved(self, axis: int) -> Layout:
        return Layout(axis, self.pieces)


# --------------------------------------------------------------------------- what a rule sees


class ChannelContext(Protocol):
    """What a channel rule sees (:class:`onnxprune.structure.analysis.Context` implements it)."""

    layouts: dict[str, Layout]

    def label(self, node: NodeProto) -> str: ...
    def shape(self, name: str) -> Dims | None: ...
    def rank(self, name: str) -> int | None: ...
    def dims(self, name: str) -> tuple[int | str | None, ...] | None: ...
    def const(self, name: str) -> np.ndarray | None: ...
    def uses(self, name: str) -> list[Any]: ...
    def producer(self, name: str) -> NodeProto | None: ...
    def is_output(self, name: str) -> bool: ...
    def node_id(self, node: NodeProto) -> int: ...
    def onnx_opset(self) -> int: ...
    def attr(self, node: NodeProto, name: str, default: object = None) -> object: ...
    def stored(self, node: NodeProto, index: int) -> tuple[str, tuple[int, int]] | None: ...
    def stored_shape(self, name: str) -> Dims: ...
    def stored_array(self, name: str) -> np.ndarray: ...
    def new_group(self, node: NodeProto, n: int) -> Any: ...
    def coarsen(self, group: Any, k: int) -> bool: ...
    def block(self, layout: Layout | None, reason: str) -> None: ...
    def members(
        self, layout: Layout, tensor: str, axis: int, kind: str, node: NodeProto, reader: tuple[int, int]
    ) -> None: ...
    def edit(
        self, target: tuple[str, object, object], layout: Layout, reader: tuple[int, int] | None = None
    ) -> None: ...
    def set(self, name: str, layout: Layout | None) -> None: ...
    def join(self, layouts: list[Layout], why: str) -> Layout | None: ...


#: ``rule(cx, node, tracked)``: what ``node`` does with the channel groups of its tracked inputs.
ChannelRule = Callable[[ChannelContext, NodeProto, dict[int, Layout]], None]
#: ``constant(cx, node, out, values)``: the constants of output ``out``'s channel axis
#: (``values``: those of every tracked tensor so far), or None where none is known.
ConstantRule = Callable[[ChannelContext, NodeProto, str, Mapping[str, np.ndarray]], np.ndarray | None]


# --------------------------------------------------------------------------- helpers of the rules


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def only_first(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> Layout | None:
    """The layout of input 0; other tracked inputs are blocked (the op reads them whole)."""
    for index, layout in tracked.items():
        if index != 0:
            cx.block(layout, f"{node.op_type} '{cx.label(node)}' reads these channels as input {index}")
    return tracked.get(0)


def unused_outputs(cx: ChannelContext, node: NodeProto, layout: Layout, keep: int = 1) -> bool:
    """True if no output after the first ``keep`` is read; else the layout is blocked."""
    for name in node.output[keep:]:
        if name and cx.uses(name):
            cx.block(layout, f"{node.op_type} '{cx.label(node)}' has another output '{name}' in use")
            return False
    return True


def axes_of(cx: ChannelContext, node: NodeProto, position: int) -> list[int] | None:
    """Axes from attribute ``axes`` (old opsets) or the constant input at ``position``."""
    value = cx.attr(node, "axes")
    if value is None and len(node.input) > position and node.input[position]:
        const = cx.const(node.input[position])
        if const is None:
            return None
        value = const.reshape(-1).tolist()
    return None if value is None else [int(a) for a in value]  # type: ignore[union-attr]


def carry_first(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    """Elementwise on input 0 (an activation, Identity, Dropout): the output has its channels."""
    layout = only_first(cx, node, tracked)
    if layout is not None and unused_outputs(cx, node, layout):
        cx.set(node.output[0], layout)


def first_constants(
    values: Mapping[str, np.ndarray], layouts: Mapping[str, Layout], node: NodeProto
) -> np.ndarray | None:
    """The constants of input 0 when it carries channels (None otherwise)."""
    name = node.input[0] if node.input else ""
    return values.get(name) if name in layouts else None


def stored_vector(cx: ChannelContext, node: NodeProto, index: int, axis: int, length: int, out_rank: int) -> np.ndarray:
    """Values of a stored operand along output axis ``axis``, or NaN where they vary elsewhere."""
    stored = cx.stored(node, index)
    if stored is None:
        return np.full(length, np.nan)
    values = cx.stored_array(stored[0]).astype(np.float64)
    shape = values.shape
    pos = axis - (out_rank - len(shape))
    if any(d != 1 for i, d in enumerate(shape) if i != pos):
        return np.full(length, np.nan)
    if pos < 0 or shape[pos] == 1:
        return np.full(length, float(values.reshape(-1)[0]) if values.size else np.nan)
    if shape[pos] != length:  # a malformed model (onnxruntime refuses it): nothing is known
        return np.full(length, np.nan)
    return values.reshape(-1)


def padded(cx: ChannelContext, node: NodeProto) -> bool:
    """True if a windowed op (Conv, pooling) pads its input (``pads`` or ``auto_pad`` SAME_*)."""
    pads = cx.attr(node, "pads") or []
    auto = cx.attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    return any(int(p) for p in pads) or auto in ("SAME_UPPER", "SAME_LOWER")  # type: ignore[union-attr]


def reshaped_constants(src: Layout, dst: Layout, values: np.ndarray) -> np.ndarray:
    """Constants of an axis moved, merged with other axes or split (equal blocks).

    Merged with static axes after it, each element becomes ``inner`` consecutive ones
    (``np.repeat``); with static axes before it, the whole axis comes ``repeat`` times (``np.tile``:
    the Reshape rule then repeats the pieces, so ``repeat = len(dst.pieces) / len(src.pieces)``)."""
    if dst.length == src.length:
        return values
    if dst.length > src.length:
        whole = len(dst.pieces) // len(src.pieces) if src.pieces and len(dst.pieces) % len(src.pieces) == 0 else 1
        return np.tile(np.repeat(values, dst.length // (src.length * whole)), whole)
    inner = src.length // dst.length
    blocks = values.reshape(dst.length, inner)
    same = np.all(blocks == blocks[:, :1], axis=1)
    return np.where(same, blocks[:, 0], np.nan)


def moved_constants(
    cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    """Constant propagation of ops that only move elements (Transpose, Reshape, Gather, Slice …)."""
    x = first_constants(values, cx.layouts, node)
    return None if x is None else reshaped_constants(cx.layouts[node.input[0]], cx.layouts[out], x)


def same_constants(
    cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    """The output's constants are input 0's (Identity, Cast, Dropout, max pooling, max/mean reductions)."""
    return first_constants(values, cx.layouts, node)


# --------------------------------------------------------------------------- producers and consumers


def stored_weight(
    cx: ChannelContext, node: NodeProto, index: int, layout: Layout | None
) -> tuple[str, tuple[int, int]] | None:
    """The stored weight at input ``index`` that a consumer reads its channels through; None
    (and the layout blocked) if it is computed or shared with other nodes."""
    stored = cx.stored(node, index)
    if stored is None:
        cx.block(layout, f"{node.op_type} '{cx.label(node)}' has a computed weight")
        return None
    if len(cx.uses(stored[0])) > 1 or cx.is_output(stored[0]):
        cx.block(layout, f"{node.op_type} '{cx.label(node)}' shares its weight '{stored[0]}' with other nodes")
        return None
    return stored


def new_output(cx: ChannelContext, node: NodeProto, n: int, axis: int) -> Layout | None:
    """A new group of ``n`` units on ``axis`` of the node's first output (blocked if it has one)."""
    out = node.output[0]
    if out in cx.layouts:
        cx.block(cx.layouts[out], f"{node.op_type} '{cx.label(node)}' would carry channels on two axes")
        return None
    group = cx.new_group(node, n)
    layout = Layout(axis, (group.segment(1),))
    cx.set(out, layout)
    return layout


def output_bias(cx: ChannelContext, node: NodeProto, index: int, layout: Layout, n: int) -> bool:
    """Record a stored per-output bias at input ``index``; False (blocked) if it cannot be sliced."""
    if len(node.input) <= index or not node.input[index]:
        return True
    stored = cx.stored(node, index)
    shape = cx.shape(node.input[index])
    if stored is None or shape is None:
        cx.block(layout, f"{node.op_type} '{cx.label(node)}' has a computed bias")
        return False
    if shape and shape[-1] == n:
        cx.members(layout.moved(len(shape) - 1), stored[0], len(shape) - 1, "out", node, stored[1])
    return True


def zero_output_constants(cx: ChannelContext, node: NodeProto, axis: int, length: int, bias: np.ndarray) -> np.ndarray:
    """A producer's output channels: ``bias`` where the weight slice (``axis`` of input 1) is all zero, else NaN."""
    stored = cx.stored(node, 1)
    if stored is None:
        return np.full(length, np.nan)
    w = cx.stored_array(stored[0])
    axis = w.ndim - 1 if axis < 0 else axis
    if not 0 <= axis < w.ndim or w.shape[axis] != length or np.shape(bias) != (length,):
        return np.full(length, np.nan)  # the weight does not make these channels (dims or attributes amiss)
    flat = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    zero = ~np.any(flat != 0, axis=1)
    out = np.full(length, np.nan)
    out[zero] = bias[zero]
    return out


def shape_entry(
    cx: ChannelContext, node: NodeProto, j: int, position: int = 1
) -> tuple[str, int, int, tuple[int, int]] | None:
    """(stored tensor, index, value, reader) of entry ``j`` of the shape input at ``position``
    (a Reshape's shape, a ConstantOfShape's): stored, or a Concat of pieces one of which is."""
    stored = cx.stored(node, position)
    if stored is not None:
        value = cx.const(stored[0]).reshape(-1)  # type: ignore[union-attr]
        return stored[0], j, int(value[j]), stored[1]
    producer = cx.producer(node.input[position])
    if producer is None or producer.op_type != "Concat":
        return None
    offset = 0
    for k, name in enumerate(producer.input):
        shape = cx.shape(name)
        if shape is None or len(shape) != 1:
            return None
        if offset <= j < offset + shape[0]:
            piece = cx.stored(producer, k)
            if piece is None:
                return None
            value = cx.const(piece[0]).reshape(-1)  # type: ignore[union-attr]
            return piece[0], j - offset, int(value[j - offset]), piece[1]
        offset += shape[0]
    return None
