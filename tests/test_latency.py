"""Latency measurement: statistics, interleaving, block timing, memory and every error path.

Real onnxruntime sessions on small models built here; repeats are kept small so the file
runs in seconds. Timings are only compared where the gap is large (20 MatMuls against 1).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import builders as b
import numpy as np
import onnxruntime as ort
import pytest

from onnxprune import latency, runtime
from onnxprune.errors import DataError, ModelLoadError, OptionError, UnsupportedModelError
from onnxprune.latency import (
    TOO_NOISY,
    LatencySettings,
    LatencyStats,
    RatioStats,
    block_size,
    measure_latency,
    median_interval,
    schedule,
)

FAST = LatencySettings(warmup=2, repeats=6)


def matmul_chain(n: int, *, width: int = 128, batch: int = 16) -> bytes:
    """X[batch, width] multiplied ``n`` times by the same orthogonal W (norm kept, no denormals)."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((width, width)))
    names = ["X"] + [f"h{i}" for i in range(1, n)] + ["Y"]
    nodes = [b.node("MatMul", [names[i], "W"], [names[i + 1]], f"mm{i}") for i in range(n)]
    m = b.model(
        nodes,
        [b.value("X", [batch, width])],
        [b.value("Y", [batch, width])],
        [b.init("W", q.astype(np.float32))],
    )
    return m.SerializeToString()


def chain_feeds(*, width: int = 128, batch: int = 16) -> dict[str, np.ndarray]:
    return {"X": np.random.default_rng(1).standard_normal((batch, width)).astype(np.float32)}


def tiny() -> bytes:
    """Y = X + 1 on 4 numbers: microseconds per run."""
    m = b.model(
        [b.node("Add", ["X", "one"], ["Y"], "add")],
        [b.value("X", [1, 4])],
        [b.value("Y", [1, 4])],
        [b.init("one", np.ones((1, 4), np.float32))],
    )
    return m.SerializeToString()


TINY_FEEDS = {"X": np.zeros((1, 4), np.float32)}


def big_weight() -> bytes:
    """Y = X @ W with W 1024 x 1024 float32: a 4 MiB initializer."""
    w = np.random.default_rng(2).standard_normal((1024, 1024)).astype(np.float32)
    m = b.model(
        [b.node("MatMul", ["X", "W"], ["Y"], "mm")],
        [b.value("X", [1, 1024])],
        [b.value("Y", [1, 1024])],
        [b.init("W", w)],
    )
    return m.SerializeToString()


# ---------------------------------------------------------------------------------------
# Statistics


def test_stats_are_consistent_and_base_has_no_ratio():
    model = matmul_chain(1)
    settings = LatencySettings(warmup=2, repeats=7)
    base, copy = measure_latency([model, model], chain_feeds(), settings=settings)
    for s in (base, copy):
        assert s.repeats == 7
        assert len(s.samples_ms) == 7
        assert all(x > 0 for x in s.samples_ms)
        assert s.min_ms == min(s.samples_ms)
        assert s.min_ms <= s.median_ms <= s.p90_ms <= max(s.samples_ms)
        assert s.min_ms <= s.mean_ms <= max(s.samples_ms)
        assert s.median_ms == pytest.approx(float(np.median(s.samples_ms)))
        assert s.runs_per_sample >= 1
        assert s.peak_memory_bytes is None  # not asked for
    assert base.ratio is None
    assert copy.ratio is not None
    assert 0 < copy.ratio.p10 <= copy.ratio.median <= copy.ratio.p90
    paired = np.array(copy.samples_ms) / np.array(base.samples_ms)
    assert copy.ratio.median == pytest.approx(float(np.median(paired)))
    assert copy.ratio.p90 == pytest.approx(float(np.percentile(paired, 90)))


def test_to_dict_is_json_and_complete():
    base, cand = measure_latency([tiny(), tiny()], TINY_FEEDS, settings=FAST)
    d = json.loads(json.dumps(cand.to_dict()))
    assert set(d) == {
        "median_ms",
        "p90_ms",
        "min_ms",
        "mean_ms",
        "repeats",
        "stopped",
        "runs_per_sample",
        "samples_ms",
        "ratio",
        "peak_memory_bytes",
    }
    assert d["samples_ms"] == list(cand.samples_ms)
    r = cand.ratio
    assert d["ratio"] == {
        "median": r.median,
        "p10": r.p10,
        "p90": r.p90,
        "ci95": [r.ci_low, r.ci_high],
        "conclusive": r.conclusive,
        "verdict": r.verdict,
    }
    assert base.to_dict()["ratio"] is None and d["stopped"] is None


