"""The direct-I/O appender: the bytes of a plain file whatever the writes, flushes and reads,
with O_DIRECT where the file system takes it and without it where it refuses it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from onnxprune.graph import direct_io
from onnxprune.graph.direct_io import ALIGN, DirectAppender, aligned_buffer

STAGE = 4 * ALIGN  # a small stage, so that writes cross it often


def _direct_flag(fd: int) -> bool:
    """Whether the descriptor ``fd`` transfers past the page cache (O_DIRECT)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    import fcntl

    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def _script(seed: int) -> list[tuple[str, int]]:
    """Writes (of sizes around the block and the stage), flushes and reads, in a seeded order."""
    rng = np.random.default_rng(seed)
    sizes = [0, 1, 7, ALIGN - 1, ALIGN, ALIGN + 1, STAGE - 3, STAGE, STAGE + 5, 3 * STAGE + 11]
    steps = []
    for _ in range(40):
        kind = rng.choice(["write", "write", "flush", "read"])
        steps.append((str(kind), int(rng.choice(sizes))))
    return steps


def _run(path: Path, seed: int) -> tuple[bytes, DirectAppender]:
    rng = np.random.default_rng(seed + 1000)
    expected = bytearray()
    with DirectAppender(path, stage_bytes=STAGE, verify=True) as appender:
        for kind, size in _script(seed):
            if kind == "write":
                data = rng.integers(0, 256, size, dtype=np.uint8)
                assert appender.write(data if size % 2 else data.tobytes()) == size
                expected += data.tobytes()
            elif kind == "flush":
                appender.flush()
                assert path.stat().st_size == len(expected)  # cut back to the true length
            else:  # every byte written so far read back as written, none past the end
                position = int(rng.integers(0, len(expected) + 1))
                assert appender.verified(position, size) == (position + size <= len(expected))
            assert appender.tell() == len(expected)
    return bytes(expected), appender


@pytest.mark.parametrize("seed", range(6))
def test_the_file_holds_every_byte_written_in_order_whatever_the_flushes_and_reads(tmp_path: Path, seed: int):
    path = tmp_path / "data.bin"
    expected, appender = _run(path, seed)
    assert path.read_bytes() == expected
    assert appender.closed


def test_the_file_is_written_past_the_page_cache_where_the_file_system_allows_it(tmp_path: Path):
    path = tmp_path / "data.bin"
    with DirectAppender(path, stage_bytes=STAGE) as appender:
        assert _direct_flag(appender.fileno()) == appender.direct
        appender.write(b"x" * (STAGE + 3))
    assert path.read_bytes() == b"x" * (STAGE + 3)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")
def test_a_file_system_that_refuses_direct_io_at_open_gets_a_plain_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    real = os.open

    def refusing(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, mode)

    monkeypatch.setattr(direct_io.os, "open", refusing)
    expected, appender = _run(tmp_path / "data.bin", 3)
    assert not appender.direct
    assert (tmp_path / "data.bin").read_bytes() == expected


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT here")
@pytest.mark.parametrize("call", ["pwrite", "preadv"])
def test_a_file_system_that_refuses_direct_io_at_the_first_transfer_gets_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
):
    """Refused at the first write, or at the first read-back: the same bytes, the same
    read-backs, through the page cache."""
    real = getattr(os, call)
    refused = []

    def refusing(fd: int, data: object, offset: int) -> int:
        if _direct_flag(fd):
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(direct_io.os, call, refusing)
    expected, appender = _run(tmp_path / "data.bin", 4)
    assert refused and not appender.direct
    assert (tmp_path / "data.bin").read_bytes() == expected


def test_other_write_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_io.os, "pwrite", full)
    with pytest.raises(OSError, match="No space"), DirectAppender(tmp_path / "d.bin", stage_bytes=STAGE) as appender:
        appender.write(b"y" * 10)
        appender.flush()
    assert appender.closed


def test_the_stage_is_whole_blocks(tmp_path: Path):
    with pytest.raises(ValueError, match="multiple"):
        DirectAppender(tmp_path / "d.bin", stage_bytes=ALIGN + 1)
    buffer = aligned_buffer(1000, 512)
    assert buffer.size == 1000 and buffer.ctypes.data % 512 == 0


def _corrupting_writes(monkeypatch: pytest.MonkeyPatch, path: Path, at: int) -> list[int]:
    """Make every transfer that covers byte ``at`` of ``path`` leave that byte flipped on the file
    (as a faulty device would): written, then changed through another descriptor."""
    real, hits = direct_io.os.pwrite, []

    def pwrite(fd: int, view: memoryview, offset: int) -> int:
        count = real(fd, view, offset)
        if offset <= at < offset + count:
            with open(path, "r+b") as other:
                other.seek(at)
                other.write(bytes([view[at - offset] ^ 1]))
            hits.append(offset)
        return count

    monkeypatch.setattr(direct_io.os, "pwrite", pwrite)
    return hits


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", [1, 7, 8, 100, STAGE - 4, STAGE, 3 * STAGE + 11])
def test_verify_reads_every_transfer_back_and_finds_a_changed_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, direct: bool
):
    if not direct:
        monkeypatch.setattr(direct_io, "_DIRECT", 0)
    path = tmp_path / "data.bin"
    payload = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    with DirectAppender(path, stage_bytes=STAGE, verify=True) as appender:
        appender.write(b"head")
        appender.write(payload)
        assert appender.verified(4, size) and appender.verified(0, 4 + size)
        assert not appender.verified(4, size + 1)  # one byte past the end: never written
    with DirectAppender(path, stage_bytes=STAGE) as plain:  # without verify nothing is vouched for
        plain.write(payload)
        assert not plain.verified(0, size)
    for where in sorted({0, size // 2, size - 1}):
        with monkeypatch.context() as patch:
            hits = _corrupting_writes(patch, path, 4 + where)
            with DirectAppender(path, stage_bytes=STAGE, verify=True) as appender:
                appender.write(b"head")
                appender.write(payload)
                assert not appender.verified(4, size) and hits
                assert not appender.verified(4 + where, 1)
                start = (4 + where) // STAGE * STAGE  # the transfer that held it: the others are fine
                assert appender.verified(0, start) if start else True
                if start + STAGE < 4 + size:
                    assert appender.verified(start + STAGE, 4 + size - start - STAGE)


def test_a_block_written_again_after_a_flush_is_read_back_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "data.bin"
    with DirectAppender(path, stage_bytes=STAGE, verify=True) as appender:
        appender.write(b"a" * 10)
        assert appender.verified(0, 10)  # the flush wrote the partial block, padded, and read it back
        hits = _corrupting_writes(monkeypatch, path, 3)
        appender.write(b"b" * 10)  # the same block, written again whole at the next flush
        assert not appender.verified(0, 10) and not appender.verified(10, 10) and hits
