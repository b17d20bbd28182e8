"""Allocation: how many weights each layer loses.

Local scope
    Every layer gets the same amount ``s``: exactly ``floor(s · n)`` of its ``n`` weights
    are zero afterwards (:func:`count_for_amount`; the product is taken in decimal, so
    0.29 of 100 weights is 29, not 28 as binary floating point would give).

Global scope
    One threshold ``T`` on keys that are comparable across layers (magnitude ``|w|`` or
    LAMP scores mapped to uint32 by :func:`onnxprune.sparsity.scores.global_keys`), with a
    per-layer cap ``c_l`` so that no layer collapses. With ``f_l(T) = min(#{k ∈ layer l :
    k <= T}, c_l)`` non-decreasing in ``T``, the threshold is the smallest ``T`` with
    ``Σ_l f_l(T) >= K`` for the total count ``K = floor(s · Σ n_l)``. Every layer first
    takes ``min(#{k < T}, c_l)`` and the remainder is taken from keys equal to ``T``, layer
    by layer in the given order: the total is exactly ``K`` whenever the caps allow it.

    ``T`` is found exactly without concatenating or sorting the layers: a radix select
    over the 32-bit keys, one 65536-bin histogram of the high 16 bits per layer, then one
    of the low 16 bits of the keys that fall into the selected high bin. Memory beyond the
    keys is O(65536), time a few passes over the keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal

import numpy as np

_BINS = 1 << 16


def count_for_amount(n: int, amount: float) -> int:
    """``floor(amount · n)`` computed on the decimal value of ``amount``."""
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must lie in [0, 1], got {amount}")
    return math.floor(Decimal(repr(float(amount))) * n)


def _cumulative_capped(hist: np.ndarray, base: int, cap: int) -> np.ndarray:
    return np.minimum(np.cumsum(hist) + base, cap)


def global_counts(keys: Sequence[np.ndarray], total: int, caps: Sequence[int]) -> list[int]:
    """Per-layer counts for one global threshold on uint32 ``keys`` (see module docstring).

    ``keys[l]`` is the flat uint32 key array of layer ``l``; ``caps[l]`` the most weights
    layer ``l`` may lose; ``total`` the number of weights to select overall. If the caps
    do not allow ``total``, every layer is filled to its cap.
    """
    if len(keys) != len(caps):
        raise ValueError("keys and caps must have the same length")
    caps = [min(int(c), k.size) for c, k in zip(caps, keys, strict=True)]
    if total >= sum(caps):
        return list(caps)
    if total <= 0:
        return [0] * len(keys)

    # Level 1: the high 16 bits.
    filled = np.zeros(_BINS, dtype=np.int64)
    for layer_keys, cap in zip(keys, caps, strict=True):
        hist = np.bincount((layer_keys >> np.uint32(16)).astype(np.intp), minlength=_BINS)
        filled += _cumulative_capped(hist, 0, cap)
    high = int(np.searchsorted(filled, total, side="left"))

    # Level 2: the low 16 bits of keys inside the selected high bin.
    filled = np.zeros(_BINS, dtype=np.int64)
    low_bound = np.uint32(high << 16)
    high_bound = np.uint32(((high + 1) << 16) - 1)
    for layer_keys, cap in zip(keys, caps, strict=True):
        base = int(np.count_nonzero(layer_keys < low_bound))
        inside = layer_keys[(layer_keys >= low_bound) & (layer_keys <= high_bound)]
        hist = np.bincount((inside & np.uint32(0xFFFF)).astype(np.intp), minlength=_BINS)
        filled += _cumulative_capped(hist, base, cap)
    threshold = np.uint32((high << 16) | int(np.searchsorted(filled, total, side="left")))

    # Counts: strictly below the threshold first, then ties layer by layer.
    counts = [
        min(int(np.count_nonzero(layer_keys < threshold)), cap) for layer_keys, cap in zip(keys, caps, strict=True)
    ]
    deficit = total - sum(counts)
    for i, (layer_keys, cap) in enumerate(zip(keys, caps, strict=True)):
        if deficit <= 0:
            break
        room = min(int(np.count_nonzero(layer_keys <= threshold)), cap) - counts[i]
        take = min(room, deficit)
        counts[i] += take
        deficit -= take
    return counts
