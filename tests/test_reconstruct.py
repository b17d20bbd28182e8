"""Pure-numpy tests of the reconstruction maths (SparseGPT/OBS, refit, Wanda, bias, error)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from onnxprune.reconstruct import (
    bias_delta,
    dampen,
    reconstruction_error,
    refit,
    row_mask,
    sparsegpt,
    wanda_scores,
)
from onnxprune.reconstruct.hessian import damped_inverse_factor, inverse_factor
from onnxprune.reconstruct.layer import OutputErrors, reference_terms
from onnxprune.sparsity import count_for_amount


def _inputs(n, cols, seed=0, outliers=0, mean=0.0):
    """Correlated inputs ``Z·A`` with a decaying spectrum (as real activations have), optionally
    a few large-magnitude features and a non-zero mean. Shape ``[n, cols]``."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((cols, cols)) * (1.0 / (1 + np.arange(cols) / 8))[:, None]
    X = rng.standard_normal((n, cols)) @ A + mean
    if outliers:
        X[:, rng.choice(cols, outliers, replace=False)] *= 15
    return X


def _weights(rows, cols, seed=1):
    return np.random.default_rng(seed).standard_normal((rows, cols))


def _explicit_error(W, W_new, X):
    return np.sum((X @ (W - W_new).T) ** 2) / np.sum((X @ W.T) ** 2)


# --- OBS / SparseGPT ---------------------------------------------------------------------------


def test_sparsegpt_one_weight_at_first_column_is_the_obs_closed_form():
    X = _inputs(400, 8, seed=3)
    H = X.T @ X
    w = _weights(1, 8)[0]
    w[0] = 1e-3  # the least salient weight
    W_new, mask = sparsegpt(w[None, :], H, sparsity=0.125, percdamp=0.0, blocksize=128)
    G = np.linalg.inv(H)
    delta = -(w[0] / G[0, 0]) * G[:, 0]
    np.testing.assert_array_equal(mask[0], np.arange(8) == 0)
    np.testing.assert_allclose(W_new[0], w + delta, rtol=1e-9, atol=1e-12)
    assert W_new[0, 0] == 0.0
    err = (w - W_new[0]) @ H @ (w - W_new[0])
    np.testing.assert_allclose(err, w[0] ** 2 / G[0, 0], rtol=1e-9)


def test_sparsegpt_one_weight_later_column_compensates_with_the_later_columns_only():
    # Sequential OBS: columns left of q are frozen, so the update is OBS on H[q:, q:].
    X = _inputs(400, 8, seed=4)
    H = X.T @ X
    w = _weights(1, 8, seed=5)[0]
    q = 5
    w[q] = 1e-4
    W_new, mask = sparsegpt(w[None, :], H, sparsity=0.125, percdamp=0.0)
    Gs = np.linalg.inv(H[q:, q:])
    expected = w.copy()
    expected[q:] -= (w[q] / Gs[0, 0]) * Gs[:, 0]
    assert np.flatnonzero(mask[0]).tolist() == [q]
    np.testing.assert_allclose(W_new[0], expected, rtol=1e-9, atol=1e-12)


