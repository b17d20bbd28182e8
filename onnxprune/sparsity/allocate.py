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

    ``T`` is found exactly without concatenating or sorting the layers, in two passes over
    the keys (each pass reads every layer once):

    1. *Bracket from a sample.* Every ``r``-th key of each layer (``r`` chosen for about
       2²⁰ samples in all) estimates ``f_l``; the estimated threshold ``T̂`` is found on
       the merged sample, caps included, and widened to a bracket ``[lo, hi]`` of ±0.5 %
       of the sample (at least ±8 standard deviations of the sample quantile).
    2. *Exact solve inside the bracket.* One pass counts ``b_l = #{k < lo}`` and keeps the
       keys in ``[lo, hi]`` (about 1 % of them). If ``Σ min(b_l, c_l) < K <= Σ min(b_l +
       #inside_l, c_l)`` the threshold lies in the bracket: where no cap can bind there
       (``b_l + #inside_l <= c_l``) it is the ``(K − Σ b_l)``-th smallest kept key (one
       partition), else a binary search over the sorted kept keys finds it; otherwise (a badly
       unrepresentative sample) the exact radix select below runs instead. Either way the
       result is exact, never estimated.

    Radix select (the fallback): one 65536-bin histogram of the high 16 bits per layer,
    then one of the low 16 bits of the keys that fall into the selected high bin. Memory
    beyond the keys is O(65536), time three passes over the keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import partial
from typing import NamedTuple

import numpy as np

from onnxprune.sparsity.select import CHUNK, split_at_bracket

_BINS = 1 << 16
_SAMPLE = 1 << 20


def count_for_amount(n: int, amount: float) -> int:
    """``floor(amount · n)`` computed on the decimal value of ``amount``."""
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must lie in [0, 1], got {amount}")
    return math.floor(Decimal(repr(float(amount))) * n)


def _cumulative_capped(hist: np.ndarray, base: int, cap: int) -> np.ndarray:
    return np.minimum(np.cumsum(hist) + base, cap)


class GlobalAllocation(NamedTuple):
    """Per-layer counts, and the threshold ``T`` they come from (None when every layer is
    empty or filled to its cap, which needs no threshold); ``below``: each layer's number of
    keys strictly below ``T``, uncapped (None without a threshold). Where ``below[l] <=
    counts[l]``, layer ``l``'s ``counts[l]`` smallest keys are those below ``T`` and its first
    ``counts[l] - below[l]`` keys equal to ``T``."""

    counts: list[int]
    threshold: int | None
    below: list[int] | None = None
    #: per layer, a cut on its magnitude keys that selects its count, ``(t, #{key < t})``, when
    #: the search knows one (LAMP: :func:`~onnxprune.sparsity.lamp.lamp_allocation`), else None
    cuts: list[tuple[int, int] | None] | None = None


def global_counts(
    keys: Sequence[np.ndarray],
    total: int,
    caps: Sequence[int],
    *,
    sizes: Sequence[int] | None = None,
    sample_size: int = _SAMPLE,
    samples: Sequence[np.ndarray] | None = None,
) -> list[int]:
    """Per-layer counts for one global threshold (see :func:`allocate_global`)."""
    return allocate_global(keys, total, caps, sizes=sizes, sample_size=sample_size, samples=samples).counts


def allocate_global(
    keys: Sequence[np.ndarray],
    total: int,
    caps: Sequence[int],
    *,
    sizes: Sequence[int] | None = None,
    sample_size: int = _SAMPLE,
    samples: Sequence[np.ndarray] | None = None,
) -> GlobalAllocation:
    """Per-layer counts for one global threshold on uint32 ``keys`` (see module docstring).

    ``keys[l]`` is the flat uint32 key array of layer ``l`` (it may be computed on access:
    each layer is read twice, once with ``samples``, or four times on the fallback); ``caps[l]`` the most weights
    layer ``l`` may lose; ``total`` the number of weights to select overall. If the caps
    do not allow ``total``, every layer is filled to its cap. ``sizes`` (the layers'
    element counts) saves a pass when ``keys`` are computed on access. ``sample_size=0``
    skips the sampled bracket and runs the radix select directly. ``samples``: a strided
    sample of each layer's keys already at hand (the result stays exact whatever they are).
    """
    if len(keys) != len(caps):
        raise ValueError("keys and caps must have the same length")
    sizes = [k.size for k in keys] if sizes is None else list(sizes)
    caps = [min(int(c), n) for c, n in zip(caps, sizes, strict=True)]
    if total >= sum(caps):
        return GlobalAllocation(list(caps), None)
    if total <= 0:
        return GlobalAllocation([0] * len(keys), None)
    found = _bracketed(keys, sizes, total, caps, sample_size, samples) if sample_size > 0 else None
    if found is None:
        threshold = _radix_threshold(keys, total, caps)
        found = Counts(*_counts_at(keys, threshold, caps))
    return GlobalAllocation(fill_ties(found.below, found.at_most, total), found.threshold, found.uncapped)


def _capped_total(
    sorted_keys: Sequence[np.ndarray], base: Sequence[int], scale: Sequence[float], caps: Sequence[int], t: int
) -> float:
    """``Σ_l min(base_l + scale_l · #{k <= t in sorted_keys[l]}, cap_l)``."""
    return sum(
        min(b + s * int(np.searchsorted(k, t, side="right")), c)
        for k, b, s, c in zip(sorted_keys, base, scale, caps, strict=True)
    )


def smallest_reaching(candidates: np.ndarray, reach: Callable[[int], float], total: int) -> int | None:
    """The smallest of the sorted ``candidates`` with ``reach(t) >= total`` (None if none)."""
    lo, hi = 0, candidates.size
    while lo < hi:
        mid = (lo + hi) // 2
        if reach(int(candidates[mid])) >= total:
            hi = mid
        else:
            lo = mid + 1
    return int(candidates[lo]) if lo < candidates.size else None


class Counts(NamedTuple):
    """Capped counts of keys below and at most the threshold, the threshold, and the uncapped
    counts below it."""

    below: list[int]
    at_most: list[int]
    threshold: int
    uncapped: list[int]


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (numpy's hash-based unique is several times slower here)."""
    values = np.sort(values)
    if values.size < 2:
        return values
    keep = np.empty(values.size, dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _bracketed(
    keys: Sequence[np.ndarray],
    sizes: Sequence[int],
    total: int,
    caps: Sequence[int],
    sample_size: int,
    given: Sequence[np.ndarray] | None = None,
) -> Counts | None:
    """Capped counts below and at the exact threshold, found by a sampled bracket and one
    pass; None if the bracket missed the threshold. ``given``: a strided sample of each
    layer's keys taken earlier (any stride), which saves the sampling pass."""
    if given is not None and len(given) == len(keys) and all(g is not None and g.size for g in given):
        samples = [np.sort(np.asarray(g, dtype=np.uint32)) for g in given]
    else:
        stride = max(1, sum(sizes) // sample_size)
        samples = [np.sort(k[::stride]) for k in keys]
    merged = _sorted_unique(np.concatenate(samples))
    scale = [n / max(s.size, 1) for n, s in zip(sizes, samples, strict=True)]
    estimate = smallest_reaching(merged, partial(_capped_total, samples, [0] * len(keys), scale, caps), total)
    if estimate is None:
        return None
    rank = int(np.searchsorted(merged, estimate))
    m = merged.size
    margin = max(int(0.005 * m), int(8 * math.sqrt(m)), 16)
    lo = int(merged[rank - margin]) if rank - margin > 0 else 0
    hi = int(merged[rank + margin]) if rank + margin < m else int(np.iinfo(np.uint32).max)
    del samples, merged

    below: list[int] = []
    inside: list[np.ndarray] = []
    for layer_keys in keys:
        flat = layer_keys.reshape(-1)
        count, parts = split_at_bracket((flat[i : i + CHUNK] for i in range(0, flat.size, CHUNK)), lo, hi)
        below.append(count)
        inside.append(parts[0] if len(parts) == 1 else np.concatenate([flat[:0], *parts]))
    return solve_inside(inside, below, caps, total)


def solve_inside(inside: Sequence[np.ndarray], below: Sequence[int], caps: Sequence[int], total: int) -> Counts | None:
    """Capped counts below and at the threshold, and the threshold, when it lies among the
    keys ``inside[l]`` (any order) of a bracket below which layer ``l`` has ``below[l]`` keys (and
    above which no key counts); None if the threshold lies below or above the bracket.

    When no cap can bind inside the bracket (``below[l] + #inside[l] <= caps[l]`` for every
    layer), ``Σ_l f_l(T) = Σ_l below[l] + #{inside keys <= T}``, so the threshold is the
    ``(total − Σ below)``-th smallest inside key: one partition of them, no sort. Otherwise the
    capped totals are searched over the sorted distinct keys."""
    if sum(min(b, c) for b, c in zip(below, caps, strict=True)) >= total:
        return None  # the threshold lies below the bracket
    if inside and all(b + k.size <= c for b, k, c in zip(below, inside, caps, strict=True)):
        need = total - sum(below)  # >= 1: no cap binds, so the check above was on the uncapped sum
        keys = np.concatenate(inside)
        if need > keys.size:
            return None  # the threshold lies above the bracket
        threshold = int(np.partition(keys, need - 1)[need - 1])
        t = keys.dtype.type(threshold)
        strictly = [b + int(np.count_nonzero(k < t)) for k, b in zip(inside, below, strict=True)]
        at_most = [b + int(np.count_nonzero(k <= t)) for k, b in zip(inside, below, strict=True)]
        return Counts(
            [min(n, c) for n, c in zip(strictly, caps, strict=True)],
            [min(n, c) for n, c in zip(at_most, caps, strict=True)],
            threshold,
            strictly,
        )
    inside = [np.sort(k) for k in inside]
    candidates = _sorted_unique(np.concatenate(inside))
    reach = partial(_capped_total, inside, below, [1] * len(inside), caps)
    threshold = smallest_reaching(candidates, reach, total)
    if threshold is None:
        return None  # the threshold lies above the bracket
    strictly = [b + int(np.searchsorted(k, threshold, side="left")) for k, b in zip(inside, below, strict=True)]
    return Counts(
        [min(n, c) for n, c in zip(strictly, caps, strict=True)],
        [
            min(b + int(np.searchsorted(k, threshold, side="right")), c)
            for k, b, c in zip(inside, below, caps, strict=True)
        ],
        threshold,
        strictly,
    )


def _radix_threshold(keys: Sequence[np.ndarray], total: int, caps: Sequence[int]) -> int:
    """The exact threshold by a two-level radix select over the 32-bit keys."""
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
    return (high << 16) | int(np.searchsorted(filled, total, side="left"))


def _counts_at(
    keys: Sequence[np.ndarray], threshold: int, caps: Sequence[int]
) -> tuple[list[int], list[int], int, list[int]]:
    """Capped counts of keys strictly below ``threshold`` and at most ``threshold``, the
    threshold, and the uncapped counts below it (the fields of :class:`Counts`)."""
    t = np.uint32(threshold)
    below, at_most, strictly = [], [], []
    for layer_keys, cap in zip(keys, caps, strict=True):
        strictly.append(int(np.count_nonzero(layer_keys < t)))
        below.append(min(strictly[-1], cap))
        at_most.append(min(int(np.count_nonzero(layer_keys <= t)), cap))
    return below, at_most, threshold, strictly


def fill_ties(below: list[int], at_most: list[int], total: int) -> list[int]:
    """Every layer takes its keys below the threshold, then ties layer by layer up to ``total``."""
    counts = list(below)
    deficit = total - sum(counts)
    for i in range(len(counts)):
        if deficit <= 0:
            break
        take = min(at_most[i] - counts[i], deficit)
        counts[i] += take
        deficit -= take
    return counts
