"""Latency of onnxruntime sessions that can be trusted on a shared machine.

The question is usually relative (is the pruned model faster than the original?), so
the method is built to make a *ratio* robust, and reports absolute times alongside.

Method
    1. **Sessions.** Every model gets a session up front, all with the same options: graph
       optimizations at onnxruntime's default ``ORT_ENABLE_ALL`` (what users deploy),
       sequential execution (no inter-op threads), ``intra_op_num_threads = threads``
       when ``threads`` > 0 (else onnxruntime's default), the same execution providers.
       Idle intra-op threads do not spin (``session.intra_op.allow_spinning = 0``) unless
       ``spinning`` is set: measured on a 2-core machine, the threads of the session that
       just ran kept spinning while the next one ran and slowed it (paired ratios of a
       model against its own copy were 0.86 or 1.19 depending on which ran first, and
       evaluation medians ranged from 0.47 to 2.5 while other processes were busy;
       without spinning, the median over ten evaluations stayed within 0.98 to 1.02 and
       nearly all single evaluations within 0.95 to 1.05). Spinning lowers the latency of
       very small models run back to back, so absolute times without it are slightly
       conservative.
    2. **Warm-up and block size.** Each session runs ``warmup`` times (at least once: that
       run also checks the feeds). Let *t* be a model's fastest warm-up run after the first
       (the least disturbed estimate of its cost on a busy machine). If the fastest model's
       *t* is below ``BLOCK_BELOW_S`` (1 ms), one sample times a block of
       ``k = ceil(BLOCK_TARGET_S / t)`` consecutive runs (the sample then takes about 2 ms)
       and divides by *k*, so that the timer's resolution and the Python call overhead do
       not dominate; else ``k = 1``. *k* is the same for every model (lowered, if need be,
       so that the slowest model's sample stays under ``MAX_SAMPLE_S``, 50 ms): the first
       run of a block pays for switching from the other session (caches, sleeping
       threads), the others do not, so different *k* would bias the ratio (measured: a
       model against its own copy gave 0.89 and 1.19 in evaluations where warm-up noise
       picked k = 3 for one and 1 for the other). *k* is reported as ``runs_per_sample``.
    3. **Interleaved repeats.** Repeat *r* runs every model once (one block each), in the
       order ``schedule(n, repeats)[r]``: ``0, 1, …, n-1`` rotated left by *r*, so that over
       ``n`` consecutive repeats every model takes every position once and none always runs
       first (right after a warm cache, or right after another session's threads).
       The sample is ``s[m, r] = (perf_counter_ns() after - before) / k`` around the *k*
       ``session.run(None, feeds)`` calls only; Python's garbage collector is paused while
       timing (as ``timeit`` does). With ``min_time_s`` set, repeats continue in whole
       rotations (``n`` repeats) until the timed phase has lasted at least that long.
    4. **Statistics.** Per model: median, 90th percentile (linear interpolation), minimum
       and mean of ``s[m, ·]``. Against the base ``models[0]``, the **paired ratios**
       ``q[m, r] = s[m, r] / s[0, r]`` of the same repeat give the ratio statistics
       (median, 10th and 90th percentiles). A slow drift of a shared machine (another
       process, frequency scaling, thermal throttling) multiplies both members of a pair
       alike and cancels in *q*, where it would widen the spread of two separate medians.
    5. **Conclusive or not.** A ratio is *too noisy to conclude* when its p10–p90 spread
       contains 1 (the candidate is faster in some repeats and slower in others) or is wider
       than ±10 % of its median (``(p90 − p10) / 2 > 0.10 · median``): reports then say so,
       with the spread, and call nothing the fastest. The 95 % confidence interval of the
       median ratio is distribution-free: with the ``n`` ratios sorted, the order statistics
       of ranks ``⌊n/2 − 0.98√n⌋`` and ``⌈n/2 + 0.98√n⌉`` (1-based; the binomial(n, ½)
       quantiles by their normal approximation).
    6. **``repeats="auto"``.** Repeating goes on in whole rotations, at least
       :data:`AUTO_MIN_REPEATS`, until every candidate's confidence interval lies within
       ±3 % of its median ratio (:data:`AUTO_PRECISION`) or the time budget
       (``budget_s``) of the timed phase ends; :attr:`LatencyStats.stopped` says which.

Peak memory (``memory=True``, Linux only, an approximation)
    Before the timing, a throwaway session of the base model is created and run once, so
    that onnxruntime's one-time start-up (about 10 MB: its environment, kernel registries,
    libraries) is not charged to the first model. Then each model in turn, in isolation:
    Python's garbage is collected and glibc's free memory returned to the system
    (``malloc_trim``), the resident set size (``VmRSS``) is read, the process high-water
    mark is reset (``"5"`` written to ``/proc/self/clear_refs``), the session is created
    and run ``max(warmup, 1)`` times, ``VmHWM`` is read, the session dropped. The peak is
    ``VmHWM - VmRSS before``: the most resident memory that creating and running the
    session added. It is process-level (anything else the process does meanwhile counts;
    memory the allocator kept from an earlier model is reused and not counted) and Linux
    only: ``None`` on other systems and where ``clear_refs`` cannot be written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxprune import runtime
from onnxprune.errors import DataError, ModelLoadError, OptionError, UnsupportedModelError

if TYPE_CHECKING:  # sessions come from runtime.session, which imports onnxruntime then
    import onnxruntime as ort

log = logging.getLogger(__name__)

#: Runs shorter than this are timed in blocks of k runs per sample.
BLOCK_BELOW_S = 1e-3
#: A block of k runs is made to take at least this long.
BLOCK_TARGET_S = 2e-3
#: Upper bound on k (a model that runs in nanoseconds must not make a sample run forever).
MAX_BLOCK = 10_000
#: k is lowered so that the slowest model's sample stays below this.
MAX_SAMPLE_S = 0.05

Model = str | os.PathLike | bytes


#: The most intra-op threads a latency session may ask for, per logical core: more measure
#: nothing but contention (100,000 crashed onnxruntime; 512 on 2 cores did not finish).
THREADS_PER_CORE = 4


def max_threads() -> int:
    """The most ``threads`` :class:`LatencySettings` takes on this machine."""
    return THREADS_PER_CORE * (os.cpu_count() or 1)


@dataclass(frozen=True)
class LatencySettings:
    """How to measure: warm-up runs per model, interleaved repeats, threads, providers.

    ``threads`` 0 leaves onnxruntime's default intra-op thread count (at most
    :func:`max_threads`, :data:`THREADS_PER_CORE` per logical core); ``providers`` None
    means the CPU provider. ``min_time_s`` makes ``repeats`` a minimum: repeating goes on
    (in whole rotations) until the timed phase has lasted that long. ``spinning`` lets idle
    intra-op threads busy-wait, onnxruntime's default, off here (see the module docstring).
    """

    warmup: int = 10
    repeats: int | str = 50
    threads: int = 0
    providers: tuple[str, ...] | None = None
    memory: bool = False
    min_time_s: float | None = None
    spinning: bool = False
    budget_s: float = 30.0  # repeats="auto": the longest the timed phase may last

    def __post_init__(self) -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise OptionError(f"latency warm-up must be an integer >= 0, got {self.warmup!r}")
        if self.repeats != AUTO and (
            isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1
        ):
            raise OptionError(f"latency repeats must be an integer >= 1 or 'auto', got {self.repeats!r}")
        if isinstance(self.budget_s, bool) or not isinstance(self.budget_s, int | float) or not self.budget_s > 0:
            raise OptionError(f"latency time budget must be a number of seconds > 0, got {self.budget_s!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise OptionError(f"threads must be an integer >= 0 (0: onnxruntime's default), got {self.threads!r}")
        if self.threads > max_threads():
            raise OptionError(
                f"threads {self.threads} is more than {THREADS_PER_CORE} per logical core of this machine "
                f"({os.cpu_count() or 1}): so many threads measure only their own contention (and onnxruntime "
                f"may fail to start them); use at most {max_threads()}, or 0 for onnxruntime's default"
            )
        if self.min_time_s is not None and not (isinstance(self.min_time_s, int | float) and self.min_time_s > 0):
            raise OptionError(f"latency minimum time must be a number of seconds > 0, got {self.min_time_s!r}")
        if self.providers is not None:
            if isinstance(self.providers, str):
                raise OptionError(f"providers must be a sequence of names, got the string {self.providers!r}")
            object.__setattr__(self, "providers", tuple(self.providers))

    @property
    def auto(self) -> bool:
        """Repeat until the ratios are precise (or the budget ends), not a fixed count."""
        return self.repeats == AUTO

    @property
    def least_repeats(self) -> int:
        """Repeats taken whatever happens (``repeats``, or :data:`AUTO_MIN_REPEATS` for auto)."""
        return AUTO_MIN_REPEATS if self.auto else int(self.repeats)


#: ``LatencySettings.repeats`` that repeats until the ratios are precise (module docstring, 6)
AUTO = "auto"
#: repeats="auto": the fewest repeats, and the confidence half-width (relative) that stops it
AUTO_MIN_REPEATS = 20
AUTO_PRECISION = 0.03
#: A ratio whose p10–p90 half-spread is wider than this fraction of its median is noise.
NOISE_LIMIT = 0.10
#: Too noisy to conclude, in the words every report uses.
TOO_NOISY = "too noisy to conclude"


def median_interval(values: np.ndarray) -> tuple[float, float]:
    """The distribution-free 95 % confidence interval of the median of ``values`` (module
    docstring, 5); the whole range for fewer than 6 values."""
    q = np.sort(np.asarray(values, dtype=np.float64))
    n = q.size
    half = 0.98 * math.sqrt(n)  # 1.96 · √n / 2
    low = max(1, math.floor(n / 2 - half))
    high = min(n, math.ceil(n / 2 + half))
    return float(q[low - 1]), float(q[high - 1])


@dataclass(frozen=True)
class RatioStats:
    """Paired ratios candidate time / base time, one per repeat (> 1: the candidate is slower).

    ``ci_low``, ``ci_high``: the 95 % confidence interval of the median (module docstring, 5).
    """

    median: float
    p10: float
    p90: float
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def of(cls, q: np.ndarray) -> RatioStats:
        """The statistics of the paired ratios ``q``."""
        low, high = median_interval(q)
        return cls(float(np.median(q)), float(np.percentile(q, 10)), float(np.percentile(q, 90)), low, high)

    @property
    def conclusive(self) -> bool:
        """The p10–p90 spread lies on one side of 1 and within ±:data:`NOISE_LIMIT` of the median."""
        crosses = self.p10 <= 1.0 <= self.p90
        return not crosses and (self.p90 - self.p10) / 2 <= NOISE_LIMIT * self.median

    @property
    def verdict(self) -> str:
        """ "faster", "slower", or :data:`TOO_NOISY`."""
        if not self.conclusive:
            return TOO_NOISY
        return "faster" if self.median < 1 else "slower"

    def to_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "p10": self.p10,
            "p90": self.p90,
            "ci95": [self.ci_low, self.ci_high],
            "conclusive": self.conclusive,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model: statistics of its per-repeat samples (milliseconds per run).

    ``peak_memory_bytes`` is None unless measured (``memory=True``, Linux).
    """

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    repeats: int
    samples_ms: tuple[float, ...]
    ratio: RatioStats | None  # against models[0]; None for the base itself
    peak_memory_bytes: int | None
    runs_per_sample: int = 1  # k: session runs timed together per sample
    stopped: str | None = None  # repeats="auto": why repeating stopped

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "min_ms": self.min_ms,
            "mean_ms": self.mean_ms,
            "repeats": self.repeats,
            "stopped": self.stopped,
            "runs_per_sample": self.runs_per_sample,
            "samples_ms": list(self.samples_ms),
            "ratio": self.ratio.to_dict() if self.ratio is not None else None,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


