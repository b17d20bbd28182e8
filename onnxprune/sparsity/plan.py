"""Plans: one sparsity level per layer, chosen from measured sensitivity curves.

Definitions
    Layer ``i`` has ``n_i`` weights, a cost ``c_i`` per weight removed and a curve of levels
    ``0 = s_i0 < s_i1 < … < s_ik < 1`` with a measured loss ``L_i(s)`` of pruning that layer
    alone to ``s`` (a drop in accuracy, or ``1 - fidelity``). Its *budget weight* is
    ``w_i = n_i`` (``budget="sparsity"``: every weight counts once) or ``w_i = n_i · c_i``
    (``budget="cost"``: MACs, bytes or latency saved per weight). A plan picks one level
    ``s_i`` per layer; it removes ``R = Σ_i w_i · s_i`` of the total ``T = Σ_i w_i`` and its
    predicted loss is ``Σ_i g_i(s_i)`` (losses are assumed additive across layers).

    Measured curves are noisy and may dip, even below zero. Planning uses the monotone
    envelope ``g_i(s_l) = max_{j <= l} L_i(s_j)`` (:func:`monotone`; ``L_i(0) = 0``, so
    ``g_i >= 0``): a dip at a high level is not trusted over the lower levels it follows.
    Predicted losses are always sums of envelope values.

    Fixed layers may take level 0 only; they still count in ``T``.

Target (:func:`plan_for_target`)
    Minimise ``Σ g_i(s_i)`` subject to ``R / T >= target``: a multiple-choice knapsack,
    NP-hard in general. Lagrangian relaxation: for ``λ >= 0`` each layer independently
    takes ``argmin_l g_i(s_l) - λ · w_i · s_l``. Those choices are the vertices of the lower
    convex hull of the points ``(w_i s_l, g_i(s_l))``, and as ``λ`` grows each layer walks
    along its hull, passing a vertex when ``λ`` reaches the slope of the segment that
    ends there. So ``R(λ)`` and the loss are non-decreasing step functions that change
    only at the hull slopes; ``λ`` is bisected over those slopes (exactly, without
    floating-point ties) for the smallest ``λ*`` whose plan, ties taken upwards, meets the
    target. Every plan on this path is optimal for the budget it removes.

    The discrete gap: the plan at ``λ*`` with ties taken downwards, ``P⁻``, misses the
    target; the one with ties taken upwards, ``P⁺``, meets it. Starting from ``P⁻`` the
    layer move (to any higher level) with the least marginal loss per budget
    ``Δg / Δ(w s)`` is taken until the target is met, then moves down that keep the target
    and lower the loss are taken, largest saving first. The cheaper of this plan and
    ``P⁺`` is returned. Weak duality bounds the optimum below by
    ``g(P⁻) + λ* (target·T - R(P⁻))``, so the result is at most one hull segment's loss
    above the optimum (when no two layers tie at ``λ*``).

Loss budget (:func:`plan_for_loss`)
    Maximise ``R`` subject to ``Σ g_i(s_i) <= max_loss``: the same path, ``λ`` bisected for
    the last plan whose loss is within ``max_loss``, then moves up (least loss per budget
    first, or largest budget first; the better of the two) while the loss stays within.
    Every plan with a smaller loss than the next path plan removes less than it, so the
    result is at most one hull segment's budget below the optimum (barring ties).

Tightening (:func:`tighten`)
    When the measured loss of a pruned model exceeds what was predicted or allowed, plan
    again for ``target = fraction · factor`` (repeatedly, if the discrete levels give back
    the same budget) until strictly less is removed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.errors import OptionError
from onnxprune.sparsity.curves import lower_hull, monotone

log = logging.getLogger(__name__)

BUDGETS = ("sparsity", "cost")


@dataclass(frozen=True, eq=False)
class Curve:
    """The sensitivity curve of one layer (see module docstring). Arrays are copied and
    made read-only; bad values raise :class:`OptionError`."""

    name: str
    levels: np.ndarray
    loss: np.ndarray
    size: int
    cost: float = 1.0
    fixed: bool = False

    def __post_init__(self) -> None:
        levels = np.array(self.levels, dtype=np.float64).reshape(-1) if np.ndim(self.levels) <= 1 else None
        loss = np.array(self.loss, dtype=np.float64).reshape(-1) if np.ndim(self.loss) <= 1 else None
        where = f"curve {self.name!r}"
        if levels is None or loss is None:
            raise OptionError(f"{where}: levels and loss must be 1-D sequences of numbers")
        if levels.size == 0 or levels.size != loss.size:
            raise OptionError(
                f"{where}: {levels.size} levels but {loss.size} losses; give one loss per level, at least level 0"
            )
        if not (np.all(np.isfinite(levels)) and np.all(np.isfinite(loss))):
            raise OptionError(f"{where}: levels and losses must be finite numbers")
        if levels[0] != 0.0:
            raise OptionError(f"{where}: levels must start at 0.0, got {levels[0]}; add level 0 with loss 0")
        if np.any(np.diff(levels) <= 0) or levels[-1] >= 1.0:
            raise OptionError(f"{where}: levels must be strictly ascending sparsities in [0, 1)")
        if loss[0] != 0.0:
            raise OptionError(f"{where}: the loss at level 0 must be 0, got {loss[0]}; measure losses relative to it")
        if isinstance(self.size, bool) or int(self.size) != self.size or self.size < 0:
            raise OptionError(f"{where}: size must be a non-negative whole number of weights, got {self.size}")
        if not (math.isfinite(self.cost) and self.cost >= 0):
            raise OptionError(f"{where}: cost per weight must be finite and >= 0, got {self.cost}")
        levels.flags.writeable = False
        loss.flags.writeable = False
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "cost", float(self.cost))


@dataclass(frozen=True)
class Plan:
    """One level per layer, its predicted loss, and the budget it removes out of ``total``."""

    sparsity: dict[str, float]
    predicted_loss: float
    removed: float
    total: float
    budget: str = "sparsity"

    @property
    def fraction(self) -> float:
        """``removed / total``: for ``budget="sparsity"``, the overall sparsity of the planned layers."""
        return self.removed / self.total if self.total > 0 else 0.0

    def to_json(self) -> dict:
        """A JSON-ready dict: ``{"plan": {name: level}, "predicted_loss", "fraction", "removed",
        "total", "budget"}``."""
        return {
            "plan": {name: float(level) for name, level in self.sparsity.items()},
            "predicted_loss": float(self.predicted_loss),
            "fraction": float(self.fraction),
            "removed": float(self.removed),
            "total": float(self.total),
            "budget": self.budget,
        }


@dataclass(frozen=True)
class _Problem:
    """Padded tables over layers × levels: envelope losses ``g`` (inf where not allowed)
    and budget removed ``b``; per layer its lower-hull vertex indices and incoming slopes."""

    names: list[str]
    levels: list[np.ndarray]
    g: np.ndarray
    b: np.ndarray
    total: float
    hulls: list[np.ndarray]
    slopes: list[np.ndarray]
    budget: str


def _problem(curves: Sequence[Curve], budget: str) -> _Problem:
    if budget not in BUDGETS:
        raise OptionError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    curves = list(curves)
    if not curves:
        raise OptionError("no sensitivity curves to plan from; analyze at least one layer")
    if not all(isinstance(c, Curve) for c in curves):
        raise OptionError("curves must be Curve objects")
    names = [c.name for c in curves]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise OptionError(f"layer {dup!r} has more than one curve; give one curve per layer")
    width = max(c.levels.size for c in curves)
    g = np.full((len(curves), width), np.inf)
    b = np.zeros((len(curves), width))
    hulls, slopes = [], []
    weights = [float(c.size) * (c.cost if budget == "cost" else 1.0) for c in curves]
    for i, (c, w) in enumerate(zip(curves, weights, strict=True)):
        k = 1 if c.fixed or w == 0 else c.levels.size  # nothing to gain above level 0
        g[i, :k] = monotone(c.loss)[:k]
        b[i, : c.levels.size] = w * c.levels
        hull, slope = _lower_hull(b[i, :k], g[i, :k])
        hulls.append(hull)
        slopes.append(slope)
    total = math.fsum(weights)
    if total <= 0:
        raise OptionError("the layers have no budget to remove (all sizes or costs are 0)")
    return _Problem(names, [c.levels for c in curves], g, b, total, hulls, slopes, budget)


def _lower_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the lower convex hull of points with strictly ascending ``x`` (collinear
    points kept), and the slope of the segment into each vertex after the first."""
    idx = lower_hull(x, y, keep_collinear=True)
    slope = np.diff(y[idx]) / np.diff(x[idx])
    return idx, slope


