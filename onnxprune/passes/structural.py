"""The structural pass: remove whole channels, so the model is smaller and faster everywhere.

1. Channel groups (:mod:`onnxprune.structure.analysis`): the coupled channels that must
   go together. Groups the analysis does not fully understand are blocked, with a reason.
2. Dead units (:mod:`onnxprune.structure.constants`): units constant wherever they are
   read go, their constant folded into the consumers' biases: outputs do not change.
3. Structured removal (optional): per group, the units of lowest importance go, as
   many as ``amount`` (local: per group; global: lowest normalized score across groups,
   weighted by parameters) or until the MACs reach ``target_flops``. Importance is the
   group's weight L2 norm (data-free) or, with calibration data, the output error the
   unit's removal causes at the consumers (:mod:`onnxprune.sparsity.channels`). With
   calibration data (``allocator`` "curves", the default then), how many units each group
   loses comes from its measured loss curve instead: the model's output error with that
   group alone pruned and refitted, at a few counts (:mod:`onnxprune.passes.channel_loss`);
   ``amount`` is then the fraction of the groups' parameters, spread where it costs least.
4. With calibration data, each consumer is refitted by least squares from the kept
   channels, the removed channels' mean folded into its bias (He et al., 2017;
   :mod:`onnxprune.reconstruct.channels`). Statistics are captured once, on the input model.
5. Removal (:mod:`onnxprune.structure.apply`), then folding and cleanup
   (:mod:`onnxprune.graph.cleanup`): BN folded into the producers, constants folded,
   dead nodes and unused initializers dropped, shapes refreshed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from math import gcd

import numpy as np
from onnx import ModelProto

from onnxprune.config import StructureConfig
from onnxprune.data import Dataset
from onnxprune.errors import OptionError, opt
from onnxprune.graph import tensors
from onnxprune.graph.cleanup import CleanupResult, cleanup
from onnxprune.graph.gs_edit import EditGraph
from onnxprune.graph.index import node_label
from onnxprune.ops import spec_of
from onnxprune.passes.base import Contract, Pass, PassContext, PassResult, Progress
from onnxprune.passes.channel_loss import SAMPLES, first_samples, loss_curves
from onnxprune.reconstruct.channels import centred_gram, refit_consumer
from onnxprune.sparsity.channels import GroupBudget, flops_counts, local_counts
from onnxprune.sparsity.channels import global_counts as channel_global_counts
from onnxprune.sparsity.importance import DATA_FREE, IMPORTANCES, ChannelImportance, resolve_importance
from onnxprune.stats import param_stats
from onnxprune.structure.analysis import Analysis, analyze
from onnxprune.structure.apply import apply_removal
from onnxprune.structure.bias import add_to_bias, bias_problem
from onnxprune.structure.constants import DeadUnits, bias_deltas, dead_units, output_scale, propagate
from onnxprune.structure.groups import Group
from onnxprune.structure.sinks import (
    Sink,
    layer_spec,
    removed_features,
    sinks_of,
    store_matrix,
    unit_features,
    weight_matrix,
)

log = logging.getLogger(__name__)

#: An exact run may change outputs by float rounding only (BN folding, summation order).
EXACT_TOLERANCE = 1e-4


def _macs(model: ModelProto, input_shapes: Mapping[str, tuple[int, ...]], notes: list[str]) -> int | None:
    from onnxprune.compute import count_compute
    from onnxprune.errors import OnnxPruneError

    try:
        return count_compute(model, input_shapes=input_shapes).macs
    except OnnxPruneError as exc:
        notes.append(f"MACs not counted: {exc}")
        return None


def _snapshot(model: ModelProto) -> bytes | None:
    try:
        return model.SerializeToString()
    except ValueError:  # over 2 GiB: protobuf cannot serialize it
        log.info("model too large to keep a reference copy: the exact check is skipped")
        return None


def _check_exact(reference: bytes, model: ModelProto, input_shapes: Mapping[str, tuple[int, ...]]) -> float | None:
    """Max |Δ| over all outputs on one synthetic batch; raises if above the tolerance. None
    when the model as it came does not run on that batch (a wrong guess of its dynamic dims,
    or a model onnxruntime refuses): nothing to compare with, and the output's validation,
    which tells those apart, says why."""
    from onnxprune import runtime
    from onnxprune.errors import ValidationError

    before = runtime.session(reference, prepack=False)  # each session runs once
    feeds = runtime.synthetic_feeds(runtime.input_specs(before), dict(input_shapes))
    try:  # the model as it came: if it cannot run on this batch, the removal is not at fault
        expected = before.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own types
        log.warning(
            "the exact check of the removal was skipped: the model does not run on %s (%s)",
            runtime.describe_feeds(feeds),
            runtime.ort_message(exc),
        )
        return None
    try:
        after = runtime.session(model.SerializeToString(), prepack=False)
        outputs = after.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own types
        raise ValidationError(
            f"the model without its dead channels does not run in onnxruntime ({runtime.ort_message(exc)}): this is a "
            f"bug in onnxprune; nothing was written; rerun with {opt('dead_channels', False)} and report it"
        ) from exc
    worst = 0.0
    for a, b in zip(expected, outputs, strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        scale = max(1.0, float(np.abs(a).max()) if a.size else 1.0)
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        worst = max(worst, diff)
        if not diff <= EXACT_TOLERANCE * scale:
            raise ValidationError(
                f"removing dead channels changed the outputs by {diff:.3g} (tolerance {EXACT_TOLERANCE * scale:.3g}): "
                f"this is a bug in onnxprune; nothing was written; rerun with {opt('dead_channels', False)} and report it"
            )
    log.info("exact check: max |output difference| %.3g", worst)
    return worst


@dataclass(frozen=True)
class GroupRecord:
    """One channel group and what the pass did to it."""

    gid: int
    name: str
    sources: tuple[str, ...]
    sinks: tuple[str, ...]
    units: int  # before
    unit_channels: int  # channels per unit (1, or head_dim for attention heads)
    removed: int  # units removed in total
    dead: int  # of which dead (exact)
    params_removed: int
    blocked: str | None = None
    note: str | None = None

    @property
    def kept(self) -> int:
        return self.units - self.removed


@dataclass(frozen=True)
class StructuralResult:
    groups: tuple[GroupRecord, ...]
    params_before: int
    params_after: int
    cleanup: CleanupResult | None
    refits: tuple[tuple[str, float, float], ...]  # (consumer, error before refit, after)
    notes: tuple[str, ...] = ()
    config: dict[str, object] = field(default_factory=dict)
    exact_max_diff: float | None = None  # measured max |Δoutput| of an exact (dead-only) run
    macs_before: int | None = None  # multiply-accumulates at the analysis input shapes
    macs_after: int | None = None

    @property
    def removed_units(self) -> int:
        return sum(g.removed for g in self.groups)

    @property
    def dead_units(self) -> int:
        return sum(g.dead for g in self.groups)

    @property
    def blocked(self) -> tuple[GroupRecord, ...]:
        return tuple(g for g in self.groups if g.blocked)

    @property
    def changed(self) -> bool:
        return self.removed_units > 0

    def to_dict(self) -> dict[str, object]:
        return {
            "groups": [asdict(g) for g in self.groups],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "removed_units": self.removed_units,
            "dead_units": self.dead_units,
            "blocked_groups": len(self.blocked),
            "cleanup": asdict(self.cleanup) if self.cleanup is not None else None,
            "refits": [list(r) for r in self.refits],
            "notes": list(self.notes),
            "config": dict(self.config),
            "exact_max_diff": self.exact_max_diff,
            "macs": [self.macs_before, self.macs_after],
        }


def _params(model: ModelProto) -> int:
    """Parameters as the evaluator counts them (:func:`onnxprune.stats.param_stats`: float
    tensors and quantized layers' integer weights, not shape constants), so the pass's
    counts and the summary of the run agree."""
    return param_stats(model).parameters


def _member_rows(analysis: Analysis, group: Group, kinds: tuple[str, ...]) -> list[np.ndarray]:
    """Per member of ``kinds``: [n, everything unit u owns] (weights, moved axis first)."""
    cx = analysis.context
    blocks = []
    for member in group.members:
        if member.kind not in kinds:
            continue
        values = tensors.read_array(cx.scope.stored_tensor(member.tensor)).astype(np.float64)
        moved = np.moveaxis(values, member.axis, 0)
        part = moved[member.offset : member.offset + member.segment.length]
        blocks.append(part.reshape(group.n, -1))
    return blocks


def _recurrent_labels(analysis: Analysis) -> set[str]:
    """The labels of the recurrent layers (LSTM/GRU/RNN: a bias laid out by gates)."""
    return {node_label(n) for n in analysis.context.model.graph.node if spec_of(n).bias_layout == "gates"}


def _unit_params(analysis: Analysis, group: Group, graph: EditGraph | None = None) -> int:
    """Parameters that go with one unit (every member's elements); a member the edits made
    (a new bias) is sized on their gs graph."""
    cx = analysis.context
    total = 0
    for member in group.members:
        made = graph.constant(member.tensor) if graph is not None else None
        shape = tuple(made.shape) if made is not None else cx.stored_shape(member.tensor)
        if member.axis >= len(shape) or not shape[member.axis]:
            continue  # no elements along the member's axis: nothing goes with a unit
        total += member.segment.per * (int(np.prod(shape)) // shape[member.axis])
    return total


#: MACs by (node, stored weight): a node's MACs shared among the weights it multiplies (an
#: LSTM's ``W`` and ``R``) by their sizes; ``(node, "")`` for a node without a stored weight.
WeightMacs = Mapping[tuple[str, str], float]


def weight_macs(analysis: Analysis) -> dict[tuple[str, str], float]:
    """The main graph's MACs by (node, stored weight) (see :data:`WeightMacs`): a recurrent layer's
    ``D·T·B·G·H·(I + H)`` is ``I : H`` between ``W [D, G·H, I]`` and ``R [D, G·H, H]``, their sizes."""
    from onnxprune.compute import count_compute

    cx = analysis.context

    def size(name: str) -> int:
        return int(np.prod(cx.stored_shape(name))) if cx.scope.stored_tensor(name) is not None else 0

    out: dict[tuple[str, str], float] = {}
    for n in count_compute(cx.model, input_shapes=analysis.input_shapes).nodes:
        if n.scope:
            continue
        weights = [w.strip() for w in (n.weight or "").split(",") if w.strip()]
        sizes = [size(w) for w in weights] if len(weights) > 1 else [1] * len(weights)
        total = sum(sizes)
        for w, share in zip(weights, sizes, strict=True) if total else [("", 1)]:
            out[(n.node, w)] = out.get((n.node, w), 0.0) + n.macs * share / (total or 1)
    return out


def _unit_macs(analysis: Analysis, group: Group, macs: WeightMacs) -> float:
    """MACs one unit costs at first order: its share of every weight that reads or writes it."""
    cx = analysis.context
    total = 0.0
    for member in group.members:
        shape = cx.stored_shape(member.tensor)
        # biases and BN parameters (no MACs of their own) are not in ``macs``
        total += macs.get((member.node, member.tensor), 0.0) * member.segment.per / max(shape[member.axis], 1)
    return total


def _estimated_macs(analysis: Analysis, counts: Mapping[int, int], macs: WeightMacs) -> float:
    """Total MACs once ``counts[gid]`` units go: the MACs of each weight scale with its kept
    inputs × kept outputs (an LSTM's ``W`` and ``R`` each with its own)."""
    cx = analysis.context
    gone: dict[tuple[str, str, str], float] = {}  # (node, weight, "in" | "out") -> fraction of that axis removed
    for group in analysis.prunable:
        count = counts.get(group.gid, 0)
        if not count:
            continue
        for member in group.members:
            if (member.node, member.tensor) not in macs:
                continue
            side = "in" if member.kind == "in" else "out"
            length = max(cx.stored_shape(member.tensor)[member.axis], 1)
            key = (member.node, member.tensor, side)
            gone[key] = gone.get(key, 0.0) + count * member.segment.per / length
    total = 0.0
    for (node, weight), value in macs.items():
        kept_in = max(1.0 - gone.get((node, weight, "in"), 0.0), 0.0)
        total += value * kept_in * max(1.0 - gone.get((node, weight, "out"), 0.0), 0.0)
    return total


def _capture(analysis: Analysis, sinks: list[Sink], data: Dataset, batch_size: int) -> dict[str, object]:
    from onnxprune.capture import capture

    cx = analysis.context
    specs = [spec for spec in (layer_spec(cx, s) for s in sinks) if spec is not None]
    if not specs:
        return {}
    return capture(cx.model, specs, data.batches(batch_size))


def _error_scores(
    analysis: Analysis, group: Group, sinks: list[Sink], stats: Mapping[str, object], importance: ChannelImportance
) -> np.ndarray | None:
    cx = analysis.context
    weights, grams, feats = [], [], []
    for sink in sinks:
        if not any(gid == group.gid for gid, _ in sink.members):
            continue
        st = stats.get(f"sink:{cx.node_id(sink.node)}")
        if st is None or st.H is None or st.mean is None:
            return None
        w, per = weight_matrix(cx, sink)
        length = w.shape[1] // per
        weights.append(w)
        grams.append(centred_gram(st.H[0], st.mean[0], st.rows))
        feats.append(unit_features(sink, group.gid, per, length))
    if not weights:
        return None
    return importance.score(weights, grams, feats, n=group.n)


def _round_units(round_to: int, unit: int) -> int:
    return round_to // gcd(round_to, unit)


def _choose(
    analysis: Analysis,
    config: StructureConfig,
    dead: Mapping[int, np.ndarray],
    scores: Mapping[int, np.ndarray],
    macs: WeightMacs | None,
    losses: Mapping[int, np.ndarray] | None = None,
) -> dict[int, np.ndarray]:
    """Units to remove per group id: dead units first, then by ``scores``, as many as the
    allocation gives (``losses``: measured loss curves, a group without one kept whole)."""
    groups = analysis.prunable
    budgets = _budgets(analysis, config, dead, scores, macs)
    if losses is not None:
        budgets = [
            replace(b, loss=losses[g.gid]) if g.gid in losses else replace(b, fixed=True)
            for g, b in zip(groups, budgets, strict=True)
        ]
    if config.plan:  # per-group amounts; groups not in the plan get ``amount`` (or none)
        unknown = sorted(set(config.plan) - {g.name for g in analysis.groups})
        if unknown:
            raise OptionError(f"the structural plan names unknown channel group(s): {', '.join(unknown[:5])}")
        counts = [
            local_counts([b], config.plan.get(g.name, config.amount or 0.0))[0]
            for g, b in zip(groups, budgets, strict=True)
        ]
    elif config.target_flops is not None:
        counts = _flops_counts(analysis, groups, budgets, config.target_flops, macs or {})
    elif losses is not None:
        counts = _params_counts(analysis, groups, budgets, config.amount or 0.0)
    elif config.scope == "global":
        counts = channel_global_counts(budgets, config.amount or 0.0)
    else:
        counts = local_counts(budgets, config.amount or 0.0)
    chosen: dict[int, np.ndarray] = {}
    for group, budget, count in zip(groups, budgets, counts, strict=True):
        forced = np.asarray(dead.get(group.gid, np.zeros(0, np.int64)), dtype=np.int64)
        # dead units first, then the lowest scores; the total stays an allowed count (round_to, cap):
        # with dead units beyond the budget, the next allowed count up (they cost nothing), else down
        total = max(count, len(forced))
        if total not in budget.steps():
            above = [c for c in budget.steps() if c >= total]
            total = above[0] if above and len(forced) > count else budget.allowed_floor(total)
        units = np.sort(_order(group.n, budget.scores, forced)[:total])
        if len(units):
            chosen[group.gid] = units.astype(np.int64)
    return chosen


def _budgets(
    analysis: Analysis,
    config: StructureConfig,
    dead: Mapping[int, np.ndarray],
    scores: Mapping[int, np.ndarray],
    macs: WeightMacs | None,
) -> list[GroupBudget]:
    """One :class:`GroupBudget` per prunable group: dead units scored 0, unit cost in parameters
    (or MACs with ``target_flops``)."""
    budgets = []
    for group in analysis.prunable:
        s = np.asarray(scores[group.gid], dtype=np.float64).copy()
        units = dead.get(group.gid)
        if units is not None:
            s[units] = 0.0  # dead units cost nothing to remove (and are always removed, below)
        cost = _unit_params(analysis, group) if config.target_flops is None else _unit_macs(analysis, group, macs or {})
        budgets.append(
            GroupBudget(
                n_units=group.n,
                scores=s,
                cost=max(float(cost), 1e-9),
                max_fraction=config.max_fraction,
                round_to=_round_units(config.round_to, group.unit),
            )
        )
    return budgets


def _order(n: int, scores: np.ndarray, forced: np.ndarray) -> np.ndarray:
    """A group's units in removal order: ``forced`` (dead) first, then lowest score, ties by index."""
    forced = np.asarray(forced, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n), forced)
    return np.concatenate([forced, rest[np.lexsort((rest, scores[rest]))]]).astype(np.int64)


def _pruned_copy(
    model: ModelProto,
    analysis: Analysis,
    removal: Mapping[int, np.ndarray],
    sinks: list[Sink],
    stats: Mapping[str, object],
    config: StructureConfig,
) -> ModelProto:
    """A copy of ``model`` with ``removal`` applied and the consumers refitted, as the pass
    itself makes it, less the folding (the analysis's groups are copied: a new bias joins them)."""
    pruned = ModelProto()
    pruned.CopyFrom(model)
    groups = copy.deepcopy(analysis.groups)
    graph = EditGraph(pruned)
    _refit(analysis, sinks, removal, stats, config.damp, config.refit, lambda *_: None, [], graph, groups=groups)
    apply_removal(graph, groups, removal)
    # no folding: the loss is the same up to rounding, and folding costs more than the removal
    cleanup(pruned, fold_bn=False, fold_constants=False, refresh_shapes=len(pruned.graph.value_info) > 0, edits=graph)
    return pruned


def log_probability_outputs(model: ModelProto) -> tuple[bool, ...]:
    """Per graph output: whether it holds log-probabilities, a LogSoftmax's output moved or
    reshaped by ops that keep every value (the op table's ``log_probabilities`` and
    ``moves_elements``)."""
    producer = {out: n for n in model.graph.node for out in n.output if out}
    flags = []
    for output in model.graph.output:
        node = producer.get(output.name)
        while node is not None and spec_of(node).moves_elements and node.input:
            node = producer.get(node.input[0])
        flags.append(node is not None and spec_of(node).log_probabilities)
    return tuple(flags)


def _measured_losses(
    model: ModelProto,
    analysis: Analysis,
    config: StructureConfig,
    dead: Mapping[int, np.ndarray],
    scores: Mapping[int, np.ndarray],
    macs: WeightMacs | None,
    sinks: list[Sink],
    stats: Mapping[str, object],
    data: Dataset,
    say: Callable[..., None],
) -> dict[int, np.ndarray]:
    """Each prunable group's measured loss curve (:func:`~onnxprune.passes.channel_loss.loss_curves`)."""
    groups = analysis.prunable
    budgets = _budgets(analysis, config, dead, scores, macs)
    orders = {
        g.gid: _order(g.n, b.scores, dead.get(g.gid, np.zeros(0, np.int64)))
        for g, b in zip(groups, budgets, strict=True)
    }
    feeds = first_samples(data.batches(SAMPLES), data.layout.fixed_batch())
    return loss_curves(
        [g.gid for g in groups],
        budgets,
        orders,
        lambda removal: _pruned_copy(model, analysis, removal, sinks, stats, config),
        model,
        feeds,
        log_probabilities=log_probability_outputs(model),
        say=say,
    )


def _estimated_params(analysis: Analysis, counts: Mapping[int, int]) -> tuple[float, float]:
    """(parameters before, after) of the stored tensors the prunable groups touch, once
    ``counts[gid]`` units go: each tensor's size scales with the kept fraction of every
    axis that loses units (a weight between two pruned groups on both)."""
    cx = analysis.context
    sizes: dict[str, float] = {}
    gone: dict[tuple[str, int], float] = {}
    seen: set[tuple[str, int, int, int]] = set()
    for group in analysis.prunable:
        for member in group.members:
            shape = cx.stored_shape(member.tensor)
            if member.axis >= len(shape) or not shape[member.axis]:
                continue
            sizes[member.tensor] = float(np.prod(shape))
            key = (member.tensor, member.axis, member.offset, group.gid)
            count = counts.get(group.gid, 0)
            if key in seen or not count:
                continue
            seen.add(key)
            axis = (member.tensor, member.axis)
            gone[axis] = gone.get(axis, 0.0) + count * member.segment.per / shape[member.axis]
    kept = dict(sizes)
    for (tensor, _), fraction in gone.items():
        kept[tensor] *= max(1.0 - fraction, 0.0)
    return sum(sizes.values()), sum(kept.values())


def _target_counts(budgets: list[GroupBudget], target: float, estimate: Callable[[list[int]], float]) -> list[int]:
    """Counts whose estimated kept fraction (``estimate``: of MACs or parameters) comes closest
    to ``target`` from below.

    The budgets' per-unit costs are first-order: removing units on both sides of a layer
    saves less than the sum. So the cost-ordered greedy of :func:`flops_counts` is run
    for a series of internal targets, and the one whose estimate lands just under
    ``target`` is kept (bisection, 30 steps).
    """

    def greedy(internal: float) -> list[int]:
        return flops_counts(budgets, internal, quiet=True).counts

    lo, hi = 1e-6, 1.0 - 1e-9
    best = greedy(hi)
    if estimate(best) <= target:
        return best
    deepest = greedy(lo)
    if estimate(deepest) > target:
        log.warning(
            "channel target %.2f cannot be met within the per-group caps (best %.2f)", target, estimate(deepest)
        )
        return deepest
    best = deepest
    for _ in range(30):
        mid = (lo + hi) / 2
        counts = greedy(mid)
        if estimate(counts) <= target:
            best, lo = counts, mid
        else:
            hi = mid
    return best


def _flops_counts(
    analysis: Analysis, groups: list[Group], budgets: list[GroupBudget], target: float, macs: WeightMacs
) -> list[int]:
    """Counts whose estimated MACs (:func:`_estimated_macs`) come closest to ``target`` from below
    (:func:`_target_counts`)."""
    base = float(sum(macs.values())) or 1.0

    def estimate(counts: list[int]) -> float:
        return _estimated_macs(analysis, {g.gid: c for g, c in zip(groups, counts, strict=True)}, macs) / base

    return _target_counts(budgets, target, estimate)


def _params_counts(analysis: Analysis, groups: list[Group], budgets: list[GroupBudget], amount: float) -> list[int]:
    """Counts that remove ``amount`` of the parameters of the tensors the groups touch, as
    estimated by :func:`_estimated_params` (:func:`_target_counts`)."""

    def estimate(counts: list[int]) -> float:
        before, after = _estimated_params(analysis, {g.gid: c for g, c in zip(groups, counts, strict=True)})
        return after / before if before else 1.0

    return _target_counts(budgets, 1.0 - amount, estimate)


def _refit(
    analysis: Analysis,
    sinks: list[Sink],
    removed: Mapping[int, np.ndarray],
    stats: Mapping[str, object],
    damp: float,
    refit: bool,
    say: Callable[..., None],
    notes: list[str],
    graph: EditGraph,
    *,
    groups: list[Group] | None = None,
) -> tuple[list[tuple[str, float, float]], set[int]]:
    """Refit every refittable consumer that loses inputs; returns records and the node ids done.

    The refit keeps the expected output through the consumer's bias (created where it has
    none); a consumer that cannot take a bias is left as plain removal, with a note.
    ``groups``: the groups a new bias joins (default: the analysis's own).
    """
    cx = analysis.context
    groups = analysis.groups if groups is None else groups
    records, done = [], set()
    for sink in sinks:
        if not any(len(removed.get(gid, ())) for gid, _ in sink.members):
            continue  # loses no input (a loss curve's candidate prunes one group): nothing to read
        st = stats.get(f"sink:{cx.node_id(sink.node)}")
        if st is None or st.H is None or st.mean is None:
            continue
        w, per = weight_matrix(cx, sink)
        gone = removed_features(sink, removed, per, w.shape[1] // per)
        if not gone.any():
            continue
        problem = bias_problem(graph, cx.node_id(sink.node))
        if problem is not None:
            notes.append(f"{sink.label} not refitted, removed inputs' mean not compensated: {problem}")
            log.info("channel refit skipped: %s", problem)
            continue
        fit = refit_consumer(w, st.H[0], st.mean[0], st.rows, ~gone, damp=damp, refit=refit)
        new = w.copy()
        new[:, ~gone] = fit.weight
        store_matrix(graph, cx, sink, new)
        delta = fit.bias_delta * output_scale(cx, sink.node)
        add_to_bias(
            graph,
            groups,
            cx.node_id(sink.node),
            delta.reshape(sink.view.groups, -1) if sink.matrix_kind() == "recurrent" else delta,  # type: ignore[union-attr]
        )
        records.append((sink.label, fit.error_before, fit.error_after))
        done.add(cx.node_id(sink.node))
        say(sink.label)
    return records, done


def remove_channels(
    model: ModelProto,
    config: StructureConfig,
    *,
    calibration: Dataset | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
    check: bool = True,
    fold_first: bool | None = None,
) -> StructuralResult:
    """Run the structural pass on ``model`` in place (see module docstring).

    With only dead units removed and ``check``, the outputs before and after are compared
    on one synthetic batch; a difference above :data:`EXACT_TOLERANCE` (relative to the
    largest output) raises :class:`ValidationError` and the caller writes nothing.

    ``fold_first``: fold constants before the analysis (None: unless ``config`` is the
    pipeline's pass after weights, an :class:`~onnxprune.passes.deadwatch.AfterWeights`,
    which leaves the graph as it is unless units go).
    """
    steps = [0, 4]  # analysis, choice, removal, cleanup (+ capture and one per refitted consumer)

    def say(what: str) -> None:
        steps[0] += 1
        if progress is not None:
            progress(min(steps[0], steps[1]), steps[1], what)

    notes: list[str] = []
    params_before = _params(model)
    macs_before = None
    had_shapes = len(model.graph.value_info) > 0
    if fold_first is None:  # the pipeline's pass after weights leaves the graph as it is unless units go
        from onnxprune.passes.deadwatch import AfterWeights

        fold_first = not isinstance(config, AfterWeights)
    if config.fold and fold_first:
        cleanup(model, fold_bn=False, fold_constants=True, refresh_shapes=False)
    analysis = analyze(model, input_shapes=input_shapes)
    if config.structured and calibration is not None:
        steps[1] += 1 + len(sinks_of(analysis, analysis.prunable))
        if config.measured(with_data=True):
            steps[1] += len(analysis.prunable)
    say("channel groups")
    notes.extend(analysis.notes)
    if config.structured:  # else counted only if units go (a dead-channel pass mostly finds none)
        macs_before = _macs(model, analysis.input_shapes, notes)
    values = propagate(analysis)
    dead = dead_units(analysis, values) if config.dead_channels else None
    dead_map = dict(dead.units) if dead is not None else {}
    removal = dict(dead_map)
    refits: list[tuple[str, float, float]] = []
    refit_done: set[int] = set()
    graph: EditGraph | None = None  # the one gs graph every edit below is made on
    stats: dict[str, object] = {}
    if config.structured:
        groups = analysis.prunable
        sinks = sinks_of(analysis, groups)
        importance = resolve_importance(config.importance, with_data=calibration is not None)
        data_free = IMPORTANCES[DATA_FREE] if importance.needs_data else importance
        if calibration is not None:
            stats = _capture(analysis, sinks, calibration, batch_size)
            say("consumer inputs captured")
        elif importance.needs_data:
            raise OptionError(
                f"{opt('importance', importance.name)} needs calibration data: give {opt('calibration')} "
                f"or {opt('data_free', True)}"
            )
        scores = {}
        recurrent_labels = _recurrent_labels(analysis)
        for group in groups:
            # recurrent units are ranked by the consumers' output error too (the next layer's W,
            # and the layer's own R where its input is captured); without statistics, by their
            # weights, R included (a unit also feeds the layer's own next step)
            recurrent = any(source in recurrent_labels for source in group.sources)
            s = None
            if importance.needs_data:
                s = _error_scores(analysis, group, sinks, stats, importance)
            if s is None:
                kinds = ("out", "in", "param") if recurrent else ("out", "in")
                s = data_free.score(_member_rows(analysis, group, kinds))
            scores[group.gid] = s
        macs = None
        if config.target_flops is not None:
            macs = weight_macs(analysis)
            if macs_before is None:
                macs_before = int(sum(macs.values()))
        losses = None
        if calibration is not None and config.measured(with_data=True):
            losses = _measured_losses(model, analysis, config, dead_map, scores, macs, sinks, stats, calibration, say)
        elif config.measured(with_data=False):
            raise OptionError(f"{opt('allocator', 'curves')} needs calibration data: give {opt('calibration')}")
        removal = _choose(analysis, config, dead_map, scores, macs, losses)
        if calibration is not None:
            graph = EditGraph(model)
            refits, refit_done = _refit(analysis, sinks, removal, stats, config.damp, config.refit, say, notes, graph)
    records = _records(analysis, removal, dead_map, dead, graph)
    if removal and macs_before is None and not config.structured:  # before any edit of the model
        macs_before = _macs(model, analysis.input_shapes, notes)
    reference = _snapshot(model) if removal and not config.structured and check else None
    dead_removed = {
        gid: np.intersect1d(units, dead_map.get(gid, np.zeros(0, np.int64))) for gid, units in removal.items()
    }
    deltas = {k: d for k, d in bias_deltas(analysis, dead_removed, values).items() if k not in refit_done}
    if removal or deltas:
        graph = graph or EditGraph(model)
    for node_id, delta in deltas.items():
        add_to_bias(graph, analysis.groups, node_id, np.asarray(delta))
    say("units chosen")
    cleaned = None
    if removal:
        apply_removal(graph, analysis.groups, removal)
    say("units removed")
    if config.fold and (removal or fold_first):
        # value_info is refreshed where the model had it (so it matches the new channel
        # counts), not added where it had none: with it, onnxruntime's CPU provider fuses
        # Add + LayerNormalization into SkipLayerNormalization, which measured 2–4× slower
        # than the pair on MiniLM (ORT 1.31), so adding it would slow transformers down.
        # The BN folds are made on the same gs graph as the removal, written back once.
        cleaned = cleanup(model, fold_bn=True, fold_constants=True, refresh_shapes=had_shapes, edits=graph)
    else:
        if graph is not None:
            graph.commit()  # a new bias Add is placed right after its MatMul: the graph stays sorted
        if removal:
            del model.graph.value_info[:]
    say("graph folded")
    max_diff = _check_exact(reference, model, analysis.input_shapes) if reference is not None else None
    result = StructuralResult(
        tuple(records),
        params_before,
        _params(model) if removal or deltas or cleaned is not None else params_before,
        cleaned,
        tuple(refits),
        tuple(notes),
        config.as_dict(),
        exact_max_diff=max_diff,
        macs_before=macs_before,
        macs_after=_macs(model, analysis.input_shapes, notes) if removal else macs_before,
    )
    log.info(
        "structural pass: %d unit(s) removed (%d dead) from %d group(s); %d group(s) blocked; params %d -> %d",
        result.removed_units,
        result.dead_units,
        sum(1 for g in records if g.removed),
        len(result.blocked),
        params_before,
        result.params_after,
    )
    return result


def _records(
    analysis: Analysis,
    removal: Mapping[int, np.ndarray],
    dead_map: Mapping[int, np.ndarray],
    dead: DeadUnits | None,
    graph: EditGraph | None,
) -> list[GroupRecord]:
    records = []
    prunable = {g.gid for g in analysis.prunable}
    for group in analysis.groups:
        units = removal.get(group.gid, np.zeros(0, np.int64))
        n_dead = len(np.intersect1d(units, dead_map.get(group.gid, np.zeros(0, np.int64))))
        blocked = "; ".join(group.blocked) if group.blocked else None
        if blocked is None and group.gid not in prunable:
            blocked = "a single unit: nothing to remove"
        note = dead.reasons.get(group.gid) if dead is not None else None
        records.append(
            GroupRecord(
                gid=group.gid,
                name=group.name,
                sources=tuple(group.sources),
                sinks=tuple(group.sinks),
                units=group.n,
                unit_channels=group.unit,
                removed=len(units),
                dead=n_dead,
                params_removed=len(units) * _unit_params(analysis, group, graph),
                blocked=blocked,
                note=note,
            )
        )
    return records


class StructuralPass(Pass):
    """The structural pass as a pipeline step: :func:`remove_channels` with ``config``.

    Counts: channel groups, blocked groups, units removed (of which dead), consumers
    refitted, the model's parameters before and after (and its non-zeros after), MACs
    before and after when they could be counted. Blocked groups are skipped with their
    reason; the notes stay in the detail (:class:`StructuralResult`).
    """

    name = "structural"
    contract = Contract(reads=("model", "calibration", "input_shapes"), needs=("model",))

    def __init__(self, config: StructureConfig, *, fold_first: bool | None = None) -> None:
        self.config = config
        #: fold constants before the analysis (None: unless the pipeline runs this pass by
        #: itself after a weight pass, an :class:`~onnxprune.passes.deadwatch.AfterWeights`)
        self.fold_first = fold_first

    def run(self, model: ModelProto, context: PassContext) -> PassResult:
        return run_structural(self.name, self.config, model, context, fold_first=self.fold_first)


def run_structural(
    name: str, config: StructureConfig, model: ModelProto, context: PassContext, *, fold_first: bool | None = None
) -> PassResult:
    """:func:`remove_channels` with ``config`` on ``model`` as pass ``name`` (structural or
    dead channels), and its uniform result; ``fold_first``: fold constants before the
    analysis (the pass after weights does not: it leaves the graph as it is unless units go)."""
    result = remove_channels(
        model,
        config,
        calibration=context.calibration,
        input_shapes=context.input_shapes,
        progress=context.progress,
        fold_first=fold_first,
    )
    return structural_pass_result(name, result, param_stats(model).nonzeros)


def structural_pass_result(name: str, result: StructuralResult, nonzeros_after: int) -> PassResult:
    """The uniform result of a structural (or dead-channel) run of :func:`remove_channels`."""
    counts = {
        "groups": len(result.groups),
        "blocked_groups": len(result.blocked),
        "units_removed": result.removed_units,
        "dead_units": result.dead_units,
        "refits": len(result.refits),
        "params_before": result.params_before,
        "params_after": result.params_after,
        "nonzeros_after": nonzeros_after,
    }
    if result.macs_before is not None and result.macs_after is not None:
        counts.update(macs_before=result.macs_before, macs_after=result.macs_after)
    skipped = tuple((g.name, g.blocked) for g in result.blocked if g.blocked)
    return PassResult(name, result.changed, counts, result.groups, skipped, result)
