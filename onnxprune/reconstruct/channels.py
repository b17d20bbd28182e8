"""Reconstruction of a consumer layer after some of its input channels are removed.

He, Zhang and Sun, "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV
2017: after channels are removed, the next layer is refitted by least squares on the
channels that remain, so that it reproduces its original output as well as it can.

Setting
    A consumer computes ``y = W x + b`` with ``W [out, F]`` over ``F`` input features (a
    Conv's im2col columns ``C_in·∏k`` in :mod:`onnxprune.im2col` order, a Gemm's ``K``).
    Removing channels removes a set of features; ``keep`` (bool ``[F]``) marks the rest,
    ``k`` below. Statistics over the ``rows`` calibration rows: the uncentred Gram
    ``H = Σ x xᵀ`` and the mean ``μ = E[x]``; the covariance is ``Σ = H / rows − μ μᵀ``.

Mean compensation (plain removal)
    A removed feature is replaced by its mean, which moves into the bias:
    ``Ŵ_k = W_k`` and ``δ = W_{¬k} μ_{¬k}``. Exact when the removed features are constant.

Refit (least squares)
    The kept weights minimise the centred output error plus a ridge pulling them towards
    their original values (as :mod:`onnxprune.reconstruct.refit` does)::

        E‖W (x − μ) − Ŵ_k (x_k − μ_k)‖² + λ ‖Ŵ_k − W_k‖²
        ⇒  Ŵ_k = (W Σ_{:,k} + λ W_k) (Σ_kk + λ I)⁻¹,      λ = damp · mean(diag Σ_kk)

    ``λ = 0`` is ordinary least squares with an intercept (``lstsq([X_k, 1], X Wᵀ)`` on the
    data). Because ``Ŵ_k = W_k`` is a candidate, the refit error is never above the plain
    removal's (the ridge pulls towards plain removal, not towards 0). The intercept keeps
    the expected output: ``δ = W μ − Ŵ_k μ_k``. Kept features that are constant on the
    calibration rows (``Var x_j <= 1e-9 · E[x_j²]``) do not enter the solve: their weights keep
    their values and their contribution is absorbed by ``δ``. The system is solved after a
    Cholesky factorisation checks it is positive definite; if it is not (``λ = 0`` and
    collinear features), ``λ`` is raised tenfold from ``1e-10 · mean(diag Σ_kk)`` up to 8
    times, with a warning, and a minimum-norm ``lstsq`` is the last resort.

Errors (analytic, no data needed)
    With ``D = W − Ŵ`` (``Ŵ`` zero on the removed features) and the bias change ``δ`` above,
    ``y − ŷ = D (x − μ)`` on every row, so::

        error = ‖Y − Ŷ‖² / ‖Y‖² = rows · tr(D Σ Dᵀ) / tr(W H Wᵀ)

    over the calibration rows, ``Y = W X`` without the bias. It is 0 when numerator and
    denominator are both 0 and ``inf`` when only the denominator is. ``error_before`` is
    plain removal with mean compensation, ``error_after`` the refit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from onnxprune.reconstruct.threads import one_blas_thread

log = logging.getLogger(__name__)

_CONSTANT = 1e-9
_RETRIES = 8


@dataclass(frozen=True, eq=False)
class ChannelRefit:
    """A consumer's new weights on its kept features and what to add to its bias."""

    weight: np.ndarray  # [out, F_kept] on the kept features, in their original order
    bias_delta: np.ndarray  # [out]: add to the consumer's bias
    error_before: float  # relative output error of plain removal with mean compensation
    error_after: float  # the same after the refit (equal to error_before with refit=False)


def conv_feature_channels(c_in: int, kernel: tuple[int, ...]) -> np.ndarray:
    """Input channel of each im2col feature of a Conv (``[c_in · ∏kernel]``, channel-major as in :mod:`onnxprune.im2col`).

    ``c_in`` is the channels one group of the Conv sees (its weight's axis 1).
    """
    if c_in < 0 or any(k < 1 for k in kernel):
        raise ValueError(f"bad Conv shape: c_in={c_in}, kernel={kernel}")
    return np.repeat(np.arange(c_in, dtype=np.int64), math.prod(kernel))


def expand_keep(channel_keep: np.ndarray, per_channel: int) -> np.ndarray:
    """Feature keep mask from a channel keep mask, channel ``c`` owning features ``c·per … (c+1)·per − 1``.

    For a Gemm after a Flatten of ``[N, C, *S]`` (``per_channel = ∏S``), a Conv consumer
    (``∏kernel``), or units to channels (``per_channel = unit``).
    """
    channel_keep = np.asarray(channel_keep)
    if channel_keep.ndim != 1 or channel_keep.dtype != bool:
        raise ValueError(f"channel_keep must be a 1-D boolean array, got {channel_keep.dtype} {channel_keep.shape}")
    if per_channel < 1:
        raise ValueError(f"per_channel must be >= 1, got {per_channel}")
    return np.repeat(channel_keep, per_channel)