def schedule(n_models: int, repeats: int) -> list[tuple[int, ...]]:
    """The order of the models in each repeat: ``0 … n-1`` rotated left by the repeat index."""
    return [_rotation(n_models, r) for r in range(repeats)]


def block_size(per_run_s: Sequence[float]) -> int:
    """Runs per sample, the same for every model, from each model's fastest warm-up run (seconds)."""
    fastest, slowest = min(per_run_s), max(per_run_s)
    if fastest >= BLOCK_BELOW_S:
        return 1
    k = min(MAX_BLOCK, math.ceil(BLOCK_TARGET_S / max(fastest, 1e-9)))
    return max(1, min(k, math.floor(MAX_SAMPLE_S / max(slowest, 1e-9))))


def _rotation(n_models: int, r: int) -> tuple[int, ...]:
    return tuple((r + i) % n_models for i in range(n_models))


def measure_latency(
    models: Sequence[Model],
    feeds: Mapping[str, np.ndarray],
    *,
    settings: LatencySettings,
    progress: Callable[[int], None] | None = None,
) -> list[LatencyStats]:
    """Latency of each model on ``feeds``, interleaved; ``models[0]`` is the base of the ratios.

    ``progress(n)``, if given, is called after each interleaved repeat with ``n``, the number
    of samples just taken (one per model): an increment, as ``click.progressbar.update``
    takes, adding up to ``len(models) * settings.repeats`` (more if ``min_time_s`` extends
    the measurement). See the module docstring for the method.
    """
    if not models:
        raise OptionError("no model to measure; give at least one model")
    providers = runtime.check_providers(settings.providers)
    labels = [_label(m, i) for i, m in enumerate(models)]
    for model, label in zip(models, labels, strict=True):
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise ModelLoadError(f"{label} does not exist or is not a file; check the path")
    feeds = {name: np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a for name, a in feeds.items()}

    memory: list[int | None] = [None] * len(models)
    if settings.memory:
        _run_checked(_open(models[0], labels[0], settings, providers), labels[0], feeds)  # one-time start-up
        memory = [_peak_memory(m, lb, feeds, settings, providers) for m, lb in zip(models, labels, strict=True)]

    sessions = [_open(m, lb, settings, providers) for m, lb in zip(models, labels, strict=True)]
    per_run = [
        _warm_up(sess, label, feeds, max(settings.warmup, 1)) for sess, label in zip(sessions, labels, strict=True)
    ]
    k = block_size(per_run)
    log.debug("warm-up: %s ms per run; %d run(s) per sample", ", ".join(f"{t * 1e3:.4f}" for t in per_run), k)
    blocks = [k] * len(sessions)

    samples, stopped = _timed(sessions, blocks, feeds, settings, progress)
    base = samples[0]
    results = []
    for i, s in enumerate(samples):
        ratio = RatioStats.of(s / base) if i > 0 else None
        results.append(
            LatencyStats(
                median_ms=float(np.median(s)),
                p90_ms=float(np.percentile(s, 90)),
                min_ms=float(s.min()),
                mean_ms=float(s.mean()),
                repeats=len(s),
                samples_ms=tuple(float(x) for x in s),
                ratio=ratio,
                peak_memory_bytes=memory[i],
                runs_per_sample=blocks[i],
                stopped=stopped,
            )
        )
    return results


