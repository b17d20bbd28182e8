"""The deflate size: exact, cached by content, and the sampled estimate with its stated error."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from onnxprune import compressed_size as cs
from onnxprune.stats import both_file_stats, file_stats


def _weights_file(path, n, sparsity, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    w[rng.random(n) < sparsity] = 0
    path.write_bytes(w.tobytes())
    return path


def test_exact_is_zlib_level_6_of_each_file_and_cached_by_content(tmp_path):
    a = _weights_file(tmp_path / "a.bin", 100_000, 0.5, 0)
    b = _weights_file(tmp_path / "b.bin", 30_000, 0.0, 1)
    want = len(zlib.compress(a.read_bytes(), 6)) + len(zlib.compress(b.read_bytes(), 6))
    got = cs.exact([a, b])
    assert got == cs.DeflateSize(want, exact=True)
    copy = tmp_path / "copy.bin"
    copy.write_bytes(a.read_bytes())
    key = cs._content_key([copy, b])
    assert key == cs._content_key([a, b]) and key in cs._exact_cache  # same bytes: one deflate
    a.write_bytes(bytes(40_000) + a.read_bytes()[40_000:])  # other bytes, other figure
    assert cs.exact([a, b]).bytes < want


def test_small_files_are_deflated_whole_even_when_an_estimate_is_asked(tmp_path):
    a = _weights_file(tmp_path / "a.bin", 50_000, 0.5, 2)
    assert cs.estimate([a]) == cs.exact([a])


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_the_estimate_lies_within_its_stated_error(tmp_path, sparsity):
    # 8 MiB, with a sparser second half: strata must follow the file
    rng = np.random.default_rng(3)
    w = rng.standard_normal(2_000_000).astype(np.float32)
    w[rng.random(w.size) < sparsity] = 0
    w[w.size // 2 :][rng.random(w.size // 2) < 0.5] = 0
    path = tmp_path / "w.bin"
    path.write_bytes(w.tobytes())
    want = cs.exact([path]).bytes
    got = cs.estimate([path])
    assert not got.exact and 0 < got.relative_error < 0.05
    assert abs(got.bytes / want - 1) <= max(3 * got.relative_error, 0.01)
    assert cs.estimate([path]) == got  # seeded: the same file, the same figure


def test_file_stats_modes(tmp_path):
    a = _weights_file(tmp_path / "a.bin", 10_000, 0.5, 4)
    assert file_stats([a], compressed=False).compressed is None
    assert file_stats([a], compressed="off").compressed is None
    exact = file_stats([a], compressed="exact")
    assert exact.compressed_exact and exact.compressed == cs.exact([a]).bytes
    assert file_stats([a]).compressed == exact.compressed  # small: the estimate is exact
    first, second = both_file_stats([a], [a], "exact")
    assert first == second == exact
    with pytest.raises(ValueError, match="expected one of"):
        file_stats([a], compressed="fast")


def test_sizes_computed_during_a_run_are_those_of_the_files_after_it(tmp_path):
    """prune_file with FileStatsAhead: the input's figure from when it is read, the output's from
    the staged files while they are validated; the same figures as both_file_stats afterwards."""
    import onnxprune
    from onnxprune.stats import FileStatsAhead

    source = Path(__file__).resolve().parents[1] / "fixtures" / "mlp_digits.onnx"
    out = tmp_path / "out.onnx"
    sizes = FileStatsAhead("estimate")
    try:
        assert not sizes.given
        with pytest.raises(ValueError, match="both be given"):
            sizes.result()
        run = onnxprune.prune_file(source, out, onnxprune.PruneConfig(sparsity=0.5), file_sizes=sizes)
        assert sizes.given
        ahead = sizes.result()
    finally:
        sizes.close()
    assert ahead == both_file_stats(run.input_files, [run.saved.path], "estimate")
    assert ahead[1].bytes == out.stat().st_size and ahead[1].compressed < ahead[0].compressed
