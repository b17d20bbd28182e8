"""Streaming serialization of a model with some tensors' bytes replaced on the way out.

Replacing ``raw_data`` inside a parsed ModelProto does not free the old bytes (upb keeps
them in the message's arena until the whole model is freed), and ``SerializeToString``
needs a second full copy. For a model of size S that is 3 S before anything else. This
writer instead walks the model in field-number order, writes every untouched part as its
own serialization, and asks a callback for the new bytes of each replaced tensor just
before writing it, so memory beyond the parsed model is one tensor at a time.

The replacement must have the same length as the tensor's ``raw_data`` (pruning never
changes shapes or dtypes), so every length prefix is known before writing. The output is
byte-identical to ``SerializeToString`` of the model with the replacements applied.

On request the writer also returns the *layout* of large tensors: where each one's
``raw_data`` payload starts in the file and how long it is. That is exactly an ONNX
external-data reference into the written file, which lets :mod:`onnxprune.graph.skeleton`
describe the same model without a second copy of its weights.

**Lazy tensors.** Given a ``source`` (:class:`onnxprune.graph.lazy.TensorSource`), the
model may be a skeleton whose large tensors are external references, read only when
written: :func:`write_model` writes them into the file as ``raw_data`` (what
``onnx.load`` would have given, so the bytes are those of the loaded model written
the same way), and :func:`write_external` writes them into a data file, tensor by tensor,
with the layout ``onnx.save_model`` gives the loaded model after
:func:`onnxprune.graph.model_io.save_external_data` (same order, same offsets, same
entries). Either way the model is never held in memory, only the tensor being written (and
the next one, computed ahead by :func:`write_external`).
With a source, each replaced tensor is also *recorded* (:class:`WrittenTensor`): how many
of its elements changed, a digest of which, and how many of them are not ``+0``, so that a
check of the written file (:mod:`onnxprune.graph.tensor_check`) can compare the bytes on disk
with the input and with what pruning decided.

**Read back.** :func:`write_external` can have each data-file tensor read back as it is
written: its :class:`~onnxprune.graph.direct_io.DirectAppender` reads every transfer back at
once (from the device when the data file is written past the page cache) and compares it with
the stage it wrote, so nothing the size of a tensor is kept for the comparison; the tensors that
read back the same are listed (:data:`ReadBack`), and the check of the file compares only the
others with the input. A model larger than memory is then read once more in all, not twice after
its write (both files, from disk): 12 GB of 0.5 GB tensors, the check took 8.7 s, the
read-backs take about 2 s (cProfile of ``tools/bench_large.py``'s model).

**Blocks.** A replacement may give a tensor's new values a block at a time
(:class:`~onnxprune.sparsity.blocks.BlockFill`, e.g. magnitude pruning's
:class:`~onnxprune.sparsity.select.ZeroSmallest`). :func:`write_external` then fills two buffers
of :data:`BLOCK` elements in turn, one on a thread while the other is written, and records the
tensor from its blocks (:class:`ElementDiff`): no new array the size of the tensor is made,
whose fresh pages cost more than the pruning on the machines measured (README, stop 47).
Everywhere else the fill is made whole.

**One ahead.** :func:`write_external` computes each tensor's bytes (the replacement callbacks:
pruning, the records) on a second thread while it writes the tensor before
(:func:`~onnxprune.threads.computed_ahead`): writing a model larger than the page cache waits
on the disk, and the pruning of the next tensor fills that wait. The callbacks still run one at a time and in
order, and two tensors are alive at once, not one. On ``tools/bench_large.py``'s 12 GB model
(0.5 GB tensors), ``prune --sparsity 0.5`` against a ``cp`` of the same files, the code before
and after run side by side, medians of 3: 2.66× → 2.12× with the read-backs alone, 2.38× →
1.32× with both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

from onnxprune.graph import tensors
from onnxprune.graph.direct_io import DirectAppender
from onnxprune.graph.walk import all_graphs, node_subgraphs
from onnxprune.graph.wire import encode_varint, length_header
from onnxprune.ops import constant_tensor
from onnxprune.sparsity.blocks import BlockFill
from onnxprune.threads import SPLIT_FROM, WORKERS, computed_ahead, in_runs, map_in_threads

if TYPE_CHECKING:
    from onnxprune.graph.lazy import TensorSource

#: the new bytes of a tensor, or its new values a block at a time (:class:`BlockFill`, streamed
#: into a data file by :func:`write_external`, made whole everywhere else)
Replacement = Callable[[TensorProto], bytes | memoryview | BlockFill]
#: tensor name -> (offset, length) of its raw_data payload in the written file
Layout = dict[str, tuple[int, int]]
#: tensors with at least this many bytes of raw_data are recorded in the layout
LAYOUT_MIN_BYTES = 1 << 16
#: tensor name -> what was written for it (see :class:`WrittenTensor`)
Records = dict[str, "WrittenTensor"]
#: tensor name -> (data file, offset, length) of the bytes that read back as written
ReadBack = dict[str, tuple[str, int, int]]
#: elements filled and written at once of a tensor whose new values come a block at a time
#: (:func:`write_external`; a multiple of 8, :class:`ElementDiff`)
BLOCK = SPLIT_FROM
_Lazy = tuple[int, Callable[[], Iterator[bytes]]]
Part = bytes | _Lazy

_RAW_DATA = TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_GRAPH = ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_NODE = GraphProto.DESCRIPTOR.fields_by_name["node"].number
_INITIALIZER = GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_ATTRIBUTE = NodeProto.DESCRIPTOR.fields_by_name["attribute"].number
_ATTR_TENSOR = AttributeProto.DESCRIPTOR.fields_by_name["t"].number


def _size(parts: list[Part]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p[0] for p in parts)


def _chunks(parts: list[Part]) -> Iterator[bytes]:
    for part in parts:
        if isinstance(part, bytes):
            yield part
        else:
            yield from part[1]()


def _copy_field(target: Message, field: FieldDescriptor, value: object) -> None:
    if field.is_repeated:
        getattr(target, field.name).extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(target, field.name).CopyFrom(value)
    else:
        setattr(target, field.name, value)


def copy_fields(source: Message, target: Message, *, skip: tuple[str, ...] = (), below: int | None = None) -> None:
    """Copy the set fields of ``source`` into ``target``, except those named in ``skip`` (and,
    with ``below``, only fields numbered below it). Skipped fields are never read: reading a
    large ``raw_data`` copies it out of the parsed model."""
    for field in source.DESCRIPTOR.fields:
        if field.name in skip or (below is not None and field.number >= below):
            continue
        value = getattr(source, field.name)
        if (field.is_repeated and not len(value)) or (not field.is_repeated and not source.HasField(field.name)):
            continue
        _copy_field(target, field, value)


def _message(msg: Message, custom: Mapping[int, Callable[[object], list[Part]]]) -> list[Part]:
    """``msg`` as parts, field by field in number order; fields in ``custom`` are written
    element by element from the parts their callback gives."""
    parts: list[Part] = []
    plain = type(msg)()
    for field, value in msg.ListFields():
        encode = custom.get(field.number)
        if encode is None:
            _copy_field(plain, field, value)
            continue
        if plain.ListFields():
            parts.append(plain.SerializeToString())
            plain = type(msg)()
        elements = value if field.is_repeated else [value]
        for element in elements:
            inner = encode(element)
            size = _size(inner)
            parts.append(length_header(field.number, size))
            parts.append((size, lambda inner=inner: _chunks(inner)))
    if plain.ListFields():
        parts.append(plain.SerializeToString())
    return parts


def _whole(msg: Message) -> list[Part]:
    return [(msg.ByteSize(), lambda: iter((msg.SerializeToString(),)))]


class _Cursor:
    """Bytes written so far, and where each recorded payload starts."""

    def __init__(self) -> None:
        self.position = 0
        self.layout: Layout = {}


def _split_tensor(tensor: TensorProto) -> tuple[TensorProto, TensorProto]:
    """The fields numbered below and above ``raw_data``, without reading ``raw_data``
    (every read of it copies the bytes out of the parsed model)."""
    before, after = TensorProto(), TensorProto()
    copy_fields(tensor, before, skip=("raw_data",), below=_RAW_DATA)
    later = tuple(f.name for f in TensorProto.DESCRIPTOR.fields if f.number <= _RAW_DATA)
    copy_fields(tensor, after, skip=later)
    return before, after


def _raw_length(tensor: TensorProto, rest: int) -> int:
    """Length of ``raw_data``: ``numel · itemsize`` from dims and type (the loaders check that
    they agree, and :func:`_checked` checks every payload it writes), else (strings, unknown
    types) from the serialized sizes, ``ByteSize = rest + 1 (tag) + len(varint(L)) + L``:
    ``ByteSize`` encodes the whole tensor, as long as copying it."""
    size = tensors.payload_bytes(tensor.data_type, tensors.numel(tensor))
    if size is not None:
        return size
    payload = tensor.ByteSize() - rest - 1
    for width in range(1, 11):
        if len(encode_varint(payload - width)) == width:
            return payload - width
    raise ValueError(f"cannot size the raw_data of tensor '{tensor.name}'")


def _as_loaded(tensor: TensorProto, *, inline: bool = False) -> TensorProto:
    """The fields of an external ``tensor`` as ``onnx.load`` leaves them once its data is read
    (no external entries, ``data_location`` DEFAULT), without the data; with ``inline`` (a
    tensor stored in the model file, read as external data, :mod:`onnxprune.graph.wire`) as
    the file stores it: no ``data_location`` at all."""
    loaded = TensorProto()
    copy_fields(tensor, loaded, skip=("raw_data", "external_data", "data_location"))
    if not inline:
        loaded.data_location = TensorProto.DEFAULT
    return loaded


@dataclass
class _Stream:
    """What one write needs besides the model: where payloads go, the lazy source, the records."""

    cursor: _Cursor | None = None
    source: TensorSource | None = None
    records: Records | None = None

    def streamable(self, tensor: TensorProto) -> bool:
        """A tensor whose bytes can be written from a callback: raw_data, or external with a source."""
        return replaceable(tensor) or (self.source is not None and tensor.data_location == TensorProto.EXTERNAL)

    def stored(self, tensor: TensorProto) -> bytes | memoryview:
        """The tensor's stored bytes (external ones mapped from the source)."""
        if tensor.data_location == TensorProto.EXTERNAL:
            if self.source is None:
                raise ValueError(f"tensor '{tensor.name}' is external and no source reads it")
            return memoryview(self.source.raw(tensor))
        return tensor.raw_data

    def replaced(
        self, tensor: TensorProto, replace: Replacement, name: str, *, blocks: bool = False
    ) -> bytes | memoryview | np.ndarray | BlockFill:
        """The new bytes of ``tensor`` from ``replace``, checked for length, and recorded; with
        ``blocks`` a :class:`BlockFill` stays one (recorded as it is written, :func:`_write_blocks`),
        else it is made whole."""
        data = replace(tensor)
        if isinstance(data, BlockFill) and not blocks:
            data = data.whole()
        size = tensors.data_bytes(tensor) if tensor.data_location == TensorProto.EXTERNAL else None
        length = data.nbytes if isinstance(data, BlockFill) else memoryview(data).nbytes
        if size is not None and length != size:
            raise ValueError(f"replacement for tensor '{tensor.name}' has {length} bytes, expected {size}")
        if isinstance(data, BlockFill):
            return data  # recorded as it is written
        if self.records is not None and replace is not _unchanged:
            found, not_zero = compare_elements(tensor, self.stored(tensor), data)
            self.records[name] = WrittenTensor(found.changed, found.digest, not_zero)
        return data