def test_sparsegpt_lazy_block_update_does_not_change_an_nm_result():
    # N:M decides each group on its fully updated weights, so the blocksize must not matter.
    X = _inputs(600, 32, seed=6)
    H = X.T @ X
    W = _weights(6, 32)
    full, mask_full = sparsegpt(W, H, nm=(2, 4), blocksize=128)
    small, mask_small = sparsegpt(W, H, nm=(2, 4), blocksize=4)
    odd, mask_odd = sparsegpt(W, H, nm=(2, 4), blocksize=7)  # rounded up to 8
    np.testing.assert_array_equal(mask_full, mask_small)
    np.testing.assert_array_equal(mask_full, mask_odd)
    np.testing.assert_allclose(small, full, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(odd, full, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("nm", [None, (2, 4), (1, 3)])
def test_sparsegpt_sub_blocks_are_the_column_by_column_elimination(monkeypatch, nm):
    # the sub-blocks only regroup the same corrections: any SUB_BLOCK gives the same masks and
    # weights to rounding, also when an N:M group (of 3) would straddle a sub-block of 16
    module = importlib.import_module("onnxprune.reconstruct.sparsegpt")
    X = _inputs(800, 72, seed=9)
    H = X.T @ X
    W = _weights(5, 72)
    amount = None if nm else 0.6
    results = []
    for sub in (1, 16, 128):
        monkeypatch.setattr(module, "SUB_BLOCK", sub)
        results.append(sparsegpt(W, H, sparsity=amount, nm=nm, blocksize=48))
    for new, mask in results[1:]:
        np.testing.assert_array_equal(mask, results[0][1])
        np.testing.assert_allclose(new, results[0][0], rtol=1e-9, atol=1e-12)


def test_sparsegpt_is_invariant_to_the_scale_of_h():
    X = _inputs(500, 24, seed=7)
    H = X.T @ X
    W = _weights(5, 24)
    a, mask_a = sparsegpt(W, H, sparsity=0.5, blocksize=8)
    b, mask_b = sparsegpt(W, H * 1e-6, sparsity=0.5, blocksize=8)
    np.testing.assert_array_equal(mask_a, mask_b)
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.29])
@pytest.mark.parametrize("blocksize", [5, 128])
def test_sparsegpt_prunes_exact_counts_per_row_and_already_zero_weights_first(sparsity, blocksize):
    X = _inputs(300, 20, seed=8)
    H = X.T @ X
    W = _weights(7, 20)
    W[0, [3, 11]] = 0.0
    W[4, 19] = 0.0
    W[6, :2] = 0.0
    zero = W == 0
    W_new, mask = sparsegpt(W, H, sparsity=sparsity, blocksize=blocksize)
    k = count_for_amount(20, sparsity)
    assert mask.sum(axis=1).tolist() == [k] * 7
    assert np.all(mask[zero])
    assert np.all(W_new[mask] == 0.0)
    assert W_new.dtype == np.float64 and np.all(np.isfinite(W_new))


def test_sparsegpt_keeps_all_existing_zeros_even_beyond_the_budget():
    X = _inputs(300, 10, seed=9)
    H = X.T @ X
    W = _weights(2, 10)
    W[1, :6] = 0.0  # 6 zeros, budget 5
    W_new, mask = sparsegpt(W, H, sparsity=0.5)
    assert mask.sum(axis=1).tolist() == [5, 6]
    assert np.all(W_new[1, :6] == 0.0)


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (3, 8)])
def test_nm_pattern_is_exact(nm):
    n, m = nm
    X = _inputs(400, 32, seed=10)
    H = X.T @ X
    W = _weights(6, 32)
    W_new, mask = sparsegpt(W, H, nm=nm, blocksize=16)
    groups = mask.reshape(6, -1, m)
    assert np.all(groups.sum(axis=2) == m - n)  # N kept of every M
    assert np.all(W_new[mask] == 0.0)
    assert np.all((W_new.reshape(6, -1, m) != 0).sum(axis=2) <= n)
    scores_mask = row_mask(np.abs(W), nm=nm)
    assert np.all(scores_mask.reshape(6, -1, m).sum(axis=2) == m - n)
    # the pruned entries of each group are its m - n smallest scores
    kept_min = np.where(scores_mask, np.inf, np.abs(W)).reshape(6, -1, m).min(axis=2)
    pruned_max = np.where(scores_mask, np.abs(W), -np.inf).reshape(6, -1, m).max(axis=2)
    assert np.all(pruned_max <= kept_min)


def test_nm_needs_a_multiple_of_m_and_one_amount():
    H = np.eye(10)
    W = _weights(2, 10)
    with pytest.raises(ValueError, match="multiple"):
        sparsegpt(W, H, nm=(2, 4))
    with pytest.raises(ValueError, match="multiple"):
        row_mask(np.abs(W), nm=(2, 4))
    with pytest.raises(ValueError, match="exactly one"):
        sparsegpt(W, H, sparsity=0.5, nm=(1, 2))
    with pytest.raises(ValueError, match="exactly one"):
        row_mask(np.abs(W))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        row_mask(np.abs(W), sparsity=1.0)
    with pytest.raises(ValueError, match="shape"):
        sparsegpt(W, np.eye(9), sparsity=0.5)