@pytest.mark.parametrize(
    ("p10", "median", "p90", "verdict"),
    [
        (0.50, 0.55, 0.60, "faster"),  # ±9 %, all below 1
        (1.20, 1.25, 1.30, "slower"),
        (0.90, 0.97, 1.03, TOO_NOISY),  # crosses 1
        (0.25, 1.09, 4.04, TOO_NOISY),  # what `make demo` once printed
        (0.40, 0.55, 0.62, TOO_NOISY),  # below 1 but ±20 %
    ],
)
def test_a_ratio_is_called_noise_when_its_spread_crosses_one_or_is_wide(p10, median, p90, verdict):
    r = RatioStats(median, p10, p90)
    assert r.verdict == verdict and r.conclusive is (verdict != TOO_NOISY)


def test_the_median_interval_covers_the_median_at_about_95_percent():
    rng = np.random.default_rng(0)
    n, trials = 40, 2000
    covered = 0
    for _ in range(trials):
        low, high = median_interval(rng.lognormal(0.0, 0.3, n))
        covered += low <= 1.0 <= high  # the lognormal's median is exp(0) = 1
    assert 0.92 <= covered / trials <= 0.99
    low, high = median_interval(np.arange(1.0, 101.0))
    assert low < 50.5 < high and high - low < 25


def test_auto_repeats_stop_once_the_ratio_is_precise_or_the_budget_ends(monkeypatch):
    settings = LatencySettings(warmup=1, repeats="auto", budget_s=5.0)
    assert settings.auto and settings.least_repeats == latency.AUTO_MIN_REPEATS
    # the same model twice on a quiet machine: its ratio settles near 1 well within the budget
    base, cand = measure_latency([tiny(), tiny()], TINY_FEEDS, settings=settings)
    assert cand.repeats >= latency.AUTO_MIN_REPEATS and cand.repeats % 2 == 0
    assert cand.stopped is not None and base.stopped == cand.stopped
    if "within ±3 %" in cand.stopped:
        assert (cand.ratio.ci_high - cand.ratio.ci_low) / 2 <= 0.03 * cand.ratio.median
    # never precise (every repeat's ratio drawn afresh): the budget ends it
    rng = np.random.default_rng(1)
    samples = [[1.0] * 40, list(rng.uniform(0.5, 2.0, 40))]
    assert latency._auto_done(40, 2, samples, settings, 1.0) is None
    assert "budget" in latency._auto_done(40, 2, samples, settings, 5.0)
    assert latency._auto_done(41, 2, samples, settings, 5.0) is None  # whole rotations only
    with pytest.raises(OptionError, match="'auto'"):
        LatencySettings(repeats="many")
    with pytest.raises(OptionError, match="budget"):
        LatencySettings(repeats="auto", budget_s=0)


def test_single_model_on_a_fixture(fixtures_dir: Path):
    with np.load(fixtures_dir / "mlp_digits.test.npz") as npz:
        x = npz["input"][:32]
    (stats,) = measure_latency(
        [fixtures_dir / "mlp_digits.onnx"], {"input": x}, settings=LatencySettings(warmup=2, repeats=4, threads=1)
    )
    assert isinstance(stats, LatencyStats)
    assert stats.ratio is None
    assert stats.repeats == 4
    assert 0 < stats.min_ms < 1000


# ---------------------------------------------------------------------------------------
# Method: schedule, interleaving, block timing, time budget, progress


def test_schedule_rotates_so_every_model_takes_every_position():
    assert schedule(2, 4) == [(0, 1), (1, 0), (0, 1), (1, 0)]
    assert schedule(3, 3) == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    orders = schedule(4, 8)
    for position in range(4):
        counts = np.bincount([order[position] for order in orders], minlength=4)
        assert counts.tolist() == [2, 2, 2, 2]
    assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
    assert schedule(1, 3) == [(0,), (0,), (0,)]