def _tensor(tensor: TensorProto, replace: Replacement, name: str, stream: _Stream) -> list[Part]:
    external = tensor.data_location == TensorProto.EXTERNAL
    inline = external and stream.source is not None and tensor.name in stream.source.inline
    before, after = _split_tensor(_as_loaded(tensor, inline=inline) if external else tensor)
    head, tail = before.SerializeToString(), after.SerializeToString()
    size = tensors.data_bytes(tensor) if external else _raw_length(tensor, len(head) + len(tail))
    parts: list[Part] = [head, length_header(_RAW_DATA, size)]
    parts.append((size, lambda: _checked(tensor, replace, size, name, stream)))
    parts.append(tail)
    return parts


def _checked(tensor: TensorProto, replace: Replacement, size: int, name: str, stream: _Stream) -> Iterator[bytes]:
    data = stream.stored(tensor) if replace is _unchanged else stream.replaced(tensor, replace, name)
    length = memoryview(data).nbytes
    if length != size:
        held = "holds" if replace is _unchanged else "is given"
        raise ValueError(f"tensor '{tensor.name}' {held} {length} bytes of data where its dims and type say {size}")
    if stream.cursor is not None:  # the caller writes what is yielded at the current position
        stream.cursor.layout[name] = (stream.cursor.position, size)
    yield data


