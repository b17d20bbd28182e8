"""im2col: the rows a Conv multiplies its weight with, as matrices, in bounded chunks.

An ONNX ``Conv`` with input ``X [N, C, *S]``, weight ``W [M, C/g, *k]`` and ``g`` groups
computes, for group ``j``, output position ``o`` and output channel ``m`` of that group,

    Y[n, j·M/g + m, o] = Σ_{c, t}  W[j·M/g + m, c, t] · Xp[n, j·C/g + c, o·s + t·d]

where ``Xp`` is ``X`` zero-padded by ``pads`` (ONNX order: all begins, then all ends),
``s`` the strides, ``d`` the dilations and ``t`` runs over the kernel positions. Laying
out one row per (sample, output position) and one column per (channel ``c``, kernel
position ``t``), channel-major then kernel positions in C order, gives the patch matrix
``P_j [N·∏out, C/g·∏k]`` with

    Y_j = W_j · P_jᵀ,    W_j = W[j·M/g:(j+1)·M/g].reshape(M/g, -1)

so statistics of ``P_j`` (``P_jᵀP_j``, column means, column squared norms) are those of
the layer's input as its weight sees it. A depthwise Conv (``C/g = 1``) is the case
``cols = ∏k``. Output size per spatial axis: ``⌊(S + pb + pe − ((k−1)·d + 1)) / s⌋ + 1``.

``auto_pad`` (SAME_UPPER, SAME_LOWER, VALID) is resolved to explicit pads from the input
size as the ONNX operator spec does: ``out = ⌈S / s⌉`` and the total padding
``max(0, (out−1)·s + (k−1)·d + 1 − S)`` split evenly, the odd one at the end (SAME_UPPER)
or at the beginning (SAME_LOWER).

Patches are gathered tap by tap (:func:`patch_rows`): each sample is padded, flattened per
channel to ``Xp [C, ∏Sp]``, and every (tap ``t``, output position ``o``) pair is one flat index
``o·s + t·d`` into it, so one ``take`` along each channel's row gives a block transposed,
``[groups, C/g·∏k, rows]``, yielded as its transposed view ``[groups, rows, C/g·∏k]``. A
subset of the rows (the rows a capture that samples rows draws: :mod:`onnxprune.row_sampling`)
costs its own rows only; :func:`patch_blocks` takes them all. Blocks hold one sample's rows at
most and stay under ``max_bytes`` (one row at least). Pure numpy.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from onnxprune.threads import WORKERS, map_in_threads

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")

#: a patch block of at least this many bytes is gathered on :data:`onnxprune.threads.WORKERS`
#: threads, its channels split between them (numpy's ``take`` releases the GIL). Medians of 30:
#: 240 channels × 25 taps × 1024 rows (rec's 5×5 depthwise, 23 MiB) 6.0 → 3.1 ms, 480 × 25 ×
#: 1024 16.4 → 7.8 ms, 64 × 9 × 4096 (9 MiB) 1.6 → 1.4 ms; below a MiB the threads cost more
#: than they save
GATHER_SPLIT_BYTES = 4 << 20


@dataclass(frozen=True)
class ConvGeometry:
    """A Conv's spatial parameters, one entry per spatial axis (pads: begins then ends)."""

    groups: int
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...]
    auto_pad: str = "NOTSET"

    @property
    def extent(self) -> tuple[int, ...]:
        """The dilated kernel's size per axis: ``(k − 1)·d + 1``."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=True))

    def resolved_pads(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Explicit pads for an input of spatial size ``spatial`` (see module docstring)."""
        if self.auto_pad in ("NOTSET", ""):
            return self.pads
        if self.auto_pad == "VALID":
            return (0,) * (2 * len(self.kernel))
        begins, ends = [], []
        for size, stride, ext in zip(spatial, self.strides, self.extent, strict=True):
            total = max(0, (math.ceil(size / stride) - 1) * stride + ext - size)
            small, large = total // 2, total - total // 2
            begin, end = (small, large) if self.auto_pad == "SAME_UPPER" else (large, small)
            begins.append(begin)
            ends.append(end)
        return (*begins, *ends)

    def output_shape(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Output positions per spatial axis (0 where the padded input is smaller than the kernel)."""
        pads = self.resolved_pads(spatial)
        rank = len(self.kernel)
        return tuple(
            max(0, (size + pads[i] + pads[i + rank] - self.extent[i]) // self.strides[i] + 1)
            for i, size in enumerate(spatial)
        )


def conv_cols(channels: int, geometry: ConvGeometry) -> int:
    """The reduction length per group, ``C/g · ∏k``."""
    return channels // geometry.groups * math.prod(geometry.kernel)


def patch_blocks(x: np.ndarray, geometry: ConvGeometry, *, max_bytes: int) -> Iterator[np.ndarray]:
    """Patch blocks ``[groups, rows, C/g·∏k]`` of ``x [N, C, *S]``, rows in (sample, position) order, in
    ``x``'s dtype when it is floating (else float64).

    Concatenating the blocks along axis 1 gives ``P_j`` of the module docstring for every
    group ``j``. A block holds one sample's rows at most, and at most ``max_bytes`` (one row at
    least): :func:`patch_rows` of every row.
    """
    count = x.shape[0]
    positions = math.prod(geometry.output_shape(x.shape[2:]))
    yield from patch_rows(x, geometry, np.arange(count * positions), max_bytes=max_bytes)


def patch_rows(x: np.ndarray, geometry: ConvGeometry, rows: np.ndarray, *, max_bytes: int) -> Iterator[np.ndarray]:
    """The rows ``rows`` (indices into the ``N·∏out`` rows of :func:`patch_blocks`, in (sample,
    position) C order; ascending keeps the blocks in that order) of every ``P_j``, as blocks
    ``[groups, ≤ step, C/g·∏k]`` under ``max_bytes`` (at least one row), in the dtype of
    :func:`patch_blocks`: concatenated along axis 1 they are ``P_j[rows]``.

    Gathered tap by tap (:func:`_tap_offsets`): the padded sample flattened per channel,
    ``Xp [C, ∏Sp]``, and one flat index per (tap, chosen position), ``o·s + t·d`` raveled, so
    that one ``take`` along each channel's row gives ``[C, ∏k, m]``: the block transposed,
    ``[groups, C/g·∏k, m]``, which is yielded as its transposed view (the products read any
    strides). Each channel's row is read in place and each block written in order, where a
    fancy index into the windows' view gathered ``∏k`` taps for every (channel, position) pair
    and transposed them once more: a 5×5 depthwise Conv on 240 channels at 12×320 (1024 of
    3840 positions) took 36 ms a sample that way."""
    count, channels = x.shape[:2]
    spatial = x.shape[2:]
    out = geometry.output_shape(spatial)
    if count == 0 or math.prod(out) == 0 or len(rows) == 0:
        return
    groups = geometry.groups
    dtype = _dtype(x)
    row_bytes = groups * conv_cols(channels, geometry) * dtype.itemsize
    step = max(1, max_bytes // row_bytes)
    positions = math.prod(out)
    rows = np.asarray(rows)
    samples = rows // positions
    pads = geometry.resolved_pads(spatial)
    rank = len(geometry.kernel)
    widths = [(0, 0), *((pads[i], pads[i + rank]) for i in range(rank))]
    padded_shape = tuple(size + pads[i] + pads[i + rank] for i, size in enumerate(spatial))
    taps = _tap_offsets(geometry, padded_shape)  # [∏k]
    # one sample padded at a time, never the whole batch
    for sample in np.unique(samples):
        mine = rows[samples == sample] - sample * positions
        plane = np.pad(x[sample], widths) if any(pads) else x[sample]
        flat = np.ascontiguousarray(plane, dtype=dtype).reshape(channels, -1)  # [C, ∏Sp]
        for start in range(0, len(mine), step):
            base = _base_offsets(mine[start : start + step], out, geometry, padded_shape)  # [m]
            block = _gather(flat, taps[:, None] + base[None, :])  # [C, ∏k, m]
            yield block.reshape(groups, -1, len(base)).transpose(0, 2, 1)


def _gather(flat: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``np.take(flat, index, axis=1)`` (``[C, *index.shape]``; ``index`` within each row), the
    channels split between threads when it holds :data:`GATHER_SPLIT_BYTES` or more (each part
    written in place: ``mode="clip"``, as the default mode would gather into a buffer first)."""
    channels = flat.shape[0]
    if channels < WORKERS or channels * index.size * flat.itemsize < GATHER_SPLIT_BYTES:
        return np.take(flat, index, axis=1)
    out = np.empty((channels, *index.shape), dtype=flat.dtype)

    def part(bounds: tuple[int, int]) -> None:
        first, stop = bounds
        np.take(flat[first:stop], index, axis=1, out=out[first:stop], mode="clip")

    map_in_threads(part, list(itertools.pairwise(np.linspace(0, channels, WORKERS + 1).astype(int).tolist())))
    return out


