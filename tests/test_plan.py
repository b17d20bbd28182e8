"""Pure-numpy tests of per-layer plan allocation from sensitivity curves: no model involved."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from onnxprune.errors import OptionError
from onnxprune.sparsity.plan import Curve, Plan, monotone, plan_for_loss, plan_for_target, tighten

LEVELS = np.array([0.0, 0.3, 0.6, 0.9])


def _curve(name, loss, size=100, cost=1.0, fixed=False, levels=LEVELS):
    return Curve(name, np.asarray(levels, dtype=float), np.asarray(loss, dtype=float), size, cost, fixed)


def _random_curves(rng, count, levels=LEVELS, noise=0.01):
    curves = []
    for i in range(count):
        loss = np.concatenate([[0.0], np.cumsum(rng.uniform(0, 0.1, levels.size - 1))])
        loss[1:] += rng.normal(0, noise, levels.size - 1)
        curves.append(_curve(f"l{i}", loss, int(rng.integers(10, 1000)), float(rng.uniform(0.5, 3.0)), levels=levels))
    return curves


def _weights(curves, budget):
    return np.array([c.size * (c.cost if budget == "cost" else 1.0) for c in curves])


def _enumerate(curves, budget):
    """Every plan of a small instance: (level indices, envelope loss, removed fraction)."""
    env = [monotone(c.loss) for c in curves]
    w = _weights(curves, budget)
    out = []
    for idx in itertools.product(*[range(1 if c.fixed else c.levels.size) for c in curves]):
        loss = sum(env[i][j] for i, j in enumerate(idx))
        removed = sum(w[i] * curves[i].levels[j] for i, j in enumerate(idx))
        out.append((idx, loss, removed / w.sum()))
    return out


def _hull_steps(curves, budget):
    """The largest loss step and budget step (as a fraction) of one lower-hull segment over all layers."""
    w = _weights(curves, budget)
    dg, db = 0.0, 0.0
    for c, wi in zip(curves, w, strict=True):
        x, y = wi * c.levels, monotone(c.loss)
        hull = [0]
        for j in range(1, x.size):
            while len(hull) >= 2 and (y[hull[-1]] - y[hull[-2]]) * (x[j] - x[hull[-2]]) > (y[j] - y[hull[-2]]) * (
                x[hull[-1]] - x[hull[-2]]
            ):
                hull.pop()
            hull.append(j)
        dg = max(dg, float(np.diff(y[hull]).max()))
        db = max(db, float(np.diff(x[hull]).max()) / w.sum())
    return dg, db


def _check_consistent(plan, curves, budget):
    """The plan's numbers follow from its levels and the curves' envelopes."""
    w = _weights(curves, budget)
    assert set(plan.sparsity) == {c.name for c in curves}
    chosen = [int(np.flatnonzero(c.levels == plan.sparsity[c.name])[0]) for c in curves]
    assert plan.predicted_loss == pytest.approx(sum(monotone(c.loss)[j] for c, j in zip(curves, chosen, strict=True)))
    assert plan.removed == pytest.approx(sum(wi * plan.sparsity[c.name] for c, wi in zip(curves, w, strict=True)))
    assert plan.total == pytest.approx(w.sum())


# --- the envelope ---------------------------------------------------------------------------


def test_monotone_is_the_running_max_and_clips_negative_noise():
    loss = np.array([0.0, -0.01, 0.05, 0.03, 0.2, 0.1])
    env = monotone(loss)
    np.testing.assert_array_equal(env, [0.0, 0.0, 0.05, 0.05, 0.2, 0.2])
    assert np.all(np.diff(env) >= 0)
    np.testing.assert_array_equal(monotone(env), env)
    np.testing.assert_array_equal(loss, [0.0, -0.01, 0.05, 0.03, 0.2, 0.1])  # input untouched


def test_noisy_dip_is_not_trusted():
    # Layer a dips at 0.9 (noise); planning sees its envelope 0.3 there, so b (0.2 at 0.9) is pruned instead.
    a = _curve("a", [0.0, 0.01, 0.3, 0.05])
    b = _curve("b", [0.0, 0.02, 0.1, 0.2])
    plan = plan_for_target([a, b], 0.6)
    assert plan.sparsity == {"a": 0.3, "b": 0.9}
    assert plan.predicted_loss == pytest.approx(0.21)


# --- optimality against brute force ---------------------------------------------------------


@pytest.mark.parametrize("budget", ["sparsity", "cost"])
def test_target_plans_are_optimal_or_within_one_hull_step(budget):
    rng = np.random.default_rng(1)
    exact = checked = 0
    for _ in range(60):
        curves = _random_curves(rng, int(rng.integers(3, 5)))
        plans = _enumerate(curves, budget)
        step, _ = _hull_steps(curves, budget)
        for target in rng.uniform(0.05, 0.85, 3):
            plan = plan_for_target(curves, float(target), budget=budget)
            _check_consistent(plan, curves, budget)
            best = min(loss for _, loss, frac in plans if frac >= target)
            assert plan.fraction >= target
            assert best - 1e-12 <= plan.predicted_loss <= best + step + 1e-12
            exact += plan.predicted_loss <= best + 1e-12
            checked += 1
    assert exact >= 0.6 * checked  # the gap filling usually lands on the optimum itself


@pytest.mark.parametrize("budget", ["sparsity", "cost"])
def test_loss_plans_are_optimal_or_within_one_hull_step(budget):
    rng = np.random.default_rng(2)
    exact = checked = 0
    for _ in range(60):
        curves = _random_curves(rng, int(rng.integers(3, 5)))
        plans = _enumerate(curves, budget)
        _, step = _hull_steps(curves, budget)
        top = max(loss for _, loss, _ in plans)
        for max_loss in rng.uniform(0, top, 3):
            plan = plan_for_loss(curves, float(max_loss), budget=budget)
            _check_consistent(plan, curves, budget)
            best = max(frac for _, loss, frac in plans if loss <= max_loss)
            assert plan.predicted_loss <= max_loss
            assert best - step - 1e-12 <= plan.fraction <= best + 1e-12
            exact += plan.fraction >= best - 1e-12
            checked += 1
    assert exact >= 0.6 * checked


def test_uneven_levels_per_layer_are_planned_exactly():
    a = _curve("a", [0.0, 0.1, 0.5], levels=[0.0, 0.5, 0.8], size=50)
    b = _curve("b", [0.0, 0.01, 0.02, 0.04, 0.4], levels=[0.0, 0.2, 0.4, 0.6, 0.8], size=150)
    for target in (0.1, 0.3, 0.5, 0.65):
        plan = plan_for_target([a, b], target)
        best = min(loss for _, loss, frac in _enumerate([a, b], "sparsity") if frac >= target)
        assert plan.predicted_loss == pytest.approx(best)
        assert plan.fraction >= target


# --- the constraints ------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.0, 0.01, 0.2, 0.45, 0.7, 0.89])
def test_target_is_met_on_a_larger_instance(target):
    rng = np.random.default_rng(3)
    levels = np.round(np.arange(0.0, 0.95, 0.1), 2)
    curves = _random_curves(rng, 40, levels=levels)
    plan = plan_for_target(curves, target)
    _check_consistent(plan, curves, "sparsity")
    assert plan.fraction >= target
    if target == 0.0:
        assert plan.removed == 0 and plan.predicted_loss == 0
    # A bigger target never predicts less loss.
    if target < 0.89:
        assert plan_for_target(curves, target + 0.05).predicted_loss >= plan.predicted_loss - 1e-12


def test_max_loss_is_honoured_and_monotone_in_the_budget():
    rng = np.random.default_rng(4)
    curves = _random_curves(rng, 30, levels=np.round(np.arange(0.0, 0.95, 0.1), 2))
    previous = -1.0
    for max_loss in (0.0, 0.01, 0.05, 0.2, 1.0, 3.0):
        plan = plan_for_loss(curves, max_loss)
        _check_consistent(plan, curves, "sparsity")
        assert plan.predicted_loss <= max_loss
        assert plan.fraction >= previous - 0.05  # heuristic fill may wobble by under one step
        previous = plan.fraction
    everything = plan_for_loss(curves, 1e9)
    assert all(level == pytest.approx(0.9) for level in everything.sparsity.values())


def test_zero_loss_levels_are_taken_for_free():
    a = _curve("a", [0.0, 0.0, -0.002, 0.3])  # free up to 0.6 (noise below zero)
    b = _curve("b", [0.0, 0.1, 0.2, 0.3])
    plan = plan_for_loss([a, b], 0.0)
    assert plan.sparsity == {"a": 0.6, "b": 0.0}
    assert plan.predicted_loss == 0.0


def test_fixed_layers_stay_at_zero():
    rng = np.random.default_rng(5)
    curves = _random_curves(rng, 6)
    curves[2] = _curve(curves[2].name, [0.0, 0.0, 0.0, 0.0], size=5000, fixed=True)  # free to prune, but fixed
    total = sum(c.size for c in curves)
    reach = 0.9 * (total - 5000) / total
    for target in (0.2 * reach, 0.5 * reach, reach * (1 - 1e-12)):
        plan = plan_for_target(curves, target)
        assert plan.sparsity[curves[2].name] == 0.0
        assert plan.fraction >= target
        assert plan.total == total  # fixed layers count in the total
    assert plan_for_loss(curves, 10.0).sparsity[curves[2].name] == 0.0
    with pytest.raises(OptionError, match="out of reach"):
        plan_for_target(curves, reach + 0.01)  # the fixed layer holds most of the weights


def test_sensitive_layer_gets_less_sparsity():
    sensitive = _curve("sensitive", [0.0, 0.05, 0.2, 0.6])
    robust = _curve("robust", [0.0, 0.001, 0.004, 0.02])
    for target in (0.2, 0.45, 0.6):
        plan = plan_for_target([sensitive, robust], target)
        assert plan.sparsity["robust"] > plan.sparsity["sensitive"]
    plan = plan_for_loss([sensitive, robust], 0.03)
    assert plan.sparsity == {"sensitive": 0.0, "robust": 0.9}


def test_costs_change_the_choice():
    # Per weight, a is three times less sensitive than b; but removing b's weights saves ten times more.
    a = _curve("a", [0.0, 0.01, 0.03, 0.1], cost=1.0)
    b = _curve("b", [0.0, 0.03, 0.09, 0.3], cost=10.0)
    by_count = plan_for_target([a, b], 0.25, budget="sparsity")
    by_cost = plan_for_target([a, b], 0.25, budget="cost")
    assert by_count.sparsity == {"a": 0.6, "b": 0.0}
    assert by_cost.sparsity == {"a": 0.0, "b": 0.3}
    assert by_count.total == 200 and by_cost.total == 1100
    assert by_cost.removed == pytest.approx(300) and by_cost.predicted_loss == pytest.approx(0.03)


def test_plans_are_deterministic_and_independent_of_layer_order():
    rng = np.random.default_rng(6)
    curves = _random_curves(rng, 12)
    first = plan_for_target(curves, 0.4)
    assert plan_for_target(curves, 0.4) == first
    reordered = plan_for_target(curves[::-1], 0.4)
    assert reordered.sparsity == first.sparsity
    assert reordered.predicted_loss == first.predicted_loss  # exact sums: order-independent
    assert plan_for_loss(curves, 0.3) == plan_for_loss(curves, 0.3)
    assert plan_for_loss(curves[::-1], 0.3).sparsity == plan_for_loss(curves, 0.3).sparsity


# --- tightening and output ------------------------------------------------------------------


def test_tighten_removes_strictly_less():
    rng = np.random.default_rng(7)
    curves = _random_curves(rng, 8)
    plan = plan_for_loss(curves, 0.4, budget="cost")
    tighter = tighten(plan, curves, 0.9)
    assert tighter.budget == "cost"
    assert tighter.removed < plan.removed
    assert tighter.fraction >= 0.9 * plan.fraction
    assert tighter.predicted_loss <= plan.predicted_loss + 1e-12


def test_tighten_steps_below_a_coarse_level_and_refuses_an_empty_plan():
    only = _curve("only", [0.0, 0.2], levels=[0.0, 0.5])
    plan = plan_for_target([only], 0.5)
    assert plan.sparsity == {"only": 0.5}
    tighter = tighten(plan, [only], 0.9)  # 0.45 would round back up to 0.5: the plan goes to 0
    assert tighter.sparsity == {"only": 0.0}
    with pytest.raises(OptionError, match="cannot be tightened"):
        tighten(tighter, [only])
    with pytest.raises(OptionError, match="different layers"):
        tighten(plan, [_curve("other", [0.0, 0.2], levels=[0.0, 0.5])])
    with pytest.raises(OptionError, match="factor"):
        tighten(plan, [only], 1.0)


def test_to_json_round_trips():
    a = _curve("a", [0.0, 0.01, 0.03, 0.1])
    b = _curve("b", [0.0, 0.05, 0.2, 0.6], size=300)
    plan = plan_for_target([a, b], 0.3)
    data = json.loads(json.dumps(plan.to_json()))
    assert data["plan"] == plan.sparsity
    assert data["predicted_loss"] == plan.predicted_loss
    assert data["fraction"] == pytest.approx(plan.removed / 400)
    assert data["budget"] == "sparsity"
    assert isinstance(plan, Plan)


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "levels, loss, size, cost, message",
    [
        ([0.1, 0.5], [0.0, 0.1], 10, 1.0, "start at 0.0"),
        ([0.0, 0.5, 0.3], [0.0, 0.1, 0.2], 10, 1.0, "strictly ascending"),
        ([0.0, 0.5, 1.0], [0.0, 0.1, 0.2], 10, 1.0, "strictly ascending"),
        ([0.0, 0.5], [0.0, 0.1, 0.2], 10, 1.0, "one loss per level"),
        ([0.0, 0.5], [0.1, 0.2], 10, 1.0, "level 0 must be 0"),
        ([0.0, 0.5], [0.0, float("nan")], 10, 1.0, "finite"),
        ([0.0, 0.5], [0.0, 0.1], -1, 1.0, "size"),
        ([0.0, 0.5], [0.0, 0.1], 10, -2.0, "cost"),
    ],
)
def test_bad_curves_raise_one_line_option_errors(levels, loss, size, cost, message):
    with pytest.raises(OptionError, match=message) as info:
        Curve("x", np.array(levels), np.array(loss), size, cost)
    assert "\n" not in str(info.value)


def test_bad_options_raise_one_line_option_errors():
    curves = [_curve("a", [0.0, 0.01, 0.03, 0.1]), _curve("b", [0.0, 0.05, 0.2, 0.6])]
    cases = [
        (lambda: plan_for_target(curves, 1.0), "target"),
        (lambda: plan_for_target(curves, -0.1), "target"),
        (lambda: plan_for_target(curves, float("nan")), "target"),
        (lambda: plan_for_loss(curves, -0.01), "max_loss"),
        (lambda: plan_for_target(curves, 0.5, budget="flops"), "budget"),
        (lambda: plan_for_target([], 0.5), "no sensitivity curves"),
        (lambda: plan_for_target([curves[0], curves[0]], 0.5), "more than one curve"),
        (lambda: plan_for_target(curves, 0.95), "out of reach"),
        (lambda: plan_for_target([_curve("z", [0.0, 0.1, 0.2, 0.3], size=0)], 0.5), "no budget"),
    ]
    for call, message in cases:
        with pytest.raises(OptionError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("target", [0.3, 0.55, 0.6, 0.777])
def test_exact_target_writes_four_significant_digits_and_keeps_the_target(target):
    from onnxprune.sparsity.plan import exact_target

    rng = np.random.default_rng(int(target * 1000))
    levels = np.round(np.linspace(0, 0.9, 10), 2)
    curves = [
        Curve(
            name=f"w{i}", levels=levels, loss=np.cumsum(rng.random(10)) * levels, size=int(rng.integers(1_000, 900_000))
        )
        for i in range(6)
    ]
    plan = exact_target(plan_for_target(curves, target), curves, target)
    for level in plan.sparsity.values():
        assert float(f"{level:.4g}") == level  # no 0.1675309096185687
    assert f"{plan.fraction:.4g}" == f"{target:.4g}"  # the target, to the digits the plan is written with
    json.dumps(plan.to_json())  # removed and total travel too
    assert {"removed", "total"} <= set(plan.to_json())