def _unchanged(tensor: TensorProto) -> bytes:
    return tensor.raw_data


def _in_layout(tensor: TensorProto, stream: _Stream) -> bool:
    return stream.cursor is not None and stream.streamable(tensor) and tensors.data_bytes(tensor) >= LAYOUT_MIN_BYTES


def _constant_node(node: NodeProto, replace: Replacement, stream: _Stream) -> list[Part]:
    def attribute(attr: AttributeProto) -> list[Part]:
        if attr.name == "value" and attr.type == AttributeProto.TENSOR:
            return _message(attr, {_ATTR_TENSOR: lambda t: _tensor(t, replace, node.output[0], stream)})
        return [attr.SerializeToString()]

    return _message(node, {_ATTRIBUTE: attribute})


def replaceable(tensor: TensorProto) -> bool:
    """Only tensors stored as ``raw_data`` can be replaced while streaming (and, given a
    source, external ones: see the module docstring)."""
    return tensor.HasField("raw_data") and tensor.data_location != TensorProto.EXTERNAL


def external_elsewhere(model: ModelProto) -> str | None:
    """Where ``model`` keeps an external tensor that the lazy writers cannot stream (anywhere but
    a main-graph initializer or Constant-node value: subgraphs, sparse initializers, other
    attributes), or None."""
    main = model.graph
    others: list[TensorProto] = [t for s in main.sparse_initializer for t in (s.values, s.indices)]
    for node in main.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and not (constant_tensor(node) is not None and attr.name == "value"):
                others.append(attr.t)
            elif attr.type == AttributeProto.TENSORS:
                others.extend(attr.tensors)
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                others.extend((attr.sparse_tensor.values, attr.sparse_tensor.indices))
        for _, sub in node_subgraphs(node):
            for _, graph in all_graphs(sub):
                others.extend(graph.initializer)
                others.extend(t for s in graph.sparse_initializer for t in (s.values, s.indices))
                for inner in graph.node:
                    for attr in inner.attribute:
                        others.extend([attr.t] if attr.type == AttributeProto.TENSOR else attr.tensors)
    for tensor in others:
        if tensor.data_location == TensorProto.EXTERNAL:
            return f"tensor '{tensor.name}' is stored externally outside the main graph's initializers and constants"
    return None


