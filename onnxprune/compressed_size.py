"""What a model costs to ship: its deflate-compressed size, exact or estimated from a sample.

The figure is zlib level 6 (what zip, wheels and container layers use) over the model file
and its external data. Computed exactly it deflates every byte, about 25 MB/s on float
weights (3.5 s for a 90 MB model here), minutes for gigabytes. So by default it is
*estimated*:

**The estimator.** The bytes of each file are cut into blocks of ``B`` bytes (the last one
shorter). For a file of ``N > k`` blocks the blocks are split into ``k`` strata of consecutive
blocks (``k`` shared among the files in proportion to their sizes, an even number, at least
two each), and
one block ``i_h`` is drawn from stratum ``h`` (seeded: the same file gives the same
estimate). The block is deflated as it would be inside the stream: with the ``32 KiB``
before it as the preset dictionary (deflate's whole window) and no header, so its
compressed length ``c_h`` is what those bytes add to the file's stream. With ``n_h`` bytes
in stratum ``h`` and ``b_h`` in the drawn block, the stratified estimate of the file is

    Ĉ = Σ_h n_h · c_h / b_h + 6                 (zlib's header and checksum)

and its variance is estimated by collapsing neighbouring strata in pairs ``(a, b)``: one draw
per stratum shows no spread within it, and with ``T̂_h = n_h c_h / b_h``

    E[(T̂_a − T̂_b)²] = Var T̂_a + Var T̂_b + (T_a − T_b)² ≥ Var(T̂_a + T̂_b),

so ``v̂ = Σ_pairs (T̂_a − T̂_b)²`` over-states the variance (a file's strata count is made
even). :func:`estimate` reports ``σ̂ = √v̂ / Ĉ`` as :attr:`DeflateSize.relative_error`.
Files of at most their share of blocks are deflated whole (exact). The work is ``k·B``
bytes deflated whatever the model's size: with the defaults (192 blocks of 16 KiB, 3 MiB)
about 0.13 s. Measured on all-MiniLM-L6-v2 dense, 50 %, 2:4 and layer-adaptive 50 %
(90 MB each) and magnitude 90 %: within 0.2, 0.2, 0.0, 1.2 and 0.02 % of the exact figure,
stated σ̂ 0.2–0.7 %.
Blocks of 8 KiB over-state the size by 0.4–0.9 % (each deflate block carries its own code
tables, which the stream shares over longer blocks); 32 KiB blocks cost twice as much for
the same error.

**The exact figure** deflates every file as one stream, in chunks. It is cached in this
process by the files' content (BLAKE2b of their bytes, about 1 GB/s): evaluating a model
after pruning it, or a base model against several candidates, deflates it once.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

#: zlib level of the figure (zip's and pip's default)
LEVEL = 6
#: bytes per sampled block
BLOCK = 1 << 14
#: blocks sampled per estimate (over all files)
SAMPLE_BLOCKS = 192
#: deflate's window: the bytes before a block that its matches may reach
WINDOW = 1 << 15
#: zlib's framing around a raw deflate stream: 2 bytes of header, 4 of Adler-32
ZLIB_FRAMING = 6
_CHUNK = 1 << 24
_SEED = 0

_exact_cache: dict[str, int] = {}


@dataclass(frozen=True)
class DeflateSize:
    """A deflate-compressed size: exact, or estimated with a relative standard error."""

    bytes: int
    exact: bool
    relative_error: float = 0.0  # σ̂/Ĉ of the estimate; 0 when exact


def _deflate(handle: BinaryIO, read: Callable[[int], None] | None = None) -> int:
    """Bytes of the whole stream ``handle`` deflated at :data:`LEVEL`, in chunks."""
    compressor = zlib.compressobj(LEVEL)
    packed = 0
    while chunk := handle.read(_CHUNK):
        packed += len(compressor.compress(chunk))
        if read is not None:
            read(len(chunk))
    return packed + len(compressor.flush())


def _deflate_file(path: Path, read: Callable[[int], None] | None = None) -> int:
    with open(path, "rb") as handle:
        return _deflate(handle, read)


def _content_key(files: Sequence[Path]) -> str:
    digest = hashlib.blake2b(digest_size=20)
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0file\0")
    return digest.hexdigest()


def exact(files: Sequence[Path], *, read: Callable[[int], None] | None = None) -> DeflateSize:
    """Every file deflated whole (level :data:`LEVEL`), the sum; cached by content.
    ``read(n)`` is called as each chunk of ``n`` bytes is deflated (progress)."""
    key = _content_key(files)
    if key not in _exact_cache:
        _exact_cache[key] = sum(_deflate_file(Path(f), read) for f in files)
    elif read is not None:
        read(sum(os.path.getsize(f) for f in files))
    return DeflateSize(_exact_cache[key], exact=True)


def _block_cost(handle: object, start: int, length: int) -> int:
    """Compressed bytes that ``length`` bytes at ``start`` add to the file's deflate stream."""
    before = max(0, start - WINDOW)
    handle.seek(before)  # type: ignore[attr-defined]
    history = handle.read(start - before)  # type: ignore[attr-defined]
    block = handle.read(length)  # type: ignore[attr-defined]
    if history:
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15, zdict=history)
    else:
        compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
    return len(compressor.compress(block)) + len(compressor.flush())


