"""The unstructured (and N:M) magnitude pass: decide counts, compute masks, write zeros.

Decide, then apply. Discovery finds the weights the config's :class:`~onnxprune.config.Selection`
selects; :func:`plan_targets` decides for each prunable tensor, from the
:class:`~onnxprune.config.Allocation` (and the :class:`~onnxprune.config.Ranking` for a global
threshold), either a count (local, global or plan) or an N:M pattern; :func:`prune_weights`
turns each decision into a mask by the ranking's keys (:func:`target_mask`, with the pure-numpy
functions of :mod:`onnxprune.sparsity`) and writes the zeros into the tensor's own bytes. A tensor that gains no new zero is not rewritten, so it stays
byte-identical, as does every tensor that is not a pruned weight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune import sparsity
from onnxprune.config import Allocation, PruneConfig, Ranking
from onnxprune.errors import Message, OptionError, opt
from onnxprune.graph import tensors
from onnxprune.graph.discovery import NONFINITE, Inventory, Weight, discover
from onnxprune.graph.tensors import FLOAT_TYPES
from onnxprune.graph.writer import Replacement, replaceable
from onnxprune.passes.base import Contract, Pass, PassContext, PassResult, Progress, prune_pass_result
from onnxprune.passes.result import LayerResult, PruneResult
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
    threshold: int | None = None  # the count-th smallest magnitude key, when a global threshold gives it

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


class _LazyKeys(Sequence[np.ndarray]):
    """A criterion's global keys of each tensor, computed on access and never stored."""

    def __init__(self, protos: list[TensorProto], keys: Callable[[np.ndarray], np.ndarray]) -> None:
        self._protos = protos
        self._keys = keys

    def __len__(self) -> int:
        return len(self._protos)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        return self._keys(tensors.read_array(self._protos[index]))


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


def plan_targets(allocation: Allocation, ranking: Ranking, inventory: Inventory) -> dict[str, Target]:
    """Decide what happens to every prunable tensor of ``inventory`` by ``allocation`` (see
    module docstring); ``ranking``'s criterion gives the keys of a global threshold."""
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

    keys: Sequence[np.ndarray]
    global_keys = criterion.global_keys
    assert global_keys is not None  # supports_global
    if criterion.cheap_global_keys:  # one cheap pass (magnitude): recompute rather than hold a model's worth
        keys = _LazyKeys([inventory.proto(w) for w in rest], global_keys)
    else:  # e.g. LAMP needs a sort per tensor: compute once, keep
        keys = [global_keys(tensors.read_array(inventory.proto(w))) for w in rest]
    total = sparsity.count_for_amount(sum(w.numel for w in rest), allocation.sparsity)
    caps = [max(sparsity.count_for_amount(w.numel, allocation.max_layer_sparsity), 0) for w in rest]
    samples = [w.key_sample for w in rest] if criterion.global_is_magnitude else None
    allocated = sparsity.allocate_global(keys, total, caps, sizes=[w.numel for w in rest], samples=samples)
    del keys
    for weight, count in zip(rest, allocated.counts, strict=True):
        # float32 global magnitude keys are the tensor's own magnitude keys: the global
        # threshold is a candidate for its count-th smallest key (checked when masking)
        same_keys = criterion.global_is_magnitude and weight.dtype == "float32"
        threshold = allocated.threshold if same_keys else None
        targets[weight.key] = Target(count=count, amount=count / weight.numel, threshold=threshold)
    return targets


def target_mask(values: np.ndarray, target: Target, weight: Weight, ranking: Ranking, index: int) -> np.ndarray:
    """The mask of ``target`` on the stored tensor by ``ranking``'s keys (True = pruned);
    ``index`` is the tensor's number in the inventory (it seeds a seeded criterion)."""
    keys = CRITERIA[ranking.criterion].mask_keys(values, seed=ranking.seed, index=index)
    if target.nm is not None:
        return sparsity.nm_mask(keys, target.nm[0], target.nm[1], weight.in_axis)
    return sparsity.smallest_k_mask(keys, target.count, threshold=target.threshold)


def _pruned_bits(proto: TensorProto, target: Target, weight: Weight, ranking: Ranking, index: int) -> np.ndarray:
    """The tensor's new bit pattern (an unsigned-integer array) after applying ``target``."""
    values = tensors.read_array(proto)
    return sparsity.apply_mask_bits(float_bits(values), target_mask(values, target, weight, ranking, index))


def _zeros_after(proto: TensorProto, target: Target, weight: Weight, ranking: Ranking, index: int) -> int:
    """Zeros after pruning, known without writing: the K smallest keys include every
    existing zero first, so a count target ends at ``max(K, zeros before)``."""
    if target.nm is None:
        return max(target.count, weight.zeros)
    bits = _pruned_bits(proto, target, weight, ranking, index)
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


def prune_weights(
    model: ModelProto, config: PruneConfig, *, progress: Progress | None = None, defer: bool = False
) -> tuple[PruneResult, dict[str, Replacement]]:
    """Prune ``model`` according to ``config``; returns what was done and deferred writes.

    With ``defer=False`` every pruned tensor is rewritten in place and the dict is empty.
    With ``defer=True`` main-graph tensors stored as raw_data are left untouched and
    returned as replacements (tensor name -> function giving the pruned bytes) for the
    streaming writer, so the model is never copied; the rest is rewritten in place.
    """
    inventory = discover(model, config.selection)
    targets = plan_targets(config.allocation, config.ranking, inventory)
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
        zeros_after = _zeros_after(proto, target, weight, config.ranking, index)
        if zeros_after != weight.zeros:
            if defer and not weight.scope and replaceable(proto):
                replacements[weight.name] = partial(
                    _replacement, target=target, weight=weight, ranking=config.ranking, index=index
                )
            else:
                dtype = tensors.read_array(proto).dtype
                tensors.write_array(proto, _pruned_bits(proto, target, weight, config.ranking, index).view(dtype))
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


def _replacement(proto: TensorProto, *, target: Target, weight: Weight, ranking: Ranking, index: int) -> memoryview:
    return memoryview(np.ascontiguousarray(_pruned_bits(proto, target, weight, ranking, index))).cast("B")


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
        result, replacements = prune_weights(model, self.config, progress=context.progress, defer=context.stream)
        counted = {
            layer.key: (layer.numel, layer.zeros_before) for layer in result.layers if layer.dtype in FLOAT_NAMES
        }
        before = param_stats(model, known=counted)  # reads only the tensors discovery did not count
        if replacements:  # the model as it will be written: the deferred tensors are not in it yet
            after = ParamStats(before.parameters, before.nonzeros - result.newly_zeroed)
        else:
            after = param_stats(model)
        context.replacements.update(replacements)
        return prune_pass_result(
            self.name, result, before, after, deferred=len(replacements), nonfinite=nonfinite_skipped(result)
        )
