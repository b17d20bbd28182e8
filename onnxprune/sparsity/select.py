"""Turning keys into masks, and masks into new weights.

Exact selection. Given keys ``k`` (flat length ``n``) and a count ``K`` (0 <= K <= n),
:func:`smallest_k_mask` marks exactly ``K`` elements: all elements with ``k < t`` and the
first ``K - #(k < t)`` elements with ``k == t`` in flat order, where ``t`` is the K-th
smallest key. This is the unique "K smallest, ties by lower index" set. It costs one
``np.partition`` (O(n)), not a sort.
"""

from __future__ import annotations

import numpy as np


def smallest_k_mask(keys: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask (shape of ``keys``) of the ``k`` smallest keys, ties by flat index."""
    flat = keys.reshape(-1)
    n = flat.size
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, {n}], got {k}")
    if k == 0:
        return np.zeros(keys.shape, dtype=bool)
    if k == n:
        return np.ones(keys.shape, dtype=bool)
    threshold = np.partition(flat, k - 1)[k - 1]
    mask = flat < threshold
    missing = k - int(np.count_nonzero(mask))
    if missing:
        ties = np.flatnonzero(flat == threshold)[:missing]
        mask[ties] = True
    return mask.reshape(keys.shape)


def apply_mask_bits(bits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero the masked elements of an unsigned-integer view of a float array.

    Working on the bit pattern (``bits * ~mask``) sets masked weights to exactly ``+0``
    in any float dtype, leaves every other weight bit-identical, and is immune to
    ``NaN * 0``. Returns a new array; ``bits`` is not modified.
    """
    if bits.dtype.kind != "u":
        raise TypeError(f"expected an unsigned-integer view, got {bits.dtype}")
    return bits * np.logical_not(mask).astype(bits.dtype)
