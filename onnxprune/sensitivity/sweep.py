"""Per-layer sensitivity curves of a model, cached, run through an executor.

Every prunable weight (main graph) is one task (:mod:`onnxprune.sensitivity.tasks`): the
layer is pruned alone at each level and its loss measured. Results are cached in
``cache_dir`` under the SHA-256 of the model file and the options, so a rerun with the
same model and options is instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxprune.data import Dataset
from onnxprune.errors import OptionError, OutputError, opt
from onnxprune.graph.discovery import DiscoveryOptions, discover
from onnxprune.graph.model_io import load_model
from onnxprune.graph.outputs import make_folder, write_file
from onnxprune.graph.sanity import refuse_nonfinite
from onnxprune.passes.base import Progress
from onnxprune.sensitivity.executors import Executor, SerialExecutor
from onnxprune.sensitivity.tasks import Batches, LayerCurve, LayerTask, run_layer, run_outputs

log = logging.getLogger(__name__)

DEFAULT_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: 2: the "1 - cosine" loss is eval's cosine (averaged per output), no longer the cosine of
#: all outputs concatenated; curves cached by an earlier version are measured again.
CACHE_VERSION = 2


@dataclass(frozen=True)
class Sensitivity:
    model: str
    digest: str  # SHA-256 of the model file and the options
    options: dict[str, object]
    curves: tuple[LayerCurve, ...]
    seconds: float
    cached: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "version": CACHE_VERSION,
            "model": self.model,
            "digest": self.digest,
            "options": self.options,
            "seconds": self.seconds,
            "curves": [c.to_dict() for c in self.curves],
        }


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnxprune" / "sensitivity"


def _digest(path: Path, options: dict[str, object], data_digest: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    h.update(json.dumps(options, sort_keys=True).encode())
    h.update(data_digest.encode())
    return h.hexdigest()


def feed_batches(dataset: Dataset, batch_size: int) -> Batches:
    """The dataset's runs of ``batch_size`` samples, as the model's feeds (writable copies, which
    workers receive pickled)."""
    parts = tuple({name: np.array(a) for name, a in batch.items()} for batch in dataset.batches(batch_size))
    if not parts:
        raise OptionError("the sensitivity data has no samples")
    return parts


def _arrays(batches: Batches | None) -> list[np.ndarray]:
    return [array for batch in batches or () for array in batch.values()]


def _array_digest(arrays: Sequence[np.ndarray | None]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _cached(cached_file: Path | None, path: Path, digest: str, options: dict[str, object]) -> Sensitivity | None:
    """The curves cached in ``cached_file``, or None: none there, or an entry this version cannot
    use (another version's, or not JSON, not a file, unreadable), measured again and replaced."""
    if cached_file is None or not cached_file.exists():
        return None
    try:
        saved = json.loads(cached_file.read_text())
        if not isinstance(saved, dict) or saved.get("version") != CACHE_VERSION:
            found = saved.get("version") if isinstance(saved, dict) else type(saved).__name__
            log.info("ignoring %s: cached by another version (%s)", cached_file, found)
            return None
        curves = tuple(LayerCurve.from_dict(c) for c in saved["curves"])
        seconds = float(saved.get("seconds", 0.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring a broken cache file %s (%s)", cached_file, exc)
        return None
    log.info("sensitivity of %s read from the cache %s", path, cached_file)
    return Sensitivity(str(path), digest, options, curves, seconds, cached=True)


def _store(cached_file: Path | None, result: Sensitivity) -> None:
    """Cache ``result``; a cache that cannot be written (something else at the entry's path,
    a folder gone read-only) is a warning: the curves just measured are still used."""
    if cached_file is not None:
        try:
            make_folder(cached_file.parent, name="the sensitivity cache folder")
            write_file(json.dumps(result.to_dict()), cached_file, what="sensitivity cache")
        except OutputError as exc:
            log.warning("the curves are not cached: %s", exc)


def _checked_levels(levels: Sequence[float]) -> tuple[float, ...]:
    levels = tuple(sorted({0.0, *(float(v) for v in levels)}))
    if any(not 0.0 <= v < 1.0 for v in levels):
        raise OptionError(f"{opt('levels')} must lie in [0, 1), got {', '.join(map(str, levels))}")
    return levels


def analyze_groups(
    model_path: str | os.PathLike[str],
    *,
    data: Dataset,
    labels: np.ndarray | None = None,
    levels: Sequence[float] = (0.0, 0.25, 0.5, 0.75),
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    executor: Executor | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    batch_size: int = 64,
    repeats: int = 15,
) -> Sensitivity:
    """Per channel group: the loss, the latency saved (measured, one thread, batch 1) and
    the MACs saved of removing each level (fraction of its units) of that group alone."""
    from onnxprune.sensitivity.tasks import GroupTask, run_group
    from onnxprune.structure.analysis import analyze

    path = Path(model_path)
    levels = _checked_levels(levels)
    feeds = feed_batches(data, batch_size)
    one = {name: np.array(a) for name, a in next(data.batches(1)).items()}
    options = {"structural": True, "levels": list(levels), "repeats": repeats}
    digest = _digest(path, options, _array_digest([*_arrays(feeds), labels]))
    cached_file = Path(cache_dir) / f"{digest}.json" if cache_dir is not None else None
    found = _cached(cached_file, path, digest, options)
    if found is not None:
        return found
    start = time.perf_counter()
    model = load_model(path)
    # channels are ranked by every weight of their group, as prune --structured ranks them
    refuse_nonfinite(model, advice="channel groups are ranked by their weights: fix the model")
    shapes = dict(input_shapes or {name: tuple(int(d) for d in value.shape) for name, value in one.items()})
    groups = [g.name for g in analyze(model, input_shapes=shapes).prunable]
    if not groups:
        raise OptionError(f"'{path}' has no channel group that can lose channels (see onnxprune prune --structured)")
    dense = tuple(run_outputs(model.SerializeToString(), feeds))
    del model
    tasks = [
        GroupTask(str(path), name, levels, feeds, labels, dense, shapes, one, batch_size=batch_size, repeats=repeats)
        for name in groups
    ]
    curves = tuple((executor or SerialExecutor()).map(run_group, tasks, progress))
    result = Sensitivity(str(path), digest, options, curves, time.perf_counter() - start)
    _store(cached_file, result)
    return result


def analyze_sensitivity(
    model_path: str | os.PathLike[str],
    *,
    data: Dataset | None = None,
    labels: np.ndarray | None = None,
    calibration: Dataset | None = None,
    method: str = "magnitude",
    levels: Sequence[float] = DEFAULT_LEVELS,
    min_size: int = 256,
    executor: Executor | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    batch_size: int = 64,
) -> Sensitivity:
    """Measure (or read from the cache) the sensitivity curve of every prunable weight."""
    path = Path(model_path)
    levels = _checked_levels(levels)
    if method != "magnitude" and calibration is None:
        raise OptionError(
            f"{opt('method', method)} needs calibration data: give {opt('calibration')} or {opt('data_free', True)}"
        )
    feeds = feed_batches(data, batch_size) if data is not None else None
    if labels is not None and feeds is not None and data is not None:
        count = sum(data.count(batch) for batch in feeds)
        if len(labels) != count:
            raise OptionError(f"{len(labels)} labels for {count} samples")
    calib = feed_batches(calibration, batch_size) if calibration is not None else None
    options = {"method": method, "levels": list(levels), "min_size": min_size, "data": feeds is not None}
    digest = _digest(path, options, _array_digest([*_arrays(feeds), labels, *_arrays(calib)]))
    cached_file = Path(cache_dir) / f"{digest}.json" if cache_dir is not None else None
    found = _cached(cached_file, path, digest, options)
    if found is not None:
        return found
    start = time.perf_counter()
    model = load_model(path)
    weights = [w for w in discover(model, DiscoveryOptions(min_size=min_size)).prunable if not w.scope]
    if not weights:
        raise OptionError(f"'{path}' has no prunable weight of at least {min_size} elements")
    dense = tuple(run_outputs(model.SerializeToString(), feeds)) if feeds is not None else None
    del model
    tasks = [
        LayerTask(
            str(path),
            w.key,
            levels,
            method=method,
            feeds=feeds,
            labels=labels,
            dense=dense,
            calibration=calib,
            batch_size=batch_size,
            batch_axes=calibration.layout.axes if calibration is not None else None,
        )
        for w in weights
    ]
    curves = tuple((executor or SerialExecutor()).map(run_layer, tasks, progress))
    result = Sensitivity(str(path), digest, options, curves, time.perf_counter() - start)
    _store(cached_file, result)
    return result
