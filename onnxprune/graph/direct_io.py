"""Appending to a file past the page cache (``O_DIRECT``), and reading it back the same way.

Why
    A buffered ``write`` copies every byte into the page cache, and a page the kernel gives the
    cache for the first time is cleared first. Writing a model larger than memory fills the
    cache with pages nobody reads again, so the kernel also has to reclaim them as it goes,
    evicting the input the pruner reads next. On ``tools/bench_large.py``'s 12 GB model that
    kernel work was nearly half of a LAMP prune's CPU time (``perf``: 23 % clearing pages, 22 %
    copying into the cache).
    ``O_DIRECT`` sends the bytes from our buffer to the device instead: no copy into the cache,
    no reclaim. The figures are in the README (stop 45).

The rules of ``O_DIRECT`` (Linux ``open(2)``)
    The address of the buffer, the file offset and the length of every transfer are multiples
    of the device's logical block size. :data:`ALIGN` (4096) is a multiple of every usual one
    (512, 4096).

How :class:`DirectAppender` keeps them
    Bytes written are copied into one aligned *stage* of :data:`STAGE_BYTES`; a full stage is
    written at the file's end, which stays a multiple of :data:`ALIGN`. :meth:`DirectAppender.flush`
    writes what is staged rounded up to whole blocks and cuts the file back to its true length
    (``ftruncate``); the last, partial block stays staged, so the next write writes that block
    again, whole. The file's bytes are the bytes written, in order, like a plain file's.

Reading back
    With ``verify`` every transfer is read back at once, whole blocks into one aligned scratch
    the size of the stage, and compared with the stage it left (:meth:`DirectAppender.verified`):
    from the device where the file is direct, so the comparison is with what the device holds,
    not with a page-cache copy.

Where ``O_DIRECT`` is missing or refused
    A system without it (macOS, Windows) opens the file plainly. A file system that refuses it
    (tmpfs at ``open``, some others only at the first transfer: ``EINVAL``) gets the same
    writes without it (``fcntl`` clears the flag): the same bytes, through the page cache, and
    the same read-backs.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np

log = logging.getLogger(__name__)

#: Alignment of every direct transfer's address, offset and length.
ALIGN = 4096
#: Bytes staged before a write (a multiple of :data:`ALIGN`).
STAGE_BYTES = 32 << 20
_DIRECT = getattr(os, "O_DIRECT", 0)


def _pread(fd: int, buffer: memoryview, offset: int) -> int:
    """``os.preadv`` of one buffer: the bytes read into ``buffer`` from ``offset``."""
    return os.preadv(fd, [buffer], offset)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Two uint8 arrays of one size hold the same bytes (compared as 8-byte words, the tail as bytes)."""
    words = a.size // 8 * 8
    return np.array_equal(a[:words].view(np.uint64), b[:words].view(np.uint64)) and np.array_equal(a[words:], b[words:])


def aligned_buffer(size: int, align: int = ALIGN) -> np.ndarray:
    """A uint8 array of ``size`` bytes whose first byte's address is a multiple of ``align``."""
    raw = np.empty(size + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + size]


