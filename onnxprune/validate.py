"""Validation of an output model before it is moved into place.

Three checks, all required: ``onnx.checker`` (on the file, so external data and models
over 2 GiB work; for a large streamed output on its skeleton, the same model whose large
tensors are external references into the written file, see :mod:`onnxprune.graph.skeleton`;
onnxruntime loads the skeleton too, reading every weight from the written file), an onnxruntime CPU session loads it, and it runs on one synthetic input
with finite outputs. When the output fails, the input model is tried the same way, so
the message says whether the model, the synthetic input or onnxprune is at fault.

A streamed output (written tensor by tensor from a model read lazily, see
:mod:`onnxprune.graph.lazy`) too large for an onnxruntime run within the stream's memory
(:func:`~onnxprune.graph.memory.stream_can_run`) is checked by the checker on its
skeleton and then tensor by tensor instead (:func:`~onnxprune.graph.tensor_check.check_written`:
same dims and types as the input, zeros where the masks put them, every other value
bit-equal to the input's); the report says so (:attr:`ValidationReport.tensors`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune import runtime
from onnxprune.batch_axes import batch_axes as infer_batch_axes
from onnxprune.errors import DataError, MissingKernelError, OnnxPruneError, ShapeGuessError, ValidationError, opt
from onnxprune.graph.model_io import load_model_lazily, streamed_run_fits, tensor_bytes
from onnxprune.graph.tensor_check import check_written
from onnxprune.graph.writer import ReadBack, WrittenTensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationReport:
    checker: str  # "passed" | "skipped: <why>"
    feeds: str  # the synthetic input used, e.g. "x:1x3x48x32"; or why no run was made
    outputs_finite: bool  # False when no run was made (see tensors)
    tensors: str | None = None  # the per-tensor check of a streamed output, when it replaced the run


def input_passes_checker(path: str | Path) -> str | None:
    """None if the model passes ``onnx.checker``, else the checker's message (one line)."""
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # ValidationError, or a C++ error for odd files
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _run(sess, feeds):  # noqa: ANN001, ANN202 - onnxruntime objects
    return sess.run(None, dict(feeds))