def write_model(
    model: ModelProto,
    handle: BinaryIO,
    replacements: Mapping[str, Replacement],
    *,
    layout: bool = False,
    source: TensorSource | None = None,
    records: Records | None = None,
) -> Layout:
    """Write ``model`` to ``handle`` with main-graph tensors named in ``replacements``
    (initializers or Constant-node outputs, stored as raw_data) given new bytes.

    With ``layout`` returns where the payload of every main-graph tensor of at least
    :data:`LAYOUT_MIN_BYTES` stored as raw_data lies in the output (else an empty dict).
    With ``source``, main-graph tensors stored externally are read from it and written as
    raw_data (see the module docstring); ``records`` then receives a :class:`WrittenTensor`
    for each replaced tensor.
    """
    stream = _Stream(_Cursor() if layout else None, source, records)
    if source is not None:
        elsewhere = external_elsewhere(model)
        if elsewhere is not None:
            raise ValueError(f"cannot stream the model: {elsewhere}")

    def node(n: NodeProto) -> list[Part]:
        value = constant_tensor(n)
        if value is not None:
            if n.output[0] in replacements:
                return _constant_node(n, replacements[n.output[0]], stream)
            if _in_layout(value, stream) or (source is not None and value.data_location == TensorProto.EXTERNAL):
                return _constant_node(n, _unchanged, stream)
        return _whole(n)

    def initializer(t: TensorProto) -> list[Part]:
        if t.name in replacements:
            return _tensor(t, replacements[t.name], t.name, stream)
        if _in_layout(t, stream) or (source is not None and t.data_location == TensorProto.EXTERNAL):
            return _tensor(t, _unchanged, t.name, stream)
        return _whole(t)

    def graph(g: GraphProto) -> list[Part]:
        return _message(g, {_NODE: node, _INITIALIZER: initializer})

    position = 0
    for chunk in _chunks(_message(model, {_GRAPH: graph})):
        handle.write(chunk)
        position += memoryview(chunk).nbytes
        if stream.cursor is not None:
            stream.cursor.position = position
    return stream.cursor.layout if stream.cursor is not None else {}


