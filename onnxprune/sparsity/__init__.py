"""Pure-numpy sparsity maths: scores, masks and allocation of sparsity across layers.

Nothing in this package knows about ONNX, onnxruntime or graphs. Every function takes
numpy arrays (and plain numbers) and returns numpy arrays (or plain numbers), so it is
testable without any model.

Conventions used throughout:

* A *mask* is a boolean array shaped like the weight; ``True`` means "set to zero".
* A *key* is a non-negative array shaped like the weight; the weights with the smallest
  keys are pruned first. Ties are broken by flat (C-order) index, lower first, so every
  decision is deterministic.
* ``amount`` (a float in [0, 1)) is the fraction of a tensor's elements that must be zero
  afterwards, weights that are already zero included (see :func:`count_for_amount`).
"""

from onnxprune.sparsity.allocate import GlobalAllocation, allocate_global, count_for_amount, global_counts
from onnxprune.sparsity.blocks import BlockFill
from onnxprune.sparsity.lamp import lamp_allocation, lamp_scores
from onnxprune.sparsity.nm import ZeroNM, nm_mask, nm_valid, nm_zero_bits, nm_zeros_after, nm_zeros_after_at
from onnxprune.sparsity.scores import global_keys, magnitude_keys, random_keys
from onnxprune.sparsity.select import (
    ZeroSmallest,
    apply_mask_bits,
    magnitude_chunks,
    smallest_k_mask,
    zero_smallest_bits,
)

__all__ = [
    "BlockFill",
    "GlobalAllocation",
    "ZeroNM",
    "ZeroSmallest",
    "allocate_global",
    "apply_mask_bits",
    "count_for_amount",
    "global_counts",
    "global_keys",
    "lamp_allocation",
    "lamp_scores",
    "magnitude_chunks",
    "magnitude_keys",
    "nm_mask",
    "nm_valid",
    "nm_zero_bits",
    "nm_zeros_after",
    "nm_zeros_after_at",
    "random_keys",
    "smallest_k_mask",
    "zero_smallest_bits",
]
