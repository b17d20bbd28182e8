"""The unstructured (and N:M) magnitude pass: decide counts, compute masks, write zeros.

Decide, then apply. Discovery finds the weights the config's :class:`~onnxprune.config.Selection`
selects; :func:`plan_targets` decides for each prunable tensor, from the
:class:`~onnxprune.config.Allocation` (and the :class:`~onnxprune.config.Ranking` for a global
threshold), either a count (local, global or plan) or an N:M pattern; :func:`prune_weights`
turns each decision into a mask by the ranking's keys (:func:`target_mask`, with the pure-numpy
functions of :mod:`onnxprune.sparsity`) and writes the zeros into the tensor's own bytes; for a
criterion that ranks like magnitude the same zeros are written chunk by chunk from the tensor's
bits, with no mask or key array (:func:`~onnxprune.sparsity.zero_smallest_bits`,
:func:`~onnxprune.sparsity.nm_zero_bits`). A tensor that gains no new zero is not rewritten, so
it stays byte-identical, as does every tensor that is not a pruned weight.

**Streamed.** On a model loaded without its external data (``context.tensors``, a
:class:`~onnxprune.graph.lazy.TensorSource`), every value is read through the source, one
tensor at a time and memory-mapped: discovery counts zeros and takes key samples as it reads,
a global threshold recomputes each tensor's keys when the allocation asks for them (LAMP's
bins are taken as discovery reads each tensor, and its bracket reads each once more,
:func:`~onnxprune.sparsity.lamp.lamp_allocation`) instead of holding a model's worth, N:M zero
counts come from the zeros of each group (from discovery's indices when there are few), and
the pruned bytes of every changed tensor are computed only when the writer streams them.
The decisions, and so the bytes written, are those of the run on the loaded model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune import sparsity
from onnxprune.config import Allocation, PruneConfig, Ranking
from onnxprune.errors import Message, OptionError, opt
from onnxprune.graph import lazy, tensors
from onnxprune.graph.discovery import NONFINITE, Inventory, Weight, discover
from onnxprune.graph.lazy import TensorSource
from onnxprune.graph.tensors import FLOAT_TYPES
from onnxprune.graph.writer import Replacement, replaceable
from onnxprune.ops import constant_tensor
from onnxprune.passes.base import Contract, Pass, PassContext, PassResult, Progress, prune_pass_result
from onnxprune.passes.result import LayerResult, PruneResult
from onnxprune.sparsity.blocks import BlockFill
from onnxprune.sparsity.criteria import CRITERIA
from onnxprune.sparsity.scores import float_bits
from onnxprune.stats import ParamStats, param_stats

log = logging.getLogger(__name__)

FLOAT_NAMES = frozenset(FLOAT_TYPES.values())


@dataclass(frozen=True)
class Target:
    """The decision for one tensor: zero ``count`` weights, or apply N:M, or skip."""

    count: int | None = None
    nm: tuple[int, int] | None = None
    amount: float | None = None
    reason: str | None = None
    threshold: int | None = None  # a cut: the count smallest magnitude keys are those below it, then ties
    below: int | None = None  # with threshold: the number of magnitude keys below it

    @property
    def acts(self) -> bool:
        """True if the tensor gets pruned (a count or a pattern), False if it is skipped."""
        return self.count is not None or self.nm is not None

    @property
    def pattern(self) -> str:
        """ "N:M" for an N:M target, else "unstructured"."""
        return "unstructured" if self.nm is None else f"{self.nm[0]}:{self.nm[1]}"


def _plan_entry(plan: Mapping[str, float], weight: Weight) -> float | None:
    for name in (weight.key, weight.name):
        if name in plan:
            return plan[name]
    return None


def _check_plan(plan: Mapping[str, float], inventory: Inventory) -> None:
    known = {w.key: w for w in inventory.weights} | {w.name: w for w in inventory.weights}
    for name in plan:
        weight = known.get(name)
        if weight is None:
            sample = ", ".join(w.key for w in inventory.prunable[:3])
            raise OptionError(
                f"the plan names '{name}', which is not a weight of this model (weights are named like: {sample})"
            )
        if not weight.prunable:
            reason = weight.reason.template if isinstance(weight.reason, Message) else weight.reason
            raise OptionError(f"the plan names '{name}', which is not prunable here: {reason}")


class _LazyArrays(Sequence[np.ndarray]):
    """The stored values of each tensor, read on access (memory-mapped when streamed)."""

    def __init__(self, inventory: Inventory, weights: list[Weight]) -> None:
        self._inventory = inventory
        self._weights = weights

    def __len__(self) -> int:
        return len(self._weights)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return self._inventory.array(self._weights[index])


class _LazyKeys(_LazyArrays):
    """A criterion's global keys of each tensor, computed on access and never stored."""

    def __init__(self, inventory: Inventory, weights: list[Weight], keys: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__(inventory, weights)
        self._keys = keys

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return self._keys(super().__getitem__(index))


def _nm_target(weight: Weight, allocation: Allocation) -> Target:
    """N:M along the reduction axis, or the --nm-fallback when that axis does not allow it."""
    n, m = allocation.pattern
    amount = 1 - n / m
    if weight.in_axis is not None and sparsity.nm_valid(weight.shape, weight.in_axis, m):
        return Target(nm=(n, m), amount=amount)
    if weight.in_axis is None:
        why = "unknown reduction axis"
    else:
        why = f"reduction length {weight.shape[weight.in_axis]} is not a multiple of {m}"
    if allocation.nm_fallback == "unstructured":
        count = sparsity.count_for_amount(weight.numel, amount)
        return Target(count=count, amount=amount, reason=f"{why}: unstructured instead")
    return Target(reason=Message(f"{why}: skipped ({opt('nm_fallback', 'skip')})"))


def plan_targets(
    allocation: Allocation, ranking: Ranking, inventory: Inventory, *, hold_keys: bool = True
) -> dict[str, Target]:
    """Decide what happens to every prunable tensor of ``inventory`` by ``allocation`` (see
    module docstring); ``ranking``'s criterion gives the keys of a global threshold.
    ``hold_keys=False``: never hold every tensor's keys at once (a streamed run), recompute them."""
    _check_plan(allocation.plan, inventory)
    weights = inventory.prunable
    targets: dict[str, Target] = {}
    if allocation.pattern is not None:
        return {weight.key: _nm_target(weight, allocation) for weight in weights}

    rest: list[Weight] = []
    for weight in weights:
        amount = _plan_entry(allocation.plan, weight)
        if amount is not None:
            targets[weight.key] = Target(count=sparsity.count_for_amount(weight.numel, amount), amount=amount)
        elif allocation.sparsity is not None:
            rest.append(weight)
        else:
            targets[weight.key] = Target(reason="not in the plan")
    criterion = CRITERIA[ranking.criterion]
    if allocation.scope == "local" or not criterion.supports_global or not rest:
        if allocation.scope == "global" and not criterion.supports_global:
            log.info(
                "%s criterion has no keys comparable across tensors: global scope allocates like local", criterion.name
            )
        for weight in rest:
            targets[weight.key] = Target(
                count=sparsity.count_for_amount(weight.numel, allocation.sparsity), amount=allocation.sparsity
            )
        return targets

    total = sparsity.count_for_amount(sum(w.numel for w in rest), allocation.sparsity)
    caps = [max(sparsity.count_for_amount(w.numel, allocation.max_layer_sparsity), 0) for w in rest]
    if criterion.global_allocation is not None:  # e.g. LAMP: its own exact search, one read a tensor
        arrays = _LazyArrays(inventory, rest)
        if criterion.tensor_summary is not None:  # discovery computed them as it read each tensor
            allocated = criterion.global_allocation(arrays, total, caps, summaries=[w.summary for w in rest])
        else:
            allocated = criterion.global_allocation(arrays, total, caps)
    else:
        global_keys = criterion.global_keys
        assert global_keys is not None  # supports_global
        keys: Sequence[np.ndarray]
        if criterion.cheap_global_keys or not hold_keys:  # recompute rather than hold a model's worth
            keys = _LazyKeys(inventory, rest, global_keys)
        else:
            keys = [global_keys(inventory.array(w)) for w in rest]
        samples = [w.key_sample for w in rest] if criterion.global_is_magnitude else None
        allocated = sparsity.allocate_global(keys, total, caps, sizes=[w.numel for w in rest], samples=samples)
        del keys
    for i, (weight, count) in enumerate(zip(rest, allocated.counts, strict=True)):
        cut = allocated.cuts[i] if allocated.cuts is not None else None  # e.g. LAMP's, on magnitude keys
        # float32 global magnitude keys are the tensor's own magnitude keys: unless the layer is
        # capped, its count smallest are the keys below the global threshold and its first ties
        same_keys = criterion.global_is_magnitude and weight.dtype == "float32"
        if cut is None and same_keys and allocated.threshold is not None and allocated.below is not None:
            cut = (allocated.threshold, allocated.below[i]) if allocated.below[i] <= count else None
        targets[weight.key] = Target(
            count=count,
            amount=count / weight.numel,
            threshold=None if cut is None else cut[0],
            below=None if cut is None else cut[1],
        )
    return targets


def target_mask(values: np.ndarray, target: Target, weight: Weight, ranking: Ranking, index: int) -> np.ndarray:
    """The mask of ``target`` on the stored tensor by ``ranking``'s keys (True = pruned);
    ``index`` is the tensor's number in the inventory (it seeds a seeded criterion)."""
    keys = CRITERIA[ranking.criterion].mask_keys(values, seed=ranking.seed, index=index)
    if target.nm is not None:
        return sparsity.nm_mask(keys, target.nm[0], target.nm[1], weight.in_axis)
    return sparsity.smallest_k_mask(keys, target.count, threshold=target.threshold)


def _pruned_bits(values: np.ndarray, target: Target, weight: Weight, ranking: Ranking, index: int) -> np.ndarray:
    """The tensor's new bit pattern (an unsigned-integer array) after applying ``target``."""
    if CRITERIA[ranking.criterion].ranks_like_magnitude:  # the same sets, chunked, no mask
        if target.nm is not None:
            return sparsity.nm_zero_bits(float_bits(values), target.nm[0], target.nm[1], weight.in_axis)
        return sparsity.zero_smallest_bits(
            float_bits(values), target.count, threshold=target.threshold, below=target.below
        )
    return sparsity.apply_mask_bits(float_bits(values), target_mask(values, target, weight, ranking, index))


def _zeros_after(values: np.ndarray, target: Target, weight: Weight, ranking: Ranking, index: int) -> int:
    """Zeros after pruning, known without writing: the K smallest keys include every
    existing zero first, so a count target ends at ``max(K, zeros before)``; an N:M target
    at ``Σ max(M - N, zeros of the group)`` when the criterion gives zeros the key 0, which is
    ``(M - N) · numel / M`` without zeros before, and is counted from where they are when
    discovery kept the indices of a few (:attr:`~onnxprune.graph.discovery.Weight.zero_at`):
    no read either way (a tensor of a 12 GB model read once more, from disk, only to count)."""
    if target.nm is None:
        return max(target.count, weight.zeros)
    if weight.zeros == 0:  # every group loses exactly M - N elements, none of them zero before
        return weight.numel // target.nm[1] * (target.nm[1] - target.nm[0])
    if weight.in_axis is not None and CRITERIA[ranking.criterion].ranks_like_magnitude:  # zeros: key 0
        if weight.zero_at is not None:  # discovery kept where the few zeros are
            return sparsity.nm_zeros_after_at(weight.zero_at, weight.shape, target.nm[0], target.nm[1], weight.in_axis)
        return sparsity.nm_zeros_after(float_bits(values), target.nm[0], target.nm[1], weight.in_axis, sign_bits=True)
    bits = _pruned_bits(values, target, weight, ranking, index)
    return int(bits.size - np.count_nonzero(bits << np.uint8(1)))


def _layer_base(weight: Weight) -> dict[str, object]:
    """The fields of a :class:`LayerResult` that come from discovery."""
    return {
        "key": weight.key,
        "name": weight.name,
        "ops": weight.ops,
        "nodes": weight.nodes,
        "scope": weight.scope,
        "readers": tuple((r.scope, r.node) for r in weight.readers if r.role != "output"),
        "shape": weight.shape,
        "dtype": weight.dtype,
        "role": weight.role,
        "storage": weight.storage,
        "numel": weight.numel,
        "zeros_before": weight.zeros,
    }


def nonfinite_skipped(result: PruneResult) -> int:
    """Tensors left as they are because they hold NaN or infinite values (see
    :mod:`onnxprune.graph.discovery`): a count of every weight pass's result."""
    return sum(1 for layer in result.skipped if str(layer.reason or "").startswith(NONFINITE))


def skipped_layer(weight: Weight, target: Target | None) -> LayerResult:
    """The record of a tensor left as it is, with the reason."""
    reason = weight.reason if target is None else target.reason
    return LayerResult(**_layer_base(weight), zeros_after=weight.zeros, pruned=False, reason=reason)


def pruned_layer(weight: Weight, target: Target, zeros_after: int, reason: str | None, **extra: object) -> LayerResult:
    """The record of a pruned tensor; ``extra`` holds the calibrated pass's fields."""
    return LayerResult(
        **_layer_base(weight),
        zeros_after=zeros_after,
        pruned=True,
        pattern=target.pattern,
        target=target.amount,
        reason=reason,
        **extra,
    )


def _summary_of(config: PruneConfig) -> Callable[[np.ndarray], object] | None:
    """What discovery computes of each weight as it reads it for ``config``'s global allocation
    (:attr:`~onnxprune.sparsity.criteria.Criterion.tensor_summary`, e.g. LAMP's bins), if any."""
    allocation = config.allocation
    criterion = CRITERIA[config.ranking.criterion]
    if allocation.scope != "global" or allocation.pattern is not None or allocation.sparsity is None:
        return None
    return criterion.tensor_summary if criterion.global_allocation is not None else None


def prune_weights(
    model: ModelProto,
    config: PruneConfig,
    *,
    progress: Progress | None = None,
    defer: bool = False,
    source: TensorSource | None = None,
    nonfinite: dict[str, int] | None = None,
) -> tuple[PruneResult, dict[str, Replacement]]:
    """Prune ``model`` according to ``config``; returns what was done and deferred writes.

    With ``defer=False`` every pruned tensor is rewritten in place and the dict is empty.
    With ``defer=True`` main-graph tensors stored as raw_data are left untouched and
    returned as replacements (tensor name -> function giving the pruned bytes) for the
    streaming writer, so the model is never copied; the rest is rewritten in place.

    ``source``: ``model`` is a skeleton whose external tensors ``source`` reads (see the
    module docstring); it needs ``defer``, and every external tensor it changes is deferred.
    ``nonfinite`` receives discovery's count of the NaN and ±inf that matter in every stored
    tensor it read (:attr:`~onnxprune.graph.discovery.Weight.nonfinite`), by key.
    """
    if source is not None and not defer:
        raise ValueError("a model read from a lazy source is pruned only by deferred writes")
    inventory = discover(model, config.selection, read=source, summarize=_summary_of(config))
    if nonfinite is not None:
        nonfinite.update((w.key, w.nonfinite) for w in inventory.weights if w.storage != "computed")
    targets = plan_targets(config.allocation, config.ranking, inventory, hold_keys=source is None)
    layers: list[LayerResult] = []
    replacements: dict[str, Replacement] = {}
    total = len(targets)
    done = 0
    for index, weight in enumerate(inventory.weights):
        target = targets.get(weight.key)
        if target is None or not target.acts:
            layers.append(skipped_layer(weight, target))
            continue
        proto = inventory.proto(weight)
        zeros_after = _zeros_after(inventory.array(weight), target, weight, config.ranking, index)
        if zeros_after != weight.zeros:
            if defer and not weight.scope and (replaceable(proto) or lazy.is_external(proto)):
                replacements[weight.name] = partial(
                    _replacement, target=target, weight=weight, ranking=config.ranking, index=index, read=inventory.read
                )
            elif lazy.is_external(proto):
                raise ValueError(f"tensor '{weight.key}' is external and cannot be rewritten in place")
            else:
                values = inventory.array(weight)
                tensors.write_array(
                    proto, _pruned_bits(values, target, weight, config.ranking, index).view(values.dtype)
                )
        layers.append(pruned_layer(weight, target, zeros_after, target.reason))
        done += 1
        if progress is not None:
            progress(done, total, weight.key)
    result = PruneResult(tuple(layers), config.as_dict())
    log.info(
        "pruned %d tensors (%d skipped): %d of %d weights zero (%.1f%%), %d newly zeroed",
        len(result.pruned),
        len(result.skipped),
        result.zeros_after,
        result.weights_total,
        100 * result.sparsity_after,
        result.newly_zeroed,
    )
    return result, replacements


def _replacement(
    proto: TensorProto, *, target: Target, weight: Weight, ranking: Ranking, index: int, read: tensors.ArrayReader
) -> memoryview | BlockFill:
    """The pruned tensor's new bytes; a target ranked like magnitude gives them a block at a time
    (:class:`~onnxprune.sparsity.select.ZeroSmallest`, :class:`~onnxprune.sparsity.nm.ZeroNM`: the
    writer streams them into a data file without a new array the size of the tensor)."""
    values = read(proto)
    if CRITERIA[ranking.criterion].ranks_like_magnitude:
        if target.nm is not None:
            return sparsity.ZeroNM(float_bits(values), target.nm[0], target.nm[1], weight.in_axis)
        return sparsity.ZeroSmallest(float_bits(values), target.count, threshold=target.threshold, below=target.below)
    return memoryview(np.ascontiguousarray(_pruned_bits(values, target, weight, ranking, index))).cast("B")


def _stored(proto: TensorProto, *, source: TensorSource) -> memoryview:
    return memoryview(source.raw(proto))


def _watched(
    model: ModelProto, result: PruneResult, replacements: Mapping[str, Replacement], source: TensorSource
) -> dict[str, Replacement]:
    """Replacements that write the bytes as they are, for the external main-graph tensors of
    ``result`` that hold zeros and are not replaced: a dead-channel watch
    (:class:`~onnxprune.passes.deadwatch.DeadWatch`) looks at them as they are streamed, as at
    every replaced tensor, rather than reading them from a model that does not hold them."""
    external = {t.name for t in model.graph.initializer if lazy.is_external(t)}
    external |= {n.output[0] for n in model.graph.node if (v := constant_tensor(n)) is not None and lazy.is_external(v)}
    return {
        layer.name: partial(_stored, source=source)
        for layer in result.layers
        if not layer.scope and layer.zeros_after and layer.name in external and layer.name not in replacements
    }


class WeightPass(Pass):
    """The unstructured (or N:M) magnitude pass as a pipeline step: :func:`prune_weights`.

    It streams: with ``context.stream`` the pruned bytes of main-graph raw tensors are left
    to the writer (``context.replacements``) and the model is never copied. Counts:
    tensors pruned and skipped, weights, zeros before/after, newly zeroed, tensors
    deferred, tensors left as they are for their NaN or infinite values (``nonfinite``), and the
    model's parameters and non-zeros before and after.
    """

    name = "weights"
    contract = Contract(reads=("model",), needs=("model",), streams=True)

    def __init__(self, config: PruneConfig) -> None:
        self.config = config

    def run(self, model: ModelProto, context: PassContext) -> PassResult:
        source = context.tensors
        reordered = None
        if self.config.permute:  # the reorder's module (and what it imports) loads only when asked for
            from onnxprune.passes.permutation import reorder_first

            reordered = reorder_first(model, self.config, context, data=None)  # magnitude masks: saliency W²
        nonfinite: dict[str, int] = {}
        result, replacements = prune_weights(
            model, self.config, progress=context.progress, defer=context.stream, source=source, nonfinite=nonfinite
        )
        if source is not None:
            context.nonfinite = nonfinite  # every stored tensor read once: the run's finite check reads none again
        if reordered is not None:
            result = replace(result, reordered=reordered)
        counted = {
            layer.key: (layer.numel, layer.zeros_before) for layer in result.layers if layer.dtype in FLOAT_NAMES
        }
        before = param_stats(model, known=counted, read=source)  # reads only the tensors discovery did not count
        if replacements:  # the model as it will be written: the deferred tensors are not in it yet
            after = ParamStats(before.parameters, before.nonzeros - result.newly_zeroed)
        else:
            after = param_stats(model, read=source)
        context.replacements.update(replacements)
        if source is not None:
            context.replacements.update(_watched(model, result, replacements, source))
        return prune_pass_result(
            self.name,
            result,
            before,
            after,
            deferred=len(replacements),
            nonfinite=nonfinite_skipped(result),
            channels_reordered=int((reordered or {}).get("channels", 0)),  # type: ignore[call-overload]
        )
