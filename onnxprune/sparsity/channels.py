"""Channel importance and channel allocation for structured pruning.

A *channel group* is a set of coupled channels removed together (a Conv's output filters,
the BN after it, the next Conv's input channels, ...). A group has ``n`` channels, removed
in aligned *units* of ``unit`` channels (an attention head is a unit of ``head_dim``
channels; usually ``unit = 1``), so it has ``n_units = n / unit`` units; unit ``u`` is
the channels ``u·unit … (u+1)·unit − 1``.

Data-free importance (:func:`l2_importance`)
    Each member ``m`` of the group contributes a block ``B_m [n, f_m]`` whose row ``c`` is
    everything channel ``c`` owns in that member (a producer's output filter flattened, a
    consumer's input slice transposed, a BN's gamma ...). With ``R_u`` the rows of unit
    ``u``::

        score_u = Σ_m ‖B_m[R_u]‖² / (‖B_m‖² / n_units)

    Each member is normalised to a mean of 1 per unit, so a large layer does not drown a
    small one; an all-zero member contributes 0.

Calibrated importance (:func:`error_importance`)
    For a consumer ``s`` computing ``y = W_s x`` with ``W_s [out, F]``, removing the input
    features ``S_u`` of unit ``u`` and compensating their mean through the bias changes the
    output by ``ΔY = W_{s,S_u} (x_{S_u} − μ_{S_u})``, whose squared norm summed over the
    calibration rows is, with the centred Gram ``G_s = Σ (x − μ)(x − μ)ᵀ``::

        score_u = Σ_s Σ_o w_{o,S_u} G_{s,S_u S_u} w_{o,S_u}ᵀ = Σ_s tr(W_{s,S_u} G_{s,S_u S_u} W_{s,S_u}ᵀ)

    This is exact for the consumers' pre-activations when the unit is removed alone (it is
    the second-order term of the loss downstream; the cross terms between units are
    ignored, as pruning criteria do). Features of other groups (``feats = -1``) do not enter.

Allocation: how many units each group loses
    Each group is a :class:`GroupBudget`. Its *cap* is ``0`` if it is ``fixed`` or has a
    single unit, else ``min(⌊max_fraction · n_units⌋, n_units − 1)``: never more than
    ``max_fraction`` of the units, always at least one kept. A removal count ``r`` is
    *allowed* if ``r <= cap`` and the kept count ``n_units − r`` is a multiple of
    ``round_to`` (or ``r = 0``: everything kept). The allowed counts are therefore
    ``0, r₁, r₁ + round_to, r₁ + 2·round_to, …`` up to the cap, with
    ``r₁ = n_units mod round_to`` (or ``round_to`` when that is 0). The largest allowed
    count ``<= x`` rounds the kept count ``n_units − min(x, cap)`` *up* to a multiple of
    ``round_to``, so rounding never removes more than asked.

    *Local* (:func:`local_counts`): every group gets the largest allowed count
    ``<= ⌊amount · n_units⌋`` (floor in decimal, as
    :func:`onnxprune.sparsity.count_for_amount`).

    *Global* (:func:`global_counts`) and *FLOPs* (:func:`flops_counts`) run one greedy
    pass over *chunks*: the steps between consecutive allowed counts of each group, so
    rounding and caps are built into the pass rather than fixed afterwards. A group's units
    are taken lowest score first (:func:`select_units` order), so chunk ``i`` of a group is
    the sorted units ``r_i … r_{i+1} − 1``. Scores are made comparable across groups by
    dividing by the group's mean score (``ŝ = s / mean(s)``; all zero if the mean is 0).
    A chunk's key is the mean ``ŝ`` of its units (non-decreasing along a group, enforced
    with a running maximum so that the chunks of a group are taken in order); chunks are
    visited by increasing key, ties by group then chunk index.

    * Global: the budget is ``B = amount · Σ_g n_g c_g`` over the non-fixed groups
      (``c_g`` = :attr:`GroupBudget.cost` of one unit; with unit costs ``B`` is a number of
      units). A chunk is taken if the removed cost plus its cost stays ``<= B``; otherwise
      its group is *closed* (its later chunks are at least as large) and the pass goes on
      with the other groups. The removed cost never exceeds ``B``; it falls short only by
      less than the smallest chunk that no longer fits, or where the caps stop it.
    * FLOPs: chunks are keyed by ``mean ŝ / c_g`` (importance per unit of cost) and taken in
      that order until the remaining cost ``Σ_g (n_g − r_g) c_g + other_cost`` is at most
      ``target`` times the original total ``Σ_g n_g c_g + other_cost`` (fixed groups and
      ``other_cost`` count in the total and cannot shrink). The last chunk may overshoot
      the target by less than its own cost. If the caps do not allow the target, every
      chunk is taken and the result says ``met=False`` (:class:`FlopsCounts`; also logged
      as a warning): the caller decides whether that is an error.

    Comparisons against a budget allow a relative slack of ``1e-9`` of the total, so that
    ``0.29 · 100`` units is 29 and not 28.

Measured loss (:attr:`GroupBudget.loss`, :func:`loss_at_steps`)
    With calibration data the pass can measure, per group, the model's loss ``L_g(r)`` when
    the group alone loses its ``r`` lowest-ranked units (consumers refitted), at a few
    allowed counts ``r``. The measured points and ``(0, 0)`` are replaced by their convex,
    non-decreasing envelope (:func:`onnxprune.sparsity.curves.convex_envelope`), read at
    every allowed count. A chunk of such a group is then keyed by its *marginal loss per
    unit of cost*, ``ΔL / (size · c_g)``, in both greedy passes (global and FLOPs) instead
    of the normalised score: the chunks taken are those that buy the cost at the least
    predicted loss, ``Σ_g L_g(r_g)`` (losses of different groups are assumed to add, as
    squared errors of independent perturbations do). Convexity makes a group's keys
    non-decreasing, so its chunks are still taken in order; this greedy fill is the
    optimum of the relaxed problem (as in :mod:`onnxprune.sparsity.curves`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from onnxprune.errors import OptionError
from onnxprune.sparsity.allocate import count_for_amount
from onnxprune.sparsity.curves import convex_envelope

log = logging.getLogger(__name__)

_SLACK = 1e-9
_CHUNK_BYTES = 64 * 1024 * 1024


def _n_units(n: int, unit: int) -> int:
    if unit < 1:
        raise ValueError(f"unit must be >= 1, got {unit}")
    if n < 1 or n % unit:
        raise ValueError(f"a group of {n} channels cannot be cut into units of {unit}")
    return n // unit


def l2_importance(blocks: Sequence[np.ndarray], *, unit: int = 1) -> np.ndarray:
    """Data-free importance ``[n // unit]`` (float64) of each unit of a group (see module docstring).

    Each block is ``[n, f_m]`` (row ``c``: what channel ``c`` owns in member ``m``); a 1-D
    block ``[n]`` (a BN gamma) is read as ``[n, 1]``.
    """
    if not blocks:
        raise ValueError("l2_importance needs at least one block")
    arrays = [np.asarray(b, dtype=np.float64) for b in blocks]
    arrays = [a[:, None] if a.ndim == 1 else a for a in arrays]
    n = arrays[0].shape[0]
    for a in arrays:
        if a.ndim != 2 or a.shape[0] != n:
            raise ValueError(f"every block must be [{n}, f], got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("a block has NaN or infinite entries")
    n_units = _n_units(n, unit)
    score = np.zeros(n_units, dtype=np.float64)
    for a in arrays:
        per_unit = np.einsum("ij,ij->i", a, a).reshape(n_units, unit).sum(axis=1)
        total = per_unit.sum()
        if total > 0:
            score += per_unit * (n_units / total)
    return score


def _unit_features(feats: np.ndarray, n: int, unit: int, F: int) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.shape != (F,) or not np.issubdtype(feats.dtype, np.integer):
        raise ValueError(f"feats must be an integer array of shape ({F},), got {feats.dtype} {feats.shape}")
    if feats.size and (feats.min() < -1 or feats.max() >= n):
        raise ValueError(f"feats must hold channels in [0, {n - 1}] or -1, got [{feats.min()}, {feats.max()}]")
    return np.where(feats >= 0, feats // unit, -1)


def _consumer_scores(W: np.ndarray, G: np.ndarray, labels: np.ndarray, n_units: int) -> np.ndarray:
    """``tr(W_{:,S_u} G_{S_u S_u} W_{:,S_u}ᵀ)`` for every unit ``u``, units of one size batched."""
    out = np.zeros(n_units, dtype=np.float64)
    live = np.flatnonzero(labels >= 0)
    if live.size == 0:
        return out
    order = live[np.argsort(labels[live], kind="stable")]  # features grouped by unit, ascending
    sizes = np.bincount(labels[live], minlength=n_units)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rows = W.shape[0]
    for k in np.unique(sizes[sizes > 0]):
        units = np.flatnonzero(sizes == k)
        idx_all = order[starts[units][:, None] + np.arange(k)[None, :]]  # [U, k]
        chunk = max(1, _CHUNK_BYTES // (8 * k * (2 * rows + k)))
        for begin in range(0, len(units), chunk):
            idx = idx_all[begin : begin + chunk]
            Wu = W[:, idx].transpose(1, 0, 2)  # [U, out, k]
            Gu = G[idx[:, :, None], idx[:, None, :]]  # [U, k, k]
            out[units[begin : begin + chunk]] = np.einsum("uok,uok->u", Wu @ Gu, Wu)
    return out


def error_importance(
    weights: Sequence[np.ndarray],
    grams: Sequence[np.ndarray],
    feats: Sequence[np.ndarray],
    *,
    n: int,
    unit: int = 1,
) -> np.ndarray:
    """Calibrated importance ``[n // unit]`` (float64): the consumers' output error of removing each unit.

    ``weights[s]`` ``[out, F]``, ``grams[s]`` the centred Gram ``Σ (x − μ)(x − μ)ᵀ`` ``[F, F]``
    of its input, ``feats[s]`` ``[F]`` the group channel of each input feature (``-1``: a
    feature of another group). See the module docstring.
    """
    if not len(weights) == len(grams) == len(feats):
        raise ValueError("weights, grams and feats must have one entry per consumer")
    n_units = _n_units(n, unit)
    score = np.zeros(n_units, dtype=np.float64)
    for W, G, f in zip(weights, grams, feats, strict=True):
        W = np.asarray(W, dtype=np.float64)
        G = np.asarray(G, dtype=np.float64)
        if W.ndim != 2 or G.shape != (W.shape[1], W.shape[1]):
            raise ValueError(f"a consumer needs W [out, F] and G [F, F], got {W.shape} and {G.shape}")
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(G))):
            raise ValueError("a consumer's weight or Gram has NaN or infinite entries")
        score += _consumer_scores(W, G, _unit_features(f, n, unit, W.shape[1]), n_units)
    return np.maximum(score, 0.0)  # rounding can leave a tiny negative trace


def select_units(scores: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of the ``count`` lowest scores, ties by lower index."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if not 0 <= count <= scores.size:
        raise ValueError(f"count must lie in [0, {scores.size}], got {count}")
    return np.sort(np.argsort(scores, kind="stable")[:count])


@dataclass(frozen=True, eq=False)
class GroupBudget:
    """What the allocation needs to know about one channel group (see module docstring)."""

    n_units: int
    scores: np.ndarray  # [n_units], higher = more important
    cost: float = 1.0  # what one unit costs (MACs or parameters), > 0
    max_fraction: float = 0.9  # never remove more than this fraction of the units (and keep >= 1)
    round_to: int = 1  # the kept unit count is a multiple of this (or all units are kept)
    fixed: bool = False  # nothing may be removed
    loss: np.ndarray | None = None  # measured loss at each of :meth:`steps` (0 first), or None: keyed by scores

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=np.float64)
        if self.n_units < 1:
            raise ValueError(f"a group needs at least one unit, got {self.n_units}")
        if scores.shape != (self.n_units,):
            raise ValueError(f"scores must have shape ({self.n_units},), got {scores.shape}")
        if not np.all(np.isfinite(scores)) or np.any(scores < 0):
            raise ValueError("scores must be finite and non-negative")
        if not (math.isfinite(self.cost) and self.cost > 0):
            raise ValueError(f"cost must be a positive number, got {self.cost}")
        if not 0.0 <= self.max_fraction <= 1.0:
            raise OptionError(f"the channel cap max_fraction must lie in [0, 1], got {self.max_fraction}")
        if self.round_to < 1:
            raise OptionError(f"round_to must be >= 1, got {self.round_to}")
        object.__setattr__(self, "scores", scores)
        if self.loss is not None:
            loss = np.asarray(self.loss, dtype=np.float64)
            if loss.shape != (len(self.steps()),) or not np.all(np.isfinite(loss)) or np.any(loss < 0):
                raise ValueError(f"loss must hold one finite value >= 0 per allowed count ({len(self.steps())})")
            object.__setattr__(self, "loss", loss)

    @property
    def cap(self) -> int:
        """The most units that may go: 0 if fixed, else ``min(⌊max_fraction · n⌋, n − 1)``."""
        if self.fixed:
            return 0
        return min(count_for_amount(self.n_units, self.max_fraction), self.n_units - 1)

    def allowed_floor(self, count: int) -> int:
        """The largest allowed removal count ``<= count`` (kept count rounded up to ``round_to``, within the cap)."""
        x = min(count, self.cap)
        if x <= 0:
            return 0
        kept = -(-(self.n_units - x) // self.round_to) * self.round_to
        return max(self.n_units - kept, 0)

    def steps(self) -> list[int]:
        """The allowed removal counts, ascending: ``0, r₁, r₁ + round_to, …`` up to the cap."""
        top = self.allowed_floor(self.cap)
        if top == 0:
            return [0]
        first = self.n_units % self.round_to or self.round_to
        return [0, *range(first, top + 1, self.round_to)]


def loss_at_steps(budget: GroupBudget, counts: Sequence[int], losses: Sequence[float]) -> np.ndarray:
    """The measured loss curve of a group read at every allowed count (see module docstring).

    ``counts``: removal counts measured (ascending, > 0), ``losses``: the loss at each. The
    convex, non-decreasing envelope of ``(0, 0)`` and these points is interpolated at
    :meth:`GroupBudget.steps`; counts beyond the last measured one get its envelope's end.
    """
    counts = np.asarray(counts, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if counts.shape != losses.shape or counts.ndim != 1:
        raise ValueError("counts and losses must be 1-D and of the same length")
    if counts.size and (counts[0] <= 0 or np.any(np.diff(counts) <= 0)):
        raise ValueError("counts must be ascending and > 0")
    if not np.all(np.isfinite(losses)) or np.any(losses < 0):
        raise ValueError("losses must be finite and >= 0")
    steps = np.asarray(budget.steps(), dtype=np.float64)
    if not counts.size:
        return np.zeros_like(steps)
    n = float(budget.n_units)
    x, g = convex_envelope(np.concatenate(([0.0], counts / n)), np.concatenate(([0.0], losses)))
    return np.interp(steps / n, x, g)


def _check_amount(amount: float) -> None:
    if not 0.0 <= amount < 1.0:
        raise OptionError(f"the channel amount must lie in [0, 1), got {amount}")


def local_counts(budgets: Sequence[GroupBudget], amount: float) -> list[int]:
    """Units to remove per group: the largest allowed count ``<= ⌊amount · n_units⌋`` (see module docstring)."""
    _check_amount(amount)
    return [b.allowed_floor(count_for_amount(b.n_units, amount)) for b in budgets]


class _Chunk(NamedTuple):
    key: float
    group: int
    index: int
    size: int


def _chunks(budgets: Sequence[GroupBudget], *, per_cost: bool) -> list[_Chunk]:
    """Every group's chunks (steps between allowed counts), sorted by key, then group, then index."""
    chunks: list[_Chunk] = []
    for g, b in enumerate(budgets):
        steps = b.steps()
        if len(steps) < 2:
            continue
        sizes = np.diff(steps)
        if b.loss is not None:  # marginal measured loss per unit of cost
            keys = np.maximum.accumulate(np.maximum(np.diff(b.loss), 0.0) / (sizes * b.cost))
        else:
            mean = float(b.scores.mean())
            normed = np.sort(b.scores / mean if mean > 0 else np.zeros_like(b.scores))
            keys = np.maximum.accumulate(np.add.reduceat(normed[: steps[-1]], steps[:-1]) / sizes)
            if per_cost:
                keys = keys / b.cost
        chunks.extend(_Chunk(float(k), g, i, int(s)) for i, (k, s) in enumerate(zip(keys, sizes, strict=True)))
    chunks.sort()
    return chunks


def global_counts(budgets: Sequence[GroupBudget], amount: float) -> list[int]:
    """Units to remove per group for ``amount`` of the non-fixed groups' total cost, lowest normalised score first.

    One greedy pass over the groups' chunks; caps and ``round_to`` always hold and the
    removed cost never exceeds the budget (see module docstring for the exact rule).
    """
    _check_amount(amount)
    total = sum(b.n_units * b.cost for b in budgets if not b.fixed)
    budget = amount * total + _SLACK * total
    counts = [0] * len(budgets)
    closed = [False] * len(budgets)
    removed = 0.0
    for chunk in _chunks(budgets, per_cost=False):
        if closed[chunk.group]:
            continue
        cost = chunk.size * budgets[chunk.group].cost
        if removed + cost <= budget:
            counts[chunk.group] += chunk.size
            removed += cost
        else:
            closed[chunk.group] = True
    log.debug("global channels: %.4g of %.4g cost removed (asked %.4g)", removed, total, amount * total)
    return counts


class FlopsCounts(NamedTuple):
    """Per-group counts for a cost target, and whether the target was met within the caps."""

    counts: list[int]
    met: bool


def flops_counts(
    budgets: Sequence[GroupBudget], target: float, *, other_cost: float = 0.0, quiet: bool = False
) -> FlopsCounts:
    """Units to remove per group so that the remaining cost is ``<= target ×`` the original total.

    ``target`` in (0, 1]; ``other_cost``: cost outside every group (it counts in the total
    and cannot shrink). Lowest normalised score per unit of cost first; if the caps do not
    allow the target, every allowed unit goes and ``met`` is False (see module docstring),
    logged as a warning unless ``quiet`` (a caller searching over internal targets).
    """
    if not 0.0 < target <= 1.0:
        raise OptionError(f"the cost target must lie in (0, 1], got {target}")
    if not (math.isfinite(other_cost) and other_cost >= 0):
        raise ValueError(f"other_cost must be a non-negative number, got {other_cost}")
    total = sum(b.n_units * b.cost for b in budgets) + other_cost
    need = (1.0 - target) * total - _SLACK * total
    counts = [0] * len(budgets)
    removed = 0.0
    for chunk in _chunks(budgets, per_cost=True):
        if removed >= need:
            break
        counts[chunk.group] += chunk.size
        removed += chunk.size * budgets[chunk.group].cost
    met = removed >= need
    if not met and not quiet:
        log.warning(
            "channel cost target %.3g not reachable within the caps: %.3g of the cost remains",
            target,
            (total - removed) / total if total else 1.0,
        )
    return FlopsCounts(counts, met)
