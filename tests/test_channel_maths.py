"""Pure-numpy tests of the channel-pruning maths: importance, allocation and consumer refit."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.errors import OptionError
from onnxprune.im2col import ConvGeometry, patch_blocks
from onnxprune.reconstruct.channels import (
    centred_gram,
    conv_feature_channels,
    expand_keep,
    refit_consumer,
)
from onnxprune.sparsity.channels import (
    GroupBudget,
    error_importance,
    flops_counts,
    global_counts,
    l2_importance,
    local_counts,
    select_units,
)


def _correlated(n, cols, seed=0, mean=0.0):
    """Inputs ``[n, cols]`` with strongly correlated features and a non-zero mean."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((cols, cols)) * (1.0 / (1 + np.arange(cols) / 4))[:, None]
    return rng.standard_normal((n, cols)) @ A + mean


def _stats(X):
    return X.T @ X, X.mean(axis=0), X.shape[0]


# --- l2_importance -------------------------------------------------------------------------------


def test_l2_importance_matches_the_formula_per_member():
    rng = np.random.default_rng(0)
    big = rng.standard_normal((6, 50)) * 100.0
    small = rng.standard_normal((6, 3))
    gamma = rng.standard_normal(6)
    got = l2_importance([big, small, gamma])
    expected = sum((b**2).sum(axis=1) / ((b**2).sum() / 6) for b in (big, small, gamma[:, None]))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # Each member has mean 1 per unit: the 100x larger layer does not drown the others.
    np.testing.assert_allclose(got.mean(), 3.0, rtol=1e-12)


def test_l2_importance_is_invariant_to_member_scale_and_zero_member_adds_nothing():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((8, 5)), rng.standard_normal((8, 7))
    base = l2_importance([a, b])
    np.testing.assert_allclose(l2_importance([a * 1e4, b * 1e-3]), base, rtol=1e-12)
    np.testing.assert_allclose(l2_importance([a, b, np.zeros((8, 4))]), base, rtol=1e-12)


def test_l2_importance_sums_channels_of_a_unit():
    rng = np.random.default_rng(2)
    B = rng.standard_normal((12, 4))
    per_channel = (B**2).sum(axis=1)
    got = l2_importance([B], unit=3)
    np.testing.assert_allclose(got, per_channel.reshape(4, 3).sum(axis=1) / (per_channel.sum() / 4), rtol=1e-12)
    with pytest.raises(ValueError, match="units of 5"):
        l2_importance([B], unit=5)


# --- error_importance ----------------------------------------------------------------------------


