"""N:M semi-structured sparsity along the reduction axis.

In every group of ``M`` consecutive weights along the reduction (input) axis, at most
``N`` are non-zero: the ``M - N`` with the smallest keys are pruned (ties by position in
the group, lower first). 2:4 is what NVIDIA sparse tensor cores accelerate; the reduction
axis is the one a matrix product sums over (``K`` in ``Y = X·W`` with ``W`` of shape
``[K, N]``; ``C_in`` at each kernel position for a convolution weight
``[C_out, C_in, kH, kW]``). Weights that are already zero fill the pruned slots first,
so a tensor that already satisfies the pattern is left unchanged.

The pattern needs the reduction length to be a multiple of ``M`` (:func:`nm_valid`).

The mask is computed in place of the tensor's layout (the groups are a view, never a
moved copy): an element is pruned when its rank in its group, ``#{i : k_i < k_j} +
#{i < j : k_i = k_j}`` (its position in a stable sort), is below ``M - N``; the ranks are
counted by ``M²`` comparisons of one-byte arrays, so the memory beyond the keys is about a
quarter of them (a stable argsort held eight bytes per element).
"""

from __future__ import annotations

import numpy as np


def nm_valid(shape: tuple[int, ...], axis: int, m: int) -> bool:
    """True if the length of ``axis`` in ``shape`` is a positive multiple of ``m``."""
    length = shape[axis]
    return length > 0 and length % m == 0


def _groups(keys: np.ndarray, m: int, axis: int) -> np.ndarray:
    """``keys`` viewed as ``[before, length/m, m, after]``: the groups of ``m`` along ``axis``."""
    shape = keys.shape
    before = int(np.prod(shape[:axis], dtype=np.int64))
    after = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    return np.ascontiguousarray(keys).reshape(before, shape[axis] // m, m, after)


def nm_mask(keys: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Mask pruning the ``m - n`` smallest keys in every group of ``m`` along ``axis``."""
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    axis = axis % keys.ndim
    if not nm_valid(keys.shape, axis, m):
        raise ValueError(f"axis {axis} of shape {keys.shape} is not a multiple of {m}")
    groups = _groups(keys, m, axis)
    rank = np.zeros(groups.shape, dtype=np.uint8)
    for j in range(m):
        for i in range(m):
            if i != j:
                below = groups[:, :, i] < groups[:, :, j] if i > j else groups[:, :, i] <= groups[:, :, j]
                rank[:, :, j] += below
    return (rank < m - n).reshape(keys.shape)


def nm_zeros_after(keys: np.ndarray, n: int, m: int, axis: int) -> int:
    """Zeros after :func:`nm_mask` (keys of 0 are zeros): ``Σ max(m - n, zeros of the group)``
    over the groups, without computing the mask (the zeros rank first in every group)."""
    axis = axis % keys.ndim
    zeros = np.count_nonzero(_groups(keys, m, axis) == 0, axis=2)
    return int(np.maximum(zeros, m - n).sum())
