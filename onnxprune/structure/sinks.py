"""The consumers of channel groups as matrices, for importance and least-squares refits.

A consumer (*sink*) reads channels through a stored weight. As a matrix ``W [out, F]``
over its input features (the columns :mod:`onnxprune.capture` uses):

- Conv (one group): ``W [O, C, k…]`` reshaped to ``[O, C·∏k]``; channel ``c`` owns
  features ``c·∏k … (c+1)·∏k − 1`` (im2col order, channel-major);
- Gemm: ``B [K, N]`` transposed (``transB``: ``[N, K]`` as is); MatMul: ``B [K, N]``
  transposed. Feature ``f`` is input element ``f`` of the channel axis.

- LSTM/GRU/RNN (one direction): ``W [1, gates·H, I]`` and ``R [1, gates·H, H]`` as
  ``[gates·H, ·]``; R reads the layer's own hidden state, so a recurrent layer is a
  consumer of its own hidden-unit group.

Other consumers (ConvTranspose, a weight on the left of a MatMul) are sliced but not refitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from onnx import NodeProto

from onnxprune.capture import LayerSpec
from onnxprune.graph import tensors
from onnxprune.graph.index import node_label
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

    @property
    def label(self) -> str:
        return node_label(self.node)

    def matrix_kind(self) -> str | None:
        op = self.node.op_type
        if op == "Conv" and self.axis == 1:
            return "conv"
        if op == "Gemm" and self.axis in (0, 1):
            return "gemm"
        if op == "MatMul" and self.axis == 0:
            return "matmul"
        if op in ("LSTM", "GRU", "RNN") and self.axis == 2:
            return "recurrent"
        return None


def sinks_of(analysis: Analysis, groups: list | None = None) -> list[Sink]:
    """Every consumer of the given groups (default: all), one entry per node."""
    cx = analysis.context
    found: dict[int, Sink] = {}
    for group in groups if groups is not None else analysis.groups:
        for member in group.members:
            if member.kind != "in":
                continue
            node = consumer_of(cx, member)
            sink = found.setdefault(cx.node_id(node), Sink(node, member.tensor, member.axis))
            sink.members.append((group.gid, member))
    return list(found.values())


def weight_matrix(cx: Context, sink: Sink) -> tuple[np.ndarray, int]:
    """``(W [out, F], features per input element)`` of a refittable sink, float64."""
    w = tensors.read_array(cx.scope.stored_tensor(sink.tensor)).astype(np.float64)
    kind = sink.matrix_kind()
    if kind == "recurrent":  # [1, gates·H, features]: one direction
        return w[0], 1
    if kind == "conv":
        per = int(np.prod(w.shape[2:])) if w.ndim > 2 else 1
        return w.reshape(w.shape[0], -1), per
    if kind == "gemm" and sink.axis == 1:
        return w, 1
    return w.T, 1


def store_matrix(cx: Context, sink: Sink, matrix: np.ndarray) -> None:
    tensor = cx.scope.stored_tensor(sink.tensor)
    old = tensors.read_array(tensor)
    kind = sink.matrix_kind()
    plain = kind in ("conv", "recurrent") or (kind == "gemm" and sink.axis == 1)
    values = matrix.reshape(old.shape) if plain else matrix.T
    tensors.write_array(tensor, np.ascontiguousarray(values).astype(old.dtype))


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
    """The capture spec of a refittable sink's input, None for others."""
    node, kind = sink.node, sink.matrix_kind()
    if kind is None:
        return None
    shape = cx.stored_shape(sink.tensor)
    key = f"sink:{cx.node_id(node)}"
    if kind == "conv":
        if int(cx.attr(node, "group", 1)) != 1:
            return None
        spatial = len(shape) - 2
        auto = cx.attr(node, "auto_pad", b"NOTSET")
        return LayerSpec(
            key=key,
            node=sink.label,
            op_type="Conv",
            activation=node.input[0],
            cols=int(np.prod(shape[1:])),
            kernel=tuple(int(k) for k in shape[2:]),
            strides=tuple(int(s) for s in cx.attr(node, "strides", [1] * spatial)),
            pads=tuple(int(p) for p in cx.attr(node, "pads", [0] * 2 * spatial)),
            dilations=tuple(int(d) for d in cx.attr(node, "dilations", [1] * spatial)),
            auto_pad=auto.decode() if isinstance(auto, bytes) else str(auto),
        )
    if kind == "recurrent":
        # W reads the input sequence, R the layer's own states (Y: h_1 … h_T stands in for
        # h_0 … h_{T-1}); one direction, layout 0, and a GRU's R only with linear_before_reset
        if shape[0] != 1 or cx.attr(node, "layout", 0):
            return None
        reads_state = sink.tensor == stored_input(cx, node, 2)
        if reads_state and node.op_type == "GRU" and not cx.attr(node, "linear_before_reset", 0):
            return None
        activation = node.output[0] if reads_state else node.input[0]
        if not activation:
            return None
        return LayerSpec(key=key, node=sink.label, op_type="MatMul", activation=activation, cols=shape[2])
    if kind == "gemm":
        if cx.attr(node, "transA", 0):
            return None
        return LayerSpec(key=key, node=sink.label, op_type="Gemm", activation=node.input[0], cols=shape[sink.axis])
    return LayerSpec(key=key, node=sink.label, op_type="MatMul", activation=node.input[0], cols=shape[0])
