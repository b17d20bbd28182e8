"""Reorder channels before an N:M pattern so that it keeps more (graph side).

Before the weights are pruned to N:M, every channel group that can be reordered is
reordered: the group's producers' output channels, their per-channel parameters and every
consumer's input channels take the same permutation, so the dense model computes the same
function (up to the order of float sums). The groups are the structural pass's
(:mod:`onnxprune.structure`): a group that something the analysis does not understand reads
is blocked and left as it is, so a reorder is exactly as safe as removing units. A group is
also left as it is when a reader that this run does not prune already holds an N:M-like
pattern along those channels (a weight pruned by an earlier run or recipe stage): the
reorder would scatter it.

A group is reordered when its units are single channels and at least one consumer whose
weight the pattern prunes reads it on its reduction axis in whole groups of ``M``. The order
comes from :func:`onnxprune.sparsity.permute.nm_permutation` on the saliency

    s[r, c] = W[r, c]² · E[x_c²]   (E[x_c²] = 1 without data),

per consumer (rows: every other index of the weight), each consumer's saliency divided by
its total so every consumer counts the same, rows stacked. ``E[x²]`` is the second moment of
the consumer's input feature, captured on the first :data:`MOMENT_SAMPLES` calibration samples
with the dense model. The order is kept only if it lowers the pattern's loss by at least
:data:`MIN_GAIN`.

Large groups are searched for fewer passes so the search stays within :data:`WORK` element
operations per group (the interleaved start alone when even one pass is too much), on at
most :data:`MAX_ELEMENTS` saliencies (rows sampled with a stride beyond that).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from onnxprune.config import PruneConfig
from onnxprune.data import Dataset
from onnxprune.graph import tensors
from onnxprune.graph.discovery import discover
from onnxprune.graph.gs_edit import EditGraph
from onnxprune.passes.base import PassContext
from onnxprune.sparsity.permute import nm_loss, nm_permutation
from onnxprune.structure.analysis import Analysis, analyze
from onnxprune.structure.groups import Group, unit_elements
from onnxprune.structure.sinks import Sink, layer_spec, sinks_of, weight_matrix

log = logging.getLogger(__name__)

#: smallest relative drop of the pattern's loss for which a group is reordered
MIN_GAIN = 0.01
#: element operations one group's search may take (a few seconds of numpy)
WORK = 1e9
MAX_PASSES = 16
#: saliency elements one group's search holds (more rows are sampled with a stride)
MAX_ELEMENTS = 1 << 23
#: samples the second moments ``E[x²]`` are measured on (per-channel means settle fast)
MOMENT_SAMPLES = 32
#: groups each group is offered swaps with, per pass
CANDIDATES = 32


@dataclass(frozen=True)
class Permuted:
    """What the reorder did: groups and channels reordered, the N:M loss (relative, summed over
    the consumers) before and after, and why groups or the whole step were left alone."""

    groups: int = 0
    channels: int = 0
    loss_before: float = 0.0
    loss_after: float = 0.0
    skipped: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def gain(self) -> float:
        """Relative drop of the loss over the reordered groups."""
        return 1.0 - self.loss_after / self.loss_before if self.loss_before > 0 else 0.0


def _nm_targets(model: ModelProto, config: PruneConfig) -> set[str]:
    """Main-graph tensors the pattern prunes along their reduction axis."""
    from onnxprune.passes.unstructured import plan_targets

    inventory = discover(model, config.selection)
    targets = plan_targets(config.allocation, config.ranking, inventory)
    return {w.name for w in inventory.prunable if not w.scope and targets.get(w.key) and targets[w.key].nm is not None}


def _saliency_rows(
    analysis: Analysis, sink: Sink, group: Group, m: int, moments: dict[str, np.ndarray]
) -> np.ndarray | str | None:
    """This sink's saliency ``[rows, group channels]`` (normalized), None if it does not
    count for the pattern, or why the group cannot be reordered."""
    cx = analysis.context
    members = [mem for gid, mem in sink.members if gid == group.gid]
    if len(members) != 1:
        return f"{sink.label} reads it more than once"
    member = members[0]
    seg = member.segment
    if seg.per != 1:
        return None if seg.per % m == 0 else f"{sink.label} reads {seg.per} features per channel"
    if member.offset % m or seg.length % m:
        return f"{sink.label} reads it at an offset that splits groups of {m}"
    try:
        w, positions = weight_matrix(cx, sink)
    except ValueError:
        return None
    cols = w.shape[1] // positions
    w = w.reshape(w.shape[0], cols, positions)[:, member.offset : member.offset + seg.length]
    s = np.square(w)
    second = moments.get(sink.label)
    if second is not None:
        s = s * second.reshape(cols, positions)[member.offset : member.offset + seg.length][None]
    s = s.transpose(0, 2, 1).reshape(-1, seg.length)  # rows: (out, kernel position); columns: channels
    total = float(s.sum())
    return s / total if total > 0 else None


def _first_samples(data: Dataset, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches of the first :data:`MOMENT_SAMPLES` samples (at least one batch)."""
    seen = 0
    for batch in data.batches(min(batch_size, MOMENT_SAMPLES)):
        yield batch
        seen += data.count(batch)
        if seen >= MOMENT_SAMPLES:
            return


