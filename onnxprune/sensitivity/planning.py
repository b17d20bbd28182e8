"""Plans from sensitivity curves, checked on the data and tightened until they hold.

The allocation itself is pure numpy (:mod:`onnxprune.sparsity.plan`): per-layer levels
that reach a target with the least predicted (summed) loss, or the most sparsity whose
predicted loss stays within a budget. Layer losses do not add up exactly, so a
``max_loss`` plan is then measured on the data (the model pruned with the whole plan)
and, while the measured loss exceeds the budget, tightened and measured again.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from onnxprune.data import Dataset
from onnxprune.sensitivity.sweep import Sensitivity, measure_plan
from onnxprune.sparsity.plan import Curve, Plan, exact_target, plan_for_loss, plan_for_target, tighten

log = logging.getLogger(__name__)

MAX_TIGHTEN = 8


def curves_of(sens: Sensitivity) -> list[Curve]:
    return [
        Curve(name=c.weight, levels=np.asarray(c.levels), loss=np.asarray(c.loss), size=c.size) for c in sens.curves
    ]


def plan_from(sens: Sensitivity, *, target: float | None = None, max_loss: float | None = None) -> Plan:
    """The plan for ``target`` (overall sparsity of the analysed weights) or ``max_loss``."""
    curves = curves_of(sens)
    if target is not None:
        return exact_target(plan_for_target(curves, target), curves, target)
    return plan_for_loss(curves, float(max_loss or 0.0))


def tightened_until(
    model_path: str | os.PathLike[str],
    sens: Sensitivity,
    plan: Plan,
    max_loss: float,
    *,
    data: Dataset,
    labels: np.ndarray | None,
) -> tuple[Plan, float]:
    """Measure ``plan``; tighten it while the measured loss exceeds ``max_loss``."""
    curves = curves_of(sens)
    measured = measure_plan(model_path, plan.sparsity, data=data, labels=labels)
    for _ in range(MAX_TIGHTEN):
        if measured <= max_loss or plan.removed == 0:
            break
        log.info("plan at %.1f%% measured loss %.4f > %.4f: tightening", 100 * plan.fraction, measured, max_loss)
        plan = tighten(plan, curves)
        measured = measure_plan(model_path, plan.sparsity, data=data, labels=labels)
    return plan, measured
