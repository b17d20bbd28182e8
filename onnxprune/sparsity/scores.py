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

LAMP (Lee, Park, Mo, Ahn, Shin: "Layer-adaptive sparsity for the magnitude-based
pruning", ICLR 2021)
    Sort the weights of one layer by magnitude, ascending, ``|w_1| <= ... <= |w_n|``. Then

        score(u) = w_u² / Σ_{v >= u} w_v²

    The score lies in (0, 1], the largest weight of every layer scores exactly 1, and
    pruning by one global threshold on LAMP scores bounds the worst-case output
    distortion of each layer; unlike a global magnitude threshold it never empties a
    layer whose weights are small as a whole. Within a layer it ranks exactly like
    magnitude, so it only changes how sparsity is *allocated* across layers.

    In magnitude order the scores never decrease (the numerator grows, the suffix sum
    shrinks; rounding is monotone too), so a global threshold needs only their sorted
    sequence, not their positions: :func:`lamp_sorted_keys` computes it with one sort of the
    magnitude keys and a suffix sum taken a chunk at a time from the end (the same
    sequential additions as one ``cumsum``, so the same values as :func:`lamp_scores`),
    in about the memory of the tensor instead of six times it.
"""

from __future__ import annotations

import numpy as np

_UINT_FOR_WIDTH = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_SIGN_CLEAR = {2: 0x7FFF, 4: 0x7FFF_FFFF, 8: 0x7FFF_FFFF_FFFF_FFFF}


def float_bits(w: np.ndarray) -> np.ndarray:
    """View a float16/bfloat16/float32/float64 array as unsigned integers of the same width."""
    width = w.dtype.itemsize
    if w.dtype.kind not in "fV" and "float" not in w.dtype.name:
        raise TypeError(f"expected a floating-point array, got {w.dtype}")
    return w.view(_UINT_FOR_WIDTH[width])


def magnitude_keys(w: np.ndarray) -> np.ndarray:
    """Keys monotone in ``|w|``: the bit pattern with the sign bit cleared (same shape)."""
    width = w.dtype.itemsize
    return float_bits(w) & _UINT_FOR_WIDTH[width](_SIGN_CLEAR[width])


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


def lamp_scores(w: np.ndarray) -> np.ndarray:
    """LAMP score of every weight, in the weight's own order (float64, same shape).

    Ties in magnitude are ordered by flat index, as everywhere in this package.
    Zeros score 0.
    """
    sq = to_float64(w).reshape(-1) ** 2
    order = np.argsort(magnitude_keys(w).reshape(-1), kind="stable")
    sorted_sq = sq[order]
    suffix = np.cumsum(sorted_sq[::-1])[::-1]
    scores_sorted = np.divide(sorted_sq, suffix, out=np.zeros_like(sorted_sq), where=suffix > 0)
    scores = np.empty_like(scores_sorted)
    scores[order] = scores_sorted
    return scores.reshape(w.shape)


#: Elements per chunk of :func:`lamp_sorted_keys` (bounds its float64 temporaries).
LAMP_CHUNK = 1 << 22


def lamp_sorted_keys(w: np.ndarray, *, chunk: int = LAMP_CHUNK) -> np.ndarray:
    """``global_keys(lamp_scores(w))`` in ascending order (flat uint32): the same keys, sorted.

    See the module docstring: the magnitude keys are sorted once and the suffix sums of the
    squares are accumulated from the end a chunk at a time, so the temporaries beyond the
    sorted keys are ``chunk`` elements whatever the tensor's size.
    """
    keys = magnitude_keys(w).reshape(-1)  # a new array: sorted in place
    keys.sort()
    values = keys.view(w.dtype)  # |w| ascending, in the weight's own dtype
    out = keys if keys.dtype == np.uint32 else np.empty(keys.size, dtype=np.uint32)
    carry = np.zeros(1, dtype=np.float64)
    for end in range(keys.size, 0, -chunk):
        start = max(0, end - chunk)
        squares = to_float64(values[start:end]) ** 2
        # suffix[i] = carry + squares[i] + ... + squares[-1], added in the order one cumsum
        # over the reversed tensor adds them
        suffix = np.cumsum(np.concatenate((carry, squares[::-1])))[:0:-1]
        carry = suffix[:1].copy()
        scores = np.divide(squares, suffix, out=np.zeros_like(squares), where=suffix > 0)
        out[start:end] = global_keys(scores)
    return out


def global_keys(scores: np.ndarray) -> np.ndarray:
    """Map non-negative scores of any layer onto one comparable uint32 scale.

    A non-negative float32 sorts like its bit pattern, so ``float32(score).view(uint32)``
    lets scores of layers stored in different dtypes be ranked together. For magnitude
    pass ``|w|``; for LAMP pass the LAMP scores.
    """
    if scores.dtype == np.float32:
        return magnitude_keys(scores).reshape(-1)
    if scores.dtype.name == "bfloat16" or scores.dtype.kind == "f":
        values = np.abs(to_float64(scores) if scores.dtype.name == "bfloat16" else scores)
    else:
        raise TypeError(f"expected floating-point scores, got {scores.dtype}")
    return values.astype(np.float32, copy=False).view(np.uint32).reshape(-1)
