"""Quantized ops: where their integer data sits, and which of them are counted.

A quantizer rewrites a float layer into ops that read an integer copy of its weight:
``DequantizeLinear(q, scale, zero_point)`` (QDQ, in :mod:`onnxprune.ops.movement`),
``ConvInteger``/``MatMulInteger(x_q, w_q, x_zero_point, w_zero_point)`` (dynamic),
``QLinearConv``/``QLinearMatMul`` (x, scales and zero points interleaved),
onnxruntime's ``DynamicQuantizeLSTM``, ``QGemm``, ``DynamicQuantizeMatMul``,
``MatMulIntegerToFloat`` and ``QAttention``. :attr:`~onnxprune.ops.spec.OpSpec.quantized_data_slots`
lists the inputs that hold quantized data; the others hold scales and zero points.
``ConvInteger`` and ``MatMulInteger`` do the MACs of their float layers; the others are
listed as not counted.
"""

from __future__ import annotations

from onnxprune.ops.conv import count_conv
from onnxprune.ops.matmul import count_matmul
from onnxprune.ops.registry import lookup, register, registered
from onnxprune.ops.spec import Counter, OpSpec

MICROSOFT = "com.microsoft"


class QuantizedSpec(OpSpec):
    def __init__(
        self,
        data_slots: tuple[int, ...],
        *,
        macs: Counter | None = None,
        uncounted: str | None = None,
        dynamic_integer: bool = False,
    ) -> None:
        self.quantized_data_slots = data_slots
        self.macs = macs
        self.uncounted = uncounted
        self.dynamic_integer = dynamic_integer


_NOT_COUNTED = "quantized op: not counted"

register(QuantizedSpec((0, 1), macs=Counter((1,), (0,), count_conv), dynamic_integer=True), "ConvInteger")
register(QuantizedSpec((0, 1), macs=Counter((0, 1), (), count_matmul), dynamic_integer=True), "MatMulInteger")
register(QuantizedSpec((0, 3), uncounted=_NOT_COUNTED), "QLinearConv", "QLinearMatMul")
register(QuantizedSpec((0, 3), uncounted=_NOT_COUNTED), "QGemm", domain=MICROSOFT)
register(QuantizedSpec((1,), uncounted=_NOT_COUNTED), "DynamicQuantizeMatMul", "QAttention", domain=MICROSOFT)
register(QuantizedSpec((0, 1), uncounted=_NOT_COUNTED), "MatMulIntegerToFloat", domain=MICROSOFT)
register(QuantizedSpec((1, 2), uncounted=_NOT_COUNTED, dynamic_integer=True), "DynamicQuantizeLSTM", domain=MICROSOFT)


def written_by_dynamic_quantization(op_type: str) -> bool:
    """True if ``op_type`` (in whichever domain: onnxruntime names a missing kernel's op
    without it) is an integer op dynamic quantization writes."""
    return any(lookup(op, domain).dynamic_integer for domain, op in registered() if op == op_type)


class _Uncounted(OpSpec):
    def __init__(self, reason: str) -> None:
        self.uncounted = reason


register(_Uncounted("Einsum is not counted: its work depends on the equation and the contraction order"), "Einsum")
register(_Uncounted("Attention is not counted: its work depends on masks and caches"), "Attention")
