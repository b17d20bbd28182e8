"""A model's skeleton read off the protobuf wire format, its large weights left in the file.

Parsing an ``.onnx`` file whose weights are stored inside it (``raw_data``) holds the file's
bytes and the parsed message side by side: ``onnx.load`` of all-MiniLM-L6-v2 (86 MiB) peaks at
210 MiB, and a streamed prune needs neither copy. :func:`inline_skeleton` walks the file's
fields (a ``ModelProto``: field 7 ``graph``; a ``GraphProto``: field 5 ``initializer``; a
``TensorProto``: field 9 ``raw_data``) over a memory map and returns the same message with each
main-graph initializer's ``raw_data`` of ``threshold`` bytes or more replaced by an
external-data reference to where those bytes lie in the file itself (``location`` the file's
name, ``offset``, ``length``, ``data_location`` EXTERNAL). Parsed, it is what
``onnx.load(..., load_external_data=False)`` gives for the same model saved with external data;
the weights are read from the file one at a time, as external data is
(:class:`~onnxprune.graph.lazy.TensorSource`). The walk reads only field headers: for
MiniLM it takes 2 ms and the parsed skeleton 110 kB.

Anything it does not expect (a field of another wire type where a message or ``raw_data``
should be, a length past the end, deprecated groups, an initializer that already refers to
external data, a graph or tensor given twice) gives None: the caller parses the file whole,
which reports what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Iterator

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data
_TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data
_TENSOR_DATA_LOCATION = 14  # TensorProto.data_location
_EXTERNAL = 1  # TensorProto.EXTERNAL
_VARINT, _FIXED64, _LENGTH, _START_GROUP, _END_GROUP, _FIXED32 = range(6)


class _Irregular(Exception):
    """The bytes are not what the walk expects: the caller parses the file whole."""


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Irregular
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """``(number, wire type, field start, value start, field end)`` of each field in
    ``buf[start:end]``; a length-delimited field's value is ``buf[value start:field end]``."""
    pos = start
    while pos < end:
        first = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, after = _varint(buf, pos, end)
        elif wire == _LENGTH:
            length, pos = _varint(buf, pos, end)
            after = pos + length
        elif wire in (_FIXED32, _FIXED64):
            after = pos + (4 if wire == _FIXED32 else 8)
        else:  # groups: deprecated, never written for ONNX
            raise _Irregular
        if number == 0 or after > end:
            raise _Irregular
        yield number, wire, first, pos, after
        pos = after


def encode_varint(value: int) -> bytes:
    """``value`` (non-negative) as a protobuf varint: 7 bits a byte, low first, the high bit set on
    every byte but the last."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def length_header(number: int, length: int) -> bytes:
    """The key and length of field ``number`` holding ``length`` bytes (what precedes them)."""
    return encode_varint(number << 3 | _LENGTH) + encode_varint(length)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return length_header(number, len(payload)) + payload


def _reference(location: str, offset: int, length: int) -> bytes:
    """A ``TensorProto``'s fields naming ``length`` bytes at ``offset`` of ``location``."""
    entries = b"".join(
        _length_delimited(
            _TENSOR_EXTERNAL_DATA, _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
        )
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(length)))
    )
    return entries + encode_varint(_TENSOR_DATA_LOCATION << 3 | _VARINT) + encode_varint(_EXTERNAL)


def _tensor(buf: memoryview, start: int, end: int, location: str, threshold: int) -> tuple[bytes, bool]:
    """The initializer ``buf[start:end]``, its ``raw_data`` moved out if it is large enough;
    and whether it was."""
    kept = bytearray()
    raw: tuple[int, int] | None = None
    raws = 0
    for number, wire, first, value, after in _fields(buf, start, end):
        if number in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION):
            raise _Irregular  # already external (or saying where it is): parse it whole
        raws += number == _TENSOR_RAW_DATA
        if raws > 1:
            raise _Irregular  # raw_data given twice: protobuf keeps the last
        if number == _TENSOR_RAW_DATA and wire == _LENGTH and after - value >= threshold:
            raw = (value, after)
        else:
            kept += buf[first:after]
    if raw is None:
        return bytes(buf[start:end]), False
    return bytes(kept) + _reference(location, raw[0], raw[1] - raw[0]), True


def inline_skeleton(buf: memoryview, location: str, *, threshold: int) -> tuple[bytes, list[int]] | None:
    """The model ``buf`` (a whole ``.onnx`` file named ``location``) as a skeleton whose
    main-graph initializers of ``threshold`` bytes of ``raw_data`` or more refer to their bytes
    in the file (module docstring), and the indices of those initializers among the graph's;
    None if the walk finds anything it does not expect, or nothing to move."""
    try:
        return _skeleton(buf, location, threshold)
    except _Irregular:
        return None


def _skeleton(buf: memoryview, location: str, threshold: int) -> tuple[bytes, list[int]] | None:
    out = bytearray()
    moved: list[int] = []
    graphs = 0
    for number, wire, first, value, after in _fields(buf, 0, len(buf)):
        if number != _MODEL_GRAPH:
            out += buf[first:after]
            continue
        graphs += 1
        if wire != _LENGTH or graphs > 1:
            raise _Irregular  # a graph given twice is merged by protobuf: parse it whole
        graph = bytearray()
        index = 0
        for g_number, g_wire, g_first, g_value, g_after in _fields(buf, value, after):
            if g_number != _GRAPH_INITIALIZER:
                graph += buf[g_first:g_after]
                continue
            if g_wire != _LENGTH:
                raise _Irregular
            tensor, out_of_file = _tensor(buf, g_value, g_after, location, threshold)
            if out_of_file:
                moved.append(index)
            graph += _length_delimited(_GRAPH_INITIALIZER, tensor)
            index += 1
        out += _length_delimited(_MODEL_GRAPH, bytes(graph))
    return (bytes(out), moved) if moved else None
