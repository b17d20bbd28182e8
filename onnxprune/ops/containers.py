"""Sequences and optionals: ops whose values are no tensors.

``SequenceConstruct``, ``SequenceEmpty``, ``SequenceAt``, ``SequenceInsert``, ``SequenceErase``,
``SequenceLength``, ``SequenceMap``, ``SplitToSequence``, ``ConcatFromSequence``, and ``Optional``,
``OptionalGetElement``, ``OptionalHasElement`` make, read or test a sequence of tensors or an
optional value. Constant folding stores values as initializers, which are tensors, so it never
folds them (:attr:`~onnxprune.ops.spec.OpSpec.foldable`), even where the value they give is a
tensor. (``ReverseSequence`` is a tensor op despite its name, and folds like any other.)
"""

from __future__ import annotations

from onnxprune.ops.registry import register
from onnxprune.ops.spec import OpSpec


class ContainerSpec(OpSpec):
    foldable = False  # a sequence or an optional is no tensor to store


register(
    ContainerSpec(),
    "SequenceConstruct",
    "SequenceEmpty",
    "SequenceAt",
    "SequenceInsert",
    "SequenceErase",
    "SequenceLength",
    "SequenceMap",
    "SplitToSequence",
    "ConcatFromSequence",
    "Optional",
    "OptionalGetElement",
    "OptionalHasElement",
)
