"""N:M mask refinement by exact group swaps, after a solver chose the mask and fitted the weights.

SparseGPT chooses an N:M mask greedily, column block by column block, with the error of the
columns before it already spread; the exact refit (:mod:`onnxprune.reconstruct.refit`) then
solves the kept weights for that mask. Neither revisits the mask. This pass does, one group of
``M`` columns at a time, with every other weight of the row fixed.

For a row with goal ``w`` (the dense target) and current weights ``ŵ`` the objective is the
refit's ``f(ŵ) = (ŵ − w)ᵀ H_λ (ŵ − w)``, ``H_λ = H + λI``; its gradient is ``g = H_λ (ŵ − w)``.
Changing the weights of group ``G`` by ``δ`` changes ``f`` by

    Δ(δ) = 2 δᵀ g_G + δᵀ H_GG δ.

For a candidate pattern that keeps ``K ⊂ G`` (``|K| = N``) and prunes ``Z = G \\ K``, the
pruned weights must go, ``δ_Z = −ŵ_Z``, and the kept ones take their best values,
``δ_K = −H_KK⁻¹ b`` with ``b = g_K + H_KZ δ_Z``, so that

    Δ*(K) = 2 δ_Zᵀ g_Z + δ_Zᵀ H_ZZ δ_Z − bᵀ H_KK⁻¹ b.

Every row takes the pattern of least ``Δ*`` (its current one gives ``Δ* = −g_Kᵀ H_KK⁻¹ g_K ≤ 0``:
a group is never made worse), ``ŵ_G`` and ``g`` are updated (``g += H_λ[:, G] δ``), and the
next group follows (Gauss-Seidel), for ``sweeps`` passes over the row or until no row changes
its pattern. The ``C(M, N)`` patterns and their ``H_KK⁻¹`` are shared by every row, so each
group is a few vectorised products over the rows: ``O(rows · cols · M)`` per group for the
gradient update, ``O(rows · cols²)`` per sweep in all.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from onnxprune.reconstruct.hessian import damping
from onnxprune.reconstruct.threads import one_blas_thread

log = logging.getLogger(__name__)

#: passes over the groups of a row (each stops early when no row changes its pattern)
SWEEPS = 2


def nm_swaps(
    W: np.ndarray,
    goal: np.ndarray,
    H: np.ndarray,
    nm: tuple[int, int],
    *,
    percdamp: float = 0.01,
    sweeps: int = SWEEPS,
) -> tuple[np.ndarray, int]:
    """``W`` ``[rows, cols]`` (N:M sparse, N kept of every M consecutive columns) with better
    patterns and kept weights for ``goal`` against ``H`` (see the module docstring), and the
    number of group patterns changed. ``cols`` must be a multiple of M; float64 out, exactly 0
    on the pruned weights."""
    keep, m = nm
    W = np.array(W, dtype=np.float64, copy=True)
    goal = np.asarray(goal, dtype=np.float64)
    rows, cols = W.shape
    if cols % m or not 0 < keep < m:
        raise ValueError(f"an N:M pattern {keep}:{m} needs 0 < N < M and a multiple of M columns, got {cols}")
    H = np.asarray(H, dtype=np.float64)
    dead = np.diagonal(H) == 0
    lam = damping(H, dead, percdamp)
    H_lam = H + lam * np.eye(cols)
    patterns = [np.array(k) for k in itertools.combinations(range(m), keep)]
    zeros = [np.setdiff1d(np.arange(m), k) for k in patterns]
    kept_by_pattern = np.zeros((len(patterns), m), dtype=bool)  # row p: the columns pattern p keeps
    for p, k in enumerate(patterns):
        kept_by_pattern[p, k] = True
    changed = 0
    with one_blas_thread():
        grad = (W - goal) @ H_lam  # row r: (H_λ (ŵ_r − w_r))ᵀ, H_λ symmetric
        for _ in range(sweeps):
            moved = 0
            for start in range(0, cols, m):
                cols_g = np.arange(start, start + m)
                h_gg = H_lam[np.ix_(cols_g, cols_g)]
                w_g, g_g = W[:, cols_g], grad[:, cols_g]
                current = w_g != 0
                best = np.zeros(rows)
                best_delta = np.zeros((rows, m))
                best_pattern = np.full(rows, -1)
                for p, (k, z) in enumerate(zip(patterns, zeros, strict=True)):
                    d_z = -w_g[:, z]
                    b = g_g[:, k] + d_z @ h_gg[np.ix_(z, k)]
                    try:
                        inv = np.linalg.inv(h_gg[np.ix_(k, k)])
                    except np.linalg.LinAlgError:  # kept dead columns without damping: not a candidate
                        continue
                    d_k = -b @ inv
                    gain = 2 * np.sum(d_z * g_g[:, z], axis=1) + np.sum((d_z @ h_gg[np.ix_(z, z)]) * d_z, axis=1)
                    gain -= np.sum((b @ inv) * b, axis=1)
                    better = gain < best
                    if better.any():
                        best[better] = gain[better]
                        best_pattern[better] = p
                        delta = np.zeros((int(better.sum()), m))
                        delta[:, z] = d_z[better]
                        delta[:, k] = d_k[better]
                        best_delta[better] = delta
                scale = np.sum(g_g * g_g, axis=1) + 1e-300
                update = best < -1e-12 * scale  # a real decrease, not rounding
                if not update.any():
                    continue
                delta = best_delta[update]
                new = W[np.ix_(update, cols_g)] + delta
                kept = kept_by_pattern[best_pattern[update]]
                new[~kept] = 0.0  # exactly zero where pruned
                W[np.ix_(update, cols_g)] = new
                grad[update] += delta @ H_lam[cols_g]
                moved += int(np.count_nonzero(np.any(kept != current[update], axis=1)))
            changed += moved
            if moved == 0:
                break
    log.debug("nm swaps: %d x %d, %d group patterns changed", rows, cols, changed)
    return W, changed
