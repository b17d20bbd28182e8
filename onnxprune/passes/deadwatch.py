"""Does a pruned model have anything for the dead-channel pass? A cheap watch.

A channel is dead when it is constant wherever it is read (:func:`~onnxprune.structure.
constants.dead_units`), and a pruned weight makes a channel constant only through an
all-zero slice along the axis of its *output* channels (a producer's filter or output
column, a depthwise filter, an embedding's feature column) or a zero scale of a norm. An
all-zero slice along a reduction axis (an input column nobody reads any more) changes no
value, so it kills nothing. The op table says which axis is which: the output-channel axis
of a weight is its reader's slot ``out_axis`` (:meth:`~onnxprune.ops.OpSpec.slot`), of an
embedding table every axis but the lookup axis, and grouped ConvTranspose keeps each
group's output channels apart (``W[g·C/g, M/g, k…]``: channel ``(i, j)`` is the slice of
group ``i`` at ``j``). A tensor whose readers the table does not place (read through a
Transpose, by an unknown op) is looked at along its first and last axes, as a filter or
an output column would be.

After streamed unstructured pruning the pruned bytes exist only while the writer streams
them, so the watch wraps each deferred replacement and looks at the bytes as they pass;
tensors pruned in place or left alone are looked at directly when they hold zeros. Only
when the watch fires does the (slower) dead-channel pass run, on the written model: the
common case costs one ``any`` per slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto

from onnxprune.config import StructureConfig
from onnxprune.graph import tensors
from onnxprune.graph.writer import Replacement
from onnxprune.ops import constant_tensor, spec_of
from onnxprune.ops.spec import SlotContext
from onnxprune.passes.base import Contract, Pass, PassContext, PassResult, not_run
from onnxprune.passes.result import LayerResult
from onnxprune.sparsity.blocks import BlockFill, WatchedFill
from onnxprune.sparsity.scores import sign_clear

#: Where a tensor's output channels lie: axes (a zero slice along one is a constant
#: channel), a grouped layout ``("groups", g, axis)``, or None (look at the first and last axes).
ChannelAxes = tuple[int, ...] | tuple[str, int, int] | None


#: A float tensor's bytes viewed so that ±0 are its only zeros, by width (:meth:`DeadWatch.wrap`;
#: 8-bit floats stay raw bits, +0 only: two of their four formats have no -0)
_FLOAT_VIEWS = {2: np.float16, 4: np.float32, 8: np.float64}


def has_zero_slice(values: np.ndarray, axes: ChannelAxes = None) -> bool:
    """True if a slice of ``values`` along one of ``axes`` is all zero (float values: ±0; raw
    bits: all clear).

    ``axes=None``: the first or the last axis; ``("groups", g, axis)``: the slice at ``j`` of
    ``axis`` within one of the ``g`` equal blocks of axis 0 (grouped ConvTranspose). A 1-D
    tensor (a norm's scale) fires on any zero element."""
    if values.ndim == 0 or values.size == 0:
        return False
    if values.ndim == 1:
        return bool((values == 0).any())
    if axes is None:
        axes = (0, values.ndim - 1)
    if axes and axes[0] == "groups":
        _, g, axis = axes
        if values.shape[0] % int(g) or axis != 1:
            axes = (0, values.ndim - 1)
        else:
            blocks = values.reshape(int(g), values.shape[0] // int(g), values.shape[1], -1)
            return not bool(blocks.any(axis=(1, 3)).all())
    for axis in axes:
        slices = np.moveaxis(values, int(axis), 0).reshape(values.shape[int(axis)], -1)
        if not slices.any(axis=1).all():
            return True
    return False


#: runs shorter than this along a plain axis are watched a period (``B · C`` elements) at a time
_SHORT_RUN = 64


@dataclass(frozen=True)
class _Slices:
    """One family of slices of :class:`SliceWatch`: ``count`` slices made of runs of ``inner``
    consecutive elements; run ``q`` is in slice ``q mod modulo`` (a plain axis, ``span`` 0) or
    ``(q // span) · modulo + q mod modulo`` (a grouped layout)."""

    count: int
    inner: int
    modulo: int
    span: int = 0

    def of(self, runs: np.ndarray) -> np.ndarray:
        """The slice of each run number."""
        if not self.span:
            return runs % self.modulo
        return runs // self.span * self.modulo + runs % self.modulo


class SliceWatch:
    """:func:`has_zero_slice` of a tensor whose values are seen a block at a time, in order
    (flat, C order, :meth:`look`), then :meth:`zero_slice` once all are seen.

    A slice along a plain axis of length ``B`` is a set of runs of ``C`` consecutive elements
    (``C`` the product of the later axes): run ``q = flat // C`` belongs to slice ``q mod B``; a
    grouped layout's slice ``(i, j)`` holds the runs of ``C = ∏ dims[2:]`` elements with ``j = q
    mod dims[1]``, ``i = q // (dims[0]/g · dims[1])``. Each block marks the slices of its runs
    that hold a non-zero value (partial runs at its ends alone, whole runs by ``any`` over a
    ``[runs, C]`` view); a plain axis whose runs are shorter than :data:`_SHORT_RUN` is taken a
    whole period at a time instead (``[periods, B, C]``, ``any`` over the first and last axes).
    A slice never marked is all zero. ``clear`` is ANDed with each value first (a float's sign
    bit cleared: ``-0`` is zero too)."""

    def __init__(self, shape: tuple[int, ...], axes: ChannelAxes, clear: np.generic) -> None:
        self.clear = clear
        size = int(np.prod(shape)) if shape else 1
        self.any_zero = False  # a 1-D tensor: any zero element fires
        self.families: list[_Slices] = []
        if len(shape) >= 2 and size:
            if axes is None:
                axes = (0, len(shape) - 1)
            if axes and axes[0] == "groups":
                _, g, axis = axes
                axes = (0, len(shape) - 1)
                if not shape[0] % int(g) and axis == 1:
                    span = shape[0] // int(g) * shape[1]
                    self.families.append(_Slices(int(g) * shape[1], int(np.prod(shape[2:])), shape[1], span))
                    axes = ()
            for axis in axes:
                axis = int(axis)
                self.families.append(_Slices(shape[axis], int(np.prod(shape[axis + 1 :])), shape[axis]))
        self.seen = [np.zeros(family.count, dtype=bool) for family in self.families]
        self.watched = len(shape) >= 1 and size > 0

    def look(self, start: int, block: np.ndarray) -> None:
        """Take the values of elements ``[start, start + block.size)`` (an unsigned view)."""
        if not self.watched or block.size == 0:
            return
        keys = block & self.clear
        if not self.families:
            self.any_zero = self.any_zero or not bool(keys.all())
            return
        for family, seen in zip(self.families, self.seen, strict=True):
            if not seen.all():
                _mark(family, seen, start, keys)

    def zero_slice(self) -> bool:
        """True if a slice was all zero (:func:`has_zero_slice` on the whole tensor)."""
        if not self.watched:
            return False
        if not self.families:
            return self.any_zero
        return not all(seen.all() for seen in self.seen)


def _mark(family: _Slices, seen: np.ndarray, start: int, keys: np.ndarray) -> None:
    """Mark in ``seen`` the slices of ``family`` that hold a non-zero key of elements
    ``[start, start + keys.size)``."""
    step = family.inner
    if not family.span and step < _SHORT_RUN:
        step = family.modulo * family.inner  # whole periods: [periods, B, C]
    head = min(keys.size, -start % step)
    periods = (keys.size - head) // step
    whole = keys[head : head + periods * step]
    if step != family.inner:
        if periods:
            seen |= whole.reshape(periods, family.modulo, family.inner).any(axis=(0, 2))
        for at, part in ((start, keys[:head]), (start + head + periods * step, keys[head + periods * step :])):
            nonzero = np.flatnonzero(part)
            if nonzero.size:
                seen[family.of((at + nonzero) // family.inner)] = True
        return
    if head and keys[:head].any():
        seen[family.of(np.array([start // step]))] = True
    if periods:
        runs = np.flatnonzero(whole.reshape(periods, step).any(axis=1))
        seen[family.of((start + head) // step + runs)] = True
    tail = keys[head + periods * step :]
    if tail.size and tail.any():
        seen[family.of(np.array([(start + keys.size - 1) // step]))] = True


def _read_axes(node: NodeProto, index: int, rank: int, producer_op: Callable[[str], str | None]) -> ChannelAxes | str:
    """The output-channel axes of input ``index`` of ``node`` (a stored tensor of ``rank``),
    "none" where a zero slice cannot make a channel constant (a bias), None: unknown."""
    spec = spec_of(node)
    slot = spec.slot(SlotContext(node, index, rank, producer_op))
    if slot.role == "bias" or slot.role == "shape":
        return "none"
    if slot.role == "embedding":
        lookup = spec.embedding_lookup(node)
        if lookup is None or lookup[0] != index:
            return None
        table_axis = lookup[2] % rank if rank else 0
        return tuple(a for a in range(rank) if a != table_axis)
    if slot.role != "weight" or slot.out_axis is None:
        return None
    fold = spec.output_channel_fold(node)
    if fold is not None and fold.groups is not None and fold.groups > 1 and fold.weight_input == index:
        return ("groups", fold.groups, slot.out_axis)
    return (slot.out_axis,)


def channel_axes(model: ModelProto) -> dict[str, ChannelAxes]:
    """Per main-graph stored tensor (initializer or Constant output): where its output
    channels lie (see :data:`ChannelAxes`), over every node that reads it. A tensor read in
    two layouts, or by a reader the op table does not place, gets None (first and last
    axes); a tensor only biases read is left out (it cannot kill a channel)."""
    graph = model.graph
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    producers: dict[str, str] = {}
    for node in graph.node:
        value = constant_tensor(node)
        if value is not None:
            ranks[node.output[0]] = len(value.dims)
        for out in node.output:
            producers[out] = node.op_type
    found: dict[str, set[object]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name not in ranks:
                continue
            try:
                axes = _read_axes(node, index, ranks[name], producers.get)
            except Exception:  # an op the table cannot place here: look at it conservatively
                axes = None
            found.setdefault(name, set()).add(axes)
    result: dict[str, ChannelAxes] = {}
    for name, reads in found.items():
        reads.discard("none")
        if not reads:
            continue
        result[name] = reads.pop() if len(reads) == 1 else None  # type: ignore[assignment]
    return result


class DeadWatch:
    """Collects whether any watched tensor could make a channel dead.

    ``model``: the model the watched tensors belong to, for where their output channels lie
    (:func:`channel_axes`); without it every tensor is looked at along its first and last axes.
    """

    def __init__(self, model: ModelProto | None = None) -> None:
        self.fired: list[str] = []
        self.axes: dict[str, ChannelAxes] | None = channel_axes(model) if model is not None else None

    def _watched(self, name: str) -> bool:
        """False for a tensor read as a bias only (or not read in the main graph): no zero of it
        kills a channel, and its values need not be read."""
        return self.axes is None or name in self.axes

    def _could_kill(self, name: str, values: np.ndarray) -> bool:
        if not self._watched(name):
            return False
        return has_zero_slice(values, None if self.axes is None else self.axes[name])

    def wrap(self, replacements: Mapping[str, Replacement]) -> dict[str, Replacement]:
        """The same replacements, each looking at the bytes it returns."""
        return {name: self._wrapped(name, fn) for name, fn in replacements.items()}

    def _wrapped(self, name: str, fn: Replacement) -> Replacement:
        def replacement(proto: TensorProto) -> memoryview | BlockFill:
            view = fn(proto)
            if isinstance(view, BlockFill):
                return view if self.fired or not self._watched(name) else self._watched_fill(name, proto, view)
            if not self.fired:
                itemsize = tensors.data_bytes(proto) // max(tensors.numel(proto), 1)
                dtype = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(itemsize)
                if tensors.is_float(proto) and itemsize in _FLOAT_VIEWS:
                    # as floats of the same width, -0.0 is zero too (a masked export's w · 0 keeps
                    # w's sign), with no copy: the bits of every 16-bit format's ±0 are float16's
                    dtype = _FLOAT_VIEWS[itemsize]
                if dtype is not None and self._could_kill(
                    name, np.frombuffer(view, dtype=dtype).reshape(tuple(proto.dims))
                ):
                    self.fired.append(name)
            return view

        return replacement

    def _watched_fill(self, name: str, proto: TensorProto, fill: BlockFill) -> BlockFill:
        """``fill`` looked at a block at a time (:class:`SliceWatch`), the watch fired at its end."""
        floating = tensors.is_float(proto) and fill.dtype.itemsize in _FLOAT_VIEWS
        clear = sign_clear(fill.dtype) if floating else fill.dtype.type(np.iinfo(fill.dtype).max)
        watch = SliceWatch(tuple(proto.dims), None if self.axes is None else self.axes[name], clear)

        def done() -> None:
            if watch.zero_slice() and name not in self.fired:
                self.fired.append(name)

        return WatchedFill(fill, watch.look, done)

    def look(
        self,
        model: ModelProto,
        layers: Iterable[LayerResult],
        skip: Iterable[str],
        read: tensors.ArrayReader | None = None,
    ) -> None:
        """Look at the main-graph tensors of ``layers`` that hold zeros (not in ``skip``); ``read``:
        a lazy source, for a streamed model whose weights are not loaded."""
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
            if (len(layer.shape) < 2 and layer.name not in scales) or not self._watched(layer.name):
                continue  # a zero bias, mean or shift kills no channel
            if self._could_kill(layer.name, (read or tensors.read_array)(stored[layer.name])):
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
