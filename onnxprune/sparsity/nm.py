"""N:M semi-structured sparsity along the reduction axis.

In every group of ``M`` consecutive weights along the reduction (input) axis, at most
``N`` are non-zero: the ``M - N`` with the smallest keys are pruned (ties by position in
the group, lower first). 2:4 is what NVIDIA sparse tensor cores accelerate; the reduction
axis is the one a matrix product sums over (``K`` in ``Y = X·W`` with ``W`` of shape
``[K, N]``; ``C_in`` at each kernel position for a convolution weight
``[C_out, C_in, kH, kW]``). Weights that are already zero fill the pruned slots first,
so a tensor that already satisfies the pattern is left unchanged.

The pattern needs the reduction length to be a multiple of ``M`` (:func:`nm_valid`).
"""

from __future__ import annotations

import numpy as np


def nm_valid(shape: tuple[int, ...], axis: int, m: int) -> bool:
    """True if the length of ``axis`` in ``shape`` is a positive multiple of ``m``."""
    length = shape[axis]
    return length > 0 and length % m == 0


def nm_mask(keys: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Mask pruning the ``m - n`` smallest keys in every group of ``m`` along ``axis``."""
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    axis = axis % keys.ndim
    if not nm_valid(keys.shape, axis, m):
        raise ValueError(f"axis {axis} of shape {keys.shape} is not a multiple of {m}")
    moved = np.moveaxis(keys, axis, -1)
    groups = moved.reshape(-1, m)
    order = np.argsort(groups, axis=1, kind="stable")
    mask_groups = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask_groups, order[:, : m - n], True, axis=1)
    return np.moveaxis(mask_groups.reshape(moved.shape), -1, axis)
