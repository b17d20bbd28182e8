"""Per-op knowledge, as small handlers in two registries.

``SLOT_RULES[op_type](ctx) -> Slot`` says what a stored tensor is to the node that reads
it at input ``ctx.index``: a *weight* (with its output-channel axis and its reduction
axis, in the coordinates of the tensor as the node sees it), a bias, a normalization
parameter, an embedding table, or something else.

``WEIGHT_INPUTS[op_type]`` lists the inputs of ops whose weight should be a stored
tensor, so that discovery can report one computed at run time instead.

``TRANSFORMS[op_type](ctx) -> Transform | None`` describes ops that merely move a stored
tensor on its way to a weight input (Identity, Cast, Transpose, Reshape, Unsqueeze,
Squeeze, Flatten, Slice, Split, Concat, DequantizeLinear): how each output axis maps to
an input axis, and the output shape (the same for every output of a multi-output op such
as Split). ``None`` means the op is not transparent for that input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, helper

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class Slot:
    role: str  # "weight" | "bias" | "norm" | "embedding" | "other"
    out_axis: int | None = None
    in_axis: int | None = None


OTHER = Slot("other")
BIAS = Slot("bias")
NORM = Slot("norm")
#: A read of the shape only (Shape, Size): pruning keeps shapes, so it does not count.
SHAPE_ONLY = Slot("shape")


@dataclass(frozen=True)
class SlotContext:
    node: NodeProto
    index: int
    rank: int | None
    producer_op: Callable[[str], str | None]

    def attr(self, name: str, default: object = None) -> object:
        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default


SLOT_RULES: dict[str, Callable[[SlotContext], Slot]] = {}


def _slots(*op_types: str) -> Callable[[Callable[[SlotContext], Slot]], Callable[[SlotContext], Slot]]:
    def register(rule: Callable[[SlotContext], Slot]) -> Callable[[SlotContext], Slot]:
        for op in op_types:
            SLOT_RULES[op] = rule
        return rule

    return register


@_slots("Conv")
def _conv(ctx: SlotContext) -> Slot:
    # W: [C_out, C_in/groups, k...]; the reduction runs over C_in at each kernel position.
    return {1: Slot("weight", 0, 1), 2: BIAS}.get(ctx.index, OTHER)


@_slots("ConvTranspose")
def _conv_transpose(ctx: SlotContext) -> Slot:
    # W: [C_in, C_out/groups, k...]; the reduction runs over C_in.
    return {1: Slot("weight", 1, 0), 2: BIAS}.get(ctx.index, OTHER)


@_slots("Gemm")
def _gemm(ctx: SlotContext) -> Slot:
    # Y = op(A)·op(B) + C with op(A): [M, K], op(B): [K, N].
    if ctx.index == 1:
        return Slot("weight", 0, 1) if ctx.attr("transB", 0) else Slot("weight", 1, 0)
    if ctx.index == 0:
        return Slot("weight", 1, 0) if ctx.attr("transA", 0) else Slot("weight", 0, 1)
    return BIAS


@_slots("MatMul")
def _matmul(ctx: SlotContext) -> Slot:
    # Y = A·B with A: [..., M, K], B: [..., K, N]; a 1-D operand has only the K axis.
    if ctx.rank is None:
        return Slot("weight")
    if ctx.index == 1:
        return Slot("weight", ctx.rank - 1, ctx.rank - 2) if ctx.rank >= 2 else Slot("weight", None, 0)
    if ctx.index == 0:
        return Slot("weight", ctx.rank - 2, ctx.rank - 1) if ctx.rank >= 2 else Slot("weight", None, 0)
    return OTHER


@_slots("LSTM", "GRU", "RNN")
def _recurrent(ctx: SlotContext) -> Slot:
    # W: [num_directions, gates·hidden, input], R: [num_directions, gates·hidden, hidden].
    if ctx.index in (1, 2):
        return Slot("weight", 1, 2)
    if ctx.index == 3 or (ctx.node.op_type == "LSTM" and ctx.index == 7):
        return BIAS  # B, and the LSTM peephole weights P
    return OTHER


@_slots("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization")
def _norm(ctx: SlotContext) -> Slot:
    return NORM if ctx.index >= 1 else OTHER


@_slots("Gather", "GatherElements")
def _gather(ctx: SlotContext) -> Slot:
    return Slot("embedding") if ctx.index == 0 else OTHER


@_slots("Shape", "Size")
def _shape_only(ctx: SlotContext) -> Slot:
    # Exporters read a weight's shape (``weight.size(0)`` in torch); zeros do not change it.
    return SHAPE_ONLY


@_slots("Add")
def _add(ctx: SlotContext) -> Slot:
    # MatMul + Add is how exporters write a linear layer with a bias.
    other = ctx.node.input[1 - ctx.index] if len(ctx.node.input) == 2 else ""
    return BIAS if ctx.producer_op(other) in ("MatMul", "Gemm", "Conv", "ConvTranspose") else OTHER


#: Inputs of ops whose weight should be a stored tensor, in groups: a group is satisfied
#: when a stored tensor reaches any one of its inputs (Gemm may hold its weight as A or
#: as B); the first input of an unsatisfied group is reported as computed at run time.
WEIGHT_INPUTS: dict[str, tuple[tuple[int, ...], ...]] = {
    "Conv": ((1,),),
    "ConvTranspose": ((1,),),
    "Gemm": ((1, 0),),
    "LSTM": ((1,), (2,)),
    "GRU": ((1,), (2,)),
    "RNN": ((1,), (2,)),
}


# ---------------------------------------------------------------------------------------
# Transparent ops


@dataclass(frozen=True)
class Transform:
    axis_map: tuple[int | None, ...]  # output axis -> input axis (None: no single one)
    shape: Shape  # output shape (None for unknown dims)
    quantized: bool = False


@dataclass(frozen=True)
class TransformContext:
    node: NodeProto
    index: int
    shape: Shape
    const: Callable[[str], np.ndarray | None]

    def attr(self, name: str, default: object = None) -> object:
        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def axes_input(self, position: int) -> list[int] | None:
        """Axes from attribute ``axes`` (old opsets) or constant input ``position``."""
        value = self.attr("axes")
        if value is None and len(self.node.input) > position and self.node.input[position]:
            const = self.const(self.node.input[position])
            value = None if const is None else const.reshape(-1).tolist()
        return None if value is None else [int(a) for a in value]


TRANSFORMS: dict[str, Callable[[TransformContext], Transform | None]] = {}


def _transform(
    *op_types: str,
) -> Callable[[Callable[[TransformContext], Transform | None]], Callable[[TransformContext], Transform | None]]:
    def register(
        rule: Callable[[TransformContext], Transform | None],
    ) -> Callable[[TransformContext], Transform | None]:
        for op in op_types:
            TRANSFORMS[op] = rule
        return rule

    return register


def _identity_map(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


@_transform("Identity", "Cast", "CastLike")
def _same(ctx: TransformContext) -> Transform | None:
    if ctx.index != 0:
        return None
    return Transform(_identity_map(len(ctx.shape)), ctx.shape)


@_transform("DequantizeLinear")
def _dequantize(ctx: TransformContext) -> Transform | None:
    if ctx.index != 0:
        return None
    return Transform(_identity_map(len(ctx.shape)), ctx.shape, quantized=True)


@_transform("Transpose")
def _transpose(ctx: TransformContext) -> Transform | None:
    rank = len(ctx.shape)
    perm = ctx.attr("perm") or list(reversed(range(rank)))
    return Transform(tuple(int(p) for p in perm), tuple(ctx.shape[p] for p in perm))


@_transform("Unsqueeze")
def _unsqueeze(ctx: TransformContext) -> Transform | None:
    if ctx.index != 0:
        return None
    axes = ctx.axes_input(1)
    if axes is None:
        return None
    out_rank = len(ctx.shape) + len(axes)
    inserted = {a % out_rank for a in axes}
    source = iter(range(len(ctx.shape)))
    axis_map = tuple(None if j in inserted else next(source) for j in range(out_rank))
    shape = tuple(1 if m is None else ctx.shape[m] for m in axis_map)
    return Transform(axis_map, shape)


@_transform("Squeeze")
def _squeeze(ctx: TransformContext) -> Transform | None:
    if ctx.index != 0:
        return None
    rank = len(ctx.shape)
    axes = ctx.axes_input(1)
    if axes is None:
        axes = [i for i, d in enumerate(ctx.shape) if d == 1]
    removed = {a % rank for a in axes}
    axis_map = tuple(i for i in range(rank) if i not in removed)
    return Transform(axis_map, tuple(ctx.shape[i] for i in axis_map))


def reshape_axis_map(src: Shape, dst: Shape) -> tuple[int | None, ...]:
    """Map axes of a C-order reshape: output axis j is input axis i when both have the
    same length and the same number of elements after them (so every index along j is an
    index along i). Other output axes merge or split input axes and map to None."""

    def suffix(shape: Shape) -> list[int | None]:
        out: list[int | None] = []
        acc: int | None = 1
        for d in reversed(shape):
            out.append(acc)
            acc = None if acc is None or d is None else acc * d
        return list(reversed(out))

    src_suffix, dst_suffix = suffix(src), suffix(dst)
    mapping: list[int | None] = []
    for j, d in enumerate(dst):
        match = None
        for i, s in enumerate(src):
            if d is not None and d == s and dst_suffix[j] is not None and dst_suffix[j] == src_suffix[i]:
                match = i
                break
        mapping.append(match)
    return tuple(mapping)


def _reshaped(src: Shape, target: list[int], allowzero: bool) -> Shape | None:
    out = [src[i] if (t == 0 and not allowzero and i < len(src)) else t for i, t in enumerate(target)]
    if any(d is None for d in src) and -1 in out:
        return None
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        total = int(np.prod(src, dtype=np.int64))
        out[out.index(-1)] = total // known if known else 0
    return tuple(out)


@_transform("Reshape")
def _reshape(ctx: TransformContext) -> Transform | None:
    if ctx.index != 0:
        return None
    target = ctx.const(ctx.node.input[1]) if len(ctx.node.input) > 1 else None
    if target is None:
        return None
    shape = _reshaped(ctx.shape, [int(t) for t in target.reshape(-1)], bool(ctx.attr("allowzero", 0)))
    if shape is None:
        return None
    return Transform(reshape_axis_map(ctx.shape, shape), shape)


@_transform("Flatten")
def _flatten(ctx: TransformContext) -> Transform | None:
    rank = len(ctx.shape)
    axis = int(ctx.attr("axis", 1))
    axis = axis + rank if axis < 0 else axis  # in [-rank, rank]: rank flattens to [n, 1]
    if any(d is None for d in ctx.shape):
        return None
    shape = (int(np.prod(ctx.shape[:axis], dtype=np.int64)), int(np.prod(ctx.shape[axis:], dtype=np.int64)))
    return Transform(reshape_axis_map(ctx.shape, shape), shape)


@_transform("Slice")
def _slice(ctx: TransformContext) -> Transform | None:
    if ctx.index != 0:
        return None
    rank = len(ctx.shape)
    has_axes = len(ctx.node.input) > 3 and bool(ctx.node.input[3])  # "" (omitted) when only steps are given
    axes = ctx.axes_input(3) if has_axes else None
    if has_axes and axes is None:
        return None
    starts = ctx.const(ctx.node.input[1]) if len(ctx.node.input) > 1 else None
    sliced = {a % rank for a in axes} if axes is not None else set(range(len(starts) if starts is not None else rank))
    shape = tuple(None if i in sliced else d for i, d in enumerate(ctx.shape))
    return Transform(_identity_map(rank), shape)


def _pieces_along_axis(ctx: TransformContext) -> Transform:
    """Split and Concat keep every axis; only the length along ``axis`` changes."""
    rank = len(ctx.shape)
    axis = int(ctx.attr("axis", 0)) % max(rank, 1)
    shape = tuple(None if i == axis else d for i, d in enumerate(ctx.shape))
    return Transform(_identity_map(rank), shape)


@_transform("Split")
def _split(ctx: TransformContext) -> Transform | None:
    # A fused weight (QKV, LSTM gates) split into pieces: each piece keeps the axes.
    return _pieces_along_axis(ctx) if ctx.index == 0 else None


@_transform("Concat")
def _concat(ctx: TransformContext) -> Transform | None:
    # Pieces joined into one weight (e.g. LSTM gates): every input keeps the axes.
    return _pieces_along_axis(ctx)
