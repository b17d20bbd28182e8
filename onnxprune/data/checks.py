"""Does a feed fit the model? Names, ranks, fixed dimensions, dtypes, sample counts.

A *feed* maps each model input name to the array one run of the model takes, its samples
along each input's batch axis (:mod:`onnxprune.batch_axes`; axis 0 unless the model says
otherwise). The data contract (what files and readers may hold, and the dtype rule) is
:mod:`onnxprune.data.layout`'s; these are the checks on whole feeds and on the model's
inputs, in its terms.

Batch size: when some input fixes its batch dim (``[1, 3, 224, 224]``), every batch must
have exactly that many samples, whatever size the caller asked for (:func:`batch_size_for`);
an input without a batch axis (a scalar) makes every run carry one sample.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnxprune.data.layout import FeedLayout, cast_dtype, format_dims, format_shape
from onnxprune.errors import DataError, OptionError
from onnxprune.runtime import InputSpec, is_dynamic

log = logging.getLogger(__name__)

__all__ = [
    "batch_size_for",
    "cast_dtype",
    "check_array",
    "check_count",
    "check_feeds",
    "check_specs",
    "fixed_batch_size",
    "format_dims",
    "format_shape",
    "input_names",
]


def input_names(specs: Sequence[InputSpec]) -> str:
    return ", ".join(spec.name for spec in specs)


def fixed_batch_size(specs: Sequence[InputSpec], batch_axes: Mapping[str, int | None] | None = None) -> int | None:
    """The batch size the model fixes (see :meth:`FeedLayout.fixed_batch`), or None."""
    return FeedLayout.of(specs, batch_axes).fixed_batch()


def batch_size_for(
    specs: Sequence[InputSpec], requested: int, batch_axes: Mapping[str, int | None] | None = None
) -> int:
    """``requested``, unless the model fixes the batch size: then that size (logged)."""
    return FeedLayout.of(specs, batch_axes).batch_size(requested)


def check_count(value: Any, what: str) -> None:
    """``value`` (a number of samples, a limit) is None or an integer >= 1; else OptionError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise OptionError(f"{what} must be an integer >= 1, got {value!r}")


def check_specs(specs: Sequence[InputSpec]) -> None:
    """The model has inputs, and they agree on a batch size."""
    if not specs:
        raise DataError("the model has no inputs, so there is no data to feed it")
    fixed_batch_size(specs)


def check_array(
    name: str, shape: Sequence[int], dtype: np.dtype, spec: InputSpec, *, source: str, check_batch: bool = True
) -> np.dtype:
    """Check one input's shape and dtype against its spec; returns the dtype to cast to.

    ``check_batch=False`` skips the first (sample) dimension: used on a whole data set or a
    reader's batch, which are regrouped into batches of the model's size later.
    """
    shape = tuple(shape)
    if len(shape) != len(spec.dims):
        raise DataError(
            f"{source}: input '{name}' has rank {len(shape)} (shape {format_shape(shape)}) but the model expects "
            f"rank {len(spec.dims)} {format_dims(spec.dims)}, the first axis being samples"
        )
    for axis, (want, got) in enumerate(zip(spec.dims, shape, strict=True)):
        if axis == 0 and not check_batch:
            continue
        if not is_dynamic(want) and want != got:
            what = "batch dim 0" if axis == 0 else f"dim {axis}"
            raise DataError(
                f"{source}: input '{name}' {what} is {got} but the model fixes it at {want} "
                f"(model {format_dims(spec.dims)}, data {format_shape(shape)})"
            )
    return cast_dtype(name, dtype, spec, source=source)


def check_feeds(
    feeds: Mapping[str, Any],
    specs: Sequence[InputSpec],
    *,
    source: str = "data",
    log_casts: bool = True,
    batch_axes: Mapping[str, int | None] | None = None,
) -> dict[str, np.ndarray]:
    """Validate one model feed (each input's samples on its batch axis); returns it as arrays,
    in input order, cast where allowed. DataError naming what does not fit: missing or
    unknown input names (with the model's inputs), rank, a fixed dim, dtype, sample counts."""
    layout = FeedLayout.of(specs, batch_axes)
    items = layout.check_items(feeds, source=source, log_casts=log_casts, stacked=False)
    fixed = layout.fixed_batch()
    count = next(iter(items.values())).shape[0]
    if fixed is not None and count != fixed:
        raise DataError(f"{source}: the feed holds {count} samples but the model fixes the batch size at {fixed}")
    return layout.to_feeds(items)
