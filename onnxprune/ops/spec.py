"""The shape of an op spec: what one op family means to onnxprune, answered in one place.

An :class:`OpSpec` is registered for (domain, op type, opset range) in
:mod:`onnxprune.ops.registry`; every other module asks the table instead of switching on
``node.op_type``. Each question has a neutral default, so a spec answers only what its op
does:

- :meth:`OpSpec.slot`: what a stored tensor read at input ``index`` is to the node (a
  *weight* with its output-channel and reduction axes, a bias, a normalization parameter,
  an embedding table, a shape-only read, or other);
- :attr:`OpSpec.weight_inputs`: inputs that should hold a stored weight (groups: any one
  of a group's inputs will do), so discovery can report a weight computed at run time;
- :meth:`OpSpec.transform`: for ops that only move a stored tensor on its way to a weight
  (Identity, Cast, Transpose, Reshape ...), how each output axis maps to an input axis;
- :attr:`OpSpec.macs`: how to count the multiply-accumulates of one node from its shapes,
  split into parts by the operand that holds the stored weight;
- :meth:`OpSpec.bias_input`, :meth:`OpSpec.weight_gain`, :meth:`OpSpec.bias_gain`: where the
  per-output bias is, and how the output moves with the weight product and with the bias:
  ``Y = weight_gain·(W·x) + bias_gain·b`` (Gemm: ``alpha`` and ``beta``; 1 and 1 elsewhere),
  so a wanted output change ``δ`` is ``Δb = δ / bias_gain`` and a weight change ``ΔW`` is
  made up by ``Δb = (weight_gain / bias_gain)·ΔW·E[x]``; ``bias_gain`` 0: the bias is ignored;
- :attr:`OpSpec.quantized_data_slots`: inputs of a quantized op that hold quantized data
  (an integer weight when stored), as opposed to scales and zero points;
- :attr:`OpSpec.keeps_layout`, :attr:`OpSpec.keeps_values`: the output is input 0's values
  (Identity, Cast), or those values in another axis order (Transpose too);
- :meth:`OpSpec.matrix_view`: how a stored weight at input ``index`` is seen as matrices
  ``W_g ∈ R^{rows×cols}``, one per group ``g``, such that the node computes ``y = W_g·x`` on
  each row ``x`` of its input as :mod:`onnxprune.capture` cuts it (a :class:`MatrixView`), or
  why it is not (a str). Calibrated pruning and the structural refit both read it; the
  maths of each view is in its family's module docstring;
- :meth:`OpSpec.output_channel_fold` (a :class:`ChannelFold`): how a per-output-channel affine
  map ``y_c = s_c·x_c + t_c`` of the node's output folds into its stored weight and bias
  (``W' = s ⊙ W`` along the output-channel axis, ``b' = s·(bias_gain·b) + t``), the BN-fold
  axis; :meth:`OpSpec.channel_affine` (BatchNormalization): the ``s, t`` an op *is* at
  inference; :meth:`OpSpec.affine_inputs` and :meth:`OpSpec.constant_affine` (Mul, Add, Sub,
  Div): the ``s, t`` of an op with a constant operand;
- :meth:`OpSpec.shape_value` (a :class:`ShapeValue`): the output of a shape computation known
  from static shapes alone (Shape, Size, and Gather or Slice of a shape), for constant folding;
  :meth:`OpSpec.constant_attribute`: the attribute holding the value a Constant writes;
  :attr:`OpSpec.foldable`: whether constant folding may replace the node by its value (not a
  random op, DequantizeLinear, Constant, or a sequence or optional op); :attr:`OpSpec.draws`:
  whether its value is drawn at run time (a random op);
- for natural data (:mod:`onnxprune.data.natural`): :meth:`OpSpec.embedding_lookup` (an input
  of integer ids that index a table: Gather), :meth:`OpSpec.running_statistics` (per-channel
  mean and variance of the data: BatchNormalization), :meth:`OpSpec.converts_values` (a stored
  tensor read through Cast or DequantizeLinear) and :meth:`OpSpec.keeps_order` (input 0's
  elements in the same C order: Identity, Cast, Reshape, Flatten, Squeeze, Unsqueeze).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from onnx import AttributeProto, NodeProto, TensorProto, helper

if TYPE_CHECKING:  # the language of channel rules (ops.channels imports nothing of ops)
    from onnxprune.ops.channels import ChannelContext, ChannelRule, Layout

Shape = tuple[int | None, ...]
Dims = tuple[int, ...]


def attr(node: NodeProto, name: str, default: object = None) -> object:
    """The value of attribute ``name`` of ``node``, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# --------------------------------------------------------------------------- slots


