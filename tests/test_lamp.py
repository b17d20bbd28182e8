"""LAMP's global threshold found from bins and a gathered bracket equals the search on every key.

:func:`onnxprune.sparsity.lamp_allocation` never sorts a tensor; it must give exactly the
counts and threshold of :func:`onnxprune.sparsity.allocate_global` on ``global_keys(lamp_scores(w))``
(the reference, a whole sort per tensor), whatever the dtypes, ties, zeros, caps and totals.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np
import pytest

from onnxprune import sparsity
from onnxprune.sparsity import lamp

DTYPES = (np.float32, np.float16, np.float64, ml_dtypes.bfloat16)


def _reference(layers: Sequence[np.ndarray], total: int, caps: Sequence[int]) -> sparsity.GlobalAllocation:
    keys = [sparsity.global_keys(sparsity.lamp_scores(w)) for w in layers]
    return sparsity.allocate_global(keys, total, caps)


def _allocation(layers: Sequence[np.ndarray], total: int, caps: Sequence[int]) -> sparsity.GlobalAllocation:
    """:func:`lamp.lamp_allocation`, its magnitude cuts checked and left out (the reference has none)."""
    found = lamp.lamp_allocation(layers, total, caps)
    for w, count, cut in zip(layers, found.counts, found.cuts or [None] * len(layers), strict=True):
        if cut is None:
            continue
        keys = sparsity.magnitude_keys(w).reshape(-1)
        t, below = cut
        below_t, at_most_t = int(np.count_nonzero(keys < t)), int(np.count_nonzero(keys <= t))
        if below == below_t:  # a cut: the count smallest by magnitude are those below t and the first ties
            assert below <= count <= at_most_t
        else:  # equal magnitudes on both sides of the bracket's edge: the writer checks and finds it wrong
            assert below > below_t and at_most_t > below_t
    return found._replace(cuts=None)


def _layer(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.standard_normal(n) * 10 ** rng.uniform(-4, 3)
    kind = rng.integers(0, 4)
    if kind == 1:
        w = np.round(w * 4) / 4  # many ties
    elif kind == 2:
        w[rng.random(n) < 0.4] = 0.0  # zeros count first
    elif kind == 3:
        w = w**3  # a wide range of exponents
    return np.clip(w, -6e4, 6e4).astype(DTYPES[rng.integers(0, len(DTYPES))])  # finite in float16


@pytest.mark.parametrize("seed", range(40))
def test_lamp_allocation_equals_the_search_on_every_key(seed: int):
    rng = np.random.default_rng(seed)
    layers = [_layer(rng, int(rng.integers(1, 3000))) for _ in range(int(rng.integers(1, 6)))]
    caps = [int(rng.uniform(0.3, 1.0) * w.size) for w in layers]
    total = int(rng.uniform(0, 1) * sum(w.size for w in layers))
    assert _allocation(layers, total, caps) == _reference(layers, total, caps)  # counts, threshold, below


def test_lamp_allocation_across_chunks(monkeypatch):
    """Bin sums accumulated over many chunks (and the gather chunk by chunk): still exact."""
    monkeypatch.setattr(lamp, "CHUNK", 97)
    rng = np.random.default_rng(7)
    layers = [(rng.standard_normal(5000) * s).astype(np.float32) for s in (1.0, 0.01, 30.0)]
    layers[0][:300] = layers[0][300]  # ties across chunk boundaries
    for amount in (0.1, 0.5, 0.93):
        total = int(amount * 15000)
        assert _allocation(layers, total, [5000] * 3) == _reference(layers, total, [5000] * 3)


def test_lamp_allocation_edges():
    zeros = np.zeros(10, np.float32)
    one = np.array([2.0], np.float32)
    tiny = np.array([1e-45, 2e-45, 0.0, 1e-40], np.float32)  # subnormals share the lowest bins
    huge = np.array([3e38, -3e38, 1e38], np.float32)
    layers = [zeros, one, tiny, huge]
    for total in range(0, 19):
        caps = [10, 1, 4, 3]
        assert _allocation(layers, total, caps) == _reference(layers, total, caps)  # counts, threshold, below
    assert lamp.lamp_allocation(layers, 18, [10, 1, 4, 3]).counts == [10, 1, 4, 3]  # all taken
    assert lamp.lamp_allocation(layers, 5, [0, 0, 0, 0]).counts == [0, 0, 0, 0]  # caps forbid it
    with pytest.raises(ValueError, match="same length"):
        lamp.lamp_allocation(layers, 3, [1])


class _Counted(Sequence[np.ndarray]):
    def __init__(self, layers: list[np.ndarray]) -> None:
        self.layers = layers
        self.reads = [0] * len(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        self.reads[index] += 1
        return self.layers[index]


def test_lamp_allocation_reads_each_tensor_twice_and_gathers_little(monkeypatch):
    rng = np.random.default_rng(0)
    layers = _Counted([(rng.standard_normal(200_000) * s).astype(np.float32) for s in (1.0, 0.2, 5.0, 0.05)])
    gathered: list[int] = []
    real = lamp._gather_keys

    def counting(values, bins, first, last):
        keys, magnitudes = real(values, bins, first, last)
        gathered.append(keys.size)
        return keys, magnitudes

    monkeypatch.setattr(lamp, "_gather_keys", counting)
    total = 400_000
    found = lamp.lamp_allocation(layers, total, [200_000] * 4)
    assert found._replace(cuts=None) == _reference(layers.layers, total, [200_000] * 4)
    assert layers.reads == [2, 2, 2, 2]
    # the score bounds of 2⁻⁷-wide bins bracket the threshold tightly: a few per cent gathered
    assert sum(gathered) < 0.05 * 800_000
    # every layer's count comes with its magnitude cut, and the cut writes the same bits
    assert found.cuts is not None and all(cut is not None for cut in found.cuts)
    for w, count, (t, below) in zip(layers.layers, found.counts, found.cuts, strict=True):
        bits = w.view(np.uint32)
        assert np.array_equal(
            sparsity.zero_smallest_bits(bits, count, threshold=t, below=below), sparsity.zero_smallest_bits(bits, count)
        )


def test_given_bins_spare_a_read_and_change_nothing():
    """Bins handed over (by discovery, which read the tensor already) are not computed again:
    each such tensor is read once more only (the gather), and the allocation is the same."""
    rng = np.random.default_rng(1)
    values = [(rng.standard_normal(50_000) * s).astype(np.float32) for s in (1.0, 0.3, 4.0)]
    total, caps = 70_000, [50_000] * 3
    expected = lamp.lamp_allocation(values, total, caps)
    layers = _Counted(values)
    given = [lamp.tensor_bins(values[0]), None, lamp.tensor_bins(values[2])]
    assert lamp.lamp_allocation(layers, total, caps, summaries=given) == expected
    assert layers.reads == [1, 2, 1]
    with pytest.raises(ValueError, match="summaries"):
        lamp.lamp_allocation(values, total, caps, summaries=given[:2])


def test_a_streamed_lamp_run_bins_each_weight_once_as_discovery_reads_it(tmp_path, monkeypatch):
    """prune --scope global --criterion lamp on a model with external data: discovery bins every
    prunable weight as it counts it (Weight.summary), the allocation takes those bins, and the
    output is the one a run without them writes."""
    import builders as b
    import onnx
    from onnx import numpy_helper

    import onnxprune
    from onnxprune.graph import discovery

    scales = (1.0, 0.1, 3.0)
    inits = [b.init(f"W{i}", b.rand((64, 64), seed=i) * s) for i, s in enumerate(scales)]
    nodes = [b.node("MatMul", ["x" if i == 0 else f"h{i}", f"W{i}"], [f"h{i + 1}"], f"mm{i}") for i in range(3)]
    model = b.model(nodes, [b.value("x", (1, 64))], [b.value("h3", (1, 64))], inits)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.bin", size_threshold=0)
    config = onnxprune.PruneConfig(sparsity=0.5, scope="global", criterion="lamp")
    binned: list[int] = []  # one chunk a tensor here: one call of _chunk_ids per tensor binned
    real = lamp._chunk_ids
    monkeypatch.setattr(lamp, "_chunk_ids", lambda part, scratch: binned.append(part.size) or real(part, scratch))
    found = discovery.discover(model, config.selection, summarize=lamp.tensor_bins).weights
    assert all(isinstance(w.summary, lamp.Bins) for w in found if w.name.startswith("W"))
    binned.clear()
    onnxprune.prune_file(path, tmp_path / "a.onnx", config)
    assert binned == [64 * 64] * 3  # once each, in discovery
    monkeypatch.setattr(onnxprune.passes.unstructured, "_summary_of", lambda config: None)
    onnxprune.prune_file(path, tmp_path / "b.onnx", config)
    assert binned == [64 * 64] * 6  # the allocation's own pass
    a, b = onnx.load(str(tmp_path / "a.onnx")), onnx.load(str(tmp_path / "b.onnx"))
    assert [numpy_helper.to_array(t).tobytes() for t in a.graph.initializer] == [
        numpy_helper.to_array(t).tobytes() for t in b.graph.initializer
    ]


def test_lamp_scores_are_exact_per_bin_suffix_sums():
    """Scores from the bins' sums equal the textbook definition to float64 rounding."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal(4000).astype(np.float32)
    sq = np.sort(w.astype(np.float64) ** 2)
    textbook = sq / np.cumsum(sq[::-1])[::-1]
    order = np.argsort(np.abs(w), kind="stable")
    np.testing.assert_allclose(sparsity.lamp_scores(w)[order], textbook, rtol=1e-12)


