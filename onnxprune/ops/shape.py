"""The channel rules and constants of ops that move, cut or pad elements: Transpose, Reshape,
Flatten, Squeeze, Unsqueeze, Slice, Pad, Resize, Upsample, Gather, Shape, Concat, Split.

(Transpose … Concat are transparent ops of :mod:`.movement`, Gather and Shape of
:mod:`.elementwise`; their specs hand out these rules. Pad, Resize and Upsample are registered here.)

- Transpose: channels on input axis ``a`` are on output axis ``perm.index(a)``.
- Reshape family (Reshape, Flatten, Squeeze, Unsqueeze; C order), reasoned on *symbolic* dims:
  every dim is a monomial ``static · ∏ names`` (:data:`Monomial`), a dynamic dim (batch, width,
  time) a name that shape inference gives it and keeps wherever it knows two dims are equal
  (:meth:`~onnxprune.ops.channels.ChannelContext.dims`); an output dim of a name the input lacks
  is the input's dynamic dim at the same position when their sizes agree (a batch read from
  another tensor's shape); a Reshape's target entry ``0`` is the input's dim, ``-1`` what the
  others leave. The channel axis ``a`` (length ``L``, static) goes to output axis ``j`` when
  input axes ``[i, k) ∋ a`` are exactly output axis ``j`` (equal prefix products before and
  after, as monomials, so a batch of 1 is never taken for a static 1): ``repeat = ∏ src[i:a]``
  and ``inner = ∏ src[a+1:k]`` must be static; every element becomes ``inner`` consecutive ones
  (each segment's ``per`` times ``inner``: a conv channel becomes ``H`` features of an LSTM's
  input, Flatten before a Gemm) and the whole axis comes ``repeat`` times (the pieces repeated:
  a bidirectional RNN's ``[T, B, 2, H] -> [T, B, 2·H]`` makes a hidden unit two features,
  ``u`` and ``H + u``). Or axis ``a`` is output axes ``[j, l)`` (split into ``[d, m]``, heads ×
  head_dim, ``m = ∏ dst[j+1:l]`` static): units must be whole blocks of ``m`` (groups are
  coarsened to heads). Anything else mixes the channels with other axes and blocks. A
  Reshape's target entry ``j`` is an edit when stored (it must follow the new length); ``-1``
  follows by itself; ``0`` copying another axis onto the channels blocks; an entry computed
  from the input's own shape (``Shape``, ``Gather``, ``Slice``, ``Mul``, ``Concat``: torch's
  ``b, c, h, w = f.size(); f.reshape(w, b, c * h)``) follows the channels when it reads the
  channel axis and equals the output dim; any other computed entry blocks, and so does one that
  reads the channel count onto another axis.
- Slice, Pad, Resize/Upsample: carried when they leave the channel axis whole (a full slice, no
  pads, scale 1 or a stored size equal to the length, then edited); else blocked.
- Gather on another axis ``g``: the channel axis moves past the indices' rank; on ``g`` it picks
  channels and blocks. Shape reads the channel count (blocked) unless the count is only picked
  out and dropped (Gather, Slice of other axes) or flows (through shape arithmetic) into nothing
  but the target of a Reshape of the same tensor, with its axes perhaps moved by Transpose:
  that Reshape's rule checks it lands on the channels' axis.
- Concat on the channel axis stacks pieces (untracked inputs are fixed pieces); on another axis
  it joins like a broadcast op. Split on the channel axis cuts the pieces at the stored split
  sizes (edited per output); a split inside a segment blocks; on another axis every output
  carries the channels.

Constant propagation: moving elements moves their constants (a merge repeats one over its
``inner`` elements and the whole axis ``repeat`` times; a split is constant where its whole block is); a constant pad keeps channels
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
from onnxprune.ops.registry import register, spec_of
from onnxprune.ops.spec import OpSpec, ShapeValue, ShapeValueContext, TransformContext, attr, prod

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


def _count_reaches(cx: ChannelContext, name: str, position: int, source: str, depth: int = 0) -> bool:
    """True if element ``position`` of the int vector ``name`` (a count read from ``source``'s shape)
    reaches nothing but a Reshape's target of ``source`` itself or of ``source`` with its axes
    moved (Transpose): that Reshape's rule sees the count and checks it (see the module docstring).
    Other elements may go anywhere."""
    if cx.is_output(name) or depth > 16:
        return False
    for use in cx.uses(name):
        node, op = use.node, use.node.op_type
        out = node.output[0] if node.output else ""
        if op in ("Gather", "Slice") and use.index == 0 and cx.rank(name) == 1:
            length = (cx.shape(name) or (0,))[0]
            picks = np.arange(length).reshape(-1)
            if op == "Gather":
                index = cx.const(node.input[1]) if len(node.input) > 1 else None
                if index is None or int(cx.attr(node, "axis", 0)) != 0:  # type: ignore[arg-type]
                    return False
                picks = picks[index.reshape(-1) % max(length, 1)] if length else picks
            else:
                bounds = [cx.const(i) if i else None for i in node.input[1:5]]
                if len(bounds) < 2 or bounds[0] is None or bounds[1] is None or bounds[0].size != 1:
                    return False
                step = int(bounds[3].reshape(-1)[0]) if len(bounds) > 3 and bounds[3] is not None else 1
                picks = picks[int(bounds[0].reshape(-1)[0]) : int(bounds[1].reshape(-1)[0]) : step]
            hits = np.flatnonzero(picks == position)
            if hits.size and not all(_count_reaches(cx, out, int(h), source, depth + 1) for h in hits):
                return False
        elif op in ("Unsqueeze", "Squeeze", "Cast", "Identity") and use.index == 0:
            if not _count_reaches(cx, out, position, source, depth + 1):
                return False
        elif op == "Mul":  # a scalar operand multiplies every element of the other
            size, out_size = (int(np.prod(cx.shape(t) or (0,), dtype=np.int64)) for t in (name, out))
            positions = range(out_size) if size == 1 else (position,)
            if not all(_count_reaches(cx, out, p, source, depth + 1) for p in positions):
                return False
        elif op == "Concat":
            offset = sum(int(np.prod(cx.shape(i) or (0,), dtype=np.int64)) for i in node.input[: use.index])
            if not _count_reaches(cx, out, offset + position, source, depth + 1):
                return False
        elif not (op == "Reshape" and use.index == 1 and source in _moved_from(cx, node.input[0])):
            return False
    return True


def _moved_from(cx: ChannelContext, name: str) -> list[str]:
    """``name`` and the tensors it is made from by ops that only keep or permute axes."""
    out = [name]
    for _ in range(8):
        node = cx.producer(out[-1])
        if node is None or not node.input or axis_in(cx, node.input[0], 0, out[-1]) is None:
            break
        out.append(node.input[0])
    return out


def shape_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    """Shape reads the channel count where its ``[start, end)`` covers the channel axis; that is
    harmless where the count is only picked out and dropped (Gather, Slice of other axes), or where
    it flows into the target of a Reshape of the same tensor, whose rule checks that the count lands
    on the channels' axis (``x.reshape(b, c * h, w)``): there it follows the channels."""
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    start = norm_axis(int(cx.attr(node, "start", 0)), rank)  # type: ignore[arg-type]
    end = cx.attr(node, "end")
    end = rank if end is None else min(norm_axis(int(end), rank), rank)  # type: ignore[arg-type]
    if not start <= layout.axis < end:
        return
    if not _count_reaches(cx, node.output[0], layout.axis - start, node.input[0]):
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

#: A dim as a monomial ``static · ∏ names``: its static factor and the sorted names of the dynamic
#: dims it multiplies (two dims are equal when both parts are).
Monomial = tuple[int, tuple[str, ...]]
ONE: Monomial = (1, ())


def _times(*dims: Monomial) -> Monomial:
    static, names = 1, []
    for s, n in dims:
        static *= s
        names.extend(n)
    return static, tuple(sorted(names))


def _over(total: Monomial, part: Monomial) -> Monomial | None:
    """``total / part`` when ``part`` divides it (a Reshape's -1), else None."""
    names = list(total[1])
    for name in part[1]:
        if name not in names:
            return None
        names.remove(name)
    if part[0] == 0 or total[0] % part[0]:
        return None
    return total[0] // part[0], tuple(names)


def _prefixes(dims: list[Monomial]) -> list[Monomial]:
    out = [ONE]
    for d in dims:
        out.append(_times(out[-1], d))
    return out


def _monomials(cx: ChannelContext, name: str, symbolic: bool) -> list[Monomial]:
    """The dims of ``name``: its symbolic dims (an unknown one named by its tensor and position),
    or, with ``symbolic`` False, its static shape as if every dim were static."""
    shape = cx.shape(name) or ()
    dims = cx.dims(name) if symbolic else None
    if dims is None:
        return [(int(d), ()) for d in shape]
    return [(d, ()) if isinstance(d, int) else (1, (d or f"{name}:{k}",)) for k, d in enumerate(dims)]


def _reshaped_dims(cx: ChannelContext, node: NodeProto, src: list[Monomial], dst: list[Monomial]) -> list[Monomial]:
    """The output dims, each as a monomial of the input's where that can be known: a Reshape's
    target entry 0 copies the input dim, -1 is what the others leave; an output dim of a name the
    input does not have, where the input has a dynamic dim of the same static size at the same
    position, is taken to be that dim (equal by position: ``x.reshape(x.shape[0], …)`` of an
    exporter, a batch read from another tensor)."""
    out = list(dst)
    src_names = {n for _, names in src for n in names}
    if node.op_type == "Reshape":
        entries = [shape_entry(cx, node, j) for j in range(len(out))]
        allowzero = bool(cx.attr(node, "allowzero", 0))
        for j, entry in enumerate(entries):
            if entry is not None and entry[2] == 0 and not allowzero and j < len(src):
                out[j] = src[j]
        for j, entry in enumerate(entries):
            if entry is not None and entry[2] == -1:
                rest = _over(_times(*src), _times(*(d for k, d in enumerate(out) if k != j)))
                out[j] = rest if rest is not None else out[j]
    in_shape, out_shape = cx.shape(node.input[0]) or (), cx.shape(node.output[0]) or ()
    for j, (static, names) in enumerate(out):
        fresh = bool(names) and not set(names) & src_names and static == 1
        if fresh and j < min(len(src), len(in_shape), len(out_shape)) and src[j][1] and src[j][0] == 1:
            out[j] = src[j] if in_shape[j] == out_shape[j] else out[j]
    return out


def _moved_axis(src: list[Monomial], dst: list[Monomial], a: int) -> tuple[int, int, int, int] | None:
    """Where input axis ``a`` goes: ``(j, repeat, inner, split)``.

    Merged (``split`` = 1): input axes ``[i, k)`` around ``a`` are output axis ``j`` (the same
    elements before them, and after them); ``repeat = ∏ src[i:a]`` and ``inner = ∏ src[a+1:k]``
    must be static. Split (``repeat`` = ``inner`` = 1): input axis ``a`` is output axes
    ``[j, l)``, ``split = ∏ dst[j+1:l]`` static. The smallest such span is taken; None if the
    channels are mixed with other axes.
    """
    p, q = _prefixes(src), _prefixes(dst)
    for i in range(a, -1, -1):
        repeat = _times(*src[i:a])
        if repeat[1]:
            break  # a dynamic dim before the channels: merging it would mix them with it
        for k in range(a + 1, len(src) + 1):
            inner = _times(*src[a + 1 : k])
            if inner[1]:
                break
            for j in range(len(dst)):
                if q[j] == p[i] and q[j + 1] == p[k] and dst[j] != ONE:
                    return j, repeat[0], inner[0], 1
    for j in range(len(dst)):
        if q[j] != p[a] or dst[j] == ONE:
            continue
        for end in range(j + 2, len(dst) + 1):
            split = _times(*dst[j + 1 : end])
            if split[1]:
                break
            if q[end] == p[a + 1]:
                return j, 1, 1, split[0]
    return None


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


def _int_terms(
    cx: ChannelContext, name: str, index: int, depth: int = 0
) -> tuple[int, tuple[tuple[str, int], ...]] | None:
    """Element ``index`` (flat) of the int tensor ``name`` as ``literal · ∏ dims``: the literal and
    the (tensor, axis) of every dim it reads through Shape, for a value made of constants, Shape,
    Gather and Slice of a shape, Concat, Mul, Unsqueeze, Squeeze, Cast; None for anything else."""
    const = cx.const(name)
    if const is not None:
        flat = const.reshape(-1)
        return (int(flat[index]), ()) if 0 <= index < flat.size else None
    node = cx.producer(name)
    if node is None or depth > 16:
        return None
    op, first = node.op_type, node.input[0] if node.input else ""
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):  # the elements in the same order
        return _int_terms(cx, first, index, depth + 1)
    if op == "Shape":
        rank = cx.rank(first)
        if rank is None:
            return None
        start = norm_axis(int(cx.attr(node, "start", 0)), rank)  # type: ignore[arg-type]
        return 1, ((first, start + index),)
    if op in ("Gather", "Slice") and cx.rank(first) == 1:
        length = (cx.shape(first) or (0,))[0]
        if op == "Gather":
            picked = cx.const(node.input[1]) if len(node.input) > 1 else None
            if picked is None or int(cx.attr(node, "axis", 0)) != 0 or not 0 <= index < picked.size:  # type: ignore[arg-type]
                return None
            return _int_terms(cx, first, norm_axis(int(picked.reshape(-1)[index]), length), depth + 1)
        bounds = [cx.const(i) if i else None for i in node.input[1:5]]
        if (
            bounds[0] is None
            or bounds[0].size != 1
            or (len(bounds) > 3 and bounds[3] is not None and bounds[3].size != 1)
        ):
            return None
        step = int(bounds[3].reshape(-1)[0]) if len(bounds) > 3 and bounds[3] is not None else 1
        start = int(bounds[0].reshape(-1)[0])
        start = max(0, start + length) if start < 0 else min(start, length - (step < 0))
        return _int_terms(cx, first, start + index * step, depth + 1)
    if op == "Concat":
        offset = 0
        for piece in node.input:
            size = int(np.prod(cx.shape(piece) or (0,), dtype=np.int64))
            if offset <= index < offset + size:
                return _int_terms(cx, piece, index - offset, depth + 1)
            offset += size
        return None
    if op == "Mul" and len(node.input) == 2:
        terms = []
        for operand in node.input:
            size = int(np.prod(cx.shape(operand) or (0,), dtype=np.int64))
            term = _int_terms(cx, operand, 0 if size == 1 else index, depth + 1)
            if term is None:
                return None
            terms.append(term)
        return terms[0][0] * terms[1][0], terms[0][1] + terms[1][1]
    return None