def _timed(
    sessions: Sequence[ort.InferenceSession],
    blocks: Sequence[int],
    feeds: Mapping[str, Any],
    settings: LatencySettings,
    progress: Callable[[int], None] | None,
) -> tuple[list[np.ndarray], str | None]:
    """The interleaved timing loop; per model, one sample (ms per run) per repeat; and, for
    repeats="auto", why it stopped."""
    n = len(sessions)
    samples: list[list[float]] = [[] for _ in sessions]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    stopped = None
    try:
        start = time.perf_counter()
        r = 0
        while True:
            if settings.auto:
                stopped = _auto_done(r, n, samples, settings, time.perf_counter() - start)
                if stopped is not None:
                    break
            elif _done(r, n, settings, time.perf_counter() - start):
                break
            for m in _rotation(n, r):
                run, k = sessions[m].run, blocks[m]
                t0 = time.perf_counter_ns()
                for _ in range(k):
                    run(None, feeds)
                t1 = time.perf_counter_ns()
                samples[m].append((t1 - t0) / k / 1e6)
            r += 1
            if progress is not None:
                progress(n)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [np.asarray(s, dtype=np.float64) for s in samples], stopped


def _auto_done(
    r: int, n: int, samples: Sequence[Sequence[float]], settings: LatencySettings, elapsed_s: float
) -> str | None:
    """repeats="auto" after ``r`` repeats: None to go on, else why it stops (whole rotations only)."""
    if r < AUTO_MIN_REPEATS or r % n:
        return None
    base = np.asarray(samples[0])
    widest = 0.0
    for s in samples[1:]:
        q = np.asarray(s) / base
        low, high = median_interval(q)
        widest = max(widest, (high - low) / 2 / float(np.median(q)))
    if widest <= AUTO_PRECISION:
        return f"every ratio known within ±{100 * AUTO_PRECISION:.0f} % (95 % confidence) after {r} repeats"
    if elapsed_s >= settings.budget_s:
        return (
            f"time budget of {settings.budget_s:g} s spent after {r} repeats; the widest ratio is known "
            f"within ±{100 * widest:.1f} % only"
        )
    return None


