"""The one exception hierarchy of onnxprune.

Every error the library raises on bad input is an :class:`OnnxPruneError`. Its message is a
single line that says what is wrong and what to do; the CLI prints it and exits with
``exit_code``. Anything else that escapes is a bug.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class: a problem with the user's input, options or environment."""

    exit_code: int = 1


class OptionError(OnnxPruneError):
    """An impossible or inconsistent option (sparsity out of range, N >= M, bad regex ...)."""

    exit_code = 2


class ModelLoadError(OnnxPruneError):
    """The input is not a readable ONNX model (truncated, not protobuf, missing external data)."""

    exit_code = 3


class UnsafeModelError(ModelLoadError):
    """The model points outside its own folder (external data path traversal)."""


class UnsupportedModelError(OnnxPruneError):
    """The model is valid ONNX but uses something onnxprune cannot handle safely.

    This includes a model onnxruntime cannot load (IR version, unknown op domain): its
    output could not be validated.
    """

    exit_code = 4


class MissingKernelError(UnsupportedModelError):
    """onnxruntime lacks a kernel the model needs (an op at an opset, for its types): the
    runtime's limit, not a fault of the model or of onnxprune. ``kernel`` says which
    (an :class:`onnxprune.runtime.MissingKernel`)."""

    def __init__(self, message: str, *, kernel: object = None) -> None:
        super().__init__(message)
        self.kernel = kernel


class ValidationError(OnnxPruneError):
    """The output failed validation (checker, onnxruntime, numeric check); nothing was written."""

    exit_code = 5


class OutputError(OnnxPruneError):
    """The output cannot be written (same path as the input, unwritable folder ...)."""

    exit_code = 6


class DataError(OnnxPruneError):
    """Evaluation or calibration data that does not fit the model (names, shapes, dtypes,
    sample counts, an empty image folder, labels that do not match the samples)."""

    exit_code = 7
