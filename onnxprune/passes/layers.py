"""Which weights layer-wise calibration can handle, and how each is seen as a matrix.

A calibrated method works on a layer's weight as ``W_g ∈ R^{rows × cols}`` per group
``g``, where ``cols`` are the features of the layer's input ``x`` as the capture sees them
(:mod:`onnxprune.capture`), so that the layer computes ``y = W_g x`` on each row/patch:

- Conv ``[C_out, C_in/g, *k]``: group ``g`` is ``W[g·C_out/g : (g+1)·C_out/g].reshape(C_out/g, -1)``,
  columns in im2col order (input channel, then kernel position);
- Gemm with the weight as B: ``B`` ``[N, K]`` when ``transB=1`` (rows = N), else ``Bᵀ``;
- MatMul ``x @ W`` with a 2-D ``W`` ``[K, N]``: ``Wᵀ``.

A weight qualifies only if it reaches exactly one such node directly (or through
Identity/Cast, e.g. fp16 storage), in the main graph. Everything else (shared weights,
weights behind Transpose/Reshape/Concat, a MatMul weight on the left, batched MatMul
weights, subgraphs, the recurrent cases of :func:`_recurrent`) is pruned by magnitude, and
the result says why: a calibrated run never prunes less than it says.

LSTM/GRU/RNN weights ``[dirs, gates·H, n]`` are one group per direction (see :func:`_recurrent`).

Bias sites for bias correction (:func:`_bias_site`; where each op holds its bias and with
which gains is the op table's, :meth:`onnxprune.ops.OpSpec.bias_gain`): Conv's B (input 2)
and Gemm's C (input 2), added when absent; for MatMul, the
constant of an Add that alone reads the MatMul's output. The correction ``delta`` is per output
``[N]`` and is written as ``b' = b + scale·delta``:

- Gemm computes ``Y = alpha·A·B' + beta·C``, so keeping ``E[Y]`` needs
  ``beta·ΔC = alpha·delta``: ``scale = alpha/beta`` (1 for Conv and Add). With ``beta = 0``, C
  does not enter Y and the layer has no bias site: it is left uncorrected, with that reason
  (exact; making C count would mean rewriting ``beta`` and discarding C, for a rare case).
- A stored bias that broadcasts (Gemm's C or the Add's constant a scalar, ``[1]``, ``[1, 1]``,
  ``[1, N]``, ``[M, 1]`` ...: its last axis 1 or N) grows to ``broadcast(shape, [N])`` (``[N]``,
  ``[1, N]``, ``[M, N]``), every element being ``b + scale·delta`` under numpy's broadcasting,
  which is ONNX's: the node's output shape and every other term stay as they were. Only a bias
  read by that node alone is changed (else the layer is left uncorrected and says why), and a
  bias that is also a graph input (overridable at run time) is not grown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, helper

from onnxprune.capture import LayerSpec
from onnxprune.graph.discovery import Weight
from onnxprune.graph.index import Scope, node_label
from onnxprune.ops import spec_of


@dataclass
class BiasSite:
    """Where ``b' = b + scale·delta`` goes: an existing stored tensor (grown by broadcasting to
    the per-output shape when it is stored broadcast), or a new ``[N]`` input of ``node``."""

    node: NodeProto
    input_index: int  # the node input that holds (or will hold) the bias
    existing: str | None  # name of the stored bias tensor, None when it must be added
    scale: float = 1.0  # the bias changes by ``scale·delta`` (Gemm: alpha/beta)


@dataclass
class CalibLayer:
    """A weight that calibration handles, with its matrix view (see module docstring)."""

    weight: Weight
    node: NodeProto
    spec: LayerSpec
    groups: int
    to_matrix: Callable[[np.ndarray], np.ndarray]  # stored array -> [groups, rows, cols]
    from_matrix: Callable[[np.ndarray], np.ndarray]  # [groups, rows, cols] -> stored array
    nm_order: np.ndarray | None  # column permutation putting the N:M axis (C_in) innermost
    bias: BiasSite | None
    bias_reason: str | None  # why there is no bias site


def _attr(node: NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _reaches_directly(scope: Scope, name: str, stored: str) -> bool:
    """True if tensor ``name`` is ``stored`` itself or comes from it through Identity/Cast."""
    seen = 0
    while name != stored and seen < 8:
        node = scope.producers.get(name)
        if node is None or not spec_of(node).keeps_layout or not node.input:
            return False
        name, seen = node.input[0], seen + 1
    return name == stored


def _conv_view(shape: tuple[int, ...], groups: int) -> tuple[Callable, Callable, np.ndarray]:
    c_out, c_in_g, *kernel = shape
    positions = int(np.prod(kernel)) if kernel else 1
    rows = c_out // groups

    def to_matrix(w: np.ndarray) -> np.ndarray:
        return w.reshape(groups, rows, c_in_g * positions)

    def from_matrix(m: np.ndarray) -> np.ndarray:
        return m.reshape(shape)

    # im2col column of (channel c, position p) is c·P + p; N:M wants channels innermost
    order = np.arange(c_in_g * positions).reshape(c_in_g, positions).T.reshape(-1)
    return to_matrix, from_matrix, order


def _stored_bias(
    scope: Scope, node: NodeProto, index: int, name: str, n_out: int, scale: float
) -> tuple[BiasSite | None, str | None]:
    """The stored bias ``name`` (input ``index`` of ``node``) if the correction can go into it."""
    tensor = scope.stored_tensor(name)
    if tensor is None:
        return None, "the bias is computed, not stored"
    if len(scope.uses.get(name, [])) != 1:
        return None, "the bias is shared with other nodes"
    dims = tuple(int(d) for d in tensor.dims)
    if dims and dims[-1] not in (1, n_out):
        return None, f"the bias of shape {list(dims)} is not per output ({n_out})"
    if np.broadcast_shapes(dims, (n_out,)) != dims and name in scope.inputs:
        return None, f"the bias of shape {list(dims)} is a graph input: it cannot grow to {n_out} outputs"
    return BiasSite(node, index, name, scale), None


def _bias_site(scope: Scope, node: NodeProto, weight: Weight) -> tuple[BiasSite | None, str | None]:
    """Where bias correction goes for ``weight`` read by ``node`` (see the module docstring)."""
    shape = weight.shape
    spec = spec_of(node)
    index = spec.bias_input(node)
    if index is not None:
        gain = spec.bias_gain(node)
        if gain == 0:
            return None, f"{node.op_type} with a bias gain of 0 (Gemm beta=0) ignores its bias"
        scale = spec.weight_gain(node) / gain
        n_out = shape[weight.out_axis] if weight.out_axis is not None else 0
        if len(node.input) > index and node.input[index]:
            return _stored_bias(scope, node, index, node.input[index], n_out, scale)
        return BiasSite(node, index, None, scale), None
    # MatMul: an Add that alone reads the output, with a stored constant on the other side
    out = node.output[0]
    uses = scope.uses.get(out, [])
    if len(uses) != 1 or uses[0].node.op_type != "Add" or scope.is_output(out):
        return None, "MatMul without a following Add to hold the bias"
    add = uses[0].node
    other = add.input[1 - uses[0].index]
    if scope.stored_tensor(other) is None or len(scope.uses.get(other, [])) != 1:
        return None, "the Add after the MatMul has no bias of its own"
    return _stored_bias(scope, add, 1 - uses[0].index, other, shape[1], 1.0)


def _recurrent(node: NodeProto, index: int, weight: Weight, shape: tuple[int, ...]) -> CalibLayer | str:
    """LSTM/GRU/RNN: ``W`` ``[dirs, gates·H, I]`` multiplies x_t, ``R`` ``[dirs, gates·H, H]``
    multiplies h_{t-1}. W's statistics come from the input sequence X; R's from the output
    sequence Y of hidden states (h_0 … h_{T-1}: h_{t-1} shifted by one step, the initial state
    left out). R is calibrated for one direction, layout 0, and (GRU) linear_before_reset=1,
    where its input really is h_{t-1}."""
    dirs = shape[0]
    if int(_attr(node, "layout", 0)) != 0:
        return f"{node.op_type} with layout=1: pruned by magnitude"
    if index == 2:
        if dirs != 1:
            return f"bidirectional {node.op_type} R: pruned by magnitude"
        if node.op_type == "GRU" and not int(_attr(node, "linear_before_reset", 0)):
            return "GRU R with linear_before_reset=0 multiplies r⊙h, not h: pruned by magnitude"
        if not node.output:
            node.output.append("")
        if not node.output[0]:  # name the unused output Y so that its statistics can be read
            node.output[0] = f"{node_label(node)}.Y"
        activation = node.output[0]
    else:
        activation = node.input[0]
    spec = LayerSpec(key=weight.key, node=node_label(node), op_type="MatMul", activation=activation, cols=shape[2])
    return CalibLayer(
        weight, node, spec, dirs, lambda w: w, lambda m: m, None, None, "recurrent biases are not corrected"
    )


def calib_layer(model: ModelProto, scope: Scope, weight: Weight) -> tuple[CalibLayer | None, str | None]:
    """The calibration view of ``weight``, or None and the reason it gets magnitude instead."""
    if weight.scope:
        return None, "inside a subgraph: pruned by magnitude (calibration covers the main graph)"
    readers = [r for r in weight.readers if r.role == "weight"]
    if len(readers) != 1 or len(weight.readers) != 1:
        return None, "read by several nodes: pruned by magnitude"
    reader = readers[0]
    node = next((n for n in model.graph.node if node_label(n) == reader.node), None)
    if node is None:
        return None, "its reading node was not found: pruned by magnitude"
    op, index = node.op_type, reader.input_index
    if not _reaches_directly(scope, node.input[index], weight.name):
        return None, "reached through a reshaping op: pruned by magnitude"
    shape = weight.shape
    if op == "Conv" and index == 1 and len(shape) >= 3:
        groups = int(_attr(node, "group", 1))
        auto_pad = _attr(node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        spatial = len(shape) - 2
        to_matrix, from_matrix, order = _conv_view(shape, groups)
        pads = tuple(int(p) for p in _attr(node, "pads", [0] * 2 * spatial))
        spec = LayerSpec(
            key=weight.key,
            node=reader.node,
            op_type="Conv",
            activation=node.input[0],
            cols=int(np.prod(shape[1:])),
            groups=groups,
            kernel=tuple(int(k) for k in shape[2:]),
            strides=tuple(int(s) for s in _attr(node, "strides", [1] * spatial)),
            pads=pads,
            dilations=tuple(int(d) for d in _attr(node, "dilations", [1] * spatial)),
            auto_pad=auto_pad,
        )
        layer = CalibLayer(weight, node, spec, groups, to_matrix, from_matrix, order, None, None)
    elif op == "Gemm" and index == 1 and len(shape) == 2:
        trans_b = bool(_attr(node, "transB", 0))
        spec = LayerSpec(
            key=weight.key,
            node=reader.node,
            op_type="Gemm",
            activation=node.input[0],
            cols=shape[1] if trans_b else shape[0],
            trans_a=bool(_attr(node, "transA", 0)),
        )
        if trans_b:
            layer = CalibLayer(weight, node, spec, 1, lambda w: w[None], lambda m: m[0], None, None, None)
        else:
            layer = CalibLayer(weight, node, spec, 1, lambda w: w.T[None], lambda m: m[0].T, None, None, None)
    elif op == "MatMul" and index == 1 and len(shape) == 2:
        spec = LayerSpec(key=weight.key, node=reader.node, op_type="MatMul", activation=node.input[0], cols=shape[0])
        layer = CalibLayer(weight, node, spec, 1, lambda w: w.T[None], lambda m: m[0].T, None, None, None)
    elif op in ("LSTM", "GRU", "RNN") and index in (1, 2) and len(shape) == 3:
        found = _recurrent(node, index, weight, shape)
        if isinstance(found, str):
            return None, found
        layer = found
    else:
        return None, f"{op} input {index} with shape {list(shape)}: pruned by magnitude"
    if layer.spec.activation not in scope.producers and layer.spec.activation not in scope.inputs:
        return None, "its input comes from outside the main graph: pruned by magnitude"
    if op not in ("LSTM", "GRU", "RNN"):
        layer.bias, layer.bias_reason = _bias_site(scope, node, weight)
    return layer, None
