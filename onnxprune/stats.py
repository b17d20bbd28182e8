"""Model statistics: parameters, non-zeros, per-tensor sizes, file size and deflate-compressed size.

The compressed size is what a model costs to ship (zip, wheels, container layers all use
deflate): zlib level 6 over the model file and its external data, exact or estimated from a
sample of blocks (:mod:`onnxprune.compressed_size`). Unstructured zeros shrink it even
though the raw file size stays the same.

Per-tensor sizes (:func:`layer_stats`) compare two ways of storing a float tensor of ``n``
elements, ``nnz`` of them non-zero, each ``b`` bytes:

* dense: ``n·b`` bytes;
* COO, as an ONNX ``SparseTensorProto`` (a ``sparse_initializer``): the non-zero values,
  ``nnz·b`` bytes, plus their int64 indices. ONNX allows ``[nnz, rank]`` coordinates or
  ``[nnz]`` linearized positions; the smaller, linearized form takes ``nnz·8`` bytes, so
  ``coo = nnz·(b + 8)``.

Both count payload bytes only: protobuf framing (tags, lengths, dims, names) adds a few
bytes per tensor. :func:`sparse_bytes` stores each tensor the cheaper way; COO pays off
below a density of ``b/(b + 8)`` (1/3 for float32, 1/5 for float16). A non-zero is
counted on the bit pattern, so ``-0.0`` is zero.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto

from onnxprune.compressed_size import deflate_size, mode_of
from onnxprune.graph import tensors
from onnxprune.graph.index import Scope, node_label
from onnxprune.graph.quantized import quantized_weight_names
from onnxprune.ops import constant_tensor

if TYPE_CHECKING:
    from concurrent.futures import Future

    from onnxprune.passes.base import Progress

log = logging.getLogger(__name__)

#: Bytes of one int64 index of a linearized COO tensor.
INDEX_BYTES = 8


@dataclass(frozen=True)
class ParamStats:
    parameters: int
    nonzeros: int


@dataclass(frozen=True)
class FileStats:
    bytes: int
    compressed: int | None
    compressed_exact: bool = True  # False: a sampled estimate (onnxprune.compressed_size)
    compressed_error: float = 0.0  # its relative standard error


@dataclass(frozen=True)
class LayerSize:
    """One float tensor stored in the model, and what it costs stored dense or as COO."""

    name: str
    scope: str  # "" in the main graph, else the subgraph path (as in weight keys)
    shape: tuple[int, ...]
    dtype: str
    parameters: int
    nonzeros: int
    dense_bytes: int
    coo_bytes: int

    @property
    def key(self) -> str:
        return f"{self.scope}::{self.name}" if self.scope else self.name

    @property
    def sparse_bytes(self) -> int:
        """The cheaper of the two storages."""
        return min(self.dense_bytes, self.coo_bytes)


def _count_nonzero(values: np.ndarray) -> int:
    """Non-zero elements on the bit pattern with the sign bit shifted out (-0.0 is zero)."""
    return int(np.count_nonzero(values.view(f"u{values.dtype.itemsize}") << np.uint8(1)))


def _counted(tensor: TensorProto, name: str, quantized: set[str]) -> bool:
    """Float tensors, and the integer weights of quantized layers (not their scales' zero points)."""
    return tensors.is_float(tensor) or (name in quantized and tensors.numel(tensor) > 1)


def param_stats(
    model: ModelProto,
    *,
    known: Mapping[str, tuple[int, int]] | None = None,
    read: tensors.ArrayReader | None = None,
) -> ParamStats:
    """Elements and non-zero elements of every float tensor stored in the model (of a
    sparse tensor, its stored values), and of the integer weights of quantized layers.

    ``known`` maps tensor keys (``scope::name``, or the name in the main graph) to their
    already counted ``(elements, zeros)``: those tensors are not read again. Tensors whose
    external data is not loaded are counted only with ``read`` (a lazy source) or when known.
    """
    known = known or {}
    total = nonzero = 0
    for scope in Scope.build(model.graph).all_scopes():
        quantized = quantized_weight_names(scope.graph)
        for name, values_proto, _indices, _shape in _graph_tensors(scope.graph):
            if not _counted(values_proto, name, quantized):
                continue
            counted = known.get(f"{scope.path}::{name}" if scope.path else name)
            if counted is not None and _indices is None:
                total += counted[0]
                nonzero += counted[0] - counted[1]
                continue
            if values_proto.data_location == TensorProto.EXTERNAL and read is None:
                continue
            values = (read or tensors.read_array)(values_proto)
            total += values.size
            nonzero += _count_nonzero(values)
    return ParamStats(total, nonzero)


def _graph_tensors(graph: GraphProto) -> Iterator[tuple[str, TensorProto, TensorProto | None, tuple[int, ...]]]:
    """``(name, values, indices, dense shape)`` of the tensors stored in ``graph`` itself, in
    the order of :func:`~onnxprune.graph.walk.all_tensors`; ``indices`` is set for sparse ones."""
    for tensor in graph.initializer:
        yield tensor.name, tensor, None, tuple(int(d) for d in tensor.dims)
    for sparse in graph.sparse_initializer:
        yield sparse.values.name, sparse.values, sparse.indices, tuple(int(d) for d in sparse.dims)
    for node in graph.node:
        for attr in node.attribute:
            written = constant_tensor(node) is not None  # a Constant's value is named by its output
            named = node.output[0] if written else f"{node_label(node)}.{attr.name}"
            if attr.type == AttributeProto.TENSOR:
                yield named, attr.t, None, tuple(int(d) for d in attr.t.dims)
            elif attr.type == AttributeProto.TENSORS:
                for i, t in enumerate(attr.tensors):
                    yield f"{named}[{i}]", t, None, tuple(int(d) for d in t.dims)
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                sparse = attr.sparse_tensor
                yield named, sparse.values, sparse.indices, tuple(int(d) for d in sparse.dims)


def layer_stats(model: ModelProto) -> list[LayerSize]:
    """One entry per float tensor (or quantized integer weight) stored in the model (initializers, sparse initializers,
    Constant-node and other tensor attributes, in every subgraph). A sparse tensor is
    reported with its dense shape; a tensor whose external data is not loaded is skipped
    (and logged)."""
    layers = []
    for scope in Scope.build(model.graph).all_scopes():
        quantized = quantized_weight_names(scope.graph)
        for name, values_proto, indices, shape in _graph_tensors(scope.graph):
            if not _counted(values_proto, name, quantized):
                continue
            where = f"{scope.path}::{name}" if scope.path else name
            if values_proto.data_location == TensorProto.EXTERNAL:
                log.warning("tensor '%s': external data not loaded, left out of the per-layer sizes", where)
                continue
            values = tensors.read_array(values_proto)
            itemsize = values.dtype.itemsize
            parameters = int(np.prod(shape, dtype=np.int64)) if indices is not None else values.size
            nonzeros = _count_nonzero(values)
            stored = values.size if indices is not None else nonzeros  # a sparse tensor keeps its stored values
            layers.append(
                LayerSize(
                    name=name,
                    scope=scope.path,
                    shape=shape,
                    dtype=tensors.dtype_name(values_proto),
                    parameters=parameters,
                    nonzeros=nonzeros,
                    dense_bytes=parameters * itemsize,
                    coo_bytes=stored * (itemsize + INDEX_BYTES),
                )
            )
    return layers


def sparse_bytes(layers: Iterable[LayerSize]) -> int:
    """Payload bytes with every tensor stored the cheaper way, dense or COO."""
    return sum(layer.sparse_bytes for layer in layers)


def file_stats(
    files: Sequence[Path], *, compressed: bool | str = True, read: Callable[[int], None] | None = None
) -> FileStats:
    """Bytes on disk of a model's files (the model and its external data) and their deflate
    size by ``compressed`` (:func:`onnxprune.compressed_size.mode_of`: True or "estimate" the
    sampled estimate, "exact" every byte, False or "off" none); ``read(n)`` reports the bytes
    an exact figure has deflated so far."""
    size = sum(f.stat().st_size for f in files)
    packed = deflate_size(files, mode_of(compressed), read=read)
    if packed is None:
        return FileStats(size, None)
    return FileStats(size, packed.bytes, packed.exact, packed.relative_error)


def both_file_stats(
    before: Sequence[Path],
    after: Sequence[Path],
    compressed: bool | str = True,
    *,
    progress: Progress | None = None,
) -> tuple[FileStats, FileStats]:
    """:func:`file_stats` of a model before and after, side by side in two threads (zlib
    releases the GIL while it deflates); ``progress(done, total, "deflate")`` follows an exact
    figure's bytes (MiB)."""
    from concurrent.futures import ThreadPoolExecutor

    read = None
    if progress is not None and mode_of(compressed) == "exact":
        total = max(1, sum(Path(f).stat().st_size for f in (*before, *after)) >> 20)
        lock, done = threading.Lock(), [0]

        def read(n: int) -> None:
            with lock:
                done[0] += n
                progress(min(done[0] >> 20, total), total, "deflate")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(file_stats, before, compressed=compressed, read=read)
        second = pool.submit(file_stats, after, compressed=compressed, read=read)
        return first.result(), second.result()


class FileStatsAhead:
    """:func:`both_file_stats` computed while a run goes on: the input's :func:`file_stats` on a
    thread of its own from when the input is read (:meth:`before`), the output's from when its
    files are complete (:meth:`after`, e.g. while it is validated). zlib releases the GIL while
    it deflates, so each runs on the second core beside the run's own work. The output's files
    must stay in place until :meth:`result` has returned (call it before renaming them)."""

    def __init__(self, compressed: bool | str = True) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.compressed = compressed
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="onnxprune-size")
        self._before: Future[FileStats] | None = None
        self._after: Future[FileStats] | None = None

    def before(self, files: Sequence[Path]) -> None:
        self._before = self._pool.submit(file_stats, list(files), compressed=self.compressed)

    def after(self, files: Sequence[Path]) -> None:
        self._after = self._pool.submit(file_stats, list(files), compressed=self.compressed)

    @property
    def given(self) -> bool:
        """Whether both the input's and the output's files were given."""
        return self._before is not None and self._after is not None

    def result(self) -> tuple[FileStats, FileStats]:
        """Both figures, once computed (the error of either is raised here)."""
        if self._before is None or self._after is None:
            raise ValueError("the files before and after must both be given first")
        return self._before.result(), self._after.result()

    def close(self) -> None:
        """Cancel what has not started and wait for what has (no thread outlives the run)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
