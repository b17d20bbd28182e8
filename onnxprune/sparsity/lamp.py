"""LAMP scores, and one global threshold on them found without sorting a tensor.

LAMP (Lee, Park, Mo, Ahn, Shin: "Layer-adaptive sparsity for the magnitude-based pruning",
ICLR 2021). Sort the weights of one layer by magnitude, ascending, ``|w_1| <= ... <= |w_n|``
(ties by flat index, as everywhere in this package). Then

    score(u) = w_u² / Σ_{v >= u} w_v²

The score lies in (0, 1] (zeros score 0), the largest weight of every layer scores 1, and
pruning by one global threshold on LAMP scores bounds the worst-case output distortion of
each layer; unlike a global magnitude threshold it never empties a layer whose weights are
small as a whole. Within a layer it ranks like magnitude, so it only changes how sparsity
is *allocated* across layers.

How the suffix sum is added up (this fixes the floating-point value of every score)
    The magnitudes are split into *bins* by the high 16 bits of ``float32(|w|)`` (sign
    cleared: 8 exponent bits and 7 mantissa bits, so a bin spans a factor of at most
    ``1 + 2⁻⁷``). ``s_b``, the sum of ``w²`` (float64) over bin ``b``, is accumulated by
    ``np.bincount`` over chunks of :data:`CHUNK` elements in flat order; ``A_b = Σ_{b' > b}
    s_b'`` is one cumulative sum over the bins from the top. Within bin ``b``, sorted,

        Σ_{v >= u} w_v² = A_b + (w_u² + ... + w_last²)   (a cumulative sum from the bin's top)

    Equal magnitudes share a bin, so the order inside a bin is the order above. Both
    :func:`lamp_scores` and :func:`lamp_allocation` add exactly this way, so they agree
    bit for bit.

The global threshold without a sort (:func:`lamp_allocation`)
    A global threshold ``T`` on the scores' keys (:func:`~onnxprune.sparsity.scores.global_keys`)
    with caps is the one of :mod:`onnxprune.sparsity.allocate`. It needs, per layer, only how
    many keys lie at or below a candidate ``T``. Two passes over each tensor:

    1. *Bins.* Count and ``s_b`` per bin (two ``bincount``\\s a chunk, no sort). For a
       weight in bin ``b`` with edges ``e_b <= |w| < e_{b+1}``, ``A_b + w² <= Σ_{v>=u} w_v²
       <= A_b + s_b``, so its score lies in ``[e_b² / (A_b + s_b), e_{b+1}² / (A_b +
       e_{b+1}²)]`` (widened by the rounding of the sums and of a float64 weight's float32
       bin). Counting whole bins by these bounds brackets the threshold: ``T_lo``, the
       smallest key where the upper counts reach the total, and ``T_hi``, where the lower
       counts do.
    2. *Exact keys inside the bracket.* Only the bins whose score bounds meet ``[T_lo,
       T_hi]`` can hold a key in it (a few bins per layer, a few per cent of the weights).
       Their weights are gathered, sorted, and scored exactly; the weights of the bins below
       are counted whole. The threshold is then found among the exact keys in the bracket.

    Time: two reads of every tensor and ``O(n)`` work each; the sort is of the gathered bins
    only. Memory: one chunk's temporaries, the bins, and the gathered weights. The first pass
    can be someone else's: the pruning pass has discovery bin each weight as it reads it anyway
    (``summaries``; :attr:`onnxprune.sparsity.criteria.Criterion.tensor_summary`).

    A float32 chunk's bins and squares are computed into buffers reused from chunk to chunk
    (:class:`_Scratch`): a fresh 32 MB temporary a chunk costs its page faults every time,
    which took more than the two ``bincount`` calls. Tensors are binned and gathered two at a
    time, on threads (:func:`~onnxprune.threads.map_in_threads`). On
    ``tools/bench_large.py``'s 12 GB model (24 float32 tensors of 0.5 GB), the two passes took
    31 s before both and 15 s after (cProfile, the same run otherwise). A float32 chunk's bins
    are its high 16 bits read as a strided uint16 view (:func:`_high_halves`), widened into the
    intp buffer: one 0.5 GB tensor binned in 0.53 s against 0.58 s with a shift into intp
    (medians of 5, side by side), the same bins.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.sparsity.allocate import GlobalAllocation, fill_ties, smallest_reaching, solve_inside
from onnxprune.sparsity.scores import global_keys, magnitude_keys, to_float64
from onnxprune.sparsity.select import bracket_mask
from onnxprune.threads import map_in_threads

#: Elements per chunk of the bin sums (fixes their rounding, and bounds the temporaries).
CHUNK = 1 << 22
#: ``float32(|w|)`` bits are shifted right by this much to give the bin: 16, the high half, which
#: :func:`_high_halves` reads in place (a test checks the two agree).
BIN_SHIFT = 16
_BIN_COUNT = 1 << (31 - BIN_SHIFT)  # sign cleared
_INF_BIN = 0x7F80_0000 >> BIN_SHIFT  # the bin of float32 infinity
_EDGE_SLACK = 2.0**-23  # a float64 weight's float32 bin may be one rounding off
_SUM_SLACK = 2.0**-50  # per element, the relative rounding of a float64 sum of squares


class _Scratch:
    """One chunk's buffers, reused from chunk to chunk of float32 values: the bins as uint16
    (:func:`_chunk_keys`) or as intp (:func:`_chunk_ids`) and the float64 squares."""

    def __init__(self, size: int) -> None:
        self.keys = np.empty(size, dtype=np.uint16)
        self.ids = np.empty(size, dtype=np.intp)
        self.squares = np.empty(size, dtype=np.float64)


def _high_halves(part: np.ndarray) -> np.ndarray:
    """The high 16 bits of every element of the float32 array ``part`` (sign, exponent and the
    top 7 mantissa bits), as a strided uint16 view in the array's byte order: ``bits >> 16``
    without a pass of its own or a uint32 temporary."""
    little = part.dtype.byteorder == "<" or (part.dtype.byteorder in "=|" and sys.byteorder == "little")
    halves = part.reshape(-1).view(np.dtype("<u2" if little else ">u2"))
    return halves[1::2] if little else halves[0::2]


def _chunk_ids(part: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """The bins of the chunk ``part`` as intp (what ``bincount`` reads without a copy): the same
    values as :func:`_bin_ids`, the high halves widened straight into ``scratch`` when ``part``
    is float32 (a widening copy and a mask: two thirds of the time of a shift into intp)."""
    if part.dtype != np.float32:
        return _bin_ids(part)
    ids = scratch.ids[: part.size]
    np.copyto(ids, _high_halves(part), casting="unsafe")
    return np.bitwise_and(ids, _BIN_COUNT - 1, out=ids)  # the sign bit cleared


def _chunk_keys(part: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """The bins of the chunk ``part``, as uint16 in ``scratch`` when ``part`` is float32 (else
    :func:`_bin_ids`' intp): for comparisons, a quarter of the bytes of intp."""
    if part.dtype != np.float32:
        return _bin_ids(part)
    return np.bitwise_and(_high_halves(part), np.uint16(_BIN_COUNT - 1), out=scratch.keys[: part.size])


def _chunk_squares(part: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """:func:`_squares` of the chunk ``part``, in ``scratch`` when it is float32 (the same
    values: float32 widens to float64 exactly, then one float64 product, in place: a third of
    the time of a product that casts as it goes)."""
    if part.dtype != np.float32:
        return _squares(part)
    squares = scratch.squares[: part.size]
    np.copyto(squares, part)
    return np.multiply(squares, squares, out=squares)


def _bin_ids(values: np.ndarray) -> np.ndarray:
    """The bin of every element (flat, intp): high bits of ``float32(|w|)``."""
    flat = values.reshape(-1)
    if flat.dtype != np.float32:
        flat = np.abs(to_float64(flat)).astype(np.float32)
    return (magnitude_keys(flat) >> np.uint32(BIN_SHIFT)).astype(np.intp)


def _squares(values: np.ndarray) -> np.ndarray:
    widened = to_float64(values.reshape(-1))
    return np.multiply(widened, widened, out=widened)


@dataclass(frozen=True)
class Bins:
    """The non-empty bins of one tensor, ascending: their ids, element counts, sums of
    squares ``s_b`` and the sums of every bin above, ``A_b`` (see the module docstring)."""

    ids: np.ndarray
    counts: np.ndarray
    sums: np.ndarray
    above: np.ndarray

    @property
    def size(self) -> int:
        return int(self.counts.sum())


def tensor_bins(values: np.ndarray) -> Bins:
    """Count and sum of squares per bin of ``values`` (any float dtype), chunk by chunk."""
    flat = values.reshape(-1)
    counts = np.zeros(_BIN_COUNT, dtype=np.int64)
    sums = np.zeros(_BIN_COUNT, dtype=np.float64)
    scratch = _Scratch(min(CHUNK, flat.size))
    for start in range(0, flat.size, CHUNK):
        part = flat[start : start + CHUNK]
        ids = _chunk_ids(part, scratch)
        counts += np.bincount(ids, minlength=_BIN_COUNT)
        sums += np.bincount(ids, weights=_chunk_squares(part, scratch), minlength=_BIN_COUNT)
    ids = np.flatnonzero(counts)
    kept = sums[ids]
    top_down = np.cumsum(kept[::-1])[::-1]  # A_b + s_b
    above = np.append(top_down[1:], 0.0)
    return Bins(ids=ids, counts=counts[ids], sums=kept, above=above)


def _bin_scores(squares: np.ndarray, above: float) -> np.ndarray:
    """Scores of one bin's weights given their squares in ascending magnitude order."""
    suffix = np.cumsum(np.concatenate(([above], squares[::-1])))[:0:-1]
    return np.divide(squares, suffix, out=np.zeros_like(squares), where=suffix > 0)


def _sorted_scores(order: np.ndarray, ids: np.ndarray, squares: np.ndarray, bins: Bins) -> np.ndarray:
    """Scores of the weights ``order`` sorts by magnitude (whole bins only), in that order."""
    sorted_ids = ids[order]
    sorted_squares = squares[order]
    scores = np.empty_like(sorted_squares)
    bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [sorted_ids.size]))
    where = np.searchsorted(bins.ids, sorted_ids[starts])
    for start, end, b in zip(starts.tolist(), ends.tolist(), where.tolist(), strict=True):
        scores[start:end] = _bin_scores(sorted_squares[start:end], float(bins.above[b]))
    return scores


