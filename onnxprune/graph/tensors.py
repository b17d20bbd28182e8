"""Reading and writing the values of float TensorProtos in their own dtype.

Weights are read as numpy arrays of their stored dtype (float16 and bfloat16 are never
widened) and written back as little-endian ``raw_data``. Only tensors that change are
rewritten; every other tensor keeps its exact bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxprune.sparsity.scores import sign_clear

#: ONNX element types that onnxprune prunes, with their numpy dtype names.
FLOAT_TYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "float64",
}

#: Types of fewer than 8 bits, by bits per element (packed in raw_data and in int32_data).
SUB_BYTE_BITS: dict[int, frozenset[int]] = {
    bits: frozenset(getattr(TensorProto, name) for name in names if hasattr(TensorProto, name))
    for bits, names in ((4, ("INT4", "UINT4", "FLOAT4E2M1")), (2, ("INT2", "UINT2")))
}

_TYPED_FIELDS = ("float_data", "int32_data", "double_data", "int64_data", "uint64_data")


def dtype_name(tensor: TensorProto) -> str:
    """The numpy-style name of a tensor's element type (``TensorProto.DataType`` name if odd)."""
    if tensor.data_type in FLOAT_TYPES:
        return FLOAT_TYPES[tensor.data_type]
    return TensorProto.DataType.Name(tensor.data_type).lower()


def is_float(tensor: TensorProto) -> bool:
    return tensor.data_type in FLOAT_TYPES


def numel(tensor: TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1


def itemsize(data_type: int) -> int | None:
    """Bytes per element of a fixed-size type (None for strings, sub-byte and unknown types)."""
    if data_type == TensorProto.STRING or any(data_type in types for types in SUB_BYTE_BITS.values()):
        return None
    try:
        return int(helper.tensor_dtype_to_np_dtype(data_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return None


def payload_bytes(data_type: int, count: int) -> int | None:
    """Bytes of ``raw_data`` that ``count`` elements of ``data_type`` take: ``count · itemsize``,
    ``⌈count · bits / 8⌉`` for the packed sub-byte types; None when the type has no fixed
    size (strings, unknown types)."""
    for bits, types in SUB_BYTE_BITS.items():
        if data_type in types:
            return math.ceil(count * bits / 8)
    size = itemsize(data_type)
    return None if size is None else count * size


def data_bytes(tensor: TensorProto) -> int:
    """Bytes of the tensor's values, from its dims and element type, without reading them
    (reading ``raw_data`` or calling ``ByteSize`` copies or encodes the whole tensor).
    Strings and types of unknown size are sized by encoding, as they are small in practice."""
    size = payload_bytes(tensor.data_type, numel(tensor))
    return tensor.ByteSize() if size is None else size


def read_array(tensor: TensorProto) -> np.ndarray:
    """The tensor's values in its own dtype (read-only view where possible). An external
    tensor whose data is not loaded is refused: read it through a
    :class:`onnxprune.graph.lazy.TensorSource`, which reads only the files the loader checked."""
    if tensor.data_location == TensorProto.EXTERNAL:
        raise ValueError(f"tensor '{tensor.name}' is stored in an external file that is not loaded")
    return numpy_helper.to_array(tensor)


#: What reads a tensor's values: :func:`read_array`, or a lazy source
#: (:class:`onnxprune.graph.lazy.TensorSource`) that also maps external tensors.
ArrayReader = Callable[[TensorProto], np.ndarray]


def write_array(tensor: TensorProto, values: np.ndarray) -> None:
    """Replace the tensor's values (same shape and dtype) with ``values`` as raw_data."""
    if tuple(values.shape) != tuple(tensor.dims):
        raise ValueError(f"shape {values.shape} does not match tensor dims {tuple(tensor.dims)}")
    for field in _TYPED_FIELDS:
        if len(getattr(tensor, field)):
            tensor.ClearField(field)
    data = np.ascontiguousarray(values)
    if data.dtype.byteorder == ">":
        data = data.byteswap().view(data.dtype.newbyteorder("<"))
    tensor.raw_data = data.tobytes()


#: The bit pattern of +inf of each float type; with the sign bit cleared, a larger pattern is a NaN.
_INF_BITS = {"float16": 0x7C00, "bfloat16": 0x7F80, "float32": 0x7F80_0000, "float64": 0x7FF0_0000_0000_0000}
#: Elements looked at at once by :func:`nonfinite_counts` (bounds its temporaries).
NONFINITE_CHUNK = 1 << 22


def nonfinite_counts(values: np.ndarray) -> tuple[int, int]:
    """``(NaN, ±inf)`` element counts of a float array (bfloat16 included). Any other dtype has none.

    float32 and float64 first take two reductions, ``max`` and ``min``: a NaN makes both NaN
    and an infinity is one of them, so both finite means none (SIMD, no temporaries: 0.09 s
    for the 400 MB of ``tools/bench_prune.py``'s model, against 0.9 s for the bit patterns,
    whose temporaries each took fresh pages). Otherwise, and for the 16-bit types (numpy's
    float16 reductions are scalar), the bit patterns a chunk at a time into two reused buffers
    (the temporaries stay small whatever the tensor's size), counted where one reaches the limit.
    """
    inf = _INF_BITS.get(values.dtype.name)
    if inf is None or values.size == 0:
        return 0, 0
    flat = np.ascontiguousarray(values).reshape(-1)
    if flat.dtype in (np.float32, np.float64) and np.isfinite(flat.max()) and np.isfinite(flat.min()):
        return 0, 0
    unsigned = np.dtype(f"u{flat.dtype.itemsize}")
    bits = flat.view(unsigned)
    clear = sign_clear(unsigned)
    limit = unsigned.type(inf)
    keys = np.empty(min(bits.size, NONFINITE_CHUNK), dtype=unsigned)
    reaching = np.empty(keys.size, dtype=bool)
    nan = infinite = 0
    for start in range(0, bits.size, NONFINITE_CHUNK):
        part = bits[start : start + NONFINITE_CHUNK]
        chunk, reach = keys[: part.size], reaching[: part.size]
        np.bitwise_and(part, clear, out=chunk)
        if np.greater_equal(chunk, limit, out=reach).any():
            found = nonfinite_in_keys(chunk, limit)
            nan, infinite = nan + found[0], infinite + found[1]
    return nan, infinite


def nonfinite_in_keys(
    keys: np.ndarray, limit: np.generic | None = None, dtype: np.dtype | None = None
) -> tuple[int, int]:
    """``(NaN, ±inf)`` counts from magnitude keys (the bit patterns with the sign bit cleared,
    :func:`onnxprune.sparsity.scores.magnitude_keys`): a key above +inf's pattern is a NaN, equal
    to it an infinity. ``limit`` is that pattern (else from ``dtype``, the values' float type).
    One comparison in the common case: the two counts only when something reaches the limit."""
    if limit is None:
        inf = _INF_BITS.get(np.dtype(dtype).name) if dtype is not None else None
        if inf is None:
            return 0, 0
        limit = keys.dtype.type(inf)
    reaching = keys[keys >= limit]
    if reaching.size == 0:
        return 0, 0
    nan = int(np.count_nonzero(reaching > limit))
    return nan, int(reaching.size) - nan
