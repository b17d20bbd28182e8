"""Dead channels: units whose value is a constant wherever they are consumed.

A producer channel whose weights are all zero outputs its bias, ``b_c``, everywhere; a
BatchNormalization channel with ``γ_c = 0`` outputs ``β_c``. Such a constant travels
through the group: activations map it (``relu(b_c)``), BN maps it (``γ(k−μ)/√(σ²+ε)+β``),
a residual Add sums the constants of both branches (it stays constant only if both are),
Flatten repeats it over the channel's block of features. For every tensor that carries
a group this module computes one value per element of the channel axis: the constant, or
NaN where the value is not a constant (or not known to be one).

At a consumer with weight ``W`` (input axis moved first), removing a constant input
element ``e`` changes the output by ``k_e·W[e]``, the same at every output position, so
it is folded into the bias exactly: ``Δb = Σ_e k_e·Σ_{kernel} W[e, o, kernel]``. This
holds for Gemm, MatMul, LSTM input weights and unpadded Conv; a padded Conv sees zeros
instead of ``k_e`` at the border, so there only ``k_e = 0`` is exact.

A unit is *dead* (removable with unchanged outputs) when its elements are constant at
every consumer of its group and every consumer can absorb them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto

from onnxprune.graph import tensors
from onnxprune.graph.index import node_label
from onnxprune.structure.analysis import Analysis, Context
from onnxprune.structure.groups import Group, Layout, Member

log = logging.getLogger(__name__)

_erf = np.vectorize(math.erf, otypes=[np.float64])

UNARY: dict[str, Callable[[np.ndarray, NodeProto, Context], np.ndarray]] = {
    "Relu": lambda x, n, cx: np.maximum(x, 0.0),
    "Sigmoid": lambda x, n, cx: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": lambda x, n, cx: np.tanh(x),
    "Erf": lambda x, n, cx: _erf(x),
    "Exp": lambda x, n, cx: np.exp(x),
    "Abs": lambda x, n, cx: np.abs(x),
    "Neg": lambda x, n, cx: -x,
    "Sqrt": lambda x, n, cx: np.sqrt(x),
    "Identity": lambda x, n, cx: x,
    "Cast": lambda x, n, cx: x,
    "Dropout": lambda x, n, cx: x,
    "Softplus": lambda x, n, cx: np.log1p(np.exp(x)),
    "LeakyRelu": lambda x, n, cx: np.where(x >= 0, x, float(cx.attr(n, "alpha", 0.01)) * x),
    "Elu": lambda x, n, cx: np.where(x >= 0, x, float(cx.attr(n, "alpha", 1.0)) * np.expm1(x)),
    "HardSigmoid": lambda x, n, cx: np.clip(float(cx.attr(n, "alpha", 0.2)) * x + float(cx.attr(n, "beta", 0.5)), 0, 1),
    "HardSwish": lambda x, n, cx: x * np.clip(x / 6.0 + 0.5, 0, 1),
    "Gelu": lambda x, n, cx: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
}

BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
    "Pow": np.power,
}


@dataclass
class DeadUnits:
    """Per group: the units removable exactly, and the bias changes of their consumers."""

    units: dict[int, np.ndarray] = field(default_factory=dict)
    constant_kept: dict[int, int] = field(default_factory=dict)  # constant units a consumer cannot absorb
    reasons: dict[int, str] = field(default_factory=dict)


def _vector(cx: Context, name: str, node: NodeProto, index: int, axis: int, length: int, out_rank: int) -> np.ndarray:
    """Values of a stored operand along output axis ``axis``, or NaN where they vary elsewhere."""
    stored = cx.stored(node, index)
    if stored is None:
        return np.full(length, np.nan)
    values = tensors.read_array(cx.scope.stored_tensor(stored[0])).astype(np.float64)
    shape = values.shape
    pos = axis - (out_rank - len(shape))
    if any(d != 1 for i, d in enumerate(shape) if i != pos):
        return np.full(length, np.nan)
    if pos < 0 or shape[pos] == 1:
        return np.full(length, float(values.reshape(-1)[0]) if values.size else np.nan)
    return values.reshape(-1)


def _source_constants(cx: Context, node: NodeProto, layout: Layout) -> np.ndarray:
    """A producer's output channels: its bias where the weight slice is all zero, else NaN."""
    weight_index = 1
    stored = cx.stored(node, weight_index)
    length = layout.length
    if stored is None or node.op_type in ("LSTM", "GRU", "RNN"):
        return np.full(length, np.nan)  # a recurrent unit's state depends on the sequence
    w = tensors.read_array(cx.scope.stored_tensor(stored[0]))
    if node.op_type == "Conv":
        axis = 0
    elif node.op_type == "ConvTranspose":
        axis = 1
    elif node.op_type == "Gemm":
        axis = 0 if cx.attr(node, "transB", 0) else 1
    else:
        axis = w.ndim - 1
    flat = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    zero = ~np.any(flat != 0, axis=1)
    out = np.full(length, np.nan)
    bias = np.zeros(length)
    if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
        bias = _vector(cx, node.input[2], node, 2, 0, length, 1)
        if node.op_type == "Gemm":
            shape = cx.shape(node.input[2]) or ()
            if len(shape) == 2 and shape[0] != 1:
                bias = np.full(length, np.nan)
    if node.op_type == "Gemm":
        bias = bias * float(cx.attr(node, "beta", 1.0))  # Y = alpha·A·B + beta·C
    out[zero] = bias[zero]
    return out


