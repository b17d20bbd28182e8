"""Accuracy and fidelity accumulators against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxprune.metrics import OutputFidelity, TopK, overall


def test_top1_and_top5_by_hand():
    scores = np.zeros((4, 7), np.float32)
    scores[0, 3] = 1  # label 3: top-1 hit
    scores[1, :6] = [6, 5, 4, 3, 2, 1]  # label 4 is 5th: top-5 hit, top-1 miss
    scores[2, :6] = [6, 5, 4, 3, 2, 1]  # label 5 is 6th: miss both
    scores[3] = 0  # all tied: argmax is class 0 = label 0 (ties go to the lower index)
    acc = TopK()
    acc.update(scores[:2], np.array([3, 4]))
    acc.update(scores[2:], np.array([5, 0]))
    assert acc.samples == 4
    assert acc.top1 == 0.5
    assert acc.top5 == 0.75


def test_top5_is_not_reported_with_five_classes_or_fewer():
    acc = TopK()
    acc.update(np.eye(5, dtype=np.float32), np.arange(5))
    assert acc.top1 == 1.0 and acc.top5 is None


def test_topk_rejects_non_classifier_outputs_and_bad_labels():
    with pytest.raises(ValueError, match="not \\[samples, classes\\]"):
        TopK().update(np.zeros((2, 3, 4)), np.zeros(2, int))
    with pytest.raises(ValueError, match="label 9 is not a class index"):
        TopK().update(np.zeros((2, 3)), np.array([0, 9]))
    acc = TopK()
    acc.update(np.eye(3)[:, None, :], np.arange(3))  # [N, 1, C] is squeezed
    assert acc.top1 == 1.0


def test_fidelity_by_hand():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    cand = np.array([[1.0, 1.0], [0.0, 2.0]], np.float32)  # sample 0 at 45 degrees, sample 1 equal
    acc = OutputFidelity()
    acc.update(ref, cand)
    res = acc.result()
    assert res.cosine == pytest.approx((math.cos(math.pi / 4) + 1) / 2)
    assert res.rel_l2 == pytest.approx(1 / math.sqrt(5))
    assert res.max_abs == 1.0
    assert res.top1_agreement == 1.0  # argmax: [0 vs 0 (tie broken to 0)], [1 vs 1]
    assert res.nonfinite == 0


def test_fidelity_does_not_depend_on_batching():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10)).astype(np.float32)
    cand = ref + 0.1 * rng.standard_normal((50, 10)).astype(np.float32)
    whole, parts = OutputFidelity(), OutputFidelity()
    whole.update(ref, cand)
    for i in range(0, 50, 7):
        parts.update(ref[i : i + 7], cand[i : i + 7])
    a, b = whole.result(), parts.result()
    assert a.top1_agreement == b.top1_agreement
    assert a.cosine == pytest.approx(b.cosine, rel=1e-12)
    assert a.rel_l2 == pytest.approx(b.rel_l2, rel=1e-12)
    assert a.max_abs == b.max_abs


def test_identical_outputs_are_perfectly_faithful_and_zero_vectors_agree():
    acc = OutputFidelity()
    x = np.array([[0.0, 0.0], [3.0, -1.0]], np.float32)
    acc.update(x, x.copy())
    res = acc.result()
    assert (res.top1_agreement, res.rel_l2, res.max_abs) == (1.0, 0.0, 0.0)
    assert res.cosine == pytest.approx(1.0, abs=1e-15)


def test_nonfinite_candidate_outputs_are_counted():
    acc = OutputFidelity()
    acc.update(np.ones((2, 3), np.float32), np.array([[1, np.nan, 1], [1, 1, 1]], np.float32))
    res = acc.result()
    assert res.nonfinite == 1 and res.max_abs == math.inf


def test_integer_outputs_use_exact_agreement_only():
    acc = OutputFidelity()
    acc.update(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]))
    res = acc.result()
    assert res.top1_agreement == 0.75 and res.cosine is None and res.rel_l2 is None


def test_overall_combines_outputs():
    a, b = OutputFidelity(), OutputFidelity()
    a.update(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]))  # perfect
    b.update(np.array([[3.0, 4.0]]), np.array([[3.0, 4.0 + 5.0]]))  # rel L2 1, cosine < 1
    res = overall({"a": a, "b": b})
    assert res.rel_l2 == pytest.approx(math.sqrt(25 / (1 + 25)))
    assert res.max_abs == 5.0
    assert res.cosine == pytest.approx((1 + b.result().cosine) / 2)
