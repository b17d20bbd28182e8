"""Model statistics: parameters, non-zeros, file size and deflate-compressed size.

The compressed size is what a model costs to ship (zip, wheels, container layers all use
deflate): zlib level 6 over the model file and its external data, streamed in chunks.
Unstructured zeros shrink it even though the raw file size stays the same.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune.graph import tensors
from onnxprune.graph.walk import all_tensors

_CHUNK = 1 << 24


@dataclass(frozen=True)
class ParamStats:
    parameters: int
    nonzeros: int


@dataclass(frozen=True)
class FileStats:
    bytes: int
    compressed: int | None


def param_stats(model: ModelProto) -> ParamStats:
    """Elements and non-zero elements of every float tensor stored in the model."""
    total = nonzero = 0
    for tensor in all_tensors(model):
        if not tensors.is_float(tensor) or tensor.data_location == TensorProto.EXTERNAL:
            continue
        values = tensors.read_array(tensor)
        total += values.size
        nonzero += int(np.count_nonzero(values.view(f"u{values.dtype.itemsize}") << np.uint8(1)))
    return ParamStats(total, nonzero)


def file_stats(files: Sequence[Path], *, compressed: bool = True) -> FileStats:
    """Bytes on disk of a model's files (the model and its external data) and, optionally, their
    deflate-compressed size."""
    size = sum(f.stat().st_size for f in files)
    if not compressed:
        return FileStats(size, None)
    packed = 0
    for file in files:
        compressor = zlib.compressobj(6)
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                packed += len(compressor.compress(chunk))
        packed += len(compressor.flush())
    return FileStats(size, packed)
