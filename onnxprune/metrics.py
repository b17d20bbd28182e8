"""Accuracy and fidelity, accumulated batch by batch (pure numpy).

Accuracy (with labels ``y_i``, a classifier output ``z_i ∈ R^C`` per sample)
    top-k accuracy = (1/N) Σ_i [y_i ∈ the k largest entries of z_i]. Ties count in favour
    of the lower class index (``argsort`` order), as ``argmax`` does. Top-5 is reported only
    when there are more than 5 classes (with C <= 5 it is 1 by definition).

Fidelity (candidate output ``ŷ`` against the base output ``y``, no labels needed)
    top-1 agreement = fraction of positions where ``argmax ŷ = argmax y`` over the last
        axis (a ``[N, C]`` output: per sample; ``[N, T, C]``: per sample and position);
        for an integer output (e.g. predicted labels) the fraction of equal elements.
    cosine = (1/N) Σ_i ⟨y_i, ŷ_i⟩ / (‖y_i‖ ‖ŷ_i‖), each sample flattened (1 when both are
        zero, 0 when only one is).
    relative L2 error = ‖ŷ - y‖₂ / ‖y‖₂ over all samples and elements.
    max abs error = max |ŷ - y|.
    Overall: top-1 agreement and cosine averaged over the outputs that have them, the
    relative L2 error over all float outputs together, the max abs error over all.
    ``eval`` accumulates these batch by batch; ``analyze`` measures its loss with
    :func:`fidelity` (the same accumulators over whole outputs), so ``1 − cosine`` there is
    the number ``eval`` reports for the same models and data.

Sums are kept in float64, so the result does not depend on the batch size beyond
floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def _classifier(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` as ``[N, C]`` scores: ``[N, 1, C]``-like shapes are squeezed."""
    if values.ndim > 2:
        squeezed = values.reshape(values.shape[0], -1) if all(d == 1 for d in values.shape[1:-1]) else None
        if squeezed is None:
            raise ValueError(f"{what} has shape {list(values.shape)}, not [samples, classes]")
        values = squeezed
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"{what} has shape {list(values.shape)}, not [samples, classes]")
    return values


class TopK:
    """Top-1 and top-5 accuracy of a classifier output against integer labels."""

    def __init__(self, what: str = "the output") -> None:
        self.what = what
        self.samples = 0
        self.hits1 = 0
        self.hits5 = 0
        self.classes: int | None = None

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        scores = _classifier(np.asarray(scores), self.what)
        labels = np.asarray(labels).reshape(-1)
        if labels.size != scores.shape[0]:
            raise ValueError(f"{labels.size} labels for {scores.shape[0]} samples")
        self.classes = scores.shape[1]
        if labels.size and (labels.min() < 0 or labels.max() >= self.classes):
            bad = int(labels[(labels < 0) | (labels >= self.classes)][0])
            raise ValueError(f"label {bad} is not a class index of {self.what} (it has {self.classes} classes)")
        self.hits1 += int(np.count_nonzero(np.argmax(scores, axis=1) == labels))
        if self.classes > 5:
            top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
            self.hits5 += int(np.count_nonzero((top5 == labels[:, None]).any(axis=1)))
        self.samples += labels.size

    @property
    def top1(self) -> float | None:
        return self.hits1 / self.samples if self.samples else None

    @property
    def top5(self) -> float | None:
        return self.hits5 / self.samples if self.samples and self.classes and self.classes > 5 else None


@dataclass(frozen=True)
class Fidelity:
    """Fidelity of one output (or overall); None where a measure does not apply."""

    top1_agreement: float | None
    cosine: float | None
    rel_l2: float | None
    max_abs: float | None
    nonfinite: int = 0

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "top1_agreement": self.top1_agreement,
            "cosine": self.cosine,
            "rel_l2": self.rel_l2,
            "max_abs": self.max_abs,
            "nonfinite": self.nonfinite,
        }