@dataclass(frozen=True)
class WrittenTensor:
    """What the writer wrote for a replaced tensor, for a later check of the file: the number of
    elements whose bits changed, a BLAKE2b digest of which (their packed bit set, C order), and
    how many of them were not set to ``+0`` (not compared: a fact about the written bytes, which
    the check finds again in the file when it compares it)."""

    changed: int
    digest: str
    not_zero: int = dataclasses.field(default=0, compare=False)


#: Elements compared at once by :func:`compare_elements` (a multiple of 8, so that the packed
#: bits of consecutive chunks join up into those of the whole tensor)
COMPARE_CHUNK = 1 << 22


def element_bits(tensor: TensorProto, data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """The stored bytes ``data`` of ``tensor`` as one unsigned integer per element (flat)."""
    raw = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    count = max(tensors.numel(tensor), 1)
    width = raw.size // count if raw.size % count == 0 else 1
    return raw.view({2: np.uint16, 4: np.uint32, 8: np.uint64}.get(width, np.uint8))


class ElementDiff:
    """:func:`compare_elements` a run of elements at a time, in order (:meth:`add`), for a tensor
    written a block at a time: the packed bits of consecutive runs join up when every run but the
    last holds a multiple of 8 elements."""

    def __init__(self) -> None:
        self._digest = hashlib.blake2b(digest_size=16)
        self.changed = 0
        self.not_zero = 0

    @staticmethod
    def measure(before: np.ndarray, after: np.ndarray) -> tuple[list[bytes], int, int]:
        """The packed bits of ``before != after`` (unsigned views of one size), how many differ and
        how many of those are not ``+0`` in ``after``, a chunk at a time; a run of
        :data:`~onnxprune.threads.SPLIT_FROM` elements or more in two runs of chunks on threads."""
        if before.size != after.size:
            raise ValueError(f"{after.nbytes} bytes to compare with {before.nbytes}")
        starts = list(range(0, before.size, COMPARE_CHUNK))

        def run(part: Sequence[int]) -> tuple[list[bytes], int, int]:
            packed: list[bytes] = []
            changed = not_zero = 0
            for start in part:
                was, now = before[start : start + COMPARE_CHUNK], after[start : start + COMPARE_CHUNK]
                diff = was != now
                packed.append(np.packbits(diff).tobytes())
                changed += int(np.count_nonzero(diff))
                diff &= now.astype(bool)
                not_zero += int(np.count_nonzero(diff))
            return packed, changed, not_zero

        done = map_in_threads(run, in_runs(starts, WORKERS if before.size >= SPLIT_FROM else 1))
        return [block for packed, _, _ in done for block in packed], sum(d[1] for d in done), sum(d[2] for d in done)

    def merge(self, measured: tuple[list[bytes], int, int]) -> None:
        """Take the next run's :meth:`measure` (runs merged in order)."""
        packed, changed, not_zero = measured
        for block in packed:
            self._digest.update(block)
        self.changed += changed
        self.not_zero += not_zero

    def add(self, before: np.ndarray, after: np.ndarray) -> None:
        """Compare the next run of elements (see the class docstring)."""
        self.merge(self.measure(before, after))

    def result(self) -> tuple[WrittenTensor, int]:
        """The :class:`WrittenTensor` of every run so far, and how many changed elements are not ``+0``."""
        return WrittenTensor(self.changed, self._digest.hexdigest()), self.not_zero


def compare_elements(
    tensor: TensorProto, old: bytes | memoryview | np.ndarray, new: bytes | memoryview | np.ndarray
) -> tuple[WrittenTensor, int]:
    """The :class:`WrittenTensor` of ``new`` replacing the stored bytes ``old`` of ``tensor``, and
    how many of the changed elements are not ``+0`` (all bits clear), a chunk at a time
    (:class:`ElementDiff`, one run)."""
    before, after = element_bits(tensor, old), element_bits(tensor, new)
    if before.size != after.size:
        raise ValueError(f"tensor '{tensor.name}': {after.nbytes} bytes written for {before.nbytes}")
    diff = ElementDiff()
    diff.add(before, after)
    return diff.result()


def _initializer_pairs(source: GraphProto, target: GraphProto) -> Iterator[tuple[TensorProto, TensorProto, bool]]:
    """``(source tensor, target tensor, in the main graph)`` of every initializer of two graphs of
    the same structure, in the order ``onnx.save_model`` writes external data (a graph's
    initializers, then depth first the subgraphs of its nodes' attributes)."""

    def walk(a: GraphProto, b: GraphProto, main: bool) -> Iterator[tuple[TensorProto, TensorProto, bool]]:
        yield from ((x, y, main) for x, y in zip(a.initializer, b.initializer, strict=True))
        for node_a, node_b in zip(a.node, b.node, strict=True):
            for (_, sub_a), (_, sub_b) in zip(node_subgraphs(node_a), node_subgraphs(node_b), strict=True):
                yield from walk(sub_a, sub_b, False)

    yield from walk(source, target, True)


def _stored_size(tensor: TensorProto) -> int:
    """Bytes of raw data the tensor holds or references (0 for typed fields)."""
    if tensor.data_location == TensorProto.EXTERNAL:
        return tensors.data_bytes(tensor)
    return len(tensor.raw_data) if tensor.HasField("raw_data") else 0


def write_external(
    model: ModelProto,
    handle: BinaryIO,
    data: DirectAppender,
    location: str,
    replacements: Mapping[str, Replacement],
    *,
    source: TensorSource | None = None,
    threshold: int = 1024,
    records: Records | None = None,
    verified: ReadBack | None = None,
) -> None:
    """Write ``model`` to ``handle`` with every initializer of ``threshold`` bytes or more in
    ``data`` (named ``location`` in the model), tensor by tensor, replacements applied on the way.

    The result is byte for byte what :func:`onnxprune.graph.model_io.save_external_data` and
    ``onnx.save_model`` write for the loaded model with the replacements applied: the same
    tensors go out, in the same order, at the same offsets; a smaller external tensor of
    ``model`` (or a Constant node's) is read from ``source`` into the model, as ``onnx.load``
    would have. ``model`` is not changed (a copy of its skeleton is written); ``records``
    receives a :class:`WrittenTensor` for each replaced tensor. With ``verified`` (``data``
    made with ``verify``), each main-graph initializer written to ``data`` that read back as
    written is listed there (see the module docstring).
    """
    stream = _Stream(None, source, records)
    elsewhere = external_elsewhere(model)
    if elsewhere is not None:
        raise ValueError(f"cannot stream the model: {elsewhere}")
    out = ModelProto()
    out.CopyFrom(model)

    def new_bytes(
        original: TensorProto, name: str | None, *, blocks: bool = False
    ) -> bytes | memoryview | np.ndarray | BlockFill:
        if name is not None and name in replacements:
            return stream.replaced(original, replacements[name], name, blocks=blocks)
        return stream.stored(original)

    for original, node in zip(model.graph.node, out.graph.node, strict=True):
        value, copy = constant_tensor(original), constant_tensor(node)
        external = value is not None and value.data_location == TensorProto.EXTERNAL
        if value is not None and copy is not None and (external or original.output[0] in replacements):
            _inline(copy, new_bytes(value, original.output[0]), loaded=external)

    def produce(original: TensorProto, name: str | None) -> bytes | memoryview | np.ndarray | BlockFill | None:
        """The bytes to write for ``original`` (None: a small tensor that stays as it is; a
        :class:`BlockFill`: new values for the data file, computed as they are written)."""
        inline = _stored_size(original) < threshold
        if inline and original.data_location != TensorProto.EXTERNAL and (name is None or name not in replacements):
            return None
        payload = new_bytes(original, name, blocks=not inline)
        if isinstance(payload, BlockFill) and source is not None:
            source.prefetch(original)  # the fill reads the tensor as it is written: read it ahead
        return payload

    pairs = list(_initializer_pairs(model.graph, out.graph))
    calls = [partial(produce, original, original.name if main else None) for original, _, main in pairs]
    position = 0
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxprune-writer") as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxprune-blocks") as filler,
    ):
        for (original, copy, main), payload in zip(pairs, computed_ahead(calls, pool), strict=True):
            if payload is None:
                continue
            name = original.name if main else None
            if isinstance(payload, BlockFill):
                assert name is not None  # only main-graph initializers are replaced
                old = payload.stored if payload.stored is not None else element_bits(original, stream.stored(original))
                _write_blocks(data, payload, old, filler, name, records)
                del old  # the tensor is unmapped with its last array, before the next one is read
            elif _stored_size(original) < threshold:  # stays in the model
                _inline(copy, payload, loaded=original.data_location == TensorProto.EXTERNAL)
                continue
            else:
                data.write(payload)
            size = payload.nbytes if isinstance(payload, BlockFill) else memoryview(payload).nbytes
            if verified is not None and name is not None and data.verified(position, size):
                verified[name] = (location, position, size)
            _point(copy, location, position, size)
            position += size
            del payload
    if verified:  # a block written again whole after a flush was read back again: all still as written?
        for name, (_, start, size) in list(verified.items()):
            if not data.verified(start, size):
                del verified[name]
    handle.write(out.SerializeToString())


