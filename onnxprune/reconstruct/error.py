"""Bias correction and the relative reconstruction error of a pruned layer.

Bias correction
    Pruning changes the expected output of row ``i`` by ``(W_i - Ŵ_i) · E[x]``. Adding
    ``δ = (W - Ŵ) E[x]`` to the bias (``b' = b + δ``) makes ``E[Ŵ x + b'] = E[W x + b]``
    exactly on the calibration distribution (Nagel et al., "Data-Free Quantization Through
    Weight Equalization and Bias Correction", ICCV 2019, applied to pruning error).

Relative reconstruction error
    ``e = ‖W X - Ŵ X‖²_F / ‖W X‖²_F = tr(D H Dᵀ) / tr(W H Wᵀ)`` with ``D = W - Ŵ`` and
    ``H = X Xᵀ``; both traces are computed as ``Σ (A H) ∘ A``. It is 0 when both numerator
    and denominator are 0 (nothing to reconstruct and nothing changed) and ``inf`` when only
    the denominator is 0. Rounding can make a numerator of a tiny ``D`` slightly negative;
    it is clipped at 0.
"""

from __future__ import annotations

import numpy as np


def _check_pair(W: np.ndarray, W_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    W = np.asarray(W, dtype=np.float64)
    W_new = np.asarray(W_new, dtype=np.float64)
    if W.ndim != 2 or W.shape != W_new.shape:
        raise ValueError(f"W and W_new must be matrices of one shape, got {W.shape} and {W_new.shape}")
    return W, W_new


def bias_delta(W: np.ndarray, W_new: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(W - Ŵ) · E[x]`` per output row (``[rows]``): add it to the bias to keep the expected output."""
    W, W_new = _check_pair(W, W_new)
    mean = np.asarray(mean, dtype=np.float64)
    if mean.shape != (W.shape[1],):
        raise ValueError(f"mean must have shape ({W.shape[1]},), got {mean.shape}")
    return (W - W_new) @ mean


def _quadratic(A: np.ndarray, H: np.ndarray) -> float:
    """``tr(A H Aᵀ)``."""
    return float(np.einsum("ij,ij->", A @ H, A))


def reconstruction_error(W: np.ndarray, W_new: np.ndarray, H: np.ndarray) -> float:
    """``‖WX - ŴX‖² / ‖WX‖²`` from ``H = X Xᵀ`` (see module docstring)."""
    W, W_new = _check_pair(W, W_new)
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"H must have shape {(W.shape[1], W.shape[1])}, got {H.shape}")
    num = max(_quadratic(W - W_new, H), 0.0)
    den = max(_quadratic(W, H), 0.0)
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den
