"""Block reconstruction: fit the kept weights of a whole block to the block's dense output.

Layer-wise solves (:mod:`.sparsegpt`, :mod:`.refit`) make each layer reproduce its own dense
output, one at a time. Errors that survive them add up through the nonlinear parts between
layers (attention's softmax, normalisations, activations). Block reconstruction then fits
every pruned weight ``W_l`` of a block together (their masks fixed), and the block's
vectors (biases, normalisation scales and shifts), to the block's dense output (as in
BRECQ, Li et al. 2021, for quantisation, and block-wise refinement after SparseGPT):

    min over {W_l ⊙ keep_l, b}   L = Σ_o  ‖f_o(x; W, b) − y_o‖² / ‖y_o‖²

where ``x`` is the block's input *on the model pruned so far* (so a block also takes up the
error of the blocks before it), ``y_o`` the dense model's value of each block output ``o``
and ``f`` the block's program (:mod:`.autodiff`). It is minimised by Adam (Kingma & Ba
2015) on mini-batches of the calibration data, the gradients of pruned weights held at zero,
with a step of ``lr · rms(W)`` for each tensor (a step relative to its own scale) decayed
along a cosine to zero. A fraction of the batches is held out: the fit keeps the epoch with
the lowest held-out ``L``, and the weights it was given when no epoch beats them, so the
block's held-out error never increases.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.reconstruct.autodiff import Step, backward, forward

log = logging.getLogger(__name__)

#: Adam's constants (Kingma & Ba 2015)
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
#: the fraction of the steps over which the step size warms up
WARMUP = 0.1


@dataclass(frozen=True)
class Batch:
    """One mini-batch: every value the program reads that is not fitted (``inputs``: the block
    input as pruned so far, shapes, masks, frozen constants) and the dense ``targets``."""

    inputs: Mapping[str, np.ndarray]
    targets: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class BlockFit:
    """What :func:`fit_block` found: the fitted values, the held-out relative error ``L``
    before (the given weights) and after, and the epoch kept (0: the given weights)."""

    params: dict[str, np.ndarray]
    error_before: float
    error_after: float
    epoch: int
    epochs: int


def _loss(
    outputs: Mapping[str, np.ndarray], batch: Batch, scale: Mapping[str, float]
) -> tuple[float, dict[str, np.ndarray]]:
    """``L`` of one batch and its seeds ``∂L/∂f_o = 2 (f_o − y_o) / ‖y_o‖²``."""
    total, seeds = 0.0, {}
    for name, target in batch.targets.items():
        diff = outputs[name].astype(np.float32, copy=False) - target
        total += float(np.vdot(diff, diff)) * scale[name]
        seeds[name] = (2.0 * scale[name] * diff).astype(outputs[name].dtype, copy=False)
    return total, seeds


def block_error(
    steps: Sequence[Step], params: Mapping[str, np.ndarray], batches: Sequence[Batch], scale: Mapping[str, float]
) -> float:
    """``L`` summed over ``batches`` with these ``params``."""
    return sum(_loss(forward(steps, {**b.inputs, **params}), b, scale)[0] for b in batches)


def target_scale(batches: Sequence[Batch]) -> dict[str, float]:
    """``1 / ‖y_o‖²`` of each output over ``batches`` (per batch, so that ``L`` is comparable
    across batch counts)."""
    energy: dict[str, float] = {}
    for b in batches:
        for name, target in b.targets.items():
            energy[name] = energy.get(name, 0.0) + float(np.vdot(target, target))
    return {name: len(batches) / e if e > 0 else 0.0 for name, e in energy.items()}


def schedule(t: int, total: int) -> float:
    """The step's scale at step ``t`` of ``total`` (1-based): a linear warm-up over the first
    :data:`WARMUP` of the steps (Adam's first moments are noisy), then a cosine decay to zero."""
    warm = max(1, round(WARMUP * total))
    if t <= warm:
        return t / warm
    return 0.5 * (1.0 + math.cos(math.pi * (t - warm) / max(1, total - warm)))


def fit_block(
    steps: Sequence[Step],
    params: Mapping[str, np.ndarray],
    keep: Mapping[str, np.ndarray],
    train: Sequence[Batch],
    held_out: Sequence[Batch],
    *,
    epochs: int,
    lr: float,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> BlockFit:
    """Fit ``params`` (name -> float array) by Adam on ``train``; ``keep[name]`` (bool, the
    shape of the tensor) marks the weights that may be non-zero (tensors absent from ``keep``
    are fitted whole). ``held_out`` (or ``train`` when empty) chooses the epoch kept."""
    judge = list(held_out) or list(train)
    scale = target_scale(list(train) + list(held_out))
    current = {name: np.array(value, dtype=value.dtype, copy=True) for name, value in params.items()}
    masks = {name: keep[name].astype(current[name].dtype) for name in keep if name in current}
    for name, mask in masks.items():
        current[name] *= mask
    step_size = {}
    for name, value in current.items():
        kept = value[masks[name] > 0] if name in masks else value
        rms = float(np.sqrt(np.mean(np.square(kept, dtype=np.float64)))) if kept.size else 0.0
        step_size[name] = lr * (rms if rms > 0 else 1.0)
    m = {name: np.zeros_like(v) for name, v in current.items()}
    v = {name: np.zeros_like(val) for name, val in current.items()}
    best = {name: value.copy() for name, value in current.items()}
    before = block_error(steps, current, judge, scale) / len(judge)
    best_error, best_epoch = before, 0
    rng = np.random.default_rng(seed)
    total = max(1, epochs * len(train))
    t = 0
    for epoch in range(1, epochs + 1):
        for index in rng.permutation(len(train)):
            batch = train[int(index)]
            env = forward(steps, {**batch.inputs, **current})
            _, seeds = _loss(env, batch, scale)
            grads = backward(steps, env, seeds, list(current))
            t += 1
            rate = schedule(t, total)
            for name, value in current.items():
                g = grads[name].astype(value.dtype, copy=False)
                if name in masks:
                    g = g * masks[name]
                m[name] = BETA1 * m[name] + (1 - BETA1) * g
                v[name] = BETA2 * v[name] + (1 - BETA2) * g * g
                m_hat = m[name] / (1 - BETA1**t)
                v_hat = v[name] / (1 - BETA2**t)
                value -= (step_size[name] * rate) * m_hat / (np.sqrt(v_hat) + EPS)
            if progress is not None:
                progress(t, total)
        error = block_error(steps, current, judge, scale) / len(judge)
        log.debug("block fit epoch %d: held-out relative error %.6g (start %.6g)", epoch, error, before)
        if error < best_error:
            best_error, best_epoch = error, epoch
            best = {name: value.copy() for name, value in current.items()}
    return BlockFit(best, before, best_error, best_epoch, epochs)
