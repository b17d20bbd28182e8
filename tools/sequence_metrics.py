"""Scores of sequence recognizers trained with CTC: greedy decoding, sequence accuracy, CER.

A CTC model outputs, per time step ``t``, scores over ``blank`` plus the symbols. Greedy
(best-path) decoding takes ``argmax`` at every step, merges repeats and drops blanks:
``decode(π) = B(π)`` with ``B`` collapsing runs then removing ``blank``. Against reference
sequences ``r_i`` (``labels``: ``[N, L]`` int, padded with ``-1``; symbol ``s`` is output class
``s + 1``, class 0 the blank, as in ``fixtures/crnn_digits``):

* sequence accuracy = ``mean_i [decode_i == r_i]``;
* character error rate = ``Σ_i lev(decode_i, r_i) / Σ_i |r_i|`` (Levenshtein distance: the
  fewest insertions, deletions and substitutions).

Used by ``tools/make_fixtures.py``, ``tools/crnn_table.py``, ``tools/calibration_table.py`` and
``tools/check_calibrated_ocr.py``. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def levenshtein(a: Sequence[object], b: Sequence[object]) -> int:
    """The edit distance of two sequences (strings or lists)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def ctc_greedy(scores: np.ndarray, blank: int = 0) -> list[np.ndarray]:
    """Best-path decoding of ``scores [N, T, classes]``: per sample the class ids, repeats merged, blanks dropped."""
    out = []
    for steps in np.asarray(scores).argmax(-1):
        keep = np.r_[True, steps[1:] != steps[:-1]] & (steps != blank)
        out.append(steps[keep])
    return out


def references(labels: np.ndarray) -> list[list[int]]:
    """``[N, L]`` labels padded with ``-1`` as lists of symbols."""
    return [[int(v) for v in row if v >= 0] for row in np.asarray(labels)]


def sequence_scores(scores: np.ndarray, labels: np.ndarray, blank: int = 0) -> tuple[float, float]:
    """(sequence accuracy, character error rate) of greedy decoding against ``labels`` (symbol = class − 1)."""
    decoded = [[int(c) - 1 for c in seq] for seq in ctc_greedy(scores, blank)]
    truth = references(labels)
    exact = sum(d == t for d, t in zip(decoded, truth, strict=True))
    errors = sum(levenshtein(d, t) for d, t in zip(decoded, truth, strict=True))
    return exact / len(truth), errors / max(1, sum(len(t) for t in truth))
