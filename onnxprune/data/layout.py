"""The data contract: how stored samples map onto a model's inputs, and back into feeds.

Inside a :class:`~onnxprune.data.dataset.Dataset` every input's data is held *sample-major*:
an array ``[n, *item]`` whose axis 0 counts samples and whose ``item`` is the input's shape
without its batch axis (:mod:`onnxprune.batch_axes`). What a file or a reader holds, per input
of declared rank ``R`` with batch axis ``k``:

============================  ==============================  ============================
the data holds                rank in the file (n samples)    one feed / one sample file
============================  ==============================  ============================
one item per sample (today)   ``R``: ``[n, *item]``           ``R - 1``: ``item``
a stack of complete feeds     ``R + 1``: ``[n, *feed]``       ``R``: the feed, batch incl.
a scalar input (``R = 0``)    ``1``: ``[n]``                  ``0``
no batch axis (``k`` none)    ``R + 1``: ``[n, *dims]``       ``R``: the value
============================  ==============================  ============================

A stack of feeds is flattened to samples along each feed's batch axis (``n`` feeds of batch
``b`` are ``n·b`` samples, in order). The rank decides between the two conventions, so
there is nothing to guess; only the batch axis must be known (given or inferred).

Back to the model, a chunk of ``m`` samples becomes one feed per input by moving the sample
axis to the batch axis (``np.moveaxis(chunk, 0, k)``); an input without a batch axis takes
one sample per run, so a model with one runs batches of 1.

dtype rule: the data's dtype must be the input's, with two exceptions that are cast (and
logged): floating point to another floating type, and integers that cast safely to the
input's integer type. Fixed dims of the item must match.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxprune.batch_axes import UNDECIDED, InputLayout, batch_axes
from onnxprune.errors import DataError, OptionError, UnsupportedModelError
from onnxprune.runtime import InputSpec, is_dynamic

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


def format_dims(dims: Sequence[int | str | None]) -> str:
    """``[batch, 3, 224, 224]``: a model input's declared shape (None shows as ``?``)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def format_shape(shape: Sequence[int]) -> str:
    """``450x1x8x8`` (a scalar is ``scalar``)."""
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def _with_n(dims: Sequence[int | str | None]) -> str:
    return format_dims(("N", *dims))


def cast_dtype(name: str, got: np.dtype, spec: InputSpec, *, source: str) -> np.dtype:
    """The dtype ``got`` data is cast to for ``spec`` (see module docstring), or DataError."""
    want = np.dtype(spec.dtype)
    if got == want:
        return want
    if np.issubdtype(got, np.floating) and np.issubdtype(want, np.floating):
        return want
    if np.issubdtype(got, np.integer) and np.issubdtype(want, np.integer) and np.can_cast(got, want, "safe"):
        return want
    raise DataError(f"{source}: input '{name}' must be {want.name} (as the model declares), got {got.name} data")


def as_array(value: Any, name: str, spec: InputSpec, *, source: str) -> np.ndarray:
    """``value`` as a numeric (or bool) array, or a one-line DataError."""
    array = value
    if not isinstance(array, np.ndarray):
        try:
            array = np.asarray(array)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{source}: input '{name}' is not an array: {exc}") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(
            f"{source}: input '{name}' holds {array.dtype} values; give numeric arrays "
            f"of the model's dtype {np.dtype(spec.dtype).name}"
        )
    return array


