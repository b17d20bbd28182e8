"""Random generators: RandomNormal, RandomUniform, their ``*Like`` forms, Multinomial, Bernoulli.

Their output is a new draw on every run (a seed attribute aside), so it is no constant even
when every input is one: constant folding never replaces them by a value
(:attr:`~onnxprune.ops.spec.OpSpec.foldable`). They hold no weight and do no MACs.
"""

from __future__ import annotations

from onnxprune.ops.registry import register
from onnxprune.ops.spec import OpSpec


class GeneratorSpec(OpSpec):
    foldable = False  # a value drawn at run time
    draws = True


register(
    GeneratorSpec(),
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
)