def _choice(p: _Problem, lam: float, *, upward: bool) -> np.ndarray:
    """Each layer's Lagrangian choice at ``λ``: the hull vertex reached by segments of
    slope < λ (``upward=False``) or <= λ (``upward=True``)."""
    side = "right" if upward else "left"
    return np.array([h[int(np.searchsorted(s, lam, side=side))] for h, s in zip(p.hulls, p.slopes, strict=True)])


def _loss(p: _Problem, choice: np.ndarray) -> float:
    return math.fsum(p.g[np.arange(choice.size), choice].tolist())


def _removed(p: _Problem, choice: np.ndarray) -> float:
    return math.fsum(p.b[np.arange(choice.size), choice].tolist())


def _candidates(p: _Problem) -> np.ndarray:
    """The hull slopes, sorted: the values of λ at which some layer moves."""
    return np.unique(np.concatenate([*p.slopes, np.zeros(0)]))


def _plan(p: _Problem, choice: np.ndarray) -> Plan:
    sparsity = {name: float(levels[j]) for name, levels, j in zip(p.names, p.levels, choice.tolist(), strict=True)}
    return Plan(sparsity, _loss(p, choice), _removed(p, choice), p.total, p.budget)


def _upgrade_for_target(p: _Problem, choice: np.ndarray, target: float) -> np.ndarray:
    """Moves up with the least ``Δg / Δb`` until the target is met, then loss-saving moves down."""
    choice = choice.copy()
    rows = np.arange(choice.size)
    while _removed(p, choice) / p.total < target:
        dg = p.g - p.g[rows, choice][:, None]
        db = p.b - p.b[rows, choice][:, None]
        ok = (db > 0) & np.isfinite(dg)
        if not ok.any():
            break
        ratio = np.where(ok, dg / np.where(ok, db, 1.0), np.inf)
        i, j = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
        choice[i] = j
    while True:
        loss = p.g[rows, choice]
        save = np.where((p.b < p.b[rows, choice][:, None]) & (p.g < loss[:, None]), loss[:, None] - p.g, -np.inf)
        improved = False
        for flat in np.argsort(-save, axis=None, kind="stable"):
            i, j = np.unravel_index(int(flat), save.shape)
            if not np.isfinite(save[i, j]):
                break
            trial = choice.copy()
            trial[i] = j
            if _removed(p, trial) / p.total >= target:
                choice, improved = trial, True
                break
        if not improved:
            return choice