def _reshaped(cx: Context, node: NodeProto, src: Layout, dst: Layout, values: np.ndarray) -> np.ndarray:
    if dst.length == src.length:
        return values
    if dst.length > src.length:
        return np.repeat(values, dst.length // src.length)
    inner = src.length // dst.length
    blocks = values.reshape(dst.length, inner)
    same = np.all(blocks == blocks[:, :1], axis=1)
    return np.where(same, blocks[:, 0], np.nan)


def _depthwise(cx: Context, node: NodeProto, x: np.ndarray) -> np.ndarray:
    w = tensors.read_array(cx.scope.stored_tensor(cx.stored(node, 1)[0])).astype(np.float64)
    bias = np.zeros(len(x))
    if len(node.input) > 2 and node.input[2]:
        bias = _vector(cx, node.input[2], node, 2, 0, len(x), 1)
    padded = _padded(cx, node)
    rows = w.reshape(len(x), -1)
    out = np.where(x == 0, bias, np.nan if padded else x * rows.sum(axis=1) + bias)
    out = np.where(np.isnan(x), np.nan, out)
    return np.where(~np.any(rows != 0, axis=1), bias, out)  # a zero filter outputs its bias


def _padded(cx: Context, node: NodeProto) -> bool:
    pads = cx.attr(node, "pads") or []
    auto = cx.attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    return any(int(p) for p in pads) or auto in ("SAME_UPPER", "SAME_LOWER")


def propagate(analysis: Analysis) -> dict[str, np.ndarray]:
    """The constant (or NaN) of every element of every tracked tensor's channel axis."""
    cx = analysis.context
    layouts = analysis.layouts
    values: dict[str, np.ndarray] = {}
    for node in cx.model.graph.node:
        outs = [o for o in node.output if o in layouts]
        if not outs:
            continue
        op = node.op_type
        for out in outs:
            layout = layouts[out]
            length = layout.length
            result = np.full(length, np.nan)
            ins = {i: values.get(name) for i, name in enumerate(node.input) if name in layouts}
            x = ins.get(0)
            if op in ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN") and _is_source(
                cx, node, out, layouts
            ):
                result = _source_constants(cx, node, layout)
            elif op == "Conv" and x is not None:
                result = _depthwise(cx, node, x)
            elif op in UNARY and x is not None:
                with np.errstate(all="ignore"):
                    result = UNARY[op](x, node, cx)
            elif op == "Clip" and x is not None:
                lo = cx.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
                hi = cx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                lo_v = float(lo.reshape(-1)[0]) if lo is not None else float(cx.attr(node, "min", -np.inf))
                hi_v = float(hi.reshape(-1)[0]) if hi is not None else float(cx.attr(node, "max", np.inf))
                result = np.clip(x, lo_v, hi_v)
            elif op in BINARY:
                result = _binary(cx, node, layout, values, layouts)
            elif op == "BatchNormalization" and x is not None:
                result = _batchnorm(cx, node, x, length)
            elif op == "InstanceNormalization" and x is not None:
                beta = _vector(cx, node.input[2], node, 2, 0, length, 1)
                result = np.where(np.isnan(x), np.nan, beta)
            elif op in ("MaxPool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceMin"):
                result = x if x is not None else result
            elif op == "AveragePool" and x is not None:
                exact = not _padded(cx, node) or not cx.attr(node, "count_include_pad", 0)
                result = x if exact else np.where(x == 0, 0.0, np.nan)
            elif op in (
                "Transpose",
                "Gather",
                "Slice",
                "Resize",
                "Upsample",
                "Squeeze",
                "Unsqueeze",
                "Reshape",
                "Flatten",
            ):
                if x is not None:
                    result = _reshaped(cx, node, layouts[node.input[0]], layout, x)
            elif op == "Pad" and x is not None:
                mode = cx.attr(node, "mode", b"constant")
                fill = cx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                fill_v = float(fill.reshape(-1)[0]) if fill is not None else 0.0
                result = np.where(x == fill_v, x, np.nan) if mode in (b"constant", "constant") else x
            elif op == "Concat":
                result = _concat(cx, node, layout, values, layouts)
            elif op == "Split" and x is not None:
                result = _split_piece(node, out, layouts, x)
            elif op == "MatMul":
                a, b = ins.get(0), ins.get(1)
                zero = np.zeros(length, dtype=bool)
                for v in (a, b):
                    if v is not None and len(v) == length:
                        zero |= v == 0
                result = np.where(zero, 0.0, np.nan)
            elif op == "Softmax" and x is not None:
                shape = cx.shape(out) or ()
                axis = int(cx.attr(node, "axis", -1)) % max(len(shape), 1)
                result = np.where(np.isnan(x), np.nan, 1.0 / shape[axis]) if shape else result
            values[out] = np.asarray(result, dtype=np.float64)
    return values