def _write_blocks(
    data: DirectAppender, fill: BlockFill, old: np.ndarray, pool: ThreadPoolExecutor, name: str, records: Records | None
) -> None:
    """Append ``fill``'s values to ``data`` a block of about :data:`BLOCK` elements at a time
    (whole granules of the fill), each block filled on ``pool`` while the one before is written,
    two buffers used in turn; with ``records``, each block is also compared there with the stored
    values ``old`` (:class:`ElementDiff`) and the tensor recorded under ``name``."""
    measure = records is not None
    whole = math.lcm(fill.granule, 8)  # whole granules, and whole bytes of ElementDiff's packed bits
    step = max(whole, BLOCK // whole * whole)
    buffers = [np.empty(min(step, fill.size), dtype=fill.dtype) for _ in range(2)]

    def block(index: int) -> tuple[np.ndarray, tuple[list[bytes], int, int] | None]:
        start = index * step
        out = buffers[index % 2][: min(step, fill.size - start)]
        fill.fill(start, out)
        return out, ElementDiff.measure(old[start : start + out.size], out) if measure else None

    diff = ElementDiff()
    for out, measured in computed_ahead([partial(block, i) for i in range(-(-fill.size // step))], pool):
        if measured is not None:
            diff.merge(measured)
        data.write(out)
    fill.finish()
    if records is not None:
        written, not_zero = diff.result()
        records[name] = WrittenTensor(written.changed, written.digest, not_zero)


def _point(copy: TensorProto, location: str, position: int, size: int) -> None:
    """Make ``copy`` an external tensor of ``size`` bytes at ``position`` of ``location``."""
    del copy.external_data[:]
    copy.ClearField("raw_data")
    copy.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(position)), ("length", str(size))):
        entry = copy.external_data.add()
        entry.key, entry.value = key, value


def _inline(tensor: TensorProto, payload: bytes | memoryview | np.ndarray, *, loaded: bool) -> None:
    """Store ``payload`` in ``tensor`` as raw_data; with ``loaded`` (an external tensor) as
    ``onnx.load`` leaves it once read (``data_location`` DEFAULT, no external entries)."""
    tensor.raw_data = bytes(payload)
    if loaded:
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]


def apply_replacements(model: ModelProto, replacements: Mapping[str, Replacement]) -> None:
    """Apply ``replacements`` to the main graph's tensors in place (the non-streaming path)."""
    if not replacements:
        return
    for tensor in model.graph.initializer:
        if tensor.name in replacements:
            tensor.raw_data = bytes(whole(replacements[tensor.name](tensor)))
    for node in model.graph.node:
        value = constant_tensor(node)
        if value is not None and node.output[0] in replacements:
            value.raw_data = bytes(whole(replacements[node.output[0]](value)))


def whole(payload: bytes | memoryview | BlockFill) -> bytes | memoryview | np.ndarray:
    """A replacement's new bytes all at once (a :class:`BlockFill` made whole)."""
    return payload.whole() if isinstance(payload, BlockFill) else payload
