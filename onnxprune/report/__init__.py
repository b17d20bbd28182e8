"""The HTML report of an evaluation: one self-contained file, plots drawn as inline SVG.

    from onnxprune.report import render_html, write_report
    write_report(result.to_dict(), "report.html")

``result`` is the JSON-able dict of an evaluation (``EvalResult.to_dict()``): ``tool``,
``created``, ``environment``, ``data``, ``settings`` and ``models`` (the base first, then
the candidates), each model with ``size``, ``params``, ``layers``, ``compute``,
``latency``, ``accuracy``, ``fidelity`` and ``warnings``. Any part may be null or absent:
the page then says "not measured" there.

Writing is atomic: the page goes to a temporary file in the destination's folder, which
is renamed over the destination only once complete; a failure leaves any previous report
untouched and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxprune.errors import OutputError
from onnxprune.report.page import render_html

log = logging.getLogger(__name__)

__all__ = ["render_html", "write_report"]


def write_report(result: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Render ``result`` and write it to ``path`` atomically; returns the path written."""
    target = Path(path)
    page = render_html(result).encode("utf-8")
    folder = target.parent
    if target.is_dir():
        raise OutputError(f"the report path '{target}' is a folder: give a file name such as report.html")
    if not folder.is_dir():
        raise OutputError(f"the report folder '{folder}' does not exist: create it first")
    mode = (target.stat().st_mode & 0o777) if target.exists() else 0o644
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"cannot write the report into '{folder}': {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(page)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write the report '{target}': {exc.strerror or exc}") from None
        raise
    log.info("wrote report %s (%d bytes)", target, len(page))
    return target