class DirectAppender:
    """A file opened for appending bytes (and reading them back) with ``O_DIRECT`` where the
    system and the file system allow it (:attr:`direct`), else plainly; the file a ``"w+b"``
    ``open`` would give (created or emptied; mode ``0o666`` less the umask).

    ``write`` and ``flush`` behave as a buffered binary file's.

    With ``verify``, every transfer is read back at once (from the device, past the page cache,
    where the file is direct) into one scratch the size of the stage, and compared with the stage
    that was written: :meth:`verified` says whether a range of the file read back as written.
    What is compared is what left this process, so nothing the size of a tensor is kept for it."""

    def __init__(self, path: str | os.PathLike[str], *, stage_bytes: int = STAGE_BYTES, verify: bool = False) -> None:
        if stage_bytes <= 0 or stage_bytes % ALIGN:
            raise ValueError(f"the stage must be a positive multiple of {ALIGN} bytes")
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        self.direct = bool(_DIRECT)
        try:
            self._fd = os.open(path, flags | _DIRECT, 0o666)
        except OSError as exc:
            if not _DIRECT or exc.errno != errno.EINVAL:
                raise
            self.direct = False
            self._fd = os.open(path, flags, 0o666)
        self.name = str(Path(path))
        self._stage = aligned_buffer(stage_bytes)
        self._base = 0  # the file offset of the stage's first byte: a multiple of ALIGN
        self._used = 0  # bytes staged
        self._on_file = True  # the staged bytes are on the file as they stand (nothing since a flush)
        self.closed = False
        self._scratch = aligned_buffer(stage_bytes) if verify else None
        self._checked = 0  # bytes from the file's start read back (each at least once)
        self._mismatched: list[tuple[int, int]] = []  # file ranges that read back other bytes

    # the parts of a binary file the writers use
    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._base + self._used

    def write(self, data: bytes | memoryview | np.ndarray) -> int:
        """Append ``data``; its bytes reach the file when the stage fills or at :meth:`flush`."""
        source = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        done = 0
        while done < source.size:
            take = min(source.size - done, self._stage.size - self._used)
            self._stage[self._used : self._used + take] = source[done : done + take]
            self._used += take
            self._on_file = False
            done += take
            if self._used == self._stage.size:
                self._emit(self._used)
                self._base += self._used
                self._used = 0
                self._on_file = True
        return int(source.size)

    def flush(self) -> None:
        """Put every byte written on the file: the staged blocks, the last one padded and the
        file cut back to its true length; that block stays staged (see the module docstring)."""
        if self._on_file:
            return
        self._emit(-(-self._used // ALIGN) * ALIGN)
        os.ftruncate(self._fd, self._base + self._used)
        whole = self._used // ALIGN * ALIGN  # blocks before the partial one leave the stage
        if whole:
            self._stage[: self._used - whole] = self._stage[whole : self._used]
            self._base += whole
            self._used -= whole
        self._on_file = True

    def _emit(self, end: int) -> None:
        """Write the stage's first ``end`` bytes (a multiple of :data:`ALIGN`) at its place in the
        file: after a flush the stage holds at most the partial last block, written again whole.
        With ``verify``, read them back and compare the bytes staged (:meth:`verified`)."""
        done = 0
        while done < end:
            count = self._transfer(os.pwrite, self._stage[done:end], self._base + done, "a write")
            if count <= 0:
                raise OSError(errno.EIO, f"no bytes written to {self.name}")
            done += count
        if self._scratch is not None:
            self._compare(end, min(end, self._used))

    def _compare(self, end: int, staged: int) -> None:
        """Read back the ``end`` bytes just written from the stage (whole blocks) and compare the
        first ``staged`` of them (the rest is padding, cut off by the flush)."""
        assert self._scratch is not None
        got = 0
        while got < end:
            count = self._transfer(_pread, self._scratch[got:end], self._base + got, "a read")
            if count <= 0:
                break
            got += count
        if got < staged or not _same(self._scratch[:staged], self._stage[:staged]):
            self._mismatched.append((self._base, self._base + staged))
        self._checked = max(self._checked, self._base + staged)

    def _transfer(self, call: Callable[[int, memoryview, int], int], buffer: np.ndarray, offset: int, what: str) -> int:
        """``call(fd, buffer, offset)`` (a ``pwrite`` or a read into ``buffer``), again without
        ``O_DIRECT`` if the file system refuses it for this transfer (``EINVAL``)."""
        while True:
            try:
                return call(self._fd, memoryview(buffer), offset)
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                self._plain(what)

    def verified(self, position: int, length: int) -> bool:
        """True if the file's bytes ``[position, position + length)`` were all read back as they
        were written (only with ``verify``; what is staged is put on the file first)."""
        if self._scratch is None:
            return False
        self.flush()
        end = position + length
        return end <= self._checked and not any(a < end and position < b for a, b in self._mismatched)

    def _plain(self, what: str) -> None:
        """Go on without ``O_DIRECT``: the file system refused it for ``what``."""
        import fcntl  # only where O_DIRECT exists (not on Windows)

        log.info("%s: direct I/O refused (%s); writing through the page cache", self.name, what)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_DIRECT)
        self.direct = False

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            os.close(self._fd)

    def __enter__(self) -> DirectAppender:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:  # the caller's error comes first; the file is cleaned with its staging
            self.closed = True
            os.close(self._fd)
