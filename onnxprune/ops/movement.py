"""Ops that only move a stored tensor on its way to a weight input.

Identity, Cast, Transpose, Reshape, Unsqueeze, Squeeze, Flatten, Slice, Split, Concat and
DequantizeLinear: :meth:`~onnxprune.ops.spec.OpSpec.transform` says how each output axis
maps to an input axis (None: merged or split, no single one) and gives the output shape
(the same for every output of a multi-output op such as Split); ``None`` means the op is
not transparent for that input. Discovery follows weights through them, so the axes of a
weight are known in the coordinates of the layer that reads it.

Their channel rules and constant propagation (how they move channel groups) are in
:mod:`onnxprune.ops.shape`; Identity, Cast and CastLike carry channels unchanged. Slice of a
shape value is also shape arithmetic (:func:`onnxprune.ops.shape.slice_value`); Cast is the
retyping op (:meth:`TransformSpec.output_type`: a widening Cast of a weight is not folded);
DequantizeLinear is never folded (:attr:`~onnxprune.ops.spec.OpSpec.foldable`: it decodes a
weight stored compressed on purpose).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from onnx import NodeProto, TensorProto

from onnxprune.ops.channels import (
    ChannelContext,
    ChannelRule,
    ConstantRule,
    carry_first,
    moved_constants,
    same_constants,
)
from onnxprune.ops.registry import register
from onnxprune.ops.shape import (
    concat_constants,
    concat_rule,
    reshape_rule,
    slice_rule,
    slice_value,
    split_constants,
    split_rule,
    transpose_rule,
)
from onnxprune.ops.spec import OpSpec, Shape, ShapeValue, ShapeValueContext, Transform, TransformContext, attr

Rule = Callable[[TransformContext], Transform | None]


class TransformSpec(OpSpec):
    """An op whose meaning here is how it moves a tensor (``rule``), and how it moves channel
    groups and their constants (``channels``, ``constant``: :mod:`onnxprune.ops.shape`)."""

    def __init__(
        self,
        rule: Rule,
        *,
        quantized_data_slots: tuple[int, ...] = (),
        keeps_layout: bool = False,
        keeps_values: bool = False,
        moves_elements: bool = False,
        channels: ChannelRule | None = None,
        constant: ConstantRule | None = None,
        stored_through: tuple[str, ...] = (),
        value: Callable[[NodeProto, ShapeValueContext], ShapeValue | None] | None = None,
        converts: tuple[str, ...] = (),
        order_kept: tuple[str, ...] = (),
        foldable: bool = True,
    ) -> None:
        self.rule = rule
        self.quantized_data_slots = quantized_data_slots
        self.keeps_layout = keeps_layout
        self.keeps_values = keeps_values or keeps_layout
        self.moves_elements = moves_elements or keeps_values or keeps_layout
        self.channels = channels
        self.constant = constant
        self.stored_through = stored_through
        self.value = value
        self.converts = converts
        self.order_kept = order_kept
        self.foldable = foldable

    def transform(self, ctx: TransformContext) -> Transform | None:
        return self.rule(ctx)

    def channel_rule(self, node: NodeProto) -> ChannelRule | None:
        return self.channels

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        return None if self.constant is None else self.constant(cx, node, out, values)

    def shape_value(self, node: NodeProto, ctx: ShapeValueContext) -> ShapeValue | None:
        return None if self.value is None else self.value(node, ctx)

    def converts_values(self, node: NodeProto) -> bool:
        return node.op_type in self.converts

    def keeps_order(self, node: NodeProto) -> bool:
        return node.op_type in self.order_kept

    def carries_stored(self, node: NodeProto) -> bool:
        return node.op_type in self.stored_through

    def output_type(self, node: NodeProto) -> int | None:
        to = attr(node, "to") if node.op_type == "Cast" else None
        if not isinstance(to, int) or to == TensorProto.UNDEFINED or to not in TensorProto.DataType.values():
            return None  # no type ONNX defines: onnxruntime refuses the Cast, nothing here uses it
        return to


def _transform(
    *op_types: str,
    quantized_data_slots: tuple[int, ...] = (),
    keeps_layout: bool = False,
    keeps_values: bool = False,
    moves_elements: bool = False,
    foldable: bool = True,
    **channels: object,
) -> Callable[[Rule], Rule]:
    def add(rule: Rule) -> Rule:
        spec = TransformSpec(
            rule,
            quantized_data_slots=quantized_data_slots,
            keeps_layout=keeps_layout,
            keeps_values=keeps_values,
            moves_elements=moves_elements,
            foldable=foldable,
            **channels,  # type: ignore[arg-type]
        )
        register(spec, *op_types)
        return rule

    return add


def _identity_map(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def _retyped_constants(
    cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    """Identity and Cast keep a channel's constant (CastLike is not followed)."""
    return None if node.op_type == "CastLike" else same_constants(cx, node, out, values)


