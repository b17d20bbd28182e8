"""ADMM pruning: a mask grown gradually by alternating a least-squares fit and a projection.

After Boža, "Fast and Effective Weight Update for Pruned Large Language Models" (TMLR 2024),
which solves the layer-wise problem with the alternating direction method of multipliers and
grows the mask over the iterations; this is our own implementation of that idea.

Problem
    Every row ``w`` of ``W`` is pruned to ``ŵ`` minimising ``(w − ŵ)ᵀ H_λ (w − ŵ)`` with
    ``H_λ = H + λI`` (``λ = percdamp · mean(diag H)``: the output error on the calibration
    data plus a ridge towards the dense weights, the objective SparseGPT and the exact refit
    minimise, :mod:`onnxprune.reconstruct.refit`), subject to a mask of the layer's count.

Scaling
    With ``d = sqrt(diag H_λ)``, ``Ĥ = H_λ / (d dᵀ)`` (unit diagonal) and ``ŵ ↦ ŵ ⊙ d``, the
    problem is the same with ``Ĥ``; one ``ρ`` then suits every layer, and the magnitude of a
    scaled weight is its Wanda score ``|w_j| · ‖x_j‖`` (up to the damping).

Iterations (``V``: the fitted weights, ``Z``: their masked copy, ``U``: the scaled dual)
    ::

        V ← (W Ĥ + ρ (Z − U)) (Ĥ + ρ I)⁻¹      the fit, pulled towards Z
        Z ← (V + U) with the mask's entries set to 0
        U ← U + V − Z

    ``(Ĥ + ρI)⁻¹`` is formed once, so an iteration costs two ``rows × cols × cols`` products
    (the greedy SparseGPT pass costs about one). The mask is chosen every :data:`STEP`
    iterations up to :data:`SCHEDULE`, by the smallest ``|V + U|`` of each row (``|W|`` at the
    start), at a sparsity that rises on a cubic schedule ``s_i = s · (1 − (1 − i/n)³)`` to the
    target; after :data:`SCHEDULE` it is fixed and the iterations settle the weights. Rows
    prune their counts as SparseGPT's row-wise selection does (:func:`.masks.row_counts`
    spreads an exact total); ``per_row=False`` takes one budget over the whole matrix.

Result
    The mask after the last iteration. The kept weights are then solved exactly for it (the
    run's exact refit, :func:`onnxprune.reconstruct.refit.refit`), or, without it, are ``Z``.

Zeros and dead columns
    As in SparseGPT: weights already zero and the weights of dead columns (``H_jj = 0``)
    rank first and count toward the budget, so they stay zero.

Measured (all-MiniLM-L6-v2, 128 sentences, 50 %, the 18 layers of blocks 0, 3 and 5, each
solved alone on the dense model's ``H``, then refitted exactly; against SparseGPT with the
exact refit, same damping 0.1): with 40 iterations, the mask chosen every 3 up to 24, the
relative output error of every layer was 6–24 % lower at ρ = 0.6 (ρ = 0.3 and ρ = 1, 3, 10
were worse); 80 iterations with the mask chosen every 2 up to 60 (the defaults) lowered it
2–3 % more, at 1.5 times the solve time: 10–27 % below SparseGPT's (median 20 %). Unstructured only: with a 2:4 pattern (the mask
projected to N:M at every choice, then the N:M swaps) it was worse than SparseGPT with the
refit and swaps on 11 of 12 layers (by 1.5–6 %), so N:M is not offered.
"""

from __future__ import annotations

import logging

import numpy as np

from onnxprune.reconstruct.hessian import dampen
from onnxprune.reconstruct.masks import row_counts, smallest_per_row
from onnxprune.reconstruct.threads import one_blas_thread
from onnxprune.sparsity import count_for_amount, smallest_k_mask

log = logging.getLogger(__name__)

#: the penalty ρ of the scaled problem (module docstring)
RHO = 0.6
#: iterations in all; the mask is chosen every ``STEP`` of them up to ``SCHEDULE``
ITERATIONS = 80
SCHEDULE = 60
STEP = 2


