"""SparseGPT on many one-row groups at once: a depthwise layer's groups batched, not looped.

A depthwise Conv (``C`` groups of one output channel each) is ``C`` problems of one row:
group ``g`` prunes ``w_g [cols]`` (``cols = ∏k``, 9 or 25) against its own ``H_g``. Solved one
group at a time (:func:`onnxprune.reconstruct.layer.solve_layer`'s loop) each costs about a
millisecond of Python and small LAPACK calls: a run on PP-OCRv4 det at 50 % called SparseGPT
9,895 times, nearly all for its 2,432 depthwise channels (in the waves and at every level of
the error curves), 9.5 s under the profiler. Here every step runs once over the stack of
groups, each group with its own matrices:

- **damping and factor** (:func:`inverse_factors`): per group ``λ_g = percdamp · mean(diag
  H_g)`` over its live columns, dead columns' ``H_jj`` set to 1, then the upper factor ``U_g`` of
  ``(H_g + λ_g I)⁻¹ = U_gᵀ U_g`` from a Cholesky factor of the reversed matrix and its inverse
  (:func:`onnxprune.reconstruct.hessian.inverse_factor`'s steps, by numpy's stacked LAPACK calls);
- **SparseGPT** (:func:`sparsegpt_rows`): :mod:`onnxprune.reconstruct.sparsegpt`'s row-wise
  elimination with exact counts, where each row (group) reads its own ``U_g``: at the start of
  each block a row ranks ``w_j² / [U_g]_jj²`` of its remaining columns and prunes its smallest
  ``r_g`` that fall in the block (forced zeros first), and column ``j``'s error
  ``(w_j − q_j) / [U_g]_jj`` moves the later columns by ``−err · [U_g]_{j, j+1:}``;
- **exact refit** (:func:`refit_rows`): :mod:`onnxprune.reconstruct.refit`'s ridge least
  squares per row, ``(H_KK + λI) ŵ_K = H_K,: w + λ w_K`` with the group's own ``H`` and ``λ``,
  the rows with as many unknowns solved as one stack.

For one row the row-wise and layer-wide selections of :mod:`.sparsegpt` are the same choice (the
row's smallest saliencies, ties by lower column), so this is the loop's solve step for step. A
stack whose factor or refit fails (a matrix not positive definite, a singular system) is handed
back to the loop, whose retries raise the damping group by group. Only groups of at most
:data:`~onnxprune.reconstruct.hessian._TRI_BASE` columns come here (their factors are inverted
whole, as the loop's are). The masks are the loop's and the weights its weights to rounding
(``tests/test_grouped_solve.py``; on this machine the same bits: a stacked product may take
another BLAS kernel than one group's product on another CPU).

Measured side by side (the loop, then the stack; interleaved, two runs each, ``-v``, 2 cores):
PP-OCRv4 det, SparseGPT 50 % on 32 pages of 640×640, the curves 5.2 and 6.0 s against 1.3
and 1.4 s and the waves' solves 4.3 and 4.2 s against 2.2 and 2.2 s; PP-OCRv4 rec, 70 % on 32
lines of 48×1280, the curves 9.3 and 9.5 s against 4.6 and 5.3 s, the solves 5.8 and 8.2 s
against 4.8 and 5.3 s. The outputs were the same bytes. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from onnxprune.reconstruct.hessian import _TRI_BASE, LastFactor, damping
from onnxprune.reconstruct.masks import smallest_per_row
from onnxprune.reconstruct.sparsegpt import SUB_BLOCK
from onnxprune.sparsity import count_for_amount

#: the widest group this module solves (wider ones loop: their factors are inverted by blocks)
MAX_COLS = _TRI_BASE

#: the last ``(H, percdamp)`` :func:`inverse_factors` factored and its result
_LAST = LastFactor()


class Unsolved(Exception):
    """A stack this module does not solve (a factor or system failed): the caller loops instead."""


def dampings(H: np.ndarray, percdamp: float) -> tuple[np.ndarray, np.ndarray]:
    """``(λ [G], dead [G, cols])``: :func:`~onnxprune.reconstruct.hessian.damping` of each ``H_g``."""
    dead = np.diagonal(H, axis1=1, axis2=2) == 0
    lam = np.array([damping(h, d, percdamp) for h, d in zip(H, dead, strict=True)])
    return lam, dead


def inverse_factors(H: np.ndarray, percdamp: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(U [G, cols, cols], dead [G, cols], λ [G])`` for ``H [G, cols, cols]`` (module
    docstring); the last result is kept (:class:`~onnxprune.reconstruct.hessian.LastFactor`).
    Raises :class:`Unsolved` when a damped ``H_g`` is not numerically positive definite."""
    kept = _LAST.get(H, percdamp)
    if kept is not None:
        return kept  # type: ignore[return-value]
    lam, dead = dampings(H, percdamp)
    damped = np.array(H, dtype=np.float64, copy=True)
    diag = np.einsum("gii->gi", damped)  # a writable view of the diagonals
    diag[dead] = 1.0
    diag += lam[:, None]
    try:
        lower = np.linalg.cholesky(np.ascontiguousarray(damped[:, ::-1, ::-1]))
        U = np.ascontiguousarray(np.tril(np.linalg.inv(lower))[:, ::-1, ::-1])
    except np.linalg.LinAlgError as exc:
        raise Unsolved(str(exc)) from exc
    _LAST.put(H, percdamp, (U, dead, lam))
    return U, dead, lam


