"""The consumers of channel groups as matrices, for importance and least-squares refits.

A consumer (*sink*) reads channels through a stored weight. As a matrix ``W [out, F]``
over its input features (the columns :mod:`onnxprune.capture` uses) it is the op table's
matrix view (:meth:`onnxprune.ops.OpSpec.matrix_view`, the same one calibrated pruning uses):
Conv im2col (channel ``c`` owns features ``c·∏k … (c+1)·∏k − 1``), Gemm ``op(B)ᵀ``, MatMul
``Bᵀ``, LSTM/GRU/RNN ``W``/``R`` (R reads the layer's own hidden state, so a recurrent layer is a
consumer of its own hidden-unit group). A sink is refitted when its view reads the channels on
its columns (``in_axis``), its input can be captured, and it has one group, or groups that all
read the same rows (a bidirectional layer's ``W``: both directions multiply ``x_t``), which
are then one matrix of the groups' rows stacked, ``[groups·rows, cols]``: a least-squares
refit is row by row on the same inputs, so stacking changes nothing.

Other consumers (ConvTranspose, a weight on the left of a MatMul) are sliced but not refitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto

from onnxprune.capture import LayerSpec
from onnxprune.graph import tensors
from onnxprune.graph.gs_edit import EditGraph
from onnxprune.graph.index import node_label
from onnxprune.ops import spec_of
from onnxprune.ops.spec import MatrixView
from onnxprune.structure.analysis import Analysis, Context
from onnxprune.structure.constants import consumer_of, stored_input
from onnxprune.structure.groups import Member


@dataclass
class Sink:
    """One consumer node and every group member it reads through its weight."""

    node: NodeProto
    tensor: str
    axis: int
    members: list[tuple[int, Member]] = field(default_factory=list)  # (group id, member)
    view: MatrixView | str | None = None  # the op table's matrix view when found, or why none

    @property
    def label(self) -> str:
        return node_label(self.node)

    def matrix_kind(self) -> str | None:
        """The family of the sink's matrix view ("conv", "gemm", "matmul", "recurrent"), None if none."""
        return self.view.family if isinstance(self.view, MatrixView) else None


def matrix_view(cx: Context, sink: Sink) -> MatrixView | str:
    """The op table's matrix view of the sink's weight as stored now, or why it has none."""
    node = sink.node
    index = next((i for i in range(len(node.input)) if stored_input(cx, node, i) == sink.tensor), None)
    if index is None:
        return f"'{sink.tensor}' is not a stored input of {sink.label}"
    view = spec_of(node).matrix_view(node, index, cx.stored_shape(sink.tensor))
    if isinstance(view, MatrixView) and view.in_axis != sink.axis:
        return f"{sink.label} reads the channels on axis {sink.axis} of '{sink.tensor}', not on axis {view.in_axis}"
    return view


def _refittable(cx: Context, sink: Sink) -> MatrixView:
    view = matrix_view(cx, sink)
    if isinstance(view, str):
        raise ValueError(f"consumer {sink.label} has no matrix view: {view}")
    return view


def sinks_of(analysis: Analysis, groups: list | None = None) -> list[Sink]:
    """Every consumer of the given groups (default: all), one entry per node."""
    cx = analysis.context
    found: dict[int, Sink] = {}
    for group in groups if groups is not None else analysis.groups:
        for member in group.members:
            if member.kind != "in":
                continue
            node = consumer_of(cx, member)
            sink = found.get(cx.node_id(node))
            if sink is None:
                sink = found[cx.node_id(node)] = Sink(node, member.tensor, member.axis)
                sink.view = matrix_view(cx, sink)
            sink.members.append((group.gid, member))
    return list(found.values())


def weight_matrix(cx: Context, sink: Sink) -> tuple[np.ndarray, int]:
    """``(W [out, F], features per input element)`` of a refittable sink, float64 (the rows of
    every group stacked: one group, or groups reading the same rows; see the module docstring)."""
    view = _refittable(cx, sink)
    w = tensors.read_array(cx.scope.stored_tensor(sink.tensor)).astype(np.float64)
    matrices = view.to_matrix(w)
    return matrices.reshape(-1, matrices.shape[-1]), view.positions


def store_matrix(graph: EditGraph, cx: Context, sink: Sink, matrix: np.ndarray) -> None:
    """Write ``W [out, F]`` (as :func:`weight_matrix` gives it) back into the sink's weight,
    on the structural pass's gs graph."""
    view = _refittable(cx, sink)
    old = graph.values(sink.tensor)
    values = view.from_matrix(matrix.reshape(-1, view.rows, matrix.shape[-1]))
    graph.set_values(sink.tensor, np.ascontiguousarray(values).astype(old.dtype))


def removed_features(sink: Sink, removed: Mapping[int, np.ndarray], per_feature: int, length: int) -> np.ndarray:
    """Bool [F]: True for features of removed units (``length`` input elements)."""
    gone = np.zeros(length, dtype=bool)
    for gid, member in sink.members:
        units = removed.get(gid)
        if units is None or not len(units):
            continue
        gone[member.elements(units)] = True
    return np.repeat(gone, per_feature)


def unit_features(sink: Sink, gid: int, per_feature: int, length: int) -> np.ndarray:
    """Int [F]: the unit of group ``gid`` each feature belongs to, −1 for others."""
    labels = np.full(length, -1, dtype=np.int64)
    for g, member in sink.members:
        if g != gid:
            continue
        seg = member.segment
        n = seg.length // seg.per
        labels[member.offset : member.offset + seg.length] = np.repeat(np.arange(n), seg.per)
    return np.repeat(labels, per_feature)


def layer_spec(cx: Context, sink: Sink) -> LayerSpec | None:
    """The capture spec of a refittable sink's input, None for others.

    Refittable: a matrix view of one group, or of groups that all read the same rows (a
    bidirectional layer's ``W``; not a grouped Conv, whose groups read different channels),
    whose input is a named tensor. A Gemm with ``transA`` reads its input ``[K, M]``: capture
    cuts its rows from the transpose, as calibrated pruning does.
    """
    view = matrix_view(cx, sink)
    if isinstance(view, str) or view.capture_groups != 1:
        return None
    activation = view.activation_name(sink.node)
    if not activation:
        return None
    return LayerSpec.from_view(view, key=f"sink:{cx.node_id(sink.node)}", node=sink.label, activation=activation)