# --- masks and Wanda -----------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.29, 0.5, 0.9])
def test_row_mask_exact_counts_smallest_first_ties_by_lower_column(sparsity):
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 4, size=(9, 100)).astype(np.float64)  # many ties
    scores[2] = 1.0  # a row of nothing but ties
    mask = row_mask(scores, sparsity=sparsity)
    k = count_for_amount(100, sparsity)
    assert mask.sum(axis=1).tolist() == [k] * 9
    for r in range(9):
        expected = np.zeros(100, dtype=bool)
        expected[np.argsort(scores[r], kind="stable")[:k]] = True
        np.testing.assert_array_equal(mask[r], expected)


def test_row_mask_takes_zero_scores_first():
    W = _weights(4, 10)
    W[1, [2, 7]] = 0.0
    mask = row_mask(np.abs(W), sparsity=0.3)
    assert mask[1, 2] and mask[1, 7]
    assert mask.sum(axis=1).tolist() == [3] * 4


def test_wanda_scores_and_dead_features():
    W = _weights(3, 5)
    sqnorm = np.array([4.0, 0.0, 1.0, 9.0, 0.25])
    np.testing.assert_allclose(wanda_scores(W, sqnorm), np.abs(W) * np.array([2.0, 0.0, 1.0, 3.0, 0.5]))
    with pytest.raises(ValueError):
        wanda_scores(W, sqnorm[:4])


# --- refit ---------------------------------------------------------------------------------------


def test_refit_equals_lstsq_on_explicit_x_with_varied_masks_and_chunks():
    X = _inputs(200, 16, seed=12)
    H = X.T @ X
    W = _weights(9, 16)
    rng = np.random.default_rng(13)
    mask = rng.random((9, 16)) < rng.uniform(0.2, 0.8, size=(9, 1))  # different kept counts per row
    mask[0] = False  # nothing pruned: unchanged
    expected = np.zeros_like(W)
    for r in range(9):
        keep = ~mask[r]
        expected[r, keep] = np.linalg.lstsq(X[:, keep], X @ W[r], rcond=None)[0]
    for batch in (256 * 1024 * 1024, 1):  # one batch, or one row per batch
        W_new = refit(W, H, mask, percdamp=0.0, max_batch_bytes=batch)
        np.testing.assert_allclose(W_new, expected, rtol=1e-7, atol=1e-9)
        assert np.all(W_new[mask] == 0.0)
    np.testing.assert_allclose(W_new[0], W[0], rtol=1e-9)


def test_refit_below_half_by_the_complement_form_solves_the_damped_normal_equations(monkeypatch):
    """Rows pruning fewer live weights than they keep go through ``A⁻¹`` (the complement form);
    each row must still be the solution of its own damped system, dead columns left alone."""
    X = _inputs(400, 20, seed=31)
    X[:, [4, 11]] = 0.0  # dead features
    H = X.T @ X
    W = _weights(12, 20)
    rng = np.random.default_rng(32)
    mask = rng.random((12, 20)) < rng.uniform(0.05, 0.8, size=(12, 1))  # both forms among the rows
    mask[0] = False
    mask[1, [4, 11]] = True  # only dead columns pruned: nothing to solve against
    refit_module = importlib.import_module("onnxprune.reconstruct.refit")
    used = []
    real = refit_module._solve_complement
    monkeypatch.setattr(refit_module, "_solve_complement", lambda *a: used.append(len(a[2])) or real(*a))
    percdamp = 0.01
    live = np.diagonal(H) != 0
    lam = percdamp * np.diagonal(H)[live].mean()
    expected = np.where(mask, 0.0, W)
    for r in range(12):
        keep = ~mask[r] & live
        A = H[np.ix_(keep, keep)] + lam * np.eye(keep.sum())
        expected[r, keep] = np.linalg.solve(A, H[keep] @ W[r] + lam * W[r, keep])
    for batch in (256 * 1024 * 1024, 1):
        W_new = refit(W, H, mask, percdamp=percdamp, max_batch_bytes=batch)
        np.testing.assert_allclose(W_new, expected, rtol=1e-9, atol=1e-11)
        assert np.all(W_new[mask] == 0.0)
        np.testing.assert_array_equal(W_new[:, [4, 11]][~mask[:, [4, 11]]], W[:, [4, 11]][~mask[:, [4, 11]]])
    pruned_live = (mask & live).sum(axis=1)
    assert sum(used) == 2 * np.count_nonzero((pruned_live > 0) & (pruned_live < (~mask & live).sum(axis=1)))
    used.clear()
    refit(W, H, mask, percdamp=0.0)  # no ridge: H may be singular, so every row is solved directly
    assert used == []