class _Recording:
    """A session that records which model ran, in order (delegates everything else)."""

    def __init__(self, sess: ort.InferenceSession, index: int, log: list[int]) -> None:
        self._sess, self._index, self._log = sess, index, log

    def run(self, *args, **kwargs):
        self._log.append(self._index)
        return self._sess.run(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._sess, name)


def test_timed_runs_follow_the_rotating_schedule(monkeypatch: pytest.MonkeyPatch):
    calls: list[int] = []
    opened: list[int] = []
    real_session = runtime.session

    def recording_session(model, **kwargs):
        opened.append(len(opened))
        return _Recording(real_session(model, **kwargs), opened[-1], calls)

    monkeypatch.setattr(latency.runtime, "session", recording_session)
    monkeypatch.setattr(latency, "BLOCK_BELOW_S", 0.0)  # one run per sample: one call per sample
    models = [tiny(), tiny(), tiny()]
    stats = measure_latency(models, TINY_FEEDS, settings=LatencySettings(warmup=3, repeats=5))
    assert [s.runs_per_sample for s in stats] == [1, 1, 1]
    warmup, timed = calls[:9], calls[9:]
    assert warmup == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    expected = [m for order in schedule(3, 5) for m in order]
    assert timed == expected
    assert timed[:6] == [0, 1, 2, 1, 2, 0]  # really rotates: model 1 runs first in repeat 1


def test_slower_candidate_gets_ratio_clearly_above_one():
    feeds = chain_feeds()
    base, slow = measure_latency(
        [matmul_chain(1), matmul_chain(20)], feeds, settings=LatencySettings(warmup=3, repeats=9, threads=1)
    )
    assert slow.ratio is not None
    assert slow.ratio.median > 4, slow.ratio
    assert slow.ratio.p10 > 1.5, slow.ratio  # even the luckiest tenth of the pairs (a loaded CI machine)
    assert slow.median_ms > 3 * base.median_ms


def test_short_runs_are_timed_in_blocks():
    (fast,) = measure_latency([tiny()], TINY_FEEDS, settings=FAST)
    assert fast.runs_per_sample > 1
    assert fast.median_ms < latency.BLOCK_BELOW_S * 1e3
    # k = ceil(target / warm-up run) comes from the warm-up (see block_size's tests): timing noise on
    # a loaded machine can make later runs much faster than the warm-up, so only the order is checked
    assert fast.runs_per_sample * fast.median_ms >= 0.05 * latency.BLOCK_TARGET_S * 1e3