def _is_source(cx: Context, node: NodeProto, out: str, layouts: dict[str, Layout]) -> bool:
    layout = layouts[out]
    groups = layout.groups()
    return len(layout.pieces) == 1 and any(node_label(node) in g.sources for g in groups)


def _binary(cx: Context, node: NodeProto, layout: Layout, values: dict, layouts: dict) -> np.ndarray:
    out_rank = cx.rank(node.output[0]) or 0
    fn = BINARY[node.op_type]
    operands = []
    for index, name in enumerate(node.input):
        if name in layouts and name in values:
            operands.append(values[name])
        else:
            operands.append(_vector(cx, name, node, index, layout.axis, layout.length, out_rank))
    with np.errstate(all="ignore"):
        result = fn(operands[0], operands[1])
    if node.op_type == "Mul":
        for v in operands:
            result = np.where(v == 0, 0.0, result)
    return result


def _batchnorm(cx: Context, node: NodeProto, x: np.ndarray, length: int) -> np.ndarray:
    gamma, beta, mean, var = (_vector(cx, node.input[i], node, i, 0, length, 1) for i in range(1, 5))
    eps = float(cx.attr(node, "epsilon", 1e-5))
    with np.errstate(all="ignore"):
        out = gamma * (x - mean) / np.sqrt(var + eps) + beta
    return np.where(gamma == 0, beta, out)


def _concat(cx: Context, node: NodeProto, layout: Layout, values: dict, layouts: dict) -> np.ndarray:
    parts = []
    for name in node.input:
        if name in layouts and name in values and layouts[name].axis == layout.axis:
            parts.append(values[name])
        else:
            shape = cx.shape(name) or ()
            parts.append(np.full(shape[layout.axis] if shape else 0, np.nan))
    joined = np.concatenate(parts) if parts else np.zeros(0)
    return joined if len(joined) == layout.length else np.full(layout.length, np.nan)


def _split_piece(node: NodeProto, out: str, layouts: dict, x: np.ndarray) -> np.ndarray:
    source = layouts[node.input[0]]
    if layouts[out].axis != source.axis:
        return x
    offset = 0
    for name in node.output:
        length = layouts[name].length if name in layouts else 0
        if name == out:
            return x[offset : offset + length]
        offset += length
    return np.full(layouts[out].length, np.nan)


# ---------------------------------------------------------------------------------------
# Absorbing constants at the consumers


def consumer_of(cx: Context, member: Member) -> NodeProto:
    """The node that consumes ``member`` (past a Cast/Identity in front of its weight)."""
    node = cx.model.graph.node[member.reader[0]]
    while node.op_type in ("Cast", "Identity"):
        node = cx.uses(node.output[0])[0].node
    return node


