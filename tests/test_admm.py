"""ADMM with a gradual mask (onnxprune.reconstruct.admm) and the ``admm`` method."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune import OptionError, PruneConfig
from onnxprune.reconstruct.admm import admm
from onnxprune.reconstruct.hessian import damping
from onnxprune.reconstruct.methods import METHODS, LayerProblem
from onnxprune.reconstruct.refit import refit
from onnxprune.reconstruct.sparsegpt import sparsegpt


def _layer(rows: int = 24, cols: int = 64, n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weights and ``H`` of correlated inputs with a decaying spectrum and a few outlier features."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((cols, cols)) / (1 + np.arange(cols) / 6)[:, None]
    x = rng.standard_normal((n, cols)) @ mix
    x[:, rng.choice(cols, 3, replace=False)] *= 8
    return rng.standard_normal((rows, cols)), x.T @ x


def _objective(w: np.ndarray, new: np.ndarray, H: np.ndarray, percdamp: float) -> float:
    d = w - new
    return float(np.vdot(d @ (H + damping(H, np.diagonal(H) == 0, percdamp) * np.eye(len(H))), d))


@pytest.mark.parametrize("count", [0, 1, 700, 24 * 64 // 2, 24 * 64 - 5])
def test_admm_prunes_the_exact_count_spread_over_the_rows(count: int) -> None:
    w, H = _layer()
    new, mask = admm(w, H, count=count, percdamp=0.1)
    assert mask.sum() == count
    assert np.ptp(mask.sum(axis=1)) <= 1  # row-wise: counts differ by at most one
    assert np.all(new[mask] == 0)


def test_admm_layer_wide_budget_lets_rows_differ() -> None:
    w, H = _layer()
    w[:4] *= 0.05  # small rows: a layer-wide budget prunes them more
    _, mask = admm(w, H, count=w.size // 2, percdamp=0.1, per_row=False)
    assert mask.sum() == w.size // 2
    assert mask[:4].mean() > mask[4:].mean()


def test_admm_keeps_existing_zeros_and_zeroes_dead_columns() -> None:
    w, H = _layer()
    w[:, :6] = 0.0
    H[9, :] = H[:, 9] = 0.0  # feature 9 never fires
    new, mask = admm(w, H, count=w.size // 4, percdamp=0.1)
    assert mask[:, :6].all() and mask[:, 9].all()
    assert np.all(new[:, :6] == 0) and np.all(new[:, 9] == 0)
    assert mask.sum() == w.size // 4


def test_admm_with_the_refit_beats_sparsegpt_with_the_refit() -> None:
    """The point of the method: on correlated inputs its mask leaves a lower output error than
    SparseGPT's, both refitted exactly (the same objective, the same damping)."""
    wins = []
    for seed in range(4):
        w, H = _layer(seed=seed)
        count = w.size // 2
        _, mask = admm(w, H, count=count, percdamp=0.1)
        ours = refit(w, H, mask, percdamp=0.1)
        greedy, _ = sparsegpt(w, H, count=count, percdamp=0.1)
        theirs = refit(w, H, greedy == 0, percdamp=0.1)
        wins.append(_objective(w, ours, H, 0.1) / _objective(w, theirs, H, 0.1))
    assert max(wins) < 1.0, wins


def test_admm_is_invariant_to_the_scale_of_h() -> None:
    w, H = _layer()
    _, a = admm(w, H, count=w.size // 2, percdamp=0.1)
    _, b = admm(w, H * 1000.0, count=w.size // 2, percdamp=0.1)
    np.testing.assert_array_equal(a, b)


def test_admm_rejects_bad_amounts() -> None:
    w, H = _layer()
    with pytest.raises(ValueError, match="exactly one"):
        admm(w, H, percdamp=0.1)
    with pytest.raises(ValueError, match="count"):
        admm(w, H, count=w.size + 1, percdamp=0.1)
    with pytest.raises(ValueError, match="sparsity"):
        admm(w, H, sparsity=1.0, percdamp=0.1)


def test_the_admm_method_refits_its_mask_exactly() -> None:
    w, H = _layer()
    problem = {"w": w, "goal": w, "H": H, "sqnorm": np.diagonal(H).copy(), "mask": None, "amount": 0.5, "nm": None}
    settings = {"percdamp": 0.1, "blocksize": 128, "row_wise": True, "count": w.size // 2}
    exact = METHODS["admm"].solve(LayerProblem(**problem, **settings, exact_refit=True))
    plain = METHODS["admm"].solve(LayerProblem(**problem, **settings, exact_refit=False))
    np.testing.assert_array_equal(exact == 0, plain == 0)
    np.testing.assert_allclose(exact, refit(w, H, plain == 0, percdamp=0.1))
    assert _objective(w, exact, H, 0.1) <= _objective(w, plain, H, 0.1) * (1 + 1e-9)


def test_admm_with_an_nm_pattern_is_a_one_line_option_error() -> None:
    with pytest.raises(OptionError, match="unstructured only"):
        PruneConfig(pattern=(2, 4), method="admm")
    PruneConfig(sparsity=0.5, method="admm")  # unstructured is fine