def _strata(sizes: Sequence[int], blocks: int) -> list[int]:
    """Strata per file: ``blocks`` shared in proportion to the sizes, an even number, at least two."""
    total = sum(sizes)
    return [2 * max(1, round(blocks * s / total / 2)) if s else 0 for s in sizes]


def estimate(files: Sequence[Path], *, blocks: int = SAMPLE_BLOCKS, block: int = BLOCK) -> DeflateSize:
    """The stratified estimate of the files' deflate size (module docstring); exact for
    files of at most their share of ``blocks`` blocks."""
    paths = [Path(f) for f in files]
    sizes = [os.path.getsize(p) for p in paths]
    if sum(sizes) <= blocks * block:
        return exact(paths)
    return _estimate([(size, lambda p=p: open(p, "rb")) for p, size in zip(paths, sizes, strict=True)], blocks, block)


def estimate_bytes(data: bytes, *, blocks: int = SAMPLE_BLOCKS, block: int = BLOCK) -> DeflateSize:
    """:func:`estimate` of bytes held in memory (a serialized model a dry run never writes)."""
    if len(data) <= blocks * block:
        return DeflateSize(_deflate(io.BytesIO(data)), exact=True)
    return _estimate([(len(data), lambda: io.BytesIO(data))], blocks, block)


def _estimate(sources: Sequence[tuple[int, Callable[[], BinaryIO]]], blocks: int, block: int) -> DeflateSize:
    rng = np.random.default_rng(_SEED)
    total = 0.0
    variance = 0.0
    any_sampled = False
    for (size, opener), k in zip(sources, _strata([s for s, _ in sources], blocks), strict=True):
        n_blocks = math.ceil(size / block) if size else 0
        if n_blocks <= k:
            with opener() as handle:
                total += _deflate(handle)
            continue
        any_sampled = True
        edges = np.linspace(0, n_blocks, k + 1).round().astype(np.int64)
        strata_totals = []
        with opener() as handle:
            for lo, hi in itertools.pairwise(edges):
                i = int(rng.integers(lo, hi))
                start = i * block
                length = min(block, size - start)
                stratum_bytes = min(int(hi) * block, size) - int(lo) * block
                strata_totals.append(stratum_bytes * _block_cost(handle, start, length) / length)
        total += sum(strata_totals) + ZLIB_FRAMING
        for a, b in zip(strata_totals[0::2], strata_totals[1::2], strict=False):
            variance += (a - b) ** 2  # collapsed pair: E[(T̂_a − T̂_b)²] ≥ Var(T̂_a) + Var(T̂_b)
    if not any_sampled:
        return DeflateSize(round(total), exact=True)
    return DeflateSize(round(total), exact=False, relative_error=math.sqrt(variance) / total if total else 0.0)


#: What a caller may ask for: the exact figure, the estimate, or none.
MODES = ("exact", "estimate", "off")


def mode_of(value: bool | str) -> str:
    """A mode of :data:`MODES` from a flag: True is the default (the estimate), False "off"."""
    if value is True:
        return "estimate"
    if value is False:
        return "off"
    if value not in MODES:
        raise ValueError(f"compressed size {value!r}: expected one of {', '.join(MODES)}")
    return value


def deflate_size(files: Sequence[Path], mode: str, *, read: Callable[[int], None] | None = None) -> DeflateSize | None:
    """The deflate size of ``files`` by ``mode`` (:data:`MODES`; None for "off"); ``read``:
    see :func:`exact`."""
    if mode == "off":
        return None
    if mode == "exact":
        return exact(files, read=read)
    if mode == "estimate":
        return estimate(files)
    raise ValueError(f"compressed-size mode {mode!r}: expected exact, estimate or off")