@dataclass(frozen=True)
class Slot:
    role: str  # "weight" | "bias" | "norm" | "embedding" | "shape" | "other"
    out_axis: int | None = None
    in_axis: int | None = None


OTHER = Slot("other")
BIAS = Slot("bias")
NORM = Slot("norm")
#: A read of the shape only (Shape, Size): pruning keeps shapes, so it does not count.
SHAPE_ONLY = Slot("shape")


@dataclass(frozen=True)
class SlotContext:
    node: NodeProto
    index: int
    rank: int | None
    producer_op: Callable[[str], str | None]

    def attr(self, name: str, default: object = None) -> object:
        return attr(self.node, name, default)


# --------------------------------------------------------------------------- transparent ops


@dataclass(frozen=True)
class Transform:
    axis_map: tuple[int | None, ...]  # output axis -> input axis (None: no single one)
    shape: Shape  # output shape (None for unknown dims)
    quantized: bool = False


@dataclass(frozen=True)
class TransformContext:
    node: NodeProto
    index: int
    shape: Shape
    const: Callable[[str], np.ndarray | None]

    def attr(self, name: str, default: object = None) -> object:
        return attr(self.node, name, default)

    def axes_input(self, position: int) -> list[int] | None:
        """Axes from attribute ``axes`` (old opsets) or constant input ``position``."""
        value = self.attr("axes")
        if value is None and len(self.node.input) > position and self.node.input[position]:
            const = self.const(self.node.input[position])
            value = None if const is None else const.reshape(-1).tolist()
        return None if value is None else [int(a) for a in value]


# --------------------------------------------------------------------------- MACs


@dataclass(frozen=True)
class Count:
    """The MACs of one node, and how they split over the operands that may hold a weight."""

    macs: int
    #: Parts of the work: (input indices that may hold the stored weight, first match
    #: wins; share of the work).
    parts: tuple[tuple[tuple[int, ...], int], ...]
    bias: int = 0  # elementwise additions of a Gemm bias


@dataclass(frozen=True)
class Counter:
    """How to count a node: the shapes it needs, and the count from them."""

    inputs: tuple[int, ...]  # input indices whose shapes are needed
    outputs: tuple[int, ...]  # output indices whose shapes are needed
    count: Callable[[NodeProto, list[Dims], list[Dims]], Count]


def prod(dims: Sequence[int]) -> int:
    return math.prod(dims)


# --------------------------------------------------------------------------- matrix views