def axis_in(cx: ChannelContext, tensor: str, axis: int, target: str) -> int | None:
    """The axis of ``target`` holding axis ``axis`` of ``tensor``, when ``target`` is ``tensor`` moved
    by ops that only keep or permute its axes (Identity, Cast, Transpose: their transforms), else None."""
    name, to_target = target, {k: k for k in range(cx.rank(target) or 0)}
    for _ in range(8):
        if name == tensor:
            return to_target.get(axis)
        node = cx.producer(name)
        if node is None or not node.input:
            return None
        spec, shape = spec_of(node), cx.shape(node.input[0])
        moved = spec.transform(TransformContext(node, 0, shape, cx.const)) if spec.keeps_values and shape else None
        if moved is None or sorted(m for m in moved.axis_map if m is not None) != list(range(len(shape))):  # type: ignore[arg-type]
            return None
        to_target = {moved.axis_map[o]: t for o, t in to_target.items()}  # type: ignore[misc]
        name = node.input[0]
    return None


def _target_entries(
    cx: ChannelContext, node: NodeProto, src: list[Monomial], rank: int
) -> list[tuple[Monomial, set[int]] | None]:
    """Each computed entry of a Reshape's target as (its value over the input's dims ``src``, the
    input axes it reads; -1 among them: another tensor's); None for a stored entry or one not understood."""
    x = node.input[0]
    out: list[tuple[Monomial, set[int]] | None] = []
    for j in range(rank):
        terms = None if shape_entry(cx, node, j) is not None else _int_terms(cx, node.input[1], j)
        if terms is None:
            out.append(None)
            continue
        axes = [axis_in(cx, t, k, x) for t, k in terms[1]]
        if any(k is None for k in axes):
            out.append(((0, ()), {-1}))  # reads another tensor's dims
            continue
        out.append((_times((terms[0], ()), *(src[k] for k in axes)), set(axes)))  # type: ignore[index]
    return out


