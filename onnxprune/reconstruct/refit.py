"""Least-squares refit of the kept weights for a given mask.

For each row ``w`` of ``W`` with pruned set ``P`` (mask True) and kept set ``K``::

    minimise  (w - ŵ)ᵀ H_λ (w - ŵ)   subject to  ŵ_P = 0,     H_λ = H + λ I

which is ``‖wX - ŵX‖² + λ ‖w - ŵ‖²``: the output error on the calibration data plus a
ridge term that pulls the kept weights towards their original values (not towards 0).
Setting the gradient on ``K`` to zero gives the normal equations::

    (H_KK + λ I) ŵ_K = H_K,: w + λ w_K

With ``λ = percdamp · mean(diag H)`` (live columns, as in
:func:`onnxprune.reconstruct.hessian.damping`); ``λ = 0`` is the exact least-squares
solution ``ŵ_K = H_KK⁻¹ H_K,: w``, i.e. ``lstsq(X_Kᵀ, Xᵀ w)``. This is the same damped
objective SparseGPT minimises, solved exactly for the mask instead of greedily.

Dead columns (``H_jj = 0``: the feature is zero on every calibration row) do not enter
the system; a kept weight there keeps its value (it does not affect the calibration
outputs, and leaving it alone is what is least surprising off the calibration data).

Complement form. With ``λ > 0``, ``A = H_λ`` restricted to the live columns is positive
definite, and the same minimiser is reached through the *pruned* set (the optimal brain
surgeon's update for removing ``P`` at once; the unconstrained minimiser is ``w`` itself)::

    ŵ = w − A⁻¹_{:,P} (A⁻¹_PP)⁻¹ w_P,      i.e.  ŵ_K = w_K − A⁻¹_KP z,  A⁻¹_PP z = w_P

(the block-inverse identity ``(A_KK)⁻¹ A_KP = −A⁻¹_KP (A⁻¹_PP)⁻¹``). A row then costs a
``p × p`` solve for its ``p`` pruned live columns instead of a ``k × k`` one for its ``k`` kept
ones, after one inverse of ``A`` for the layer: it is used for the rows where ``p < k``, i.e.
below 50 % sparsity (at 25 %: ``p³ = k³ / 27``). The two forms agree to rounding (a test
compares them). ``λ = 0`` (``A`` may be singular), or an ``A`` whose inverse fails or is not
finite, keeps the direct form for every row.

Vectorised: the right-hand sides come from one product ``W H``; rows with the same
number of unknowns (and form) are stacked into batches of ``[g, k, k]`` systems (chunked so
that the batches in flight stay under ``max_batch_bytes`` together) and solved by
``np.linalg.solve``, which loops in LAPACK, not in Python; the batches run side by side in
:func:`~onnxprune.reconstruct.threads.solver_threads` threads (each row is solved alone, so
the result does not depend on the threads). If a direct system is singular (``λ = 0`` and
fewer independent calibration rows than kept columns), the batch is solved again with
``λ = 1e-8 · mean(diag H)``, raised tenfold until it succeeds, with a warning.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from onnxprune.reconstruct.hessian import damping
from onnxprune.reconstruct.threads import one_blas_thread, solver_threads

log = logging.getLogger(__name__)

#: the refit's batches in flight together: 64 MiB (256 MiB until stop 47: MiniLM's SparseGPT 50 %
#: peaked 1,048-1,069 MiB against 955-995 MiB now, the same bytes and time, README stop 47)
_DEFAULT_BATCH_BYTES = 64 * 1024 * 1024
_RETRIES = 8


def _solve_batch(
    H: np.ndarray, W: np.ndarray, HW: np.ndarray, rows: np.ndarray, idx: np.ndarray, lam: float, scale: float
) -> np.ndarray:
    """``ŵ_K`` for the rows ``rows`` whose kept live columns are ``idx`` ``[g, k]``."""
    A = H[idx[:, :, None], idx[:, None, :]]
    b = np.take_along_axis(HW[rows], idx, axis=1)
    w_k = np.take_along_axis(W[rows], idx, axis=1)
    diag = np.arange(idx.shape[1])
    A[:, diag, diag] += lam
    attempt = 0
    while True:
        try:
            return np.linalg.solve(A, (b + lam * w_k)[:, :, None])[:, :, 0]
        except np.linalg.LinAlgError:
            attempt += 1
            if attempt > _RETRIES:
                raise
            bumped = max(lam * 10.0, 1e-8 * scale)
            log.warning("refit: singular system for %d rows; ridge raised from %.3g to %.3g", len(rows), lam, bumped)
            A[:, diag, diag] += bumped - lam
            lam = bumped


def _solve_complement(Ai: np.ndarray, W: np.ndarray, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``ŵ`` (whole rows) for the rows ``rows`` whose pruned live columns are ``idx`` ``[g, p]``:
    ``w − A⁻¹_{:,P} z`` with ``A⁻¹_PP z = w_P`` (module docstring; ``Ai`` is ``A⁻¹`` on the live
    columns, 0 on the dead ones, so a dead column keeps its value; ``A⁻¹_{:,P}`` is read as the
    rows ``A⁻¹_{P,:}``, equal to rounding: ``A`` is symmetric)."""
    w = W[rows]
    A = Ai[idx[:, :, None], idx[:, None, :]]
    z = np.linalg.solve(A, np.take_along_axis(w, idx, axis=1)[:, :, None])[:, :, 0]  # [g, p]
    for r, (pruned, zr) in enumerate(zip(idx, z, strict=True)):  # row by row: A⁻¹_{P,:} is p × cols
        w[r] -= zr @ Ai[pruned]
    return w


