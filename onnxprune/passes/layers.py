"""Which weights layer-wise calibration can handle, with the op table's matrix view of each.

A calibrated method works on a layer's weight as ``W_g ∈ R^{rows × cols}`` per group
``g``, where ``cols`` are the features of the layer's input ``x`` as the capture sees them
(:mod:`onnxprune.capture`), so that the layer computes ``y = W_g x`` on each row/patch. That
view is the op table's (:meth:`onnxprune.ops.OpSpec.matrix_view`: Conv im2col, Gemm ``transB``,
MatMul ``x @ W`` and ``W @ x``, a batched MatMul ``W [*b, K, N]`` one group per batch element,
LSTM/GRU/RNN ``W`` and ``R`` one group per direction, a GRU's ``R`` with ``linear_before_reset``
= 0 one per direction and gate block, ``R_h`` reading ``r_t ⊙ h_{t−1}``; the maths is in each
family's module), shared with the structural refit (:mod:`onnxprune.structure.sinks`).

A weight qualifies if every node that reads it reads it as a weight that the table gives a
view, in the main graph or in an If/Loop/Scan body (a weight stored in a body, or a main-graph
weight that a body reads). A node may read the stored tensor ``S`` itself or ``T``,
its elements rearranged by a chain of element permutations (Transpose; Reshape with a stored
or Constant shape, Flatten, Squeeze, Unsqueeze; Identity; Cast to a float type):
``T = S.reshape(-1)[source]`` (:func:`onnxprune.graph.element_map.element_map`). The node's view
is asked for ``T``'s shape and composed with the chain (:meth:`onnxprune.ops.MatrixView.through`)::

    to_matrix(S) = view_T.to_matrix(S.reshape(-1)[source])
    from_matrix(M) = S  with  S.reshape(-1)[source] = view_T.from_matrix(M)

so the solver sees the node's own matrices, the N:M order (``nm_order``) is over ``T``'s
columns, and the stored tensor keeps its shape and dtype.

A weight several nodes read (a tied projection used twice, one Conv weight applied to two
branches) is one problem when every use sees the same matrices, the same stored element at
each ``[g, r, c]``: the rows of all uses are stacked, ``X = [X_1; X_2; …]``, so their statistics
add (``H = Σ_u H_u``, likewise C, H_ref, sqnorm and rows·mean: :func:`onnxprune.capture.stacked`)
and one solve minimises ``Σ_u ‖W X_uᵀ − Ŵ X_uᵀ‖²``. Bias correction is per use,
``b_u' = b_u + scale_u·(W − Ŵ)·E[x_u]``, where a use has a bias site of its own; a use
without one (or sharing its bias with the other) is left uncorrected and says why. Uses that see
different matrices (different shapes, or ``W`` and ``Wᵀ``) are pruned by magnitude, with the
views named in the reason.

**Layers inside bodies.** A node in an If branch or a Loop/Scan body runs once per run of its
body, so its problem is over the rows of every run: ``H = Σ_runs X_runᵀX_run`` (the capture
reads the body's value through :mod:`onnxprune.graph.expose`, which stacks it over runs), and
``min ‖W X_allᵀ − Ŵ X_allᵀ‖²`` with ``X_all`` the runs' rows stacked is the same least squares
as a main-graph layer's. A weight read in both branches of an If (or in two bodies) is a shared
weight as above, its uses' statistics added: a branch the data never takes adds no rows. The
spec names the body (``LayerSpec.scope``), and the bias site is looked up where the bias is
stored (a body initializer or Constant, or an enclosing graph's tensor), read by that node
alone; a bias that has to be added goes into the node's own body. A weight whose body never
runs on the calibration data has no rows and is pruned by magnitude, with that reason.

Everything else is pruned by magnitude, and the result says why: a weight behind Slice, Split,
Concat or DequantizeLinear or a shape known only at run time, a batched weight on the left of a
MatMul, a GRU R with ``linear_before_reset`` = 0 inside a body (its rows are made of several
tensors of the node, which capture reads in the main graph only), recurrent layers with
``layout`` = 1, ConvTranspose, a body value that cannot be carried to the main graph (an If or
Loop inside a Scan body, a body of a non-standard op: :mod:`onnxprune.graph.expose` says why).
A calibrated run never prunes less than it says.

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
- Not corrected: recurrent biases, a weight on the left of a MatMul (its delta is per row of
  ``W @ x``, not per output) and a batched MatMul weight of more than one batch element (its
  delta is per batch element and output, which a following Add's ``[N]`` bias cannot hold).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto

from onnxprune.capture import LayerSpec, LayerStats, stacked
from onnxprune.graph.discovery import Reader, Weight
from onnxprune.graph.element_map import element_map
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
    #: the graph that stores the bias, or where a new one goes (a subgraph's); None: the main graph
    owner: Scope | None = None


@dataclass
class LayerUse:
    """One node that reads a calibrated weight: its matrix view of the stored tensor (composed
    with the element permutations between them), the capture spec of its input, its bias site."""

    node: NodeProto
    spec: LayerSpec
    view: MatrixView
    bias: BiasSite | None = None
    bias_reason: str | None = None  # why there is no bias site


#: Why a layer inside an If/Loop/Scan body has no statistics when its body never ran on the data.
NEVER_RAN = "its body never ran on the calibration data: an If branch never taken, or a Loop or Scan of no iteration"


@dataclass
class CalibLayer:
    """A weight that calibration handles, with its matrix view (see module docstring): ``node``,
    ``spec``, ``view`` and the bias are its first use's; ``shared`` the other nodes that read it
    with the same matrices (a shared weight)."""

    weight: Weight
    node: NodeProto
    spec: LayerSpec
    view: MatrixView
    bias: BiasSite | None = None
    bias_reason: str | None = None  # why there is no bias site
    shared: tuple[LayerUse, ...] = ()

    @property
    def uses(self) -> tuple[LayerUse, ...]:
        """Every node that reads the weight, the first one first."""
        return (LayerUse(self.node, self.spec, self.view, self.bias, self.bias_reason), *self.shared)

    def statistics(self, stats: Mapping[str, LayerStats]) -> tuple[LayerStats, str | None]:
        """The layer's statistics from a capture's (every use's rows stacked: a shared weight is
        one problem), and why they cannot be used (None when they can)."""
        mine = stacked([stats[use.spec.key] for use in self.uses])
        why = mine.skipped or (NEVER_RAN if mine.rows == 0 else None)  # a body never run
        if why is None and mine.H is None:
            why = "no input statistics"
        return mine, why

    @property
    def reads_own_output(self) -> bool:
        """A use's input is its own node's output (a recurrent R): that input changes with the
        weight's own pruning, so it is fitted to its own dense product, not the dense model's."""
        return any(use.spec.activation in use.node.output for use in self.uses)

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


def _stored_bias(
    scope: Scope, node: NodeProto, index: int, name: str, n_out: int, scale: float
) -> tuple[BiasSite | None, str | None]:
    """The stored bias ``name`` (input ``index`` of ``node``, whose graph is ``scope``) if the
    correction can go into it, in the graph that stores it (``scope`` or one enclosing it)."""
    owner = scope.resolve(name) or scope
    tensor = owner.stored_tensor(name)
    if tensor is None:
        return None, "the bias is computed, not stored"
    if len(owner.uses.get(name, [])) != 1:
        return None, "the bias is shared with other nodes"
    dims = tuple(int(d) for d in tensor.dims)
    if dims and dims[-1] not in (1, n_out):
        return None, f"the bias of shape {list(dims)} is not per output ({n_out})"
    if np.broadcast_shapes(dims, (n_out,)) != dims and name in owner.inputs:
        return None, f"the bias of shape {list(dims)} is a graph input: it cannot grow to {n_out} outputs"
    return BiasSite(node, index, name, scale, owner), None


def _bias_site(scope: Scope, node: NodeProto, view: MatrixView) -> tuple[BiasSite | None, str | None]:
    """Where bias correction goes for the weight ``node`` reads as ``view`` (see the module
    docstring): per output, ``groups·rows`` of them."""
    spec = spec_of(node)
    index = spec.bias_input(node)
    if index is not None:
        gain = spec.bias_gain(node)
        if gain == 0:
            return None, f"{node.op_type} with a bias gain of 0 (Gemm beta=0) ignores its bias"
        scale = spec.weight_gain(node) / gain
        n_out = view.groups * view.rows // view.bias_taps
        if len(node.input) > index and node.input[index]:
            return _stored_bias(scope, node, index, node.input[index], n_out, scale)
        return BiasSite(node, index, None, scale, scope), None
    # MatMul: an Add that alone reads the output, with a stored constant on the other side
    out = node.output[0]
    uses = scope.uses.get(out, [])
    if len(uses) != 1 or not spec_of(uses[0].node).adds_bias or scope.is_output(out):
        return None, "MatMul without a following Add to hold the bias"
    add = uses[0].node
    other = add.input[1 - uses[0].index]
    holder = scope.resolve(other) or scope
    if holder.stored_tensor(other) is None or len(holder.uses.get(other, [])) != 1:
        return None, "the Add after the MatMul has no bias of its own"
    return _stored_bias(scope, add, 1 - uses[0].index, other, view.rows, 1.0)


def _view_of(model: ModelProto, scope: Scope, weight: Weight, reader: Reader) -> tuple[NodeProto, MatrixView] | str:
    """The node that ``reader`` names in ``scope`` (the reader's graph) and its view of the
    stored ``weight`` (composed with the element permutations between them), or why it has none."""
    node = next((n for n in scope.graph.node if node_label(n) == reader.node), None)
    if node is None:
        return "its reading node was not found"
    index = reader.input_index
    source = element_map(scope, node.input[index], weight.name, weight.shape)
    if isinstance(source, str):
        return source
    view = spec_of(node).matrix_view(node, index, source.shape)
    if isinstance(view, str):
        return view
    if source.shape != weight.shape or not np.array_equal(source.reshape(-1), np.arange(source.size)):
        view = view.through(source, weight.shape)
    return node, view


def _disagreement(weight: Weight, found: list[tuple[NodeProto, MatrixView]]) -> str | None:
    """Why the uses of a shared weight are not one problem (they see different matrices), or None."""
    dims = {f"'{node_label(n)}' {v.groups}×{v.rows}×{v.cols}" for n, v in found}
    shapes = {(v.groups, v.rows, v.cols) for _, v in found}
    if len(shapes) > 1:
        return f"read by several nodes that see it as matrices of different shapes ({', '.join(sorted(dims))})"
    index = np.arange(weight.numel).reshape(weight.shape)
    first = found[0][1].to_matrix(index)
    other = next((n for n, v in found[1:] if not np.array_equal(v.to_matrix(index), first)), None)
    if other is not None:
        return (
            f"read by several nodes that see it as different arrangements of its elements "
            f"('{node_label(found[0][0])}' and '{node_label(other)}', e.g. W and Wᵀ)"
        )
    return None


def _use(scope: Scope, weight: Weight, node: NodeProto, view: MatrixView, number: int) -> LayerUse | str:
    """The ``number``-th use (from 0) of ``weight``: ``node`` reading it as ``view``, with the
    capture spec of its input and its bias site; or why its input cannot be captured."""
    if view.reads and scope.path:
        return "its input is made of several tensors of its node, which capture reads in the main graph only"
    port, at = view.activation
    if port == "output":  # a recurrent R reads the layer's own states, Y
        while len(node.output) <= at:
            node.output.append("")
        if not node.output[at]:  # name the unused output so that its statistics can be read
            node.output[at] = f"{node_label(node)}.Y" if at == 0 else f"{node_label(node)}.output{at}"
    key = weight.key if number == 0 else f"{weight.key} (use {number + 1}: {node_label(node)})"
    activation = view.activation_name(node)
    reads = view.read_names(node)  # the tensors its rows are made of besides ``activation``, if any
    owner = scope.resolve(activation) if activation else None
    if owner is None or (activation not in owner.producers and activation not in owner.inputs):
        return f"its input '{activation}' is a stored constant or not defined: no activation to capture"
    bias, bias_reason = None, None
    if spec_of(node).bias_layout == "gates":
        bias_reason = "recurrent biases are not corrected"
    elif view.capture_op == "MatMulLeft":
        bias_reason = "a weight on the left (W @ x): its bias is not corrected"
    elif view.capture_op == "BatchedMatMul" and view.groups > 1:
        bias_reason = "a batched MatMul weight (one matrix per batch element): its bias is not corrected"
    else:
        bias, bias_reason = _bias_site(scope, node, view)
    spec = LayerSpec.from_view(
        view,
        key=key,
        node=node_label(node),
        activation=activation,
        scope=scope.path,
        reads=reads,
        residual=_residual(scope, node, view, bias),
    )
    return LayerUse(node, spec, view, bias, bias_reason)


def _residual(scope: Scope, node: NodeProto, view: MatrixView, bias: BiasSite | None) -> str:
    """The activation ``r`` that the layer's output ``y`` (after its bias Add, if any) is summed
    with, ``s = y + r``, when ``s`` is all that reads ``y``: a residual connection. Main-graph
    Gemm and MatMul rows only (the capture's :class:`~onnxprune.capture.LayerSpec` ``residual``);
    "" when there is none."""
    if scope.path or view.capture_op not in ("Gemm", "MatMul") or view.capture_groups != 1 or view.prepare:
        return ""
    out = node.output[0] if node.output else ""
    if bias is not None and bias.node is not node:  # MatMul + Add(b): the sum after the bias
        out = bias.node.output[0]
    uses = scope.uses.get(out, [])
    if not out or len(uses) != 1 or scope.is_output(out):
        return ""
    add = uses[0].node
    if not spec_of(add).sums_inputs or len(add.input) != 2:
        return ""
    other = add.input[1 - uses[0].index]
    if not other or other == out or (other not in scope.producers and other not in scope.inputs):
        return ""  # a stored operand is a bias, not a residual
    return other


def calib_layer(model: ModelProto, scope: Scope, weight: Weight) -> tuple[CalibLayer | None, str | None]:
    """The calibration view of ``weight``, or None and the reason it gets magnitude instead."""
    readers = [r for r in weight.readers if r.role == "weight"]
    if not readers or len(readers) != len(weight.readers):
        return None, "not read as a weight alone: pruned by magnitude"
    scopes = {s.path: s for s in scope.all_scopes()}
    if any(r.scope not in scopes for r in readers):
        return None, "a subgraph that reads it was not found: pruned by magnitude"
    found: list[tuple[NodeProto, MatrixView]] = []
    for reader in readers:
        seen = _view_of(model, scopes[reader.scope], weight, reader)
        if isinstance(seen, str):
            where = f" (by '{reader.node}')" if len(readers) > 1 else ""
            return None, f"{seen}{where}: pruned by magnitude"
        found.append(seen)
    if len(found) > 1:
        why = _disagreement(weight, found)
        if why is not None:
            return None, f"{why}: pruned by magnitude"
    uses: list[LayerUse] = []
    for number, (node, view) in enumerate(found):
        use = _use(scopes[readers[number].scope], weight, node, view, number)
        if isinstance(use, str):
            return None, f"{use}: pruned by magnitude"
        uses.append(use)
    first = uses[0]
    layer = CalibLayer(weight, first.node, first.spec, first.view, first.bias, first.bias_reason, tuple(uses[1:]))
    return layer, None
