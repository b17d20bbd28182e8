"""A toy pruning criterion, written the way a new criterion joins onnxprune: one object, in one file.

"every other": prune the weights at even flat indices first, keep the odd ones. Its keys
(:mod:`onnxprune.sparsity.criteria`: the smallest go first, ties by lower flat index) are

    key(w_i) = 0 if w_i == 0,  1 if i is even,  2 if i is odd,

so weights that are already zero still count toward the target first, as every criterion
must; at ``sparsity=0.5`` a tensor of even size loses exactly its even-indexed weights. It
has no keys comparable across tensors, so global scope allocates like local scope, and it
does not rank like magnitude, so Wanda and SparseGPT refuse it.
"""

from __future__ import annotations

import numpy as np

from onnxprune.sparsity import magnitude_keys
from onnxprune.sparsity.criteria import CRITERIA, Criterion

NAME = "toy"


def every_other_keys(w: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """0 for zeros, 1 at even flat indices, 2 at odd ones (shaped like ``w``)."""
    keys = np.where(np.arange(w.size) % 2 == 0, 1, 2).astype(np.uint8)
    keys[magnitude_keys(w).reshape(-1) == 0] = 0
    return keys.reshape(w.shape)


TOY = Criterion(name=NAME, help="every other weight: even flat indices first (a toy)", keys=every_other_keys)


def install() -> None:
    CRITERIA.register(TOY)


def uninstall() -> None:
    CRITERIA.unregister(NAME)