def _holds_pattern(analysis: Analysis, sink: Sink, m: int) -> bool:
    """True if the sink's weight already has a zero in every group of ``m`` along the axis the
    group's channels are read on (an N:M pattern): a reorder would scatter it, so the group
    is left alone."""
    stored = analysis.context.scope.stored_tensor(sink.tensor)
    if stored is None:
        return False
    try:
        values = tensors.read_array(stored)
    except ValueError:
        return False
    if values.ndim == 0 or values.shape[sink.axis] % m:
        return False
    nonzero = np.count_nonzero(np.moveaxis(values, sink.axis, -1).reshape(-1, m), axis=1)
    return bool(nonzero.max(initial=0) < m and nonzero.size)


def _moments(analysis: Analysis, sinks: list[Sink], data: Dataset | None, batch_size: int) -> dict[str, np.ndarray]:
    """E[x²] of every input feature of the sinks, by label (empty without data)."""
    if data is None:
        return {}
    from onnxprune.capture import capture

    cx = analysis.context
    specs = {sink.label: layer_spec(cx, sink) for sink in sinks}
    specs = {k: s for k, s in specs.items() if s is not None}
    if not specs:
        return {}
    stats = capture(cx.model, list(specs.values()), _first_samples(data, batch_size), max_cols=1)
    out: dict[str, np.ndarray] = {}
    for label, spec in specs.items():
        st = stats.get(spec.key)
        if st is not None and st.sqnorm is not None and st.rows:
            out[label] = np.asarray(st.sqnorm, dtype=np.float64).sum(0) / st.rows
    return out


def _apply(model: ModelProto, orders: dict[int, tuple[Group, np.ndarray]]) -> None:
    """Reorder every member of each group by its unit order (see module docstring)."""
    graph = EditGraph(model)
    index: dict[tuple[str, int], np.ndarray] = {}
    readers: dict[str, set] = {}
    lengths: dict[str, tuple] = {}
    for group, order in orders.values():
        for member in group.members:
            shape = lengths.get(member.tensor)
            if shape is None:
                shape = lengths[member.tensor] = graph.values(member.tensor).shape
            idx = index.setdefault((member.tensor, member.axis), np.arange(shape[member.axis]))
            idx[member.offset : member.offset + member.segment.length] = unit_elements(
                member.offset, member.segment.per, order
            )
            readers.setdefault(member.tensor, set()).add(member.reader)
    for (tensor, axis), idx in index.items():
        name = graph.own(tensor, readers[tensor])
        graph.set_values(name, np.ascontiguousarray(np.take(graph.values(name), idx, axis=axis)))
    graph.commit()


