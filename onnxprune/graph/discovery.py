"""Discovery: every stored tensor that feeds a weight input, with its role and axes.

For each stored float tensor (initializer or Constant node, in the main graph or any
subgraph) the discovery walks forward through transparent ops (Identity, Cast, Transpose,
Reshape, Unsqueeze, Squeeze, Flatten, Slice, Split, Concat, DequantizeLinear) to every
node that finally reads it, and classifies each read with
:meth:`onnxprune.ops.OpSpec.slot` of the op table.
A tensor is a prunable weight only if *every* read is a weight input: a tensor also used
as an embedding table, a bias or a graph output is listed as skipped, with the reason.
Reads of the shape alone (Shape, Size) do not count: pruning keeps shapes.
The output-channel and reduction axes are mapped back through the transparent ops to the
stored tensor's own axes (or left unknown, which only rules out N:M for that tensor).

**Non-finite values.** A tensor holding NaN or ±inf is never pruned: no score ranks it and no
solver fits it, and the model keeps giving NaN whatever is zeroed. :attr:`Weight.nonfinite`
counts them (what :func:`nonfinite_in`, one rule for the whole package, counts: for a tensor read
only as an additive bias only NaN, since attention masks add -inf on purpose) and the tensor is
listed as skipped with the reason. Loading a model for pruning refuses such weights unless
``allow_nonfinite`` (:func:`onnxprune.graph.sanity.check_model`, which uses :func:`stored_reads`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune.errors import Message, opt
from onnxprune.graph import tensors
from onnxprune.graph.index import Scope, node_label
from onnxprune.ops import SHAPE_ONLY, Slot, SlotContext, TransformContext, spec_of
from onnxprune.ops.spec import Shape
from onnxprune.sparsity import global_keys, magnitude_chunks
from onnxprune.sparsity.scores import float_bits
from onnxprune.threads import map_in_threads

log = logging.getLogger(__name__)

ROLE_REASONS = {
    "bias": "bias: not pruned",
    "norm": "normalization parameter: not pruned",
    "embedding": "embedding table read by Gather: not pruned",
}


@dataclass(frozen=True)
class Reader:
    """A node that reads a weight (possibly through transparent ops).

    ``input_index`` is -1 for a pseudo-reader that is no node: the tensor leaving the
    graph as an output (``role`` "output", ``op_type`` "graph output"), or a chain too deep to
    follow (``role`` "too deep").
    """

    node: str
    op_type: str
    input_index: int
    scope: str
    role: str


@dataclass(frozen=True)
class Weight:
    """One stored tensor that feeds weight (or bias/norm/embedding) inputs."""

    name: str
    scope: str
    storage: str  # "initializer" | "constant" | "computed"
    role: str  # "weight" | "bias" | "norm" | "embedding" | "mixed"
    readers: tuple[Reader, ...]
    shape: tuple[int, ...]
    dtype: str
    out_axis: int | None
    in_axis: int | None
    numel: int
    zeros: int
    prunable: bool
    reason: str | None = None
    quantized: bool = False
    #: NaN and infinite elements (see :func:`nonfinite_in`): never pruned when any
    nonfinite: int = 0
    #: a strided sample of the tensor's global magnitude keys (see sparsity.global_keys)
    key_sample: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: the flat (C-order) indices of the zeros (``-0`` included) of a float tensor with at most
    #: :data:`ZERO_INDEX_MAX` of them, else None: what is pruned can then be counted without a read
    zero_at: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: what a global allocation reads of the tensor, computed as discovery read it when asked
    #: (``discover(summarize=...)``, e.g. LAMP's bins), else None
    summary: object | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """A unique name: the tensor name, prefixed with its subgraph path if nested."""
        return f"{self.scope}::{self.name}" if self.scope else self.name

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.op_type for r in self.readers if r.role == "weight"))

    @property
    def nodes(self) -> tuple[str, ...]:
        """Names of the nodes that read the tensor (pseudo-readers left out)."""
        return tuple(dict.fromkeys(r.node for r in self.readers if r.input_index >= 0))


@dataclass(frozen=True)
class DiscoveryOptions:
    """Which weights to consider. Regexes match tensor names or reader node names.

    Not validated here: :class:`onnxprune.config.Selection` is the validated subclass (the
    selection part of a :class:`~onnxprune.config.PruneConfig`, ``config.selection``).
    """

    min_size: int = 256
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ()


@dataclass
class Inventory:
    """All discovered weights, and access to their TensorProtos and values (for the passes)."""

    weights: list[Weight]
    _protos: dict[str, TensorProto] = field(repr=False, default_factory=dict)
    #: what reads the values (a lazy source when the model's external data is not loaded)
    read: tensors.ArrayReader = field(repr=False, default=tensors.read_array)

    def proto(self, weight: Weight) -> TensorProto:
        return self._protos[weight.key]

    def array(self, weight: Weight) -> np.ndarray:
        """The values of ``weight`` (read-only; memory-mapped when read from a lazy source)."""
        return self.read(self._protos[weight.key])

    @property
    def prunable(self) -> list[Weight]:
        return [w for w in self.weights if w.prunable]

    @property
    def skipped(self) -> list[Weight]:
        return [w for w in self.weights if not w.prunable]


@dataclass
class _Trace:
    slots: list[tuple[Reader, Slot, tuple[int | None, ...]]] = field(default_factory=list)
    others: list[Reader] = field(default_factory=list)
    quantized: bool = False


def _walk(
    scope: Scope, name: str, shape: Shape, axis_map: tuple[int | None, ...], trace: _Trace, depth: int = 0
) -> None:
    """Follow ``name`` (whose axes map to the stored tensor's by ``axis_map``) to its readers."""
    if depth > 32:
        trace.others.append(Reader("?", "?", -1, scope.path, "too deep"))
        return
    if scope.is_output(name):
        trace.others.append(Reader(name, "graph output", -1, scope.path, "output"))
    for use in scope.uses.get(name, []):
        node, index = use.node, use.index
        label = node_label(node)
        spec = spec_of(node)
        transform = spec.transform(TransformContext(node, index, shape, use.scope.const_value))
        if transform is not None:
            outputs = [out for out in node.output if out]
            if outputs:
                trace.quantized |= transform.quantized
                new_map = tuple(None if m is None else axis_map[m] for m in transform.axis_map)
                for out in outputs:  # several for Split
                    _walk(use.scope, out, transform.shape, new_map, trace, depth + 1)
                continue
        slot = spec.slot(SlotContext(node, index, len(shape), use.scope.producer_op))
        if slot == SHAPE_ONLY:
            continue
        reader = Reader(label, node.op_type, index, use.scope.path, slot.role)
        if slot.role == "other":
            trace.others.append(reader)
        else:
            trace.slots.append((reader, slot, axis_map))


def _axes(trace: _Trace) -> tuple[int | None, int | None]:
    """The stored tensor's (out, in) axes, if every weight reader agrees on them (a reader whose
    slot names an axis its input does not have agrees with none: a malformed model)."""
    found = set()
    for _, slot, axis_map in trace.slots:
        if slot.role != "weight":
            continue
        axes = (slot.out_axis, slot.in_axis)
        if any(a is not None and not -len(axis_map) <= a < len(axis_map) for a in axes):
            return None, None
        found.add(tuple(None if a is None else axis_map[a] for a in axes))
    return found.pop() if len(found) == 1 else (None, None)  # type: ignore[return-value]


def _role(trace: _Trace) -> str | None:
    roles = {s.role for _, s, _ in trace.slots}
    if not roles:
        return None
    if roles == {"weight"} and not trace.others:
        return "weight"
    if len(roles) == 1 and not trace.others:
        return roles.pop()
    return "mixed" if "weight" in roles else sorted(roles)[0]


def _matches(patterns: Iterable[str], names: Iterable[str]) -> bool:
    names = list(names)
    return any(re.search(p, n) for p in patterns for n in names)


#: How the reason of a tensor holding NaN or infinite values begins (one category in counts).
NONFINITE = "non-finite values"


def nonfinite_in(role: str, nan: int, infinite: int) -> int:
    """The non-finite elements that matter in a tensor of ``role``: NaN and ±inf, except that a
    tensor read only as an additive bias may hold ±inf (an attention mask adds -inf)."""
    return nan + (0 if role == "bias" else infinite)


def nonfinite_reason(count: int) -> str:
    """The skip reason of a tensor holding ``count`` NaN or infinite values."""
    return f"{NONFINITE}: {count} NaN or infinite, not pruned"


def _decide(
    weight_role: str,
    trace: _Trace,
    tensor: TensorProto,
    readers: tuple[Reader, ...],
    options: DiscoveryOptions,
    nonfinite: int = 0,
) -> str | None:
    """Why this tensor is not pruned, or None if it is a prunable weight."""
    if weight_role == "mixed":
        other = next((r for r in (*trace.others, *(r for r, s, _ in trace.slots if s.role != "weight"))), None)
        what = (
            "a graph output"
            if other and other.role == "output"
            else (f"input {other.input_index} of {other.op_type} '{other.node}'" if other else "something else")
        )
        return f"also read as {what}, not only as a weight: pruning it would change that too"
    if weight_role != "weight":
        return ROLE_REASONS.get(weight_role, f"{weight_role}: not pruned")
    if trace.quantized or not tensors.is_float(tensor):
        if trace.quantized:
            return "quantized weight (read through DequantizeLinear): not pruned"
        return f"dtype {tensors.dtype_name(tensor)} is not a float type: not pruned"
    if nonfinite:
        return nonfinite_reason(nonfinite)
    names = (tensor.name, *(r.node for r in readers))
    ops = {r.op_type for r in readers if r.role == "weight"}
    if options.op_types and not ops & set(options.op_types):
        return Message(f"op {'/'.join(sorted(ops))} not selected by {opt('op_types')}")
    if options.include and not _matches(options.include, names):
        return Message(f"not matched by {opt('include')}")
    if options.exclude and _matches(options.exclude, names):
        return Message(f"matched by {opt('exclude')}")
    size = tensors.numel(tensor)
    if size < options.min_size:
        return Message(f"{size} elements, below {opt('min_size', options.min_size)}")
    return None


#: at most about this many keys of each float tensor are kept as a sample (global allocation)
KEY_SAMPLE = 4096


#: the flat indices of a float tensor's zeros are kept when it has at most this many (see
#: :attr:`Weight.zero_at`)
ZERO_INDEX_MAX = 1 << 16


class _Counted(NamedTuple):
    """What one read of a stored tensor gives discovery (see :func:`_count_values`)."""

    zeros: int
    key_sample: np.ndarray | None
    nonfinite: tuple[int, int]  # (NaN, ±inf)
    zero_at: np.ndarray | None
    summary: object | None = None


def _count_values_of(
    found: _Stored,
    *,
    read: tensors.ArrayReader,
    summarize: Callable[[np.ndarray], object] | None = None,
    min_size: int = 0,
) -> _Counted:
    """:func:`_count_values` of a stored tensor, and ``summarize`` of its values, read the same
    time, when it is a float weight of ``min_size`` elements or more with no NaN or ±inf."""
    counted = _count_values(found.tensor, read)
    if (
        summarize is None
        or found.role != "weight"
        or not tensors.is_float(found.tensor)
        or tensors.numel(found.tensor) < min_size
        or sum(counted.nonfinite)
    ):
        return counted
    return counted._replace(summary=summarize(read(found.tensor)))


def _count_values(tensor: TensorProto, read: tensors.ArrayReader = tensors.read_array) -> _Counted:
    """Zeros of the tensor, a strided sample of its global keys, its (NaN, ±inf) counts, and the
    flat indices of its zeros when it is a float tensor with at most :data:`ZERO_INDEX_MAX` of
    them (else None): read once, used four times."""
    if not tensors.is_float(tensor):
        return _Counted(int(tensors.numel(tensor) - np.count_nonzero(read(tensor))), None, (0, 0), None)
    values = read(tensor)
    sample = global_keys(values.reshape(-1)[:: max(1, values.size // KEY_SAMPLE)])
    zeros, nan, inf = 0, 0, 0
    where: list[np.ndarray] | None = []
    # one chunked pass gives all: zeros are key 0, NaN and ±inf the largest keys
    for start, _, keys in magnitude_chunks(float_bits(values).reshape(-1)):
        found_zeros = keys.size - int(np.count_nonzero(keys))
        zeros += found_zeros
        if found_zeros and where is not None:
            if zeros > ZERO_INDEX_MAX:
                where = None
            else:
                where.append(start + np.flatnonzero(keys == 0))
        found = tensors.nonfinite_in_keys(keys, dtype=values.dtype)
        nan, inf = nan + found[0], inf + found[1]
    zero_at = None if where is None else np.concatenate([np.empty(0, dtype=np.intp), *where])
    return _Counted(zeros, sample, (nan, inf), zero_at)


@dataclass
class _Stored:
    """A stored tensor that some node reads as a weight, bias, norm parameter or embedding."""

    scope: Scope
    name: str
    tensor: TensorProto
    storage: str
    trace: _Trace
    role: str

    @property
    def key(self) -> str:
        return f"{self.scope.path}::{self.name}" if self.scope.path else self.name


def _stored(root: Scope, *, external: bool = False) -> Iterator[_Stored]:
    """Every stored tensor (initializer or Constant, external data loaded; with ``external`` also
    those whose external data is not) with a role, traced to its readers; no value is read."""
    for scope in root.all_scopes():
        stored = [(n, t, "initializer") for n, t in scope.initializers.items()]
        stored += [(n, scope.stored_tensor(n), "constant") for n in scope.constants]
        for name, tensor, storage in stored:
            if tensor is None or (tensor.data_location == TensorProto.EXTERNAL and not external):
                continue
            shape = tuple(int(d) for d in tensor.dims)
            trace = _Trace()
            _walk(scope, name, shape, tuple(range(len(shape))), trace)
            role = _role(trace)
            if role is not None:
                yield _Stored(scope, name, tensor, storage, trace, role)


def stored_reads(model: ModelProto, *, external: bool = False) -> list[tuple[str, TensorProto, str]]:
    """``(key, tensor, role)`` of every tensor :func:`discover` lists as stored (with ``external``
    also those whose external data is not loaded), without reading any value: what a check of
    weight values looks at."""
    return [(found.key, found.tensor, found.role) for found in _stored(Scope.build(model.graph), external=external)]


def discover(
    model: ModelProto,
    options: DiscoveryOptions | None = None,
    *,
    read: tensors.ArrayReader | None = None,
    summarize: Callable[[np.ndarray], object] | None = None,
) -> Inventory:
    """Find every stored tensor read as a weight, bias, normalization parameter or
    embedding table, in the main graph and all subgraphs. ``options`` selects the prunable
    ones (a :class:`~onnxprune.config.Selection` or plain options; default: any of 256+ elements).
    ``read`` reads the values (a :class:`~onnxprune.graph.lazy.TensorSource` for a model whose
    external data is not loaded: its external tensors are then discovered too, read one at a time).
    ``summarize`` is applied to the values of every float weight of ``options.min_size`` elements
    or more without NaN or ±inf as it is read (:attr:`Weight.summary`; e.g. LAMP's bins)."""
    options = options or DiscoveryOptions()
    root = Scope.build(model.graph)
    weights: list[Weight] = []
    protos: dict[str, TensorProto] = {}
    reached: set[tuple[str, int, str]] = set()
    stored = list(_stored(root, external=read is not None))
    # two tensors counted at once (numpy and the page faults of a mapped tensor release the GIL)
    count = partial(_count_values_of, read=read or tensors.read_array, summarize=summarize, min_size=options.min_size)
    counted = map_in_threads(count, stored)
    for found, (zeros, key_sample, (nan, infinite), zero_at, summary) in zip(stored, counted, strict=True):
        tensor, trace, role = found.tensor, found.trace, found.role
        for reader, _, _ in trace.slots:
            reached.add((reader.node, reader.input_index, reader.scope))
        readers = tuple(r for r, _, _ in trace.slots) + tuple(trace.others)
        nonfinite = nonfinite_in(role, nan, infinite)
        reason = _decide(role, trace, tensor, readers, options, nonfinite)
        out_axis, in_axis = _axes(trace) if role == "weight" else (None, None)
        weight = Weight(
            name=found.name,
            scope=found.scope.path,
            storage=found.storage,
            role=role,
            readers=readers,
            shape=tuple(int(d) for d in tensor.dims),
            dtype=tensors.dtype_name(tensor),
            out_axis=out_axis,
            in_axis=in_axis,
            numel=tensors.numel(tensor),
            zeros=zeros,
            prunable=reason is None,
            reason=reason,
            quantized=trace.quantized,
            nonfinite=nonfinite,
            key_sample=key_sample,
            zero_at=zero_at,
            summary=summary,
        )
        weights.append(weight)
        protos[weight.key] = tensor
    weights.extend(_computed_weights(root, reached))
    log.debug("discovered %d tensors, %d prunable", len(weights), sum(w.prunable for w in weights))
    return Inventory(weights, protos, read or tensors.read_array)


def _computed_weights(root: Scope, reached: set[tuple[str, int, str]]) -> list[Weight]:
    """Weight inputs (:attr:`onnxprune.ops.OpSpec.weight_inputs`) that no stored tensor reaches."""
    found = []
    for scope in root.all_scopes():
        for node in scope.graph.node:
            groups = spec_of(node).weight_inputs
            label = node_label(node)
            for group in groups:
                if any((label, i, scope.path) in reached for i in group):
                    continue
                index = group[0]
                if len(node.input) <= index or not node.input[index]:
                    continue
                name = node.input[index]
                producer = scope.producer_op(name) or "a graph input"
                reader = Reader(label, node.op_type, index, scope.path, "weight")
                found.append(
                    Weight(
                        name=name,
                        scope=scope.path,
                        storage="computed",
                        role="weight",
                        readers=(reader,),
                        shape=(),
                        dtype="?",
                        out_axis=None,
                        in_axis=None,
                        numel=0,
                        zeros=0,
                        prunable=False,
                        reason=f"computed at run time by {producer}, not stored in the model",
                    )
                )
    return found
