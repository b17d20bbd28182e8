"""Compute cost of a model: multiply-accumulates (MACs), FLOPs, and the work left to a sparse kernel.

Shapes are those of one run on inputs of the given concrete shapes (batch included). Per
node, with ``|T|`` the number of elements of tensor ``T``:

* Conv, ``X[N, C_in, *S_in]``, ``W[C_out, C_in/g, *k]``, ``Y[N, C_out, *S_out]``:
  ``MACs = N·C_out·∏S_out · (C_in/g)·∏k`` (``= |Y|·∏W.shape[1:]``): every output element
  is a dot product over its group's input channels and the kernel window.
* ConvTranspose, ``X[N, C_in, *S_in]``, ``W[C_in, C_out/g, *k]``:
  ``MACs = N·C_in·∏S_in · (C_out/g)·∏k`` (``= |X|·∏W.shape[1:]``): every input element is
  scattered into its group's output channels over the kernel window.
* Gemm, ``op(A)[M, K]``, ``op(B)[K, N]`` (``transA``/``transB`` honoured): ``MACs = M·N·K``;
  adding the bias ``C`` costs ``M·N`` additions, reported in ``other["Gemm bias"]``.
* MatMul, ``A[..., M, K]``, ``B[..., K, N]``: ``MACs = ∏batch · M·N·K`` with ``batch`` the
  broadcast of both batch shapes; a 1-D ``A`` is a row ``[1, K]`` and a 1-D ``B`` a column
  ``[K, 1]`` whose extra axis is dropped (numpy rules).
* LSTM, GRU, RNN, ``X[T, B, I]`` (``layout=1``: ``[B, T, I]``), hidden size ``H``, ``D``
  directions, ``G`` gates (LSTM 4, GRU 3, RNN 1): ``MACs = D·T·B · G·H·(I + H)``, the input
  and recurrent matrix products of every time step (``T`` is the padded length: a
  ``sequence_lens`` input is not taken into account). Gate activations, biases and
  peepholes are not counted.
* Einsum, quantized and other contracting ops (QLinearConv, ConvInteger, QLinearMatMul,
  MatMulInteger, Attention) are listed as not counted, with the reason.

``FLOPs = 2·MACs`` (a multiply and an add). Every other node is a rough elementwise cost:
``other[op_type]`` is the number of elements it outputs (ops outside the ONNX domain are
keyed ``domain::op_type``). It is reported apart and never added to the MACs. Constant
nodes (no work at run time) and the If/Loop/Scan nodes themselves (their bodies are
counted node by node) are left out.

Non-zero MACs are what a kernel that skips zero weights would do: the dense MACs times
the density ``nnz(W)/|W|`` of the stored weight operand (found by
:func:`onnxprune.graph.discovery.discover`, through Transpose/Reshape/Cast and the other
transparent ops; several stored tensors concatenated into one operand count together, and
a tensor split between several nodes counts with its overall density). When no operand is
a stored tensor (attention's ``Q·Kᵀ``), the non-zero MACs are the dense MACs. A recurrent
op weighs the densities of ``W`` and ``R`` by their share of the work, ``I`` and ``H``:
``nonzero = dense·(d_W·I + d_R·H)/(I + H)``. Zeros are counted on stored values (for a
quantized weight that is the integer 0, not its zero point).

Shapes: the graph inputs are fixed to the given shapes on a data-free copy of the model
(:func:`~onnxprune.graph.skeleton.data_free_model`: the same graph, with the data of every
tensor over :data:`~onnxprune.graph.skeleton.DATA_FREE_KEEP` elements dropped, so memory
stays small for large models) and ONNX shape inference runs on it with data propagation. Shapes it leaves unknown in the main graph (exports that compute shapes at
run time) are read from one onnxruntime run of the real model on ones (float) and zeros
(integer) inputs, with those values added as graph outputs. A node whose shapes stay
unknown is listed as not counted, with the reason; nothing is guessed.

Subgraphs: each branch of an If is counted node by node, marked with its scope
(``if_node/then_branch``), and *not* added to the totals, since which branch runs is
known only at run time. The body of a Loop or Scan is added to the totals once: the
number of iterations is not known here. The totals of the main graph are the headline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto

from onnxprune import runtime
from onnxprune.errors import DataError
from onnxprune.graph.discovery import Weight, discover
from onnxprune.graph.index import Scope, node_label
from onnxprune.graph.skeleton import data_free_model
from onnxprune.ops import Count, constant_tensor, spec_of

log = logging.getLogger(__name__)


Dims = tuple[int, ...]


@dataclass(frozen=True)
class NodeCompute:
    """The MACs of one contracting node (Conv, Gemm, MatMul, LSTM ...)."""

    node: str
    op_type: str
    scope: str  # "" in the main graph, else the subgraph path (``if/then_branch``)
    macs: int
    nonzero_macs: int
    weight: str | None  # the stored weight operand(s), comma separated
    density: float  # nonzero_macs / macs (1.0 without a stored weight)
    counted: bool
    reason: str | None = None

    @property
    def key(self) -> str:
        return f"{self.scope}::{self.node}" if self.scope else self.node

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ComputeStats:
    """MACs and FLOPs of a model (see the module docstring for the definitions)."""

    nodes: tuple[NodeCompute, ...]
    macs: int
    nonzero_macs: int
    flops: int
    nonzero_flops: int
    other: dict[str, int]
    uncounted: tuple[str, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "nodes": [n.to_dict() for n in self.nodes],
            "macs": self.macs,
            "nonzero_macs": self.nonzero_macs,
            "flops": self.flops,
            "nonzero_flops": self.nonzero_flops,
            "other": dict(self.other),
            "uncounted": list(self.uncounted),
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------
# Shapes


def _declared(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    # a negative dim_value (some exporters write -1) is as dynamic as a dim_param
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or None)
        for d in tensor_type.shape.dim
    ]


def _graph_inputs(model: ModelProto) -> list[onnx.ValueInfoProto]:
    stored = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in stored]


def _check_shapes(model: ModelProto, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Dims]:
    """The concrete shape of every graph input: given, or declared with fixed dims."""
    inputs = _graph_inputs(model)
    names = [i.name for i in inputs]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise DataError(
            f"input_shapes names unknown input(s) {', '.join(unknown)}; the model's inputs are: {', '.join(names)}"
        )
    shapes: dict[str, Dims] = {}
    for value in inputs:
        declared = _declared(value)
        shown = "unknown" if declared is None else f"[{', '.join(str(d) for d in declared)}]"
        if value.name not in input_shapes:
            if declared is None or not all(isinstance(d, int) for d in declared):
                raise DataError(
                    f"no shape given for input '{value.name}' (declared {shown}): pass its full shape in input_shapes"
                )
            shapes[value.name] = tuple(int(d) for d in declared)
            continue
        shape = tuple(input_shapes[value.name])
        if any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
            raise DataError(f"input '{value.name}': shape {shape} must hold integers >= 0")
        fits = declared is None or (
            len(declared) == len(shape)
            and all(not isinstance(d, int) or d == s for d, s in zip(declared, shape, strict=True))
        )
        if not fits:
            raise DataError(
                f"input '{value.name}': shape {'x'.join(map(str, shape))} does not fit the model's declared shape {shown}"
            )
        shapes[value.name] = tuple(int(d) for d in shape)
    return shapes


def _known(value: onnx.ValueInfoProto) -> Dims | None:
    declared = _declared(value)
    if declared is None or not all(isinstance(d, int) for d in declared):
        return None
    return tuple(int(d) for d in declared)


def graph_shapes(graph: GraphProto) -> dict[str, Dims]:
    """Every concrete shape shape inference left in ``graph`` (not its subgraphs)."""
    shapes: dict[str, Dims] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        shape = _known(value)
        if shape is not None:
            shapes[value.name] = shape
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    for node in graph.node:
        value = constant_tensor(node)
        if value is not None:
            shapes[node.output[0]] = tuple(int(d) for d in value.dims)
    return shapes


def symbolic_dims(graph: GraphProto) -> dict[str, tuple[int | str | None, ...]]:
    """Every shape shape inference left in ``graph`` (not its subgraphs), dims as declared: an
    int where static, the ``dim_param`` where named, None where unknown."""
    dims: dict[str, tuple[int | str | None, ...]] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        declared = _declared(value)
        if declared is not None:
            dims[value.name] = tuple(declared)
    for name, shape in graph_shapes(graph).items():
        dims.setdefault(name, shape)
    return dims


@dataclass
class _Shapes:
    by_scope: dict[str, dict[str, Dims]]
    failure: str | None = None  # why onnxruntime could not report the missing shapes

    def get(self, scope: Scope, name: str) -> Dims | None:
        owner = scope.resolve(name)
        return None if owner is None else self.by_scope[owner.path].get(name)


def runtime_shapes(model: ModelProto, shapes: Mapping[str, Dims], names: list[str]) -> dict[str, Dims]:
    """Actual shapes of main-graph values ``names`` from one onnxruntime run of ``model``.

    The extra graph outputs are appended as serialized bytes (protobuf merges repeated
    fields by concatenation), so the model itself is neither copied nor changed.
    """
    outputs = {o.name for o in model.graph.output}
    extra = ModelProto()
    for name in names:
        if name not in outputs:
            extra.graph.output.add(name=name)
    sess = runtime.session(model.SerializeToString() + extra.SerializeToString(), prepack=False)  # one run
    feeds = {}
    for spec in runtime.input_specs(sess):
        fill = 1 if np.issubdtype(spec.dtype, np.floating) or spec.dtype is np.bool_ else 0
        feeds[spec.name] = np.full(shapes[spec.name], fill, dtype=spec.dtype)
    values = sess.run(names, feeds)
    return {name: tuple(int(d) for d in v.shape) for name, v in zip(names, values, strict=True) if hasattr(v, "shape")}


def _needed(node: NodeProto) -> list[str]:
    counter = spec_of(node).macs
    if counter is not None:
        found = [node.input[i] for i in counter.inputs if i < len(node.input) and node.input[i]]
        return found + [node.output[i] for i in counter.outputs if i < len(node.output) and node.output[i]]
    if _is_other(node):
        return [out for out in node.output if out]
    return []


def _is_other(node: NodeProto) -> bool:
    if node.domain in ("", "ai.onnx"):
        spec = spec_of(node)  # no work of its own (Constant, If, Loop, Scan): not in the "other" bucket
        return not spec.no_work and spec.uncounted is None
    return True


def _resolve_shapes(model: ModelProto, input_shapes: Mapping[str, Dims], notes: list[str]) -> tuple[Scope, _Shapes]:
    skeleton = data_free_model(model, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError, or C++ errors for unknown ops
        notes.append(
            f"ONNX shape inference failed ({runtime.ort_message(exc)}); shapes come from onnxruntime where possible"
        )
        inferred = skeleton
    del skeleton
    root = Scope.build(inferred.graph)
    shapes = _Shapes({scope.path: graph_shapes(scope.graph) for scope in root.all_scopes()})
    missing = [
        name
        for node in root.graph.node
        for name in _needed(node)
        if shapes.get(root, name) is None and root.resolve(name) is root
    ]
    missing = list(dict.fromkeys(missing))
    if missing:
        try:
            found = runtime_shapes(model, input_shapes, missing)
        except Exception as exc:  # onnxruntime raises its own types; a model over 2 GiB cannot be serialized
            shapes.failure = runtime.ort_message(exc)
            log.info("onnxruntime could not run the model to read shapes: %s", shapes.failure)
            notes.append(
                f"onnxruntime could not run the model to read {len(missing)} missing shape(s): {shapes.failure}"
            )
        else:
            shapes.by_scope[""].update(found)
            notes.append(
                f"{len(found)} shape(s) that ONNX shape inference could not resolve were read from one onnxruntime run"
            )
    return root, shapes


# ---------------------------------------------------------------------------------------
# Counting


def _weights_by_input(model: ModelProto) -> dict[tuple[str, str, int], list[Weight]]:
    """(scope, node label, input index) -> the stored tensors that reach that weight input."""
    found: dict[tuple[str, str, int], list[Weight]] = {}
    for weight in discover(model).weights:
        if weight.storage == "computed" or not weight.numel:
            continue
        for reader in weight.readers:
            if reader.role == "weight" and reader.input_index >= 0:
                found.setdefault((reader.scope, reader.node, reader.input_index), []).append(weight)
    return found


def _density(
    count: Count, label: str, scope: str, weights: Mapping[tuple[str, str, int], list[Weight]]
) -> tuple[Fraction, str | None]:
    total = sum(share for _, share in count.parts)
    density = Fraction(0)
    names: list[str] = []
    for alternatives, share in count.parts:
        part = Fraction(1)
        for index in alternatives:
            stored = weights.get((scope, label, index))
            if stored:
                size = sum(w.numel for w in stored)
                part = Fraction(size - sum(w.zeros for w in stored), size)
                names.extend(w.name for w in stored)
                break
        density += part * share
    return (density / total if total else Fraction(1)), (", ".join(dict.fromkeys(names)) or None)


def _uncounted(node: NodeProto, scope: Scope, reason: str) -> NodeCompute:
    return NodeCompute(node_label(node), node.op_type, scope.path, 0, 0, None, 1.0, False, reason)


def _count_node(
    node: NodeProto, scope: Scope, shapes: _Shapes, weights: Mapping[tuple[str, str, int], list[Weight]]
) -> tuple[NodeCompute, int]:
    """The node's entry and its Gemm bias additions."""
    counter = spec_of(node).macs
    assert counter is not None  # only contracting ops are counted
    label = node_label(node)
    ins, outs = [], []
    for indices, names, into in ((counter.inputs, node.input, ins), (counter.outputs, node.output, outs)):
        for i in indices:
            if i >= len(names) or not names[i]:
                return _uncounted(node, scope, f"{node.op_type} without its input {i}: cannot count"), 0
            shape = shapes.get(scope, names[i])
            if shape is None:
                if scope.path:
                    why = "inside a subgraph, where onnxruntime cannot report it"
                elif shapes.failure:
                    why = f"onnxruntime could not run the model: {shapes.failure}"
                else:
                    why = "neither shape inference nor onnxruntime reported it"
                return _uncounted(node, scope, f"shape of '{names[i]}' unknown ({why})"), 0
            into.append(shape)
    try:
        count = counter.count(node, ins, outs)
    except (ValueError, IndexError, KeyError) as exc:
        return _uncounted(node, scope, f"cannot count: {runtime.ort_message(exc)}"), 0
    density, weight = _density(count, label, scope.path, weights)
    nonzero = round(count.macs * density)
    shown = float(density) if count.macs else 1.0
    return NodeCompute(label, node.op_type, scope.path, count.macs, nonzero, weight, shown, True), count.bias