def _reshape_target(
    cx: ChannelContext, node: NodeProto, layout: Layout, src: list[Monomial], j: int, same: bool, want: Monomial
) -> str | None:
    """Why the channels cannot go through a Reshape's target, whose entry ``j`` (to be ``want``)
    holds them, or None (see the module docstring)."""
    label = cx.label(node)
    computed = _target_entries(cx, node, src, len(cx.shape(node.output[0]) or ()))
    for k, entry in enumerate(computed):
        if k != j and entry is not None and layout.axis in entry[1]:
            return f"Reshape '{label}' puts the number of these channels on another axis"
    entry = shape_entry(cx, node, j)
    if entry is None:
        found = computed[j] if j < len(computed) else None
        if found is None or layout.axis not in found[1] or -1 in found[1] or found[0] != want:
            return f"Reshape '{label}' takes its shape from a computed tensor"
        return None  # computed from the input's own dims, the channels' among them: it follows them
    value = entry[2]
    if value > 0:
        return None
    if value == 0 and not (j == layout.axis and same):
        return f"Reshape '{label}' copies a dimension onto these channels"
    return None


def reshape_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    label = cx.label(node)
    x, y = node.input[0], node.output[0]
    if cx.shape(x) is None or cx.shape(y) is None:
        cx.block(layout, f"{node.op_type} '{label}': unknown shapes")
        return
    symbolic = cx.dims(x) is not None and cx.dims(y) is not None
    src = _monomials(cx, x, symbolic)
    src[layout.axis] = (layout.length, ())  # the channel axis is static: its groups' length
    dst = _reshaped_dims(cx, node, src, _monomials(cx, y, symbolic))
    moved = _moved_axis(src, dst, layout.axis)
    if moved is None:
        cx.block(layout, f"{node.op_type} '{label}' mixes these channels with other axes")
        return
    j, repeat, inner, split = moved
    new: tuple[Segment | int, ...] | None
    # split into [units, inner] (heads × head_dim), or merged with static axes after the channels
    # (Flatten before a Gemm: each element a block of ``inner``) and before them (an RNN's directions:
    # the whole axis ``repeat`` times)
    new = _divided(cx, layout, split) if split > 1 else tuple(p for _ in range(repeat) for p in _scaled(layout, inner))
    if new is None:
        cx.block(layout, f"{node.op_type} '{label}' splits these channels inside a unit")
        return
    out = Layout(j, new)
    if node.op_type == "Reshape":
        why = _reshape_target(cx, node, layout, src, j, repeat * inner * split == 1, dst[j])
        if why is not None:
            cx.block(layout, why)
            return
        entry = shape_entry(cx, node, j)
        if entry is not None and entry[2] > 0:
            cx.edit(("tensor", entry[0], entry[1]), out, entry[3])
    cx.set(y, out)


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
