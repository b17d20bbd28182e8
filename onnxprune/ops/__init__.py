"""What each operator means to onnxprune, written once: the op table.

One spec per op family (:class:`~onnxprune.ops.spec.OpSpec`), registered by (domain, op type,
opset range) in :mod:`onnxprune.ops.registry`: its weight slots and their axes, how it moves
a tensor (transparent ops), its MACs, its bias input and the gains of its weight product and
bias (Gemm's ``alpha``/``beta``), the inputs of quantized ops that hold integer data. Every
other module asks :func:`spec_of` (or :func:`lookup`) instead of switching on
``node.op_type``; a new op is one module here plus its tests.

Families: :mod:`.conv` (Conv, ConvTranspose), :mod:`.gemm`, :mod:`.matmul`, :mod:`.recurrent`
(LSTM, GRU, RNN), :mod:`.elementwise` (normalizations, Gather, Shape/Size, the bias Add),
:mod:`.movement` (Identity, Cast, Transpose, Reshape ... DequantizeLinear), :mod:`.quantized`
(ConvInteger, MatMulInteger, QLinear*, onnxruntime's contrib ops; Einsum and Attention as
not counted), :mod:`.constant` (the tensor a Constant node writes into the graph),
:mod:`.control` (If, Loop, Scan: how their subgraphs run), :mod:`.generators` (random ops) and
:mod:`.containers` (sequence and optional ops), which constant folding leaves alone.

Channel analysis (:mod:`.channels`: the layouts a rule sees, and its helpers): each spec also
answers its channel rule, the group it starts, and how it propagates constant (dead) channels;
the families of ops that only do that: :mod:`.activation`, :mod:`.pooling`, :mod:`.reduce`,
:mod:`.broadcast`, :mod:`.shape` (Pad, Resize, and the rules of the transparent ops) and
:mod:`.normalization` (the rules of :class:`~.elementwise.NormSpec`).

:mod:`.gradient` says which ops carry a gradient and which the numpy kernels of block
reconstruction can differentiate.
"""

from __future__ import annotations

# the families register themselves on import; nothing else imports them
from onnxprune.ops import (  # noqa: F401
    activation,
    broadcast,
    containers,
    control,
    conv,
    elementwise,
    gemm,
    generators,
    matmul,
    movement,
    pooling,
    quantized,
    recurrent,
    reduce,
    shape,
)
from onnxprune.ops.constant import constant_array, constant_tensor
from onnxprune.ops.registry import UNKNOWN, lookup, register, registered, spec_of, unregister
from onnxprune.ops.spec import (
    BIAS,
    NORM,
    OTHER,
    SHAPE_ONLY,
    Count,
    Counter,
    MatrixView,
    OpSpec,
    Slot,
    SlotContext,
    Transform,
    TransformContext,
)

__all__ = [
    "BIAS",
    "NORM",
    "OTHER",
    "SHAPE_ONLY",
    "UNKNOWN",
    "Count",
    "Counter",
    "MatrixView",
    "OpSpec",
    "Slot",
    "SlotContext",
    "Transform",
    "TransformContext",
    "constant_array",
    "constant_tensor",
    "lookup",
    "register",
    "registered",
    "spec_of",
    "unregister",
]
