"""One-row groups solved as one stack (:mod:`onnxprune.reconstruct.grouped`): a depthwise layer's
SparseGPT gives the masks and weights of the loop over its groups, with and without a
reference, the exact refit, exact counts or a fraction, one input for every group, forced zeros
and dead columns; a stack the factor fails on goes back to the loop; the elimination over
several blocks matches :func:`~onnxprune.reconstruct.sparsegpt.sparsegpt` row by row."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from onnxprune.reconstruct import grouped
from onnxprune.reconstruct.layer import LayerTask, Residual, UseMeans, _stacked, solve_layer
from onnxprune.reconstruct.methods import SPARSEGPT, WANDA
from onnxprune.reconstruct.sparsegpt import sparsegpt

LOOP = replace(SPARSEGPT, solve_rows=None)


def depthwise_task(
    seed: int,
    *,
    groups: int = 48,
    cols: int = 9,
    reference: bool = True,
    exact_refit: bool = True,
    count: bool = True,
    shared: bool = False,
    zeros: bool = False,
    dead: bool = False,
    percdamp: float = 0.1,
) -> LayerTask:
    """A depthwise layer's task: ``groups`` groups of one row of ``cols`` weights, each with the
    ``H`` of its own 64 input rows (one ``H`` for all with ``shared``)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((groups, 1, cols))
    if zeros:
        w[rng.random(w.shape) < 0.2] = 0.0
    x = rng.standard_normal((1 if shared else groups, 64, cols))
    if dead:
        x[:, :, 2] = 0.0
    h = np.matmul(x.transpose(0, 2, 1), x)
    cw = energy = None
    if reference:
        x_d = x + 0.1 * rng.standard_normal(x.shape)
        if dead:
            x_d[:, :, 2] = 0.0
        c = np.broadcast_to(np.matmul(x.transpose(0, 2, 1), x_d), (groups, cols, cols))
        h_d = np.broadcast_to(np.matmul(x_d.transpose(0, 2, 1), x_d), (groups, cols, cols))
        cw = np.matmul(c, w.transpose(0, 2, 1))
        energy = np.einsum("gri,gij,grj->g", w, h_d, w)
    return LayerTask(
        weight="dw",
        w=w,
        magnitude=np.abs(w) < np.median(np.abs(w)),
        H=h,
        sqnorm=np.einsum("gii->gi", h).copy(),
        method=SPARSEGPT,
        percdamp=percdamp,
        blocksize=128,
        exact_refit=exact_refit,
        row_wise=False,
        count=groups * cols // 2 + 1 if count else None,
        amount=0.5,
        CW=cw,
        energy_ref=energy,
        uses=(UseMeans(mean=rng.standard_normal((1 if shared else groups, cols))),),
    )


CASES = {
    "reference and refit": {},
    "no reference": {"reference": False},
    "greedy updates only": {"exact_refit": False},
    "a fraction, not a count": {"count": False},
    "one input for every group": {"shared": True},
    "forced zeros": {"zeros": True},
    "a dead column": {"dead": True},
    "5x5 taps, 240 groups": {"cols": 25, "groups": 240},
    "the widest stacked group": {"cols": grouped.MAX_COLS, "groups": 5},
}


@pytest.mark.parametrize("case", CASES)
def test_the_stack_gives_the_bits_of_the_loop(case):
    task = depthwise_task(7, **CASES[case])
    assert _stacked(task)
    stacked, looped = solve_layer(task), solve_layer(replace(task, method=LOOP))
    # the same masks; the weights to rounding (a stacked product may take another BLAS kernel
    # than one group's: here they are the same bits, on another CPU they need not be)
    np.testing.assert_array_equal(stacked.new == 0, looped.new == 0)
    np.testing.assert_allclose(stacked.new, looped.new, rtol=0, atol=1e-12)
    for got, want in zip(stacked.deltas, looped.deltas, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    # the errors are summed over the groups in another order
    assert stacked.err_num == pytest.approx(looped.err_num, rel=1e-12)
    assert stacked.mag_num == pytest.approx(looped.mag_num, rel=1e-12)
    assert stacked.err_den == pytest.approx(looped.err_den, rel=1e-12)
    if task.count is not None:
        assert np.count_nonzero(stacked.new == 0) >= task.count


def test_what_is_not_a_stack_of_one_row_groups_loops():
    task = depthwise_task(1)
    assert not _stacked(replace(task, method=WANDA))  # a method without solve_rows
    assert not _stacked(replace(task, w=task.w[:1], magnitude=task.magnitude[:1], H=task.H[:1]))  # one group
    two_rows = np.concatenate([task.w, task.w], axis=1)
    assert not _stacked(replace(task, w=two_rows))
    assert not _stacked(replace(task, nm=(2, 4)))
    residual = Residual(np.zeros((9, 1)), np.zeros((9, 1)), 0.0)
    assert not _stacked(replace(task, residual=residual))
    wide = depthwise_task(1, cols=grouped.MAX_COLS + 1, groups=3)
    assert not _stacked(wide)


def test_a_stack_whose_factor_fails_is_solved_by_the_loop(caplog):
    task = depthwise_task(3, reference=False, percdamp=0.0)
    h = task.H.copy()
    values, vectors = np.linalg.eigh(h[5])
    h[5] -= (values[0] + 1e-3) * np.outer(vectors[:, 0], vectors[:, 0])  # its smallest eigenvalue -1e-3
    task = replace(task, H=h, sqnorm=np.einsum("gii->gi", h).copy())
    with pytest.raises(grouped.Unsolved):
        grouped.inverse_factors(h, 0.0)
    with caplog.at_level("DEBUG", logger="onnxprune.reconstruct.layer"):
        stacked = solve_layer(task)
    assert "solving them one by one" in caplog.text
    looped = solve_layer(replace(task, method=LOOP))
    np.testing.assert_array_equal(stacked.new, looped.new)  # the loop's own solve, both times


@pytest.mark.parametrize("blocksize", [4, 16, 128])
def test_the_elimination_matches_sparsegpt_row_by_row(blocksize):
    rng = np.random.default_rng(11)
    groups, cols = 6, 40
    x = rng.standard_normal((groups, 100, cols))
    h = np.matmul(x.transpose(0, 2, 1), x)
    goal = rng.standard_normal((groups, cols))
    counts = rng.integers(0, cols + 1, groups)
    U, dead, _ = grouped.inverse_factors(h, 0.01)
    new, mask = grouped.sparsegpt_rows(goal, U, dead, grouped.budgets(goal, dead, count=counts, amount=None), blocksize)
    for g in range(groups):
        want, want_mask = sparsegpt(goal[g : g + 1], h[g], count=int(counts[g]), blocksize=blocksize, percdamp=0.01)
        np.testing.assert_array_equal(mask[g], want_mask[0])
        np.testing.assert_allclose(new[g], want[0], rtol=1e-12, atol=1e-12)
    assert (np.count_nonzero(mask, axis=1) == counts).all()


def test_the_factors_of_the_last_stack_are_kept():
    h = depthwise_task(5).H
    first = grouped.inverse_factors(h, 0.1)
    again = grouped.inverse_factors(h.copy(), 0.1)  # equal values, another array
    assert again[0] is first[0]
    assert grouped.inverse_factors(h, 0.2)[0] is not first[0]
    assert not first[0].flags.writeable
