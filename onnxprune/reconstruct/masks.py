"""Wanda scores and row-wise masks.

Wanda (Sun, Liu, Bair, Kolter: "A Simple and Effective Pruning Approach for Large
Language Models", ICLR 2024)
    ``score_ij = |W_ij| · ‖X_j‖`` with ``‖X_j‖ = sqrt(Σ_t x_{t,j}²)`` the norm of input
    feature ``j`` over the calibration rows. It is the size of weight ``ij``'s contribution
    to output ``i``; pruning the smallest scores *per output row* (not per layer) is what
    the paper found to work. Features that are always zero (dead) score 0 for every weight.

Row-wise selection
    In every row, exactly ``k = floor(s · cols)`` weights are pruned: those with the ``k``
    smallest scores, ties by lower column index (zeros, hence already-zero weights, first).
    For each row ``t`` = the k-th smallest score; the mask is ``score < t`` plus the first
    ``k - #(score < t)`` columns with ``score == t``: one ``np.partition`` and one cumulative
    sum, O(rows · cols), no sort.

Exact counts (:func:`row_counts`)
    A layer asked to lose ``c`` weights over ``rows`` rows, ``c`` not a multiple of ``rows``,
    prunes ``floor(c / rows)`` in every row and one more in the ``c mod rows`` rows whose next
    score (their ``floor(c / rows) + 1``-th smallest) is smallest, ties by lower row: the
    counts differ by at most one and sum to ``c`` exactly (``floor(s · cols)`` per row would
    lose up to ``rows - 1`` weights of the layer's count).

N:M
    ``nm=(N, M)``: in every group of ``M`` consecutive columns of a row the ``M - N``
    smallest scores are pruned (N kept, the project's convention; ties by position), via
    :func:`onnxprune.sparsity.nm_mask`. ``cols`` must be a multiple of ``M``.
"""

from __future__ import annotations

import numpy as np

from onnxprune.sparsity import count_for_amount, nm_mask


def wanda_scores(W: np.ndarray, sqnorm: np.ndarray) -> np.ndarray:
    """``|W_ij| · sqrt(sqnorm_j)`` (float64, shape of ``W``)."""
    W = np.asarray(W, dtype=np.float64)
    sqnorm = np.asarray(sqnorm, dtype=np.float64)
    if W.ndim != 2 or sqnorm.shape != (W.shape[1],):
        raise ValueError(f"sqnorm must have shape ({W.shape[-1]},) for W of shape {W.shape}, got {sqnorm.shape}")
    if np.any(sqnorm < 0):
        raise ValueError("sqnorm must be non-negative (it is a sum of squares)")
    return np.abs(W) * np.sqrt(sqnorm)[None, :]


def check_amount(sparsity: float | None, nm: tuple[int, int] | None, cols: int) -> None:
    """Exactly one of ``sparsity`` in [0, 1) and a valid ``nm`` that divides ``cols``; ValueError otherwise."""
    if (sparsity is None) == (nm is None):
        raise ValueError("give exactly one of sparsity and nm")
    if sparsity is not None and not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    if nm is not None:
        n, m = nm
        if not 0 < n < m:
            raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
        if cols % m:
            raise ValueError(f"{cols} columns are not a multiple of M={m} for the {n}:{m} pattern")


def smallest_per_row(scores: np.ndarray, counts: int | np.ndarray) -> np.ndarray:
    """Mask of the ``counts`` smallest scores in each row (one int, or one per row), ties by lower column.

    One count for all rows costs an ``np.partition``; per-row counts a sort of each row.
    """
    rows, cols = scores.shape
    counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), (rows,))
    if np.any(counts < 0) or np.any(counts > cols):
        raise ValueError(f"counts must lie in [0, {cols}]")
    if cols == 0 or not counts.any():
        return np.zeros(scores.shape, dtype=bool)
    kth = np.maximum(counts - 1, 0)
    if np.all(kth == kth[0]):
        t = np.partition(scores, kth[0], axis=1)[:, kth[0], None]
    else:
        t = np.take_along_axis(np.sort(scores, axis=1), kth[:, None], axis=1)
    mask = scores < t
    missing = counts[:, None] - np.count_nonzero(mask, axis=1, keepdims=True)
    ties = scores == t
    mask |= ties & (np.cumsum(ties, axis=1) <= missing)
    mask[counts == 0] = False
    return mask


def row_counts(scores: np.ndarray, total: int) -> np.ndarray:
    """Per-row counts ``[rows]`` that sum to ``total`` and differ by at most one (module
    docstring, "Exact counts"): the extra ones go to the rows with the smallest next score."""
    scores = np.asarray(scores)
    rows, cols = scores.shape
    if isinstance(total, bool) or int(total) != total or not 0 <= total <= rows * cols:
        raise ValueError(f"count must be a whole number in [0, {rows * cols}], got {total}")
    base, extra = divmod(int(total), rows) if rows else (0, 0)
    counts = np.full(rows, base, dtype=np.int64)
    if extra:
        following = np.partition(scores, base, axis=1)[:, base]
        counts[np.argsort(following, kind="stable")[:extra]] += 1
    return counts


def row_mask(scores: np.ndarray, *, sparsity: float | None = None, nm: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean ``[rows, cols]`` mask: the smallest scores of every row (exact counts) or N:M groups."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a [rows, cols] matrix, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    check_amount(sparsity, nm, scores.shape[1])
    if nm is not None:
        return nm_mask(scores, nm[0], nm[1], axis=1)
    return smallest_per_row(scores, count_for_amount(scores.shape[1], sparsity))
