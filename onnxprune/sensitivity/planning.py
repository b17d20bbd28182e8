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
from collections.abc import Callable

import numpy as np

from onnxprune.data import Dataset
from onnxprune.graph.discovery import Weight
from onnxprune.ops import spec_of
from onnxprune.sensitivity.sweep import Sensitivity, feed_batches
from onnxprune.sensitivity.tasks import output_loss, run_outputs
from onnxprune.sparsity.plan import Curve, Plan, exact_target, plan_for_loss, plan_for_target, tighten

log = logging.getLogger(__name__)

MAX_TIGHTEN = 8


class PlanLoss:
    """The loss (as the curves define it) of a whole plan on ``data``: the model is loaded and
    its dense outputs computed once; each call prunes a copy with the plan (weights, or
    channel groups with ``structural``: L2 importance, no refit) and measures it."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        data: Dataset,
        labels: np.ndarray | None,
        structural: bool = False,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        batch_size: int = 64,
    ) -> None:
        from onnxprune.graph.model_io import load_model

        self.model = load_model(model_path)
        self.feeds = feed_batches(data, batch_size)
        self.labels, self.structural, self.input_shapes, self.batch_size = labels, structural, input_shapes, batch_size
        self.dense = tuple(run_outputs(self.model.SerializeToString(), self.feeds))

    def __call__(self, plan: dict[str, float]) -> float:
        import copy

        from onnxprune.config import PruneConfig, StructureConfig
        from onnxprune.passes.structural import remove_channels
        from onnxprune.passes.unstructured import prune_weights

        pruned = copy.deepcopy(self.model)
        if plan and self.structural:
            config = StructureConfig(plan=plan, dead_channels=False, round_to=1)
            remove_channels(pruned, config, input_shapes=self.input_shapes, check=False)
        elif plan:
            prune_weights(pruned, PruneConfig(plan=plan, min_size=0))
        outputs = run_outputs(pruned.SerializeToString(), self.feeds)
        return output_loss(self.dense, outputs, self.labels)


def measure_plan(
    model_path: str | os.PathLike[str], plan: dict[str, float], *, data: Dataset, labels: np.ndarray | None
) -> float:
    """The loss of pruning ``model_path`` with the weight plan ``plan`` (see :class:`PlanLoss`)."""
    return PlanLoss(model_path, data=data, labels=labels)(plan)


def measure_group_plan(
    model_path: str | os.PathLike[str], plan: dict[str, float], *, data: Dataset, labels: np.ndarray | None
) -> float:
    """The loss of removing the channel-group plan ``plan`` (see :class:`PlanLoss`)."""
    return PlanLoss(model_path, data=data, labels=labels, structural=True)(plan)


def curves_of(sens: Sensitivity) -> list[Curve]:
    return [
        Curve(name=c.weight, levels=np.asarray(c.levels), loss=np.asarray(c.loss), size=c.size) for c in sens.curves
    ]


def macs_per_weight(model_path: str | os.PathLike[str], names: list[str]) -> dict[str, float]:
    """For each weight, the MACs of the products it is an operand of, divided by its
    elements: what zeroing one weight saves in non-zero MACs (at the model's declared or
    default shapes; main-graph nodes).

    A node's work is split into parts the way :mod:`onnxprune.compute` counts it (the op
    table's :attr:`~onnxprune.ops.OpSpec.macs`: one part for Conv, Gemm, MatMul; for LSTM, GRU and RNN the input product
    ``W·x_t``, ``D·T·B·G·H·I``, and the recurrent one ``R·h_{t-1}``, ``D·T·B·G·H·H``). Each
    part goes to the stored tensor(s) on its operand (found by discovery, as compute
    finds them), shared by their elements; a tensor read by several nodes sums them.
    """
    from onnxprune.graph.discovery import discover
    from onnxprune.graph.index import node_label
    from onnxprune.graph.model_io import load_model
    from onnxprune.structure.analysis import input_shapes_for, static_shapes

    model = load_model(model_path)
    notes: list[str] = []
    shapes = static_shapes(model, input_shapes_for(model), notes)
    operands: dict[tuple[str, int], list[Weight]] = {}  # (node label, input index) -> stored tensors
    for weight in discover(model).weights:
        if weight.storage == "computed" or not weight.numel:
            continue
        for reader in weight.readers:
            if reader.role == "weight" and reader.input_index >= 0 and not reader.scope:
                operands.setdefault((reader.node, reader.input_index), []).append(weight)
    out = dict.fromkeys(names, 0.0)
    for node in model.graph.node:
        counter = spec_of(node).macs
        if counter is None:
            continue
        label = node_label(node)
        ins = [shapes.get(node.input[i]) if i < len(node.input) else None for i in counter.inputs]
        outs = [shapes.get(node.output[i]) if i < len(node.output) else None for i in counter.outputs]
        if any(shape is None for shape in (*ins, *outs)):
            log.info(
                "MACs of %s '%s' unknown (shapes missing): its weights cost nothing in the plan", node.op_type, label
            )
            continue
        try:
            count = counter.count(node, ins, outs)
        except (ValueError, IndexError, KeyError) as exc:
            log.info("MACs of %s '%s' not counted (%s): its weights cost nothing in the plan", node.op_type, label, exc)
            continue
        total = sum(share for _, share in count.parts)
        for alternatives, share in count.parts:
            stored = next((operands[(label, i)] for i in alternatives if (label, i) in operands), None)
            if not stored or not total:
                continue
            per_element = count.macs * share / total / sum(w.numel for w in stored)
            for weight in stored:
                if weight.key in out:
                    out[weight.key] += per_element
    for note in notes:
        log.info("%s", note)
    return out


def plan_from(
    sens: Sensitivity,
    *,
    target: float | None = None,
    max_loss: float | None = None,
    keep_flops: float | None = None,
    model_path: str | os.PathLike[str] | None = None,
) -> Plan:
    """The plan for ``target`` (overall sparsity of the analysed weights), ``keep_flops``
    (the fraction of the analysed layers' non-zero MACs to keep) or ``max_loss``."""
    curves = curves_of(sens)
    if keep_flops is not None:
        costs = macs_per_weight(model_path or sens.model, [c.name for c in curves])
        curves = [
            Curve(name=c.name, levels=c.levels, loss=c.loss, size=c.size, cost=costs.get(c.name, 0.0)) for c in curves
        ]
        wanted = 1.0 - keep_flops
        return exact_target(plan_for_target(curves, wanted, budget="cost"), curves, wanted)
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
    return _tighten_loop(plan, curves_of(sens), max_loss, PlanLoss(model_path, data=data, labels=labels))


def _tighten_loop(
    plan: Plan, curves: list[Curve], max_loss: float, measure: Callable[[dict[str, float]], float]
) -> tuple[Plan, float]:
    measured = measure(plan.sparsity)
    for _ in range(MAX_TIGHTEN):
        if measured <= max_loss or plan.removed == 0:
            break
        log.info("plan at %.1f%% measured loss %.4f > %.4f: tightening", 100 * plan.fraction, measured, max_loss)
        plan = tighten(plan, curves)
        measured = measure(plan.sparsity)
    return plan, measured


def group_curves(sens: Sensitivity, *, saving: str | None = None) -> list[Curve]:
    """Channel-group curves; with ``saving`` ("latency" or "macs") each unit costs its measured
    share of that (the least-squares slope through 0 of the saving against level, per unit)."""
    curves = []
    for c in sens.curves:
        levels, cost = np.asarray(c.levels), 1.0
        if saving is not None:
            measured = c.latency_saved if saving == "latency" else c.macs_saved
            saved = np.asarray(measured or np.zeros_like(levels))
            slope = float(levels @ saved) / float(levels @ levels) if levels @ levels > 0 else 0.0
            cost = max(slope, 0.0) / max(c.size, 1)
        curves.append(Curve(name=c.weight, levels=levels, loss=np.asarray(c.loss), size=c.size, cost=cost))
    return curves


def plan_groups(
    sens: Sensitivity,
    *,
    target: float | None = None,
    keep_latency: float | None = None,
    keep_flops: float | None = None,
    max_loss: float | None = None,
) -> Plan:
    """A per-group plan: ``target`` (fraction of all groups' units), ``keep_latency`` or
    ``keep_flops`` (the fraction of the model's latency or MACs to keep, predicted from the
    measured savings) or ``max_loss``."""
    from onnxprune.errors import OptionError, opt

    for keep, saving, option in (
        (keep_latency, "latency", opt("keep_latency")),
        (keep_flops, "macs", opt("keep_flops")),
    ):
        if keep is None:
            continue
        curves = group_curves(sens, saving=saving)
        reachable = sum(c.size * c.cost for c in curves)  # every group removed whole
        # what the plan can reach: each group removed up to its highest measured level
        top = sum(c.size * c.cost * float(np.max(c.levels)) for c in curves if not c.fixed)
        wanted = 1.0 - keep
        if reachable <= 0 or wanted >= top:
            raise OptionError(
                f"{option} {keep} is out of reach: removing each channel group up to its highest measured "
                f"level saves about {top:.1%} of the {saving} by the measured curves; keep more of it, "
                f"or measure higher {opt('levels')}"
            )
        return exact_target(plan_for_target(curves, wanted / reachable, budget="cost"), curves, wanted / reachable)
    curves = group_curves(sens)
    if target is not None:
        return exact_target(plan_for_target(curves, target), curves, target)
    return plan_for_loss(curves, float(max_loss or 0.0))


def tightened_groups(
    model_path: str | os.PathLike[str],
    sens: Sensitivity,
    plan: Plan,
    max_loss: float,
    *,
    data: Dataset,
    labels: np.ndarray | None,
) -> tuple[Plan, float]:
    """:func:`tightened_until` for channel-group plans."""
    measure = PlanLoss(model_path, data=data, labels=labels, structural=True)
    return _tighten_loop(plan, group_curves(sens), max_loss, measure)