def _done(r: int, n: int, settings: LatencySettings, elapsed_s: float) -> bool:
    """After ``r`` repeats: stop? ``repeats`` first, then whole rotations until ``min_time_s``."""
    if r < settings.repeats:
        return False
    if settings.min_time_s is None:
        return True
    return (r - settings.repeats) % n == 0 and elapsed_s >= settings.min_time_s


def _warm_up(sess: ort.InferenceSession, label: str, feeds: Mapping[str, Any], runs: int) -> float:
    """Run ``runs`` times; the fastest run after the first, in seconds. The first run checks the feeds."""
    times = []
    for i in range(runs):
        t0 = time.perf_counter_ns()
        if i == 0:
            _run_checked(sess, label, feeds)
        else:
            sess.run(None, feeds)
        times.append((time.perf_counter_ns() - t0) / 1e9)
    return min(times[1:] or times)


def _run_checked(sess: ort.InferenceSession, label: str, feeds: Mapping[str, Any]) -> None:
    try:
        sess.run(None, feeds)
    except Exception as exc:
        inputs = "; ".join(f"{a.name} {a.type} {list(a.shape)}" for a in sess.get_inputs())
        given = ", ".join(f"{n} {_describe(a)}" for n, a in feeds.items()) or "nothing"
        raise DataError(
            f"onnxruntime cannot run {label} on the given inputs ({runtime.ort_message(exc)}); "
            f"given {given}; give one array per model input, named, typed and shaped as declared: {inputs}"
        ) from None


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} {list(a.shape)}"
    return type(a).__name__


