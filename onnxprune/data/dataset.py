"""The one thing evaluation and calibration read: a :class:`Dataset` of samples, in batches.

A data set is an ordered sequence of ``N`` samples. A *batch* maps each model input name
to an array whose first axis holds consecutive samples; ``batches(b)`` cuts the sequence
into ``ceil(N / b)`` batches of ``b`` samples (the last one smaller), in the same order on
every call, so results (outputs, labels, statistics) line up sample by sample.

Two exceptions to plain slicing, both about what a model can take:

- a model input that fixes its first dimension (``[1, 3, 224, 224]``) fixes the batch size,
  whatever was asked (:func:`~onnxprune.data.checks.batch_size_for`); if ``N`` is not a
  multiple of a fixed size above 1, that is a DataError (the last batch could not be fed);
- samples whose shapes differ (a reader yielding sequences of varying length) are never
  concatenated: a batch is cut short where the per-sample shape changes.

Every batch is validated against the model's inputs before it is handed out
(:func:`~onnxprune.data.checks.check_feeds`: names, rank, fixed dims, dtype, counts).
Batches are read-only (they may be views of cached data).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from onnxprune.data.checks import batch_size_for, check_feeds, fixed_batch_size
from onnxprune.errors import DataError
from onnxprune.runtime import InputSpec

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


class Dataset(ABC):
    """Samples for a model's inputs, re-iterable in batches (see module docstring).

    kind: "npz", "npy", "arrays" (an in-memory dict or array), "images", "reader"
        (a CalibrationDataReader), "iterable" or "synthetic".
    source: what the samples come from, for messages and reports.
    labels: int64 class index per sample when the source carries them (image class
        folders), else None; ``class_names`` names them.
    """

    kind: str = ""

    def __init__(self, *, specs: Sequence[InputSpec], source: str) -> None:
        self.specs: tuple[InputSpec, ...] = tuple(specs)
        self.source = source
        self.synthetic = False
        self.labels: np.ndarray | None = None
        self.class_names: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        count = self.num_samples()
        return f"<{type(self).__name__} {self.source}: {'?' if count is None else count} samples>"

    @abstractmethod
    def num_samples(self) -> int | None:
        """How many samples there are; None while a stream has not been read to its end."""

    @abstractmethod
    def _batch_chunks(self, batch_size: int) -> Iterator[Feeds]:
        """Consecutive batches of at most ``batch_size`` samples, in order (unchecked)."""

    def batches(self, batch_size: int) -> Iterator[Feeds]:
        """Batches of ``batch_size`` samples (or the model's fixed batch size), validated, in order."""
        size = batch_size_for(self.specs, batch_size)
        fixed = fixed_batch_size(self.specs)
        count = self.num_samples()
        if fixed is not None and fixed > 1 and count is not None and count % fixed:
            raise self._remainder_error(count, fixed)
        return self._checked_batches(size, fixed)

    def _checked_batches(self, size: int, fixed: int | None) -> Iterator[Feeds]:
        for index, batch in enumerate(self._batch_chunks(size)):
            count = samples_in(batch)
            if fixed is not None and count != fixed:
                raise DataError(
                    f"{self.source}: batch {index} has {count} samples but the model fixes the batch size at {fixed}; "
                    f"give a multiple of {fixed} samples, all of one shape"
                )
            checked = check_feeds(batch, self.specs, source=f"{self.source} (batch {index})", log_casts=False)
            yield read_only(checked)

    def _remainder_error(self, count: int, fixed: int) -> DataError:
        return DataError(
            f"{self.source} has {count} samples, not a multiple of the model's fixed batch size {fixed}, so the "
            f"last batch cannot be fed: give a multiple of {fixed} samples (e.g. {count - count % fixed or fixed})"
        )


def samples_in(feeds: Feeds) -> int:
    """The number of samples in a (checked) feed: the length of its first axis."""
    return next(iter(feeds.values())).shape[0]


def read_only(feeds: Feeds) -> Feeds:
    """Read-only views of ``feeds`` (the arrays' owners keep their own flags)."""
    out = {}
    for name, array in feeds.items():
        view = array.view()
        view.flags.writeable = False
        out[name] = view
    return out


def _sample_shapes(feeds: Feeds) -> tuple[tuple[int, ...], ...]:
    return tuple(array.shape[1:] for array in feeds.values())


def _concat(pieces: list[Feeds]) -> Feeds:
    if len(pieces) == 1:
        return pieces[0]
    return {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}


def regroup(chunks: Iterable[Feeds], batch_size: int) -> Iterator[Feeds]:
    """Re-cut consecutive chunks (any sample counts) into batches of ``batch_size`` samples.

    Concatenates and splits along axis 0, keeping order; the last batch may be smaller, and
    a batch is cut short where the per-sample shape changes (see module docstring).
    """
    pending: list[Feeds] = []
    count = 0
    for chunk in chunks:
        total = samples_in(chunk)
        start = 0
        while start < total:
            if pending and _sample_shapes(pending[0]) != _sample_shapes(chunk):
                yield _concat(pending)
                pending, count = [], 0
            take = min(batch_size - count, total - start)
            pending.append({name: array[start : start + take] for name, array in chunk.items()})
            count += take
            start += take
            if count == batch_size:
                yield _concat(pending)
                pending, count = [], 0
    if pending:
        yield _concat(pending)
