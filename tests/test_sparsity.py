"""Pure-numpy tests of the sparsity maths: no model involved."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from onnxprune import sparsity
from onnxprune.sparsity.scores import float_bits, to_float64


def _weights(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, ml_dtypes.bfloat16])
def test_magnitude_keys_rank_like_absolute_value(dtype):
    w = _weights(1000, dtype)
    w[::7] = 0
    w[3] = -0.0
    keys = sparsity.magnitude_keys(w)
    values = np.abs(to_float64(w))
    order_keys = np.argsort(keys, kind="stable")
    order_vals = np.argsort(values, kind="stable")
    np.testing.assert_array_equal(values[order_keys], values[order_vals])
    assert np.all(keys[values == 0] == 0)
    assert np.all(keys[values != 0] > 0)


@pytest.mark.parametrize("k", [0, 1, 37, 500, 999, 1000])
def test_smallest_k_mask_is_exact_and_picks_the_smallest(k):
    w = _weights(1000)
    keys = sparsity.magnitude_keys(w)
    mask = sparsity.smallest_k_mask(keys, k)
    assert mask.sum() == k
    if 0 < k < 1000:
        assert np.abs(w[mask]).max() <= np.abs(w[~mask]).min()


def test_smallest_k_mask_breaks_ties_by_lower_index():
    keys = np.array([5, 1, 1, 1, 1, 0, 9], dtype=np.uint32)
    mask = sparsity.smallest_k_mask(keys, 3)
    np.testing.assert_array_equal(mask, [False, True, True, False, False, True, False])


def test_smallest_k_mask_rejects_impossible_counts():
    with pytest.raises(ValueError):
        sparsity.smallest_k_mask(np.zeros(4, np.uint32), 5)


@pytest.mark.parametrize(
    "n, amount, expected", [(100, 0.29, 29), (10, 0.7, 7), (7, 0.5, 3), (3, 0.0, 0), (1000, 0.999, 999)]
)
def test_count_for_amount_is_decimal_floor(n, amount, expected):
    assert sparsity.count_for_amount(n, amount) == expected


@pytest.mark.parametrize("dtype", [np.float16, np.float32, ml_dtypes.bfloat16])
def test_apply_mask_bits_zeroes_only_masked_and_keeps_other_bits(dtype):
    w = _weights((16, 32), dtype)
    w[0, 0] = np.nan
    mask = np.zeros(w.shape, bool)
    mask[0, :8] = True
    out = sparsity.apply_mask_bits(float_bits(w), mask).view(w.dtype)
    assert out.dtype == w.dtype
    assert np.all(float_bits(out)[mask] == 0)
    np.testing.assert_array_equal(float_bits(out)[~mask], float_bits(w)[~mask])


def test_already_zero_weights_count_toward_the_target():
    w = _weights(100)
    w[:40] = 0
    mask = sparsity.smallest_k_mask(sparsity.magnitude_keys(w), 30)
    assert mask[:40].sum() == 30 and mask[40:].sum() == 0


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 3), (3, 4)])
def test_nm_mask_respects_pattern_group_by_group(n, m):
    w = _weights((8, 4 * m, 3, 3))  # Conv weight: groups along C_in (axis 1)
    mask = sparsity.nm_mask(sparsity.magnitude_keys(w), n, m, axis=1)
    kept = ~mask
    groups = np.moveaxis(kept, 1, -1).reshape(-1, m)
    assert np.all(groups.sum(axis=1) == n)
    # the kept weights of every group are its n largest
    wg = np.moveaxis(np.abs(w), 1, -1).reshape(-1, m)
    assert np.all(np.where(groups, wg, np.inf).min(axis=1) >= np.where(groups, -np.inf, wg).max(axis=1))


def test_nm_mask_leaves_tensor_that_already_satisfies_pattern():
    w = _weights((4, 8))
    w[:, ::2] = 0  # already 2:4 along axis 1 (two zeros per group of four)
    mask = sparsity.nm_mask(sparsity.magnitude_keys(w), 2, 4, axis=1)
    assert np.all(w[mask] == 0)


def test_nm_valid_and_errors():
    assert sparsity.nm_valid((8, 12), 1, 4)
    assert not sparsity.nm_valid((8, 10), 1, 4)
    with pytest.raises(ValueError):
        sparsity.nm_mask(np.zeros((4, 10), np.uint32), 2, 4, axis=1)
    with pytest.raises(ValueError):
        sparsity.nm_mask(np.zeros((4, 8), np.uint32), 4, 4, axis=1)


def test_lamp_scores_match_definition():
    w = np.array([3.0, -1.0, 2.0, 0.0], np.float32)
    # ascending |w|: 0, 1, 2, 3 -> squares 0, 1, 4, 9; suffix sums 14, 14, 13, 9
    expected = np.array([9 / 9, 1 / 14, 4 / 13, 0.0])
    np.testing.assert_allclose(sparsity.lamp_scores(w), expected)


def test_lamp_largest_weight_of_every_layer_scores_one():
    for seed in range(3):
        w = _weights(50, seed=seed) * 10**seed
        assert sparsity.lamp_scores(w).max() == pytest.approx(1.0)


def _brute_global(keys, total, caps):
    """Reference: take keys globally in (key, layer, index) order, skipping full layers."""
    items = sorted((int(k), layer, i) for layer, ks in enumerate(keys) for i, k in enumerate(ks))
    counts = [0] * len(keys)
    for _, layer, _ in items:
        if sum(counts) == total:
            break
        if counts[layer] < caps[layer]:
            counts[layer] += 1
    return counts


@pytest.mark.parametrize("sample_size", [0, 2, 1 << 20])  # radix only, a tiny (missing) sample, the default
@pytest.mark.parametrize("seed", range(6))
def test_global_counts_equal_brute_force(seed, sample_size):
    rng = np.random.default_rng(seed)
    layers = [rng.standard_normal(rng.integers(5, 60)).astype(np.float32) * rng.uniform(0.01, 10) for _ in range(5)]
    layers[0][:3] = 0
    layers[1] = np.round(layers[1], 1)  # ties
    keys = [sparsity.global_keys(w) for w in layers]
    n = sum(w.size for w in layers)
    for amount in (0.1, 0.5, 0.9):
        total = int(amount * n)
        caps = [int(0.6 * w.size) for w in layers]
        assert sparsity.global_counts(keys, total, caps, sample_size=sample_size) == _brute_global(keys, total, caps)


def _counts_by_sort(keys, total, caps):
    """Reference for large inputs: the threshold from one global sort, caps applied by search."""
    flat = np.sort(np.concatenate(keys))
    lo, hi = 0, flat.size - 1
    while lo < hi:  # smallest key value t with sum(min(#<=t, cap)) >= total
        mid = (lo + hi) // 2
        reach = sum(min(int(np.count_nonzero(k <= flat[mid])), c) for k, c in zip(keys, caps, strict=True))
        lo, hi = (lo, mid) if reach >= total else (mid + 1, hi)
    t = flat[lo]
    counts = [min(int(np.count_nonzero(k < t)), c) for k, c in zip(keys, caps, strict=True)]
    for i, (k, c) in enumerate(zip(keys, caps, strict=True)):
        counts[i] += max(0, min(min(int(np.count_nonzero(k <= t)), c) - counts[i], total - sum(counts)))
    return counts


@pytest.mark.parametrize("amount", [0.001, 0.3, 0.5, 0.97])
def test_global_counts_sampled_bracket_is_exact_without_fallback(monkeypatch, amount):
    rng = np.random.default_rng(7)
    layers = [rng.standard_normal(n).astype(np.float32) * s for n, s in ((300_000, 0.02), (50_000, 1.0), (9_000, 5.0))]
    layers.append(np.zeros(4_000, np.float32))  # an already-pruned layer: its keys are all tied at 0
    keys = [sparsity.global_keys(w) for w in layers]
    caps = [int(0.98 * k.size) for k in keys]
    total = int(amount * sum(k.size for k in keys))
    expected = _counts_by_sort(keys, total, caps)

    def no_radix(*_args):
        raise AssertionError("the sampled bracket missed on a representative sample")

    monkeypatch.setattr("onnxprune.sparsity.allocate._radix_threshold", no_radix)
    counts = sparsity.global_counts(keys, total, caps, sample_size=1 << 14)
    assert counts == expected
    assert sum(counts) == total
    assert counts[0] == caps[0] or amount < 0.9  # the small-magnitude layer is capped at high sparsity


@pytest.mark.parametrize("seed", range(4))
def test_the_bracket_solve_by_partition_equals_the_search_over_sorted_keys(seed):
    """Without a cap binding inside the bracket the threshold is one partition of the inside keys
    (any order); with one, the capped search over sorted keys. Both give what a search over every
    key gives, ties included, and the split of a layer's chunks at the bracket is the plain one."""
    from onnxprune.sparsity import allocate
    from onnxprune.sparsity.select import split_at_bracket

    rng = np.random.default_rng(seed)
    keys = [rng.integers(0, 5000, size=n).astype(np.uint32) for n in (2500, 4100, 10)]
    lo, hi = 1500, 3500

    def chunks(k):  # 1000 at a time, a short last one, in one buffer reused from chunk to chunk
        buffer = np.empty(1000, np.uint32)
        for start in range(0, k.size, 1000):
            part = k[start : start + 1000]
            buffer[: part.size] = part
            yield buffer[: part.size]

    def split(k, lo, hi):
        below, parts = split_at_bracket(chunks(k), lo, hi)
        return below, np.concatenate([k[:0], *parts])

    for k in (*keys, np.zeros(0, np.uint32)):
        assert split(k, lo, hi)[0] == int(np.count_nonzero(k < lo))
        assert np.array_equal(split(k, lo, hi)[1], k[(k >= lo) & (k <= hi)])
        assert split(k, None, hi)[0] == 0 and np.array_equal(split(k, None, hi)[1], k[k <= hi])
        assert np.array_equal(split(k, lo, None)[1], k[k >= lo]) and np.array_equal(split(k, None, None)[1], k)
    parts = [split(k, lo, hi) for k in keys]
    below, inside = [b for b, _ in parts], [rng.permutation(i) for _, i in parts]
    loose = [k.size for k in keys]
    capped = [below[0] + inside[0].size // 3, *loose[1:]]  # layer 0's cap is reached inside the bracket
    for caps in (loose, capped):
        least = sum(min(b, c) for b, c in zip(below, caps, strict=True))
        most = sum(min(b + i.size, c) for b, i, c in zip(below, inside, caps, strict=True))
        for total in (least + 1, (least + most) // 2, most):
            found = allocate.solve_inside(inside, below, caps, total)
            t = _counts_by_sort(keys, total, caps)
            assert found is not None and allocate.fill_ties(found.below, found.at_most, total) == t
            assert found.uncapped == [int(np.count_nonzero(k < found.threshold)) for k in keys]
        assert allocate.solve_inside(inside, below, caps, most + 1) is None  # above the bracket
        assert allocate.solve_inside(inside, below, caps, least) is None  # below it


def test_global_counts_fall_back_to_radix_when_the_sample_misleads(monkeypatch):
    # every sampled key (index multiple of 4) is small, every other key large: the bracket misses
    keys = np.arange(400_000, dtype=np.uint32) + np.uint32(1_000_000)
    keys[::4] = np.arange(100_000, dtype=np.uint32)
    calls = []
    radix = sparsity.allocate._radix_threshold
    monkeypatch.setattr("onnxprune.sparsity.allocate._radix_threshold", lambda *a: calls.append(1) or radix(*a))
    counts = sparsity.global_counts([keys, keys[:1000]], 200_000, [400_000, 0], sample_size=100_000)
    assert calls == [1]
    assert counts == _counts_by_sort([keys, keys[:1000]], 200_000, [400_000, 0]) == [200_000, 0]


def test_global_counts_distinguish_keys_in_the_same_high_bin():
    # keys that share their upper 16 bits force the second radix level
    base = np.float32(1.0).view(np.uint32)
    keys = [np.array([base + 5, base + 1, base + 3], np.uint32), np.array([base + 2, base + 4], np.uint32)]
    assert sparsity.global_counts(keys, 3, [3, 2]) == [2, 1]


def test_global_counts_fill_caps_when_target_exceeds_them():
    keys = [np.arange(10, dtype=np.uint32), np.arange(10, dtype=np.uint32)]
    assert sparsity.global_counts(keys, 19, [9, 9]) == [9, 9]
    assert sparsity.global_counts(keys, 0, [9, 9]) == [0, 0]


def test_global_keys_compare_across_dtypes():
    a = np.array([0.5, 2.0], np.float16)
    b = np.array([1.0], np.float32)
    c = np.array([0.75], ml_dtypes.bfloat16)
    keys = np.concatenate([sparsity.global_keys(x) for x in (a, b, c)])
    assert list(np.argsort(keys)) == [0, 3, 2, 1]


def test_random_keys_are_seeded_and_put_zeros_first():
    w = _weights(50)
    w[:5] = 0
    k1 = sparsity.random_keys(w, np.random.default_rng(1))
    k2 = sparsity.random_keys(w, np.random.default_rng(1))
    np.testing.assert_array_equal(k1, k2)
    assert np.all(k1[:5] == 0) and np.all(k1[5:] > 0)


@pytest.mark.parametrize("k", [1, 5, 9, 10, 11, 19])
def test_smallest_k_mask_with_any_threshold_equals_the_partition(k):
    keys = np.array([5, 1, 3, 3, 3, 0, 7, 3, 9, 2, 3, 8, 6, 4, 3, 1, 0, 2, 9, 5], np.uint32)
    expected = sparsity.smallest_k_mask(keys, k)
    assert int(expected.sum()) == k
    for threshold in range(0, 11):  # right ones skip the partition, wrong ones are ignored
        assert np.array_equal(sparsity.smallest_k_mask(keys, k, threshold=threshold), expected)


def test_global_threshold_gives_each_layer_its_own_mask():
    rng = np.random.default_rng(3)
    layers = [np.round(rng.standard_normal(n).astype(np.float32), 2) for n in (5_000, 800, 3_000)]
    keys = [sparsity.global_keys(w) for w in layers]
    allocation = sparsity.allocate_global(keys, 4_400, [int(0.98 * k.size) for k in keys])
    assert allocation.threshold is not None and sum(allocation.counts) == 4_400
    for w, count in zip(layers, allocation.counts, strict=True):
        own = sparsity.magnitude_keys(w)
        fast = sparsity.smallest_k_mask(own, count, threshold=allocation.threshold)
        assert np.array_equal(fast, sparsity.smallest_k_mask(own, count))


def test_given_samples_skip_the_sampling_pass_and_stay_exact():
    rng = np.random.default_rng(9)
    layers = [rng.standard_normal(n).astype(np.float32) for n in (40_000, 9_000, 3_000)]
    keys = [sparsity.global_keys(w) for w in layers]
    caps = [int(0.98 * k.size) for k in keys]
    total = int(0.6 * sum(k.size for k in keys))
    expected = _counts_by_sort(keys, total, caps)
    good = [k[:: max(1, k.size // 500)] for k in keys]
    misleading = [np.zeros(10, np.uint32) for _ in keys]  # a sample that says nothing true
    for samples in (good, misleading):
        assert sparsity.global_counts(keys, total, caps, samples=samples) == expected


@pytest.mark.parametrize("kind", ["random", "sorted", "reversed", "few values", "mostly zero", "float keys"])
def test_kth_smallest_by_a_sampled_bracket_is_exact(kind):
    from onnxprune.sparsity.select import SAMPLED_FROM, kth_smallest

    rng = np.random.default_rng(len(kind))
    n = SAMPLED_FROM * 3 + 17
    x = {
        "random": lambda: rng.integers(0, 2**31, n).astype(np.uint32),
        "sorted": lambda: np.sort(rng.integers(0, 2**31, n)).astype(np.uint32),
        "reversed": lambda: np.sort(rng.integers(0, 2**31, n))[::-1].astype(np.uint64),
        "few values": lambda: rng.integers(0, 4, n).astype(np.uint16),
        "mostly zero": lambda: np.where(rng.random(n) < 0.999, 0, 9).astype(np.uint32),
        "float keys": lambda: rng.standard_normal(n).astype(np.float32),
    }[kind]()
    for k in (1, 2, n // 3, n // 2, n - 1, n, *rng.integers(1, n + 1, 5).tolist()):
        assert kth_smallest(x, k) == np.partition(x, k - 1)[k - 1]
    # an order that hides the bracket from the strided sample still gives the exact answer
    y = np.zeros(n, np.uint32)
    y[:: n // 2**14] = 1_000
    assert kth_smallest(y, n // 2) == np.partition(y, n // 2 - 1)[n // 2 - 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("coarse", [False, True])
def test_zero_smallest_bits_equals_the_mask_path(monkeypatch, dtype, split, coarse):
    """Chunked (small chunks here), with or without a known threshold, any ties and zeros,
    in one span or split over threads (ties spread over every chunk with ``coarse``): the same
    bits as masking the K smallest magnitude keys."""
    from onnxprune.sparsity import select

    monkeypatch.setattr(select, "CHUNK", 37)
    monkeypatch.setattr(select, "SAMPLE", 64)
    if split:
        monkeypatch.setattr(select, "SPLIT_FROM", 1)
        monkeypatch.setattr(select, "WORKERS", 3)
    rng = np.random.default_rng(5)
    w = rng.standard_normal((41, 29)).astype(dtype)
    if coarse:
        w = np.round(w * 2).astype(dtype) / 2  # a handful of values, each tied many times over
    w[3, :] = w[3, 0]  # a row of ties
    w[:, 5] = -w[3, 0]  # negative ties
    w[7, :10] = 0
    bits = sparsity.scores.float_bits(w)
    keys = sparsity.magnitude_keys(w)
    flat = np.sort(keys.reshape(-1))
    if split:
        assert [len(select.spans(n)) for n in (1, 36, 37, 74, 111, w.size)] == [1, 1, 1, 2, 3, 3]
        assert select.spans(w.size)[0][0] == 0 and select.spans(w.size)[-1][1] == w.size
    for k in (0, 1, 9, 10, 11, 300, 600, 1188, w.size):
        expected = sparsity.apply_mask_bits(bits, sparsity.smallest_k_mask(keys, k))
        assert np.array_equal(sparsity.zero_smallest_bits(bits, k), expected)
        if k > 0:
            right = int(flat[k - 1])
            assert np.array_equal(sparsity.zero_smallest_bits(bits, k, threshold=right), expected)
            assert np.array_equal(sparsity.zero_smallest_bits(bits, k, threshold=right + 7), expected)  # ignored
            below = int(np.count_nonzero(flat < right))
            assert np.array_equal(sparsity.zero_smallest_bits(bits, k, threshold=right, below=below), expected)
            # a wrong pair is found out by the counts of the writing pass, and the tensor's own K-th used
            wrong = sparsity.zero_smallest_bits(bits, k, threshold=right + 7, below=below)
            assert np.array_equal(wrong, expected)
            assert np.array_equal(sparsity.zero_smallest_bits(bits, k, threshold=right, below=below + 1), expected)
    with pytest.raises(ValueError):
        sparsity.zero_smallest_bits(bits, w.size + 1)
    with pytest.raises(TypeError):
        sparsity.zero_smallest_bits(w, 3)


def test_zero_smallest_bits_falls_back_when_the_sample_misleads(monkeypatch):
    from onnxprune.sparsity import select

    monkeypatch.setattr(select, "SAMPLE", 1024)
    keys = np.arange(1, 100_001, dtype=np.float32)
    stride = select.sample_stride(keys.size)
    assert stride == 100_000 // 2154  # n^(2/3) keys, more than SAMPLE
    keys[::stride] = 1e9  # the strided sample sees only the largest values
    sizes: list[int] = []
    partition = np.partition

    def spy(a, kth, **kw):
        sizes.append(a.size)
        return partition(a, kth, **kw)

    monkeypatch.setattr(select.np, "partition", spy)
    bits = sparsity.scores.float_bits(keys)
    expected = sparsity.apply_mask_bits(bits, keys <= keys[np.argsort(keys, kind="stable")[49_999]])
    assert np.array_equal(sparsity.zero_smallest_bits(bits, 50_000), expected)
    # the sample brackets, the bracket misses, and the whole tensor is partitioned
    assert sizes == [keys[::stride].size, keys.size]


def test_the_sample_grows_as_the_two_thirds_power_of_the_keys(monkeypatch):
    """A tensor of up to 2^21 keys is sampled SAMPLE times; a larger one about n^(2/3) times, and
    the K-th smallest and the zeroed bits stay exact with the larger sample."""
    from onnxprune.sparsity import select

    assert [select.sample_stride(n) for n in (1, 2**16, 2**21)] == [1, 4, 128]
    assert select.sample_stride(2**27) == 2**27 // (2**18)  # 0.5 GB of float32: 2^18 keys
    assert select.sample_stride(125_000_000) == 500
    monkeypatch.setattr(select, "SAMPLE", 64)
    rng = np.random.default_rng(11)
    n = 300_007
    assert n // select.sample_stride(n) > 4000  # about n^(2/3) = 4482 keys, not 64
    w = (rng.standard_normal(n) * np.where(rng.random(n) < 0.01, 50, 1)).astype(np.float32)
    w[rng.integers(0, n, 5000)] = 0.25  # ties
    keys = sparsity.magnitude_keys(w)
    bits = sparsity.scores.float_bits(w)
    for k in (1, 777, n // 2, n - 3, *rng.integers(1, n, 4).tolist()):
        assert select.kth_smallest(keys, k) == np.partition(keys, k - 1)[k - 1]
        expected = sparsity.apply_mask_bits(bits, sparsity.smallest_k_mask(keys, k))
        assert np.array_equal(sparsity.zero_smallest_bits(bits, k), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(("shape", "axis"), [((12, 16), 1), ((16, 6), 0), ((5, 8, 3, 3), 1), ((4, 3, 8), 2)])
@pytest.mark.parametrize("split", [False, True])
def test_nm_zero_bits_and_zeros_after_equal_the_mask_path(monkeypatch, dtype, shape, axis, split):
    """Chunked (a few groups a chunk here), in one run or split over threads, ties and signed
    zeros included: the bits of masking by nm_mask, and the zeros nm_zeros_after counts."""
    from onnxprune.sparsity import nm

    monkeypatch.setattr(nm, "CHUNK", 13)
    if split:
        monkeypatch.setattr(nm, "SPLIT_FROM", 1)
        monkeypatch.setattr(nm, "WORKERS", 3)
    rng = np.random.default_rng(11)
    w = np.round(rng.standard_normal(shape) * 3).astype(dtype)  # many ties, many zeros
    w.reshape(-1)[::7] = -0.0
    bits = sparsity.scores.float_bits(w)
    keys = sparsity.magnitude_keys(w)
    for n, m in ((2, 4), (1, 4), (1, 2), (3, 8)):
        if shape[axis] % m:
            continue
        expected = sparsity.apply_mask_bits(bits, sparsity.nm_mask(keys, n, m, axis))
        assert np.array_equal(sparsity.nm_zero_bits(bits, n, m, axis), expected)
        zeros = int(np.count_nonzero(sparsity.magnitude_keys(expected.view(dtype)) == 0))
        assert sparsity.nm_zeros_after(bits, n, m, axis, sign_bits=True) == zeros
        assert sparsity.nm_zeros_after(keys, n, m, axis) == zeros
    with pytest.raises(TypeError):
        sparsity.nm_zero_bits(w, 2, 4, axis)


@pytest.mark.parametrize("shape, axis", [((8, 12), 1), ((12, 8), 0), ((4, 8, 3, 3), 1), ((6, 2, 8), 2)])
def test_nm_zeros_after_from_the_zero_indices_equals_the_count_from_values(shape, axis):
    """The count from where the zeros are (discovery's few) is the count from the values, for
    groups along any axis, with none, few and crowded zeros (-0 among them)."""
    rng = np.random.default_rng(11)
    for zeros in (0, 1, 5, 40):
        w = rng.standard_normal(shape).astype(np.float32)
        flat = w.reshape(-1)
        at = rng.choice(flat.size, size=min(zeros, flat.size), replace=False)
        flat[at] = 0.0
        flat[at[::2]] = -0.0
        zero_at = np.flatnonzero(sparsity.magnitude_keys(w).reshape(-1) == 0)
        for n, m in ((2, 4), (1, 4), (3, 4), (1, 2)):
            expected = sparsity.nm_zeros_after(sparsity.scores.float_bits(w), n, m, axis, sign_bits=True)
            assert sparsity.nm_zeros_after_at(zero_at, shape, n, m, axis) == expected
            # and the pruned tensor has that many zeros
            pruned = sparsity.nm_zero_bits(sparsity.scores.float_bits(w), n, m, axis)
            assert int(np.count_nonzero((pruned & sparsity.scores.sign_clear(pruned.dtype)) == 0)) == expected


def test_the_bracket_mask_is_the_two_comparisons_for_every_key_kind():
    """Unsigned keys take one comparison through the wrap of ``k − lo`` (in a given buffer, the
    keys themselves allowed); signed and float keys two. All of them: ``lo <= k <= hi``."""
    from onnxprune.sparsity.select import bracket_mask

    rng = np.random.default_rng(3)
    for dtype in (np.uint16, np.uint32, np.int64, np.float32):
        keys = rng.integers(0, 3000, size=500).astype(dtype)
        keys[:4] = [0, 999, 1000, 2000]  # the edges and the smallest key
        expected = (keys >= 1000) & (keys <= 2000)
        assert np.array_equal(bracket_mask(keys, 1000, 2000), expected)
        assert np.array_equal(bracket_mask(keys, 1000, 2000, np.empty(600, dtype)), expected)
        assert np.array_equal(bracket_mask(keys.copy(), 1000, 2000, None), expected)
        own = keys.copy()
        assert np.array_equal(bracket_mask(own, 1000, 2000, own), expected)