def test_error_importance_is_the_output_error_of_removing_each_unit():
    rng = np.random.default_rng(3)
    n, unit = 6, 2
    # Consumer 1: a Conv-like layer whose 6 input channels own 3 features each.
    X1 = _correlated(300, 18, seed=4, mean=0.7)
    W1 = rng.standard_normal((5, 18))
    f1 = conv_feature_channels(6, (3,))
    # Consumer 2: two features of this group (channels 5 and 0, out of order) plus 3 of another group.
    X2 = _correlated(300, 5, seed=5, mean=-1.3)
    W2 = rng.standard_normal((4, 5))
    f2 = np.array([-1, 5, -1, 0, -1])
    got = error_importance(
        [W1, W2],
        [centred_gram(X1.T @ X1, X1.mean(0), 300), centred_gram(X2.T @ X2, X2.mean(0), 300)],
        [f1, f2],
        n=n,
        unit=unit,
    )
    brute = np.zeros(n // unit)
    for u in range(n // unit):
        for X, W, f in ((X1, W1, f1), (X2, W2, f2)):
            gone = (f >= 0) & (f // unit == u)
            Xr = np.where(gone[None, :], X.mean(axis=0)[None, :], X)  # removed, mean compensated
            brute[u] += np.sum((X @ W.T - Xr @ W.T) ** 2)
    np.testing.assert_allclose(got, brute, rtol=1e-9)
    assert np.all(got > 0)


def test_error_importance_ranks_a_constant_channel_last():
    rng = np.random.default_rng(6)
    X = _correlated(200, 4, seed=7)
    X[:, 2] = 3.0  # constant: its removal is fully compensated by the bias
    W = rng.standard_normal((3, 4)) * 10
    score = error_importance([W], [centred_gram(X.T @ X, X.mean(0), 200)], [np.arange(4)], n=4)
    assert score[2] == pytest.approx(0.0, abs=1e-9 * score.max())
    assert select_units(score, 1).tolist() == [2]


# --- refit_consumer ------------------------------------------------------------------------------


def test_refit_beats_plain_removal_and_its_errors_match_the_data():
    X = _correlated(500, 12, seed=8, mean=0.5)
    W = np.random.default_rng(9).standard_normal((7, 12))
    keep = np.ones(12, dtype=bool)
    keep[[1, 4, 5, 10]] = False
    H, mu, rows = _stats(X)
    plain = refit_consumer(W, H, mu, rows, keep, refit=False)
    fit = refit_consumer(W, H, mu, rows, keep)
    Y = X @ W.T
    for result in (plain, fit):
        Yhat = X[:, keep] @ result.weight.T + result.bias_delta
        explicit = np.sum((Y - Yhat) ** 2) / np.sum(Y**2)
        assert result.error_after == pytest.approx(explicit, rel=1e-9)
        np.testing.assert_allclose(Yhat.mean(axis=0), Y.mean(axis=0), atol=1e-9)  # expected output kept
    assert plain.error_after == plain.error_before
    assert fit.error_before == pytest.approx(plain.error_before, rel=1e-12)
    assert fit.error_after < 0.5 * fit.error_before
    np.testing.assert_array_equal(plain.weight, W[:, keep])


def test_refit_without_damping_is_least_squares_with_intercept_on_the_data():
    X = _correlated(400, 10, seed=10, mean=-0.8)
    W = np.random.default_rng(11).standard_normal((5, 10))
    keep = np.array([True, False, True, True, False, True, True, False, True, True])
    fit = refit_consumer(W, *_stats(X), keep, damp=0.0)
    design = np.hstack([X[:, keep], np.ones((400, 1))])
    coef = np.linalg.lstsq(design, X @ W.T, rcond=None)[0]
    np.testing.assert_allclose(fit.weight, coef[:-1].T, atol=1e-6)
    np.testing.assert_allclose(fit.bias_delta, coef[-1], atol=1e-6)


def test_damping_pulls_towards_plain_removal_and_never_does_worse():
    X = _correlated(300, 8, seed=12, mean=0.2)
    W = np.random.default_rng(13).standard_normal((4, 8))
    keep = np.arange(8) % 3 != 0
    errors = [refit_consumer(W, *_stats(X), keep, damp=d).error_after for d in (0.0, 0.1, 10.0, 1e6)]
    before = refit_consumer(W, *_stats(X), keep).error_before
    assert errors == sorted(errors)
    assert errors[-1] <= before
    assert errors[-1] == pytest.approx(before, rel=1e-3)
    # The ridge pulls the kept weights towards their old values, not towards 0.
    np.testing.assert_allclose(refit_consumer(W, *_stats(X), keep, damp=1e6).weight, W[:, keep], rtol=1e-4)
    cov = np.cov(X.T, bias=True)
    lam = 0.1 * np.mean(np.diag(cov)[keep])
    ridge = np.linalg.solve(cov[np.ix_(keep, keep)] + lam * np.eye(keep.sum()), (W @ cov[:, keep] + lam * W[:, keep]).T)
    np.testing.assert_allclose(refit_consumer(W, *_stats(X), keep, damp=0.1).weight, ridge.T, rtol=1e-9)


def test_mean_compensation_is_exact_for_constant_removed_features():
    X = _correlated(200, 6, seed=14)
    X[:, [0, 3]] = [2.5, -1.5]
    W = np.random.default_rng(15).standard_normal((3, 6))
    keep = np.array([False, True, True, False, True, True])
    for refit in (False, True):
        result = refit_consumer(W, *_stats(X), keep, refit=refit)
        np.testing.assert_allclose(result.bias_delta, W[:, [0, 3]] @ [2.5, -1.5], rtol=1e-9)
        np.testing.assert_allclose(X[:, keep] @ result.weight.T + result.bias_delta, X @ W.T, atol=1e-9)
        assert result.error_before == pytest.approx(0.0, abs=1e-12)
        assert result.error_after == pytest.approx(0.0, abs=1e-12)


def test_refit_keeps_constant_kept_features_and_survives_collinear_inputs(caplog):
    X = _correlated(100, 5, seed=16, mean=1.0)
    X = np.hstack([X, X[:, :2] * 2.0, np.full((100, 1), 4.0)])  # collinear copies and a constant feature
    W = np.random.default_rng(17).standard_normal((3, 8))
    keep = np.array([True, True, False, True, False, True, True, True])
    with caplog.at_level("WARNING", logger="onnxprune.reconstruct.channels"):
        fit = refit_consumer(W, *_stats(X), keep, damp=0.0)
    assert "not positive definite" in caplog.text
    assert np.all(np.isfinite(fit.weight))
    assert fit.weight[:, -1].tolist() == W[:, -1].tolist()  # the constant kept feature is left alone
    assert fit.error_after <= fit.error_before
    Yhat = X[:, keep] @ fit.weight.T + fit.bias_delta
    assert np.sum((X @ W.T - Yhat) ** 2) / np.sum((X @ W.T) ** 2) == pytest.approx(fit.error_after, abs=1e-9)


def test_refit_edge_cases_nothing_removed_and_everything_removed():
    X = _correlated(50, 4, seed=18, mean=0.3)
    W = np.random.default_rng(19).standard_normal((2, 4))
    same = refit_consumer(W, *_stats(X), np.ones(4, dtype=bool))
    np.testing.assert_array_equal(same.weight, W)
    np.testing.assert_allclose(same.bias_delta, 0.0, atol=1e-12)
    assert same.error_before == same.error_after == 0.0
    gone = refit_consumer(W, *_stats(X), np.zeros(4, dtype=bool))
    assert gone.weight.shape == (2, 0)
    np.testing.assert_allclose(gone.bias_delta, W @ X.mean(axis=0), rtol=1e-12)
    with pytest.raises(ValueError, match="keep must be a boolean"):
        refit_consumer(W, *_stats(X), np.ones(4, dtype=int))


def test_conv_feature_channels_follow_im2col_order():
    # Feed channel c with the constant c+1: every im2col column then holds its channel's value.
    c_in, kernel = 3, (2, 3)
    x = np.broadcast_to(np.arange(1.0, c_in + 1)[None, :, None, None], (1, c_in, 4, 5)).copy()
    geometry = ConvGeometry(groups=1, kernel=kernel, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    patches = np.concatenate(list(patch_blocks(x, geometry, max_bytes=1 << 20)), axis=1)[0]
    channels = conv_feature_channels(c_in, kernel)
    assert channels.shape == (c_in * 6,)
    np.testing.assert_array_equal(patches, np.broadcast_to(channels + 1.0, patches.shape))


def test_expand_keep_gives_each_channel_its_block_of_features():
    keep = expand_keep(np.array([True, False, True]), 4)
    np.testing.assert_array_equal(keep, [True] * 4 + [False] * 4 + [True] * 4)
    # Gemm after Flatten of [N, C, H, W]: channel c owns features c·H·W … (c+1)·H·W − 1.
    x = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    flat = x.reshape(2, -1)
    np.testing.assert_array_equal(flat[:, expand_keep(np.array([False, True, False]), 4)], x[:, 1].reshape(2, -1))


# --- allocation ----------------------------------------------------------------------------------


def _budget(n, seed=0, **kw):
    return GroupBudget(n_units=n, scores=np.random.default_rng(seed).random(n) + 0.01, **kw)


def _check_rules(budgets, counts):
    for b, r in zip(budgets, counts, strict=True):
        kept = b.n_units - r
        assert 0 <= r <= b.cap
        assert kept >= 1
        assert r == 0 or kept % b.round_to == 0
        if b.fixed:
            assert r == 0


def test_budget_caps_and_allowed_counts():
    b = _budget(10, round_to=4, max_fraction=0.9)
    assert b.cap == 9
    assert b.steps() == [0, 2, 6]  # kept 10, 8, 4
    assert [b.allowed_floor(x) for x in range(11)] == [0, 0, 2, 2, 2, 2, 6, 6, 6, 6, 6]
    assert _budget(1).cap == 0
    assert _budget(5, max_fraction=1.0).cap == 4
    assert _budget(5, fixed=True).steps() == [0]
    assert _budget(3, round_to=4).steps() == [0]
    with pytest.raises(OptionError, match="max_fraction"):
        _budget(4, max_fraction=1.5)
    with pytest.raises(ValueError, match="shape"):
        GroupBudget(n_units=3, scores=np.ones(4))


def test_local_counts_floor_round_up_kept_and_caps():
    budgets = [
        _budget(100),
        _budget(10, round_to=4),
        _budget(8, max_fraction=0.25),
        _budget(6, fixed=True),
        _budget(1),
        _budget(10),
    ]
    assert local_counts(budgets, 0.0) == [0, 0, 0, 0, 0, 0]
    counts = local_counts(budgets, 0.29)
    # 29 of 100 (decimal floor); 2.9 -> 2 asked, kept 8 is a multiple of 4; cap 2 of 8; fixed; single; floor 2.9.
    assert counts == [29, 2, 2, 0, 0, 2]
    _check_rules(budgets, counts)
    counts = local_counts(budgets, 0.99)
    assert counts == [90, 6, 2, 0, 0, 9]
    _check_rules(budgets, counts)
    with pytest.raises(OptionError, match="amount"):
        local_counts(budgets, 1.0)


def test_select_units_lowest_scores_ties_by_index():
    scores = np.array([3.0, 1.0, 2.0, 1.0, 0.5, 1.0])
    assert select_units(scores, 3).tolist() == [1, 3, 4]
    assert select_units(scores, 0).tolist() == []
    assert select_units(np.ones(5), 2).tolist() == [0, 1]
    assert select_units(scores, 6).tolist() == list(range(6))
    with pytest.raises(ValueError):
        select_units(scores, 7)


def test_global_counts_prunes_the_group_with_unimportant_units_more():
    # Group A: a few strong units and many weak ones; group B: all units alike.
    a = GroupBudget(n_units=20, scores=np.r_[np.full(4, 10.0), np.full(16, 0.1)])
    b = GroupBudget(n_units=20, scores=np.linspace(0.9, 1.1, 20))
    counts = global_counts([a, b], 0.4)
    assert sum(counts) == 16
    assert counts == [16, 0]
    # Local pruning would have taken 8 from each.
    assert local_counts([a, b], 0.4) == [8, 8]


def test_global_counts_compares_groups_by_scores_over_their_mean():
    # The same spread on scales 10⁴ apart: normalised, the groups are alike and lose the same.
    spread = np.random.default_rng(21).random(20) + 0.5
    big = GroupBudget(n_units=20, scores=spread * 100.0)
    small = GroupBudget(n_units=20, scores=spread * 0.01)
    assert global_counts([big, small], 0.5) == [10, 10]


def test_global_counts_amount_zero_caps_rounding_and_determinism():
    budgets = [_budget(16, seed=s, round_to=r, max_fraction=f) for s, r, f in [(0, 1, 0.9), (1, 4, 0.9), (2, 1, 0.5)]]
    budgets.append(_budget(8, seed=3, fixed=True))
    assert global_counts(budgets, 0.0) == [0, 0, 0, 0]
    for amount in (0.1, 0.3, 0.5, 0.7, 0.95):
        counts = global_counts(budgets, amount)
        _check_rules(budgets, counts)
        assert sum(counts) <= amount * 48 + 1e-9  # never more than asked (fixed group not counted)
        assert counts == global_counts(budgets, amount)
    # Without rounding and caps in the way the count is exact (0.29 · 100 is 29, not 28).
    assert sum(global_counts([_budget(40, seed=5), _budget(60, seed=6)], 0.29)) == 29
    # Caps stop it: at most 50 % of one group, 90 % of the other.
    capped = [_budget(10, seed=7, max_fraction=0.5), _budget(10, seed=8, max_fraction=0.9)]
    assert global_counts(capped, 0.99) == [5, 9]


def test_global_counts_weighs_units_by_cost():
    # Equal scores; one group's units cost 3x: the budget is a fraction of the total cost.
    cheap = GroupBudget(n_units=10, scores=np.ones(10), cost=1.0)
    dear = GroupBudget(n_units=10, scores=np.ones(10), cost=3.0)
    counts = global_counts([cheap, dear], 0.3)  # budget 12 of 40
    removed = counts[0] * 1.0 + counts[1] * 3.0
    assert removed <= 12 + 1e-9
    assert removed >= 12 - 3  # short by less than the largest chunk
    _check_rules([cheap, dear], counts)


def test_flops_counts_meet_target_prefer_cheap_importance_and_report_unreachable():
    rng = np.random.default_rng(20)
    light = GroupBudget(n_units=16, scores=rng.random(16) + 0.5, cost=1.0)
    heavy = GroupBudget(n_units=16, scores=rng.random(16) + 0.5, cost=8.0, round_to=4)
    total = 16 * 1.0 + 16 * 8.0
    counts, met = flops_counts([light, heavy], 0.6)
    assert met
    remaining = (16 - counts[0]) * 1.0 + (16 - counts[1]) * 8.0
    assert remaining <= 0.6 * total
    assert counts[1] > 0 and counts[1] % 4 == 0  # removing heavy units saves most per unit of importance
    _check_rules([light, heavy], counts)
    assert flops_counts([light, heavy], 1.0) == ([0, 0], True)
    assert flops_counts([light, heavy], 0.6) == (counts, met)
    # other_cost cannot shrink and a fixed group neither: the target cannot be met.
    counts, met = flops_counts([light, GroupBudget(n_units=4, scores=np.ones(4), fixed=True)], 0.2, other_cost=50.0)
    assert not met
    assert counts == [light.cap, 0]
    with pytest.raises(OptionError, match="target"):
        flops_counts([light], 0.0)


def test_loss_at_steps_is_the_convex_envelope_read_at_every_allowed_count():
    from onnxprune.sparsity.channels import loss_at_steps

    b = GroupBudget(n_units=10, scores=np.ones(10), max_fraction=0.9)
    loss = loss_at_steps(b, [2, 4, 6, 9], [0.1, 0.05, 0.6, 0.9])  # a dip at 4 is not trusted
    assert loss.shape == (len(b.steps()),) and loss[0] == 0.0
    assert np.all(np.diff(loss) >= -1e-12) and np.all(np.diff(loss, 2) >= -1e-12)  # non-decreasing, convex
    assert loss[2] <= 0.1 + 1e-12  # under the measured point
    assert np.array_equal(loss_at_steps(b, [], []), np.zeros(len(b.steps())))
    with pytest.raises(ValueError):
        loss_at_steps(b, [4, 2], [0.1, 0.2])


def test_a_measured_loss_decides_the_allocation_not_the_normalised_scores():
    from onnxprune.sparsity.channels import loss_at_steps

    # same scores and cost: by scores both groups would lose the same; by loss the cheap one goes first
    flat, steep = (GroupBudget(n_units=10, scores=np.arange(1.0, 11.0), cost=1.0) for _ in range(2))
    flat = GroupBudget(n_units=10, scores=flat.scores, loss=loss_at_steps(flat, [5, 9], [0.01, 0.02]))
    steep = GroupBudget(n_units=10, scores=steep.scores, loss=loss_at_steps(steep, [5, 9], [1.0, 5.0]))
    assert global_counts([flat, steep], 0.4) == [8, 0]
    counts, met = flops_counts([flat, steep], 0.5)
    assert met and counts[0] == 9 and counts[1] == 1
    with pytest.raises(ValueError):
        GroupBudget(n_units=10, scores=np.ones(10), loss=np.zeros(3))