def test_key_bounds_hold_every_key():
    rng = np.random.default_rng(2)
    for dtype in DTYPES:
        w = _layer(rng, 5000).astype(dtype)
        bins = lamp.tensor_bins(w)
        low, high = lamp.key_bounds(bins)
        keys = sparsity.global_keys(sparsity.lamp_scores(w))
        where = np.searchsorted(bins.ids, lamp._bin_ids(w))
        assert np.all(low[where] <= keys) and np.all(keys <= high[where])


@pytest.mark.parametrize("order", ["<", ">"])
def test_the_chunk_bins_and_keys_are_the_high_bits_in_either_byte_order(order: str):
    """The chunk helpers read the high 16 bits of each float32 as a strided uint16 view: the
    same bins as ``(bits >> 16) & 0x7FFF`` for every kind of value, stored either way round."""
    rng = np.random.default_rng(5)
    values = np.concatenate(
        [
            rng.standard_normal(1000).astype(np.float32),
            np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -3e-39, 3.4e38], dtype=np.float32),
        ]
    )
    stored = values.astype(np.dtype(np.float32).newbyteorder(order))
    expected = (values.view(np.uint32) >> 16) & 0x7FFF
    assert np.array_equal(lamp._high_halves(stored) & 0x7FFF, expected)
    scratch = lamp._Scratch(values.size)
    native = stored.astype(np.float32)  # the helpers' own path takes native float32
    assert np.array_equal(lamp._chunk_ids(native, scratch), expected)
    assert lamp._chunk_keys(native, scratch).dtype == np.uint16
    assert np.array_equal(lamp._chunk_keys(native, scratch), expected)
    assert np.array_equal(lamp._bin_ids(native), expected)
