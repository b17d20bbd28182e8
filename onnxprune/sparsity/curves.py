"""Error-curve allocation: per-layer sparsities from reconstruction-error curves.

Definitions
    Layer ``l`` has ``n_l`` weights and a measured curve of its error against its own
    sparsity, ``(s_lj, e_lj)`` for ascending levels ``s_l0 = 0 < s_l1 < … <= 1`` with
    ``e_l0 = 0`` (typically the relative output error of a calibrated solver,
    ``e = tr(ΔHΔᵀ) / tr(WHWᵀ)`` with ``Δ = W − Ŵ`` and ``H = Σ x xᵀ`` of the layer's input),
    a weight ``c_l >= 0`` that turns it into the model's loss, and bounds
    ``lo_l <= s_l <= hi_l``. An allocation picks one sparsity per layer and solves::

        minimise   Σ_l c_l · g_l(s_l)
        subject to Σ_l n_l · s_l = t · Σ_l n_l,   lo_l <= s_l <= hi_l,

    where ``g_l`` is the *convex envelope* of the curve on ``[lo_l, hi_l]``
    (:func:`convex_envelope`): first the running maximum of the measured errors (a noisy
    dip at a high level is not trusted over the lower levels it follows; ``g`` is
    non-decreasing), then its lower convex hull, linear between hull vertices.

Solution (:func:`allocate`)
    With every ``g_l`` convex and piecewise linear the problem is a linear program over
    the hull segments of all layers: segment ``k`` of layer ``l`` removes
    ``b_k = n_l · Δs_k`` weights at a marginal loss per weight of
    ``m_k = c_l · Δg_k / (n_l · Δs_k)``, and convexity makes the ``m_k`` of one layer
    non-decreasing. Starting from ``s_l = lo_l``, the segments of all layers are taken in
    ascending ``m_k`` (ties: layer, then segment order, so a layer's segments stay in
    order) until the budget ``B = t · Σ n_l − Σ n_l · lo_l`` is spent; the last one is
    taken in part, so the total is exactly ``t · Σ n_l`` (up to floating-point rounding).
    This greedy fill is the exact optimum of the LP (an exchange argument: any feasible
    allocation that leaves budget on a cheaper segment while using a dearer one is
    improved by moving weight between them) and the Lagrangian solution: at the price
    ``λ = m`` of the last segment taken, every layer sits where its envelope's slope
    crosses ``λ / c_l · n_l``. ``λ`` is returned as the marginal loss per weight.

Counts (:func:`to_counts`)
    A solver may only reach some counts: SparseGPT row by row prunes the same number of
    weights in each of its ``rows`` rows, so its counts are multiples of ``q_l = rows``
    (``q_l = 1`` for a layer-wide budget). Each layer is rounded down to a multiple of
    ``q_l`` (within its bounds), then quanta are added, least marginal loss per weight on
    the envelope first, while one still fits in what is left of the total count. If some
    is still left (every layer that could take it is at its bound), one coarser quantum
    is added where it costs least and the excess is given back, one weight at a time,
    by the layers with ``q_l = 1`` that save the most. The result removes exactly the
    total whenever the layers with ``q_l = 1`` have the room, else the nearest sum below.

Uncertain weights (:func:`uncertain`)
    The weights ``c_l`` are estimates (the calibrated pass measures them on a sample of the
    data), each known to within factors ``[low_l, high_l]``. A layer's estimate is good
    enough when no value in that range would change the allocation much: with ``c_l``
    replaced by ``c_l·f`` for ``f`` each end of the range (the others unchanged), the
    regret of keeping the allocation ``s`` made with ``c_l``,

        R_l(f) = [P(s) + (f − 1)·c_l·g_l(s_l)] − P_f(s_f),

    where ``P(s) = Σ c_j g_j(s_j)`` is the predicted loss and ``s_f``, ``P_f`` the allocation
    and loss under the scaled weights, is at most ``tolerance · P_f(s_f)``. ``R_l`` is
    convex in ``f`` (``P_f(s_f)`` is a minimum of functions linear in ``f``) and zero at
    ``f = 1``, so its ends bound it on the whole range. A layer far from the price at which
    its allocation would move (the small early convolutions of a CNN, kept dense at any
    plausible weight) is settled by a rough estimate; the others are worth measuring better.

Pure numpy; errors are :class:`ValueError` with the offending field named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True, eq=False)
class ErrorCurve:
    """One layer's measured error curve (see module docstring).

    name: the layer's identifier (unique within one allocation).
    levels: ascending sparsities in [0, 1], starting at 0; error: the error at each
        (non-negative, 0 at level 0).
    size: the layer's number of weights ``n_l``.
    weight: ``c_l``, the factor that turns this layer's error into the model's loss.
    lower, upper: the bounds ``lo_l <= s_l <= hi_l``; ``upper`` is also clipped to the
        highest measured level (a curve is never extrapolated).
    """

    name: str
    levels: np.ndarray
    error: np.ndarray
    size: int
    weight: float = 1.0
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        where = f"curve {self.name!r}"
        levels = np.array(self.levels, dtype=np.float64).reshape(-1)
        error = np.array(self.error, dtype=np.float64).reshape(-1)
        if levels.size < 1 or levels.size != error.size:
            raise ValueError(f"{where}: levels ({levels.size}) and error ({error.size}) must be one per level, >= 1")
        if not (np.all(np.isfinite(levels)) and np.all(np.isfinite(error))):
            raise ValueError(f"{where}: levels and error must be finite")
        if levels[0] != 0.0 or error[0] != 0.0:
            raise ValueError(f"{where}: the curve must start at level 0 with error 0, got ({levels[0]}, {error[0]})")
        if np.any(np.diff(levels) <= 0) or levels[-1] > 1.0:
            raise ValueError(f"{where}: levels must be strictly ascending in [0, 1]")
        if np.any(error < 0):
            raise ValueError(f"{where}: error must be >= 0")
        if isinstance(self.size, bool) or int(self.size) != self.size or self.size < 0:
            raise ValueError(f"{where}: size must be a whole number >= 0, got {self.size}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"{where}: weight must be finite and >= 0, got {self.weight}")
        if not 0.0 <= self.lower <= self.upper <= 1.0:
            raise ValueError(f"{where}: bounds must satisfy 0 <= lower <= upper <= 1, got {self.lower}, {self.upper}")
        if self.lower > levels[-1]:
            raise ValueError(f"{where}: lower bound {self.lower} lies above the highest level {levels[-1]}")
        levels.flags.writeable = False
        error.flags.writeable = False
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "error", error)
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "lower", float(self.lower))
        object.__setattr__(self, "upper", float(min(self.upper, levels[-1])))

    def envelope(self) -> tuple[np.ndarray, np.ndarray]:
        """The vertices of ``g`` on ``[lower, upper]`` (:func:`convex_envelope`)."""
        return convex_envelope(self.levels, self.error, lower=self.lower, upper=self.upper)

    def at(self, sparsity: float | np.ndarray) -> np.ndarray:
        """``g(s)``, the envelope between its vertices (clipped to the bounds)."""
        x, y = self.envelope()
        return np.interp(sparsity, x, y)


def monotone(error: np.ndarray) -> np.ndarray:
    """The running maximum of ``error``: the smallest non-decreasing curve above it."""
    error = np.asarray(error, dtype=np.float64)
    return np.maximum.accumulate(error) if error.size else error.copy()


def lower_hull(x: np.ndarray, y: np.ndarray, *, keep_collinear: bool = False) -> np.ndarray:
    """Indices of the lower convex hull of points with strictly ascending ``x``, first and last
    point included; points on a hull segment are dropped unless ``keep_collinear`` (the
    planner of :mod:`onnxprune.sparsity.plan` keeps them as levels a layer may stop at)."""
    hull: list[int] = []
    for j in range(len(x)):
        while len(hull) >= 2:
            a, m = hull[-2], hull[-1]
            # m above the chord a -> j (or on it, collinear points dropped): not a vertex of the lower hull
            left, right = (y[m] - y[a]) * (x[j] - x[a]), (y[j] - y[a]) * (x[m] - x[a])
            if left > right or (left == right and not keep_collinear):
                hull.pop()
            else:
                break
        hull.append(j)
    return np.array(hull, dtype=np.intp)


def convex_envelope(
    levels: np.ndarray, error: np.ndarray, *, lower: float = 0.0, upper: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, g)``: the vertices of the convex, non-decreasing envelope of a curve on
    ``[lower, upper]`` (``upper`` clipped to the last level).

    The running maximum of ``error`` is interpolated linearly at the bounds, the points
    outside them are dropped (so a level beyond the cap cannot bend the envelope inside
    it), and the lower convex hull of what remains is returned.
    """
    levels = np.asarray(levels, dtype=np.float64)
    env = monotone(error)
    upper = min(upper, float(levels[-1]))
    if lower > upper:
        raise ValueError(f"lower bound {lower} lies above the upper bound {upper}")
    inside = (levels > lower) & (levels < upper)
    x = np.concatenate([[lower], levels[inside], [upper]])
    y = np.concatenate([[np.interp(lower, levels, env)], env[inside], [np.interp(upper, levels, env)]])
    if upper == lower:
        return x[:1], y[:1]
    idx = lower_hull(x, y)
    return x[idx], y[idx]