def admm(
    W: np.ndarray,
    H: np.ndarray,
    *,
    sparsity: float | None = None,
    count: int | None = None,
    percdamp: float = 0.01,
    per_row: bool = True,
    rho: float = RHO,
    iterations: int = ITERATIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """Prune ``W`` ``[rows, cols]`` against ``H = Σ xᵀx``; returns ``(Z, mask)`` (module docstring).

    Exactly one of ``sparsity`` (in [0, 1)) and ``count`` (the exact number of weights to
    prune). ``Z`` is float64, exactly 0 on ``mask``; refit it for the exact kept weights.
    """
    W = np.array(W, dtype=np.float64, copy=True)
    if W.ndim != 2:
        raise ValueError(f"W must be a [rows, cols] matrix, got shape {W.shape}")
    rows, cols = W.shape
    if (sparsity is None) == (count is None):
        raise ValueError("give exactly one of sparsity and count")
    if count is None:
        if not 0.0 <= sparsity < 1.0:  # type: ignore[operator]
            raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
        count = count_for_amount(cols, sparsity) * rows if per_row else count_for_amount(W.size, sparsity)
    if isinstance(count, bool) or int(count) != count or not 0 <= count <= W.size:
        raise ValueError(f"count must be a whole number in [0, {W.size}], got {count}")
    if rho <= 0 or iterations < 1:
        raise ValueError(f"rho must be > 0 and iterations >= 1, got {rho} and {iterations}")
    if not np.all(np.isfinite(W)):
        raise ValueError("W has NaN or infinite entries")
    H_damped, dead = dampen(np.asarray(H, dtype=np.float64), percdamp=percdamp)
    if H_damped.shape != (cols, cols):
        raise ValueError(f"H must have shape {(cols, cols)} for W of shape {W.shape}, got {H_damped.shape}")
    W[:, dead] = 0.0
    forced = W == 0.0
    d = np.sqrt(np.diagonal(H_damped))
    h = H_damped / np.outer(d, d)
    w = W * d
    with one_blas_thread():
        inverse = np.linalg.inv(h + rho * np.eye(cols))
        fitted = w @ h
        z, u = w.copy(), np.zeros_like(w)
        final = row_counts(_keys(w, forced), int(count)) if per_row else int(count)
        mask = forced.copy()
        last_choice = min(SCHEDULE, iterations - 1)
        for i in range(iterations):
            if i % STEP == 0 and i <= last_choice:
                share = 1.0 - (1.0 - min(1.0, (i + STEP) / (last_choice + STEP))) ** 3
                keys = _keys(w if i == 0 else z + u, forced)
                if i + STEP > last_choice:
                    share = 1.0
                mask = _choose(keys, final, share)
            v = (fitted + rho * (z - u)) @ inverse
            z = np.where(mask, 0.0, v + u)
            u += v - z
    out = np.where(mask, 0.0, z / d)
    log.debug("admm: %d x %d, %d pruned", rows, cols, int(mask.sum()))
    return out, mask


def _keys(w: np.ndarray, forced: np.ndarray) -> np.ndarray:
    """``|w|``, with the forced zeros at -1 so that they rank first."""
    keys = np.abs(w)
    keys[forced] = -1.0
    return keys


def _choose(keys: np.ndarray, final: np.ndarray | int, share: float) -> np.ndarray:
    """The smallest keys: ``share`` of each row's final count (or of the layer's), and every
    forced zero (they rank first and may exceed the count)."""
    forced = keys < 0
    if isinstance(final, np.ndarray):
        counts = np.floor(final * share).astype(np.int64) if share < 1.0 else final
        counts = np.maximum(counts, np.count_nonzero(forced, axis=1))
        return smallest_per_row(keys, counts)
    total = final if share >= 1.0 else int(final * share)
    return smallest_k_mask(keys, max(total, int(np.count_nonzero(forced))))