@_transform(
    "Identity",
    "Cast",
    "CastLike",
    keeps_layout=True,
    channels=carry_first,
    constant=_retyped_constants,
    stored_through=("Identity", "Cast"),  # CastLike reads a second tensor
    converts=("Cast",),
    order_kept=("Identity", "Cast"),
)
def _same(ctx: TransformContext) -> Transform | None:
    if ctx.index != 0:
        return None
    return Transform(_identity_map(len(ctx.shape)), ctx.shape)


# not folded: a quantized weight is stored compressed on purpose
@_transform("DequantizeLinear", quantized_data_slots=(0,), converts=("DequantizeLinear",), foldable=False)
def _dequantize(ctx: TransformContext) -> Transform | None:
    if ctx.index != 0:
        return None
    return Transform(_identity_map(len(ctx.shape)), ctx.shape, quantized=True)


@_transform("Transpose", keeps_values=True, channels=transpose_rule, constant=moved_constants)
def _transpose(ctx: TransformContext) -> Transform | None:
    rank = len(ctx.shape)
    perm = ctx.attr("perm") or list(reversed(range(rank)))
    return Transform(tuple(int(p) for p in perm), tuple(ctx.shape[p] for p in perm))


@_transform(
    "Unsqueeze", moves_elements=True, channels=reshape_rule, constant=moved_constants, order_kept=("Unsqueeze",)
)
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


@_transform("Squeeze", moves_elements=True, channels=reshape_rule, constant=moved_constants, order_kept=("Squeeze",))
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


@_transform("Reshape", moves_elements=True, channels=reshape_rule, constant=moved_constants, order_kept=("Reshape",))
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


@_transform("Flatten", moves_elements=True, channels=reshape_rule, constant=moved_constants, order_kept=("Flatten",))
def _flatten(ctx: TransformContext) -> Transform | None:
    rank = len(ctx.shape)
    axis = int(ctx.attr("axis", 1))
    axis = axis + rank if axis < 0 else axis  # in [-rank, rank]: rank flattens to [n, 1]
    if any(d is None for d in ctx.shape):
        return None
    shape = (int(np.prod(ctx.shape[:axis], dtype=np.int64)), int(np.prod(ctx.shape[axis:], dtype=np.int64)))
    return Transform(reshape_axis_map(ctx.shape, shape), shape)


@_transform("Slice", channels=slice_rule, constant=moved_constants, value=slice_value)
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


@_transform("Split", channels=split_rule, constant=split_constants)
def _split(ctx: TransformContext) -> Transform | None:
    # A fused weight (QKV, LSTM gates) split into pieces: each piece keeps the axes.
    return _pieces_along_axis(ctx) if ctx.index == 0 else None


@_transform("Concat", channels=concat_rule, constant=concat_constants)
def _concat(ctx: TransformContext) -> Transform | None:
    # Pieces joined into one weight (e.g. LSTM gates): every input keeps the axes.
    return _pieces_along_axis(ctx)