def lamp_scores(w: np.ndarray) -> np.ndarray:
    """LAMP score of every weight, in the weight's own order (float64, same shape); the
    reference definition (a whole sort), which :func:`lamp_allocation` reproduces exactly."""
    flat = w.reshape(-1)
    scores = np.zeros(flat.size, dtype=np.float64)
    if flat.size == 0:
        return scores.reshape(w.shape)
    bins = tensor_bins(flat)
    order = np.argsort(magnitude_keys(flat), kind="stable")
    scores[order] = _sorted_scores(order, _bin_ids(flat), _squares(flat), bins)
    return scores.reshape(w.shape)


def _edge(ids: np.ndarray) -> np.ndarray:
    """``float32`` value whose bits start bin ``ids``, as float64 (inf past the finite range)."""
    bits = (ids.astype(np.uint64) << np.uint64(BIN_SHIFT)).astype(np.uint32)
    return bits.view(np.float32).astype(np.float64)


def key_bounds(bins: Bins) -> tuple[np.ndarray, np.ndarray]:
    """Per bin, keys at most and at least those of all its weights (uint32, non-decreasing)."""
    slack = _SUM_SLACK * max(bins.size, 1)
    low_edge = _edge(bins.ids) * (1 - _EDGE_SLACK)
    high_edge = _edge(np.minimum(bins.ids + 1, _INF_BIN)) * (1 + _EDGE_SLACK)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        whole = bins.above + bins.sums
        low = np.where(whole > 0, low_edge**2 / (whole * (1 + slack)), 0.0) * (1 - slack)
        high_sq = high_edge**2
        high = high_sq / ((bins.above + high_sq) * (1 - slack)) * (1 + slack)
    low = np.clip(np.nan_to_num(low, nan=0.0, posinf=1.0), 0.0, 1.0)
    high = np.clip(np.nan_to_num(high, nan=1.0, posinf=1.0), 0.0, 1.0)
    low_keys = np.minimum.accumulate(global_keys(low)[::-1])[::-1]
    high_keys = np.maximum.accumulate(global_keys(high))
    return low_keys, high_keys


