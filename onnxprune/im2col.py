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

Patches are built with :func:`numpy.lib.stride_tricks.sliding_window_view` on the padded
input (a view) and copied once into a float64 block; blocks are cut over samples, or over
the first output axis of one sample, so that a block stays under ``max_bytes`` (one row
of output positions is the smallest block).

A subset of the rows (:func:`patch_rows`, the rows a capture that samples rows draws:
:mod:`onnxprune.row_sampling`) is gathered straight from that view by fancy indexing on the
sample and position axes, ``Xp[n, :, o·s + t·d]`` for the chosen ``(n, o)`` only, so its cost
is that of the chosen rows, not of every patch. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


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
    group ``j``. Each block holds at most ``max_bytes`` unless a single row of output
    positions of one sample is larger.
    """
    count, channels = x.shape[:2]
    spatial = x.shape[2:]
    out = geometry.output_shape(spatial)
    if count == 0 or math.prod(out) == 0:
        return
    row_bytes = geometry.groups * conv_cols(channels, geometry) * _dtype(x).itemsize
    sample_bytes = math.prod(out) * row_bytes
    if sample_bytes <= max_bytes:
        step = max(1, max_bytes // sample_bytes)
        for start in range(0, count, step):
            yield _block(x[start : start + step], geometry, None)
        return
    line_bytes = math.prod(out[1:]) * row_bytes
    step = max(1, max_bytes // line_bytes)
    for sample in range(count):
        for start in range(0, out[0], step):
            yield _block(x[sample : sample + 1], geometry, slice(start, start + step))


def patch_rows(x: np.ndarray, geometry: ConvGeometry, rows: np.ndarray, *, max_bytes: int) -> Iterator[np.ndarray]:
    """The rows ``rows`` (indices into the ``N·∏out`` rows of :func:`patch_blocks`, in (sample,
    position) C order; ascending keeps the blocks in that order) of every ``P_j``, as blocks
    ``[groups, ≤ step, C/g·∏k]`` under ``max_bytes`` (at least one row), in the dtype of
    :func:`patch_blocks`: concatenated along axis 1 they are ``P_j[rows]``."""
    count, channels = x.shape[:2]
    out = geometry.output_shape(x.shape[2:])
    if count == 0 or math.prod(out) == 0 or len(rows) == 0:
        return
    groups, rank = geometry.groups, len(geometry.kernel)
    per_group = channels // groups
    row_bytes = groups * conv_cols(channels, geometry) * _dtype(x).itemsize
    step = max(1, max_bytes // row_bytes)
    order = (1, 0, *range(2, 3 + rank))  # [m, groups, C/g, *k] -> [groups, m, C/g, *k]
    positions = math.prod(out)
    rows = np.asarray(rows)
    samples = rows // positions
    # one sample's windows at a time: a padded copy of one sample, never of the whole batch
    for sample in np.unique(samples):
        mine = rows[samples == sample] - sample * positions
        view = windows(x[sample : sample + 1], geometry)[0]  # [C, *out, *k]
        for start in range(0, len(mine), step):
            at = np.unravel_index(mine[start : start + step], out)
            picked = np.moveaxis(view[(slice(None), *at)], 1, 0)  # [C, m, *k] -> [m, C, *k]
            m = len(at[0])
            block = np.empty((groups, m, per_group, *geometry.kernel), dtype=_dtype(x))
            block[...] = picked.reshape(m, groups, per_group, *geometry.kernel).transpose(order)
            yield block.reshape(groups, m, -1)


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


def _block(x: np.ndarray, geometry: ConvGeometry, lines: slice | None) -> np.ndarray:
    """The patch block of the samples ``x``, restricted to output positions ``lines`` of the first axis."""
    count, channels = x.shape[:2]
    rank = len(geometry.kernel)
    groups = geometry.groups
    view = windows(x, geometry)
    if lines is not None:
        view = view[:, :, lines]
    out = view.shape[2 : 2 + rank]
    view = view.reshape(count, groups, channels // groups, *out, *geometry.kernel)
    # -> [groups, n, *out, C/g, *k]: rows (sample, position), columns (channel, tap).
    order = (1, 0, *range(3, 3 + rank), 2, *range(3 + rank, 3 + 2 * rank))
    block = np.empty((groups, count, *out, channels // groups, *geometry.kernel), dtype=_dtype(x))
    block[...] = view.transpose(order)
    return block.reshape(groups, count * math.prod(out), -1)
