"""Per-op rules for the layers that consume and produce channels (see :mod:`.rules`).

Consumers (*sinks*) read a group's channels through a stored weight: Conv and
ConvTranspose input channels (a depthwise Conv carries them through instead), Gemm and
MatMul reduction rows, LSTM/GRU/RNN input features. Producers (*sources*) start a group:
the output channels of Conv/ConvTranspose, Gemm and ``x @ W`` MatMul, and the hidden units
of recurrent layers.
"""

from __future__ import annotations

from onnx import NodeProto

from onnxprune.graph.index import node_label
from onnxprune.structure.analysis import Context
from onnxprune.structure.groups import Layout
from onnxprune.structure.rules import only_first, register_rule, register_source, shape_entry


def _weight(cx: Context, node: NodeProto, index: int, layout: Layout | None) -> tuple[str, tuple[int, int]] | None:
    stored = cx.stored(node, index)
    if stored is None:
        cx.block(layout, f"{node.op_type} '{node_label(node)}' has a computed weight")
        return None
    if len(cx.uses(stored[0])) > 1 or cx.scope.is_output(stored[0]):
        cx.block(layout, f"{node.op_type} '{node_label(node)}' shares its weight '{stored[0]}' with other nodes")
        return None
    return stored


@register_rule("Conv", "ConvTranspose")
def _conv(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    label = node_label(node)
    if layout.axis != 1:
        cx.block(layout, f"{node.op_type} '{label}' reads these channels on a spatial axis")
        return
    weight = _weight(cx, node, 1, layout)
    if weight is None:
        return
    groups = int(cx.attr(node, "group", 1))
    shape = cx.stored_shape(weight[0])
    if groups == 1:
        cx.members(layout.moved(1), weight[0], 0 if node.op_type == "ConvTranspose" else 1, "in", node, weight[1])
        return
    depthwise = node.op_type == "Conv" and groups == layout.length == shape[0] and shape[1] == 1
    if not depthwise:
        cx.block(layout, f"{node.op_type} '{label}' is a grouped convolution ({groups} groups)")
        return
    cx.members(layout.moved(0), weight[0], 0, "param", node, weight[1])
    if len(node.input) > 2 and node.input[2]:
        bias = cx.stored(node, 2)
        if bias is None:
            cx.block(layout, f"Conv '{label}' has a computed bias")
            return
        cx.members(layout.moved(0), bias[0], 0, "param", node, bias[1])
    cx.edit(("attr", cx.node_id(node), "group"), layout)
    cx.set(node.output[0], layout)


@register_rule("Gemm")
def _gemm(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    k_axis = 0 if cx.attr(node, "transA", 0) else 1
    if layout.axis != k_axis:
        cx.block(layout, f"Gemm '{node_label(node)}' reads these channels as rows")
        return
    weight = _weight(cx, node, 1, layout)
    if weight is not None:
        axis = 1 if cx.attr(node, "transB", 0) else 0
        cx.members(layout.moved(axis), weight[0], axis, "in", node, weight[1])


@register_rule("MatMul")
def _matmul(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    label = node_label(node)
    ra, rb, r = cx.rank(node.input[0]), cx.rank(node.input[1]), cx.rank(node.output[0])
    if ra is None or rb is None or r is None:
        for layout in tracked.values():
            cx.block(layout, f"MatMul '{label}': unknown ranks")
        return
    a, b = tracked.get(0), tracked.get(1)
    a_k, b_k = ra - 1, (rb - 2 if rb >= 2 else 0)
    out: list[Layout] = []
    if a is not None and a.axis == a_k:
        if b is not None and b.axis == b_k:
            cx.join([a, b.moved(a.axis)], f"MatMul '{label}'")
            b = None
        elif b is None and rb == 2 and cx.stored(node, 1) is not None:
            weight = _weight(cx, node, 1, a)
            if weight is not None:
                cx.members(a.moved(0), weight[0], 0, "in", node, weight[1])
        else:
            cx.block(a, f"MatMul '{label}' contracts these channels with a tensor that has no group")
    elif a is not None and ra >= 2 and a.axis == ra - 2:
        out.append(a.moved(r - 2))
    elif a is not None:
        batch = a.axis + r - ra
        b_axis = batch - (r - rb)
        if b is not None and b.axis == b_axis:
            joined = cx.join([a.moved(batch), b.moved(batch)], f"MatMul '{label}'")
            b = None
            if joined is not None:
                out.append(joined)
        elif b is None and (b_axis < 0 or (cx.shape(node.input[1]) or (0,) * rb)[b_axis] == 1):
            out.append(a.moved(batch))
        else:
            cx.block(a, f"MatMul '{label}' batches these channels with a tensor that has no group")
    if b is not None:
        if rb >= 2 and b.axis == rb - 1:
            out.append(b.moved(r - 1))
        elif b.axis == b_k and ra == 2 and cx.stored(node, 0) is not None:
            weight = _weight(cx, node, 0, b)
            if weight is not None:
                cx.members(b.moved(1), weight[0], 1, "in", node, weight[1])
        else:
            cx.block(b, f"MatMul '{label}' reads these channels as {'rows' if b.axis == b_k else 'a batch axis'}")
    if len(out) > 1:
        for layout in out:
            cx.block(layout, f"MatMul '{label}' would carry channels on two axes")
    elif out:
        cx.set(node.output[0], out[0])


@register_rule("LSTM", "GRU", "RNN")
def _recurrent(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    layout = only_first(cx, node, tracked)
    if layout is None:
        return
    rank = cx.rank(node.input[0]) or 3
    if layout.axis != rank - 1:
        cx.block(layout, f"{node.op_type} '{node_label(node)}' reads these channels as time or batch")
        return
    weight = _weight(cx, node, 1, layout)
    if weight is not None:
        cx.members(layout.moved(2), weight[0], 2, "in", node, weight[1])


def _new_output(cx: Context, node: NodeProto, n: int, axis: int) -> Layout | None:
    out = node.output[0]
    if out in cx.layouts:
        cx.block(cx.layouts[out], f"{node.op_type} '{node_label(node)}' would carry channels on two axes")
        return None
    group = cx.new_group(node, n)
    layout = Layout(axis, (group.segment(1),))
    cx.set(out, layout)
    return layout


def _bias(cx: Context, node: NodeProto, index: int, layout: Layout, n: int) -> bool:
    """Record a stored per-output bias at input ``index``; False (blocked) if it cannot be sliced."""
    if len(node.input) <= index or not node.input[index]:
        return True
    stored = cx.stored(node, index)
    shape = cx.shape(node.input[index])
    if stored is None or shape is None:
        cx.block(layout, f"{node.op_type} '{node_label(node)}' has a computed bias")
        return False
    if shape and shape[-1] == n:
        cx.members(layout.moved(len(shape) - 1), stored[0], len(shape) - 1, "out", node, stored[1])
    return True


@register_source("Conv", "ConvTranspose")
def _conv_source(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    if int(cx.attr(node, "group", 1)) != 1:
        return
    stored = cx.stored(node, 1)
    if stored is None or len(cx.uses(stored[0])) != 1:
        return
    axis = 1 if node.op_type == "ConvTranspose" else 0
    n = cx.stored_shape(stored[0])[axis]
    layout = _new_output(cx, node, n, 1)
    if layout is not None:
        cx.members(layout.moved(axis), stored[0], axis, "out", node, stored[1])
        _bias(cx, node, 2, layout.moved(0), n)


@register_source("Gemm")
def _gemm_source(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    stored = cx.stored(node, 1)
    if stored is None or len(cx.uses(stored[0])) != 1 or cx.attr(node, "transA", 0):
        return
    axis = 0 if cx.attr(node, "transB", 0) else 1
    n = cx.stored_shape(stored[0])[axis]
    layout = _new_output(cx, node, n, 1)
    if layout is not None:
        cx.members(layout.moved(axis), stored[0], axis, "out", node, stored[1])
        _bias(cx, node, 2, layout, n)


@register_source("MatMul")
def _matmul_source(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    stored = cx.stored(node, 1)
    rank = cx.rank(node.output[0])
    if stored is None or rank is None or rank < 2 or len(cx.uses(stored[0])) != 1:
        return
    shape = cx.stored_shape(stored[0])
    if len(shape) != 2:
        return
    layout = _new_output(cx, node, shape[1], rank - 1)
    if layout is not None:
        cx.members(layout.moved(1), stored[0], 1, "out", node, stored[1])


_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@register_source("LSTM", "GRU", "RNN")
def _recurrent_source(cx: Context, node: NodeProto, tracked: dict[int, Layout]) -> None:
    """Hidden units of a recurrent layer: one unit owns a row of every gate block of W, R
    and B (``[dirs, gates·H, ·]``), a column of R (the layer reads its own state), its
    entries of the initial states and peepholes, and the last axis of Y, Y_h and Y_c."""
    hidden = int(cx.attr(node, "hidden_size", 0) or 0)
    label = node_label(node)
    weights = [cx.stored(node, 1), cx.stored(node, 2)]
    if not hidden or any(w is None or len(cx.uses(w[0])) != 1 for w in weights) or cx.attr(node, "layout", 0):
        return
    gates = _GATES[node.op_type]
    group = cx.new_group(node, hidden)
    seg = group.segment(1)

    def block(k: int, total: int, axis: int) -> Layout:
        pieces = ([k * hidden] if k else []) + [seg] + ([(total - k - 1) * hidden] if total - k - 1 else [])
        return Layout(axis, tuple(pieces))

    for index, blocks in ((1, gates), (2, gates), (3, 2 * gates), (7, 3)):
        if index >= len(node.input) or not node.input[index]:
            continue
        stored = cx.stored(node, index)
        if stored is None:
            cx.block(Layout(1, (seg,)), f"{node.op_type} '{label}' has a computed input {index}")
            continue
        for k in range(blocks):
            cx.members(block(k, blocks, 1), stored[0], 1, "out", node, stored[1])
    recurrent = weights[1]
    cx.members(Layout(2, (seg,)), recurrent[0], 2, "in", node, recurrent[1])  # the layer reads its own state
    for index in (5, 6):  # initial_h, initial_c: [dirs, batch, H]
        if index < len(node.input) and node.input[index]:
            stored = cx.stored(node, index)
            if stored is not None:
                cx.members(Layout(2, (seg,)), stored[0], 2, "param", node, stored[1])
                continue
            fill = cx.producer(node.input[index])  # exporters write zeros of a computed shape
            entry = shape_entry(cx, fill, 2, 0) if fill is not None and fill.op_type == "ConstantOfShape" else None
            if entry is None or entry[2] != hidden:
                cx.block(Layout(2, (seg,)), f"{node.op_type} '{label}' has a computed initial state")
            else:
                cx.edit(("tensor", entry[0], entry[1]), Layout(0, (seg,)), entry[3])
    cx.edit(("attr", cx.node_id(node), "hidden_size"), Layout(0, (seg,)))
    for index, name in enumerate(node.output):
        if name:
            cx.set(name, Layout(3 if index == 0 else 2, (seg,)))