@dataclass(frozen=True)
class FeedLayout:
    """Every input's layout, in the model's input order, and the batch rules they imply."""

    specs: tuple[InputSpec, ...]
    inputs: tuple[InputLayout, ...]

    @classmethod
    def of(cls, specs: Sequence[InputSpec], given: Mapping[str, int | None] | None = None) -> FeedLayout:
        """The layout of a model whose inputs are ``specs``; ``given`` is ``--batch-axis``."""
        specs = tuple(specs)
        for spec in specs:
            empty = [axis for axis, d in enumerate(spec.dims) if isinstance(d, int) and d == 0]
            if empty:
                raise UnsupportedModelError(
                    f"input '{spec.name}' {format_dims(spec.dims)} declares a size of 0 on axis {empty[0]}: onnxruntime "
                    "refuses any data for it (and aborts on an empty one); export the model with that dim dynamic or "
                    "positive"
                )
        axes = batch_axes({s.name: tuple(s.dims) for s in specs}, given)
        return cls(specs, tuple(InputLayout(s.name, tuple(s.dims), axes[s.name]) for s in specs))

    @property
    def axes(self) -> dict[str, int | None]:
        """The batch axis of every input placed (what ``--batch-axis`` would say of them)."""
        return {lay.name: lay.axis for lay in self.inputs if lay.axis != UNDECIDED}

    def __getitem__(self, name: str) -> InputLayout:
        return next(lay for lay in self.inputs if lay.name == name)

    def spec(self, name: str) -> InputSpec:
        return next(spec for spec in self.specs if spec.name == name)

    @property
    def one_per_run(self) -> list[str]:
        """The inputs without a batch axis (each run then carries one sample)."""
        return [lay.name for lay in self.inputs if lay.axis is None]

    def fixed_batch(self) -> int | None:
        """The batch size the model fixes (1 with an input that has no batch axis), or None.

        Raises DataError when inputs fix different sizes (no batch can fit them all)."""
        fixed = {lay.name: size for lay in self.inputs if (size := lay.fixed_batch()) is not None}
        if len(set(fixed.values())) > 1:
            listed = ", ".join(f"{name}={size}" for name, size in fixed.items())
            raise DataError(
                f"the model's inputs fix different batch sizes ({listed}); they share one sample axis, "
                "so no data can fit them: re-export the model with one batch size"
            )
        size = next(iter(fixed.values()), None)
        if self.one_per_run:
            if size is not None and size != 1:
                raise DataError(
                    f"the model fixes its batch at {size} but input(s) {', '.join(self.one_per_run)} take one value "
                    "per run, so no batch of samples can fit: re-export the model with a dynamic batch"
                )
            return 1
        return size

    def batch_size(self, requested: int) -> int:
        """``requested``, unless the model fixes the batch size: then that size (logged)."""
        if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or requested < 1:
            raise OptionError(f"batch size must be an integer >= 1, got {requested!r}")
        fixed = self.fixed_batch()
        if fixed is not None and fixed != requested:
            why = (
                f"input(s) {', '.join(self.one_per_run)} take one value per run"
                if self.one_per_run
                else f"the model fixes its batch dimension at {fixed}"
            )
            log.info("%s; using batches of %d instead of %d", why, fixed, requested)
            return fixed
        return int(requested)

    # ------------------------------------------------------------------ data -> samples

    def _decided(self, lay: InputLayout) -> InputLayout:
        if lay.axis == UNDECIDED:
            raise lay.undecided_error()
        return lay

    def items_from_stack(self, name: str, array: np.ndarray, *, source: str) -> np.ndarray:
        """Samples ``[n, *item]`` of input ``name`` from an array holding them all (a file's, an
        in-memory dict's): one item per sample (rank ``R``) or a stack of feeds (rank ``R+1``)."""
        lay = self._decided(self[name])
        rank = len(lay.dims)
        if not lay.batched:
            if array.ndim == rank + 1:
                return array
            what = "a scalar" if rank == 0 else f"{format_dims(lay.dims)}, one value per run (no batch axis)"
            raise DataError(
                f"{source}: input '{name}' is {what}: give one value per sample, shape {_with_n(lay.dims)}; "
                f"got shape {format_shape(array.shape)}"
            )
        if array.ndim == rank:
            return array
        if array.ndim == rank + 1:
            return self._flatten_feeds(lay, array, source=source)
        raise DataError(
            f"{source}: input '{name}' has rank {array.ndim} (shape {format_shape(array.shape)}) but the model declares "
            f"{format_dims(lay.dims)} (batch on axis {lay.axis}): give one sample per entry, "
            f"{_with_n(lay.item_dims)} (rank {rank}), or a stack of complete feeds, {_with_n(lay.dims)} (rank {rank + 1})"
        )

    def items_from_feed(self, name: str, array: np.ndarray, *, source: str) -> np.ndarray:
        """Samples ``[n, *item]`` of input ``name`` from one feed (rank ``R``, batch included: a
        reader's dict, a test-data ``.pb``) or one sample (rank ``R - 1``: a per-sample file)."""
        lay = self._decided(self[name])
        rank = len(lay.dims)
        if not lay.batched:
            if array.ndim == rank:
                return array[None]
            what = "a scalar" if rank == 0 else f"{format_dims(lay.dims)} (one value per run)"
            raise DataError(
                f"{source}: input '{name}' is {what}: give its value, shape {format_shape(tuple(lay.dims))}; got shape "
                f"{format_shape(array.shape)}"
            )
        if array.ndim == rank:
            return np.moveaxis(array, lay.axis, 0)  # type: ignore[arg-type]
        if array.ndim == rank - 1:
            return array[None]
        raise DataError(
            f"{source}: input '{name}' has rank {array.ndim} (shape {format_shape(array.shape)}) but the model declares "
            f"{format_dims(lay.dims)}: give one feed (rank {rank}, batch on axis {lay.axis}) or one sample "
            f"{format_dims(lay.item_dims)} (rank {rank - 1})"
        )

    def _flatten_feeds(self, lay: InputLayout, array: np.ndarray, *, source: str) -> np.ndarray:
        axis = 1 + lay.axis  # type: ignore[operator]
        moved = np.moveaxis(array, axis, 1)
        return moved.reshape(moved.shape[0] * moved.shape[1], *moved.shape[2:])

    def check_items(
        self, arrays: Mapping[str, Any], *, source: str, log_casts: bool = True, stacked: bool = True
    ) -> Feeds:
        """Samples of every input, sample-major, in input order, cast where allowed: from data
        holding all samples (``stacked``) or from one feed or sample file. DataError naming
        what does not fit: missing or unknown names, rank, a fixed dim, dtype, counts."""
        if not isinstance(arrays, Mapping):
            raise DataError(
                f"{source}: expected a dict of input name -> array, got {type(arrays).__name__}; "
                f"the model's inputs are: {self.names()}"
            )
        wanted = [spec.name for spec in self.specs]
        missing = [name for name in wanted if name not in arrays]
        unknown = [str(name) for name in arrays if name not in wanted]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown input(s) {', '.join(unknown)}")
            raise DataError(f"{source}: {'; '.join(parts)}; the model's inputs are: {self.names()}")
        out: Feeds = {}
        for spec in self.specs:
            array = as_array(arrays[spec.name], spec.name, spec, source=source)
            to_items = self.items_from_stack if stacked else self.items_from_feed
            items = to_items(spec.name, array, source=source)
            self._check_item_dims(spec.name, items, array.shape, source=source)
            dtype = cast_dtype(spec.name, items.dtype, spec, source=source)
            if dtype != items.dtype:
                (log.info if log_casts else log.debug)(
                    "%s: casting input '%s' from %s to %s", source, spec.name, items.dtype.name, dtype.name
                )
                items = items.astype(dtype)
            out[spec.name] = items
        counts = {name: items.shape[0] for name, items in out.items()}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{name} has {count}" for name, count in counts.items())
            raise DataError(
                f"{source}: inputs hold different numbers of samples ({listed}); give the same count for each"
            )
        return out

    def _check_item_dims(self, name: str, items: np.ndarray, shape: Sequence[int], *, source: str) -> None:
        lay = self[name]
        for axis, (want, got) in enumerate(zip(lay.item_dims, items.shape[1:], strict=True)):
            if not is_dynamic(want) and want != got:
                model_axis = axis if not lay.batched or axis < lay.axis else axis + 1  # type: ignore[operator]
                raise DataError(
                    f"{source}: input '{name}' dim {model_axis} is {got} but the model fixes it at {want} "
                    f"(model {format_dims(lay.dims)}, data {format_shape(tuple(shape))})"
                )

    def names(self) -> str:
        return ", ".join(spec.name for spec in self.specs)

    # ------------------------------------------------------------------ samples -> feeds

    def to_feeds(self, chunk: Mapping[str, np.ndarray]) -> Feeds:
        """The model's feed for a chunk of samples (see module docstring)."""
        out: Feeds = {}
        for lay in self.inputs:
            items = chunk[lay.name]
            if lay.batched:
                out[lay.name] = items if lay.axis == 0 else np.moveaxis(items, 0, lay.axis)  # type: ignore[arg-type]
            else:
                if items.shape[0] != 1:
                    raise DataError(f"input '{lay.name}' takes one value per run, got a batch of {items.shape[0]}")
                out[lay.name] = items[0, ...]  # an array (a 0-d view for a scalar input)
        return out

    def count(self, feeds: Mapping[str, np.ndarray]) -> int:
        """How many samples a model feed holds."""
        for lay in self.inputs:
            if lay.batched and lay.name in feeds:
                return int(np.shape(feeds[lay.name])[lay.axis])  # type: ignore[index]
        return 1

    def item_shapes(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """The shape of one sample of each input of a model feed."""
        out = {}
        for lay in self.inputs:
            out[lay.name] = lay.item_of(tuple(int(d) for d in np.shape(feeds[lay.name])))
        return out

    def take(self, feeds: Mapping[str, np.ndarray], count: int) -> Feeds:
        """The first ``count`` samples of a model feed (all it has, if fewer), as a feed."""
        count = min(count, self.count(feeds))
        out: Feeds = {}
        for lay in self.inputs:
            value = feeds[lay.name]
            out[lay.name] = np.take(value, range(count), axis=lay.axis) if lay.batched else value  # type: ignore[arg-type]
        return out

    def feed_shapes(self, item_shapes: Mapping[str, Sequence[int]], batch: int = 1) -> dict[str, tuple[int, ...]]:
        """The full input shapes of a run of ``batch`` samples of these item shapes."""
        out = {}
        for lay in self.inputs:
            item = tuple(int(d) for d in item_shapes[lay.name])
            out[lay.name] = (*item[: lay.axis], batch, *item[lay.axis :]) if lay.batched else item  # type: ignore[misc]
        return out
