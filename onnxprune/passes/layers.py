"""Which weights layer-wise calibration can handle, with the op table's matrix view of each.

A calibrated method works on a layer's weight as ``W_g ∈ R^{rows × cols}`` per group
``g``, where ``cols`` are the features of the layer's input ``x`` as the capture sees them
(:mod:`onnxprune.capture`), so that the layer computes ``y = W_g x`` on each row/patch. That
view is the op table's (:meth:`onnxprune.ops.OpSpec.matrix_view`: Conv im2col, Gemm ``transB``,
MatMul ``x @ W``, LSTM/GRU/RNN ``W`` and ``R`` one group per direction; the maths is in each
family's module), shared with the structural refit (:mod:`onnxprune.structure.sinks`).

A weight qualifies only if it reaches exactly one such node directly (or through
Identity/Cast, e.g. fp16 storage), in the main graph, and the table gives it a view.
Everything else (shared weights, weights behind Transpose/Reshape/Concat, a MatMul weight on
the left, batched MatMul weights, subgraphs, the recurrent cases without a view) is pruned by
magnitude, and the result says why: a calibrated run never prunes less than it says.

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
from onnx import ModelProto, NodeProto

from onnxprune.capture import LayerSpec
from onnxprune.graph.discovery import Weight
from onnxprune.graph.index import Scope, node_label
from onnxprune.ops import spec_of
from onnxprune.ops.spec import MatrixView


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
    view: MatrixView
    bias: BiasSite | None = None
    bias_reason: str | None = None  # why there is no bias site

    @property
    def groups(self) -> int:
        return self.view.groups

    @property
    def to_matrix(self) -> Callable[[np.ndarray], np.ndarray]:
        """Stored array -> ``[groups, rows, cols]``."""
        return self.view.to_matrix

    @property
    def from_matrix(self) -> Callable[[np.ndarray], np.ndarray]:
        """``[groups, rows, cols]`` -> stored array."""
        return self.view.from_matrix

    @property
    def nm_order(self) -> np.ndarray | None:
        """Column permutation putting the N:M axis (C_in) innermost."""
        return self.view.nm_order


def _reaches_directly(scope: Scope, name: str, stored: str) -> bool:
    """True if tensor ``name`` is ``stored`` itself or comes from it through Identity/Cast."""
    seen = 0
    while name != stored and seen < 8:
        node = scope.producers.get(name)
        if node is None or not spec_of(node).keeps_layout or not node.input:
            return False
        name, seen = node.input[0], seen + 1
    return name == stored


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
    if len(uses) != 1 or not spec_of(uses[0].node).adds_bias or scope.is_output(out):
        return None, "MatMul without a following Add to hold the bias"
    add = uses[0].node
    other = add.input[1 - uses[0].index]
    if scope.stored_tensor(other) is None or len(scope.uses.get(other, [])) != 1:
        return None, "the Add after the MatMul has no bias of its own"
    return _stored_bias(scope, add, 1 - uses[0].index, other, shape[1], 1.0)


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
    index = reader.input_index
    if not _reaches_directly(scope, node.input[index], weight.name):
        return None, "reached through a reshaping op: pruned by magnitude"
    view = spec_of(node).matrix_view(node, index, weight.shape)
    if isinstance(view, str):
        return None, f"{view}: pruned by magnitude"
    port, at = view.activation
    if port == "output":  # a recurrent R reads the layer's own states, Y
        while len(node.output) <= at:
            node.output.append("")
        if not node.output[at]:  # name the unused output so that its statistics can be read
            node.output[at] = f"{node_label(node)}.Y" if at == 0 else f"{node_label(node)}.output{at}"
    spec = LayerSpec.from_view(view, key=weight.key, node=reader.node, activation=view.activation_name(node))
    layer = CalibLayer(weight, node, spec, view)
    if spec.activation not in scope.producers and spec.activation not in scope.inputs:
        return None, "its input comes from outside the main graph: pruned by magnitude"
    if spec_of(node).bias_layout == "gates":
        layer.bias_reason = "recurrent biases are not corrected"
    elif view.capture_op == "MatMulLeft":
        layer.bias_reason = "a weight on the left (W @ x): its bias is not corrected"
    else:
        layer.bias, layer.bias_reason = _bias_site(scope, node, weight)
    return layer, None