def _subgraph_owners(scope: Scope) -> Iterator[tuple[NodeProto, list[Scope]]]:
    """Each node with subgraphs and their scopes, in the order :func:`Scope.build` made them."""
    children = iter(scope.children)
    for node in scope.graph.node:
        count = sum(
            1 if a.type == AttributeProto.GRAPH else len(a.graphs)
            for a in node.attribute
            if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
        )
        if count:
            yield node, [next(children) for _ in range(count)]


def count_compute(model: ModelProto, *, input_shapes: Mapping[str, tuple[int, ...]]) -> ComputeStats:
    """MACs, FLOPs, non-zero-aware MACs and elementwise work of ``model`` for inputs of
    ``input_shapes`` (the full concrete shape of every graph input, batch included).

    Raises :class:`~onnxprune.errors.DataError` if ``input_shapes`` names an unknown input,
    misses an input with dynamic dimensions or does not fit a declared shape.
    """
    shapes_in = _check_shapes(model, input_shapes)
    notes: list[str] = []
    root, shapes = _resolve_shapes(model, shapes_in, notes)
    weights = _weights_by_input(model)
    entries: list[NodeCompute] = []
    other: dict[str, int] = {}
    unknown_other: dict[str, int] = {}
    macs = nonzero = 0
    in_totals = {root.path: True}
    for scope in root.all_scopes():
        totals = in_totals[scope.path]
        for owner, children in _subgraph_owners(scope):
            paths = ", ".join(f"'{c.path}'" for c in children)
            runs = spec_of(owner).subgraphs  # bodies run a number of times not known here: counted once
            for child in children:
                in_totals[child.path] = totals and runs == "repeated"
            if not totals:
                continue
            label = f"{owner.op_type} '{node_label(owner)}'"
            if runs == "repeated":
                notes.append(f"{label}: body {paths} counted once in the totals (the trip count is unknown here)")
            elif runs == "branches":
                notes.append(
                    f"{label}: branches {paths} are listed node by node but not added to the totals "
                    "(which branch runs is known only at run time)"
                )
            else:
                notes.append(f"{label}: subgraph(s) {paths} listed node by node but not added to the totals")
        for node in scope.graph.node:
            standard = node.domain in ("", "ai.onnx")
            spec = spec_of(node)
            if spec.macs is not None:
                entry, bias = _count_node(node, scope, shapes, weights)
                entries.append(entry)
                if totals:
                    macs += entry.macs
                    nonzero += entry.nonzero_macs
                    if bias:
                        other["Gemm bias"] = other.get("Gemm bias", 0) + bias
            elif spec.uncounted is not None:
                entries.append(_uncounted(node, scope, spec.uncounted))
            elif totals and _is_other(node):
                key = node.op_type if standard else f"{node.domain}::{node.op_type}"
                outs = [shapes.get(scope, out) for out in node.output if out]
                if any(s is None for s in outs):
                    unknown_other[key] = unknown_other.get(key, 0) + 1
                    continue
                other[key] = other.get(key, 0) + sum(math.prod(s) for s in outs)
    custom = sorted({k for k in other if "::" in k})
    if custom:
        notes.append(f"ops outside the ONNX domain are counted in 'other' only, and may hide MACs: {', '.join(custom)}")
    if unknown_other:
        listed = ", ".join(f"{k} ({n})" for k, n in sorted(unknown_other.items()))
        notes.append(f"left out of 'other', output shapes unknown: {listed}")
    uncounted = tuple(e.key for e in entries if not e.counted)
    log.debug("%d MACs (%d non-zero), %d node(s) not counted", macs, nonzero, len(uncounted))
    return ComputeStats(
        nodes=tuple(entries),
        macs=macs,
        nonzero_macs=nonzero,
        flops=2 * macs,
        nonzero_flops=2 * nonzero,
        other=other,
        uncounted=uncounted,
        notes=tuple(notes),
    )
