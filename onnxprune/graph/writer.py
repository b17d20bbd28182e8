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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto

Replacement = Callable[[TensorProto], bytes]
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


def _tensor(tensor: TensorProto, replace: Replacement) -> list[Part]:
    size = len(tensor.raw_data)
    return _message(tensor, {_RAW_DATA: lambda _raw: [(size, lambda: _checked(tensor, replace, size))]})


def _checked(tensor: TensorProto, replace: Replacement, size: int) -> Iterator[bytes]:
    data = replace(tensor)
    if len(data) != size:
        raise ValueError(f"replacement for tensor '{tensor.name}' has {len(data)} bytes, expected {size}")
    yield data


def _constant_node(node: NodeProto, replace: Replacement) -> list[Part]:
    def attribute(attr: AttributeProto) -> list[Part]:
        if attr.name == "value" and attr.type == AttributeProto.TENSOR:
            return _message(attr, {_ATTR_TENSOR: lambda t: _tensor(t, replace)})
        return [attr.SerializeToString()]

    return _message(node, {_ATTRIBUTE: attribute})


def replaceable(tensor: TensorProto) -> bool:
    """Only tensors stored as ``raw_data`` can be replaced while streaming."""
    return tensor.HasField("raw_data") and tensor.data_location != TensorProto.EXTERNAL


def write_model(model: ModelProto, handle: BinaryIO, replacements: Mapping[str, Replacement]) -> None:
    """Write ``model`` to ``handle`` with main-graph tensors named in ``replacements``
    (initializers or Constant-node outputs, stored as raw_data) given new bytes."""

    def node(n: NodeProto) -> list[Part]:
        if n.op_type == "Constant" and n.output and n.output[0] in replacements:
            return _constant_node(n, replacements[n.output[0]])
        return _whole(n)

    def initializer(t: TensorProto) -> list[Part]:
        return _tensor(t, replacements[t.name]) if t.name in replacements else _whole(t)

    def graph(g: GraphProto) -> list[Part]:
        return _message(g, {_NODE: node, _INITIALIZER: initializer})

    for chunk in _chunks(_message(model, {_GRAPH: graph})):
        handle.write(chunk)


def apply_replacements(model: ModelProto, replacements: Mapping[str, Replacement]) -> None:
    """Apply ``replacements`` to the main graph's tensors in place (the non-streaming path)."""
    if not replacements:
        return
    for tensor in model.graph.initializer:
        if tensor.name in replacements:
            tensor.raw_data = replacements[tensor.name](tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in replacements:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR:
                    attr.t.raw_data = replacements[node.output[0]](attr.t)