def permute_for_pattern(
    model: ModelProto,
    config: PruneConfig,
    data: Dataset | None = None,
    *,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    batch_size: int = 32,
) -> Permuted:
    """Reorder the channel groups of ``model`` (in place) for ``config``'s N:M pattern (see
    module docstring); returns what was done. Never raises for a model it cannot analyze:
    the step is then skipped with the reason."""
    assert config.pattern is not None
    n, m = config.pattern
    targets = _nm_targets(model, config)
    if not targets:
        return Permuted(skipped=(("channel order", "no tensor is pruned to N:M"),))
    try:
        analysis = analyze(model, input_shapes=input_shapes)
    except Exception as exc:  # an analysis failure costs the reorder only, never the run
        log.info("channel order left as it is: the channel analysis failed (%s)", exc)
        return Permuted(skipped=(("channel order", f"the channel analysis failed: {exc}"),))
    groups = [g for g in analysis.groups if not g.blocked and g.n >= 2 * m and g.unit == 1]
    readers = sinks_of(analysis, groups)
    sinks = [s for s in readers if s.tensor in targets]
    kept = {s.tensor: s for s in readers if s.tensor not in targets and _holds_pattern(analysis, s, m)}
    moments = _moments(analysis, sinks, data, batch_size)
    skipped: list[tuple[str, str]] = []
    orders: dict[int, tuple[Group, np.ndarray]] = {}
    before = after = 0.0
    channels = 0
    for group in groups:
        parts: list[np.ndarray] = []
        why = next(
            (
                f"{s.label} already holds an N:M pattern that reordering its input would break"
                for s in kept.values()
                if any(gid == group.gid for gid, _ in s.members)
            ),
            None,
        )
        for sink in sinks if why is None else ():
            if not any(gid == group.gid for gid, _ in sink.members):
                continue
            rows = _saliency_rows(analysis, sink, group, m, moments)
            if isinstance(rows, str):
                why = rows
                break
            if rows is not None:
                parts.append(rows)
        if why is not None:
            skipped.append((group.name, why))
            continue
        if not parts:
            continue
        s = np.concatenate(parts, axis=0)
        if s.size > MAX_ELEMENTS:  # a strided sample of the rows: the loss, estimated
            s = s[:: -(-s.size // MAX_ELEMENTS)]
        rows, cols = s.shape
        per_pass = cols // m * min(CANDIDATES, cols // m - 1) * m * m * rows * 2
        passes = int(min(MAX_PASSES, WORK // max(1, per_pass)))
        order = nm_permutation(s, n, m, passes=passes, candidates=CANDIDATES)
        identity = np.arange(cols)
        lb, la = nm_loss(s, identity, n, m), nm_loss(s, order, n, m)
        if lb <= 0 or la > lb * (1 - MIN_GAIN):
            continue
        orders[group.gid] = (group, order)
        before, after, channels = before + lb, after + la, channels + cols
        log.debug("%s: %d channels reordered, N:M loss %.4g -> %.4g", group.name, cols, lb, la)
    if orders:
        _apply(model, orders)
    log.info(
        "channel order for %d:%d: %d group(s), %d channel(s) reordered, loss over them %.4g -> %.4g",
        n,
        m,
        len(orders),
        channels,
        before,
        after,
    )
    return Permuted(len(orders), channels, before, after, tuple(skipped))


def reorder_first(
    model: ModelProto, config: PruneConfig, context: PassContext, *, data: Dataset | None
) -> dict[str, object] | None:
    """The reorder a weight pass makes before it prunes (None when ``config`` asks for none:
    no N:M pattern, or ``permute`` off), as :attr:`PruneResult.reordered` records it. A
    streamed model (``context.tensors``) is left in its order: the reorder edits producers
    and consumers together, which needs the model in memory."""
    if config.pattern is None or not config.permute:
        return None
    if context.tensors is not None:
        log.info("channel order left as it is: the model is streamed tensor by tensor")
        return {"groups": 0, "channels": 0, "skipped": 1, "skipped_first": "the model is streamed tensor by tensor"}
    done = permute_for_pattern(
        model, config, data, input_shapes=dict(context.input_shapes) if context.input_shapes else None
    )
    return {
        "groups": done.groups,
        "channels": done.channels,
        "loss_before": done.loss_before,
        "loss_after": done.loss_after,
        "skipped": len(done.skipped),
        "skipped_first": "; ".join(f"{what}: {why}" for what, why in done.skipped[:3]),
    }
