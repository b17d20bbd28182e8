"""The channel rules and constants of ops that move, cut or pad elements: Transpose, Reshape,
Flatten, Squeeze, Unsqueeze, Slice, Pad, Resize, Upsample, Gather, Shape, Concat, Split.

(Transpose … Concat are transparent ops of :mod:`.movement`, Gather and Shape of
:mod:`.elementwise`; their specs hand out these rules. Pad, Resize and Upsample are registered here.)

- Transpose: channels on input axis ``a`` are on output axis ``perm.index(a)``.
- Reshape family (C order): input axis ``a`` of length ``L`` with ``outer = ∏ src[:a]`` goes to
  the first output axis ``j`` with ``∏ dst[:j] = outer`` and ``dst[j] > 1``, of length ``d``:
  ``d = L``: carried; ``d = L·m`` with the next axes merged in (Flatten before a Gemm): every
  element becomes ``m`` consecutive ones (each segment's ``per`` times ``m``); ``L = d·m`` split
  into ``[d, m]`` (heads × head_dim): units must be whole blocks of ``m`` (groups are coarsened
  to heads). A Reshape's target entry ``j`` is an edit (it must follow the new length); an
  entry ``0`` copying another axis onto the channels blocks.
- Slice, Pad, Resize/Upsample: carried when they leave the channel axis whole (a full slice, no
  pads, scale 1 or a stored size equal to the length, then edited); else blocked.
- Gather on another axis ``g``: the channel axis moves past the indices' rank; on ``g`` it picks
  channels and blocks. Shape reads the channel count (blocked) unless every reader only picks
  another axis' length.
- Concat on the channel axis stacks pieces (untracked inputs are fixed pieces); on another axis
  it joins like a broadcast op. Split on the channel axis cuts the pieces at the stored split
  sizes (edited per output); a split inside a segment blocks; on another axis every output
  carries the channels.

Constant propagation: moving elements moves their constants (a merge repeats one over its
``m`` elements; a split is constant where its whole block is); a constant pad keeps channels
equal to the pad value (reflect/edge pads repeat the channel's own value); Concat and Split
concatenate and cut the constants of the pieces.

Shape arithmetic from static shapes (:class:`~onnxprune.ops.spec.ShapeValue`, what constant
folding computes without running anything): ``Shape(x)[start:end]`` is the inferred dims of
``x`` (None where symbolic), ``Size(x) = ∏ dims(x)`` (known only when every dim is);
``Gather(s, i)`` of a shape value ``s`` with a constant index ``i`` picks ``s[i]`` (a scalar for
a scalar ``i``), ``Slice(s, [a], [b], axes, [k])`` with constant bounds on axis 0 is
``s[a:b:k]``. The static part of a shape with a symbolic batch is kept for the Gather or Slice
that reads it (Shape and Slice values); a dim that depends on a symbolic one never folds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from onnx import NodeProto

from onnxprune.ops.broadcast import broadcast_rule
from onnxprune.ops.channels import (
    ChannelContext,
    Layout,
    Segment,
    axes_of,
    first_constants,
    moved_constants,
    norm_axis,
    only_first,
    shape_entry,
)
from onnxprune.ops.registry import register
from onnxprune.ops.spec import OpSpec, ShapeValue, ShapeValueContext, attr, prod

# --------------------------------------------------------------------------- shape values


def shape_read_value(node: NodeProto, ctx: ShapeValueContext) -> ShapeValue | None:
    """Shape (``dims[start:end]``) or Size (``∏ dims``) of a tensor of inferred dims."""
    dims = ctx.dims(node.input[0])
    if dims is None:
        return None
    if node.op_type == "Size":
        return ShapeValue([None if any(d is None for d in dims) else prod(dims)], scalar=True)  # type: ignore[arg-type]
    return ShapeValue(dims[slice(attr(node, "start", 0), attr(node, "end"))], tracked=True)  # type: ignore[misc]


def gather_value(node: NodeProto, ctx: ShapeValueContext) -> ShapeValue | None:
    """Gather of a shape value with a constant index."""
    if node.op_type != "Gather" or not node.input or node.input[0] not in ctx.partial:
        return None
    if len(node.input) != 2 or node.input[1] not in ctx.small:
        return None
    index = ctx.small[node.input[1]]
    try:
        picked = np.asarray(ctx.partial[node.input[0]], dtype=object)[np.asarray(index)]
    except (IndexError, TypeError, ValueError):
        return None
    return ShapeValue(np.asarray(picked, dtype=object).reshape(-1).tolist(), scalar=np.ndim(index) == 0)


def slice_value(node: NodeProto, ctx: ShapeValueContext) -> ShapeValue | None:
    """Slice of a shape value with constant bounds on its one axis."""
    if not node.input or node.input[0] not in ctx.partial or not all(i in ctx.small for i in node.input[1:] if i):
        return None
    dims = ctx.partial[node.input[0]]
    bounds = [*(ctx.small[i].tolist() if i else None for i in node.input[1:])]
    try:
        starts, ends, axes, steps = (bounds + [None] * 3)[:4]
        if axes in (None, [0], [-1]) and len(starts) == 1:
            return ShapeValue(dims[slice(starts[0], ends[0], steps[0] if steps else None)], tracked=True)
    except (IndexError, TypeError, ValueError):
        return None
    return None


# --------------------------------------------------------------------------- carry or block


def transpose_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    perm = [int(p) for p in (cx.attr(node, "perm") or reversed(range(rank)))]  # type: ignore[union-attr]
    cx.set(node.output[0], layout.moved(perm.index(layout.axis)))


def slice_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    label = cx.label(node)
    starts = cx.const(node.input[1]) if len(node.input) > 1 else None
    ends = cx.const(node.input[2]) if len(node.input) > 2 else None
    axes = axes_of(cx, node, 3) if len(node.input) > 3 and node.input[3] else None
    steps = cx.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if starts is None or ends is None:
        cx.block(layout, f"Slice '{label}' has bounds computed at run time")
        return
    axes = axes if axes is not None else list(range(len(starts.reshape(-1))))
    for k, a in enumerate(axes):
        if norm_axis(a, rank) != layout.axis:
            continue
        step = 1 if steps is None else int(steps.reshape(-1)[k])
        start, end = int(starts.reshape(-1)[k]), int(ends.reshape(-1)[k])
        full = step == 1 and (start == 0 or start <= -layout.length) and end >= layout.length
        if not full:
            cx.block(layout, f"Slice '{label}' cuts the axis of these channels")
            return
    cx.set(node.output[0], layout)


def pad_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    pads = cx.attr(node, "pads")
    if pads is None and len(node.input) > 1:
        value = cx.const(node.input[1])
        pads = None if value is None else value.reshape(-1).tolist()
    axes = axes_of(cx, node, 3) if len(node.input) > 3 and node.input[3] else list(range(rank))
    if pads is None or axes is None:
        cx.block(layout, f"Pad '{cx.label(node)}' has pads computed at run time")
        return
    n = len(axes)
    for k, a in enumerate(axes):
        if norm_axis(a, rank) == layout.axis and (pads[k] or pads[k + n]):  # type: ignore[index]
            cx.block(layout, f"Pad '{cx.label(node)}' pads the axis of these channels")
            return
    cx.set(node.output[0], layout)


def pad_constants(cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]) -> np.ndarray | None:
    x = first_constants(values, cx.layouts, node)
    if x is None:
        return None
    mode = cx.attr(node, "mode", b"constant")
    fill = cx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    fill_v = float(fill.reshape(-1)[0]) if fill is not None else 0.0
    return np.where(x == fill_v, x, np.nan) if mode in (b"constant", "constant") else x


def resize_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    label = cx.label(node)
    scales_at = 1 if node.op_type == "Upsample" or len(node.input) == 2 else 2
    scales = cx.const(node.input[scales_at]) if len(node.input) > scales_at and node.input[scales_at] else None
    sizes = cx.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if scales is not None and scales.size and float(scales.reshape(-1)[layout.axis]) == 1.0:
        cx.set(node.output[0], layout)
    elif sizes is not None and sizes.size and int(sizes.reshape(-1)[layout.axis]) == layout.length:
        stored = cx.stored(node, 3)
        if stored is None:
            cx.block(layout, f"Resize '{label}' has computed sizes")
            return
        cx.edit(("tensor", stored[0], layout.axis), layout, stored[1])
        cx.set(node.output[0], layout)
    else:
        cx.block(layout, f"{node.op_type} '{label}' resizes the axis of these channels or has computed scales")


def gather_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    indices = cx.rank(node.input[1])
    if layout is None or rank is None or indices is None:
        return
    axis = norm_axis(int(cx.attr(node, "axis", 0)), rank)  # type: ignore[arg-type]
    if axis == layout.axis:
        cx.block(layout, f"Gather '{cx.label(node)}' picks entries along these channels")
        return
    new = layout.axis if layout.axis < axis else layout.axis - 1 + indices
    cx.set(node.output[0], layout.moved(new))


def shape_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    if cx.attr(node, "start") is None and cx.attr(node, "end") is None:
        uses = cx.uses(node.output[0])
        ok = True
        for use in uses:
            index = cx.const(use.node.input[1]) if use.node.op_type == "Gather" and use.index == 0 else None
            if (
                index is None
                or index.size != 1
                or int(index.reshape(-1)[0]) % (cx.rank(node.input[0]) or 1) == layout.axis
            ):
                ok = False
        if ok:
            return
    cx.block(layout, f"Shape '{cx.label(node)}' reads the number of these channels")


# --------------------------------------------------------------------------- Concat and Split


def concat_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    label = cx.label(node)
    rank = cx.rank(node.output[0])
    if rank is None:
        for layout in tracked.values():
            cx.block(layout, f"Concat '{label}': unknown rank")
        return
    axis = norm_axis(int(cx.attr(node, "axis", 0)), rank)  # type: ignore[arg-type]
    if all(layout.axis != axis for layout in tracked.values()):
        broadcast_rule(cx, node, tracked)  # the same channels side by side: a join
        return
    if any(layout.axis != axis for layout in tracked.values()):
        for layout in tracked.values():
            cx.block(layout, f"Concat '{label}' stacks channels of different axes")
        return
    pieces: list[Segment | int] = []
    for index, name in enumerate(node.input):
        if index in tracked:
            pieces.extend(tracked[index].pieces)
            continue
        shape = cx.shape(name)
        if shape is None:
            for layout in tracked.values():
                cx.block(layout, f"Concat '{label}': unknown shape of '{name}'")
            return
        pieces.append(int(shape[axis]))
    cx.set(node.output[0], Layout(axis, tuple(pieces)))


def concat_constants(cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]) -> np.ndarray:
    layout = cx.layouts[out]
    parts = []
    for name in node.input:
        if name in cx.layouts and name in values and cx.layouts[name].axis == layout.axis:
            parts.append(values[name])
        else:
            shape = cx.shape(name) or ()
            parts.append(np.full(shape[layout.axis] if shape else 0, np.nan))
    joined = np.concatenate(parts) if parts else np.zeros(0)
    return joined if len(joined) == layout.length else np.full(layout.length, np.nan)


def _split_sizes(cx: ChannelContext, node: NodeProto) -> tuple[list[int], tuple] | None:
    """The split sizes and where they are stored: ("tensor", name, reader) or ("attr",)."""
    if len(node.input) > 1 and node.input[1]:
        stored = cx.stored(node, 1)
        if stored is None:
            return None
        return [int(v) for v in cx.const(stored[0]).reshape(-1)], ("tensor", stored[0], stored[1])  # type: ignore[union-attr]
    attr = cx.attr(node, "split")
    if attr is not None:
        return [int(v) for v in attr], ("attr",)  # type: ignore[union-attr]
    return None


def split_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    label = cx.label(node)
    axis = norm_axis(int(cx.attr(node, "axis", 0)), rank)  # type: ignore[arg-type]
    if layout.axis != axis:
        for out in node.output:
            cx.set(out, layout)
        return
    found = _split_sizes(cx, node)
    if found is None:
        cx.block(layout, f"Split '{label}' has no stored split sizes")
        return
    sizes, where = found
    outputs: list[list[Segment | int]] = [[] for _ in sizes]
    bounds = np.cumsum([0, *sizes])
    offset = 0
    for piece in layout.pieces:
        length = piece.length if isinstance(piece, Segment) else piece
        start = int(np.searchsorted(bounds, offset, side="right")) - 1
        end = int(np.searchsorted(bounds, offset + length, side="left")) - 1
        if start == end:
            outputs[start].append(piece)
        elif isinstance(piece, Segment):
            cx.block(layout, f"Split '{label}' cuts a channel group in two")
            return
        else:
            for k in range(start, end + 1):
                lo, hi = max(offset, int(bounds[k])), min(offset + length, int(bounds[k + 1]))
                outputs[k].append(hi - lo)
        offset += length
    for k, (out, pieces) in enumerate(zip(node.output, outputs, strict=True)):
        piece_layout = Layout(axis, tuple(pieces))
        if where[0] == "tensor":
            cx.edit(("tensor", where[1], k), piece_layout, where[2])
        else:
            cx.edit(("attr_list", cx.node_id(node), ("split", k)), piece_layout)
        cx.set(out, piece_layout)


def split_constants(
    cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    x = first_constants(values, cx.layouts, node)
    if x is None:
        return None
    layouts = cx.layouts
    if layouts[out].axis != layouts[node.input[0]].axis:
        return x
    offset = 0
    for name in node.output:
        length = layouts[name].length if name in layouts else 0
        if name == out:
            return x[offset : offset + length]
        offset += length
    return np.full(layouts[out].length, np.nan)


# --------------------------------------------------------------------------- Reshape family


def _prefix(shape: tuple[int, ...], k: int) -> int:
    return int(np.prod(shape[:k], dtype=np.int64))


def _scaled(layout: Layout, factor: int) -> tuple[Segment | int, ...]:
    return tuple(p.root().segment(p.per * factor) if isinstance(p, Segment) else p * factor for p in layout.pieces)


def _divided(cx: ChannelContext, layout: Layout, inner: int) -> tuple[Segment | int, ...] | None:
    out: list[Segment | int] = []
    for p in layout.pieces:
        if isinstance(p, Segment):
            if p.per % inner and not (inner % p.per == 0 and cx.coarsen(p.root(), inner // p.per)):
                return None
            out.append(p.root().segment(p.per // inner))
        elif p % inner:
            return None
        else:
            out.append(p // inner)
    return tuple(out)


def reshape_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    label = cx.label(node)
    src, dst = cx.shape(node.input[0]), cx.shape(node.output[0])
    if src is None or dst is None:
        cx.block(layout, f"{node.op_type} '{label}': unknown shapes")
        return
    a, length = layout.axis, src[layout.axis]
    outer = _prefix(src, a)
    candidates = [j for j in range(len(dst)) if _prefix(dst, j) == outer and dst[j] > 1]
    if not candidates:
        cx.block(layout, f"{node.op_type} '{label}' mixes these channels with other axes")
        return
    j = candidates[0]
    d = dst[j]
    new: tuple[Segment | int, ...] | None
    if d == length:
        new = layout.pieces
    elif d % length == 0 and any(_prefix(src, k) == outer * d for k in range(a + 2, len(src) + 1)):
        new = _scaled(layout, d // length)  # merged with the next axes (Flatten before Gemm)
    elif length % d == 0 and any(_prefix(dst, k) == outer * length for k in range(j + 2, len(dst) + 1)):
        new = _divided(cx, layout, length // d)  # split into [units, inner] (heads × head_dim)
    else:
        new = None
    if new is None:
        cx.block(layout, f"{node.op_type} '{label}' mixes these channels with other axes")
        return
    out = Layout(j, new)
    if node.op_type == "Reshape":
        entry = shape_entry(cx, node, j)
        if entry is None:
            cx.block(layout, f"Reshape '{label}' takes its shape from a computed tensor")
            return
        name, index, value, reader = entry
        if value > 0:
            cx.edit(("tensor", name, index), out, reader)
        elif value == 0 and j != a:
            cx.block(layout, f"Reshape '{label}' copies a dimension onto these channels")
            return
    cx.set(node.output[0], out)


# --------------------------------------------------------------------------- Pad, Resize, Upsample


class ChannelOnlySpec(OpSpec):
    """An op whose only meaning to onnxprune is its channel rule and constant propagation."""

    def __init__(self, rule: Callable[..., None], constant: Callable[..., np.ndarray | None] | None = None) -> None:
        self.rule = rule
        self.constant = constant

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return self.rule

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        return None if self.constant is None else self.constant(cx, node, out, values)


register(ChannelOnlySpec(pad_rule, pad_constants), "Pad")
register(ChannelOnlySpec(resize_rule, moved_constants), "Resize", "Upsample")