@dataclass(frozen=True, eq=False)
class MatrixView:
    """A weight ``W`` (of ``shape``, as the node reads it) seen as ``groups`` matrices ``W_g [rows, cols]``.

    The node computes ``y = W_g·x`` for every row ``x [cols]`` of its input in group ``g``
    (bias and gains left out), rows and columns as :mod:`onnxprune.capture` cuts the input
    (the ``capture_*`` fields, ``activation``, ``reads`` and ``prepare``, the Conv geometry,
    ``trans_a`` and ``batch`` are what a capture ``LayerSpec`` needs). The matrices are an axis
    permutation and a reshape::

        W_g = W.transpose(axes).reshape(groups, rows, cols)[g]      (axes () = no permutation)

    e.g. ``axes = (1, 0)`` for ``W`` stored ``[cols, rows]`` (Gemm ``transB`` = 0, MatMul
    ``x @ W``), ``(…, r−1, r−2)`` for a batched MatMul ``W [..., K, N]``. Columns come in
    ``cols / positions`` blocks, one per element of the weight's input axis ``in_axis``
    (channel-major: column ``c·positions + p`` is channel ``c`` at kernel position ``p``);
    ``nm_order`` permutes the columns so that the N:M axis (the input channel) is innermost
    (Conv; None where every column is a channel of its own).

    A stored tensor ``S`` that reaches the node through element permutations (Transpose,
    Reshape, Flatten, Squeeze, Unsqueeze, Identity, Cast: :meth:`through`) has
    ``W = S.reshape(-1)[source]`` (``source`` of ``shape``, a permutation of ``0 … |S|−1``), so
    ``to_matrix(S) = to_matrix'(S.flat[source])`` and ``from_matrix`` scatters back,
    ``S.flat[source] = from_matrix'(M)``: the stored tensor keeps its shape, and ``nm_order``
    and ``in_axis`` still refer to ``W``'s axes and columns.
    """

    family: str  # "conv" | "gemm" | "matmul" | "recurrent"
    shape: tuple[int, ...]
    groups: int
    rows: int
    cols: int
    in_axis: int
    #: The axis permutation of ``W`` before the reshape to ``[groups, rows, cols]`` (() = none).
    axes: tuple[int, ...] = ()
    positions: int = 1
    nm_order: np.ndarray | None = None
    #: How capture cuts the input into rows: "Conv" (im2col patches), "Gemm", "MatMul" (rows of K),
    #: "MatMulLeft" (columns of K), "BatchedMatMul" (rows of K per batch element), "Directions"
    #: (a recurrent output ``[T, D, B, H]``: rows of H per direction; one per group on axis 1 of
    #: what ``prepare`` makes of it).
    capture_op: str = "MatMul"
    #: The node port that holds ``x``: ("input", 0), or ("output", 0) for a recurrent R.
    activation: tuple[str, int] = ("input", 0)
    #: Further node ports whose values make the rows together with ``activation`` (through
    #: ``prepare``); a port the node leaves empty is read as None.
    reads: tuple[tuple[str, int], ...] = ()
    #: ``prepare(x, reads)``: the array that ``capture_op`` cuts, made of the activation and the
    #: values of ``reads`` (None where absent), pure numpy; it raises ValueError on shapes that do
    #: not fit. None: the activation itself (a GRU's R with ``linear_before_reset`` = 0 reads
    #: ``h_{t−1}`` and ``r_t ⊙ h_{t−1}``: :mod:`onnxprune.ops.recurrent`).
    prepare: Callable[[np.ndarray, Sequence[np.ndarray | None]], np.ndarray] | None = None
    #: Every group multiplies the same rows ``x`` (a recurrent W's directions all read ``x_t``):
    #: capture them once, as one group.
    shared_input: bool = False
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    trans_a: bool = False
    #: The batch dims of a batched MatMul ``W [*batch, K, N]`` (one group per element of them).
    batch: tuple[int, ...] = ()
    #: Groups that share one bias per output row: the ``∏k`` taps of a ConvTranspose, each writing
    #: as many output pixels (the bias has ``groups·rows / bias_taps`` entries, its correction the
    #: mean of the taps': :mod:`onnxprune.ops.conv`).
    bias_taps: int = 1
    #: ``W = S.reshape(-1)[source]`` for a stored ``S`` of ``stored_shape`` read through element
    #: permutations (:meth:`through`); None: the node reads the stored tensor as it is.
    source: np.ndarray | None = None
    stored_shape: tuple[int, ...] = ()

    def through(self, source: np.ndarray, stored_shape: Sequence[int]) -> MatrixView:
        """This view of ``W = S.reshape(-1)[source]``, as a view of the stored ``S`` itself."""
        if source.shape != self.shape or source.size != math.prod(stored_shape):
            raise ValueError(f"an element map of shape {list(source.shape)} does not fit {list(self.shape)}")
        return replace(self, source=source, stored_shape=tuple(int(d) for d in stored_shape))

    def to_matrix(self, w: np.ndarray) -> np.ndarray:
        """The stored array as ``[groups, rows, cols]`` (a view where numpy allows one)."""
        if self.source is not None:
            w = w.reshape(-1)[self.source]
        if self.axes:
            w = w.transpose(self.axes)
        return w.reshape(self.groups, self.rows, self.cols)

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        """``[groups, rows, cols]`` back to the stored layout (the inverse of :meth:`to_matrix`)."""
        if self.axes:
            w = m.reshape(tuple(self.shape[a] for a in self.axes)).transpose(np.argsort(self.axes))
        else:
            w = m.reshape(self.shape)
        if self.source is None:
            return w
        stored = np.empty(self.source.size, dtype=w.dtype)
        stored[self.source.reshape(-1)] = w.reshape(-1)
        return stored.reshape(self.stored_shape)

    @property
    def capture_groups(self) -> int:
        """The groups capture cuts the input into (1 when every group reads the same rows)."""
        return 1 if self.shared_input else self.groups

    def activation_name(self, node: NodeProto) -> str:
        """The tensor holding ``x`` (``""`` when the node leaves that output unnamed)."""
        return _port_name(node, self.activation)

    def read_names(self, node: NodeProto) -> tuple[str, ...]:
        """The tensors of :attr:`reads` (``""`` for a port the node leaves empty)."""
        return tuple(_port_name(node, port) for port in self.reads)