def _open(model: Model, label: str, settings: LatencySettings, providers: Sequence[str]) -> ort.InferenceSession:
    try:
        return runtime.session(
            model, threads=settings.threads, optimize=True, providers=providers, spinning=settings.spinning
        )
    except OptionError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"onnxruntime cannot load {label} ({runtime.ort_message(exc)}); convert it to an IR version and "
            "opsets this onnxruntime supports, or upgrade onnxruntime"
        ) from None


def _label(model: Model, index: int) -> str:
    return f"model #{index} (bytes)" if isinstance(model, bytes) else f"'{os.fspath(model)}'"


# ---------------------------------------------------------------------------------------
# Peak memory (Linux)


def _peak_memory(
    model: Model, label: str, feeds: Mapping[str, Any], settings: LatencySettings, providers: Sequence[str]
) -> int | None:
    """Peak resident bytes added by creating and running one session (module docstring)."""
    if not sys.platform.startswith("linux"):
        log.info("peak memory is measured on Linux only")
        return None
    _release_free_memory()
    before = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        log.info("peak memory not measured: cannot reset the high-water mark (%s)", exc)
        return None
    sess = _open(model, label, settings, providers)
    _run_checked(sess, label, feeds)
    for _ in range(settings.warmup - 1):
        sess.run(None, feeds)
    peak = _status_kb("VmHWM")
    del sess
    _release_free_memory()
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _release_free_memory() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl ...)
        return
    trim(0)