def _count_reaching(
    bound_keys: Sequence[np.ndarray], counts: Sequence[np.ndarray], caps: Sequence[int], total: int
) -> int | None:
    """The smallest key ``t`` among the bounds with ``Σ min(counts of bins whose bound <= t, cap) >= total``."""
    candidates = np.unique(np.concatenate(bound_keys))
    filled = [np.cumsum(c) for c in counts]

    def reach(t: int) -> int:
        total_at = 0
        for keys, cumulative, cap in zip(bound_keys, filled, caps, strict=True):
            n = int(np.searchsorted(keys, t, side="right"))
            total_at += min(int(cumulative[n - 1]) if n else 0, cap)
        return total_at

    return smallest_reaching(candidates, reach, total)


def _gather_keys(values: np.ndarray, bins: Bins, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact LAMP keys of every weight in bins ``bins.ids[first:last]``, and the weights'
    magnitude keys, both in the weights' order by magnitude (ties by flat index): ascending."""
    if first >= last:
        return np.empty(0, dtype=np.uint32), magnitude_keys(values.reshape(-1)[:0])
    low_id, high_id = int(bins.ids[first]), int(bins.ids[last - 1])
    flat = values.reshape(-1)
    parts: list[np.ndarray] = []
    scratch = _Scratch(min(CHUNK, flat.size))
    for start in range(0, flat.size, CHUNK):
        part = flat[start : start + CHUNK]
        ids = _chunk_keys(part, scratch)  # uint16 in scratch: one comparison, made in place
        parts.append(part[bracket_mask(ids, low_id, high_id, ids)])
    gathered = np.concatenate(parts)  # in flat order, so a stable sort breaks ties by index
    magnitudes = magnitude_keys(gathered)
    order = np.argsort(magnitudes, kind="stable")
    scores = _sorted_scores(order, _bin_ids(gathered), _squares(gathered), bins)
    return global_keys(scores), magnitudes[order]


def lamp_allocation(
    tensors: Sequence[np.ndarray],
    total: int,
    caps: Sequence[int],
    summaries: Sequence[Bins | None] | None = None,
) -> GlobalAllocation:
    """Per-layer counts for one global threshold on the LAMP keys of ``tensors`` with caps,
    the same as :func:`~onnxprune.sparsity.allocate.allocate_global` on ``global_keys(lamp_scores(w))``
    of each tensor, found in two reads of each (see the module docstring). ``tensors`` may
    read its items on access (memory-mapped); each is read twice, once where ``summaries``
    already gives its :func:`tensor_bins` (computed by whoever read it before)."""
    if len(tensors) != len(caps):
        raise ValueError("tensors and caps must have the same length")
    given = list(summaries) if summaries is not None else [None] * len(tensors)
    if len(given) != len(tensors):
        raise ValueError("tensors and summaries must have the same length")

    def binned(i: int) -> Bins:
        found = given[i]
        return found if found is not None else tensor_bins(tensors[i])

    bins = map_in_threads(binned, range(len(tensors)))
    caps = [min(int(c), b.size) for c, b in zip(caps, bins, strict=True)]
    if total >= sum(caps):
        return GlobalAllocation(list(caps), None)
    if total <= 0:
        return GlobalAllocation([0] * len(bins), None)
    bounds = [key_bounds(b) for b in bins]
    counts = [b.counts for b in bins]
    t_lo = _count_reaching([low for low, _ in bounds], counts, caps, total)
    t_hi = _count_reaching([high for _, high in bounds], counts, caps, total)
    assert t_lo is not None and t_hi is not None and t_lo <= t_hi, "total < Σ caps is reachable"

    def bracketed(i: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Layer ``i``'s count of keys below ``t_lo``, its exact keys inside the bracket, and
        their magnitude keys (both ascending)."""
        low, high = bounds[i]
        first = int(np.searchsorted(high, t_lo, side="left"))  # bins before: every key < t_lo
        last = int(np.searchsorted(low, t_hi, side="right"))  # bins from here: every key > t_hi
        last = max(last, first)
        keys, magnitudes = _gather_keys(tensors[i], bins[i], first, last)
        within = (keys >= t_lo) & (keys <= t_hi)
        below = int(bins[i].counts[:first].sum()) + int(np.count_nonzero(keys < t_lo))
        return below, keys[within], magnitudes[within]

    layers = map_in_threads(bracketed, range(len(bins)))
    below = [count for count, _, _ in layers]
    found = solve_inside([keys for _, keys, _ in layers], below, caps, total)
    assert found is not None, "the bracket holds the threshold"
    counts = fill_ties(found.below, found.at_most, total)
    cuts = [_magnitude_cut(c, b, m) for c, (b, _, m) in zip(counts, layers, strict=True)]
    return GlobalAllocation(counts, found.threshold, found.uncapped, cuts)


def _magnitude_cut(count: int, below: int, magnitudes: np.ndarray) -> tuple[int, int] | None:
    """The cut ``(t, #{magnitude key < t})`` that selects a layer's ``count`` smallest weights by
    magnitude (what :func:`~onnxprune.sparsity.select.zero_smallest_bits` takes), when its
    ``count``-th smallest is inside the bracket: LAMP ranks like magnitude within a layer, so
    the ``below`` weights under the bracket come first and the bracket's weights next, in
    ``magnitudes``' order. Else None. Weights of equal magnitude on both sides of the bracket's
    edge (their LAMP keys differ) make the count below ``t`` too high: the writer's counts then
    find the cut wrong and it looks for the K-th key itself."""
    within = count - below
    if not 0 < within <= magnitudes.size:
        return None
    t = magnitudes[within - 1]
    return int(t), below + int(np.searchsorted(magnitudes, t, side="left"))
