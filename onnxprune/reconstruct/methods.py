"""Calibrated pruning methods: how one layer is pruned from its input statistics.

A :class:`Method` names the solver of this package it calls and what the calibrated pass
(:mod:`onnxprune.passes.calibrated`) must know about it. Its ``solve`` takes one group of
one layer as a :class:`LayerProblem` (``w [rows, cols]``, the statistics of its input, the
amount) and returns the new weights ``[rows, cols]`` (float64, zeros where pruned):

- ``magnitude``: the criterion's mask, ``ŵ = w ⊙ ¬mask``; no data needed (with bias
  correction, the mask is kept and only the bias moves);
- ``wanda``: the smallest ``|W_ij|·‖x_j‖`` of each output row (:mod:`.masks`; layer-wide
  when a row is too short), kept weights unchanged;
- ``sparsegpt``: OBS mask selection and update of the kept weights (:mod:`.sparsegpt`);
- ``admm``: a mask grown gradually over ADMM iterations, then the exact refit of the kept
  weights (:mod:`.admm`); unstructured only;
- ``refit``: the criterion's mask, then the kept weights of each row re-solved by ridge
  least squares, ``ŵ_K = (H_KK + λI)⁻¹ H_K,: w`` (:mod:`.refit`).

Flags: ``needs_data`` (calibration statistics are required), ``chooses_mask`` (the method
selects the pruned weights itself, so the criterion's mask is not used and the N:M
column order of the layer applies), ``updates_weights`` (the kept weights change, so they are
fitted to the dense model's outputs; a method that only masks needs the dense model for
bias correction alone), ``statistics`` (which of ``H = Σ xᵀx``, ``sqnorm = Σ x_j²`` it
reads), ``in_analyze`` (offered by ``onnxprune analyze`` for per-layer curves), ``nm``
(it can prune an N:M pattern) and ``curves_by`` (the method whose greedy solves stand in for
this one's when the curve allocation measures each layer at many levels, because this one
costs more per solve; :mod:`onnxprune.passes.curve_allocation`).

Register a new method with ``METHODS.register(Method(...))``. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxprune.reconstruct import grouped
from onnxprune.reconstruct.admm import admm
from onnxprune.reconstruct.masks import row_counts, row_mask, smallest_per_row, wanda_scores
from onnxprune.reconstruct.refit import refit
from onnxprune.reconstruct.sparsegpt import sparsegpt
from onnxprune.reconstruct.swaps import nm_swaps
from onnxprune.sparsity import count_for_amount, smallest_k_mask
from onnxprune.sparsity.registry import Registry


@dataclass(frozen=True)
class LayerProblem:
    """One group of one layer, as a method's solver sees it.

    w: the stored weights ``[rows, cols]`` (float64).
    goal: the weights to reproduce: ``w``, or the dense-output target ``W*`` when the
        layer's input already differs from the dense model's.
    H: ``Σ xᵀx`` of the layer's input ``[cols, cols]``; sqnorm: ``Σ x_j²`` ``[cols]``.
    mask: the criterion's mask ``[rows, cols]`` (True = pruned), or None for a method that
        chooses its own.
    amount: the fraction of the layer to prune, or None with ``nm``; nm: (N, M) or None.
    row_wise: rows are long enough to prune each to the same count (else one budget for
        the whole layer).
    count: the exact number of weights of ``w`` to prune; when given it is what the methods
        that choose their own mask prune (``amount`` is then only descriptive): row-wise, the
        rows' counts differ by at most one (:func:`~onnxprune.reconstruct.masks.row_counts`),
        where ``floor(amount · cols)`` per row would fall short of ``amount · rows · cols``.
    """

    w: np.ndarray
    goal: np.ndarray
    H: np.ndarray
    sqnorm: np.ndarray
    mask: np.ndarray | None
    amount: float | None
    nm: tuple[int, int] | None
    percdamp: float
    blocksize: int
    row_wise: bool
    exact_refit: bool = False
    count: int | None = None


@dataclass(frozen=True)
class RowsProblem:
    """Groups of one row each, solved as one stack (:mod:`.grouped`; a depthwise layer): the
    fields of :class:`LayerProblem` with a leading group axis. goal ``[G, cols]``; H ``[G, cols,
    cols]``, each group's own; count ``[G]`` (each group's exact count) or None with ``amount``."""

    goal: np.ndarray
    H: np.ndarray
    count: np.ndarray | None
    amount: float | None
    percdamp: float
    blocksize: int
    exact_refit: bool = False


@dataclass(frozen=True)
class Method:
    """One calibrated method (see the module docstring for each field)."""

    name: str
    help: str
    solve: Callable[[LayerProblem], np.ndarray]
    needs_data: bool = True
    chooses_mask: bool = False
    updates_weights: bool = True
    statistics: tuple[str, ...] = ("H",)
    in_analyze: bool = True
    nm: bool = True
    curves_by: str | None = None
    #: the same solve for a stack of one-row groups, each with its own ``H`` (unstructured, no
    #: N:M order), step for step; raises :class:`~onnxprune.reconstruct.grouped.Unsolved` to hand
    #: a stack back to the loop over groups. None: the groups are looped.
    solve_rows: Callable[[RowsProblem], np.ndarray] | None = None


def _criterion_mask(p: LayerProblem) -> np.ndarray:
    if p.mask is None:
        raise ValueError("this method applies the criterion's mask: LayerProblem.mask is required")
    return p.mask


def solve_magnitude(p: LayerProblem) -> np.ndarray:
    """``w`` with the criterion's mask applied."""
    return np.where(_criterion_mask(p), 0.0, p.w)