def test_refit_in_threads_gives_the_same_bits(monkeypatch):
    X = _inputs(300, 24, seed=15)
    H = X.T @ X
    W = _weights(40, 24)
    mask = np.random.default_rng(16).random((40, 24)) < 0.5
    refit_module = importlib.import_module("onnxprune.reconstruct.refit")  # the package's `refit` is the function
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(refit_module, "solver_threads", lambda threads=threads: threads)
        results.append(refit(W, H, mask, percdamp=0.01, max_batch_bytes=20_000))  # several rows per batch
    assert np.array_equal(results[0], results[1])


def test_refit_is_optimal_for_its_mask():
    X = _inputs(300, 24, seed=14)
    H = X.T @ X
    W = _weights(6, 24)
    mask = row_mask(np.abs(W), sparsity=0.5)
    W_new = refit(W, H, mask, percdamp=0.0)
    best = reconstruction_error(W, W_new, H)
    assert best < reconstruction_error(W, np.where(mask, 0.0, W), H)
    rng = np.random.default_rng(15)
    for scale in (1e-1, 1e-3):
        for _ in range(50):
            other = np.where(mask, 0.0, W_new + scale * rng.standard_normal(W.shape))
            assert reconstruction_error(W, other, H) >= best


def test_refit_ridge_pulls_towards_the_original_weights():
    X = _inputs(300, 12, seed=16)
    H = X.T @ X
    W = _weights(3, 12)
    mask = row_mask(np.abs(W), sparsity=0.5)
    exact = refit(W, H, mask, percdamp=0.0)
    damped = refit(W, H, mask, percdamp=1e6)
    np.testing.assert_allclose(damped, np.where(mask, 0.0, W), rtol=1e-4, atol=1e-4)
    assert reconstruction_error(W, exact, H) < reconstruction_error(W, refit(W, H, mask, percdamp=0.1), H)


# --- quality on realistic layers ---------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_reconstruction_beats_magnitude_on_realistic_layers(sparsity):
    X = _inputs(2048, 96, seed=17, outliers=4)
    H = X.T @ X
    W = _weights(48, 96, seed=18)
    magnitude = row_mask(np.abs(W), sparsity=sparsity)
    e_mag = reconstruction_error(W, np.where(magnitude, 0.0, W), H)
    e_sgpt = reconstruction_error(W, sparsegpt(W, H, sparsity=sparsity)[0], H)
    e_refit = reconstruction_error(W, refit(W, H, magnitude), H)
    wanda = row_mask(wanda_scores(W, (X**2).sum(axis=0)), sparsity=sparsity)
    e_wanda = reconstruction_error(W, np.where(wanda, 0.0, W), H)
    assert e_sgpt <= 0.7 * e_mag
    assert e_refit <= 0.7 * e_mag
    assert e_wanda <= e_mag


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_refit_beats_magnitude_without_outliers(sparsity):
    X = _inputs(2048, 96, seed=19)
    H = X.T @ X
    W = _weights(48, 96, seed=20)
    magnitude = row_mask(np.abs(W), sparsity=sparsity)
    e_mag = reconstruction_error(W, np.where(magnitude, 0.0, W), H)
    assert reconstruction_error(W, refit(W, H, magnitude), H) <= 0.5 * e_mag
    assert reconstruction_error(W, sparsegpt(W, H, sparsity=sparsity, blocksize=16)[0], H) <= 0.85 * e_mag


# --- bias and error --------------------------------------------------------------------------------


def test_bias_delta_keeps_the_mean_output():
    X = _inputs(500, 16, seed=21, mean=np.linspace(-2.0, 3.0, 16))
    H = X.T @ X
    W = _weights(5, 16)
    W_new, _ = sparsegpt(W, H, sparsity=0.5)
    delta = bias_delta(W, W_new, X.mean(axis=0))
    np.testing.assert_allclose((X @ W_new.T + delta).mean(axis=0), (X @ W.T).mean(axis=0), rtol=1e-10, atol=1e-10)
    assert np.abs(delta).max() > 1e-3  # the correction is not trivially zero here