def test_block_size_follows_the_threshold(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(latency, "BLOCK_BELOW_S", 0.0)
    (single,) = measure_latency([tiny()], TINY_FEEDS, settings=FAST)
    assert single.runs_per_sample == 1
    monkeypatch.setattr(latency, "BLOCK_BELOW_S", 1.0)
    monkeypatch.setattr(latency, "MAX_BLOCK", 5)
    # a loaded machine can make the tiny model's warm-up slower than the 2 ms block target
    # (k = 1) or its 5-run sample longer than 50 ms: neither is what this test is about
    monkeypatch.setattr(latency, "BLOCK_TARGET_S", 0.5)
    monkeypatch.setattr(latency, "MAX_SAMPLE_S", 10.0)
    (capped,) = measure_latency([tiny()], TINY_FEEDS, settings=FAST)
    assert capped.runs_per_sample == 5


def test_block_size_is_shared_by_all_models_and_bounded():
    assert block_size([0.5e-3]) == 4  # ceil(2 ms / 0.5 ms)
    assert block_size([0.5e-3, 2e-3]) == 4  # the fastest model decides ...
    assert block_size([2e-3, 0.5e-3]) == 4
    assert block_size([1e-3, 0.4e-3]) == 5
    assert block_size([1e-3, 5e-3]) == 1  # ... and needs no block at 1 ms or more
    assert block_size([1e-5, 1e-2]) == 5  # the slowest sample is kept under 50 ms
    assert block_size([1e-5, 0.2]) == 1
    assert block_size([0.0]) == latency.MAX_BLOCK


def test_models_of_different_cost_get_the_same_block():
    feeds = chain_feeds()
    base, slow = measure_latency([matmul_chain(1), matmul_chain(4)], feeds, settings=FAST)
    assert base.runs_per_sample == slow.runs_per_sample > 1


def test_min_time_extends_repeats_in_whole_rotations():
    settings = LatencySettings(warmup=1, repeats=3, min_time_s=0.15)
    start = time.perf_counter()
    base, cand = measure_latency([tiny(), tiny()], TINY_FEEDS, settings=settings)
    assert time.perf_counter() - start >= 0.15
    assert base.repeats == cand.repeats > 3
    assert (base.repeats - 3) % 2 == 0
    assert len(cand.samples_ms) == cand.repeats


def test_progress_adds_up_to_the_samples_taken():
    steps: list[int] = []
    measure_latency([tiny(), tiny(), tiny()], TINY_FEEDS, settings=FAST, progress=steps.append)
    assert steps == [3] * FAST.repeats


def test_sessions_use_the_documented_options():
    sess = runtime.session(tiny(), threads=1, optimize=True, spinning=False)
    options = sess.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    plain = runtime.session(tiny()).get_session_options()
    assert plain.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert plain.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # off unless asked
    spinning = runtime.session(tiny(), spinning=True).get_session_options()
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    try:  # repacked unless made for one run (onnxruntime raises for a key never set)
        repacks = plain.get_session_config_entry("session.disable_prepacking") in ("", "0")
    except RuntimeError:
        repacks = True
    assert repacks
    once = runtime.session(tiny(), prepack=False).get_session_options()
    assert once.get_session_config_entry("session.disable_prepacking") == "1"


def test_validation_makes_its_one_run_session_without_repacking_the_weights(tmp_path, monkeypatch):
    import onnxprune

    made = []
    session = runtime.session
    monkeypatch.setattr(runtime, "session", lambda *a, **k: made.append(k.get("prepack", True)) or session(*a, **k))
    fixtures = Path(__file__).resolve().parent.parent / "fixtures"
    onnxprune.prune_file(fixtures / "cnn_digits.onnx", tmp_path / "p.onnx", onnxprune.PruneConfig(sparsity=0.5))
    assert made == [False]


# ---------------------------------------------------------------------------------------
# Peak memory


def _clear_refs_permitted() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _clear_refs_permitted(), reason="needs Linux with a writable /proc/self/clear_refs")
def test_peak_memory_counts_a_4_mib_weight():
    (small,) = measure_latency([tiny()], TINY_FEEDS, settings=LatencySettings(warmup=1, repeats=1, memory=True))
    (big,) = measure_latency(
        [big_weight()],
        {"X": np.ones((1, 1024), np.float32)},
        settings=LatencySettings(warmup=1, repeats=1, memory=True),
    )
    assert big.peak_memory_bytes is not None and small.peak_memory_bytes is not None
    assert big.peak_memory_bytes >= 4 * 2**20
    assert big.peak_memory_bytes > small.peak_memory_bytes + 3 * 2**20
    assert big.peak_memory_bytes < 64 * 2**20


def test_peak_memory_is_none_where_clear_refs_cannot_be_written(monkeypatch: pytest.MonkeyPatch):
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if str(path) == "/proc/self/clear_refs":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing_open)
    (stats,) = measure_latency([tiny()], TINY_FEEDS, settings=LatencySettings(warmup=1, repeats=2, memory=True))
    assert stats.peak_memory_bytes is None
    assert stats.repeats == 2


# ---------------------------------------------------------------------------------------
# Environment


def test_environment_describes_the_machine():
    env = runtime.environment()
    assert isinstance(env["cpu"], str) and env["cpu"]
    assert env["logical_cores"] >= 1
    assert 1 <= env["usable_cores"] <= env["logical_cores"]
    assert env["onnxruntime"] == ort.__version__
    assert env["numpy"] == np.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert "CPUExecutionProvider" in env["providers"]
    assert env["platform"]
    json.dumps(env)


# ---------------------------------------------------------------------------------------
# Errors


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


def test_unknown_provider_is_an_option_error_listing_the_available_ones():
    settings = LatencySettings(warmup=1, repeats=1, providers=("NoSuchExecutionProvider",))
    with pytest.raises(OptionError) as exc:
        measure_latency([tiny()], TINY_FEEDS, settings=settings)
    message = _one_line(exc)
    assert "NoSuchExecutionProvider" in message
    for provider in ort.get_available_providers():
        assert provider in message
    with pytest.raises(OptionError):
        runtime.session(tiny(), providers=["CPUExecutionProvider", "NoSuchExecutionProvider"])
    with pytest.raises(OptionError):
        runtime.session(tiny(), providers=[])


