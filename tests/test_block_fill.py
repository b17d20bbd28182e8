"""New values a block at a time: magnitude pruning's fill, the record of what changed and the
dead-channel watch give, for any cut of a tensor into blocks, what they give on the whole tensor."""

from __future__ import annotations

import itertools

import builders
import numpy as np
import pytest
from onnx import TensorProto

from onnxprune.graph.writer import ElementDiff, compare_elements
from onnxprune.passes.deadwatch import DeadWatch, SliceWatch, has_zero_slice
from onnxprune.sparsity import (
    BlockFill,
    ZeroNM,
    ZeroSmallest,
    apply_mask_bits,
    nm_mask,
    nm_zero_bits,
    smallest_k_mask,
    zero_smallest_bits,
)
from onnxprune.sparsity import nm as nm_module
from onnxprune.sparsity import select as select_module
from onnxprune.sparsity.scores import float_bits, magnitude_keys, sign_clear
from onnxprune.sparsity.select import CutMismatch


def _cuts(n: int, rng: np.random.Generator, *, multiple: int = 1) -> list[int]:
    """Seeded block boundaries of ``[0, n)`` (each a multiple of ``multiple``), with 0 and n."""
    inner = rng.integers(1, max(2, n // multiple), size=int(rng.integers(0, 6))) * multiple
    return sorted({0, n, *(int(c) for c in inner if 0 < c < n)})


def _by_blocks(fill: BlockFill, cuts: list[int]) -> np.ndarray:
    out = np.empty(fill.size, dtype=fill.dtype)
    for a, b in itertools.pairwise(cuts):
        fill.fill(a, out[a:b])
    fill.finish()
    return out


def _weights(seed: int, n: int, ties: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    if ties:  # many equal magnitudes (both signs) and exact zeros: ties at the cut cross blocks
        w = (np.round(w * 2) / 2).astype(np.float32)
    return w


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ties", [False, True])
def test_zero_smallest_by_blocks_is_the_mask_of_the_k_smallest(
    monkeypatch: pytest.MonkeyPatch, seed: int, ties: bool
) -> None:
    monkeypatch.setattr(select_module, "CHUNK", 64)  # chunks, spans and threads inside small blocks
    monkeypatch.setattr(select_module, "SPLIT_FROM", 256)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    w = _weights(seed, n, ties)
    bits = float_bits(w)
    expected_k = {0, n, int(rng.integers(0, n + 1)), n // 2}
    for k in expected_k:
        expected = apply_mask_bits(bits, smallest_k_mask(magnitude_keys(w), k))
        assert np.array_equal(_by_blocks(ZeroSmallest(bits, k), _cuts(n, rng)), expected)
        assert np.array_equal(zero_smallest_bits(bits, k), expected)


@pytest.mark.parametrize(
    ("shape", "axis"), [((16, 12), 0), ((12, 16), 1), ((8, 12, 3, 3), 1), ((40, 8), 0), ((4, 400), 1)]
)
@pytest.mark.parametrize("seed", range(4))
def test_n_m_by_blocks_of_whole_rows_is_the_n_m_mask(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], axis: int, seed: int
) -> None:
    monkeypatch.setattr(nm_module, "CHUNK", 64)  # several chunks and two threads inside a block
    monkeypatch.setattr(nm_module, "SPLIT_FROM", 128)
    rng = np.random.default_rng(seed)
    w = _weights(seed, int(np.prod(shape)), ties=bool(seed % 2)).reshape(shape)
    bits = float_bits(w)
    for n, m in ((2, 4), (1, 4), (4, 8)):
        if shape[axis] % m:
            continue
        expected = apply_mask_bits(bits, nm_mask(magnitude_keys(w), n, m, axis)).reshape(-1)
        fill = ZeroNM(bits, n, m, axis)
        rows = fill.size // fill.granule
        cuts = [c * fill.granule for c in _cuts(rows, rng)]
        assert np.array_equal(_by_blocks(fill, cuts), expected)
        assert np.array_equal(nm_zero_bits(bits, n, m, axis).reshape(-1), expected)
        if fill.granule > 1:
            with pytest.raises(ValueError, match="whole rows"):
                ZeroNM(bits, n, m, axis).fill(1, np.empty(fill.granule, fill.dtype))


def test_a_vouched_threshold_that_is_no_cut_fails_at_the_end_of_the_blocks() -> None:
    w = _weights(3, 4000, ties=False)
    bits = float_bits(w)
    keys = bits & sign_clear(bits.dtype)
    k = 1500
    t = np.partition(keys, k - 1)[k - 1]
    below = int(np.count_nonzero(keys < t))
    expected = zero_smallest_bits(bits, k)
    assert np.array_equal(_by_blocks(ZeroSmallest(bits, k, threshold=int(t), below=below), [0, 999, 4000]), expected)
    wrong = ZeroSmallest(bits, k, threshold=int(t) + 7, below=below)  # vouched for: pass 1 skipped
    with pytest.raises(CutMismatch):
        _by_blocks(wrong, [0, 1234, 4000])
    assert np.array_equal(zero_smallest_bits(bits, k, threshold=int(t) + 7, below=below), expected)  # dropped


@pytest.mark.parametrize("seed", range(8))
def test_the_record_of_runs_joined_is_the_record_of_the_whole(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 20000))
    old = rng.integers(0, 1 << 32, n, dtype=np.uint32)
    new = old.copy()
    new[rng.random(n) < 0.4] = 0
    new[rng.random(n) < 0.01] ^= 1  # changed, not to +0
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[n])
    whole = compare_elements(tensor, old, new)
    diff = ElementDiff()
    cuts = _cuts(n, rng, multiple=8)
    for a, b in itertools.pairwise(cuts):
        diff.add(old[a:b], new[a:b])
    assert diff.result() == whole and diff.result()[1] == whole[1]


_SHAPES_AND_AXES = [
    ((40,), None),
    ((12, 9), None),
    ((12, 9), (0,)),
    ((12, 9), (1,)),
    ((6, 300), (0,)),  # long runs: whole runs at a time
    ((300, 6), (1,)),  # short runs: whole periods at a time
    ((5, 4, 3, 3), (0,)),
    ((5, 4, 3, 3), (1,)),
    ((4, 8, 3, 3), ("groups", 2, 1)),
    ((4, 8, 1, 1), ("groups", 2, 1)),
    ((3, 8, 3, 3), ("groups", 2, 1)),  # 3 filters do not split in 2 groups: both end axes
]


@pytest.mark.parametrize(("shape", "axes"), _SHAPES_AND_AXES)
@pytest.mark.parametrize("seed", range(6))
def test_the_slice_watch_by_blocks_is_has_zero_slice(shape: tuple[int, ...], axes: object, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for trial in range(8):
        values = rng.standard_normal(shape).astype(np.float32)
        values[rng.random(shape) < 0.5] = 0.0
        if trial % 2:  # a zero slice along one axis, some as -0.0
            axis = int(rng.integers(0, len(shape)))
            index = [slice(None)] * len(shape)
            index[axis] = int(rng.integers(0, shape[axis]))
            values[tuple(index)] = -0.0 if trial % 4 == 1 else 0.0
        bits = float_bits(values).reshape(-1)
        watch = SliceWatch(shape, axes, sign_clear(bits.dtype))  # type: ignore[arg-type]
        cuts = _cuts(bits.size, rng)
        for a, b in itertools.pairwise(cuts):
            watch.look(a, bits[a:b])
        assert watch.zero_slice() == has_zero_slice(values, axes), (trial, cuts)  # type: ignore[arg-type]


class _Given(BlockFill):
    """Fills the given values (a stand-in for a pruning fill)."""

    def __init__(self, values: np.ndarray) -> None:
        super().__init__(values.size, values.dtype)
        self.values = values.reshape(-1)

    def fill(self, start: int, out: np.ndarray) -> None:
        out[:] = self.values[start : start + out.size]


def test_the_watch_looks_at_a_fill_block_by_block_and_fires_at_its_end() -> None:
    m = builders.matmul_right()  # W[32, 16]: columns are output channels
    proto = next(t for t in m.graph.initializer if t.name == "W")
    w = np.ones((32, 16), np.float32).view(np.uint32)
    col = w.copy()
    col[:, 7] = 0
    row = w.copy()
    row[3] = 0
    for values, fires in ((row, False), (col, True)):
        watch = DeadWatch(m)
        fill = watch.wrap({"W": lambda proto, v=values: _Given(v)})["W"](proto)
        assert isinstance(fill, BlockFill)
        out = np.empty(fill.size, fill.dtype)
        fill.fill(0, out[:100])
        fill.fill(100, out[100:])
        assert not watch.fired  # not before the last block
        fill.finish()
        assert bool(watch.fired) is fires and np.array_equal(out, values.reshape(-1))
