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

What each op does to a constant (and whether a consumer absorbs it) is its spec's answer,
with the maths in its family module of :mod:`onnxprune.ops`; this module walks the graph,
checks the consumers and sums the bias changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto

from onnxprune.graph.index import node_label
from onnxprune.ops import spec_of
from onnxprune.structure.analysis import Analysis, Context
from onnxprune.structure.groups import Group, Layout, Member

log = logging.getLogger(__name__)


@dataclass
class DeadUnits:
    """Per group: the units removable exactly, and the bias changes of their consumers."""

    units: dict[int, np.ndarray] = field(default_factory=dict)
    constant_kept: dict[int, int] = field(default_factory=dict)  # constant units a consumer cannot absorb
    reasons: dict[int, str] = field(default_factory=dict)


def propagate(analysis: Analysis) -> dict[str, np.ndarray]:
    """The constant (or NaN) of every element of every tracked tensor's channel axis.

    Each node's spec answers (:meth:`onnxprune.ops.OpSpec.propagate_constant`; the group a
    node started: :meth:`~onnxprune.ops.OpSpec.source_constants`); NaN where it knows none.
    """
    cx = analysis.context
    layouts = analysis.layouts
    values: dict[str, np.ndarray] = {}
    for node in cx.model.graph.node:
        outs = [o for o in node.output if o in layouts]
        if not outs:
            continue
        spec = spec_of(node)
        for out in outs:
            layout = layouts[out]
            if spec.channel_source(node) is not None and _is_source(cx, node, out, layouts):
                result = spec.source_constants(cx, node, layout)
            else:
                result = spec.propagate_constant(cx, node, out, values)
            values[out] = np.asarray(np.full(layout.length, np.nan) if result is None else result, dtype=np.float64)
    return values


def _is_source(cx: Context, node: NodeProto, out: str, layouts: dict[str, Layout]) -> bool:
    layout = layouts[out]
    groups = layout.groups()
    return len(layout.pieces) == 1 and any(node_label(node) in g.sources for g in groups)


# ---------------------------------------------------------------------------------------
# Absorbing constants at the consumers


def consumer_of(cx: Context, member: Member) -> NodeProto:
    """The node that consumes ``member`` (past a Cast/Identity in front of its weight)."""
    node = cx.model.graph.node[member.reader[0]]
    while spec_of(node).carries_stored(node):
        node = cx.uses(node.output[0])[0].node
    return node


def data_input(cx: Context, node: NodeProto, member: Member) -> str:
    """The data input of consumer ``node`` whose channels ``member`` reads."""
    return spec_of(node).data_input(cx, node, member.tensor, member.axis)


def stored_input(cx: Context, node: NodeProto, index: int) -> str | None:
    """The stored tensor behind input ``index`` of ``node``, if any."""
    found = cx.stored(node, index)
    return None if found is None else found[0]


def output_scale(cx: Context, node: NodeProto) -> float:
    """What multiplies ``x·W`` in the node's output (Gemm ``alpha``, else 1)."""
    return spec_of(node).weight_gain(node)


def absorbable(cx: Context, node: NodeProto, member: Member, k: np.ndarray) -> np.ndarray:
    """Per element: can ``node`` fold the constant ``k`` into its bias exactly?

    Only a zero can go where the bias cannot take a change (what
    :func:`onnxprune.structure.bias.bias_problem` says of the edited graph): a bias the node
    ignores, one computed by other nodes, an input whose constant does not reach the bias
    exactly (a padded Conv, a weight on the left of a MatMul).
    """
    spec = spec_of(node)
    if spec.bias_gain(node) == 0.0:
        return k == 0  # the bias is ignored (Gemm beta = 0): there is none to fold into
    slot = spec.bias_input(node)
    if slot is not None and len(node.input) > slot and node.input[slot] and cx.stored(node, slot) is None:
        return k == 0  # a computed bias: nothing stored to add the change to
    if not spec.absorbs_constant(cx, node, member.axis):
        return k == 0  # a padded Conv, a ConvTranspose, a weight on the left of a MatMul
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
            found.reasons[group.gid] = (
                f"{kept} constant unit(s) with a non-zero value feed a consumer that cannot absorb it "
                "(a padded Conv, a computed or ignored bias): kept"
            )
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
            w = cx.stored_array(member.tensor).astype(np.float64)
            moved = np.moveaxis(w, member.axis, 0)[idx]
            contribution = np.tensordot(k, moved, axes=1)
            contribution = spec_of(node).constant_bias(node, contribution) * output_scale(cx, node)
            key = cx.node_id(node)
            deltas[key] = deltas.get(key, 0) + contribution
    return deltas
