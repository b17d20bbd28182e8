"""Where samples come from: arrays (``.npz``/``.npy``/in memory), folders, streams, synthetic;
and :func:`open_data`. What each may hold per input (one item per sample, a stack of complete
feeds, a scalar per sample) is the data contract of :mod:`onnxprune.data.layout`.

- ``.npz`` (``np.savez``): one array per model input, keyed by input name, the same sample
  count in every array. Loaded whole and checked on opening. A ``.npy`` (or an in-memory
  array) feeds a model with exactly one input.
- A folder: an ONNX test-data folder (``test_data_set_*/input_*.pb``) or a folder of
  per-sample ``.npz``/``.npy`` files (:mod:`onnxprune.data.folders`), read lazily like a
  stream; else a folder of images (:mod:`onnxprune.data.images`).
- A stream is an onnxruntime ``CalibrationDataReader`` (``get_next()`` returns a feed dict
  or None/empty at the end) or any iterable of feed dicts; each dict is one complete feed
  (or one sample, batch axis removed). It is read once, lazily, as batches are asked for;
  what was read is copied and cached, so ``batches()`` replays the same samples in the same
  order (the whole stream is held in memory).
- Synthetic data (no data given): ``samples`` samples (default 64, at most
  :data:`MAX_SYNTHETIC_SAMPLES`) of each input's dtype, reproducible from ``seed`` and
  independent of the batch size: block ``k`` of :data:`SYNTHETIC_BLOCK` samples is drawn from
  ``default_rng([seed, k])``. Floating inputs are standard normal, integer inputs 0 (1 for
  names containing "mask"), bool inputs True, as :func:`onnxprune.runtime.synthetic_feeds`
  does. Fixed dims are kept; a dynamic non-batch dim takes its size from ``shapes``
  (``--input-shape``) or is an error.

``samples`` also caps real data: the first ``samples`` samples are used, in order (with
image class folders sorted by class, that is the first classes).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.batch_axes import UNDECIDED
from onnxprune.data.checks import check_count, check_specs, format_dims, input_names
from onnxprune.data.dataset import Dataset, Feeds, read_only, regroup, samples_in
from onnxprune.data.folders import FolderSample, folder_kind, read_sample_files, read_test_data
from onnxprune.data.images import ImageFolderDataset, ImageOptions
from onnxprune.data.layout import FeedLayout
from onnxprune.data.numpy_files import load_numpy
from onnxprune.errors import DataError, OptionError, opt
from onnxprune.runtime import InputSpec, check_given_shapes, is_dynamic, shape_hint

log = logging.getLogger(__name__)

#: Default number of synthetic samples.
SYNTHETIC_SAMPLES = 64
#: The most synthetic samples one run makes: they measure fidelity to the dense model, which
#: a few thousand settle; more is a typo (a run of 10^9 would never end), so it is refused.
MAX_SYNTHETIC_SAMPLES = 100_000
#: Synthetic samples are drawn in blocks of this many, each from its own seeded generator.
SYNTHETIC_BLOCK = 64


class ArrayDataset(Dataset):
    """Samples held in memory: one array per input (one item per sample, or a stack of complete
    feeds: :mod:`onnxprune.data.layout`), checked once on construction."""

    def __init__(
        self,
        arrays: Mapping[str, Any],
        *,
        specs: Sequence[InputSpec],
        source: str,
        kind: str,
        limit: int | None,
        batch_axes: Mapping[str, int | None] | None = None,
    ) -> None:
        super().__init__(specs=specs, source=source, batch_axes=batch_axes)
        self.kind = kind
        checked = self.layout.check_items(arrays, source=source)
        if limit is not None:
            checked = {name: array[:limit] for name, array in checked.items()}
        self._arrays = read_only(checked)
        self._count = samples_in(self._arrays)
        if self._count == 0:
            raise DataError(f"{source} holds 0 samples (the arrays' first axis is empty)")

    def num_samples(self) -> int:
        return self._count

    def _batch_chunks(self, batch_size: int) -> Iterator[Feeds]:
        return regroup([self._arrays], batch_size)


class StreamDataset(Dataset):
    """A CalibrationDataReader or an iterable of feed dicts, read once and cached (see module docstring)."""

    def __init__(
        self,
        data: Any,
        *,
        specs: Sequence[InputSpec],
        limit: int | None,
        batch_axes: Mapping[str, int | None] | None = None,
        source: str | None = None,
        kind: str | None = None,
    ) -> None:
        reader = callable(getattr(data, "get_next", None))
        what = "CalibrationDataReader" if reader else "iterable"
        super().__init__(specs=specs, source=source or f"{what} {type(data).__name__}", batch_axes=batch_axes)
        self.kind = kind or ("reader" if reader else "iterable")
        self._reader = data if reader else None
        self._iterator = None if reader else iter(data)
        self._limit = limit
        self._cache: list[Feeds] = []
        self._count = 0
        self._pulled = 0
        self._done = False

    def num_samples(self) -> int | None:
        return self._count if self._done else None

    def _next_raw(self) -> Any:
        if self._reader is not None:
            item = self._reader.get_next()
            return item if item else None
        return next(self._iterator, None)

    def _pull(self) -> Feeds | None:
        """The next chunk from the stream, checked, copied and cached; None at its end."""
        if self._limit is not None and self._count >= self._limit:
            self._done = True
            return None
        raw = self._next_raw()
        if raw is None:
            self._done = True
            if not self._count:
                raise DataError(f"{self.source} gave no samples")
            log.info("%s: read %d samples in %d batches", self.source, self._count, self._pulled)
            return None
        index = self._pulled
        self._pulled += 1
        where, raw = (
            (raw.source, raw.arrays) if isinstance(raw, FolderSample) else (f"{self.source} (item {index})", raw)
        )
        chunk = self.layout.check_items(raw, source=where, log_casts=index == 0, stacked=False)
        if self._limit is not None:
            chunk = {name: array[: self._limit - self._count] for name, array in chunk.items()}
        chunk = read_only({name: np.array(array, copy=True) for name, array in chunk.items()})
        self._count += samples_in(chunk)
        self._cache.append(chunk)
        if self._limit is not None and self._count >= self._limit:
            self._done = True
        return chunk

    def _chunks(self) -> Iterator[Feeds]:
        index = 0
        while True:
            if index < len(self._cache):
                yield self._cache[index]
                index += 1
            elif self._done or self._pull() is None:
                return

    def _batch_chunks(self, batch_size: int) -> Iterator[Feeds]:
        return regroup(self._chunks(), batch_size)


class SyntheticDataset(Dataset):
    """Reproducible synthetic samples (see module docstring)."""

    kind = "synthetic"

    def __init__(
        self,
        *,
        specs: Sequence[InputSpec],
        samples: int,
        seed: int,
        shapes: Mapping[str, Sequence[int]] | None,
        batch_axes: Mapping[str, int | None] | None = None,
    ) -> None:
        super().__init__(specs=specs, source=f"synthetic (seed {seed})", batch_axes=batch_axes)
        self.synthetic = True
        self._samples = samples
        self._seed = seed
        self._shapes = synthetic_sample_shapes(self.specs, shapes or {}, batch_axes)

    def num_samples(self) -> int:
        return self._samples

    def _blocks(self) -> Iterator[Feeds]:
        for block in range(math.ceil(self._samples / SYNTHETIC_BLOCK)):
            rng = np.random.default_rng([self._seed, block])
            count = min(SYNTHETIC_BLOCK, self._samples - block * SYNTHETIC_BLOCK)
            feeds: Feeds = {}
            for spec in self.specs:
                shape = (count, *self._shapes[spec.name])
                if np.issubdtype(spec.dtype, np.floating):
                    feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
                elif spec.dtype is np.bool_:
                    feeds[spec.name] = np.ones(shape, dtype=np.bool_)
                else:
                    feeds[spec.name] = np.full(shape, 1 if "mask" in spec.name.lower() else 0, dtype=spec.dtype)
            yield feeds

    def _batch_chunks(self, batch_size: int) -> Iterator[Feeds]:
        return regroup(self._blocks(), batch_size)


def synthetic_sample_shapes(
    specs: Sequence[InputSpec],
    shapes: Mapping[str, Sequence[int]],
    batch_axes: Mapping[str, int | None] | None = None,
) -> dict[str, tuple[int, ...]]:
    """The shape of one sample of each input (its dims without the batch axis): fixed dims,
    else ``shapes``, full input shapes (``--input-shape``) whose batch dim is ignored."""
    layout = FeedLayout.of(specs, batch_axes)
    declared = {spec.name: spec.dims for spec in specs}
    check_given_shapes(declared, {name: shape for name, shape in shapes.items() if name not in declared})
    out: dict[str, tuple[int, ...]] = {}
    for lay in layout.inputs:
        if lay.axis == UNDECIDED:
            raise lay.undecided_error()
        if lay.name in shapes:
            given = {lay.name: shapes[lay.name]}
            full = check_given_shapes(declared, given, skip_batch=lay.batched, batch_axes={lay.name: lay.axis})[
                lay.name
            ]
            out[lay.name] = lay.item_of(full)
            continue
        dynamic = [str(d) for d in lay.item_dims if is_dynamic(d)]
        if dynamic:
            example = shape_hint(lay.dims, lay.axis)
            raise OptionError(
                f"synthetic data for input '{lay.name}' {format_dims(lay.dims)} needs sizes for its dynamic "
                f"dimension(s) {', '.join(dynamic)}: give {opt('input_shapes')} {lay.name}:{example} (N a number), "
                "or real data"
            )
        out[lay.name] = tuple(int(d) for d in lay.item_dims)  # type: ignore[arg-type]
    return out


def load_arrays(
    path: Path, *, specs: Sequence[InputSpec], limit: int | None, batch_axes: Mapping[str, int | None] | None = None
) -> ArrayDataset:
    """An ``.npz`` keyed by input name, or a ``.npy`` for a one-input model (see module docstring)."""
    try:
        loaded = load_numpy(path, "data file")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise DataError(
            f"{path} is not a readable .npz (np.savez output keyed by input name) or .npy file: {exc}"
        ) from None
    if isinstance(loaded, np.ndarray):
        if len(specs) != 1:
            raise DataError(
                f"{path} holds one unnamed array but the model has {len(specs)} inputs ({input_names(specs)}): "
                "save them with np.savez(path, name=array, ...)"
            )
        return ArrayDataset(
            {specs[0].name: loaded}, specs=specs, source=str(path), kind="npy", limit=limit, batch_axes=batch_axes
        )
    with loaded:
        if not loaded.files:
            raise DataError(f"{path} holds no arrays: save one array per model input ({input_names(specs)})")
        arrays = {}
        for key in loaded.files:
            try:
                arrays[key] = loaded[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{path}: cannot read array '{key}': {exc}") from None
    return ArrayDataset(arrays, specs=specs, source=str(path), kind="npz", limit=limit, batch_axes=batch_axes)


def open_data(
    data: Any,
    *,
    specs: Sequence[InputSpec],
    image_options: ImageOptions | None = None,
    input_name: str | None = None,
    samples: int | None = None,
    seed: int = 0,
    shapes: Mapping[str, Sequence[int]] | None = None,
    batch_axes: Mapping[str, int | None] | None = None,
) -> Dataset:
    """Open evaluation or calibration data for a model whose inputs are ``specs``.

    data: a ``.npz`` path (keyed by input name) or ``.npy`` path; a folder of images
        (``image_options``, ``input_name`` choose the preprocessing and the input fed);
        an object with ``get_next()`` (CalibrationDataReader); an iterable of feed dicts; a
        dict of arrays or one array; or None for synthetic data.
    samples: how many synthetic samples (default 64); for real data, use only the first ``samples``.
    seed: seeds synthetic data.
    shapes: full input shapes for synthetic data's dynamic dims (``--input-shape``; batch dim ignored).
    batch_axes: the batch axis of inputs whose axis cannot be inferred (``--batch-axis``;
        :mod:`onnxprune.batch_axes`); None means no batch axis.

    Raises DataError for data that does not fit the model, OptionError for impossible options.
    """
    specs = tuple(specs)
    check_specs(specs)
    check_count(samples, "the number of samples")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"seed must be an integer >= 0, got {seed!r}")
    is_folder = isinstance(data, (str, os.PathLike)) and Path(data).is_dir()
    if not is_folder:
        if image_options is not None and image_options != ImageOptions():
            raise OptionError("image preprocessing options apply only to a folder of images, not to this data")
        if input_name is not None:
            raise OptionError("choosing the image input applies only to a folder of images, not to this data")
    if data is not None and shapes:
        log.debug("input shapes apply only to synthetic data; ignored for %s", type(data).__name__)
    if data is None:
        if samples is not None and samples > MAX_SYNTHETIC_SAMPLES:
            raise OptionError(
                f"{opt('samples')} {samples:,} asks for more synthetic samples than the {MAX_SYNTHETIC_SAMPLES:,} "
                "onnxprune makes (a few thousand settle fidelity); give a smaller number or real data"
            )
        count = SYNTHETIC_SAMPLES if samples is None else int(samples)
        return SyntheticDataset(specs=specs, samples=count, seed=int(seed), shapes=shapes, batch_axes=batch_axes)
    axes = batch_axes
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if is_folder:
            kind = folder_kind(path)
            if kind in ("test-data", "samples"):
                read = read_test_data if kind == "test-data" else read_sample_files
                names = [spec.name for spec in specs]
                found = read(path, names, limit=samples)
                what = "ONNX test-data folder" if kind == "test-data" else "folder of sample files"
                return StreamDataset(
                    found, specs=specs, limit=samples, batch_axes=axes, source=f"{what} {path}", kind=kind
                )
            return ImageFolderDataset(
                path, specs=specs, options=image_options or ImageOptions(), input_name=input_name, limit=samples
            )
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        return load_arrays(path, specs=specs, limit=samples, batch_axes=axes)
    if isinstance(data, np.ndarray):
        if len(specs) != 1:
            raise DataError(
                f"one array can feed only a one-input model; this one has {len(specs)} inputs ({input_names(specs)}): "
                "give a dict of input name -> array"
            )
        return ArrayDataset(
            {specs[0].name: data}, specs=specs, source="in-memory array", kind="arrays", limit=samples, batch_axes=axes
        )
    if isinstance(data, Mapping):
        return ArrayDataset(data, specs=specs, source="in-memory arrays", kind="arrays", limit=samples, batch_axes=axes)
    if callable(getattr(data, "get_next", None)) or (
        isinstance(data, Iterable) and not isinstance(data, (str, bytes, bytearray))
    ):
        return StreamDataset(data, specs=specs, limit=samples, batch_axes=axes)
    raise DataError(
        f"cannot read samples from a {type(data).__name__}: give a .npz path, a folder of images, a "
        "CalibrationDataReader (get_next()), or an iterable of dicts of input name -> array"
    )