def test_reconstruction_error_is_the_explicit_ratio():
    X = _inputs(300, 12, seed=22)
    H = X.T @ X
    W = _weights(4, 12)
    W_new = np.where(row_mask(np.abs(W), sparsity=0.5), 0.0, W)
    np.testing.assert_allclose(reconstruction_error(W, W_new, H), _explicit_error(W, W_new, X), rtol=1e-10)
    assert reconstruction_error(W, W, H) == 0.0
    assert reconstruction_error(np.zeros((2, 3)), np.zeros((2, 3)), np.eye(3)) == 0.0
    assert reconstruction_error(np.zeros((2, 3)), np.ones((2, 3)), np.eye(3)) == np.inf


# --- dead columns and damping ----------------------------------------------------------------------


def test_dampen_sets_dead_diagonal_and_adds_lambda_from_the_live_mean():
    H = np.diag([2.0, 0.0, 4.0])
    H_d, dead = dampen(H, percdamp=0.1)
    np.testing.assert_array_equal(dead, [False, True, False])
    np.testing.assert_allclose(np.diag(H_d), [2.3, 1.3, 4.3])
    assert H[1, 1] == 0.0  # input untouched


def test_dead_columns_are_handled_without_nan():
    X = _inputs(300, 12, seed=23)
    X[:, [2, 9]] = 0.0  # features that never fire
    H = X.T @ X
    W = _weights(4, 12)
    for percdamp in (0.0, 0.01):
        W_new, mask = sparsegpt(W, H, sparsity=0.5, percdamp=percdamp)
        assert np.all(np.isfinite(W_new))
        assert np.all(mask[:, [2, 9]]) and np.all(W_new[:, [2, 9]] == 0.0)
        assert mask.sum(axis=1).tolist() == [6] * 4
        assert reconstruction_error(W, W_new, H) < reconstruction_error(W, np.where(mask, 0.0, W), H)
        keep_dead = np.zeros_like(mask)
        keep_dead[:, :2] = True  # prune two live columns, keep the dead ones
        refitted = refit(W, H, keep_dead, percdamp=percdamp)
        assert np.all(np.isfinite(refitted))
        np.testing.assert_array_equal(refitted[:, [2, 9]], W[:, [2, 9]])  # kept dead weights unchanged
    wanda = row_mask(wanda_scores(W, np.diag(H)), sparsity=0.5)
    assert np.all(wanda[:, [2, 9]])  # dead features score 0: pruned first


def test_rank_deficient_h_without_damping_still_solves():
    X = _inputs(6, 12, seed=24)  # 6 calibration rows for 12 features: H has rank 6
    H = X.T @ X
    W = _weights(3, 12)
    W_new, mask = sparsegpt(W, H, sparsity=0.5, percdamp=0.0)
    assert np.all(np.isfinite(W_new)) and mask.sum() == 18
    refitted = refit(W, H, mask, percdamp=0.0)
    assert np.all(np.isfinite(refitted))
    assert reconstruction_error(W, refitted, H) < 1e-6  # 6 kept weights fit 6 samples exactly