def validate_model(
    path: str | Path,
    *,
    reference: str | Path | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    checker_path: str | Path | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
    written: Mapping[str, WrittenTensor] | None = None,
    verified: ReadBack | None = None,
) -> ValidationReport:
    """Validate the model at ``path``; ``reference`` is the input it was derived from.

    ``feeds`` is one run of real samples (the calibration data's first batch): the model runs
    on it, and nothing is guessed. Without it, the run is on a synthetic input (dynamic dims
    from ``input_shapes``, else guessed among :data:`~onnxprune.runtime.CANDIDATE_SIZES`); when
    no guess runs and the input model fails on them too, the guess is at fault: one line
    naming the inputs and dims to give with ``--input-shape`` (onnxruntime's messages are
    logged at debug level only).

    ``checker_path`` is what ``onnx.checker`` and onnxruntime read instead of ``path`` (its
    skeleton: the same graph, each large tensor an external-data reference to its bytes in
    the file at ``path``, so onnxruntime reads every weight from the written file without
    parsing it twice); should the skeleton fail either, ``path`` itself decides.

    If the output fails ``onnx.checker`` and the input fails it too, the checker cannot be
    expected to pass and is reported as skipped (onnxruntime and the run still must pass);
    the input is only checked in that case, which keeps the common path to one check.

    ``written``: the writer's records of a streamed output (see the module docstring, and
    :meth:`~onnxprune.graph.model_io.StagedOutput.write`: kept when the weights do not fit in
    memory); the per-tensor check against ``reference`` then replaces the onnxruntime session
    and run. ``verified``: the tensors the writer read back as written
    (:meth:`~onnxprune.graph.direct_io.DirectAppender.verified`), which that check does not read again.
    """
    shapes = dict(input_shapes or {})
    checker = "passed"
    message = input_passes_checker(checker_path or path)
    if message is not None and checker_path is not None and Path(checker_path) != Path(path):
        log.info("the skeleton fails onnx.checker (%s): checking the whole file", message)
        message = input_passes_checker(path)
    if message is not None:
        if reference is None or input_passes_checker(reference) is None:
            raise ValidationError(f"the output fails onnx.checker ({message}); nothing was written")
        log.warning("the input model fails onnx.checker too (%s): checked with onnxruntime only", message)
        checker = "skipped: the input model does not pass onnx.checker either"
    if written is not None and reference is not None:
        skeleton = load_model_lazily(checker_path or path).model
        if not streamed_run_fits(skeleton):
            check = check_written(checker_path or path, reference, written, verified=verified)
            weights = tensor_bytes(skeleton, external=True)
            why = (
                f"not run: {weights} bytes of weights are more than a streamed run holds "
                "or than the memory available for onnxruntime"
            )
            return ValidationReport(checker, why, False, check.describe())
    sess = None
    if checker_path is not None and Path(checker_path) != Path(path):
        try:  # the skeleton: the same graph, every weight read from the written file
            sess = runtime.session(checker_path, prepack=False)  # made for one run
        except Exception as exc:
            log.info("onnxruntime cannot load the skeleton (%s): loading the whole file", runtime.ort_message(exc))
    if sess is None:
        try:
            sess = runtime.session(path, prepack=False)
        except Exception as exc:
            raise _why_session_fails(exc, reference, shapes) from exc
    specs = runtime.input_specs(sess)
    if feeds is not None:
        return _validate_on(sess, dict(feeds), reference, checker)
    sizes = runtime.CANDIDATE_SIZES if runtime.needs_guess(specs, shapes) else runtime.CANDIDATE_SIZES[:1]
    errors: list[str] = []
    for size in sizes:
        feeds = runtime.synthetic_feeds(specs, shapes, size=size)
        try:
            outputs = _run(sess, feeds)
        except Exception as exc:
            errors.append(f"{runtime.describe_feeds(feeds)}: {runtime.ort_message(exc)}")
            continue
        finite = all(np.all(np.isfinite(o)) for o in outputs if isinstance(o, np.ndarray) and o.dtype.kind == "f")
        if not finite and not _reference_nonfinite(reference, feeds):
            raise ValidationError(
                f"the output model gives NaN or inf on the synthetic input {runtime.describe_feeds(feeds)} "
                "where the input model does not; nothing was written"
            )
        if len(sizes) > 1:
            log.info("dynamic dimensions resolved for validation: %s", runtime.describe_feeds(feeds))
        return ValidationReport(checker, runtime.describe_feeds(feeds), finite)
    if reference is not None and _reference_runs(reference, specs, shapes, sizes):
        raise ValidationError(
            f"the output model fails in onnxruntime where the input runs ({errors[0]}); this is a bug in onnxprune, please report it"
        )
    for error in errors:
        log.debug("synthetic input failed: %s", error)
    guessed = runtime.guessed_dims({s.name: s.dims for s in specs}, shapes)
    if guessed:  # the input fails on every guess too: the guess is wrong, not the model
        raise ShapeGuessError(_guess_message(specs, guessed, input_too=reference is not None))
    refused = runtime.rejection(runtime.InputModel(Path(reference), shapes)) if reference is not None else None
    if refused is not None:  # the input fails too, on a shape it declares: the input's fault
        refused.args = (f"{refused.args[0]}; nothing was written",)
        raise refused
    raise ValidationError(
        f"could not run the model on a synthetic input ({errors[0]}); give the real input shape with "
        f"{opt('input_shapes')} NAME:1x3x224x224"
    )