def test_listed_provider_runs():
    settings = LatencySettings(warmup=1, repeats=2, providers=["CPUExecutionProvider"])
    assert settings.providers == ("CPUExecutionProvider",)
    (stats,) = measure_latency([tiny()], TINY_FEEDS, settings=settings)
    assert stats.repeats == 2


@pytest.mark.parametrize(
    ("feeds", "hint"),
    [
        ({"x_wrong_name": np.zeros((1, 4), np.float32)}, "x_wrong_name"),
        ({"X": np.zeros((1, 5), np.float32)}, "float32 [1, 5]"),
        ({"X": np.zeros((1, 4), np.float64)}, "float64 [1, 4]"),
        ({}, "nothing"),
    ],
    ids=["name", "shape", "dtype", "empty"],
)
def test_feeds_onnxruntime_rejects_are_a_data_error(feeds, hint):
    with pytest.raises(DataError) as exc:
        measure_latency([tiny()], feeds, settings=FAST)
    message = _one_line(exc)
    assert hint in message
    assert "X tensor(float) [1, 4]" in message  # what the model declares
    assert "model #0 (bytes)" in message


def test_bad_feeds_are_a_data_error_when_measuring_memory_too():
    with pytest.raises(DataError):
        measure_latency([tiny()], {"X": np.zeros((2, 2), np.float32)}, settings=LatencySettings(memory=True))


def test_unloadable_bytes_are_an_unsupported_model_error():
    with pytest.raises(UnsupportedModelError) as exc:
        measure_latency([tiny(), b"this is not an onnx model"], TINY_FEEDS, settings=FAST)
    message = _one_line(exc)
    assert "model #1 (bytes)" in message
    assert "[ONNXRuntimeError]" not in message  # onnxruntime's status prefix is removed


def test_unknown_op_in_a_file_is_an_unsupported_model_error_naming_it(tmp_path: Path):
    m = b.model([b.node("NoSuchOp", ["X"], ["Y"], "n")], [b.value("X", [1, 4])], [b.value("Y", [1, 4])])
    path = tmp_path / "unknown_op.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(UnsupportedModelError) as exc:
        measure_latency([path], TINY_FEEDS, settings=FAST)
    message = _one_line(exc)
    assert str(path) in message
    assert "NoSuchOp" in message


def test_missing_file_is_a_model_load_error(tmp_path: Path):
    with pytest.raises(ModelLoadError) as exc:
        measure_latency([tiny(), tmp_path / "absent.onnx"], TINY_FEEDS, settings=FAST)
    assert "absent.onnx" in _one_line(exc)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"repeats": 0}, "repeats"),
        ({"repeats": 2.5}, "repeats"),
        ({"warmup": -1}, "warm-up"),
        ({"threads": -2}, "threads"),
        ({"min_time_s": 0}, "minimum time"),
        ({"providers": "CPUExecutionProvider"}, "providers"),
    ],
    ids=["repeats", "float-repeats", "warmup", "threads", "min-time", "provider-string"],
)
def test_impossible_settings_are_option_errors(kwargs, named):
    with pytest.raises(OptionError) as exc:
        LatencySettings(**kwargs)
    assert named in _one_line(exc)


def test_no_models_is_an_option_error():
    with pytest.raises(OptionError):
        measure_latency([], TINY_FEEDS, settings=FAST)


def test_sessions_opened_with_and_without_memory(monkeypatch: pytest.MonkeyPatch):
    opened: list[object] = []
    real_session = runtime.session

    def counting_session(model, **kwargs):
        opened.append(model)
        return real_session(model, **kwargs)

    monkeypatch.setattr(latency.runtime, "session", counting_session)
    measure_latency([tiny(), tiny()], TINY_FEEDS, settings=FAST)
    assert len(opened) == 2
    opened.clear()
    measure_latency([tiny(), tiny()], TINY_FEEDS, settings=LatencySettings(warmup=1, repeats=1, memory=True))
    assert len(opened) == 1 + 2 + 2  # start-up priming, one per model for memory, one per model for timing
