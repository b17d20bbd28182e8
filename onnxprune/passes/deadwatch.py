"""Does a pruned model have anything for the dead-channel pass? A cheap watch.

A channel can only be dead if some stored tensor has an all-zero slice along its first
or last axis (a producer's filter or output column, a depthwise filter) or a zero
BatchNormalization scale. After streamed unstructured pruning the pruned bytes exist only
while the writer streams them, so the watch wraps each deferred replacement and looks at
the bytes as they pass; tensors pruned in place or left alone are looked at directly when
they hold zeros. Only when the watch fires does the (slower) dead-channel pass run, on
the written model: the common case costs one ``any`` per slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune.config import StructureConfig
from onnxprune.graph import tensors
from onnxprune.graph.writer import Replacement
from onnxprune.ops import constant_tensor, spec_of
from onnxprune.passes.base import Contract, Pass, PassContext, PassResult, not_run
from onnxprune.passes.result import LayerResult


def has_zero_slice(values: np.ndarray) -> bool:
    """True if a slice along the first or the last axis is all zero (raw bits: +0 only)."""
    if values.ndim == 0 or values.size == 0:
        return False
    if values.ndim == 1:
        return bool((values == 0).any())
    rows = values.reshape(values.shape[0], -1)
    if not rows.any(axis=1).all():
        return True
    cols = values.reshape(-1, values.shape[-1])
    return not bool(cols.any(axis=0).all())


class DeadWatch:
    """Collects whether any watched tensor could make a channel dead."""

    def __init__(self) -> None:
        self.fired: list[str] = []

    def wrap(self, replacements: Mapping[str, Replacement]) -> dict[str, Replacement]:
        """The same replacements, each looking at the bytes it returns."""
        return {name: self._wrapped(name, fn) for name, fn in replacements.items()}

    def _wrapped(self, name: str, fn: Replacement) -> Replacement:
        def replacement(proto: TensorProto) -> memoryview:
            view = fn(proto)
            if not self.fired:
                itemsize = tensors.data_bytes(proto) // max(tensors.numel(proto), 1)
                dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(itemsize)
                if dtype is not None and has_zero_slice(np.frombuffer(view, dtype=dtype).reshape(tuple(proto.dims))):
                    self.fired.append(name)
            return view

        return replacement

    def look(self, model: ModelProto, layers: Iterable[LayerResult], skip: Iterable[str]) -> None:
        """Look at the main-graph tensors of ``layers`` that hold zeros (not in ``skip``)."""
        skip = set(skip)
        stored = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            value = constant_tensor(node)
            if value is not None:
                stored[node.output[0]] = value
        scales = {
            n.input[i]
            for n in model.graph.node
            if (i := spec_of(n).channel_scale_input(n)) is not None and len(n.input) > i
        }
        for layer in layers:
            if layer.scope or layer.name in skip or not layer.zeros_after or layer.name not in stored:
                continue
            if len(layer.shape) < 2 and layer.name not in scales:
                continue  # a zero bias, mean or shift kills no channel
            if has_zero_slice(tensors.read_array(stored[layer.name])):
                self.fired.append(layer.name)
                return


class DeadChannelPass(Pass):
    """The dead-channel pass after weight pruning: units constant wherever they are read go
    (exact), and the graph is left as it is unless some do (``config`` removes dead
    channels only, without folding first: see :func:`watchable`).

    Because finding nothing leaves the model untouched, the pipeline may put it behind a
    :class:`DeadWatch` after a streaming weight pass and run it (on the written model) only
    when the watch fires; :func:`not_dead` is its result when it does not. It runs
    :func:`~onnxprune.passes.structural.run_structural`, imported only when it runs.
    """

    name = "dead_channels"
    contract = Contract(reads=("model", "input_shapes"), needs=("model",))

    def __init__(self, config: StructureConfig) -> None:
        if not watchable(config):
            raise ValueError(f"the dead-channel pass removes dead channels only, after a weight pass: got {config}")
        self.config = config

    def run(self, model: ModelProto, context: PassContext) -> PassResult:
        from onnxprune.passes.structural import run_structural

        return run_structural(self.name, self.config, model, context, fold_first=False)


@dataclass(frozen=True)
class AfterWeights(StructureConfig):
    """The options of the channel pass the pipeline runs by itself after a weight pass
    (:func:`onnxprune.passes.pipeline.after_weights`): the same fields as
    :class:`~onnxprune.config.StructureConfig`; the type is the pipeline's decision that the
    pass does not fold constants before its analysis, so the graph is left as it is unless
    units go, and that a dead-channel pass may be watched (:func:`watchable`)."""


def watchable(config: StructureConfig) -> bool:
    """True when the channel pass of ``config`` leaves the model untouched if nothing is
    dead (the pass after weights, dead channels only): a watch can decide to skip it."""
    return isinstance(config, AfterWeights) and config.dead_channels and not config.structured


#: Why the dead-channel pass did not run when its watch saw nothing.
NOTHING_DEAD = (
    "no pruned tensor has an all-zero slice along its first or last axis, nor a norm a zero scale: "
    "no channel can be dead, so the pass did not run"
)


def not_dead() -> PassResult:
    """The result of the dead-channel pass its watch skipped."""
    return not_run(DeadChannelPass.name, NOTHING_DEAD)