def _upgrade_for_loss(p: _Problem, choice: np.ndarray, max_loss: float, *, by_ratio: bool) -> np.ndarray:
    """Moves up (least ``Δg / Δb`` first, or largest ``Δb`` first) while the loss stays within ``max_loss``."""
    choice = choice.copy()
    rows = np.arange(choice.size)
    banned = np.zeros(p.g.shape, dtype=bool)
    while True:
        current = _loss(p, choice)
        dg = p.g - p.g[rows, choice][:, None]
        db = p.b - p.b[rows, choice][:, None]
        ok = (db > 0) & np.isfinite(dg) & (current + dg <= max_loss) & ~banned
        if not ok.any():
            return choice
        key = np.where(ok, dg / np.where(ok, db, 1.0), np.inf) if by_ratio else np.where(ok, -db, np.inf)
        i, j = np.unravel_index(int(np.argmin(key)), key.shape)
        trial = choice.copy()
        trial[i] = j
        if _loss(p, trial) <= max_loss:
            choice = trial
        else:  # rounding: the exact sum is over the limit
            banned[i, j] = True


def _check_fraction(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise OptionError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise OptionError(f"{what} must be a finite number, got {value}")
    return value


def plan_for_target(curves: Sequence[Curve], target: float, *, budget: str = "sparsity") -> Plan:
    """The plan with the least predicted loss that removes at least ``target`` (a fraction in
    [0, 1)) of the total budget (see module docstring: Lagrangian path, then the gap)."""
    target = _check_fraction(target, "target")
    if not 0.0 <= target < 1.0:
        raise OptionError(f"target must be a fraction in [0, 1), got {target}")
    p = _problem(curves, budget)
    zero = np.zeros(len(p.names), dtype=np.intp)
    if target == 0.0:
        return _plan(p, zero)
    best = np.array([h[-1] for h in p.hulls])
    most = _removed(p, best) / p.total
    if most < target:
        raise OptionError(
            f"target {target} is out of reach: the curves allow at most {most:.4f} of the {budget} budget; "
            "lower the target, add higher levels or unfix layers"
        )
    lams = _candidates(p)
    lo, hi = 0, lams.size - 1  # smallest index whose upward plan meets the target
    while lo < hi:
        mid = (lo + hi) // 2
        if _removed(p, _choice(p, float(lams[mid]), upward=True)) / p.total >= target:
            hi = mid
        else:
            lo = mid + 1
    lam = float(lams[lo])
    below, above = _choice(p, lam, upward=False), _choice(p, lam, upward=True)
    filled = _upgrade_for_target(p, below, target)
    options = [c for c in (filled, above) if _removed(p, c) / p.total >= target]
    chosen = min(options, key=lambda c: (_loss(p, c), -_removed(p, c)))
    plan = _plan(p, chosen)
    log.debug(
        "plan for %s target %.4f: lambda %.6g, fraction %.4f, predicted loss %.6g",
        budget,
        target,
        lam,
        plan.fraction,
        plan.predicted_loss,
    )
    return plan


def plan_for_loss(curves: Sequence[Curve], max_loss: float, *, budget: str = "sparsity") -> Plan:
    """The plan removing the most budget whose predicted loss is at most ``max_loss``
    (see module docstring: the same Lagrangian path, bisected on the loss)."""
    max_loss = _check_fraction(max_loss, "max_loss")
    if max_loss < 0:
        raise OptionError(f"max_loss must be >= 0, got {max_loss}")
    p = _problem(curves, budget)
    lams = _candidates(p)
    lo, hi = -1, lams.size - 1  # largest index whose upward plan stays within max_loss (-1: none)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _loss(p, _choice(p, float(lams[mid]), upward=True)) <= max_loss:
            lo = mid
        else:
            hi = mid - 1
    start = np.zeros(len(p.names), dtype=np.intp) if lo < 0 else _choice(p, float(lams[lo]), upward=True)
    lam = 0.0 if lo < 0 else float(lams[lo])
    options = [_upgrade_for_loss(p, start, max_loss, by_ratio=r) for r in (True, False)]
    chosen = max(options, key=lambda c: (_removed(p, c), -_loss(p, c)))
    plan = _plan(p, chosen)
    log.debug(
        "plan for %s loss <= %.6g: lambda %.6g, fraction %.4f, predicted loss %.6g",
        budget,
        max_loss,
        lam,
        plan.fraction,
        plan.predicted_loss,
    )
    return plan


def tighten(plan: Plan, curves: Sequence[Curve], factor: float = 0.9) -> Plan:
    """A plan removing strictly less budget than ``plan`` (target ``plan.fraction · factor``,
    lowered again while the discrete levels give back as much), for when the measured loss
    exceeded the budget."""
    factor = _check_fraction(factor, "factor")
    if not 0.0 < factor < 1.0:
        raise OptionError(f"factor must lie in (0, 1), got {factor}")
    names = [c.name for c in curves]
    if sorted(names) != sorted(plan.sparsity):
        raise OptionError("the plan and the curves name different layers; tighten with the curves it came from")
    if plan.removed <= 0:
        raise OptionError("the plan removes nothing and cannot be tightened; raise the loss budget instead")
    target = plan.fraction * factor
    while True:
        tighter = plan_for_target(curves, target, budget=plan.budget)
        if tighter.removed < plan.removed:
            log.debug("tightened from fraction %.4f to %.4f", plan.fraction, tighter.fraction)
            return tighter
        target = target * factor if target * factor > 1e-9 else 0.0  # 0: the empty plan removes nothing


#: Significant digits of the one level :func:`exact_target` computes (the others are measured levels).
PLAN_DIGITS = 4


def _rounded(value: float) -> tuple[float, float]:
    """``value`` rounded down and up to :data:`PLAN_DIGITS` significant digits."""
    if value <= 0:
        return (0.0, 0.0)
    step = 10.0 ** (math.floor(math.log10(value)) - PLAN_DIGITS + 1)
    return (float(f"{math.floor(value / step) * step:.12g}"), float(f"{math.ceil(value / step) * step:.12g}"))


def exact_target(plan: Plan, curves: Sequence[Curve], target: float) -> Plan:
    """``plan`` lowered to remove exactly ``target`` of the budget (plans on a level grid overshoot).

    The excess ``e = removed − target·total`` is taken back from one layer, whose level
    drops by ``e / (size·cost)`` to a level between two measured ones (any level works for
    pruning); its loss is interpolated linearly on the monotone envelope. The layer is the
    one whose envelope is steepest just below its level (the most loss saved per unit of
    budget given back) among those that can give ``e`` back without falling below the
    next lower measured level. That level is written with :data:`PLAN_DIGITS` significant
    digits, rounded down or up, whichever leaves the plan's fraction nearer the target
    (so the plan reads ``0.1675``, not ``0.1675309096185687``, and its fraction still
    rounds to the target at that precision).
    """
    total = plan.total
    excess = plan.removed - target * total
    if excess <= 1e-12 * max(total, 1.0):
        return plan
    best: tuple[float, Curve, float] | None = None
    for curve in curves:
        level = plan.sparsity.get(curve.name, 0.0)
        weight = curve.size * (curve.cost if plan.budget == "cost" else 1.0)
        index = int(np.searchsorted(curve.levels, level))
        if weight <= 0 or index == 0 or index >= curve.levels.size or curve.levels[index] != level:
            continue
        lower = float(curve.levels[index - 1])
        new = level - excess / weight
        if new < lower - 1e-12:
            continue
        envelope = monotone(curve.loss)
        slope = (envelope[index] - envelope[index - 1]) / max((level - lower) * weight, 1e-300)
        if best is None or slope > best[0]:
            best = (slope, curve, max(new, lower))
    if best is None:
        return plan
    _, curve, new = best
    weight = curve.size * (curve.cost if plan.budget == "cost" else 1.0)
    old = plan.sparsity[curve.name]
    lower = float(curve.levels[int(np.searchsorted(curve.levels, old)) - 1])
    candidates = [v for v in _rounded(new) if lower - 1e-12 <= v <= old]
    if candidates:
        new = min(candidates, key=lambda v: abs(plan.removed - (old - v) * weight - target * total))
    envelope = monotone(curve.loss)
    saved = float(np.interp(old, curve.levels, envelope) - np.interp(new, curve.levels, envelope))
    sparsity = {**plan.sparsity, curve.name: float(new)}
    return Plan(sparsity, plan.predicted_loss - saved, plan.removed - (old - new) * weight, total, plan.budget)