def budgets(goal: np.ndarray, dead: np.ndarray, *, count: np.ndarray | None, amount: float | None) -> np.ndarray:
    """Each row's budget: its count (or ``floor(amount · cols)``), at least its forced zeros."""
    cols = goal.shape[1]
    wanted = np.asarray(count, dtype=np.int64) if count is not None else count_for_amount(cols, amount)
    zeros = np.count_nonzero((goal == 0) | dead, axis=1)
    return np.maximum(wanted, zeros).astype(np.int64)


def sparsegpt_rows(
    goal: np.ndarray, U: np.ndarray, dead: np.ndarray, budget: np.ndarray, blocksize: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(Ŵ [G, cols], mask)``: SparseGPT's row-wise elimination of ``goal [G, cols]`` where row
    ``g`` reads its own factor ``U[g]`` and prunes ``budget[g]`` weights (module docstring)."""
    W = np.array(goal, dtype=np.float64, copy=True)
    W[dead] = 0.0
    zero = W == 0.0
    rows, cols = W.shape
    d = np.einsum("gii->gi", U).copy()
    mask = np.zeros((rows, cols), dtype=bool)
    remaining = budget.copy()
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        keys = (W[:, i1:] / d[:, i1:]) ** 2
        keys[zero[:, i1:]] = -1.0  # forced zeros rank first
        mask[:, i1:i2] = smallest_per_row(keys, remaining)[:, : i2 - i1]
        remaining -= np.count_nonzero(mask[:, i1:i2], axis=1)
        block = W[:, i1:i2].copy()
        errors = np.zeros((rows, i2 - i1))
        for s1 in range(0, i2 - i1, SUB_BLOCK):  # sub-blocks as the loop's (the same sums in the same order)
            s2 = min(s1 + SUB_BLOCK, i2 - i1)
            for i in range(s1, s2):
                j = i1 + i
                pruned = mask[:, j]
                if not pruned.any():
                    continue
                err = np.where(pruned, block[:, i], 0.0) / d[:, j]
                block[:, i + 1 : s2] -= U[:, j, j + 1 : i1 + s2] * err[:, None]
                block[pruned, i] = 0.0
                errors[:, i] = err
            if s2 < i2 - i1:
                block[:, s2:] -= np.matmul(errors[:, None, s1:s2], U[:, i1 + s1 : i1 + s2, i1 + s2 : i2])[:, 0]
        W[:, i1:i2] = block
        if i2 < cols:
            W[:, i2:] -= np.matmul(errors[:, None, :], U[:, i1:i2, i2:])[:, 0]
    W[mask] = 0.0
    return W, mask


def refit_rows(goal: np.ndarray, H: np.ndarray, mask: np.ndarray, lam: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Each row's kept live weights re-solved against its own ``H[g]`` and ``λ[g]``
    (:mod:`onnxprune.reconstruct.refit`, one row per group); raises :class:`Unsolved` on a
    singular system (the loop's retries raise its damping)."""
    W = np.asarray(goal, dtype=np.float64)
    out = np.where(mask, 0.0, W)
    solve = ~mask & ~dead
    sizes = np.count_nonzero(solve, axis=1)
    HW = np.matmul(W[:, None, :], H)[:, 0]  # row g: (H_g w_g)ᵀ, H symmetric
    for k in np.unique(sizes):
        if k == 0:
            continue
        rows = np.flatnonzero(sizes == k)
        idx = np.nonzero(solve[rows])[1].reshape(len(rows), k)  # each row's unknowns, ascending
        A = H[rows[:, None, None], idx[:, :, None], idx[:, None, :]]
        diag = np.arange(k)
        A[:, diag, diag] += lam[rows, None]
        b = np.take_along_axis(HW[rows], idx, axis=1) + lam[rows, None] * np.take_along_axis(W[rows], idx, axis=1)
        try:
            solved = np.linalg.solve(A, b[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError as exc:
            raise Unsolved(str(exc)) from exc
        part = out[rows]
        np.put_along_axis(part, idx, solved, axis=1)
        out[rows] = part
    return out