def centred_gram(gram: np.ndarray, mean: np.ndarray, rows: int) -> np.ndarray:
    """``Σ (x − μ)(x − μ)ᵀ = H − rows · μ μᵀ`` from the uncentred Gram ``H`` (symmetrised, float64)."""
    gram = np.asarray(gram, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    centred = gram - rows * np.outer(mean, mean)
    return (centred + centred.T) / 2


def _quadratic(A: np.ndarray, S: np.ndarray) -> float:
    """``tr(A S Aᵀ)``."""
    return float(np.einsum("ij,ij->", A @ S, A))


def _ratio(num: float, den: float) -> float:
    num, den = max(num, 0.0), max(den, 0.0)
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def _solve(A: np.ndarray, B: np.ndarray, lam: float, scale: float) -> np.ndarray:
    """``X`` with ``X (A + λI) = B`` for symmetric ``A`` (``B [out, k]``), raising ``λ`` if not positive definite."""
    eye = np.eye(A.shape[0])
    extra = 0.0
    for _ in range(_RETRIES + 1):
        M = A + (lam + extra) * eye
        try:
            np.linalg.cholesky(M)
        except np.linalg.LinAlgError:
            extra = max(extra * 10.0, 1e-10 * scale)
            continue
        if extra:
            log.warning("channel refit: covariance not positive definite, ridge raised by %.3g (raise damp)", extra)
        return np.linalg.solve(M, B.T).T
    log.warning("channel refit: covariance singular even with extra ridge; using a minimum-norm least squares")
    return np.linalg.lstsq(A + lam * eye, B.T, rcond=None)[0].T


def _check(weight: np.ndarray, gram: np.ndarray, mean: np.ndarray, rows: int, keep: np.ndarray, damp: float) -> None:
    if weight.ndim != 2:
        raise ValueError(f"weight must be [out, F], got shape {weight.shape}")
    F = weight.shape[1]
    if gram.shape != (F, F) or mean.shape != (F,):
        raise ValueError(f"gram must be [{F}, {F}] and mean [{F}], got {gram.shape} and {mean.shape}")
    if keep.shape != (F,) or keep.dtype != bool:
        raise ValueError(f"keep must be a boolean array of shape ({F},), got {keep.dtype} {keep.shape}")
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(gram)) and np.all(np.isfinite(mean))):
        raise ValueError("weight, gram or mean has NaN or infinite entries")


def refit_consumer(
    weight: np.ndarray,
    gram: np.ndarray,
    mean: np.ndarray,
    rows: int,
    keep: np.ndarray,
    *,
    damp: float = 0.01,
    refit: bool = True,
) -> ChannelRefit:
    """New weights on the kept features and the bias change, with the errors before and after (see module docstring).

    ``weight [out, F]``; ``gram = Σ x xᵀ`` over ``rows`` input rows (uncentred) ``[F, F]``;
    ``mean = E[x]`` ``[F]``; ``keep`` bool ``[F]``. ``refit=False``: mean compensation only.
    """
    W = np.asarray(weight, dtype=np.float64)
    H = np.asarray(gram, dtype=np.float64)
    mu = np.asarray(mean, dtype=np.float64)
    keep = np.asarray(keep)
    _check(W, H, mu, rows, keep, damp)
    cov = centred_gram(H, mu, rows) / rows
    den = _quadratic(W, H)
    k = np.flatnonzero(keep)
    plain = W[:, k]
    D = W.copy()
    D[:, k] = 0.0
    before = _ratio(rows * _quadratic(D, cov), den)
    new = plain
    after = before
    if refit and k.size and k.size < W.shape[1]:
        new, after = _refit(W, H, cov, mu, rows, k, damp, den)
        if after > before:  # only by rounding or a degenerate fallback: plain removal is a candidate
            new, after = plain, before
    bias = W @ mu - new @ mu[k]
    log.debug("channel refit: %d of %d features kept, error %.4g -> %.4g", k.size, W.shape[1], before, after)
    return ChannelRefit(weight=new, bias_delta=bias, error_before=before, error_after=after)


def _refit(
    W: np.ndarray, H: np.ndarray, cov: np.ndarray, mu: np.ndarray, rows: int, k: np.ndarray, damp: float, den: float
) -> tuple[np.ndarray, float]:
    """The ridge least-squares kept weights and their relative error."""
    var = np.diagonal(cov)[k]
    second = np.diagonal(H)[k] / rows  # E[x_j²]
    live = k[var > _CONSTANT * second]
    new = W[:, k].copy()
    if live.size:
        A = cov[np.ix_(live, live)]
        scale = float(np.diagonal(A).mean())
        lam = damp * scale
        B = W @ cov[:, live] + lam * W[:, live]
        with one_blas_thread():
            solved = _solve(A, B, lam, scale)
        new[:, np.searchsorted(k, live)] = solved
    D = W.copy()
    D[:, k] -= new
    return new, _ratio(rows * _quadratic(D, cov), den)