@dataclass(frozen=True)
class CurveAllocation:
    """The result of :func:`allocate`.

    sparsity: layer name -> sparsity; removed, total: ``Σ n_l s_l`` and ``Σ n_l``;
    predicted: ``Σ c_l g_l(s_l)``; price: the marginal loss per weight of the last
    segment taken (the Lagrange multiplier λ; 0 when nothing had to be taken).
    """

    sparsity: dict[str, float]
    removed: float
    total: float
    predicted: float
    price: float

    @property
    def fraction(self) -> float:
        """``removed / total``: the overall sparsity of the allocated layers."""
        return self.removed / self.total if self.total > 0 else 0.0


def _check(curves: Sequence[ErrorCurve]) -> list[ErrorCurve]:
    curves = list(curves)
    if not curves:
        raise ValueError("no curves to allocate")
    if not all(isinstance(c, ErrorCurve) for c in curves):
        raise ValueError("curves must be ErrorCurve objects")
    names = [c.name for c in curves]
    if len(set(names)) != len(names):
        raise ValueError(f"layer {next(n for n in names if names.count(n) > 1)!r} has more than one curve")
    return curves


def allocate(curves: Sequence[ErrorCurve], target: float) -> CurveAllocation:
    """The sparsities minimising ``Σ c_l g_l(s_l)`` with ``Σ n_l s_l = target · Σ n_l``
    exactly and each ``s_l`` within its bounds (module docstring: greedy fill of the
    hull segments by marginal loss per weight, the last one in part).

    Raises :class:`ValueError` when the bounds make the target unreachable.
    """
    curves = _check(curves)
    if not (math.isfinite(target) and 0.0 <= target <= 1.0):
        raise ValueError(f"target must be a fraction in [0, 1], got {target}")
    sizes = np.array([c.size for c in curves], dtype=np.float64)
    total = math.fsum(sizes.tolist())
    if total <= 0:
        raise ValueError("the layers hold no weights")
    wanted = target * total
    least = math.fsum((sizes * [c.lower for c in curves]).tolist())
    most = math.fsum((sizes * [c.upper for c in curves]).tolist())
    tol = 1e-12 * total
    if not least - tol <= wanted <= most + tol:
        raise ValueError(
            f"target {target} is out of reach: the bounds allow overall sparsities from "
            f"{least / total:.6f} to {most / total:.6f}"
        )
    envelopes = [c.envelope() for c in curves]
    segments: list[tuple[float, int, int]] = []  # (marginal loss per weight, layer, segment)
    for i, (c, (x, y)) in enumerate(zip(curves, envelopes, strict=True)):
        if c.size == 0:
            continue
        for k in range(x.size - 1):
            segments.append((c.weight * (y[k + 1] - y[k]) / (c.size * (x[k + 1] - x[k])), i, k))
    segments.sort()
    level = [float(c.lower) for c in curves]
    left, price = wanted - least, 0.0
    for slope, i, k in segments:
        if left <= 0:
            break
        x = envelopes[i][0]
        room = curves[i].size * (x[k + 1] - x[k])
        price = slope
        if room <= left:
            level[i] = float(x[k + 1])
            left -= room
        else:
            level[i] = float(x[k] + left / curves[i].size)
            left = 0.0
    sparsity = {c.name: min(max(s, c.lower), c.upper) for c, s in zip(curves, level, strict=True)}
    removed = math.fsum(c.size * sparsity[c.name] for c in curves)
    predicted = math.fsum(c.weight * float(c.at(sparsity[c.name])) for c in curves)
    return CurveAllocation(sparsity, removed, total, predicted, price)