def test_sparsegpt_layer_wide_budget_is_exact_and_lets_rows_differ():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((800, 4)) @ rng.standard_normal((4, 4))
    h = x.T @ x
    w = rng.standard_normal((64, 4)) * rng.uniform(0.1, 3.0, size=(64, 1))  # rows of very different scale
    new, mask = sparsegpt(w, h, sparsity=0.5, per_row=False)
    assert int(mask.sum()) == 128 and np.all(new[mask] == 0)
    assert mask.sum(axis=1).min() < 2 < mask.sum(axis=1).max()  # small rows give more
    per_row, _ = sparsegpt(w, h, sparsity=0.5)
    assert reconstruction_error(w, new, h) < reconstruction_error(w, per_row, h)


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_exact_refit_keeps_the_mask_and_lowers_the_error(
    nm: tuple[int, int] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SparseGPT's updates are greedy; solving the kept weights exactly for its mask can only
    lower the damped objective (w - ŵ)ᵀ(H + λI)(w - ŵ), row by row, and keeps every zero
    (without the N:M swaps, which change the mask: tested below)."""
    from onnxprune.reconstruct import methods
    from onnxprune.reconstruct.hessian import damping
    from onnxprune.reconstruct.methods import LayerProblem, solve_sparsegpt

    monkeypatch.setattr(methods, "NM_SWAPS", False)

    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 48)) @ rng.standard_normal((48, 48))  # correlated inputs
    w = rng.standard_normal((16, 48))
    H = x.T @ x
    amount = None if nm else 0.6
    problem = {"w": w, "goal": w, "H": H, "sqnorm": np.diagonal(H).copy(), "mask": None, "amount": amount}
    settings = {"nm": nm, "percdamp": 0.01, "blocksize": 16, "row_wise": True}
    greedy = solve_sparsegpt(LayerProblem(**problem, **settings, exact_refit=False))
    exact = solve_sparsegpt(LayerProblem(**problem, **settings, exact_refit=True))
    np.testing.assert_array_equal(exact == 0, greedy == 0)
    lam = damping(H, np.diagonal(H) == 0, 0.01)
    damped = H + lam * np.eye(48)

    def objective(new: np.ndarray) -> np.ndarray:
        d = w - new
        return np.einsum("ij,jk,ik->i", d, damped, d)

    assert np.all(objective(exact) <= objective(greedy) * (1 + 1e-9))
    assert objective(exact).sum() < 0.99 * objective(greedy).sum()


# --- N:M group swaps ---------------------------------------------------------------------------


def _damped_objective(goal: np.ndarray, new: np.ndarray, H: np.ndarray, percdamp: float = 0.01) -> np.ndarray:
    from onnxprune.reconstruct.hessian import damping

    d = goal - new
    damped = H + damping(H, np.diagonal(H) == 0, percdamp) * np.eye(H.shape[0])
    return np.einsum("ij,jk,ik->i", d, damped, d)


def _is_nm(new: np.ndarray, nm: tuple[int, int]) -> bool:
    keep, m = nm
    return bool(np.all(np.count_nonzero(new.reshape(new.shape[0], -1, m), axis=2) <= keep))


def test_one_group_swap_finds_the_best_of_every_pattern_exactly() -> None:
    """With one group of M columns, a swap from any start is the exact optimum over the C(M, N)
    patterns, each with its kept weights solved by least squares (brute force)."""
    from itertools import combinations

    from onnxprune.reconstruct.swaps import nm_swaps

    X = _inputs(256, 4, seed=7, mean=0.4)
    H = X.T @ X
    W = _weights(32, 4, seed=8)
    start = np.where(np.arange(4) < 2, W, 0.0)  # keep the first two columns of every row
    new, _ = nm_swaps(start, W, H, (2, 4))
    best = np.full(32, np.inf)
    for keep in combinations(range(4), 2):
        mask = np.ones((32, 4), dtype=bool)
        mask[:, list(keep)] = False
        best = np.minimum(best, _damped_objective(W, refit(W, H, mask), H))
    np.testing.assert_allclose(_damped_objective(W, new, H), best, rtol=1e-9, atol=1e-12)
    assert _is_nm(new, (2, 4))


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
def test_swaps_keep_the_pattern_never_raise_any_row_and_lower_sparsegpt_s_error(nm: tuple[int, int]) -> None:
    from onnxprune.reconstruct.swaps import nm_swaps

    X = _inputs(1024, 64, seed=9, outliers=3, mean=0.3)
    H = X.T @ X
    W = _weights(24, 64, seed=10)
    start = refit(W, H, sparsegpt(W, H, nm=nm)[1])
    new, changed = nm_swaps(start, W, H, nm)
    assert changed > 0 and _is_nm(new, nm)
    before, after = _damped_objective(W, start, H), _damped_objective(W, new, H)
    assert np.all(after <= before * (1 + 1e-9))
    assert after.sum() < 0.995 * before.sum()  # measured: 2.7 % (2:4), 14 % (1:4), 1.3 % (4:8) lower


def test_sparsegpt_with_an_nm_pattern_refines_its_mask_by_swaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The method's N:M result (refit, then swaps) beats SparseGPT + refit alone."""
    from onnxprune.reconstruct import methods
    from onnxprune.reconstruct.methods import LayerProblem, solve_sparsegpt

    X = _inputs(1024, 64, seed=11, mean=0.2)
    H = X.T @ X
    W = _weights(32, 64, seed=12)
    problem = LayerProblem(
        w=W, goal=W, H=H, sqnorm=np.diagonal(H).copy(), mask=None, amount=None, nm=(2, 4),
        percdamp=0.01, blocksize=16, row_wise=True, exact_refit=True,
    )  # fmt: skip
    swapped = solve_sparsegpt(problem)
    monkeypatch.setattr(methods, "NM_SWAPS", False)
    plain = solve_sparsegpt(problem)
    assert _is_nm(swapped, (2, 4)) and not np.array_equal(swapped == 0, plain == 0)
    assert _damped_objective(W, swapped, H).sum() < 0.97 * _damped_objective(W, plain, H).sum()


def test_swaps_need_a_multiple_of_m_columns() -> None:
    from onnxprune.reconstruct.swaps import nm_swaps

    with pytest.raises(ValueError, match="multiple of M"):
        nm_swaps(np.ones((2, 6)), np.ones((2, 6)), np.eye(6), (2, 4))


def test_swaps_without_damping_skip_patterns_that_keep_dead_columns_only() -> None:
    """``percdamp=0`` with dead inputs (H_jj = 0): a pattern whose H_KK is singular is no
    candidate, the others still are (no LinAlgError)."""
    from onnxprune.reconstruct.swaps import nm_swaps

    X = _inputs(256, 8, seed=13)
    X[:, [1, 2]] = 0.0
    H = X.T @ X
    W = _weights(6, 8, seed=14)
    start = refit(W, H, sparsegpt(W, H, nm=(2, 4), percdamp=0.0)[1], percdamp=0.0)
    new, _ = nm_swaps(start, W, H, (2, 4), percdamp=0.0)
    assert _is_nm(new, (2, 4)) and np.all(np.isfinite(new))
    before, after = _damped_objective(W, start, H, 0.0), _damped_objective(W, new, H, 0.0)
    assert np.all(after <= before * (1 + 1e-9) + 1e-9)


def test_the_damped_inverse_factor_is_kept_for_the_same_values_only():
    """A layer solved at several levels factors its H once; other values (not another object
    with the same values) are factored again."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 12))
    h = x.T @ x
    first, _ = damped_inverse_factor(h, 0.1)
    again, _ = damped_inverse_factor(h.copy(), 0.1)  # equal values: the kept factor
    assert again is first and not first.flags.writeable
    damped, _ = dampen(h, percdamp=0.1)
    np.testing.assert_array_equal(first, inverse_factor(damped))
    other, _ = damped_inverse_factor(h, 0.2)  # another damping
    assert other is not first
    moved = h.copy()
    moved[3, 3] += 1.0
    third, _ = damped_inverse_factor(moved, 0.2)
    assert third is not other
    np.testing.assert_array_equal(third, inverse_factor(dampen(moved, percdamp=0.2)[0]))


def test_output_errors_share_their_constant_terms_and_match_the_quadratic():
    """‖w X_dᵀ − ŵ Xᵀ‖² from the statistics equals the error computed on the rows."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 10))
    x_d = x + 0.1 * rng.standard_normal((200, 10))
    w = rng.standard_normal((4, 10))
    new = np.where(rng.random((4, 10)) < 0.5, 0.0, w)
    # C wᵀ and tr(w H_d wᵀ) from the matrices, and as the capture accumulates them (Y_d = X_d wᵀ)
    cw, dense = reference_terms(w[None], (x.T @ x_d)[None], (x_d.T @ x_d)[None])
    np.testing.assert_allclose(cw[0], x.T @ (x_d @ w.T), rtol=1e-12)
    assert dense[0] == pytest.approx(float(np.sum((x_d @ w.T) ** 2)), rel=1e-12)
    errors = OutputErrors(w, x.T @ x, cw[0], dense[0])
    direct = float(np.sum((x_d @ w.T - x @ new.T) ** 2))
    assert errors.of(new) == pytest.approx(direct, rel=1e-10)
    assert errors.dense == pytest.approx(float(np.sum((x_d @ w.T) ** 2)), rel=1e-12)
    h = x.T @ x  # no reference: one matrix for H, C and H_d
    plain = OutputErrors(w, h, h @ w.T, float(np.vdot(w @ h, w)))
    assert plain.of(new) == pytest.approx(float(np.sum((x @ (w - new).T) ** 2)), rel=1e-10)
