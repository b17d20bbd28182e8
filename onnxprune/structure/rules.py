"""Per-op rules of the channel analysis: one small handler per op type.

``RULES[op](cx, node, tracked)`` runs when some inputs of ``node`` carry channel groups
(``tracked`` maps input index to :class:`~onnxprune.structure.groups.Layout`). A rule
does one of four things with each tracked input:

* carry: give an output the same channels, possibly on another axis (activations, BN,
  pooling, Transpose, Reshape, Gather on another axis …);
* join: merge groups that meet element by element (residual Add, attention MatMul batched
  over heads, Concat on another axis);
* consume: record the stored weight axis that reads the channels (Conv, Gemm, MatMul,
  LSTM input channels: a *sink*);
* block: keep the groups whole, with the reason.

``SOURCES[op](cx, node, tracked)`` starts a new group on the output channels of a node
with a stored weight (Conv, ConvTranspose, Gemm, MatMul).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from onnxprune.graph.index import node_label
from onnxprune.structure.analysis import Context
from onnxprune.structure.groups import Layout, Segment

Rule = Callable[[Context, NodeProto, dict[int, Layout]], None]
RULES: dict[str, Rule] = {}
SOURCES: dict[str, Rule] = {}


def register_rule(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return register


def register_source(*ops: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for op in ops:
            SOURCES[op] = fn
        return fn

    return register


def only_first(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> Layout | None:
    """The layout of input 0; other tracked inputs are blocked (the op reads them whole)."""
    for index, layout in tracked.items():
        if index != 0:
            cx.block(layout, f"{node.op_type} '{node_label(node)}' reads these channels as input {index}")
    return tracked.get(0)


def _unused_outputs(cx: Context, node: NodeProto, layout: Layout, keep: int = 1) -> bool:
    for name in node.output[keep:]:
        if name and cx.uses(name):
            cx.block(layout, f"{node.op_type} '{node_label(node)}' has another output '{name}' in use")
            return False
    return True


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------------------------------
# Carry unchanged

UNARY = [
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Elu",
    "Selu",
    "Celu",
    "Gelu",
    "Erf",
    "Exp",
    "Log",
    "Sqrt",
    "Abs",
    "Neg",
    "Reciprocal",
    "Softplus",
    "Softsign",
    "Mish",
    "Sin",
    "Cos",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Identity",
    "Cast",
    "CastLike",
    "Not",
    "IsNaN",
    "IsInf",
    "ThresholdedRelu",
    "Shrink",
]


@register_rule(*UNARY, "Clip", "Dropout")
def _unary(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is not None and _unused_outputs(cx, node, layout):
        cx.set(node.output[0], layout)


@register_rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool")
def _pool(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    if layout.axis != 1:
        cx.block(layout, f"{node.op_type} '{node_label(node)}' pools over the axis of these channels")
    elif _unused_outputs(cx, node, layout):
        cx.set(node.output[0], layout)


@register_rule("BatchNormalization", "InstanceNormalization")
def _batchnorm(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    label = node_label(node)
    if layout.axis != 1:
        cx.block(layout, f"{node.op_type} '{label}' normalizes another axis")
        return
    params = range(1, 5) if node.op_type == "BatchNormalization" else range(1, 3)
    found = []
    for index in params:
        stored = cx.stored(node, index)
        if stored is None:
            cx.block(layout, f"{node.op_type} '{label}' has a computed parameter (input {index})")
            return
        found.append((index, stored))
    if not _unused_outputs(cx, node, layout):
        return
    for _, (name, reader) in found:
        cx.members(layout.moved(0), name, 0, "param", node, reader)
    cx.set(node.output[0], layout)


@register_rule("LayerNormalization")
def _layernorm(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        cx.block(layout, f"LayerNormalization '{node_label(node)}': unknown rank")
        return
    axis = _norm_axis(int(cx.attr(node, "axis", -1)), rank)
    if layout.axis >= axis:
        cx.block(layout, f"LayerNormalization '{node_label(node)}' normalizes over these channels")
    elif _unused_outputs(cx, node, layout):
        cx.set(node.output[0], layout)


@register_rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    opset = next((o.version for o in cx.model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = _norm_axis(int(cx.attr(node, "axis", -1 if opset >= 13 else 1)), rank)
    hit = layout.axis == axis if opset >= 13 else layout.axis >= axis
    if hit:
        cx.block(layout, f"{node.op_type} '{node_label(node)}' normalizes over these channels")
    else:
        cx.set(node.output[0], layout)


def _axes(cx: Context, node: NodeProto, position: int) -> list[int] | None:
    value = cx.attr(node, "axes")
    if value is None and len(node.input) > position and node.input[position]:
        const = cx.const(node.input[position])
        if const is None:
            return None
        value = const.reshape(-1).tolist()
    return None if value is None else [int(a) for a in value]


@register_rule(
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ArgMax",
    "ArgMin",
)
def _reduce(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    label = node_label(node)
    if node.op_type in ("ArgMax", "ArgMin"):
        axes: list[int] | None = [int(cx.attr(node, "axis", 0))]
    else:
        axes = _axes(cx, node, 1)
        has_input = len(node.input) > 1 and bool(node.input[1])
        if axes is None and has_input:
            cx.block(layout, f"{node.op_type} '{label}' reduces over axes computed at run time")
            return
        if not axes:
            axes = [] if cx.attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    reduced = {_norm_axis(a, rank) for a in axes}
    if layout.axis in reduced:
        cx.block(layout, f"{node.op_type} '{label}' reduces over these channels")
        return
    keep = int(cx.attr(node, "keepdims", 1))
    axis = layout.axis if keep else layout.axis - sum(1 for a in reduced if a < layout.axis)
    cx.set(node.output[0], layout.moved(axis))


@register_rule("Transpose")
def _transpose(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    perm = [int(p) for p in (cx.attr(node, "perm") or reversed(range(rank)))]
    cx.set(node.output[0], layout.moved(perm.index(layout.axis)))


# ---------------------------------------------------------------------------------------
# Joins


@register_rule(
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "PRelu",
    "Equal",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "And",
    "Or",
    "Xor",
    "Mod",
)
def _broadcast(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    label = node_label(node)
    out_rank = cx.rank(node.output[0])
    ranks = {i: cx.rank(node.input[i]) for i in range(len(node.input)) if node.input[i]}
    if out_rank is None or any(r is None for r in ranks.values()):
        for layout in tracked.values():
            cx.block(layout, f"{node.op_type} '{label}': unknown shapes")
        return
    axes = {index: layout.axis + out_rank - ranks[index] for index, layout in tracked.items()}
    if len(set(axes.values())) > 1:
        for layout in tracked.values():
            cx.block(layout, f"{node.op_type} '{label}' combines channels on different axes")
        return
    axis = next(iter(axes.values()))
    joined = cx.join([layout.moved(axis) for layout in tracked.values()], f"{node.op_type} '{label}'")
    if joined is None:
        return
    for index, name in enumerate(node.input):
        if not name or index in tracked:
            continue
        shape = cx.shape(name)
        if shape is None:
            cx.block(joined, f"{node.op_type} '{label}': unknown shape of '{name}'")
            return
        pos = axis - (out_rank - len(shape))
        if pos < 0 or shape[pos] == 1:
            continue  # broadcast along the channels
        stored = cx.stored(node, index)
        if stored is None:
            producer = cx.producer(name)
            what = f"{producer.op_type} output" if producer is not None else "graph input"
            cx.block(
                joined, f"{node.op_type} '{label}' joins these channels with '{name}' ({what}), which has no group"
            )
            return
        cx.members(joined.moved(pos), stored[0], pos, "param", node, stored[1])
    cx.set(node.output[0], joined)


@register_rule("Concat")
def _concat(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    label = node_label(node)
    rank = cx.rank(node.output[0])
    if rank is None:
        for layout in tracked.values():
            cx.block(layout, f"Concat '{label}': unknown rank")
        return
    axis = _norm_axis(int(cx.attr(node, "axis", 0)), rank)
    if all(layout.axis != axis for layout in tracked.values()):
        _broadcast(cx, node, tracked)  # the same channels side by side: a join
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


def _split_sizes(cx: Context, node: NodeProto, length: int) -> tuple[list[int], tuple] | None:
    """The split sizes and where they are stored: ("tensor", name, reader) or ("attr",)."""
    if len(node.input) > 1 and node.input[1]:
        stored = cx.stored(node, 1)
        if stored is None:
            return None
        return [int(v) for v in cx.const(stored[0]).reshape(-1)], ("tensor", stored[0], stored[1])
    attr = cx.attr(node, "split")
    if attr is not None:
        return [int(v) for v in attr], ("attr",)
    return None


@register_rule("Split")
def _split(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    label = node_label(node)
    axis = _norm_axis(int(cx.attr(node, "axis", 0)), rank)
    if layout.axis != axis:
        for out in node.output:
            cx.set(out, layout)
        return
    found = _split_sizes(cx, node, layout.length)
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


@register_rule("Slice")
def _slice(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    label = node_label(node)
    starts = cx.const(node.input[1]) if len(node.input) > 1 else None
    ends = cx.const(node.input[2]) if len(node.input) > 2 else None
    axes = _axes(cx, node, 3) if len(node.input) > 3 and node.input[3] else None
    steps = cx.const(node.input[4]) if len(node.input) > 4 and node.input[4] else None
    if starts is None or ends is None:
        cx.block(layout, f"Slice '{label}' has bounds computed at run time")
        return
    axes = axes if axes is not None else list(range(len(starts.reshape(-1))))
    for k, a in enumerate(axes):
        if _norm_axis(a, rank) != layout.axis:
            continue
        step = 1 if steps is None else int(steps.reshape(-1)[k])
        start, end = int(starts.reshape(-1)[k]), int(ends.reshape(-1)[k])
        full = step == 1 and (start == 0 or start <= -layout.length) and end >= layout.length
        if not full:
            cx.block(layout, f"Slice '{label}' cuts the axis of these channels")
            return
    cx.set(node.output[0], layout)


@register_rule("Pad")
def _pad(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    if layout is None or rank is None:
        return
    pads = cx.attr(node, "pads")
    if pads is None and len(node.input) > 1:
        value = cx.const(node.input[1])
        pads = None if value is None else value.reshape(-1).tolist()
    axes = _axes(cx, node, 3) if len(node.input) > 3 and node.input[3] else list(range(rank))
    if pads is None or axes is None:
        cx.block(layout, f"Pad '{node_label(node)}' has pads computed at run time")
        return
    n = len(axes)
    for k, a in enumerate(axes):
        if _norm_axis(a, rank) == layout.axis and (pads[k] or pads[k + n]):
            cx.block(layout, f"Pad '{node_label(node)}' pads the axis of these channels")
            return
    cx.set(node.output[0], layout)


@register_rule("Resize", "Upsample")
def _resize(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    label = node_label(node)
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


@register_rule("Gather")
def _gather(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    rank = cx.rank(node.input[0])
    indices = cx.rank(node.input[1])
    if layout is None or rank is None or indices is None:
        return
    axis = _norm_axis(int(cx.attr(node, "axis", 0)), rank)
    if axis == layout.axis:
        cx.block(layout, f"Gather '{node_label(node)}' picks entries along these channels")
        return
    new = layout.axis if layout.axis < axis else layout.axis - 1 + indices
    cx.set(node.output[0], layout.moved(new))


@register_rule("Shape")
def _shape(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
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
    cx.block(layout, f"Shape '{node_label(node)}' reads the number of these channels")


# ---------------------------------------------------------------------------------------
# Reshape family: carry, merge with the next axes, or split into [units, inner]


def _prefix(shape: tuple[int, ...], k: int) -> int:
    return int(np.prod(shape[:k], dtype=np.int64))


def shape_entry(
    cx: Context, node: NodeProto, j: int, position: int = 1
) -> tuple[str, int, int, tuple[int, int]] | None:
    """(stored tensor, index, value, reader) of entry ``j`` of the shape input at ``position``
    (a Reshape's shape, a ConstantOfShape's): stored, or a Concat of pieces one of which is."""
    stored = cx.stored(node, position)
    if stored is not None:
        value = cx.const(stored[0]).reshape(-1)
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
            value = cx.const(piece[0]).reshape(-1)
            return piece[0], j - offset, int(value[j - offset]), piece[1]
        offset += shape[0]
    return None


def _scaled(cx: Context, layout: Layout, factor: int) -> tuple[Segment | int, ...]:
    return tuple(p.root().segment(p.per * factor) if isinstance(p, Segment) else p * factor for p in layout.pieces)


def _divided(cx: Context, layout: Layout, inner: int) -> tuple[Segment | int, ...] | None:
    out: list[Segment | int] = []
    for p in layout.pieces:
        if isinstance(p, Segment):
            if p.per % inner and not (inner % p.per == 0 and cx.groups.coarsen(p.root(), inner // p.per)):
                return None
            out.append(p.root().segment(p.per // inner))
        elif p % inner:
            return None
        else:
            out.append(p // inner)
    return tuple(out)


@register_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    label = node_label(node)
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
        new = _scaled(cx, layout, d // length)  # merged with the next axes (Flatten before Gemm)
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
