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
counted by ``M(M-1)/2`` comparisons (one per pair), a chunk of groups at a time (the memory beyond
the keys is the mask; a stable argsort held eight bytes per element). For a criterion that ranks
like magnitude, :func:`nm_zero_bits` goes from the tensor's bits to the pruned bits a chunk at a
time, with no key array or mask the size of the tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxprune.sparsity.blocks import BlockFill
from onnxprune.sparsity.scores import sign_clear
from onnxprune.threads import SPLIT_FROM, WORKERS, in_runs, map_in_threads


def nm_valid(shape: tuple[int, ...], axis: int, m: int) -> bool:
    """True if the length of ``axis`` in ``shape`` is a positive multiple of ``m``."""
    length = shape[axis]
    return length > 0 and length % m == 0


#: elements per chunk of the group computations (their temporaries stay in cache)
CHUNK = 1 << 18


def _group_rows(values: np.ndarray, m: int, axis: int) -> np.ndarray:
    """``values`` viewed as ``[rows, m, after]``: every group of ``m`` along ``axis`` is one
    ``[:, :, a]`` column of a row (``rows = before · length/m``)."""
    shape = values.shape
    before = int(np.prod(shape[:axis], dtype=np.int64))
    after = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    return np.ascontiguousarray(values).reshape(before * (shape[axis] // m), m, after)


def _row_chunks(rows: np.ndarray) -> range:
    """Starts of consecutive row blocks of about :data:`CHUNK` elements (step: ``range.step``)."""
    step = max(1, CHUNK // max(rows.shape[1] * rows.shape[2], 1))
    return range(0, rows.shape[0], step)


def _check(shape: tuple[int, ...], n: int, m: int, axis: int) -> int:
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    axis = axis % len(shape)
    if not nm_valid(shape, axis, m):
        raise ValueError(f"axis {axis} of shape {shape} is not a multiple of {m}")
    return axis


def _kept(groups: np.ndarray, n: int, m: int) -> np.ndarray:
    """For keys ``[rows, m, after]``: True where an element's rank in its group is ``m - n`` or
    more (kept). The rank of ``j`` counts the ``i`` below it: ``g_i <= g_j`` for ``i < j`` (ties
    by position), ``g_i < g_j`` for ``i > j``. One comparison per pair ``i < j`` serves both:
    ``i`` is below ``j`` exactly when ``j`` is not below ``i``, so ``m(m-1)/2`` comparisons."""
    rank = np.zeros(groups.shape, dtype=np.uint8)
    below = np.empty(groups[:, 0].shape, dtype=bool)
    for j in range(m):
        for i in range(j):
            np.less_equal(groups[:, i], groups[:, j], out=below)  # i below j
            rank[:, j] += below
            rank[:, i] += np.logical_not(below, out=below)  # else j below i
    return rank >= m - n


def nm_mask(keys: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """Mask pruning the ``m - n`` smallest keys in every group of ``m`` along ``axis``."""
    axis = _check(keys.shape, n, m, axis)
    groups = _group_rows(keys, m, axis)
    mask = np.empty(groups.shape, dtype=bool)
    chunks = _row_chunks(groups)
    for start in chunks:
        stop = start + chunks.step
        np.logical_not(_kept(groups[start:stop], n, m), out=mask[start:stop])
    return mask.reshape(keys.shape)


class ZeroNM(BlockFill):
    """The weights (the unsigned-integer view ``bits``) with the ``m - n`` smallest ``|w|`` of
    every group of ``m`` along ``axis`` set to ``+0`` (``apply_mask_bits(bits, nm_mask(magnitude
    keys of bits, n, m, axis))``), a block of whole group rows at a time
    (:class:`~onnxprune.sparsity.blocks.BlockFill`; :attr:`granule` is a row of ``m · after``
    elements), chunk by chunk, with no key array or mask the size of the tensor. A block of
    :data:`~onnxprune.threads.SPLIT_FROM` elements or more is computed in runs of chunks side by
    side on threads."""

    def __init__(self, bits: np.ndarray, n: int, m: int, axis: int) -> None:
        if bits.dtype.kind != "u":
            raise TypeError(f"expected an unsigned-integer view, got {bits.dtype}")
        axis = _check(bits.shape, n, m, axis)
        self.rows = _group_rows(bits, m, axis)
        super().__init__(bits.size, bits.dtype, self.rows.reshape(-1))
        self.n, self.m = n, m
        self.granule = m * self.rows.shape[2]

    def fill(self, start: int, out: np.ndarray) -> None:
        if start % self.granule or out.size % self.granule:
            raise ValueError(f"N:M blocks are whole rows of {self.granule} elements")
        first = start // self.granule
        rows, target = self.rows[first : first + out.size // self.granule], out.reshape(-1, *self.rows.shape[1:])
        clear, n, m = sign_clear(self.dtype), self.n, self.m
        chunks = _row_chunks(rows)

        def run(part: Sequence[int]) -> None:
            for begin in part:
                stop = begin + chunks.step
                chunk = rows[begin:stop]
                np.multiply(chunk, _kept(chunk & clear, n, m), out=target[begin:stop])

        map_in_threads(run, in_runs(list(chunks), WORKERS if out.size >= SPLIT_FROM else 1))


def nm_zero_bits(bits: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    """:class:`ZeroNM` as one new array of the shape of ``bits``."""
    return ZeroNM(bits, n, m, axis).whole().reshape(bits.shape)


def nm_zeros_after(keys: np.ndarray, n: int, m: int, axis: int, *, sign_bits: bool = False) -> int:
    """Zeros after :func:`nm_mask` (keys of 0 are zeros): ``Σ max(m - n, zeros of the group)``
    over the groups, without computing the mask (the zeros rank first in every group).
    ``sign_bits``: ``keys`` are a float tensor's bits, whose sign bit is ignored (``-0`` is zero)."""
    axis = axis % keys.ndim
    groups = _group_rows(keys, m, axis)
    clear = sign_clear(keys.dtype) if sign_bits else None
    total = 0
    chunks = _row_chunks(groups)
    for start in chunks:
        chunk = groups[start : start + chunks.step]
        if clear is not None:
            chunk = chunk & clear
        zeros = np.count_nonzero(chunk == 0, axis=1)
        total += int(np.maximum(zeros, m - n).sum())
    return total


def nm_zeros_after_at(zero_at: np.ndarray, shape: tuple[int, ...], n: int, m: int, axis: int) -> int:
    """:func:`nm_zeros_after` from the flat (C-order) indices ``zero_at`` of the zero keys of a
    tensor of ``shape`` alone, without its values: every group of ``G = numel/m`` loses its
    ``m - n`` smallest, zeros first, so with ``z_g`` zeros in group ``g``

        Σ_g max(m - n, z_g) = (m - n)·G + Σ_g max(0, z_g - (m - n)),

    where only the groups that hold a zero add to the sum (each zero's group: its index along
    ``axis`` divided by ``m``, its other coordinates as they are)."""
    axis = _check(shape, n, m, axis)
    groups = int(np.prod(shape, dtype=np.int64)) // m
    if zero_at.size == 0:
        return (m - n) * groups
    coords = list(np.unravel_index(zero_at, shape))
    coords[axis] = coords[axis] // m
    grouped = tuple(d // m if i == axis else d for i, d in enumerate(shape))
    _, counts = np.unique(np.ravel_multi_index(coords, grouped), return_counts=True)
    return (m - n) * groups + int(np.maximum(counts - (m - n), 0).sum())
