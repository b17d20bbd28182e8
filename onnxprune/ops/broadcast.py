"""Elementwise ops of several tensors under numpy broadcasting: Add, Sub, Mul, Div, Pow,
Max, Min, Sum, Mean, Where, PRelu, comparisons and logic.

Channel rule: with the output of rank ``r``, input ``i`` of rank ``r_i`` is aligned to the
right, so its axis ``a`` is output axis ``a + r − r_i``. Tracked inputs must carry their
channels on the same output axis, and there they meet element by element: their groups are
joined (a residual Add makes both branches one group). An untracked input that is 1 along
that axis (or lacks it) is broadcast along the channels; one that is not must be stored, and
is then sliced with them (a per-channel scale or bias, kind "param"); anything else blocks.

Constant propagation (Add, Sub, Mul, Div, Max, Min, Pow): ``y_c = f(a_c, b_c)`` channel by
channel, each operand's constant taken from its tracked channels, or from a stored operand
constant along every other axis; NaN elsewhere. A product with a zero is zero whatever the
other factor (``0·x = 0`` even where ``x`` varies).

Affine with a constant (:meth:`BroadcastSpec.constant_affine`, what folds into a Conv or Gemm
before it like a BN): with ``c`` a per-channel (or scalar) constant, ``x·c``, ``x + c``, ``x − c``
and ``x / c`` are ``y = s·x + t`` with ``(s, t) = (c, 0), (1, c), (1, −c), (1/c, 0)``; ``x`` may
be either operand of Mul and Add, only the first of Sub and Div (``c − x`` and ``c / x`` are
not folded), and a zero divisor is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from onnx import NodeProto

from onnxprune.ops.channels import ChannelContext, Layout, stored_vector
from onnxprune.ops.registry import register
from onnxprune.ops.spec import OpSpec

BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal", "Greater", "Less",
    "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod",
)  # fmt: skip

BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
    "Pow": np.power,
}


def broadcast_rule(cx: ChannelContext, node: NodeProto, tracked: dict[int, Layout]) -> None:
    label = cx.label(node)
    out_rank = cx.rank(node.output[0])
    ranks = {i: cx.rank(node.input[i]) for i in range(len(node.input)) if node.input[i]}
    if out_rank is None or any(r is None for r in ranks.values()):
        for layout in tracked.values():
            cx.block(layout, f"{node.op_type} '{label}': unknown shapes")
        return
    axes = {index: layout.axis + out_rank - ranks[index] for index, layout in tracked.items()}  # type: ignore[operator]
    if len(set(axes.values())) > 1:
        for layout in tracked.values():
            cx.block(layout, f"{node.op_type} '{label}' combines channels on different axes")
        return
    axis = next(iter(axes.values()))
    joined = cx.join([layout.moved(axis) for layout in tracked.values()], f"{node.op_type} '{label}'")
    if joined is None:
        return
    for index, name in enumerate(node.input):
        if not name or index in tracked:
            continue
        shape = cx.shape(name)
        if shape is None:
            cx.block(joined, f"{node.op_type} '{label}': unknown shape of '{name}'")
            return
        pos = axis - (out_rank - len(shape))
        if pos < 0 or shape[pos] == 1:
            continue  # broadcast along the channels
        stored = cx.stored(node, index)
        if stored is None:
            producer = cx.producer(name)
            what = f"{producer.op_type} output" if producer is not None else "graph input"
            cx.block(
                joined, f"{node.op_type} '{label}' joins these channels with '{name}' ({what}), which has no group"
            )
            return
        cx.members(joined.moved(pos), stored[0], pos, "param", node, stored[1])
    cx.set(node.output[0], joined)


def binary_constants(
    cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
) -> np.ndarray | None:
    fn = BINARY.get(node.op_type)
    if fn is None:
        return None
    layout = cx.layouts[out]
    out_rank = cx.rank(node.output[0]) or 0
    operands = []
    for index, name in enumerate(node.input):
        if name in cx.layouts and name in values:
            operands.append(values[name])
        else:
            operands.append(stored_vector(cx, node, index, layout.axis, layout.length, out_rank))
    with np.errstate(all="ignore"):
        result = fn(operands[0], operands[1])
    if node.op_type == "Mul":
        for v in operands:
            result = np.where(v == 0, 0.0, result)
    return result


#: ``y = s·x + t`` of ``x ∘ c`` from the constant vector ``c``, and the inputs ``x`` may be.
AFFINE: dict[str, tuple[Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], tuple[int, ...]]] = {
    "Mul": (lambda c: (c, np.zeros(len(c))), (0, 1)),
    "Add": (lambda c: (np.ones(len(c)), c), (0, 1)),
    "Sub": (lambda c: (np.ones(len(c)), -c), (0,)),
    "Div": (lambda c: (1.0 / np.where(c == 0, 1.0, c), np.zeros(len(c))), (0,)),
}


class BroadcastSpec(OpSpec):
    """An elementwise op of broadcast operands (see the module docstring)."""

    def affine_inputs(self, node: NodeProto) -> tuple[int, ...]:
        return AFFINE[node.op_type][1] if node.op_type in AFFINE and len(node.input) == 2 else ()

    def constant_affine(self, node: NodeProto, c: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
        if node.op_type not in AFFINE:
            return super().constant_affine(node, c)
        if node.op_type == "Div" and np.any(c == 0):
            return "division by zero"
        return AFFINE[node.op_type][0](c)

    def channel_rule(self, node: NodeProto) -> Callable[..., None] | None:
        return broadcast_rule

    def propagate_constant(
        self, cx: ChannelContext, node: NodeProto, out: str, values: Mapping[str, np.ndarray]
    ) -> np.ndarray | None:
        return binary_constants(cx, node, out, values)


register(BroadcastSpec(), *(op for op in BROADCAST if op != "Add"))  # Add: elementwise.AddSpec, a BroadcastSpec
