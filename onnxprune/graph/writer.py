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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

from onnxprune.graph import tensors
from onnxprune.ops import constant_tensor

Replacement = Callable[[TensorProto], bytes | memoryview]
#: tensor name -> (offset, length) of its raw_data payload in the written file
Layout = dict[str, tuple[int, int]]
#: tensors with at least this many bytes of raw_data are recorded in the layout
LAYOUT_MIN_BYTES = 1 << 16
_Lazy = tuple[int, Callable[[], Iterator[bytes]]]
Part = bytes | _Lazy

_RAW_DATA = TensorProto.DESCRIPTOR.fields_by_name["raw_data"].number
_GRAPH = ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_NODE = GraphProto.DESCRIPTOR.fields_by_name["node"].number
_INITIALIZER = GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
_ATTRIBUTE = NodeProto.DESCRIPTOR.fields_by_name["attribute"].number
_ATTR_TENSOR = AttributeProto.DESCRIPTOR.fields_by_name["t"].number


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, length: int) -> bytes:
    return _varint((number << 3) | 2) + _varint(length)


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
            parts.append(_length_delimited(field.number, size))
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
    """Length of ``raw_data`` from the serialized sizes: ``ByteSize = rest + 1 (tag) +
    len(varint(L)) + L``."""
    payload = tensor.ByteSize() - rest - 1
    for width in range(1, 11):
        if len(_varint(payload - width)) == width:
            return payload - width
    raise ValueError(f"cannot size the raw_data of tensor '{tensor.name}'")


def _tensor(tensor: TensorProto, replace: Replacement, name: str, cursor: _Cursor | None) -> list[Part]:
    before, after = _split_tensor(tensor)
    head, tail = before.SerializeToString(), after.SerializeToString()
    size = _raw_length(tensor, len(head) + len(tail))
    parts: list[Part] = [head, _length_delimited(_RAW_DATA, size)]
    parts.append((size, lambda: _checked(tensor, replace, size, name, cursor)))
    parts.append(tail)
    return parts


def _checked(
    tensor: TensorProto, replace: Replacement, size: int, name: str, cursor: _Cursor | None
) -> Iterator[bytes]:
    data = replace(tensor)
    length = memoryview(data).nbytes
    if length != size:
        raise ValueError(f"replacement for tensor '{tensor.name}' has {length} bytes, expected {size}")
    if cursor is not None:  # the caller writes what is yielded at the current position
        cursor.layout[name] = (cursor.position, size)
    yield data


def _unchanged(tensor: TensorProto) -> bytes:
    return tensor.raw_data


def _in_layout(tensor: TensorProto, cursor: _Cursor | None) -> bool:
    return cursor is not None and replaceable(tensor) and tensors.data_bytes(tensor) >= LAYOUT_MIN_BYTES


def _constant_node(node: NodeProto, replace: Replacement, cursor: _Cursor | None) -> list[Part]:
    def attribute(attr: AttributeProto) -> list[Part]:
        if attr.name == "value" and attr.type == AttributeProto.TENSOR:
            return _message(attr, {_ATTR_TENSOR: lambda t: _tensor(t, replace, node.output[0], cursor)})
        return [attr.SerializeToString()]

    return _message(node, {_ATTRIBUTE: attribute})


def replaceable(tensor: TensorProto) -> bool:
    """Only tensors stored as ``raw_data`` can be replaced while streaming."""
    return tensor.HasField("raw_data") and tensor.data_location != TensorProto.EXTERNAL


def write_model(
    model: ModelProto, handle: BinaryIO, replacements: Mapping[str, Replacement], *, layout: bool = False
) -> Layout:
    """Write ``model`` to ``handle`` with main-graph tensors named in ``replacements``
    (initializers or Constant-node outputs, stored as raw_data) given new bytes.

    With ``layout`` returns where the payload of every main-graph tensor of at least
    :data:`LAYOUT_MIN_BYTES` stored as raw_data lies in the output (else an empty dict).
    """
    cursor = _Cursor() if layout else None

    def node(n: NodeProto) -> list[Part]:
        value = constant_tensor(n)
        if value is not None:
            if n.output[0] in replacements:
                return _constant_node(n, replacements[n.output[0]], cursor)
            if _in_layout(value, cursor):
                return _constant_node(n, _unchanged, cursor)
        return _whole(n)

    def initializer(t: TensorProto) -> list[Part]:
        if t.name in replacements:
            return _tensor(t, replacements[t.name], t.name, cursor)
        if _in_layout(t, cursor):
            return _tensor(t, _unchanged, t.name, cursor)
        return _whole(t)

    def graph(g: GraphProto) -> list[Part]:
        return _message(g, {_NODE: node, _INITIALIZER: initializer})

    position = 0
    for chunk in _chunks(_message(model, {_GRAPH: graph})):
        handle.write(chunk)
        position += memoryview(chunk).nbytes
        if cursor is not None:
            cursor.position = position
    return cursor.layout if cursor is not None else {}


def apply_replacements(model: ModelProto, replacements: Mapping[str, Replacement]) -> None:
    """Apply ``replacements`` to the main graph's tensors in place (the non-streaming path)."""
    if not replacements:
        return
    for tensor in model.graph.initializer:
        if tensor.name in replacements:
            tensor.raw_data = bytes(replacements[tensor.name](tensor))
    for node in model.graph.node:
        value = constant_tensor(node)
        if value is not None and node.output[0] in replacements:
            value.raw_data = bytes(replacements[node.output[0]](value))