#: regrets below this fraction of the predicted loss are rounding (the same allocation summed in another order)
_ROUNDING = 1e-9


def uncertain(
    curves: Sequence[ErrorCurve],
    target: float,
    spans: Mapping[str, tuple[float, float]],
    tolerance: float,
) -> list[str]:
    """The layers whose weight must be known better before :func:`allocate` decides (module
    docstring, "Uncertain weights"), in the order of ``curves``.

    ``spans[name] = (low, high)``, ``0 <= low <= 1 <= high``: the factors that bound the
    plausible values of that layer's weight, ``c_l·low`` to ``c_l·high`` (a layer not in
    ``spans`` is known well enough). ``tolerance``: the regret allowed, a fraction of the
    predicted loss (at least :data:`_ROUNDING`).
    """
    curves = _check(curves)
    base = allocate(curves, target)
    out = []
    for i, c in enumerate(curves):
        span = spans.get(c.name)
        if span is None:
            continue
        for factor in span:
            if factor == 1.0:
                continue
            scaled = replace(c, weight=c.weight * factor)
            best = allocate([*curves[:i], scaled, *curves[i + 1 :]], target)
            # the loss, under the scaled weight, of the allocation made with the unscaled one
            kept = base.predicted + (factor - 1.0) * c.weight * float(c.at(base.sparsity[c.name]))
            if kept - best.predicted > max(tolerance, _ROUNDING) * best.predicted:
                out.append(c.name)
                break
    return out


