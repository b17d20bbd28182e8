"""The one exception hierarchy of onnxprune, and how library text names options.

Every error the library raises on bad input is an :class:`OnnxPruneError`. Its message is a
single line that says what is wrong and what to do; the CLI prints it and exits with
``exit_code``. Anything else that escapes is a bug.

**Options in text.** Below the CLI, text a user reads names an option by its API field with
:func:`opt`, never by a flag (an API user has no ``--min-size``); only the CLI maps fields to
flags (:mod:`onnxprune.cli_flags`). Two kinds of text carry such names, read the same way:

- an error: the exception keeps the message with its :func:`opt` marks; ``str(exc)`` reads
  the API fields (``min_size``), ``exc.render(flag)`` what the CLI prints (``--min-size``);
- text kept as data, a skip reason or a note in a result (:class:`Message`): a ``str`` that
  reads as the API names the options (``"64 elements, below min_size=256"``), so the Python
  API, JSON (``json.dumps`` writes the str), reports and metadata show field names; its
  :meth:`Message.render` gives what the CLI prints (``"64 elements, below --min-size 256"``).
  The CLI's printers spell every such text with :func:`spell`.

A Message used in a larger string (``f"{reason}; ..."``, ``"; ".join``) reads as the API
names it: the marks are never lost into control characters, at worst the CLI shows a field
name. To keep them, build the larger text with ``message.template`` in a new Message.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# An option named in a message: START name SEP api-value SEP cli-value END (values empty when
# none is given). Control characters, so no model, path or user text can forge one.
_START, _SEP, _END = "\x02", "\x1f", "\x03"
_OPTION = re.compile(f"{_START}([^{_SEP}{_END}]*){_SEP}([^{_SEP}{_END}]*){_SEP}([^{_END}]*){_END}")
_NONE = object()


def opt(field: str, value: object = _NONE) -> str:
    """An option named in an error message, by its API field; how it reads is chosen when printed.

    Library messages never spell CLI flags: ``raise OptionError(f"give {opt('calibration')} or
    {opt('data_free', True)}")``. ``str(exc)`` names the API field (:func:`render`):
    ``calibration`` alone, ``name=repr(value)`` with a value (``data_free=True``,
    ``method='sparsegpt'``). The CLI prints the same error through :meth:`OnnxPruneError.render`
    with its table of flags (``--calibration``, ``--data-free``, ``--method sparsegpt``).

    ``field`` is the keyword or config attribute the API user sets; where two APIs use one word
    for different options, a dotted prefix tells them apart for the CLI's table and is not shown
    in the API (``opt("quantize.mode", "static")`` reads ``mode='static'``).
    """
    if value is _NONE:
        return f"{_START}{field}{_SEP}{_SEP}{_END}"
    return f"{_START}{field}{_SEP}{value!r}{_SEP}{value}{_END}"


def api_name(field: str) -> str:
    """The name an API user sets for ``field`` (the part after a dotted prefix)."""
    return field.rpartition(".")[2]


def render(message: str, flag: Callable[[str, str | None], str | None] | None = None) -> str:
    """``message`` with each :func:`opt` spelled out.

    Without ``flag``, as the API names it (``calibration``, ``data_free=True``). With ``flag``,
    ``flag(field, value)`` (the value as text, None when none was given) spells it, and a None
    answer falls back to the API name. A message without options comes back unchanged.
    """

    def one(match: re.Match[str]) -> str:
        field, api_value, cli_value = match.groups()
        given = bool(api_value)
        if flag is not None:
            spelled = flag(field, cli_value if given else None)
            if spelled is not None:
                return spelled
        return f"{api_name(field)}={api_value}" if given else api_name(field)

    return _OPTION.sub(one, message) if _START in message else message


def fields(message: str) -> list[str]:
    """The fields :func:`opt` names in ``message``, in order."""
    return [match.group(1) for match in _OPTION.finditer(message)]


class Message(str):
    """Text kept as data (a skip reason, a note) that may name options with :func:`opt`.

    As a str it reads as the API names the options (``Message(f"below {opt('min_size', 256)}")
    == "below min_size=256"``); :meth:`render` spells them otherwise (the CLI's flags), from
    ``template``, the text with its :func:`opt` marks. It pickles and copies as a Message.
    """

    template: str

    def __new__(cls, template: str) -> Message:
        text = super().__new__(cls, render(template))
        text.template = template
        return text

    def render(self, flag: Callable[[str, str | None], str | None] | None = None) -> str:
        """The text with its options spelled by ``flag`` (see :func:`render`)."""
        return render(self.template, flag)

    def __reduce__(self) -> tuple[type[Message], tuple[str]]:
        return (type(self), (self.template,))


def spell(text: str | None, flag: Callable[[str, str | None], str | None] | None = None) -> str | None:
    """``text`` with the options a :class:`Message` names spelled by ``flag`` (the CLI's flags);
    any other str (and None) as it is."""
    return text.render(flag) if isinstance(text, Message) else text


class OnnxPruneError(Exception):
    """Base class: a problem with the user's input, options or environment.

    Its message may name options with :func:`opt`; ``str(exc)`` reads them as API fields and
    :meth:`render` as anything else (the CLI's flags).
    """

    exit_code: int = 1

    def __str__(self) -> str:
        return render(super().__str__())

    def render(self, flag: Callable[[str, str | None], str | None] | None = None) -> str:
        """The message with its options spelled by ``flag`` (see :func:`render`)."""
        return render(super().__str__(), flag)


class OptionError(OnnxPruneError):
    """An impossible or inconsistent option (sparsity out of range, N >= M, bad regex ...)."""

    exit_code = 2


class ShapeGuessError(OptionError):
    """No input shape onnxprune guessed for the dynamic dims runs the model (nor the input
    model): the real shapes must be given (``--input-shape``) or real samples."""


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
