"""Pure-numpy tests of error-curve allocation (onnxprune.sparsity.curves): no model involved."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from onnxprune.sparsity.curves import (
    ErrorCurve,
    allocate,
    convex_envelope,
    lower_hull,
    monotone,
    to_counts,
    uncertain,
)

LEVELS = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 0.95])


def _random_curves(rng, count, *, levels=LEVELS, noise=0.0, cap=1.0):
    curves = []
    for i in range(count):
        error = np.concatenate([[0.0], np.cumsum(rng.uniform(0.0, 0.2, levels.size - 1) ** 2)])
        error[1:] = np.abs(error[1:] + rng.normal(0.0, noise, levels.size - 1))
        size = int(rng.integers(10, 2000))
        curves.append(ErrorCurve(f"l{i}", levels, error, size, weight=float(rng.uniform(0.1, 5.0)), upper=cap))
    return curves


def _cost(curves, sparsity):
    return math.fsum(c.weight * float(c.at(sparsity[c.name])) for c in curves)


def _removed(curves, sparsity):
    return math.fsum(c.size * sparsity[c.name] for c in curves)


# --- envelopes --------------------------------------------------------------------------


def test_envelope_is_monotone_convex_and_below_the_running_max():
    rng = np.random.default_rng(0)
    for _ in range(200):
        error = np.concatenate([[0.0], np.abs(rng.normal(0, 1, LEVELS.size - 1))])  # dips and bumps
        x, y = convex_envelope(LEVELS, error)
        assert x[0] == 0.0 and x[-1] == LEVELS[-1]
        assert np.all(np.diff(x) > 0)
        assert np.all(np.diff(y) >= 0), "non-decreasing"
        slopes = np.diff(y) / np.diff(x)
        assert np.all(np.diff(slopes) >= -1e-12), "convex"
        run = monotone(error)
        assert np.all(np.interp(LEVELS, x, y) <= run + 1e-12), "below the running max at every level"
        for xi, yi in zip(x, y, strict=True):  # each vertex is a measured point of the running max
            assert yi == pytest.approx(run[np.searchsorted(LEVELS, xi)])


def test_a_dip_is_not_trusted_and_a_concave_bump_is_bridged():
    levels = np.array([0.0, 0.25, 0.5, 0.75])
    # the dip at 0.5 is lifted to the running max 0.4; the hull then bridges 0 -> 0.75
    x, y = convex_envelope(levels, np.array([0.0, 0.4, 0.1, 0.5]))
    assert list(x) == [0.0, 0.75]
    assert list(y) == pytest.approx([0.0, 0.5])
    x, y = convex_envelope(levels, np.array([0.0, 0.1, 0.05, 0.5]))  # convex after lifting: kept
    assert list(x) == [0.0, 0.5, 0.75]
    assert list(y) == pytest.approx([0.0, 0.1, 0.5])
    x, y = convex_envelope(levels, np.array([0.0, 0.3, 0.31, 0.32]))  # concave: the chord 0 -> 0.75
    assert list(x) == [0.0, 0.75]
    assert list(y) == pytest.approx([0.0, 0.32])


def test_envelope_bounds_interpolate_and_ignore_points_outside():
    levels = np.array([0.0, 0.5, 0.9, 0.99])
    error = np.array([0.0, 0.1, 0.2, 0.0001])  # a bogus value beyond the cap must not pull g down
    x, y = convex_envelope(levels, error, lower=0.25, upper=0.9)
    assert x[0] == 0.25 and x[-1] == 0.9
    assert y[0] == pytest.approx(0.05)
    assert y[-1] == pytest.approx(0.2)


def test_lower_hull_drops_collinear_points():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    assert list(lower_hull(x, np.array([0.0, 1.0, 2.0, 4.0]))) == [0, 2, 3]


# --- allocation -------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.0, 0.1, 0.5, 0.7, 0.9, 0.95])
def test_total_is_exactly_the_target_and_bounds_hold(target):
    rng = np.random.default_rng(1)
    for _ in range(20):
        curves = _random_curves(rng, int(rng.integers(1, 12)), noise=0.02, cap=0.95)
        result = allocate(curves, target)
        total = sum(c.size for c in curves)
        assert result.removed == pytest.approx(target * total, rel=1e-12, abs=1e-9)
        assert _removed(curves, result.sparsity) == pytest.approx(target * total, rel=1e-12, abs=1e-9)
        assert result.fraction == pytest.approx(target, abs=1e-12)
        for c in curves:
            assert c.lower - 1e-15 <= result.sparsity[c.name] <= c.upper + 1e-15
        assert result.predicted == pytest.approx(_cost(curves, result.sparsity))


def test_per_layer_bounds_are_respected_and_a_fixed_layer_stays():
    rng = np.random.default_rng(2)
    base = _random_curves(rng, 4)
    curves = [
        ErrorCurve(base[0].name, base[0].levels, base[0].error, base[0].size, upper=0.3),
        ErrorCurve(base[1].name, base[1].levels, base[1].error, base[1].size, lower=0.6),
        ErrorCurve(base[2].name, base[2].levels, base[2].error, base[2].size, lower=0.5, upper=0.5),
        base[3],
    ]
    result = allocate(curves, 0.5)
    assert result.sparsity[base[0].name] <= 0.3
    assert result.sparsity[base[1].name] >= 0.6
    assert result.sparsity[base[2].name] == 0.5
    assert result.removed == pytest.approx(0.5 * sum(c.size for c in curves))


def test_unreachable_targets_are_refused():
    curves = [ErrorCurve("a", LEVELS, LEVELS**2, 100, upper=0.5), ErrorCurve("b", LEVELS, LEVELS**2, 100, upper=0.9)]
    with pytest.raises(ValueError, match="out of reach"):
        allocate(curves, 0.71)
    allocate(curves, 0.7)
    with pytest.raises(ValueError, match="out of reach"):
        allocate([ErrorCurve("a", LEVELS, LEVELS, 10, lower=0.4)], 0.3)
    with pytest.raises(ValueError, match="target"):
        allocate(curves, 1.5)


def _vertex_optimum(curves, target):
    """The LP optimum by enumeration: some optimum has every layer but one on an envelope
    vertex (a basic solution of the segment LP); the free layer takes the rest of the budget."""
    envs = [c.envelope() for c in curves]
    wanted = target * sum(c.size for c in curves)
    best = math.inf
    for free in range(len(curves)):
        others = [i for i in range(len(curves)) if i != free]
        for pick in itertools.product(*[range(envs[i][0].size) for i in others]):
            s = {curves[i].name: float(envs[i][0][j]) for i, j in zip(others, pick, strict=True)}
            rest = wanted - _removed([curves[i] for i in others], s)
            level = rest / curves[free].size
            x = envs[free][0]
            if not x[0] - 1e-12 <= level <= x[-1] + 1e-12:
                continue
            s[curves[free].name] = min(max(level, x[0]), x[-1])
            best = min(best, _cost(curves, s))
    return best


def test_optimal_against_brute_force_on_small_cases():
    rng = np.random.default_rng(3)
    for _ in range(60):
        curves = _random_curves(rng, int(rng.integers(2, 5)), noise=0.05, cap=float(rng.choice([0.8, 0.95])))
        most = sum(c.size * c.upper for c in curves) / sum(c.size for c in curves)
        for target in (0.25, 0.5, min(0.7, most)):
            result = allocate(curves, target)
            assert result.predicted == pytest.approx(_vertex_optimum(curves, target), rel=1e-9, abs=1e-12)


def test_no_grid_allocation_beats_it():
    """A fine grid of feasible allocations (two layers on a 1/size grid, the third filling
    the rest) never costs less than the greedy optimum."""
    rng = np.random.default_rng(4)
    for _ in range(10):
        curves = _random_curves(rng, 3, noise=0.03)
        target = float(rng.uniform(0.2, 0.8))
        result = allocate(curves, target)
        wanted = target * sum(c.size for c in curves)
        a, b, c = curves
        for sa in np.linspace(0, a.upper, 41):
            for sb in np.linspace(0, b.upper, 41):
                sc = (wanted - a.size * sa - b.size * sb) / c.size
                if 0 <= sc <= c.upper:
                    grid = {a.name: sa, b.name: sb, c.name: sc}
                    assert _cost(curves, grid) >= result.predicted - 1e-12


def test_kkt_layers_sit_where_their_marginal_loss_crosses_the_price():
    rng = np.random.default_rng(5)
    curves = _random_curves(rng, 8, cap=0.95)
    result = allocate(curves, 0.6)
    for c in curves:
        x, y = c.envelope()
        s = result.sparsity[c.name]
        marginal = c.weight * np.diff(y) / (c.size * np.diff(x))
        left = marginal[np.searchsorted(x, s, side="left") - 1] if s > x[0] + 1e-12 else -math.inf
        right = marginal[np.searchsorted(x, s, side="right") - 1] if s < x[-1] - 1e-12 else math.inf
        assert left <= result.price + 1e-12
        assert right >= result.price - 1e-12


def test_free_and_insensitive_layers_go_first():
    steep = ErrorCurve("steep", LEVELS, LEVELS**2 * 10, 100)
    flat = ErrorCurve("flat", LEVELS, LEVELS**2 * 0.1, 100)
    free = ErrorCurve("free", LEVELS, LEVELS**2 * 10, 100, weight=0.0)
    result = allocate([steep, flat, free], 0.3)
    assert result.sparsity["free"] == pytest.approx(0.9)  # its whole budget costs nothing
    assert result.sparsity["steep"] == 0.0
    result = allocate([steep, flat], 0.5)
    assert result.sparsity["flat"] > result.sparsity["steep"]


def test_equal_curves_share_the_target():
    curves = [ErrorCurve(f"l{i}", LEVELS, LEVELS**2, 100) for i in range(3)]
    result = allocate(curves, 0.4)
    assert all(v == pytest.approx(0.4) for v in result.sparsity.values())


def test_curve_validation():
    with pytest.raises(ValueError, match="level 0"):
        ErrorCurve("a", [0.1, 0.2], [0.0, 0.1], 10)
    with pytest.raises(ValueError, match="ascending"):
        ErrorCurve("a", [0.0, 0.5, 0.4], [0.0, 0.1, 0.2], 10)
    with pytest.raises(ValueError, match=">= 0"):
        ErrorCurve("a", [0.0, 0.5], [0.0, -0.1], 10)
    with pytest.raises(ValueError, match="bounds"):
        ErrorCurve("a", [0.0, 0.5], [0.0, 0.1], 10, lower=0.6, upper=0.5)
    with pytest.raises(ValueError, match="more than one curve"):
        allocate([ErrorCurve("a", [0.0, 0.5], [0.0, 0.1], 10)] * 2, 0.2)
    assert ErrorCurve("a", [0.0, 0.5], [0.0, 0.1], 10, upper=0.9).upper == 0.5  # never extrapolated


# --- whole counts -----------------------------------------------------------------------


def test_counts_hit_the_total_on_the_quanta_and_within_bounds():
    rng = np.random.default_rng(6)
    for _ in range(50):
        curves = _random_curves(rng, int(rng.integers(2, 8)), cap=0.95)
        quanta = {c.name: int(rng.choice([1, 4, 16])) for c in curves}
        quanta[curves[0].name] = 1  # one layer can take any count
        target = float(rng.uniform(0.1, 0.8))
        total = math.floor(target * sum(c.size for c in curves))
        counts = to_counts(curves, allocate(curves, target).sparsity, total, quanta=quanta)
        assert sum(counts.values()) == total
        for c in curves:
            assert counts[c.name] % quanta[c.name] == 0
            assert 0 <= counts[c.name] <= math.floor(c.upper * c.size)


def test_counts_never_exceed_the_total_when_quanta_are_coarse():
    curves = [ErrorCurve(f"l{i}", LEVELS, LEVELS**2, 64) for i in range(3)]
    counts = to_counts(curves, allocate(curves, 0.5).sparsity, 100, quanta=dict.fromkeys(("l0", "l1", "l2"), 8))
    assert sum(counts.values()) == 96  # 100 is not a multiple of 8: the nearest below


def test_counts_trade_a_coarse_quantum_when_the_unit_layer_is_at_its_cap():
    fine = ErrorCurve("fine", LEVELS, LEVELS**2, 100, upper=0.5)  # q = 1, capped at 50
    coarse = ErrorCurve("coarse", LEVELS, LEVELS**2, 160)  # q = 16
    counts = to_counts([fine, coarse], {"fine": 0.5, "coarse": 0.5}, 138, quanta={"coarse": 16})
    assert counts == {"fine": 42, "coarse": 96}  # 50 + 80 = 130 leaves 8 < 16: 96 for coarse, 8 back from fine


def test_counts_stay_close_to_the_continuous_optimum():
    rng = np.random.default_rng(7)
    for _ in range(20):
        curves = _random_curves(rng, 6, cap=0.95)
        quanta = {c.name: int(rng.choice([1, 8])) for c in curves}
        result = allocate(curves, 0.6)
        counts = to_counts(curves, result.sparsity, math.floor(0.6 * sum(c.size for c in curves)), quanta=quanta)
        for c in curves:
            # rounding down leaves less than Σ q_l, and the whole of it may go to one layer
            assert abs(counts[c.name] - result.sparsity[c.name] * c.size) <= sum(quanta.values())


# --- uncertain weights ------------------------------------------------------------------


def _regret(curves, target, i, factor):
    """Brute force: the loss under c_i·factor of the allocation made with c_i, less the best one."""
    base = allocate(curves, target)
    scaled = [replace(c, weight=c.weight * factor) if j == i else c for j, c in enumerate(curves)]
    best = allocate(scaled, target).predicted
    return _cost(scaled, base.sparsity) - best, best


def test_uncertain_flags_exactly_the_layers_whose_span_holds_a_regret_above_the_tolerance():
    """Against the regret computed by brute force on a grid of factors inside each span: a layer is
    flagged iff somewhere in its span the allocation made now loses more than the tolerance (the
    regret is convex in the factor, so its span's ends decide)."""
    rng = np.random.default_rng(3)
    flagged_seen = kept_seen = 0
    for trial in range(25):
        curves = _random_curves(rng, 6)
        target = float(rng.uniform(0.3, 0.7))
        spans = {c.name: (float(rng.uniform(0.2, 1.0)), float(rng.uniform(1.0, 3.0))) for c in curves}
        tolerance = float(rng.choice([0.0, 0.001, 0.01, 0.05]))
        got = set(uncertain(curves, target, spans, tolerance))
        for i, c in enumerate(curves):
            low, high = spans[c.name]
            worst = max(
                regret - max(tolerance, 1e-9) * best
                for regret, best in (_regret(curves, target, i, f) for f in np.linspace(low, high, 21))
            )
            assert (c.name in got) == (worst > 0), (trial, c.name, worst)
            flagged_seen += c.name in got
            kept_seen += c.name not in got
    assert flagged_seen > 10 and kept_seen > 10  # both outcomes are exercised


def test_a_small_layer_far_from_the_price_is_settled_by_a_rough_weight():
    """A small, sensitive layer stays at its floor for any weight within a factor of 3 of its own
    (the early convolution of a CNN); a large layer at the margin is not known well enough."""
    levels = np.array([0.0, 0.25, 0.5, 0.7, 0.9])
    error = np.array([0.0, 0.01, 0.04, 0.1, 0.3])
    curves = [
        ErrorCurve("small", levels, error, 300, weight=1000.0),
        ErrorCurve("big_a", levels, error, 50_000, weight=1.0),
        ErrorCurve("big_b", levels, error * 1.1, 50_000, weight=1.0),
    ]
    spans = {c.name: (1 / 3, 3.0) for c in curves}
    assert allocate(curves, 0.5).sparsity["small"] == 0.0
    assert uncertain(curves, 0.5, spans, 0.001) == ["big_a", "big_b"]
    assert uncertain(curves, 0.5, {"small": (1 / 3, 3.0)}, 0.001) == []  # the others not in the spans: known
    assert uncertain(curves, 0.5, {"big_a": (1.0, 1.0)}, 0.0) == []  # no span: nothing to learn
