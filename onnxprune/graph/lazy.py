"""A lazy tensor source: the external tensors of a model read one at a time, memory-mapped.

A model with external data can be larger than memory. :func:`~onnxprune.graph.model_io.load_model_lazily`
parses only its *skeleton* (the ``.onnx`` file: graph, small tensors, and an external-data
reference ``location``/``offset``/``length`` for each large tensor) and checks every reference
(:func:`~onnxprune.graph.model_io.check_external_data`: inside the model's folder, no links, a
byte range that holds what the dims say). A :class:`TensorSource` then reads the values of one
tensor when asked, as a read-only array memory-mapped on its byte range: nothing is copied, the
pages are read from the page cache as they are touched, and they are unmapped when the last
array of the tensor is freed. Memory therefore follows the tensors in use, not the model.

Safety: a source reads only the files the loader checked, identified by device and inode at
check time; each file is opened again without following links (``O_NOFOLLOW``) and refused if it
is no longer that file or is now too short. A tensor of the skeleton that is stored in the
``.onnx`` file itself is read as usual (:func:`onnxprune.graph.tensors.read_array`).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from onnxprune.errors import ModelLoadError, UnsafeModelError
from onnxprune.graph import tensors

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def external_entries(tensor: TensorProto) -> tuple[str, int, int | None]:
    """``(location, offset, length)`` of an external tensor's reference (length None if absent);
    a negative or non-integer offset or length is a malformed model (:class:`ModelLoadError`)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        offset = length = -1
    if offset < 0 or (length is not None and length < 0):
        raise ModelLoadError(
            f"external data of tensor '{tensor.name}' has an invalid offset or length "
            f"({info.get('offset')!r}, {info.get('length')!r}): the model is malformed; export it again"
        )
    return location, offset, length


def _span(tensor: TensorProto) -> tuple[str, int, int]:
    """``(location, offset, size)`` of an external tensor's bytes: its reference's length, or
    what its dims and type hold when the reference gives none."""
    location, offset, length = external_entries(tensor)
    return location, offset, tensors.data_bytes(tensor) if length is None else length


def is_external(tensor: TensorProto) -> bool:
    """True if the tensor's values live in an external file (not loaded)."""
    return tensor.data_location == TensorProto.EXTERNAL


def numpy_dtype(tensor: TensorProto) -> np.dtype:
    """The little-endian numpy dtype of the tensor's stored values (bfloat16 as ml_dtypes')."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")


class TensorSource:
    """The values of a model's tensors, external ones memory-mapped from the checked files.

    ``base_dir`` is the model's folder; ``files`` the external-data files the loader checked
    (resolved paths). Calling the source with a tensor returns its values (shape and dtype of the
    tensor, read-only): what :func:`onnxprune.graph.tensors.read_array` returns for a loaded one.
    """

    def __init__(self, base_dir: Path, files: Iterable[Path], *, inline: Iterable[str] = ()) -> None:
        self.base_dir = Path(base_dir)
        #: main-graph initializers read from the model file itself (stored inside it: written
        #: back as raw_data with no ``data_location``, :mod:`onnxprune.graph.wire`)
        self.inline = frozenset(inline)
        self._files: dict[Path, tuple[int, int]] = {}
        for path in files:
            stat = path.stat()
            self._files[path.resolve()] = (stat.st_dev, stat.st_ino)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self._files)

    def _path(self, tensor: TensorProto, location: str) -> Path:
        path = (self.base_dir / location).resolve()
        if path not in self._files:
            raise UnsafeModelError(
                f"external data of tensor '{tensor.name}' names '{location}', which is not a file checked "
                "when the model was loaded: refusing to read it"
            )
        return path

    def raw(self, tensor: TensorProto) -> np.ndarray:
        """The stored bytes of ``tensor`` (a flat, read-only uint8 array; mapped if external)."""
        if not is_external(tensor):
            if tensor.HasField("raw_data"):
                return np.frombuffer(tensor.raw_data, dtype=np.uint8)
            values = np.ascontiguousarray(tensors.read_array(tensor)).astype(numpy_dtype(tensor), copy=False)
            return values.reshape(-1).view(np.uint8)
        location, offset, size = _span(tensor)
        if size == 0:
            return np.empty(0, dtype=np.uint8)
        fd = self._open(tensor, location, offset, size)
        try:
            start = offset - offset % mmap.ALLOCATIONGRANULARITY
            mapped = mmap.mmap(fd, offset + size - start, access=mmap.ACCESS_READ, offset=start)
        finally:
            os.close(fd)
        if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        return np.frombuffer(mapped, dtype=np.uint8, count=size, offset=offset - start)

    def _open(self, tensor: TensorProto, location: str, offset: int, size: int) -> int:
        """A read-only descriptor of the checked file ``location`` holding ``tensor``'s ``size``
        bytes from ``offset``: the same file (device and inode) as when the model was loaded,
        links not followed."""
        path = self._path(tensor, location)
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        try:
            stat = os.fstat(fd)
            if (stat.st_dev, stat.st_ino) != self._files[path]:
                raise UnsafeModelError(
                    f"the external data file '{location}' of tensor '{tensor.name}' was replaced after the model "
                    "was loaded: refusing to read it"
                )
            if offset + size > stat.st_size:
                raise ModelLoadError(
                    f"external data of tensor '{tensor.name}' is truncated: '{location}' now has {stat.st_size} "
                    f"bytes, the tensor needs bytes {offset}..{offset + size}"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd

    def prefetch(self, tensor: TensorProto) -> None:
        """Ask the kernel to start reading an external ``tensor``'s bytes into the page cache now
        (``posix_fadvise`` ``WILLNEED``), for a read that comes later: a tensor written a block
        at a time is read as it is written, and this reads it while the tensor before is written.
        Nothing where the system has no such advice."""
        if not is_external(tensor) or not hasattr(os, "posix_fadvise"):
            return
        location, offset, size = _span(tensor)
        if size == 0:
            return
        fd = self._open(tensor, location, offset, size)
        try:
            os.posix_fadvise(fd, offset, size, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def __call__(self, tensor: TensorProto) -> np.ndarray:
        """The values of ``tensor`` in its own dtype and shape (read-only; mapped if external)."""
        if not is_external(tensor):
            return tensors.read_array(tensor)
        shape = tuple(int(d) for d in tensor.dims)
        return self.raw(tensor).view(numpy_dtype(tensor)).reshape(shape)

    array = __call__
