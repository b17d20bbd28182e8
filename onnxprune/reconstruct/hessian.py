"""Damping of the input Gram matrix ``H`` and the upper Cholesky factor of ``H⁻¹``.

Dead columns
    A column ``j`` with ``H_jj = 0`` is an input feature that is exactly zero on every
    calibration row (so its whole row and column of ``H`` are zero, ``H`` being positive
    semi-definite). Its weights have no effect on the calibration outputs. As in the
    reference SparseGPT implementation, ``H_jj`` is set to 1, which decouples the column
    and makes ``H`` invertible without touching the live block.

Damping (SparseGPT's ``percdamp``)
    ``H_λ = H + λ I`` with ``λ = percdamp · mean(H_jj over live j)``. The mean is taken over
    the live columns so that ``λ`` scales with ``H`` (``H`` is a sum over calibration rows,
    not an average, and the dead columns' placeholder 1 is not on that scale); with every
    column dead it is ``percdamp · 1``. ``percdamp = 0`` leaves ``H`` undamped.

Upper Cholesky factor of the inverse
    SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
    Pruned in One-Shot", ICML 2023) needs the upper-triangular ``U`` with ``H⁻¹ = Uᵀ U``:
    row ``j`` of ``U`` divided by ``U_jj`` is row ``j`` of the inverse of ``H`` restricted to
    the columns ``j, j+1, …``, which is the OBS update after columns ``< j`` are fixed.
    With ``P`` the reversal permutation and ``P H P = L Lᵀ`` (lower Cholesky),
    ``U = P L⁻¹ P``: one Cholesky and one triangular inverse (by 2×2 blocks, so that the
    work is in matrix products), instead of the reference's Cholesky, inverse and second
    Cholesky. Should the Cholesky fail (``H`` not numerically positive definite), ``λ`` is
    raised tenfold (from ``1e-10 · mean diag`` when it was 0) up to 8 times, with a warning.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

log = logging.getLogger(__name__)

_TRI_BASE = 64
_RETRIES = 8


def _check_square(H: np.ndarray) -> None:
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"H must be a square matrix, got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError("H has NaN or infinite entries: recapture the statistics")


def damping(H: np.ndarray, dead: np.ndarray, percdamp: float) -> float:
    """``λ = percdamp · mean(diag H)`` over the live (non-dead) columns (``percdamp`` if none)."""
    if percdamp < 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    diag = np.diagonal(H)
    live = diag[~dead]
    return float(percdamp * (live.mean() if live.size else 1.0))


def dampen(H: np.ndarray, *, percdamp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """``(H_damped, dead)``: dead columns' ``H_jj`` set to 1, then ``λ I`` added (see module docstring).

    ``H`` is not modified; ``dead`` is the boolean ``[cols]`` mask of ``diag(H) == 0``.
    """
    _check_square(H)
    H = np.array(H, dtype=np.float64, copy=True)
    dead = np.diagonal(H) == 0
    lam = damping(H, dead, percdamp)
    idx = np.flatnonzero(dead)
    H[idx, idx] = 1.0
    H[np.diag_indices_from(H)] += lam
    return H, dead


def _inv_lower(L: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by 2×2 blocks: ``[[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [-C⁻¹ B A⁻¹, C⁻¹]]``."""
    n = L.shape[0]
    if n <= _TRI_BASE:
        return np.tril(np.linalg.inv(L))
    h = n // 2
    a_inv = _inv_lower(L[:h, :h])
    c_inv = _inv_lower(L[h:, h:])
    out = np.zeros_like(L)
    out[:h, :h] = a_inv
    out[h:, h:] = c_inv
    out[h:, :h] = -c_inv @ (L[h:, :h] @ a_inv)
    return out


def inverse_factor(H_damped: np.ndarray) -> np.ndarray:
    """Upper-triangular ``U`` with ``H_damped⁻¹ = Uᵀ U`` (``H_damped`` as :func:`dampen` returns it).

    If ``H_damped`` is not numerically positive definite, extra damping is added until it is
    (logged as a warning); ``np.linalg.LinAlgError`` only if that fails too.
    """
    _check_square(H_damped)
    reversed_h = np.ascontiguousarray(H_damped[::-1, ::-1], dtype=np.float64)
    mean_diag = float(np.mean(np.diagonal(H_damped))) if H_damped.size else 1.0
    extra = 0.0
    attempt = 0
    while True:
        try:
            L = np.linalg.cholesky(reversed_h + extra * np.eye(reversed_h.shape[0]) if extra else reversed_h)
            break
        except np.linalg.LinAlgError:
            attempt += 1
            if attempt > _RETRIES:
                raise
            extra = max(extra * 10.0, 1e-10 * max(mean_diag, np.finfo(np.float64).tiny))
    if extra:
        log.warning("H is not positive definite: added %.3g to its diagonal (raise percdamp to avoid this)", extra)
    return np.ascontiguousarray(_inv_lower(L)[::-1, ::-1])


class LastFactor:
    """The last ``(H, percdamp)`` a factoring function saw and its result, kept so that a layer
    solved at several sparsities (the error curves of :mod:`onnxprune.passes.curve_allocation`)
    factors its ``H`` once. Equal means equal values (compared in full, ``O(cols²)`` against the
    factor's ``O(cols³)``), never the same object. The arrays kept are made read-only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[np.ndarray, float, tuple[np.ndarray, ...]] | None = None

    def get(self, H: np.ndarray, percdamp: float) -> tuple[np.ndarray, ...] | None:
        """The result kept for ``(H, percdamp)``, or None."""
        with self._lock:
            if self._last is not None:
                seen, damp, result = self._last
                if damp == percdamp and seen.shape == H.shape and np.array_equal(seen, H):
                    return result
        return None

    def put(self, H: np.ndarray, percdamp: float, result: tuple[np.ndarray, ...]) -> None:
        """Keep ``result`` (its arrays made read-only) as that of ``(H, percdamp)``."""
        for array in result:
            array.flags.writeable = False
        with self._lock:
            self._last = (np.array(H, copy=True), percdamp, result)


_LAST = LastFactor()


def damped_inverse_factor(H: np.ndarray, percdamp: float) -> tuple[np.ndarray, np.ndarray]:
    """``(U, dead)``: :func:`inverse_factor` of ``H`` damped by :func:`dampen`, and its dead columns.

    The last result is kept (:class:`LastFactor`); the arrays returned are read-only.
    """
    H = np.asarray(H, dtype=np.float64)
    kept = _LAST.get(H, percdamp)
    if kept is not None:
        return kept  # type: ignore[return-value]
    H_damped, dead = dampen(H, percdamp=percdamp)
    U = inverse_factor(H_damped)
    _LAST.put(H, percdamp, (U, dead))
    return U, dead
