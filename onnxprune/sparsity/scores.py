"""Importance scores: which weights matter least.

Magnitude (L1)
    ``score(w) = |w|``. Implemented on the bit pattern: IEEE 754 floats (and bfloat16) are
    sign-magnitude, so with the sign bit cleared the unsigned integer ``bits(w) & ~sign``
    is monotone in ``|w|``. Ranking on those integers is exact in the weight's own dtype
    (float16 and bfloat16 are never widened), costs one pass, and gives ``+0`` and ``-0``
    the key 0, so weights that are already zero rank first and count toward the target.

Random
    A uniformly random permutation rank for every non-zero weight, 0 for zeros (so the
    baseline also counts existing zeros toward the target). Seeded, hence reproducible.

LAMP
    Layer-adaptive scores for a global threshold: :mod:`onnxprune.sparsity.lamp`.
"""

from __future__ import annotations

import numpy as np

_UINT_FOR_WIDTH = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def sign_clear(dtype: np.dtype) -> np.generic:
    """Every bit but the sign, as a value of the unsigned ``dtype`` (``& sign_clear`` on a float's
    bits gives its magnitude key)."""
    return dtype.type((1 << (8 * dtype.itemsize - 1)) - 1)


def float_bits(w: np.ndarray) -> np.ndarray:
    """View a float16/bfloat16/float32/float64 array as unsigned integers of the same width."""
    width = w.dtype.itemsize
    if w.dtype.kind not in "fV" and "float" not in w.dtype.name:
        raise TypeError(f"expected a floating-point array, got {w.dtype}")
    return w.view(_UINT_FOR_WIDTH[width])


def magnitude_keys(w: np.ndarray) -> np.ndarray:
    """Keys monotone in ``|w|``: the bit pattern with the sign bit cleared (same shape)."""
    bits = float_bits(w)
    return bits & sign_clear(bits.dtype)


def random_keys(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random rank ``1..n`` for every non-zero weight, ``0`` for zeros (same shape)."""
    n = w.size
    keys = rng.permutation(n).astype(np.uint64) + np.uint64(1)
    keys[magnitude_keys(w).reshape(-1) == 0] = 0
    return keys.reshape(w.shape)


def to_float64(w: np.ndarray) -> np.ndarray:
    """Widen any supported float dtype (bfloat16 included) to float64 values."""
    if w.dtype.name == "bfloat16":
        bits = w.view(np.uint16).astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32).astype(np.float64)
    return w.astype(np.float64)


def global_keys(scores: np.ndarray) -> np.ndarray:
    """Map non-negative scores of any layer onto one comparable uint32 scale.

    A non-negative float32 sorts like its bit pattern, so ``float32(score).view(uint32)``
    lets scores of layers stored in different dtypes be ranked together. For magnitude
    pass ``|w|``; for LAMP pass the LAMP scores (:func:`onnxprune.sparsity.lamp.lamp_scores`).
    """
    if scores.dtype == np.float32:
        return magnitude_keys(scores).reshape(-1)
    if scores.dtype.name == "bfloat16" or scores.dtype.kind == "f":
        values = np.abs(to_float64(scores) if scores.dtype.name == "bfloat16" else scores)
    else:
        raise TypeError(f"expected floating-point scores, got {scores.dtype}")
    return values.astype(np.float32, copy=False).view(np.uint32).reshape(-1)