def _live_inverse(H: np.ndarray, dead: np.ndarray, lam: float) -> np.ndarray | None:
    """``(H + λ I)⁻¹`` on the live columns, embedded with zeros on the dead ones; None when
    ``λ = 0`` or the inverse fails or is not finite (the direct form is used then)."""
    if lam <= 0:
        return None
    live = np.flatnonzero(~dead)
    every = live.size == len(dead)  # the common case: no copy to embed
    A = H.copy() if every else H[np.ix_(live, live)]
    A[np.diag_indices_from(A)] += lam
    try:
        inverse = np.linalg.inv(A)
    except np.linalg.LinAlgError:
        return None
    del A  # a layer's few cols² matrices at once: 1536 columns make 19 MB each
    if not np.all(np.isfinite(inverse)):
        return None
    if every:
        return inverse
    full = np.zeros_like(H)
    full[np.ix_(live, live)] = inverse
    return full


def refit(
    W: np.ndarray,
    H: np.ndarray,
    mask: np.ndarray,
    *,
    percdamp: float = 0.01,
    max_batch_bytes: int = _DEFAULT_BATCH_BYTES,
) -> np.ndarray:
    """Kept weights re-solved so the layer reproduces its dense output (float64, exactly 0 on ``mask``)."""
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(f"W must be a [rows, cols] matrix, got shape {W.shape}")
    rows, cols = W.shape
    H = np.asarray(H, dtype=np.float64)
    mask = np.asarray(mask)
    if H.shape != (cols, cols):
        raise ValueError(f"H must have shape {(cols, cols)} for W of shape {W.shape}, got {H.shape}")
    if mask.shape != W.shape or mask.dtype != bool:
        raise ValueError(f"mask must be a boolean array of shape {W.shape}, got {mask.dtype} {mask.shape}")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(H))):
        raise ValueError("W or H has NaN or infinite entries")
    if max_batch_bytes <= 0:
        raise ValueError(f"max_batch_bytes must be positive, got {max_batch_bytes}")

    dead = np.diagonal(H) == 0
    lam = damping(H, dead, percdamp)
    scale = float(np.diagonal(H)[~dead].mean()) if (~dead).any() else 1.0
    out = np.where(mask, 0.0, W)
    solve = ~mask & ~dead[None, :]  # kept live weights: the unknowns
    sizes = np.count_nonzero(solve, axis=1)
    gone = mask & ~dead[None, :]  # pruned live weights
    pruned = np.count_nonzero(gone, axis=1)
    cheaper = (pruned < sizes) & (pruned > 0)  # the complement form solves fewer unknowns
    inverse = _live_inverse(H, dead, lam) if cheaper.any() else None
    if inverse is None:
        cheaper[:] = False
    HW = W @ H if not cheaper.all() else None  # row r: (H w_r)ᵀ, H symmetric
    with one_blas_thread():
        if HW is not None:
            _solve_groups(H, W, HW, out, solve, np.where(cheaper, 0, sizes), lam, scale, max_batch_bytes)
        if inverse is not None:
            _solve_groups(inverse, W, None, out, gone, np.where(cheaper, pruned, 0), lam, scale, max_batch_bytes)
            out[mask] = 0.0
    log.debug(
        "refit: %d x %d, %d row(s) by the complement form, ridge %.3g", rows, cols, np.count_nonzero(cheaper), lam
    )
    return out


def _solve_groups(
    H: np.ndarray,
    W: np.ndarray,
    HW: np.ndarray | None,
    out: np.ndarray,
    solve: np.ndarray,
    sizes: np.ndarray,
    lam: float,
    scale: float,
    max_batch_bytes: int,
) -> None:
    """Fill ``out`` with the solutions, rows grouped by their number of unknowns (rows of size
    0 are left alone). ``HW`` None: the complement form, ``H`` being ``A⁻¹`` and ``solve`` the
    pruned live columns (whole rows are written)."""
    batches = []
    threads = solver_threads()
    for k in np.unique(sizes):
        if k == 0:
            continue
        group = np.flatnonzero(sizes == k)
        # np.nonzero walks in C order: each row's k kept columns, ascending.
        idx_all = np.nonzero(solve[group])[1].reshape(len(group), k)
        # a direct row: A, its LU, b, w_K and the solution; a complement row: A⁻¹_PP, its LU, w
        # and z (A⁻¹_{P,:} is taken one row at a time)
        per_row = 8 * (2 * k * k + 4 * k) if HW is not None else 8 * (2 * k * k + 2 * k + W.shape[1])
        chunk = max(1, int(max_batch_bytes // (per_row * threads)))
        batches.extend((group[s : s + chunk], idx_all[s : s + chunk]) for s in range(0, len(group), chunk))

    def run(batch: tuple[np.ndarray, np.ndarray]) -> None:
        rows_c, idx = batch
        if HW is None:
            out[rows_c] = _solve_complement(H, W, rows_c, idx)
            return
        solved = _solve_batch(H, W, HW, rows_c, idx, lam, scale)
        sub = out[rows_c]
        np.put_along_axis(sub, idx, solved, axis=1)
        out[rows_c] = sub

    if threads == 1 or len(batches) < 2:
        for batch in batches:
            run(batch)
        return
    with ThreadPoolExecutor(min(threads, len(batches))) as pool:
        list(pool.map(run, batches))  # list(): a batch's exception is raised here