def _guess_message(specs: Sequence[runtime.InputSpec], guessed: Mapping[str, list[int]], *, input_too: bool) -> str:
    from onnxprune.data.layout import format_dims  # an error path: the data readers load only for it

    declared = {s.name: s.dims for s in specs}
    axes = infer_batch_axes(declared)
    wanted = []
    for name in guessed:
        dims = declared[name]
        wanted.append(
            f"{opt('input_shapes')} {name}:{runtime.shape_hint(dims, axes[name])} (declared {format_dims(dims)})"
        )
    return (
        "onnxruntime cannot run the model on any synthetic input onnxprune guessed (sizes "
        f"{', '.join(map(str, runtime.CANDIDATE_SIZES))} for the dynamic dims)"
        + (", nor can it run the input model on them: " if input_too else ": ")
        + f"give the real shapes, {'; '.join(wanted)}, or real samples with {opt('calibration')} "
        "(onnxruntime's messages are in the debug log); nothing was written"
    )


def _validate_on(
    sess: Any, feeds: dict[str, np.ndarray], reference: str | Path | None, checker: str
) -> ValidationReport:
    """Run the output on real samples; NaN or inf where the input gives none is a failure."""
    try:
        outputs = _run(sess, feeds)
    except Exception as exc:
        if reference is not None:
            try:
                _run(runtime.session(reference), feeds)
            except Exception as ref_exc:
                raise DataError(
                    f"the input model fails on the real samples too ({runtime.ort_message(ref_exc)}): check the data's "
                    "shapes and dtypes; nothing was written"
                ) from ref_exc
        raise ValidationError(
            f"the output model fails on real samples where the input runs ({runtime.ort_message(exc)}); this is a "
            "bug in onnxprune, please report it; nothing was written"
        ) from exc
    finite = all(np.all(np.isfinite(o)) for o in outputs if isinstance(o, np.ndarray) and o.dtype.kind == "f")
    if not finite and not _reference_nonfinite(reference, feeds):
        raise ValidationError(
            f"the output model gives NaN or inf on the real samples {runtime.describe_feeds(feeds)} where the input "
            "model does not; nothing was written"
        )
    return ValidationReport(checker, f"real samples {runtime.describe_feeds(feeds)}", finite)


def _why_session_fails(
    exc: Exception, reference: str | Path | None, shapes: Mapping[str, tuple[int, ...]]
) -> OnnxPruneError:
    """The error for an output onnxruntime cannot load: the input's fault if onnxruntime
    cannot load it either, or cannot run it on one synthetic batch (a Cast to no type loads,
    and an edit that follows the graph may then make an output that no longer loads); the
    runtime's if it lacks a kernel the output needs (int8 ``ConvInteger`` before onnxruntime
    1.24, bfloat16 ``MatMul`` on the CPU, ...)."""
    if reference is not None:
        refused = runtime.rejection(runtime.InputModel(Path(reference), dict(shapes)))
        if refused is not None:
            refused.args = (
                f"{refused.args[0]}; onnxprune validates every output with onnxruntime; nothing was written",
            )
            return refused
    lacking = runtime.missing_kernel(exc)
    if lacking is not None:
        return MissingKernelError(
            f"onnxruntime cannot load the output model: {lacking.advice()}; nothing was written", kernel=lacking
        )
    blame = "; this is a bug in onnxprune, please report it" if reference is not None else ""
    return ValidationError(
        f"onnxruntime cannot load the output model ({runtime.ort_message(exc)}); nothing was written{blame}"
    )


def _reference_nonfinite(reference: str | Path | None, feeds: Mapping[str, np.ndarray]) -> bool:
    if reference is None:
        return False
    try:
        outputs = _run(runtime.session(reference), feeds)
    except Exception:
        return True
    return not all(np.all(np.isfinite(o)) for o in outputs if isinstance(o, np.ndarray) and o.dtype.kind == "f")


def _reference_runs(reference, specs, shapes, sizes) -> bool:  # noqa: ANN001
    try:
        sess = runtime.session(reference)
    except Exception:
        return False
    for size in sizes:
        try:
            _run(sess, runtime.synthetic_feeds(specs, shapes, size=size))
            return True
        except Exception:
            continue
    return False