def _plane_strides(padded: Sequence[int]) -> list[int]:
    """Elements per step along each axis of a C-ordered plane of shape ``padded``."""
    return [math.prod(padded[axis + 1 :]) for axis in range(len(padded))]


def _tap_offsets(geometry: ConvGeometry, padded: Sequence[int]) -> np.ndarray:
    """The flat offset ``Σ_i t_i·d_i·stride_i`` of every kernel tap ``t`` (C order) in a padded
    plane of shape ``padded`` (``stride_i``: the plane's element strides)."""
    strides = _plane_strides(padded)
    grids = np.meshgrid(
        *(np.arange(k) * d for k, d in zip(geometry.kernel, geometry.dilations, strict=True)), indexing="ij"
    )
    return sum(g.reshape(-1) * stride for g, stride in zip(grids, strides, strict=True)).astype(np.intp)


def _base_offsets(
    positions: np.ndarray, out: Sequence[int], geometry: ConvGeometry, padded: Sequence[int]
) -> np.ndarray:
    """The flat offset in the padded plane of the first tap of each output position (flat
    indices into ``out``): ``Σ_i o_i·s_i·stride_i``."""
    strides = _plane_strides(padded)
    at = np.unravel_index(positions, out)
    return sum(a.astype(np.intp) * (s * stride) for a, s, stride in zip(at, geometry.strides, strides, strict=True))


def windows(x: np.ndarray, geometry: ConvGeometry, fill: float = 0.0) -> np.ndarray:
    """The view ``[n, C, *out, *k]`` of every patch of ``x`` (padded with ``fill``: a copy when
    it has pads)."""
    rank = len(geometry.kernel)
    pads = geometry.resolved_pads(x.shape[2:])
    widths = [(0, 0), (0, 0), *((pads[i], pads[i + rank]) for i in range(rank))]
    padded = np.pad(x, widths, constant_values=fill) if any(pads) else x
    windows = sliding_window_view(padded, geometry.extent, axis=tuple(range(2, 2 + rank)))
    # windows: [n, C, *positions, *extent]; keep every stride-th position and every dilation-th tap.
    index = (
        slice(None),
        slice(None),
        *(slice(None, None, s) for s in geometry.strides),
        *(slice(None, None, d) for d in geometry.dilations),
    )
    return windows[index]


def _dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
