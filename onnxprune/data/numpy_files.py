"""Opening ``.npy`` and ``.npz`` files: every array's header is read before its data.

``np.load`` allocates an array as its header declares before it reads a byte of it: a header
of a few bytes that declares 4 TiB ends in a MemoryError (or in swap), not in a read error.
:func:`load_numpy` reads each array's header first (:mod:`numpy.lib.format`) and refuses, with
a one-line :class:`~onnxprune.errors.DataError`, an array that declares more bytes than the
file stores for it: the bytes after its header in an ``.npy``, the uncompressed size the zip
records for an ``.npz`` member (and no more than its compressed bytes can hold: stored
members hold as many, deflated ones at most :data:`DEFLATE_RATIO` times as many). Then
``np.load`` reads the file as before, each array allocated at most at its stored size.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib import format as npy_format

from onnxprune.errors import DataError

#: The most deflate expands its input (about 1032:1), with room for the stream's framing.
DEFLATE_RATIO = 1100
_ZIP_MAGIC = b"PK\x03\x04"


def load_numpy(path: Path, what: str) -> Any:
    """``np.load(path, allow_pickle=False)`` (an array, or an ``NpzFile`` to close), once every
    array's declared size fits what the file stores (see module docstring); ``what`` names the
    file in the message (``"labels file x.npy"``). Errors of the load itself propagate as
    ``np.load`` raises them, for the caller to word."""
    check_declared_sizes(path, what)
    return np.load(path, allow_pickle=False)


def check_declared_sizes(path: Path, what: str) -> None:
    """Raise :class:`DataError` for an array in the ``.npy`` or ``.npz`` at ``path`` whose
    header declares more bytes than the file stores for it. A file this cannot read (missing,
    no npy or zip, a broken header) is left to ``np.load`` and its own error."""
    try:
        with open(path, "rb") as stream:
            magic = stream.read(len(npy_format.MAGIC_PREFIX))
            if magic == npy_format.MAGIC_PREFIX:  # as np.load tells them apart
                stream.seek(0)
                declared = _declared(stream)
                if declared is not None:
                    _refuse_larger(what, path, None, declared, path.stat().st_size - stream.tell())
                return
        if not magic.startswith(_ZIP_MAGIC):
            return
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    declared = _declared(member)
                    header = member.tell()
                if declared is None:
                    continue
                stored = info.file_size - header
                if info.compress_type == zipfile.ZIP_STORED:
                    stored = min(stored, info.compress_size - header)
                elif info.compress_type == zipfile.ZIP_DEFLATED:
                    stored = min(stored, info.compress_size * DEFLATE_RATIO)
                _refuse_larger(what, path, info.filename[: -len(".npy")], declared, stored)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError):
        return  # np.load says what is wrong with it


def _declared(stream: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """Shape, dtype and bytes an npy header at the stream's position declares; None when its
    size cannot be told (an object array, which ``allow_pickle=False`` refuses anyway)."""
    major, _ = npy_format.read_magic(stream)
    read = npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
    shape, _, dtype = read(stream)  # version 3 differs from 2 only in the header's encoding
    if dtype.hasobject:
        return None
    return tuple(int(d) for d in shape), dtype, math.prod(int(d) for d in shape) * int(dtype.itemsize)


def _refuse_larger(
    what: str, path: Path, key: str | None, declared: tuple[tuple[int, ...], np.dtype, int], stored: int
) -> None:
    shape, dtype, size = declared
    if size <= max(stored, 0):
        return
    array = f"its array '{key}'" if key is not None else "its array"
    raise DataError(
        f"{what} {path}: {array} declares shape {shape} of {dtype} ({size:,} bytes) but the file stores "
        f"{max(stored, 0):,} bytes for it: the file is corrupt or forged; save it again with np.save/np.savez"
    )