def _port_name(node: NodeProto, port: tuple[str, int]) -> str:
    """The name at ``port`` ("input" or "output", index) of ``node``, ``""`` when absent."""
    side, index = port
    names = node.output if side == "output" else node.input
    return names[index] if 0 <= index < len(names) else ""


def no_view(node: NodeProto, index: int, shape: Sequence[int]) -> str:
    """The reason for a weight that has no matrix view (the default answer)."""
    return f"{node.op_type} input {index} with shape {list(shape)}"


# --------------------------------------------------------------------------- folding


def along(axis: int, ndim: int, s: np.ndarray) -> np.ndarray:
    """``s`` shaped to broadcast along ``axis`` of an ``ndim``-D array."""
    shape = [1] * ndim
    shape[axis] = -1
    return s.reshape(shape)


@dataclass(frozen=True)
class ChannelFold:
    """How a per-output-channel map ``y_c = s_c·x_c + t_c`` of a node's output folds into it.

    The stored weight is input ``weight_input``; its output channels lie on ``axis``, or, with
    ``groups`` set (ConvTranspose ``W[C, M/g, k…]``), output channel ``o = i·dims[1] + j`` of
    group ``i`` is ``W[i·C/g:(i+1)·C/g, j]``. ``ndim``: the rank the weight must have;
    ``output_rank``: the rank the node's output must have for the map's channel axis 1 to be
    the weight's (MatMul: 2). The bias is input ``bias_input`` with gain ``bias_gain``
    (None: the op has none; it is a following Add, or a new one), and ``bias_gain_attr`` the
    attribute holding that gain, set to 1 once ``bias_gain·b`` is folded into the bias.
    """

    axis: int
    weight_input: int = 1
    groups: int | None = None
    ndim: int | None = None
    output_rank: int | None = None
    bias_input: int | None = 2
    bias_gain: float = 1.0
    bias_gain_attr: str | None = None

    def out_channels(self, dims: Sequence[int]) -> int | None:
        """The output channels a weight of ``dims`` gives (None: it does not fit this layout)."""
        if self.ndim is not None and len(dims) != self.ndim:
            return None
        if self.groups is None:
            return int(dims[self.axis]) if len(dims) > self.axis else None
        if len(dims) < 2 or dims[0] % self.groups:
            return None
        return int(dims[1]) * self.groups

    def scale(self, w: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``W' = s ⊙ W`` along the output channels."""
        if self.groups is None:
            return w * along(self.axis, w.ndim, s)
        g, dims = self.groups, w.shape
        grouped = w.reshape(g, dims[0] // g, dims[1], -1)
        return (grouped * s.reshape(g, 1, dims[1], 1)).reshape(w.shape)


# --------------------------------------------------------------------------- shape values


@dataclass(frozen=True)
class ShapeValue:
    """The int64 value of a shape computation, known from static shapes: ``dims`` (a vector,
    None where a dim is symbolic), a ``scalar`` if the value is one (``dims`` then holds it);
    ``tracked``: a value known in part is kept for the shape computations that read it."""

    dims: list[int | None]
    scalar: bool = False
    tracked: bool = False


@dataclass(frozen=True)
class ShapeValueContext:
    """What a shape computation may read: inferred ``dims`` of a tensor (None: unknown rank),
    the shape values known so far (``partial``, None where symbolic), and small constants."""

    dims: Callable[[str], list[int | None] | None]
    partial: Mapping[str, list[int | None]]
    small: Mapping[str, np.ndarray]


# --------------------------------------------------------------------------- the spec


class OpSpec:
    """What an op family means (see the module docstring); subclasses override what applies."""

    #: Inputs that should hold a stored weight, in groups (any one input of a group will do).
    weight_inputs: tuple[tuple[int, ...], ...] = ()
    #: How to count the node's MACs; None: not a contracting op.
    macs: Counter | None = None
    #: Why the node's MACs are not counted although it contracts (Einsum, quantized ops).
    uncounted: str | None = None
    #: Inputs holding quantized data (quantized ops only).
    quantized_data_slots: tuple[int, ...] = ()
    #: an integer op onnxruntime's dynamic quantization writes (static QDQ mode needs none)
    dynamic_integer: bool = False
    #: The output holds input 0's values, in the same layout (Identity, Cast).
    keeps_layout: bool = False
    #: The output holds input 0's values, perhaps in another axis order (also Transpose).
    keeps_values: bool = False
    #: The output holds input 0's elements, each value unchanged, perhaps reordered or
    #: reshaped (Identity, Transpose, Reshape, Flatten, Squeeze, Unsqueeze).
    moves_elements: bool = False
    #: The output holds log-probabilities (LogSoftmax): compared as probabilities, ``exp y``.
    log_probabilities: bool = False
    #: The op adds a stored operand to a linear layer's output (``x·W + b``): Add, where a
    #: bias change of a bias-free MatMul may go.
    adds_bias: bool = False
    #: The output is the elementwise sum of the node's two inputs (Add): a residual connection
    #: when both are activations.
    sums_inputs: bool = False
    #: The node does no work of its own at run time (Constant; control flow, whose subgraphs'
    #: nodes are counted where they are).
    no_work: bool = False
    #: How the node's subgraphs run: "branches" (one of them, chosen at run time: If),
    #: "repeated" (a number of times not known statically: Loop, Scan), None: no subgraphs.
    subgraphs: str | None = None
    #: Constant folding may replace the node, when its inputs are constants, by the value it
    #: computes. False: a random op (its value differs from run to run), an op that decodes a
    #: weight stored compressed on purpose (DequantizeLinear), a Constant (its value is stored
    #: already), a sequence or optional op (its value is no tensor to store).
    foldable: bool = True
    #: Its value is drawn at run time (a random op): a value of the run even when every input
    #: is a constant (:mod:`onnxprune.frontier` keeps it as it keeps values of the inputs).
    draws: bool = False

    def channel_scale_input(self, node: NodeProto) -> int | None:
        """The input holding a per-channel scale of axis 1 (BatchNormalization and
        InstanceNormalization's γ: 1), a zero in which kills a channel; None: none."""
        return None

    def output_type(self, node: NodeProto) -> int | None:
        """The element type (TensorProto enum) a retyping op casts to (Cast's ``to``); None: unchanged."""
        return None

    def constant_tensor(self, node: NodeProto) -> TensorProto | None:
        """The tensor a node writes into the graph (Constant's ``value``); None for every other op."""
        return None

    def constant_attribute(self, node: NodeProto) -> AttributeProto | None:
        """The attribute holding the value a node writes into the graph (Constant's one
        ``value*`` attribute; None for a sparse value and for every other op)."""
        return None

    def embedding_lookup(self, node: NodeProto) -> tuple[int, int, int] | None:
        """(table input, index input, table axis) of an op that picks rows of a table by integer
        ids (Gather: the ids are token ids, the table's length on the axis their vocabulary)."""
        return None

    def running_statistics(self, node: NodeProto) -> tuple[int, int] | None:
        """The inputs holding the running mean and variance, per channel on axis 1, of input 0
        (BatchNormalization: 3, 4); None: the op keeps no such statistics."""
        return None

    def converts_values(self, node: NodeProto) -> bool:
        """The output is input 0's values converted element by element (Cast's type,
        DequantizeLinear's scale and zero point): a stored tensor read through it."""
        return False

    def keeps_order(self, node: NodeProto) -> bool:
        """The output is input 0's elements, values kept (Cast: retyped), in the same C order
        (Identity, Cast, Reshape, Flatten, Squeeze, Unsqueeze)."""
        return False

    def shape_value(self, node: NodeProto, ctx: ShapeValueContext) -> ShapeValue | None:
        """The output as computed from static shapes alone (Shape, Size, Gather or Slice of a
        shape), or None: the op is no shape computation, or its inputs are not known."""
        return None

    def slot(self, ctx: SlotContext) -> Slot:
        return OTHER

    def transform(self, ctx: TransformContext) -> Transform | None:
        return None

    #: How the bias input is laid out: "per_output" (``[C_out]``: Conv, Gemm), "gates"
    #: (``[D, 2·G·H]``, the input product's half first: LSTM, GRU, RNN), or None (no bias input).
    bias_layout: str | None = None

    def bias_input(self, node: NodeProto) -> int | None:
        """The input that holds (or would hold) the per-output bias; None: none."""
        return None

    def weight_gain(self, node: NodeProto) -> float:
        """The factor on the weight product in the output (Gemm: ``alpha``)."""
        return 1.0

    def bias_gain(self, node: NodeProto) -> float:
        """The factor on the bias in the output (Gemm: ``beta``; 0: the bias is ignored)."""
        return 1.0

    def matrix_view(self, node: NodeProto, index: int, shape: Sequence[int]) -> MatrixView | str:
        """The weight of ``shape`` at input ``index`` as matrices (:class:`MatrixView`), or why not."""
        return no_view(node, index, shape)

    # -- channel analysis (the language: :mod:`onnxprune.ops.channels`) -------------------

    def channel_rule(self, node: NodeProto) -> ChannelRule | None:
        """How the node treats channel groups on its inputs (a ``ChannelRule``); None: it does
        not understand them, and the structural pass keeps those groups whole."""
        return None

    def channel_source(self, node: NodeProto) -> ChannelRule | None:
        """How the node starts a channel group on its output (a ``ChannelRule``); None: it does not."""
        return None

    def source_constants(self, cx: ChannelContext, node: NodeProto, layout: Layout) -> np.ndarray:
        """The constant of each output channel of a group this node started (NaN: not constant)."""
        return np.full(layout.length, np.nan)

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        """The constants along the channel axis of output ``out`` given those of the tracked inputs
        (``values``, NaN where not constant); None: none is known (a ``ConstantRule``)."""
        return None

    def carries_stored(self, node: NodeProto) -> bool:
        """The output is input 0's stored tensor as it is, only retyped, and the node reads
        nothing else (Identity, Cast): a weight read through it is still that stored weight."""
        return False

    def data_input(self, cx: ChannelContext, node: NodeProto, tensor: str, axis: int) -> str:
        """The tensor whose channels a stored weight ``tensor`` read on ``axis`` multiplies."""
        return node.input[0]

    def absorbs_constant(self, cx: ChannelContext, node: NodeProto, axis: int) -> bool:
        """Can a constant input element (read on ``axis`` of the weight) be folded into the bias
        exactly, whatever its value? False: only a zero goes without a trace."""
        return True

    def constant_bias(self, node: NodeProto, contribution: np.ndarray) -> np.ndarray:
        """The per-output bias change from ``Σ_e k_e·W[e]`` (the weight with its input axis
        contracted against constant inputs ``k``): Conv sums it over the kernel positions."""
        return contribution

    # -- folding per-channel affine maps (BN, Mul/Add/Sub/Div by a constant) --------------

    def output_channel_fold(self, node: NodeProto) -> ChannelFold | None:
        """How a per-channel ``y = s·x + t`` of the output folds into the node's weight and
        bias (a :class:`ChannelFold`); None: it does not."""
        return None

    def channel_affine(
        self, node: NodeProto, read: Callable[[int, str], np.ndarray | str], others_read: bool
    ) -> tuple[np.ndarray, np.ndarray] | str | None:
        """The node at inference as ``y_c = s_c·x_c + t_c`` on axis 1 of input 0, ``s, t``
        from its stored inputs (``read(index, what)``: the float64 values, or why not), or
        why not (``others_read``: an output after the first is read); None: not such an op."""
        return None

    def affine_inputs(self, node: NodeProto) -> tuple[int, ...]:
        """The inputs that may be ``x`` in ``y = s·x + t`` when the other is a constant."""
        return ()

    def constant_affine(self, node: NodeProto, c: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
        """``s, t`` of ``y = s·x + t`` per channel with the constant operand ``c`` (a vector),
        ``x`` at one of :meth:`affine_inputs`; or why not."""
        return f"{node.op_type} is not affine"