def data_input(cx: Context, node: NodeProto, member: Member) -> str:
    """The data input of consumer ``node`` whose channels ``member`` reads."""
    if node.op_type == "MatMul":
        weight_side = member.axis == 0  # B [K, N] read on axis 0: the data is A
        return node.input[0] if weight_side else node.input[1]
    if node.op_type in ("LSTM", "GRU", "RNN") and member.tensor == stored_input(cx, node, 2):
        return node.output[0] if node.output else ""  # R multiplies the layer's own hidden state
    return node.input[0]


def stored_input(cx: Context, node: NodeProto, index: int) -> str | None:
    """The stored tensor behind input ``index`` of ``node``, if any."""
    found = cx.stored(node, index)
    return None if found is None else found[0]


def output_scale(cx: Context, node: NodeProto) -> float:
    """What multiplies ``x·W`` in the node's output (Gemm ``alpha``, else 1)."""
    return float(cx.attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0


def absorbable(cx: Context, node: NodeProto, member: Member, k: np.ndarray) -> np.ndarray:
    """Per element: can ``node`` fold the constant ``k`` into its bias exactly?"""
    if node.op_type == "Gemm" and float(cx.attr(node, "beta", 1.0)) == 0.0:
        return k == 0  # C is ignored: there is no bias to fold into
    if node.op_type == "MatMul" and member.axis != 0:
        return k == 0  # a weight on the left: the change would be per row, not per output
    if node.op_type == "Conv":
        return np.ones(len(k), dtype=bool) if not _padded(cx, node) else k == 0
    if node.op_type == "ConvTranspose":
        return k == 0
    return np.ones(len(k), dtype=bool)


def _consumed(
    cx: Context, group: Group, values: dict[str, np.ndarray]
) -> Iterator[tuple[Member, NodeProto, np.ndarray | None]]:
    """Each consumer member of ``group`` with its node and the constants of its data input."""
    for member in group.members:
        if member.kind == "in":
            node = consumer_of(cx, member)
            yield member, node, values.get(data_input(cx, node, member))


def dead_units(analysis: Analysis, values: dict[str, np.ndarray] | None = None) -> DeadUnits:
    """The units of each prunable group that can be removed without changing outputs."""
    cx = analysis.context
    values = propagate(analysis) if values is None else values
    found = DeadUnits()
    for group in analysis.prunable:
        ok = np.ones(group.n, dtype=bool)
        constant = np.ones(group.n, dtype=bool)
        for member, node, vec in _consumed(cx, group, values):
            if vec is None:
                ok[:] = False
                constant[:] = False
                break
            seg = member.segment
            part = vec[member.offset : member.offset + seg.length].reshape(group.n, seg.per)
            is_const = ~np.isnan(part).any(axis=1)
            can = np.array(
                [
                    absorbable(cx, node, member, row).all() if c else False
                    for row, c in zip(part, is_const, strict=False)
                ]
            )
            constant &= is_const
            ok &= is_const & can
        units = np.flatnonzero(ok)
        if len(units) >= group.n:
            units = units[1:]  # a group keeps at least one unit
        if units.size:
            found.units[group.gid] = units
        kept = int((constant & ~ok).sum())
        if kept:
            found.constant_kept[group.gid] = kept
            found.reasons[group.gid] = f"{kept} constant unit(s) feed a padded Conv with a non-zero value: kept"
    return found


def bias_deltas(
    analysis: Analysis, removed: dict[int, np.ndarray], values: dict[str, np.ndarray]
) -> dict[int, np.ndarray]:
    """Consumer node index -> the change of its bias when ``removed`` units (constant) go.

    The vector is per output of the consumer (for LSTM/GRU/RNN: ``[dirs, gates·hidden]``).
    """
    cx = analysis.context
    deltas: dict[int, np.ndarray] = {}
    for group in analysis.groups:
        units = removed.get(group.gid)
        if units is None or not len(units):
            continue
        for member, node, vec in _consumed(cx, group, values):
            if vec is None:
                continue
            idx = member.elements(units)
            k = vec[idx]
            k = np.where(np.isnan(k), 0.0, k)
            if not np.any(k):
                continue
            w = tensors.read_array(cx.scope.stored_tensor(member.tensor)).astype(np.float64)
            moved = np.moveaxis(w, member.axis, 0)[idx]
            contribution = np.tensordot(k, moved, axes=1)
            if node.op_type == "Conv":
                contribution = contribution.reshape(contribution.shape[0], -1).sum(axis=1)
            contribution = contribution * output_scale(cx, node)
            key = cx.node_id(node)
            deltas[key] = deltas.get(key, 0) + contribution
    return deltas
