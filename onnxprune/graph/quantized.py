"""Integer weights of a quantized model, and the float weight each one was made from.

A quantizer rewrites ``Y = Conv(X, W)`` into a small subgraph that reads an integer copy
``Q`` of ``W`` and ends in the same tensor ``Y``: ``DequantizeLinear(Q) → Conv → Y`` (QDQ),
``ConvInteger(X_q, Q) → Cast → Mul → Y`` (dynamic), ``MatMulInteger(X_q, Qᵀ) → … → Add → Y``
(a Gemm with ``transB``). What it calls ``Q`` is its own business (onnxruntime 1.32 renamed
Gemm weights to ``W_Transposed_quantized``), so the source of ``Q`` is found by following the
graph, never by its name:

1. ``Q`` is an integer initializer read at a *data* slot of a quantized op (the op table's
   :attr:`~onnxprune.ops.OpSpec.quantized_data_slots`; zero points and scales sit at other
   slots);
2. from ``Q``, walk forward through its consumers until a tensor that the float model also
   produces (``Y``): the first such tensor on every path ends the walk;
3. the float weights read by ``Y``'s producer in the float model (directly or through
   Identity/Cast/Transpose) are the candidates; when it reads none (a static quantizer folds
   a Relu into the BatchNormalization before it, whose output then takes the Relu's name),
   those of the nearest layers upstream;
4. among the candidates and every axis order that gives ``Q``'s shape, the source is the one
   whose values correlate best with ``Q`` (Pearson's ``r`` of ``w`` against ``q``; a
   symmetric or asymmetric, per-tensor or per-channel quantization keeps it near 1; the
   wrong tensor or the wrong axis order gives ``r`` near 0). Below :data:`MIN_CORRELATION`
   nothing matches.

An integer weight with no source is an error for the caller to raise, never skipped: the
check that every pruned zero survives quantization must cover every quantized tensor.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from onnx import GraphProto, ModelProto, NodeProto, TensorProto

from onnxprune.graph import tensors
from onnxprune.graph.walk import all_graphs
from onnxprune.ops import constant_tensor, spec_of

#: Integer element types a quantized weight is stored in.
INTEGER_WEIGHT_TYPES = frozenset(
    getattr(TensorProto, name)
    for name in ("INT8", "UINT8", "INT16", "UINT16", "INT4", "UINT4")
    if hasattr(TensorProto, name)
)

#: Pearson correlation of float and integer values below which they are not one tensor.
MIN_CORRELATION = 0.5

#: Nodes of the float model searched upstream of the walk's end for the layer's weights.
MAX_UPSTREAM = 4

#: Nodes walked from an integer weight before giving up (a quantized layer is a few nodes).
MAX_WALK = 64


@dataclass(frozen=True)
class IntegerWeight:
    """An integer weight of the quantized model and the float weight it was made from.

    ``axes`` orders the float tensor's axes into the integer tensor's layout
    (``np.transpose(w, axes)`` has ``q``'s shape); ``source`` is None when no float weight
    could be traced (``reason`` says why).
    """

    stored: str
    reader: str  # "OpType 'node name'" of the first quantized op that reads it
    source: str | None
    axes: tuple[int, ...] | None
    correlation: float
    reason: str = ""


def quantized_weight_names(graph: GraphProto) -> set[str]:
    """Names read at a data slot of a quantized op in ``graph`` (its own nodes only)."""
    found = set()
    for node in graph.node:
        for slot in spec_of(node).quantized_data_slots:
            if slot < len(node.input) and node.input[slot]:
                found.add(node.input[slot])
    return found


def trace_integer_weights(
    float_model: ModelProto, int8_model: ModelProto, floats: dict[str, np.ndarray] | None = None
) -> list[IntegerWeight]:
    """Every integer weight of ``int8_model`` that ``float_model`` does not already hold,
    with the float weight of ``float_model`` it was made from (see the module docstring).
    ``floats`` are ``float_model``'s :func:`float_weights`, when the caller has them."""
    floats = float_weights(float_model) if floats is None else floats
    producers = {out: node for _, graph in all_graphs(float_model.graph) for node in graph.node for out in node.output}
    known = set(producers) | {vi.name for _, g in all_graphs(float_model.graph) for vi in g.output}
    existing = {
        t.name: t.SerializeToString()
        for _, g in all_graphs(float_model.graph)
        for t in g.initializer
        if t.data_type in INTEGER_WEIGHT_TYPES
    }
    consumers: dict[str, list[NodeProto]] = {}
    readers: dict[str, NodeProto] = {}
    integer: dict[str, TensorProto] = {}
    for _, graph in all_graphs(int8_model.graph):
        for node in graph.node:
            for slot, name in enumerate(node.input):
                consumers.setdefault(name, []).append(node)
                if slot in spec_of(node).quantized_data_slots:
                    readers.setdefault(name, node)
        integer.update({t.name: t for t in graph.initializer if t.data_type in INTEGER_WEIGHT_TYPES})
    found = []
    for name, tensor in integer.items():
        node = readers.get(name)
        if node is None or tensors.numel(tensor) <= 1:
            continue  # a zero point, a shape, or a scalar: not a weight
        if existing.get(name) == tensor.SerializeToString():
            continue  # integer already in the float model: not made by the quantizer
        reader = f"{node.op_type} '{node.name}'" if node.name else node.op_type
        q = tensors.read_array(tensor)
        ends = _walk_to_known(name, consumers, known)
        candidates = [source for end in ends for source in _weights_upstream(end, producers, floats)]
        if not candidates:
            why = "no float layer found downstream" if not ends else f"no float weight reaches {sorted(ends)[0]!r}"
            found.append(IntegerWeight(name, reader, None, None, 0.0, why))
            continue
        best = max(
            (
                (source, axes, _correlation(floats[source], q, axes))
                for source in dict.fromkeys(candidates)
                for axes in _layouts(floats[source].shape, q.shape)
            ),
            key=lambda item: item[2],
            default=None,
        )
        if best is None or best[2] < MIN_CORRELATION:
            why = (
                "no candidate has its shape" if best is None else f"best candidate '{best[0]}' correlates {best[2]:.2f}"
            )
            found.append(IntegerWeight(name, reader, None, None, 0.0 if best is None else best[2], why))
            continue
        found.append(IntegerWeight(name, reader, best[0], best[1], best[2]))
    return found


def float_weights(model: ModelProto) -> dict[str, np.ndarray]:
    """Float initializers and float Constant-node values of every graph, by name."""
    out: dict[str, np.ndarray] = {}
    for _, graph in all_graphs(model.graph):
        out.update({t.name: tensors.read_array(t) for t in graph.initializer if tensors.is_float(t)})
        for node in graph.node:
            value = constant_tensor(node)
            if value is not None and tensors.is_float(value):
                out[node.output[0]] = tensors.read_array(value)
    return out


def _walk_to_known(start: str, consumers: dict[str, list[NodeProto]], known: set[str]) -> set[str]:
    """Tensors the float model also produces, first reached on each path forward from ``start``."""
    ends: set[str] = set()
    queue, seen, walked = deque([start]), {start}, 0
    while queue and walked < MAX_WALK:
        for node in consumers.get(queue.popleft(), ()):
            walked += 1
            for out in node.output:
                if not out or out in seen:
                    continue
                seen.add(out)
                if out in known:
                    ends.add(out)
                else:
                    queue.append(out)
    return ends


def _weights_upstream(end: str, producers: dict[str, NodeProto], floats: dict[str, np.ndarray]) -> list[str]:
    """Float weights of the layer that makes ``end`` in the float model: those its producer
    reads, or, when it reads none (a quantizer may fold an activation into the layer before
    it, so the walk ends at the activation's output), those of the nearest producers upstream
    that read one, at most :data:`MAX_UPSTREAM` nodes back."""
    found: list[str] = []
    queue, seen = deque([end]), {end}
    visited = 0
    while queue and visited < MAX_UPSTREAM:
        node = producers.get(queue.popleft())
        if node is None:
            continue
        visited += 1
        weights = list(_weights_of(node, producers, floats))
        if weights:
            found.extend(weights)
            continue  # a layer: its inputs belong to other layers
        for name in node.input:
            if name and name not in seen:
                seen.add(name)
                queue.append(name)
    return found


def _weights_of(node: NodeProto, producers: dict[str, NodeProto], floats: dict[str, np.ndarray]) -> Iterator[str]:
    """Float weights ``node`` reads, directly or through Identity/Cast/Transpose."""
    for name in node.input:
        steps = 0
        while name and name not in floats and steps < 8:
            prev = producers.get(name)
            if prev is None or not spec_of(prev).keeps_values or not prev.input:
                break
            name, steps = prev.input[0], steps + 1
        if name in floats and floats[name].size > 1:
            yield name


def _layouts(source: tuple[int, ...], target: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Axis orders of a tensor shaped ``source`` that give ``target`` (identity first)."""
    if len(source) != len(target) or sorted(source) != sorted(target):
        return
    if len(source) > 6:  # too many orders to try: only the identity and the last two swapped
        orders = [tuple(range(len(source))), (*range(len(source) - 2), len(source) - 1, len(source) - 2)]
    else:
        orders = list(itertools.permutations(range(len(source))))
    for axes in orders:
        if tuple(source[a] for a in axes) == tuple(target):
            yield tuple(axes)


def _correlation(w: np.ndarray, q: np.ndarray, axes: tuple[int, ...]) -> float:
    """Pearson's r of the float values (in the integer layout) against the integer ones;
    1.0 when both are constant (a fully pruned weight and its all-zero copy: whether the
    zeros survived is the caller's check), 0.0 when only one is."""
    a = np.transpose(np.asarray(w, dtype=np.float64), axes).ravel()
    b = np.asarray(q, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    if denom == 0.0:
        return 1.0 if not np.any(a) and not np.any(b) else 0.0
    return float(np.dot(a, b) / denom)