def to_counts(
    curves: Sequence[ErrorCurve],
    sparsity: Mapping[str, float],
    total: int,
    *,
    quanta: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Whole counts per layer near ``sparsity`` whose sum is ``total`` where the quanta allow
    it, else the nearest sum below (module docstring, "Counts").

    ``quanta[name]`` (default 1) is the step of the layer's reachable counts. Counts stay
    within ``[ceil(lower · n / q) · q, floor(upper · n / q) · q]``.
    """
    curves = _check(curves)
    quanta = quanta or {}
    step = {c.name: int(quanta.get(c.name, 1)) for c in curves}
    if any(q < 1 for q in step.values()):
        raise ValueError("quanta must be whole numbers >= 1")
    by_name = {c.name: c for c in curves}
    counts: dict[str, int] = {}
    least: dict[str, int] = {}
    most: dict[str, int] = {}
    for c in curves:
        q = step[c.name]
        least[c.name] = math.ceil(c.lower * c.size / q - 1e-9) * q
        most[c.name] = math.floor(c.upper * c.size / q + 1e-9) * q
        wanted = math.floor(sparsity[c.name] * c.size / q + 1e-9) * q
        counts[c.name] = min(max(wanted, least[c.name]), most[c.name])

    def change(name: str, delta: int) -> float:
        """The loss of moving layer ``name`` by ``delta`` weights."""
        c = by_name[name]
        return c.weight * float(c.at((counts[name] + delta) / c.size) - c.at(counts[name] / c.size))

    left = total - sum(counts.values())
    while left > 0:  # add the cheapest quantum per weight that still fits
        fits = [n for n in counts if step[n] <= left and counts[n] + step[n] <= most[n]]
        if not fits:
            break
        name = min(fits, key=lambda n: change(n, step[n]) / step[n])
        counts[name] += step[name]
        left -= step[name]
    if left > 0:  # overshoot by one coarse quantum, then give the excess back from unit-step layers
        options = []
        for name in counts:
            over = step[name] - left
            if step[name] <= left or counts[name] + step[name] > most[name]:
                continue
            spare = sum(counts[n] - least[n] for n in counts if n != name and step[n] == 1)
            if spare >= over:
                options.append((change(name, step[name]), name, over))
        if options:
            _, name, over = min(options)
            counts[name] += step[name]
            for _ in range(over):  # one weight at a time from the layer that saves the most
                back = [n for n in counts if n != name and step[n] == 1 and counts[n] > least[n]]
                counts[min(back, key=lambda n: change(n, -1))] -= 1
    return counts
