"""The one JSON envelope every command writes (``--json``, ``--eval-json``).

Every JSON document onnxprune writes is an object that starts with the same four keys, then
the command's own::

    {"tool": "onnxprune", "version": "0.1.0", "schema": 1, "command": "prune", ...}

``schema`` is :data:`SCHEMA_VERSION`: it changes when a key is removed or changes meaning
(new keys may appear without it). The document is described by the JSON Schema in
``onnxprune/schemas/output.schema.json`` (:func:`schema`), which the tests validate every
command's output against. The same path ``-`` means standard output (:func:`write_json`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

#: The version of the documents' layout (see the module docstring).
SCHEMA_VERSION = 1
#: The commands that write a document.
COMMANDS = ("prune", "eval", "analyze", "inspect")
#: The path that means standard output.
STDOUT = "-"


def envelope(command: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` (the command's keys) inside the envelope of ``command``."""
    from onnxprune import __version__

    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}: expected one of {', '.join(COMMANDS)}")
    head = {"tool": "onnxprune", "version": __version__, "schema": SCHEMA_VERSION, "command": command}
    clash = set(head) & set(payload)
    if clash:
        raise ValueError(f"the payload of {command} may not set {', '.join(sorted(clash))}")
    return {**head, **payload}


def plain(value: Any) -> Any:
    """``value`` with every number a JSON number: numpy scalars and arrays as Python ones,
    NaN and ±inf as None (JSON has no such numbers), tuples as lists, paths as text."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist) and not isinstance(value, str | bytes):
        return plain(tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def dumps(document: Mapping[str, Any]) -> str:
    """``document`` as indented JSON text (:func:`plain` first)."""
    return json.dumps(plain(document), indent=2, allow_nan=False) + "\n"


def is_stdout(path: str | Path | None) -> bool:
    """True when ``path`` names standard output (``-``)."""
    return path is not None and str(path) == STDOUT


def write_json(
    document: Mapping[str, Any],
    path: str | Path,
    *,
    stdout: TextIO | None = None,
    what: str = "JSON",
    example: str = "",
) -> str:
    """Write ``document`` to ``path`` atomically, or for ``-`` to ``stdout`` (default: the
    current standard output); returns where it went, for a message."""
    text = dumps(document)
    if is_stdout(path):
        stream = stdout or sys.stdout
        stream.write(text)
        stream.flush()
        return "standard output"
    from onnxprune.graph.outputs import write_file

    return str(write_file(text, path, what=what, example=example))


def schema() -> dict[str, Any]:
    """The JSON Schema of the documents (``onnxprune/schemas/output.schema.json``)."""
    text = resources.files("onnxprune").joinpath("schemas/output.schema.json").read_text(encoding="utf-8")
    return json.loads(text)
