"""Measured channel allocation: each group's loss curve, from the model itself.

Ranking says *which* units of a group go first; allocation says *how many*. With
calibration data the structural pass measures, for each prunable group ``g`` and a few
allowed removal counts ``r`` (the fractions :data:`LEVELS` of its units, rounded as the
group allows, the last one its cap), the loss of the model in which group ``g`` alone loses
its ``r`` first-ranked units, the consumers refitted from the captured statistics exactly
as the final run does them::

    L_g(r) = Σ_o ‖Ŷ_o − Y_o‖² / Σ_o ‖Y_o‖²

over the float outputs ``o`` on the first :data:`SAMPLES` calibration samples (``Y``: the
model as it came, ``Ŷ``: pruned). An output that holds log-probabilities (a LogSoftmax, perhaps
moved or reshaped after it; the op table says so) is compared as probabilities,
``Y = exp y``: what decides a class is its probability mass, and the log of an improbable
class (−20 against −25) would otherwise dominate the error. Squared errors of independent
perturbations add, so the allocation (:mod:`onnxprune.sparsity.channels`, ``loss``)
minimises ``Σ_g L_g(r_g)`` under the cost budget. This costs ``groups × len(LEVELS)``
sessions and model runs on those samples (PP-OCRv4 rec, 23 groups: 257 s where the pass took
20 s before); the graph edit is the caller's (``prune``), so this module knows no op.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from onnx import ModelProto

from onnxprune import runtime
from onnxprune.sparsity.allocate import count_for_amount
from onnxprune.sparsity.channels import GroupBudget, loss_at_steps

log = logging.getLogger(__name__)

#: fractions of a group's units at which its loss is measured (clipped to its cap, rounded down)
LEVELS = (0.15, 0.3, 0.5, 0.75, 1.0)
#: calibration samples the losses are measured on (the first ones)
SAMPLES = 32

Feeds = Sequence[Mapping[str, np.ndarray]]


def measured_counts(budget: GroupBudget, levels: Sequence[float] = LEVELS) -> list[int]:
    """The distinct allowed removal counts (> 0) at ``levels`` of the group's units."""
    counts = {budget.allowed_floor(count_for_amount(budget.n_units, min(level, 0.999999))) for level in levels}
    counts.add(budget.allowed_floor(budget.cap))
    return sorted(c for c in counts if c > 0)


def run(model: ModelProto | bytes, feeds: Feeds) -> list[np.ndarray]:
    """All outputs of ``model`` on ``feeds``, each output's batches joined (float64, flattened)."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = runtime.session(data)
    parts = [sess.run(None, dict(batch)) for batch in feeds]
    return [
        np.concatenate([np.asarray(p[i], dtype=np.float64).reshape(-1) for p in parts]) for i in range(len(parts[0]))
    ]


def first_samples(
    batches: Iterable[Mapping[str, np.ndarray]], fixed_batch: int | None, samples: int = SAMPLES
) -> Feeds:
    """The first ``samples`` samples' feeds from ``batches`` made of ``samples`` each (one batch),
    or of a batch size the model fixes (``fixed_batch``: as many batches as make ``samples``)."""
    count = max(1, samples // fixed_batch) if fixed_batch else 1
    return [{k: np.asarray(v) for k, v in batch.items()} for batch in itertools.islice(batches, count)]


def relative_error(dense: Sequence[np.ndarray], pruned: Sequence[np.ndarray]) -> float:
    """``Σ_o ‖ŷ_o − y_o‖² / Σ_o ‖y_o‖²`` over the outputs of the same shape (see module docstring);
    ``inf`` where an output is not finite or changes shape."""
    num = den = 0.0
    for y, p in zip(dense, pruned, strict=True):
        if y.shape != p.shape or not np.all(np.isfinite(p)):
            return float("inf")
        num += float(np.sum((p - y) ** 2))
        den += float(np.sum(y**2))
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def loss_curves(
    gids: Sequence[int],
    budgets: Sequence[GroupBudget],
    orders: Mapping[int, np.ndarray],
    prune: Callable[[dict[int, np.ndarray]], ModelProto],
    dense_model: ModelProto,
    feeds: Feeds,
    *,
    levels: Sequence[float] = LEVELS,
    log_probabilities: Sequence[bool] = (),
    say: Callable[[str], None] | None = None,
) -> dict[int, np.ndarray]:
    """Per group id, its loss at every allowed count (:func:`~onnxprune.sparsity.channels.loss_at_steps`).

    ``orders[gid]``: the group's units in removal order; ``prune(removal)`` returns a pruned
    copy of the model. A group whose pruned model does not run, or gives non-finite
    outputs, is left out (the caller keeps it whole), with a warning. ``log_probabilities[o]``:
    output ``o`` holds log-probabilities (compared as ``exp``).
    """
    exp = tuple(log_probabilities)

    def outputs(model: ModelProto) -> list[np.ndarray]:
        return [np.exp(y) if i < len(exp) and exp[i] else y for i, y in enumerate(run(model, feeds))]

    dense = outputs(dense_model)
    out: dict[int, np.ndarray] = {}
    for gid, budget in zip(gids, budgets, strict=True):
        counts, losses = [], []
        try:
            for count in measured_counts(budget, levels):
                loss = relative_error(dense, outputs(prune({gid: np.sort(orders[gid][:count])})))
                if not np.isfinite(loss):
                    raise ValueError(f"the outputs are not finite with {count} unit(s) removed")
                counts.append(count)
                losses.append(loss)
        except Exception as exc:  # onnxruntime raises its own types
            log.warning("channel group %d: loss not measured, the group is kept whole (%s)", gid, exc)
            continue
        out[gid] = loss_at_steps(budget, counts, losses)
        log.debug("channel group %d: loss %s at counts %s", gid, np.round(losses, 5).tolist(), counts)
        if say is not None:
            say(f"group {gid} loss measured")
    return out