def solve_refit(p: LayerProblem) -> np.ndarray:
    """The criterion's mask, then the ridge least-squares refit of the kept weights to ``goal``."""
    return refit(p.goal, p.H, _criterion_mask(p), percdamp=p.percdamp)


def solve_wanda(p: LayerProblem) -> np.ndarray:
    """Prune the smallest Wanda scores ``|w_ij|·‖x_j‖`` per row (layer-wide unless ``row_wise``)."""
    scores = wanda_scores(p.w, p.sqnorm)
    if p.nm is None and not p.row_wise:  # too few inputs per row
        count = count_for_amount(scores.size, p.amount) if p.count is None else p.count
        mask = smallest_k_mask(scores, count)
    elif p.nm is None and p.count is not None:
        mask = smallest_per_row(scores, row_counts(scores, p.count))
    else:
        mask = row_mask(scores, sparsity=p.amount, nm=p.nm)
    return np.where(mask, 0.0, p.w)


#: with an N:M pattern and the exact refit, the mask is refined by group swaps (:mod:`.swaps`)
NM_SWAPS = True


def solve_sparsegpt(p: LayerProblem) -> np.ndarray:
    """SparseGPT on ``goal``: OBS mask selection and update, block-wise; with ``exact_refit``
    the kept weights of each row are then solved exactly for SparseGPT's mask (its updates are
    greedy: each column's error is spread over the columns after it, never back), and with an
    N:M pattern the mask is then refined by exact group swaps, which leave each group's kept
    weights optimal for the rest of the row (:func:`~onnxprune.reconstruct.swaps.nm_swaps`; a
    second refit after them would lower the error a little more at the refit's cost again)."""
    new, _ = sparsegpt(
        p.goal,
        p.H,
        sparsity=None if p.count is not None else p.amount,
        count=p.count if p.nm is None else None,
        nm=p.nm,
        blocksize=p.blocksize,
        percdamp=p.percdamp,
        per_row=p.row_wise,
    )
    if not p.exact_refit:
        return new
    new = refit(p.goal, p.H, new == 0, percdamp=p.percdamp)
    if p.nm is not None and NM_SWAPS:
        new, _ = nm_swaps(new, p.goal, p.H, p.nm, percdamp=p.percdamp)
    return new


def solve_sparsegpt_rows(p: RowsProblem) -> np.ndarray:
    """:func:`solve_sparsegpt` of every one-row group at once (:mod:`.grouped`): the factors, the
    row-wise elimination with each group's count, then with ``exact_refit`` the refit."""
    U, dead, lam = grouped.inverse_factors(p.H, p.percdamp)
    budget = grouped.budgets(p.goal, dead, count=p.count, amount=p.amount)
    new, _ = grouped.sparsegpt_rows(p.goal, U, dead, budget, p.blocksize)
    if not p.exact_refit:
        return new
    return grouped.refit_rows(p.goal, p.H, new == 0, lam, dead)


def solve_admm(p: LayerProblem) -> np.ndarray:
    """ADMM with a gradual mask (:mod:`~onnxprune.reconstruct.admm`) on ``goal``; with
    ``exact_refit`` the kept weights are then solved exactly for its mask."""
    if p.nm is not None:
        raise ValueError("admm is unstructured only: use sparsegpt for an N:M pattern")
    new, mask = admm(
        p.goal,
        p.H,
        sparsity=None if p.count is not None else p.amount,
        count=p.count,
        percdamp=p.percdamp,
        per_row=p.row_wise,
    )
    return refit(p.goal, p.H, mask, percdamp=p.percdamp) if p.exact_refit else new


METHODS: Registry[Method] = Registry("method")

MAGNITUDE = METHODS.register(
    Method(
        name="magnitude",
        help="the criterion's mask; no data (with bias correction only the bias is fitted)",
        solve=solve_magnitude,
        needs_data=False,
        updates_weights=False,
        statistics=(),
    )
)
WANDA = METHODS.register(
    Method(
        name="wanda",
        help="|W|·‖x‖ per output row (Sun et al. 2023); kept weights unchanged",
        solve=solve_wanda,
        chooses_mask=True,
        updates_weights=False,
        statistics=("sqnorm",),
    )
)
SPARSEGPT = METHODS.register(
    Method(
        name="sparsegpt",
        help="OBS mask selection and weight update, block-wise (Frantar & Alistarh 2023)",
        solve=solve_sparsegpt,
        chooses_mask=True,
        solve_rows=solve_sparsegpt_rows,
    )
)
ADMM = METHODS.register(
    Method(
        name="admm",
        help="a mask grown over ADMM iterations, then the exact refit (Boža 2024); unstructured only",
        solve=solve_admm,
        chooses_mask=True,
        nm=False,
        curves_by="sparsegpt",
    )
)
REFIT = METHODS.register(
    Method(
        name="refit",
        help="the criterion's mask, then a ridge least-squares refit of the kept weights",
        solve=solve_refit,
        in_analyze=False,
    )
)
