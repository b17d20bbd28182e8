"""The one thing evaluation and calibration read: a :class:`Dataset` of samples, in batches.

A data set is an ordered sequence of ``N`` samples, held sample-major (each input's samples
on axis 0, see :mod:`onnxprune.data.layout`). ``batches(b)`` cuts the sequence into
``ceil(N / b)`` runs of ``b`` samples (the last one smaller), in the same order on every
call, and hands each out as the model's feed: every input's samples moved to its batch axis
(:attr:`Dataset.layout`), so results (outputs, labels, statistics) line up sample by sample.

Three exceptions to plain slicing, all about what a model can take:

- a model input that fixes its batch dim (``[1, 3, 224, 224]``) fixes the batch size,
  whatever was asked; if ``N`` is not a multiple of a fixed size above 1, that is a
  DataError (the last batch could not be fed);
- an input without a batch axis (a scalar sample rate) takes one value per run: batches of 1;
- samples whose shapes differ (a reader yielding sequences of varying length) are never
  concatenated: a batch is cut short where the per-sample shape changes.

Samples are checked against the model's inputs when read (names, rank, fixed dims, dtype,
counts); batches are read-only (they may be views of cached data).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from onnxprune.data.layout import FeedLayout
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

    def __init__(
        self, *, specs: Sequence[InputSpec], source: str, batch_axes: Mapping[str, int | None] | None = None
    ) -> None:
        self.specs: tuple[InputSpec, ...] = tuple(specs)
        self.layout = FeedLayout.of(self.specs, batch_axes)
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
        """Consecutive sample-major chunks of at most ``batch_size`` samples, in order, each
        input's samples checked and cast as read (see :mod:`onnxprune.data.layout`)."""

    def batches(self, batch_size: int) -> Iterator[Feeds]:
        """The model's feeds, ``batch_size`` samples each (or the size the model fixes), in order."""
        size = self.layout.batch_size(batch_size)
        fixed = self.layout.fixed_batch()
        count = self.num_samples()
        if fixed is not None and fixed > 1 and count is not None and count % fixed:
            raise self._remainder_error(count, fixed)
        return self._feeds(size, fixed)

    def _feeds(self, size: int, fixed: int | None) -> Iterator[Feeds]:
        for index, chunk in enumerate(self._batch_chunks(size)):
            count = samples_in(chunk)
            if fixed is not None and count != fixed:
                raise DataError(
                    f"{self.source}: batch {index} has {count} samples but the model fixes the batch size at {fixed}; "
                    f"give a multiple of {fixed} samples, all of one shape"
                )
            yield read_only(self.layout.to_feeds(chunk))

    def count(self, feeds: Mapping[str, np.ndarray]) -> int:
        """How many samples one of :meth:`batches`' feeds holds."""
        return self.layout.count(feeds)

    def _remainder_error(self, count: int, fixed: int) -> DataError:
        return DataError(
            f"{self.source} has {count} samples, not a multiple of the model's fixed batch size {fixed}, so the "
            f"last batch cannot be fed: give a multiple of {fixed} samples (e.g. {count - count % fixed or fixed})"
        )


def samples_in(feeds: Feeds) -> int:
    """The number of samples in a sample-major chunk: the length of its first axis."""
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
