"""Does a feed fit the model? Names, ranks, fixed dimensions, dtypes, sample counts.

A *feed* maps each model input name to an array whose first axis is the sample axis:
``feeds[name][i]`` is sample ``i`` of input ``name``, and every input holds the same
number of samples. A model input is described by an :class:`~onnxprune.runtime.InputSpec`
whose dims are ints (fixed) or strings/None/negative ints (dynamic).

dtype rule: the array's dtype must be the input's dtype, with two lossless-enough
exceptions that are cast (and logged): floating point to another floating point type
(float64 or float16 data for a float32 input), and integers that cast *safely* to the
input's integer type (int32 token ids for an int64 input). Anything else (ints for a float
input, floats for an int input, bool for a number) is a :class:`DataError`.

Batch size: the sample axis is the input's first dimension. When some input fixes it
(``[1, 3, 224, 224]``), every batch must have exactly that many samples, whatever size the
caller asked for (:func:`batch_size_for`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnxprune.errors import DataError, OptionError
from onnxprune.runtime import InputSpec, is_dynamic

log = logging.getLogger(__name__)


def format_dims(dims: Sequence[int | str | None]) -> str:
    """``[batch, 3, 224, 224]``: a model input's declared shape (None shows as ``?``)."""
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def format_shape(shape: Sequence[int]) -> str:
    """``450x1x8x8`` (a scalar is ``scalar``)."""
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def input_names(specs: Sequence[InputSpec]) -> str:
    return ", ".join(spec.name for spec in specs)


def fixed_batch_size(specs: Sequence[InputSpec]) -> int | None:
    """The batch size some input fixes in its first dimension, or None if all are dynamic.

    Raises DataError when two inputs fix different batch sizes (no batch can fit both).
    """
    fixed = {
        spec.name: spec.dims[0] for spec in specs if spec.dims and not is_dynamic(spec.dims[0]) and spec.dims[0] > 0
    }
    if len(set(fixed.values())) > 1:
        listed = ", ".join(f"{name}={size}" for name, size in fixed.items())
        raise DataError(
            f"the model's inputs fix different batch sizes ({listed}); they share one sample axis, "
            "so no data can fit them: re-export the model with one batch size"
        )
    return next(iter(fixed.values()), None)


def batch_size_for(specs: Sequence[InputSpec], requested: int) -> int:
    """``requested``, unless an input fixes its batch dimension: then that size (logged)."""
    if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or requested < 1:
        raise OptionError(f"batch size must be an integer >= 1, got {requested!r}")
    fixed = fixed_batch_size(specs)
    if fixed is not None and fixed != requested:
        log.info(
            "the model fixes its batch dimension at %d; using batches of %d instead of %d", fixed, fixed, requested
        )
        return fixed
    return int(requested)


def check_specs(specs: Sequence[InputSpec]) -> None:
    """The model has inputs, and each has a first (sample) axis."""
    if not specs:
        raise DataError("the model has no inputs, so there is no data to feed it")
    scalars = [spec.name for spec in specs if not spec.dims]
    if scalars:
        raise DataError(
            f"input(s) {', '.join(scalars)} are scalars; evaluation and calibration data need a first "
            "(sample) axis on every input"
        )
    fixed_batch_size(specs)


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
    check_batch: bool = True,
    log_casts: bool = True,
) -> dict[str, np.ndarray]:
    """Validate a feed against the model's inputs; returns it as arrays, in input order, cast where allowed.

    Raises DataError naming what does not fit: missing or unknown input names (with the
    model's input names), rank, a fixed dimension, dtype, or unequal sample counts.
    """
    if not isinstance(feeds, Mapping):
        raise DataError(
            f"{source}: expected a dict of input name -> array, got {type(feeds).__name__}; "
            f"the model's inputs are: {input_names(specs)}"
        )
    wanted = [spec.name for spec in specs]
    missing = [name for name in wanted if name not in feeds]
    unknown = [str(name) for name in feeds if name not in wanted]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown input(s) {', '.join(unknown)}")
        raise DataError(f"{source}: {'; '.join(parts)}; the model's inputs are: {input_names(specs)}")
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        array = feeds[spec.name]
        if not isinstance(array, np.ndarray):
            try:
                array = np.asarray(array)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{source}: input '{spec.name}' is not an array: {exc}") from None
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise DataError(
                f"{source}: input '{spec.name}' holds {array.dtype} values; give numeric arrays "
                f"of the model's dtype {np.dtype(spec.dtype).name}"
            )
        dtype = check_array(spec.name, array.shape, array.dtype, spec, source=source, check_batch=check_batch)
        if dtype != array.dtype:
            (log.info if log_casts else log.debug)(
                "%s: casting input '%s' from %s to %s", source, spec.name, array.dtype.name, dtype.name
            )
            array = array.astype(dtype)
        out[spec.name] = array
    counts = {name: array.shape[0] for name, array in out.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} has {count}" for name, count in counts.items())
        raise DataError(f"{source}: inputs hold different numbers of samples ({listed}); give the same count for each")
    return out