class OutputFidelity:
    """Accumulates the fidelity of one output over batches (see module docstring)."""

    def __init__(self) -> None:
        self.positions = 0
        self.agree = 0
        self.samples = 0
        self.cosine_sum = 0.0
        self.diff_sq = 0.0
        self.ref_sq = 0.0
        self.max_abs = 0.0
        self.nonfinite = 0
        self.is_float: bool | None = None
        self.has_classes = False

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        ref, cand = np.asarray(ref), np.asarray(cand)
        if ref.shape != cand.shape:
            raise ValueError(f"shapes differ: base {list(ref.shape)}, candidate {list(cand.shape)}")
        self.is_float = ref.dtype.kind == "f"
        if not self.is_float:
            self.positions += ref.size
            self.agree += int(np.count_nonzero(ref == cand))
            return
        r = ref.astype(np.float64).reshape(ref.shape[0] if ref.ndim else 1, -1)
        c = cand.astype(np.float64).reshape(r.shape)
        finite = np.isfinite(c).all(axis=1) & np.isfinite(r).all(axis=1)
        self.nonfinite += int(np.count_nonzero(~np.isfinite(c)))
        if ref.ndim >= 2 and ref.shape[-1] >= 2:
            self.has_classes = True
            self.positions += ref.size // ref.shape[-1]
            self.agree += int(np.count_nonzero(np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)))
        r, c = r[finite], c[finite]
        nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
        dots = np.einsum("ij,ij->i", r, c)
        both_zero = (nr == 0) & (nc == 0)
        denom = np.where(nr * nc > 0, nr * nc, 1.0)
        cos = np.clip(np.where(both_zero, 1.0, np.where(nr * nc > 0, dots / denom, 0.0)), -1.0, 1.0)
        self.cosine_sum += float(cos.sum())  # samples with non-finite values score 0
        self.samples += finite.size
        diff = c - r
        self.diff_sq += float(np.einsum("ij,ij->", diff, diff))
        self.ref_sq += float(np.einsum("ij,ij->", r, r))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
        if not finite.all():
            self.max_abs = math.inf

    def result(self) -> Fidelity:
        agreement = self.agree / self.positions if self.positions and (self.has_classes or not self.is_float) else None
        if not self.is_float:
            return Fidelity(agreement, None, None, None)
        return Fidelity(
            top1_agreement=agreement,
            cosine=float(self.cosine_sum / self.samples) if self.samples else None,
            rel_l2=_ratio(self.diff_sq, self.ref_sq),
            max_abs=self.max_abs,
            nonfinite=self.nonfinite,
        )


def _ratio(diff_sq: float, ref_sq: float) -> float:
    if ref_sq > 0:
        return math.sqrt(diff_sq / ref_sq)
    return 0.0 if diff_sq == 0 else math.inf


def overall(outputs: Mapping[str, OutputFidelity]) -> Fidelity:
    """Fidelity over all outputs (see module docstring)."""
    results = [o.result() for o in outputs.values()]
    floats = [o for o in outputs.values() if o.is_float]

    def mean(values: Sequence[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else None

    return Fidelity(
        top1_agreement=mean([r.top1_agreement for r in results]),
        cosine=mean([r.cosine for r in results]),
        rel_l2=_ratio(sum(o.diff_sq for o in floats), sum(o.ref_sq for o in floats)) if floats else None,
        max_abs=max((r.max_abs for r in results if r.max_abs is not None), default=None),
        nonfinite=sum(r.nonfinite for r in results),
    )


def fidelity(refs: Sequence[np.ndarray], cands: Sequence[np.ndarray]) -> Fidelity:
    """Overall fidelity of the outputs ``cands`` against ``refs`` (one array per output,
    samples on axis 0, in the same order): :func:`overall` of one :class:`OutputFidelity`
    per output, as ``eval`` computes it."""
    if len(refs) != len(cands):
        raise ValueError(f"{len(refs)} base output(s) but {len(cands)} candidate output(s)")
    outputs = {}
    for index, (ref, cand) in enumerate(zip(refs, cands, strict=True)):
        outputs[str(index)] = accumulator = OutputFidelity()
        accumulator.update(np.asarray(ref), np.asarray(cand))
    return overall(outputs)


def top1(scores: np.ndarray, labels: np.ndarray, what: str = "the output") -> float:
    """Top-1 accuracy of the classifier output ``scores`` (:class:`TopK`)."""
    accuracy = TopK(what)
    accuracy.update(scores, labels)
    return accuracy.top1 if accuracy.top1 is not None else 0.0
